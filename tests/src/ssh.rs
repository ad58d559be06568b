//! Keys generated at test time (never committed) and the real `ssh-keygen`.

use ssh_key::getrandom::SysRng;
use ssh_key::rand_core::UnwrapErr;
use ssh_key::{Algorithm, LineEnding, PrivateKey};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// A fresh ed25519 key pair, generated in code.
pub fn ed25519_key() -> PrivateKey {
    PrivateKey::random(&mut UnwrapErr(SysRng), Algorithm::Ed25519).expect("key generation")
}

/// The OpenSSH public key line of `key`.
pub fn public_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().expect("encode public key")
}

/// Writes `key` to `dir/name` (mode 0600, unencrypted) and its public half to
/// `dir/name.pub`, as `ssh -i` expects; returns the private key's path.
pub fn write_key_pair(dir: &Path, name: &str, key: &PrivateKey) -> PathBuf {
    let path = dir.join(name);
    key.write_openssh_file(&path, LineEnding::LF).expect("write private key");
    std::fs::write(dir.join(format!("{name}.pub")), public_line(key) + "\n").expect("write public key");
    path
}

/// Runs `ssh-keygen` with `args`; the caller judges the exit status.
pub fn ssh_keygen(args: &[&str]) -> Output {
    Command::new(SSH_KEYGEN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SSH_KEYGEN} (install openssh-client): {e}"))
}

/// Runs `ssh-keygen` and panics with its output unless it exits 0; returns stdout.
pub fn ssh_keygen_ok(args: &[&str]) -> String {
    let out = ssh_keygen(args);
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Has `ssh-keygen` generate `dir/name` of `key_type` (and `bits`); returns the public
/// key line. For key types the CA must refuse (DSA, small RSA), which ssh-key will not make.
pub fn ssh_keygen_public_line(dir: &Path, name: &str, key_type: &str, bits: Option<u32>) -> String {
    let path = dir.join(name);
    let path = path.to_str().expect("UTF-8 temp path");
    let bits = bits.map(|b| b.to_string());
    let mut args = vec!["-q", "-t", key_type, "-N", "", "-C", "test-key", "-f", path];
    if let Some(bits) = &bits {
        args.extend(["-b", bits.as_str()]);
    }
    ssh_keygen_ok(&args);
    std::fs::read_to_string(format!("{path}.pub")).expect("read generated public key").trim().to_owned()
}

/// Whether `ssh-keygen -Q -f KRL FILE` says the key or certificate in `file` is revoked.
/// Panics if ssh-keygen could not read either file (so a broken KRL never looks like
/// "not revoked").
pub fn krl_revokes(krl: &Path, file: &Path) -> bool {
    let out = ssh_keygen(&["-Q", "-f", path_str(krl), path_str(file)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("REVOKED") {
        assert!(!out.status.success(), "ssh-keygen -Q said REVOKED but exited 0");
        return true;
    }
    assert!(
        out.status.success() && stdout.contains(": ok"),
        "ssh-keygen -Q -f {} {} failed ({}): {stdout}{stderr}",
        krl.display(),
        file.display(),
        out.status
    );
    false
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// What an SSH client proves when it authenticates with `certificate` as `user` on a
/// connection with `session_id` (RFC 4252 §7): the request it signs and its signature
/// by `key` — as the bastion forwards them to the CA. A test "bastion" makes real
/// proofs with the user's key, and forgeries with any other.
pub fn connection_proof(
    key: &PrivateKey,
    certificate: &ssh_key::Certificate,
    user: &str,
    session_id: &[u8],
) -> portcullis_proto::bastion::ConnectionProof {
    connection_proof_signed(&|signed| signature::Signer::try_sign(key, signed).unwrap(), certificate, user, session_id)
}

/// [`connection_proof`] with the signature `sign` makes over the signed data (a
/// security key's, say).
pub fn connection_proof_signed(
    sign: &dyn Fn(&[u8]) -> ssh_key::Signature,
    certificate: &ssh_key::Certificate,
    user: &str,
    session_id: &[u8],
) -> portcullis_proto::bastion::ConnectionProof {
    use ssh_key::encoding::Encode;
    let mut request = vec![50u8]; // SSH_MSG_USERAUTH_REQUEST
    for s in [user, "ssh-connection", "publickey"] {
        s.encode(&mut request).unwrap();
    }
    true.encode(&mut request).unwrap();
    certificate.public_key().algorithm().to_certificate_type().encode(&mut request).unwrap();
    certificate.to_bytes().unwrap().encode(&mut request).unwrap();
    let mut signed = Vec::new();
    session_id.encode(&mut signed).unwrap();
    signed.extend_from_slice(&request);
    let mut sig = Vec::new();
    sign(&signed).encode(&mut sig).unwrap();
    portcullis_proto::bastion::ConnectionProof::new(session_id, &request, &sig)
}

/// A software stand-in for a FIDO security key (`sk-ssh-ed25519@openssh.com`): an
/// Ed25519 key signing what an authenticator signs, with the flags the test says it
/// confirmed — a touch ([`Self::TOUCH`]), user verification ([`Self::VERIFIED`]) —
/// which no real client can be made to leave out on demand. As a russh [`russh::Signer`]
/// it logs in as `ssh` does with such a key.
pub struct SoftSecurityKey {
    key: PrivateKey,
    pub flags: u8,
}

impl SoftSecurityKey {
    pub const TOUCH: u8 = 0x01;
    pub const VERIFIED: u8 = 0x04;
    const APPLICATION: &'static str = "ssh:";

    pub fn new(flags: u8) -> Self {
        Self { key: ed25519_key(), flags }
    }

    /// The security key's public key, as `ssh-keygen -t ed25519-sk` would write it.
    pub fn public_key(&self) -> ssh_key::PublicKey {
        let point = *self.key.public_key().key_data().ed25519().unwrap();
        ssh_key::public::KeyData::SkEd25519(ssh_key::public::SkEd25519::new(point, Self::APPLICATION)).into()
    }

    /// What the authenticator signs — `sha256(application) || flags || counter ||
    /// sha256(message)` — signed, as an sk signature (the flags and counter after it).
    pub fn sign(&self, message: &[u8]) -> ssh_key::Signature {
        use sha2::Digest;
        let counter = 1u32.to_be_bytes();
        let mut signed = sha2::Sha256::digest(Self::APPLICATION).to_vec();
        signed.push(self.flags);
        signed.extend(counter);
        signed.extend(sha2::Sha256::digest(message));
        let inner: ssh_key::Signature = signature::Signer::try_sign(&self.key, &signed).unwrap();
        let data = [inner.as_bytes(), &[self.flags], &counter].concat();
        ssh_key::Signature::new(Algorithm::SkEd25519, data).unwrap()
    }
}

impl russh::Signer for SoftSecurityKey {
    type Error = russh::AgentAuthError;

    /// As an agent answers: the data to sign with the signature blob appended.
    async fn auth_sign(
        &mut self,
        _key: &russh::keys::agent::AgentIdentity,
        _hash_alg: Option<ssh_key::HashAlg>,
        mut to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, Self::Error> {
        use ssh_key::encoding::Encode;
        let mut blob = Vec::new();
        self.sign(&to_sign).encode(&mut blob).unwrap();
        blob.encode(&mut to_sign).unwrap();
        Ok(to_sign)
    }
}

/// A russh client handler that accepts any host key: for tests that talk to the
/// bastion as a hand-made client (what stock `ssh` would not send).
pub struct TrustAnyHost;

impl russh::client::Handler for TrustAnyHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}
