//! KRLs written by the real `ssh-keygen -k` (serial lists, ranges, bitmaps,
//! key IDs, explicit keys, SHA-1 and SHA-256 hashes, several CAs) loaded by
//! [`Krl::parse`], whose verdicts must equal `ssh-keygen -Q`'s for every
//! certificate and key we try.

// Tests may panic: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use portcullis_sshcert::{Krl, KrlBuilder, fingerprint};
use ssh_key::{Certificate, PrivateKey, PublicKey};

enum Subject {
    Cert(Box<Certificate>),
    Plain(PublicKey),
}

struct Case {
    label: String,
    file: PathBuf,
    subject: Subject,
}

struct Cases {
    dir: tempfile::TempDir,
    cases: Vec<Case>,
}

impl Cases {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), cases: Vec::new() }
    }

    fn cert(&mut self, label: impl Into<String>, ca: &PrivateKey, user: &PrivateKey, serial: u64, key_id: &str) {
        let cert = user_cert(ca, user, serial, key_id);
        let file = write_cert(self.dir.path(), &format!("case{}.pub", self.cases.len()), &cert);
        self.cases.push(Case { label: label.into(), file, subject: Subject::Cert(Box::new(cert)) });
    }

    fn plain(&mut self, label: impl Into<String>, key: &PrivateKey) {
        let line = key.public_key().to_openssh().unwrap() + "\n";
        let file = write(self.dir.path(), &format!("case{}.pub", self.cases.len()), line);
        self.cases.push(Case { label: label.into(), file, subject: Subject::Plain(key.public_key().clone()) });
    }

    /// Compares our verdict with `ssh-keygen -Q` for every case, in one run of
    /// `ssh-keygen`. Returns how many were revoked.
    fn compare(&self, krl_path: &Path) -> usize {
        let ours = Krl::parse(&std::fs::read(krl_path).unwrap()).expect("our parser refused ssh-keygen's KRL");
        let mut args = vec!["-Q", "-f", path_str(krl_path)];
        args.extend(self.cases.iter().map(|c| path_str(&c.file)));
        let out = run_ssh_keygen(&args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), self.cases.len(), "ssh-keygen -Q: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let mut revoked = 0;
        for (case, line) in self.cases.iter().zip(lines) {
            assert!(line.starts_with(path_str(&case.file)), "{line}");
            let theirs = match line {
                l if l.ends_with(": REVOKED") => true,
                l if l.ends_with(": ok") => false,
                other => panic!("unexpected ssh-keygen -Q line {other}"),
            };
            let mine = match &case.subject {
                Subject::Cert(cert) => ours.is_revoked(cert),
                Subject::Plain(key) => ours.is_key_revoked(key.key_data()),
            };
            assert_eq!(mine, theirs, "verdicts differ for {}", case.label);
            revoked += usize::from(theirs);
        }
        revoked
    }
}

/// Section and certificate-subsection types present in a KRL, so a test can
/// show that `ssh-keygen` really used the encodings it means to cover.
fn section_types(krl: &[u8]) -> Vec<u8> {
    fn string<'a>(b: &mut &'a [u8]) -> &'a [u8] {
        let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        let s = &b[4..4 + len];
        *b = &b[4 + len..];
        s
    }
    let mut b = &krl[8 + 4 + 8 + 8 + 8..];
    string(&mut b);
    string(&mut b);
    let mut types = Vec::new();
    while !b.is_empty() {
        let t = b[0];
        b = &b[1..];
        let mut data = string(&mut b);
        types.push(t);
        if t == 1 {
            string(&mut data);
            string(&mut data);
            while !data.is_empty() {
                types.push(data[0]);
                data = &data[1..];
                string(&mut data);
            }
        }
    }
    types
}

#[test]
fn ssh_keygen_krl_matches_ssh_keygen_verdicts() {
    ssh_keygen();
    let mut cases = Cases::new();
    let d = cases.dir.path().to_owned();
    let (ca, ca2, other_ca) = (ed25519_key(), p256_key(), ed25519_key());
    let user = ed25519_key();
    let by_sha256 = p256_key();
    let by_key = ed25519_key();
    let by_sha1 = p256_key();
    let by_hash = ed25519_key();
    let free = ed25519_key();
    let pub_line = |k: &PrivateKey| k.public_key().to_openssh().unwrap();

    let mut spec = String::from("serial: 100-200\nserial: 5\nserial: 1000\nserial: 18446744073709551615\n");
    // Every other serial in 300..=500: dense enough that ssh-keygen uses a bitmap.
    for serial in (300..=500).step_by(2) {
        spec += &format!("serial: {serial}\n");
    }
    spec += "id: bob\nid: carol@example.org\n";
    spec += &format!("sha256: {}\n", pub_line(&by_sha256));
    spec += &format!("key: {}\n", pub_line(&by_key));
    spec += &format!("sha1: {}\n", pub_line(&by_sha1));
    spec += &format!("hash: {}\n", fingerprint(by_hash.public_key().key_data()));
    let spec = write(&d, "spec", spec);
    let ca_pub = write(&d, "ca.pub", pub_line(&ca) + "\n");
    let krl = d.join("theirs.krl");
    ssh_keygen_ok(&["-k", "-f", path_str(&krl), "-s", path_str(&ca_pub), path_str(&spec)]);
    // A second CA, added with -u (update), with a range and key ID of its own.
    let spec2 = write(&d, "spec2", "serial: 7-9\nid: dave\n");
    let ca2_pub = write(&d, "ca2.pub", pub_line(&ca2) + "\n");
    ssh_keygen_ok(&["-k", "-u", "-f", path_str(&krl), "-s", path_str(&ca2_pub), path_str(&spec2)]);

    let types = section_types(&std::fs::read(&krl).unwrap());
    for (t, what) in [(0x20, "serial list"), (0x21, "range"), (0x22, "bitmap"), (0x23, "key ID"), (2, "explicit key")] {
        assert!(types.contains(&t), "ssh-keygen wrote no {what} subsection: {types:x?}");
    }
    assert!(types.contains(&3) && types.contains(&5), "no SHA1/SHA256 sections: {types:x?}");

    let serials = [
        0,
        1,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        99,
        100,
        101,
        150,
        199,
        200,
        201,
        299,
        300,
        301,
        302,
        303,
        498,
        499,
        500,
        501,
        502,
        999,
        1000,
        1001,
        u64::MAX - 1,
        u64::MAX,
    ];
    for serial in serials {
        for (name, signer) in [("ca", &ca), ("ca2", &ca2), ("other", &other_ca)] {
            cases.cert(format!("{name} serial {serial}"), signer, &user, serial, "alice");
        }
    }
    for id in ["bob", "carol@example.org", "bob ", "Bob", "dave", "", "carol"] {
        for (name, signer) in [("ca", &ca), ("ca2", &ca2), ("other", &other_ca)] {
            cases.cert(format!("{name} key id {id:?}"), signer, &user, 0, id);
            cases.cert(format!("{name} key id {id:?} serial 3"), signer, &user, 3, id);
        }
    }
    for (name, key) in
        [("sha256", &by_sha256), ("key", &by_key), ("sha1", &by_sha1), ("hash", &by_hash), ("free", &free)]
    {
        cases.plain(format!("plain {name}"), key);
        cases.cert(format!("{name} cert from other CA"), &other_ca, key, 3, "x");
    }
    cases.plain("plain ca", &ca);

    // Both parsers agree case by case; the count shows the spec meant what we
    // think: 12 serials of `ca` (5, 100, 101, 150, 199, 200, 300, 302, 498, 500,
    // 1000, 2^64-1), 3 of `ca2` (7-9), key IDs bob and carol (x2 serials) and
    // dave (x2), and 4 revoked keys both plain and certified.
    assert_eq!(cases.compare(&krl), 12 + 3 + 4 + 2 + 4 + 4);
}

/// A CA whose own key is revoked as a plain key takes its certificates with it.
#[test]
fn revoked_ca_key_revokes_its_certificates_as_in_ssh_keygen() {
    ssh_keygen();
    let mut cases = Cases::new();
    let d = cases.dir.path().to_owned();
    let (ca, other_ca, user) = (p256_key(), ed25519_key(), ed25519_key());
    let spec = write(&d, "spec", format!("sha256: {}\n", ca.public_key().to_openssh().unwrap()));
    let krl = d.join("k.krl");
    ssh_keygen_ok(&["-k", "-f", path_str(&krl), path_str(&spec)]);
    cases.cert("signed by revoked CA", &ca, &user, 12, "alice");
    cases.cert("signed by another CA", &other_ca, &user, 12, "alice");
    cases.plain("the user key", &user);
    assert_eq!(cases.compare(&krl), 1);
}

/// `ssh-keygen -k` cannot write the wildcard ("any CA") entry, but OpenSSH
/// loads it; build one by hand and compare verdicts.
#[test]
fn wildcard_ca_key_ids_and_serials_match_ssh_keygen() {
    ssh_keygen();
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut krl = b"SSHKRL\n\0".to_vec();
    krl.extend_from_slice(&1u32.to_be_bytes());
    krl.extend_from_slice(&[0; 24]);
    string(&mut krl, b"");
    string(&mut krl, b"wildcard");
    let mut section = Vec::new();
    string(&mut section, b""); // no CA key: any CA
    string(&mut section, b"");
    let mut ids = Vec::new();
    string(&mut ids, b"mallory");
    section.push(0x23);
    string(&mut section, &ids);
    section.push(0x21);
    string(&mut section, &[40u64.to_be_bytes(), 45u64.to_be_bytes()].concat());
    krl.push(1);
    string(&mut krl, &section);

    let mut cases = Cases::new();
    let krl_path = write(cases.dir.path(), "w.krl", &krl);
    let (ca1, ca2, user) = (ed25519_key(), p256_key(), ed25519_key());
    for ca in [&ca1, &ca2] {
        cases.cert("mallory", ca, &user, 1, "mallory");
        cases.cert("mallory serial 0", ca, &user, 0, "mallory");
        cases.cert("alice 39", ca, &user, 39, "alice");
        cases.cert("alice 40", ca, &user, 40, "alice");
        cases.cert("alice 45", ca, &user, 45, "alice");
        cases.cert("alice 46", ca, &user, 46, "alice");
    }
    cases.plain("user", &user);
    assert_eq!(cases.compare(&krl_path), 8);
}

/// Our encoder's output, read back by our decoder, agrees with ssh-keygen.
#[test]
fn our_encoder_round_trips_through_both_parsers() {
    ssh_keygen();
    let mut cases = Cases::new();
    let (ca, ca2, user, revoked_key) = (ed25519_key(), p256_key(), ed25519_key(), p256_key());
    let mut builder = KrlBuilder::new(3, 1_700_000_000, "ours");
    builder.revoke_serial(ca.public_key().key_data(), 11);
    builder.revoke_serial(ca.public_key().key_data(), u64::MAX - 1);
    builder.revoke_key_id(ca2.public_key().key_data(), "eve");
    builder.revoke_key_sha256(revoked_key.public_key().key_data());
    let krl_path = write(cases.dir.path(), "ours.krl", builder.encode());
    for signer in [&ca, &ca2] {
        for (serial, id) in [(11, "a"), (12, "a"), (u64::MAX - 1, "a"), (0, "eve"), (5, "eve"), (0, "a")] {
            cases.cert(format!("{serial} {id}"), signer, &user, serial, id);
        }
        cases.cert("revoked key", signer, &revoked_key, 12, "a");
    }
    cases.plain("revoked key", &revoked_key);
    cases.plain("user", &user);
    assert_eq!(cases.compare(&krl_path), 7);
}
