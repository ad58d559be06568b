//! `parse_certificate_strict` against the real `ssh-keygen`: a certificate
//! `ssh-keygen -s` made reads back in both; the same certificate with bytes appended
//! after its signature is refused by both (OpenSSH: "invalid format").

// Tests may panic: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use portcullis_sshcert::{BlobError, parse_certificate_strict};

#[test]
fn appended_bytes_are_refused_like_openssh_refuses_them() {
    ssh_keygen();
    let dir = tempfile::tempdir().unwrap();
    let ca = keygen_file(dir.path(), "ca", "ed25519", None);
    let user = keygen_file(dir.path(), "user", "ed25519", None);
    let user_pub = user.with_extension("pub");
    ssh_keygen_ok(&["-q", "-s", path_str(&ca), "-I", "alice", "-n", "root", "-V", "-5m:+1h", path_str(&user_pub)]);
    let line = std::fs::read_to_string(dir.path().join("user-cert.pub")).unwrap();
    let mut fields = line.split_whitespace();
    let (kind, b64) = (fields.next().unwrap().to_owned(), fields.next().unwrap());
    let blob = STANDARD.decode(b64).unwrap();

    let cert = parse_certificate_strict(&blob).expect("ssh-keygen's certificate parses");
    assert_eq!(cert.key_id(), "alice");
    assert_eq!(cert.valid_principals(), ["root".to_owned()]);

    for extra in [&b"\0"[..], b"\0\0\0\x04junk", b"appended after the signature"] {
        let mut longer = blob.clone();
        longer.extend_from_slice(extra);
        assert_eq!(parse_certificate_strict(&longer).unwrap_err(), BlobError::TrailingBytes(extra.len()));
        let file = write(dir.path(), "longer-cert.pub", format!("{kind} {} x\n", STANDARD.encode(&longer)));
        let out = run_ssh_keygen(&["-L", "-f", path_str(&file)]);
        assert!(!out.status.success(), "OpenSSH refuses it too: {}", String::from_utf8_lossy(&out.stdout));
    }
    // Positive control for the ssh-keygen side: the unmodified line lists.
    let file = write(dir.path(), "same-cert.pub", format!("{kind} {} x\n", STANDARD.encode(&blob)));
    assert!(run_ssh_keygen(&["-L", "-f", path_str(&file)]).status.success());
}
