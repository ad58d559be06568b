//! KRLs from [`KrlBuilder`] checked by the real `ssh-keygen -Q`, and compared
//! byte-for-byte with what `ssh-keygen -k` writes for the same revocations.

// Tests may panic: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::*;
use portcullis_sshcert::{KrlBuilder, fingerprint};
use ssh_key::PrivateKey;
use tempfile::TempDir;

/// Asks `ssh-keygen -Q` whether `key_file` is revoked by `krl`.
fn is_revoked(krl: &Path, key_file: &Path) -> bool {
    let out = run_ssh_keygen(&["-Q", "-f", path_str(krl), path_str(key_file)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Distinguish "revoked" from "could not load the KRL": both exit non-zero.
    match (out.status.code(), stdout.trim_end()) {
        (Some(1), line) if line.ends_with(": REVOKED") => true,
        (Some(0), line) if line.ends_with(": ok") => false,
        other => panic!("unexpected ssh-keygen -Q result {other:?}; stderr: {stderr}"),
    }
}

/// `ssh-keygen -Q -l` must load and list the KRL; returns the listing.
fn listing(krl: &Path) -> String {
    ssh_keygen_ok(&["-Q", "-l", "-f", path_str(krl)])
}

fn sha256_hex(key: &PrivateKey) -> String {
    let digest = key.public_key().fingerprint(ssh_key::HashAlg::Sha256);
    digest.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }

    fn krl(&self, builder: &KrlBuilder) -> std::path::PathBuf {
        write(self.dir.path(), "revoked.krl", builder.encode())
    }

    fn cert(&self, name: &str, ca: &PrivateKey, user: &PrivateKey, serial: u64, id: &str) -> std::path::PathBuf {
        write_cert(self.dir.path(), name, &user_cert(ca, user, serial, id))
    }

    fn plain(&self, name: &str, key: &PrivateKey) -> std::path::PathBuf {
        write(self.dir.path(), name, key.public_key().to_openssh().unwrap() + "\n")
    }
}

#[test]
fn empty_krl_loads_and_revokes_nothing() {
    ssh_keygen();
    let fx = Fixture::new();
    let (ca, user) = (ed25519_key(), ed25519_key());
    let krl = fx.krl(&KrlBuilder::new(1, 1_700_000_000, "empty"));
    assert!(!is_revoked(&krl, &fx.cert("c.pub", &ca, &user, 42, "alice")));
    assert!(!is_revoked(&krl, &fx.plain("u.pub", &user)));
    assert!(listing(&krl).contains("# KRL version 1"));
}

#[test]
fn revoked_serial_is_revoked_and_neighbours_are_not() {
    ssh_keygen();
    for ca in [ed25519_key(), p256_key()] {
        let fx = Fixture::new();
        let user = p256_key();
        let mut builder = KrlBuilder::new(2, 1_700_000_000, "serials");
        builder.revoke_serial(ca.public_key().key_data(), 1000);
        // Above i64::MAX, to catch any signed or little-endian slip.
        builder.revoke_serial(ca.public_key().key_data(), u64::MAX - 1);
        let krl = fx.krl(&builder);

        assert!(is_revoked(&krl, &fx.cert("a.pub", &ca, &user, 1000, "alice")));
        assert!(is_revoked(&krl, &fx.cert("b.pub", &ca, &user, u64::MAX - 1, "x")));
        assert!(!is_revoked(&krl, &fx.cert("c.pub", &ca, &user, 1001, "alice")));
        assert!(!is_revoked(&krl, &fx.cert("d.pub", &ca, &user, 999, "alice")));
        assert!(!is_revoked(&krl, &fx.cert("e.pub", &ca, &user, u64::MAX, "x")));
        // The plain key is not revoked, only that certificate.
        assert!(!is_revoked(&krl, &fx.plain("u.pub", &user)));

        let list = listing(&krl);
        assert!(list.contains("serial: 1000"), "{list}");
        assert!(list.contains(&fingerprint(ca.public_key().key_data())), "{list}");
    }
}

#[test]
fn same_serial_from_another_ca_is_not_revoked() {
    ssh_keygen();
    let fx = Fixture::new();
    let (ca, other_ca, user) = (ed25519_key(), ed25519_key(), ed25519_key());
    let mut builder = KrlBuilder::new(3, 1_700_000_000, "");
    builder.revoke_serial(ca.public_key().key_data(), 7);
    builder.revoke_key_id(ca.public_key().key_data(), "alice");
    let krl = fx.krl(&builder);
    assert!(is_revoked(&krl, &fx.cert("a.pub", &ca, &user, 7, "bob")));
    assert!(!is_revoked(&krl, &fx.cert("b.pub", &other_ca, &user, 7, "bob")));
    assert!(!is_revoked(&krl, &fx.cert("c.pub", &other_ca, &user, 8, "alice")));
}

#[test]
fn revoked_key_id_is_revoked_whatever_the_serial() {
    ssh_keygen();
    let fx = Fixture::new();
    let (ca, user) = (p256_key(), ed25519_key());
    let mut builder = KrlBuilder::new(4, 1_700_000_000, "");
    builder.revoke_key_id(ca.public_key().key_data(), "alice@laptop");
    builder.revoke_key_id(ca.public_key().key_data(), "zed");
    let krl = fx.krl(&builder);
    assert!(is_revoked(&krl, &fx.cert("a.pub", &ca, &user, 1, "alice@laptop")));
    assert!(is_revoked(&krl, &fx.cert("b.pub", &ca, &user, 0, "alice@laptop")));
    assert!(!is_revoked(&krl, &fx.cert("c.pub", &ca, &user, 1, "alice@laptop2")));
    assert!(!is_revoked(&krl, &fx.cert("d.pub", &ca, &user, 1, "bob")));
    assert!(listing(&krl).contains("id: alice@laptop"));
}

#[test]
fn revoke_certificate_uses_key_id_for_serial_zero() {
    ssh_keygen();
    let fx = Fixture::new();
    let (ca, user) = (ed25519_key(), ed25519_key());
    let zero = user_cert(&ca, &user, 0, "serial-zero");
    let numbered = user_cert(&ca, &user, 77, "numbered");
    let mut builder = KrlBuilder::new(5, 1_700_000_000, "");
    builder.revoke_certificate(&zero);
    builder.revoke_certificate(&numbered);
    let krl = fx.krl(&builder);
    assert!(is_revoked(&krl, &write_cert(fx.dir.path(), "z.pub", &zero)));
    assert!(is_revoked(&krl, &write_cert(fx.dir.path(), "n.pub", &numbered)));
    assert!(!is_revoked(&krl, &fx.cert("o.pub", &ca, &user, 78, "other")));
}

#[test]
fn plain_keys_revoked_by_sha256_with_their_certificates() {
    ssh_keygen();
    let fx = Fixture::new();
    let ca = ed25519_key();
    let mut builder = KrlBuilder::new(6, 1_700_000_000, "");
    // Enough keys that the byte order of the hashes matters.
    let revoked: Vec<PrivateKey> = (0..8).map(|i| if i % 2 == 0 { ed25519_key() } else { p256_key() }).collect();
    for key in &revoked {
        builder.revoke_key_sha256(key.public_key().key_data());
    }
    let kept = ed25519_key();
    let krl = fx.krl(&builder);

    let list = listing(&krl);
    for (i, key) in revoked.iter().enumerate() {
        assert!(is_revoked(&krl, &fx.plain(&format!("k{i}.pub"), key)));
        assert!(is_revoked(&krl, &fx.cert(&format!("k{i}-cert.pub"), &ca, key, 9, "x")));
        // ssh-keygen lists SHA256-section entries in hex, not base64.
        let hash_line = format!("hash: SHA256:{}", sha256_hex(key));
        assert!(list.contains(&hash_line), "{hash_line} missing from {list}");
    }
    assert!(!is_revoked(&krl, &fx.plain("kept.pub", &kept)));
    assert!(!is_revoked(&krl, &fx.cert("kept-cert.pub", &ca, &kept, 9, "x")));
}

#[test]
fn several_cas_in_one_krl() {
    ssh_keygen();
    let fx = Fixture::new();
    let (ca1, ca2, ca3, user) = (ed25519_key(), p256_key(), ed25519_key(), ed25519_key());
    let mut builder = KrlBuilder::new(7, 1_700_000_000, "three CAs");
    builder.revoke_serial(ca1.public_key().key_data(), 5);
    builder.revoke_serial(ca2.public_key().key_data(), 6);
    builder.revoke_key_id(ca3.public_key().key_data(), "carol");
    builder.revoke_key_sha256(ca3.public_key().key_data());
    let krl = fx.krl(&builder);

    assert!(is_revoked(&krl, &fx.cert("1-5.pub", &ca1, &user, 5, "a")));
    assert!(!is_revoked(&krl, &fx.cert("1-6.pub", &ca1, &user, 6, "a")));
    assert!(is_revoked(&krl, &fx.cert("2-6.pub", &ca2, &user, 6, "a")));
    assert!(!is_revoked(&krl, &fx.cert("2-5.pub", &ca2, &user, 5, "a")));
    // ca3 itself is revoked, so everything it signed is too (ssh-keygen -Q
    // checks the signing key as well).
    assert!(is_revoked(&krl, &fx.cert("3-1.pub", &ca3, &user, 1, "dave")));
    let list = listing(&krl);
    for ca in [&ca1, &ca2, &ca3] {
        assert!(list.contains(&fingerprint(ca.public_key().key_data())), "{list}");
    }
}

#[test]
fn many_random_serials_load_and_match() {
    ssh_keygen();
    let fx = Fixture::new();
    let (ca, user) = (ed25519_key(), ed25519_key());
    let serials: Vec<u64> =
        (0..500).map(|_| u64::from_be_bytes(portcullis_sshcert::random_bytes::<8>()).max(1)).collect();
    let mut builder = KrlBuilder::new(8, 1_700_000_000, "");
    for serial in &serials {
        builder.revoke_serial(ca.public_key().key_data(), *serial);
    }
    let krl = fx.krl(&builder);
    for serial in [serials[0], serials[250], serials[499]] {
        assert!(is_revoked(&krl, &fx.cert("r.pub", &ca, &user, serial, "x")));
    }
}

/// The strongest check: for the same revocations, OpenSSH's own encoder writes
/// the same bytes (apart from the generation time, which it takes from the clock).
#[test]
fn bytes_match_ssh_keygen_k() {
    ssh_keygen();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = ed25519_key();
    let plain: Vec<PrivateKey> = (0..6).map(|_| p256_key()).collect();
    let ca_pub = write(d, "ca.pub", ca.public_key().to_openssh().unwrap() + "\n");
    // Widely spaced serials, so ssh-keygen also chooses a plain list.
    let mut spec = "serial: 900000\nserial: 5\nid: zoe\nid: bob\nserial: 70000000\n".to_owned();
    for key in &plain {
        spec += &format!("sha256: {}\n", key.public_key().to_openssh().unwrap());
    }
    let spec = write(d, "spec", spec);
    let theirs = d.join("theirs.krl");
    ssh_keygen_ok(&["-k", "-z", "9", "-f", path_str(&theirs), "-s", path_str(&ca_pub), path_str(&spec)]);
    let theirs = std::fs::read(&theirs).unwrap();

    let mut builder = KrlBuilder::new(9, 0, "");
    let ca_key = ca.public_key().key_data();
    for serial in [5, 70_000_000, 900_000] {
        builder.revoke_serial(ca_key, serial);
    }
    builder.revoke_key_id(ca_key, "bob");
    builder.revoke_key_id(ca_key, "zoe");
    for key in plain.iter().rev() {
        builder.revoke_key_sha256(key.public_key().key_data());
    }
    let mut ours = builder.encode();

    // generated_date: magic (8) + format version (4) + krl_version (8).
    ours[20..28].copy_from_slice(&theirs[20..28]);
    assert_eq!(ours, theirs);
}

/// Plain keys revoked whole (`key:`), which every OpenSSH with KRLs loads (revocation by
/// SHA-256 needs 7.9): the same bytes as `ssh-keygen -k`, keys of several types (and so
/// lengths: an RSA blob sorts first by its bytes, last by its length) in its order, and
/// each key and every certificate for it revoked.
#[test]
fn plain_keys_revoked_whole_match_ssh_keygen_k() {
    ssh_keygen();
    let fx = Fixture::new();
    let d = fx.dir.path();
    let rsa = read_pub(&keygen_file(d, "rsa", "rsa", Some(2048)));
    let rsa = ssh_key::PublicKey::from_openssh(&rsa).unwrap();
    let keys: Vec<ssh_key::PublicKey> = vec![
        ed25519_key().public_key().clone(),
        rsa,
        p256_key().public_key().clone(),
        ed25519_key().public_key().clone(),
    ];
    let spec: String = keys.iter().map(|k| format!("key: {}\n", k.to_openssh().unwrap())).collect();
    let spec = write(d, "spec", spec);
    let theirs = d.join("theirs.krl");
    ssh_keygen_ok(&["-k", "-z", "4", "-f", path_str(&theirs), path_str(&spec)]);
    let theirs = std::fs::read(&theirs).unwrap();

    let mut builder = KrlBuilder::new(4, 0, "");
    for key in keys.iter().rev() {
        builder.revoke_key(key.key_data());
    }
    let mut ours = builder.encode();
    // generated_date: magic (8) + format version (4) + krl_version (8).
    ours[20..28].copy_from_slice(&theirs[20..28]);
    assert_eq!(ours, theirs);

    let krl = fx.krl(&builder);
    let (ca, user) = (ed25519_key(), ed25519_key());
    assert!(is_revoked(&krl, &write(d, "k0.pub", keys[0].to_openssh().unwrap() + "\n")));
    assert!(!is_revoked(&krl, &fx.plain("user.pub", &user)));
    let holder = ed25519_key();
    let mut revoked_holder = KrlBuilder::new(5, 0, "");
    revoked_holder.revoke_key(holder.public_key().key_data());
    let krl = fx.krl(&revoked_holder);
    assert!(is_revoked(&krl, &fx.cert("h-cert.pub", &ca, &holder, 9, "x")), "a certificate for a revoked key");
    assert!(!is_revoked(&krl, &fx.cert("u-cert.pub", &ca, &user, 9, "x")));
}
