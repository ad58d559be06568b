//! `parse_user_public_key` on keys made by the real `ssh-keygen` (and by
//! ssh-key for the security-key types, which need hardware to generate), and
//! `fingerprint` against `ssh-keygen -lf`.

// Tests may panic: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::*;
use portcullis_sshcert::{KeyError, MAX_PUBLIC_KEY_LEN, fingerprint, parse_user_public_key};
use ssh_key::public::{EcdsaPublicKey, KeyData, SkEcdsaSha2NistP256, SkEd25519};
use ssh_key::{LineEnding, PublicKey};

/// The `SHA256:...` field of `ssh-keygen -lf FILE`.
fn keygen_fingerprint(file: &Path) -> String {
    let out = ssh_keygen_ok(&["-l", "-E", "sha256", "-f", path_str(file)]);
    out.split_whitespace().nth(1).expect("fingerprint field").to_owned()
}

fn unsupported(name: &str) -> KeyError {
    KeyError::UnsupportedAlgorithm(name.to_owned())
}

#[test]
fn accepts_allowed_ssh_keygen_keys_and_matches_their_fingerprints() {
    ssh_keygen();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("ed25519", "ed25519", None),
        ("p256", "ecdsa", Some(256)),
        ("p384", "ecdsa", Some(384)),
        ("rsa3072", "rsa", Some(3072)),
        ("rsa4096", "rsa", Some(4096)),
    ];
    for (name, key_type, bits) in cases {
        let path = keygen_file(dir.path(), name, key_type, bits);
        let line = read_pub(&path);
        assert!(line.contains("test@comment"));
        let key = parse_user_public_key(&line).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(key.comment().is_empty(), "{name}: comment must be dropped");
        assert!(!key.to_openssh().unwrap().contains("test@comment"));
        assert_eq!(fingerprint(key.key_data()), keygen_fingerprint(&path.with_extension("pub")), "{name}");
    }
}

#[test]
fn fingerprints_of_keys_generated_in_code_match_ssh_keygen() {
    ssh_keygen();
    let dir = tempfile::tempdir().unwrap();
    for (i, key) in [ed25519_key(), p256_key()].iter().enumerate() {
        let file = write(dir.path(), &format!("k{i}.pub"), key.public_key().to_openssh().unwrap());
        assert_eq!(fingerprint(key.public_key().key_data()), keygen_fingerprint(&file));
    }
}

/// Security-key public keys built from their parts, since generating them
/// needs a FIDO token.
fn sk_keys() -> Vec<PublicKey> {
    let ed = ed25519_key();
    let ed_point = *ed.public_key().key_data().ed25519().unwrap();
    let p256 = p256_key();
    let Some(EcdsaPublicKey::NistP256(point)) = p256.public_key().key_data().ecdsa().cloned() else {
        panic!("p256 key without a P-256 point");
    };
    vec![
        PublicKey::new(KeyData::SkEd25519(SkEd25519::new(ed_point, "ssh:")), "me@token"),
        PublicKey::new(KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(point, "ssh:portcullis")), "me@token"),
    ]
}

#[test]
fn accepts_security_keys_and_matches_their_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    for (i, sk) in sk_keys().into_iter().enumerate() {
        let line = sk.to_openssh().unwrap();
        assert!(line.starts_with("sk-"), "{line}");
        let key = parse_user_public_key(&line).unwrap();
        assert_eq!(key.key_data(), sk.key_data());
        assert!(key.comment().is_empty());
        let file = write(dir.path(), &format!("sk{i}.pub"), &line);
        assert_eq!(fingerprint(key.key_data()), keygen_fingerprint(&file));
    }
}

#[test]
fn certificate_fingerprint_is_that_of_the_certified_key() {
    ssh_keygen();
    let dir = tempfile::tempdir().unwrap();
    let (ca, user) = (ed25519_key(), p256_key());
    let cert = user_cert(&ca, &user, 3, "alice");
    let file = write_cert(dir.path(), "u-cert.pub", &cert);
    let as_key_data = KeyData::from(cert);
    assert_eq!(fingerprint(&as_key_data), keygen_fingerprint(&file));
    assert_eq!(fingerprint(&as_key_data), fingerprint(user.public_key().key_data()));
}

#[test]
fn tolerates_whitespace_and_tabs_like_openssh() {
    let key = ed25519_key();
    let line = key.public_key().to_openssh().unwrap();
    let (alg, b64) = line.split_once(' ').unwrap();
    for variant in [
        format!("  {alg} {b64}  \n"),
        format!("{alg}\t{b64}\tsome comment with spaces"),
        format!("{alg} {b64}"),
        // Comment text is never interpreted, however alarming.
        format!("{alg} {b64} -----BEGIN OPENSSH PRIVATE KEY-----"),
    ] {
        let parsed = parse_user_public_key(&variant).unwrap();
        assert_eq!(parsed.key_data(), key.public_key().key_data());
    }
}

#[test]
fn rejects_weak_and_unlisted_algorithms_from_ssh_keygen() {
    ssh_keygen();
    let dir = tempfile::tempdir().unwrap();
    let rsa2048 = read_pub(&keygen_file(dir.path(), "rsa2048", "rsa", Some(2048)));
    assert_eq!(parse_user_public_key(&rsa2048), Err(KeyError::RsaTooSmall { bits: 2048 }));
    let msg = parse_user_public_key(&rsa2048).unwrap_err().to_string();
    assert!(msg.contains("2048") && msg.contains("3072"), "{msg}");

    let p521 = read_pub(&keygen_file(dir.path(), "p521", "ecdsa", Some(521)));
    let err = parse_user_public_key(&p521).unwrap_err();
    assert_eq!(err, unsupported("ecdsa-sha2-nistp521"));
    assert!(err.to_string().contains("allow-list"), "{err}");

    // OpenSSH builds may drop DSA; ssh-keygen failing here is not our bug.
    let dsa = dir.path().join("dsa");
    let made = run_ssh_keygen(&["-q", "-t", "dsa", "-N", "", "-f", path_str(&dsa)]);
    if made.status.success() {
        assert_eq!(parse_user_public_key(&read_pub(&dsa)), Err(unsupported("ssh-dss")));
    } else {
        eprintln!("NOTE: this ssh-keygen cannot make DSA keys; covered by the in-code DSA case");
    }
}

#[test]
fn rejects_dsa_built_in_code() {
    let dsa = ssh_key::public::DsaPublicKey::new(
        ssh_key::Mpint::from_positive_bytes(&[0x7f; 128]),
        ssh_key::Mpint::from_positive_bytes(&[0x7f; 20]),
        ssh_key::Mpint::from_positive_bytes(&[0x02]),
        ssh_key::Mpint::from_positive_bytes(&[0x03]),
    )
    .unwrap();
    let line = PublicKey::new(KeyData::Dsa(dsa), "").to_openssh().unwrap();
    assert_eq!(parse_user_public_key(&line), Err(unsupported("ssh-dss")));
}

#[test]
fn rejects_certificates() {
    let (ca, user) = (ed25519_key(), ed25519_key());
    let cert = user_cert(&ca, &user, 1, "alice");
    let cert_line = cert.to_openssh().unwrap();
    assert_eq!(parse_user_public_key(&cert_line), Err(KeyError::Certificate));

    // A certificate blob under a plain key's name must not slip through either.
    let (_, rest) = cert_line.split_once(' ').unwrap();
    let disguised = format!("ssh-ed25519 {rest}");
    assert!(matches!(parse_user_public_key(&disguised), Err(KeyError::Certificate | KeyError::Malformed)));
}

#[test]
fn rejects_private_keys() {
    let key = ed25519_key();
    let pem = key.to_openssh(LineEnding::LF).unwrap();
    assert_eq!(parse_user_public_key(&pem), Err(KeyError::PrivateKey));
    let legacy = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow==\n-----END RSA PRIVATE KEY-----\n";
    assert_eq!(parse_user_public_key(legacy), Err(KeyError::PrivateKey));
    let putty = "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n";
    assert_eq!(parse_user_public_key(putty), Err(KeyError::PrivateKey));
}

#[test]
fn rejects_bad_shapes() {
    let good = ed25519_key().public_key().to_openssh().unwrap();
    let (alg, b64) = good.split_once(' ').unwrap();
    let p256_line = p256_key().public_key().to_openssh().unwrap();
    let (_, p256_b64) = p256_line.split_once(' ').unwrap();
    let cases: Vec<(String, KeyError)> = vec![
        (String::new(), KeyError::Empty),
        ("   \n\t ".to_owned(), KeyError::Empty),
        ("a".repeat(20 * 1024), KeyError::TooLarge),
        (format!("{good}{}", " ".repeat(MAX_PUBLIC_KEY_LEN)), KeyError::TooLarge),
        (format!("{good}\n{good}"), KeyError::MultipleLines),
        (format!("{good}\r\n{good}"), KeyError::MultipleLines),
        (format!("{alg} !!!not-base64!!!"), KeyError::Malformed),
        (format!("{alg} AAAAC3NzaC1lZDI1NTE5AAAAIA"), KeyError::Malformed),
        (format!("{alg} {}", &b64[..b64.len() - 8]), KeyError::Malformed),
        (alg.to_owned(), KeyError::Malformed),
        (format!("{alg} {b64}\0"), KeyError::Malformed),
        (format!("{alg}\u{7f} {b64}"), KeyError::Malformed),
        // Name and blob disagree.
        (format!("ecdsa-sha2-nistp256 {b64}"), KeyError::Malformed),
        (format!("{alg} {p256_b64}"), KeyError::Malformed),
        (format!("ssh-frob {b64}"), unsupported("unrecognised")),
        (format!("restrict,command=\"/bin/sh\" {good}"), unsupported("unrecognised")),
        (format!("rsa-sha2-512 {b64}"), unsupported("unrecognised")),
        ("ssh-ed25519-cert-v01@openssh.com AAAA".to_owned(), KeyError::Certificate),
    ];
    for (input, expected) in cases {
        let shown: String = input.chars().take(60).collect();
        assert_eq!(parse_user_public_key(&input), Err(expected), "input {shown:?}");
    }
}

/// Truncations and single-byte corruptions of valid lines must be refused
/// or accepted, never panic.
#[test]
fn never_panics_on_mangled_input() {
    let mut lines: Vec<String> =
        vec![ed25519_key().public_key().to_openssh().unwrap(), p256_key().public_key().to_openssh().unwrap()];
    lines.extend(sk_keys().iter().map(|k| k.to_openssh().unwrap()));
    let noise = portcullis_sshcert::random_bytes::<64>();
    for line in &lines {
        for end in 0..=line.len() {
            if let Some(prefix) = line.get(..end) {
                let _ = parse_user_public_key(prefix);
            }
        }
        let bytes = line.as_bytes();
        for (i, n) in noise.iter().enumerate() {
            let mut mangled = bytes.to_vec();
            let at = (usize::from(*n) * 7 + i * 13) % mangled.len();
            mangled[at] = b"A/+=. \t@-Z\x00\xff"[i % 12];
            let _ = parse_user_public_key(&String::from_utf8_lossy(&mangled));
        }
    }
}
