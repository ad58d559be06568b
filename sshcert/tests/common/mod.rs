//! Helpers for tests that check this crate against the real OpenSSH `ssh-keygen`.
//!
//! Keys and certificates are generated at test time (in code or by
//! `ssh-keygen`), never committed.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ssh_key::certificate::{Builder, CertType};
use ssh_key::getrandom::SysRng;
use ssh_key::rand_core::UnwrapErr;
use ssh_key::{Algorithm, Certificate, EcdsaCurve, PrivateKey};

pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// The path to `ssh-keygen`; the calling test fails when it is missing.
pub fn ssh_keygen() -> &'static Path {
    let path = Path::new(SSH_KEYGEN);
    // A test whose peer is missing fails: it never skips and passes.
    assert!(path.exists(), "{SSH_KEYGEN} is missing: install openssh-client (scripts/test.sh does)");
    path
}

pub fn run_ssh_keygen(args: &[&str]) -> Output {
    Command::new(SSH_KEYGEN).args(args).output().expect("failed to start ssh-keygen")
}

/// Runs `ssh-keygen` and fails the test with its stderr unless it exits 0.
pub fn ssh_keygen_ok(args: &[&str]) -> String {
    let out = run_ssh_keygen(args);
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("ssh-keygen printed non-UTF-8")
}

/// Has `ssh-keygen` create an unencrypted key pair `dir/name`, `dir/name.pub`.
pub fn keygen_file(dir: &Path, name: &str, key_type: &str, bits: Option<u32>) -> PathBuf {
    let path = dir.join(name);
    let path_str = path.to_str().expect("non-UTF-8 temp path");
    let bits = bits.map(|b| b.to_string());
    let mut args = vec!["-q", "-t", key_type, "-N", "", "-C", "test@comment", "-f", path_str];
    if let Some(bits) = &bits {
        args.extend(["-b", bits.as_str()]);
    }
    ssh_keygen_ok(&args);
    path
}

pub fn read_pub(private_path: &Path) -> String {
    std::fs::read_to_string(private_path.with_extension("pub")).expect("read .pub")
}

pub fn random_key(algorithm: Algorithm) -> PrivateKey {
    PrivateKey::random(&mut UnwrapErr(SysRng), algorithm).expect("key generation")
}

pub fn ed25519_key() -> PrivateKey {
    random_key(Algorithm::Ed25519)
}

pub fn p256_key() -> PrivateKey {
    random_key(Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 })
}

/// A user certificate for `user`, signed by `ca`, valid from the epoch to the
/// end of time so that clock skew cannot make a test flaky.
pub fn user_cert(ca: &PrivateKey, user: &PrivateKey, serial: u64, key_id: &str) -> Certificate {
    let mut builder =
        Builder::new_with_random_nonce(&mut UnwrapErr(SysRng), user.public_key().key_data().clone(), 0, u64::MAX)
            .expect("builder");
    builder.serial(serial).expect("serial");
    builder.key_id(key_id).expect("key id");
    builder.cert_type(CertType::User).expect("cert type");
    builder.valid_principal("alice").expect("principal");
    builder.sign(ca).expect("sign")
}

pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

pub fn write_cert(dir: &Path, name: &str, cert: &Certificate) -> PathBuf {
    write(dir, name, cert.to_openssh().expect("encode cert") + "\n")
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("non-UTF-8 temp path")
}
