//! Certificates and public keys as a client presents them: the strict blob parser must
//! never panic, and whatever it accepts must survive the full user-certificate check.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use portcullis_sshcert::{CheckContext, check_user_certificate, parse_certificate_strict, parse_user_public_key};

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = parse_certificate_strict(data) {
        // Trust the certificate's own CA so the check runs past the signature test.
        let trusted = [cert.signature_key().clone()];
        let ctx = CheckContext {
            trusted_cas: &trusted,
            now_unix: 1_800_000_000,
            max_clock_skew_secs: 60,
            acceptable_principals: &["root", "alice"],
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            krl: None,
        };
        let _ = check_user_certificate(&cert, &ctx);
        let _ = portcullis_sshcert::certificate_digest(&cert);
    }
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = parse_user_public_key(line);
    }
});
