//! Key revocation lists as a node or the CA reads them: parsing must never panic, and a
//! parsed list must answer revocation questions without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_sshcert::Krl;

fuzz_target!(|data: &[u8]| {
    if let Ok(krl) = Krl::parse(data) {
        let _ = (krl.krl_version(), krl.generated_date(), krl.comment());
        let key = ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey([7; 32]));
        let _ = krl.is_key_revoked(&key);
    }
});
