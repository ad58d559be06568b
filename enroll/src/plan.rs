//! From a CA bundle to the exact bytes of every file we manage, and the difference from
//! what is on disk. Pure apart from reading the current files.

use crate::error::{Error, Result};
use crate::fsx;
use crate::root::Root;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use portcullis_proto::PrincipalLine;
use portcullis_proto::enroll::NodeBundle;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A bundle checked before anything is written: a KRL that would make sshd refuse every
/// key, or host certificates that do not match the keys, never reach the disk.
#[derive(Debug, Clone)]
pub struct CheckedBundle {
    pub trusted_user_ca_keys: String,
    /// The principals files' lines per login (`[options ]principal`), checked.
    pub principals: BTreeMap<String, Vec<String>>,
    pub krl: Vec<u8>,
    pub host_certificates: Vec<HostCertificate>,
    pub trusted_host_ca_keys: String,
}

/// A host certificate from the bundle, with the key it certifies.
#[derive(Debug, Clone)]
pub struct HostCertificate {
    text: String,
    key: ssh_key::public::KeyData,
}

/// This node's host keys paired with the bundle's certificates by the key each one
/// certifies — not by position: a certificate installed for another key is one sshd
/// ignores, and clients that trust only the host CA then cannot verify the node.
#[derive(Debug, Default)]
pub struct HostCerts {
    /// Each certified key: where its certificate goes, and the certificate.
    pub certified: Vec<(PathBuf, String)>,
    /// Keys the bundle does not certify (regenerated since the CA recorded them, or
    /// unreadable): they get no `HostCertificate` line.
    pub uncertified: Vec<PathBuf>,
    /// Certificates for none of the keys.
    pub stray: usize,
}

impl HostCerts {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.certified.iter().map(|(path, _)| path.clone()).collect()
    }
}

/// Pairs `host_keys` (private key paths, as sshd names them) with the certificates
/// `bundle` holds for their public keys.
pub fn pair_host_certificates(root: &Root, bundle: &CheckedBundle, host_keys: &[PathBuf]) -> HostCerts {
    let mut pairs = HostCerts::default();
    let mut unused: Vec<&HostCertificate> = bundle.host_certificates.iter().collect();
    for key in host_keys {
        let public = crate::preflight::host_public_key(key).ok();
        let found = public.and_then(|public| unused.iter().position(|c| &c.key == public.key_data()));
        match found.map(|i| unused.swap_remove(i)) {
            Some(cert) => pairs.certified.push((host_cert_path(root, key), cert.text.clone())),
            None => pairs.uncertified.push(key.clone()),
        }
    }
    pairs.stray = unused.len();
    pairs
}

fn safe_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= 64
        && !login.starts_with(['.', '-'])
        && login.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn one_line(s: &str) -> bool {
    !s.is_empty() && !s.contains(['\n', '\r'])
}

/// The principals files' lines per login: the CA's `principal_lines` (each role confined
/// to what it grants), or — from a CA that predates them — the bare principals. Every
/// line is checked: a login that could escape the principals directory, a principal that
/// is not one word, or an option outside the short list sshd is given (never `command=`,
/// `environment=`, …) refuses the whole bundle.
fn principal_file_lines(bundle: &NodeBundle) -> Result<BTreeMap<String, Vec<String>>> {
    let logins = bundle.principals.keys().chain(bundle.principal_lines.keys());
    if let Some(login) = logins.into_iter().find(|l| !safe_login(l)) {
        return Err(Error::Ca(format!("the bundle names an unusable login {login:?}")));
    }
    if !bundle.principal_lines.is_empty() {
        let mut out = BTreeMap::new();
        for (login, lines) in &bundle.principal_lines {
            if !lines.iter().all(PrincipalLine::is_well_formed) {
                return Err(Error::Ca(format!("a principals line for {login} is malformed or has an unknown option")));
            }
            out.insert(login.clone(), lines.iter().map(PrincipalLine::render).collect());
        }
        return Ok(out);
    }
    for (login, list) in &bundle.principals {
        if !list.iter().all(|p| one_line(p) && !p.contains(char::is_whitespace)) {
            return Err(Error::Ca(format!("a principal for {login} is malformed")));
        }
    }
    Ok(bundle.principals.clone())
}

/// More certificate serials revoked for one CA key than any CA revokes one by one (a
/// KRL file is at most a few MiB, so only ranges reach it).
const MAX_REVOKED_SERIALS: u128 = 1 << 32;

/// The bundle's KRL, if sshd can load it and it leaves at least one of `user_cas` (the
/// user CA keys the node will trust) unrevoked.
fn checked_krl(bundle: &NodeBundle, user_cas: &[ssh_key::PublicKey]) -> Result<Vec<u8>> {
    let krl = STANDARD.decode(bundle.krl_base64.trim()).map_err(|_| Error::Ca("the KRL is not valid base64".into()))?;
    // The whole KRL is parsed, not just its magic: while sshd's `RevokedKeys` names a
    // file it cannot load, it refuses every public key (`sshd -t` still passes), so a
    // truncated or corrupt body would lock out every key login on the node.
    let revocations = portcullis_sshcert::Krl::parse(&krl)
        .map_err(|e| Error::Ca(format!("the CA sent a KRL that sshd could not load ({e}); refused")))?;
    // sshd refuses every certificate signed by a CA key the KRL revokes as a plain key:
    // a KRL revoking every CA key the node trusts would end every certificate login on
    // it (an administrator's slip, or a CA that has been taken over). Revoking one of
    // several — the old key, during a rotation after a compromise — is what a KRL is for.
    if user_cas.iter().all(|key| revocations.is_key_revoked(key.key_data())) {
        return Err(Error::Ca(
            "the CA sent a KRL that revokes every user CA key this node would trust, which would refuse every \
             certificate login; refused (the installed files stay)"
                .into(),
        ));
    }
    // The same end by another road: serial ranges that cover (nearly) every serial a
    // trusted CA key could sign. Ours revokes what it issued, serial by serial.
    if let Some(key) = user_cas.iter().find(|key| revocations.serials_revoked_for(key.key_data()) > MAX_REVOKED_SERIALS)
    {
        return Err(Error::Ca(format!(
            "the CA sent a KRL that revokes more than {MAX_REVOKED_SERIALS} certificate serials of the user CA key \
             {}, which would refuse its certificate logins wholesale; refused (the installed files stay)",
            portcullis_sshcert::fingerprint(key.key_data())
        )));
    }
    Ok(krl)
}

/// The user CA keys in `text` (an `authorized_keys`-style list).
fn user_ca_keys(text: &str) -> Result<Vec<ssh_key::PublicKey>> {
    let mut user_cas = Vec::new();
    for key in text.lines().filter(|l| !l.trim().is_empty()) {
        let key = ssh_key::PublicKey::from_openssh(key)
            .map_err(|_| Error::Ca("a trusted user CA key does not parse".into()))?;
        user_cas.push(key);
    }
    if user_cas.is_empty() {
        return Err(Error::Ca("the bundle has no trusted user CA key".into()));
    }
    Ok(user_cas)
}

/// The installed KRL, when it has a higher version than `krl`: a CA restored from an
/// older backup sends a KRL without the revocations made since, and the node keeps the
/// newer one (the CA's next revocation publishes a version above it). `None`: install
/// `krl` (also when nothing readable is installed).
pub fn newer_installed_krl(root: &Root, krl: &[u8]) -> Result<Option<(Vec<u8>, u64, u64)>> {
    let Some(installed) = fsx::read_opt(&root.krl())? else { return Ok(None) };
    let (Ok(held), Ok(sent)) = (portcullis_sshcert::Krl::parse(&installed), portcullis_sshcert::Krl::parse(krl)) else {
        return Ok(None);
    };
    Ok((held.krl_version() > sent.krl_version()).then(|| (installed, held.krl_version(), sent.krl_version())))
}

/// Whether `krl` revokes every user CA key the node trusts now (none installed: no).
pub fn revokes_every_installed_user_ca(root: &Root, krl: &[u8]) -> Result<bool> {
    let Some(installed) = fsx::read_opt(&root.user_ca())? else { return Ok(false) };
    let Ok(revocations) = portcullis_sshcert::Krl::parse(krl) else { return Ok(false) };
    let installed = user_ca_keys(&String::from_utf8_lossy(&installed)).unwrap_or_default();
    Ok(!installed.is_empty() && installed.iter().all(|key| revocations.is_key_revoked(key.key_data())))
}

/// The bundle's KRL on its own, for a refresh whose bundle was refused for something
/// else (a principals line or a host certificate this tool cannot use): revocations must
/// not wait on those. Checked like in [`check_bundle`], against the user CA keys the
/// node trusts now, which it keeps.
pub fn krl_alone(root: &Root, bundle: &NodeBundle) -> Result<Desired> {
    let installed = fsx::read_opt(&root.user_ca())?.unwrap_or_default();
    let user_cas = user_ca_keys(&String::from_utf8_lossy(&installed))?;
    let krl = checked_krl(bundle, &user_cas)?;
    let bytes = newer_installed_krl(root, &krl)?.map_or(krl, |(kept, _, _)| kept);
    Ok(Desired { path: root.krl(), bytes, mode: 0o644 })
}

pub fn check_bundle(bundle: &NodeBundle) -> Result<CheckedBundle> {
    let user_cas = user_ca_keys(&bundle.trusted_user_ca_keys)?;
    let krl = checked_krl(bundle, &user_cas)?;
    let principals = principal_file_lines(bundle)?;
    let mut host_certificates = Vec::new();
    for text in &bundle.host_certificates {
        let cert = ssh_key::Certificate::from_openssh(text.trim())
            .map_err(|_| Error::Ca("a host certificate does not parse".into()))?;
        if cert.cert_type() != ssh_key::certificate::CertType::Host {
            return Err(Error::Ca("a host certificate is not a host certificate".into()));
        }
        host_certificates.push(HostCertificate { text: text.trim().to_owned(), key: cert.public_key().clone() });
    }
    Ok(CheckedBundle {
        trusted_user_ca_keys: bundle.trusted_user_ca_keys.clone(),
        principals,
        krl,
        host_certificates,
        trusted_host_ca_keys: bundle.trusted_host_ca_keys.clone(),
    })
}

/// Ok when sshd would load these bytes as `RevokedKeys` (the same rules as OpenSSH's
/// `ssh-keygen -Q -f`, cross-checked in `sshcert`'s tests).
pub fn check_krl(bytes: &[u8]) -> std::result::Result<(), portcullis_sshcert::KrlError> {
    portcullis_sshcert::Krl::parse(bytes).map(|_| ())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Files to write (only those whose bytes differ from the disk).
    pub writes: Vec<Desired>,
    /// Managed files that should no longer exist.
    pub removes: Vec<PathBuf>,
    /// The drop-in or a host certificate changes: sshd must be validated and reloaded.
    pub touches_sshd: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.removes.is_empty()
    }

    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self.writes.iter().map(|d| format!("write {}", d.path.display())).collect();
        v.extend(self.removes.iter().map(|p| format!("remove {}", p.display())));
        v
    }

    /// Splits a refresh into the trust files sshd reads at every login (KRL, trusted CA
    /// keys, principals: they act without a reload) and the sshd change (drop-in, host
    /// certificates: they act only after a reload, so they must be checked first). The
    /// order within each part is kept, so the KRL stays the first write.
    pub fn split(self, root: &Root) -> (Plan, Plan) {
        let (sshd_writes, trust_writes): (Vec<Desired>, Vec<Desired>) =
            self.writes.into_iter().partition(|d| is_sshd_file(root, &d.path));
        let (sshd_removes, trust_removes): (Vec<PathBuf>, Vec<PathBuf>) =
            self.removes.into_iter().partition(|p| is_sshd_file(root, p));
        let trust = Plan { writes: trust_writes, removes: trust_removes, touches_sshd: false };
        let sshd = Plan {
            touches_sshd: !(sshd_writes.is_empty() && sshd_removes.is_empty()),
            writes: sshd_writes,
            removes: sshd_removes,
        };
        (trust, sshd)
    }
}

/// A file sshd reads only at start or reload: the drop-in and the host certificates
/// (`<stage>/<host key name>-cert.pub`; principals files live one level down, so a login
/// named like a certificate cannot be mistaken for one).
pub fn is_sshd_file(root: &Root, path: &Path) -> bool {
    path == root.drop_in()
        || (path.parent() == Some(root.stage().as_path()) && path.to_string_lossy().ends_with("-cert.pub"))
}

pub fn principals_text(list: &[String]) -> Vec<u8> {
    list.iter().map(|p| format!("{p}\n")).collect::<String>().into_bytes()
}

pub fn host_cert_path(root: &Root, host_key: &Path) -> PathBuf {
    let name = host_key.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "host_key".into());
    root.stage().join(format!("{name}-cert.pub"))
}

pub fn drop_in_text(root: &Root, host_certs: &[PathBuf]) -> Vec<u8> {
    let mut s = String::from(
        "# Written by portcullis-enroll: the node trusts the Portcullis CA.\n\
         # `portcullis-enroll remove` restores the previous state. Do not edit.\n",
    );
    s.push_str(&format!("TrustedUserCAKeys {}\n", root.user_ca().display()));
    s.push_str(&format!("AuthorizedPrincipalsFile {}/%u\n", root.principals_dir().display()));
    s.push_str(&format!("RevokedKeys {}\n", root.krl().display()));
    for cert in host_certs {
        s.push_str(&format!("HostCertificate {}\n", cert.display()));
    }
    s.into_bytes()
}

/// Keeps the current host certificate while it is for the same key, names the same
/// principals (the CA re-signs when the node's addresses change, and clients reaching it
/// at a new address need the new one) and has more than half of the new one's lifetime
/// left: the CA signs a fresh one on every request, and replacing it each time would
/// reload sshd on every refresh.
fn keep_host_cert(current: &[u8], new: &str, now: u64) -> bool {
    let (Ok(cur_text), Ok(new_cert)) = (std::str::from_utf8(current), ssh_key::Certificate::from_openssh(new.trim()))
    else {
        return false;
    };
    let Ok(cur) = ssh_key::Certificate::from_openssh(cur_text.trim()) else { return false };
    let lifetime = new_cert.valid_before().saturating_sub(new_cert.valid_after());
    cur.public_key() == new_cert.public_key()
        && cur.signature_key() == new_cert.signature_key()
        && cur.valid_principals() == new_cert.valid_principals()
        && cur.valid_after() <= now
        && cur.valid_before() > now.saturating_add(lifetime / 2)
}

/// The forced command of discovery certificates and the sudoers drop-in that lets it run
/// `dmidecode -t 1` and `-t 3` (and nothing else) as root.
pub const DISCOVERY_SCRIPT: &str = include_str!("../../discovery/node/portcullis-discovery.sh");
pub const DISCOVERY_SUDOERS: &str = include_str!("../../discovery/node/sudoers");
pub const SUDOERS_DROP_IN: &str = "/etc/sudoers.d/portcullis-discovery";

pub fn discovery_files(root: &Root) -> Vec<Desired> {
    vec![
        Desired {
            path: root.path(portcullis_proto::discovery::DISCOVERY_COMMAND),
            bytes: DISCOVERY_SCRIPT.as_bytes().to_vec(),
            mode: 0o755,
        },
        Desired { path: root.path(SUDOERS_DROP_IN), bytes: DISCOVERY_SUDOERS.as_bytes().to_vec(), mode: 0o440 },
    ]
}

/// Everything we manage, with its desired bytes.
/// `extra_principal` = (login, principal) staged only during verification.
pub fn desired(
    root: &Root,
    bundle: &CheckedBundle,
    host_certs: &HostCerts,
    extra_principal: Option<(&str, &str)>,
    now: u64,
    discovery: bool,
) -> Result<Vec<Desired>> {
    let mut out = vec![
        Desired { path: root.user_ca(), bytes: bundle.trusted_user_ca_keys.clone().into_bytes(), mode: 0o644 },
        Desired { path: root.krl(), bytes: bundle.krl.clone(), mode: 0o644 },
    ];
    let mut principals = bundle.principals.clone();
    if let Some((login, principal)) = extra_principal {
        if !safe_login(login) || !one_line(principal) {
            return Err(Error::Ca("the verification login or principal is malformed".into()));
        }
        principals.entry(login.to_owned()).or_default().push(principal.to_owned());
    }
    for (login, list) in &principals {
        out.push(Desired { path: root.principals_dir().join(login), bytes: principals_text(list), mode: 0o644 });
    }
    for (path, cert) in &host_certs.certified {
        let bytes = match fsx::read_opt(path)? {
            Some(cur) if keep_host_cert(&cur, cert, now) => cur,
            _ => format!("{cert}\n").into_bytes(),
        };
        out.push(Desired { path: path.clone(), bytes, mode: 0o644 });
    }
    if discovery {
        out.extend(discovery_files(root));
    }
    out.push(Desired { path: root.drop_in(), bytes: drop_in_text(root, &host_certs.paths()), mode: 0o644 });
    Ok(out)
}

/// Compares with the disk. `managed` are files written earlier (from the state), so
/// ones no longer desired (a login that lost all roles) are removed.
pub fn diff(root: &Root, desired: Vec<Desired>, managed: &[PathBuf]) -> Result<Plan> {
    let mut plan = Plan::default();
    let sshd_file = |p: &Path| is_sshd_file(root, p);
    for d in &desired {
        if fsx::read_opt(&d.path)?.as_deref() != Some(d.bytes.as_slice()) || fsx::mode_of(&d.path) != Some(d.mode) {
            if d.path == root.krl() {
                crate::sshd::node_loads_krl(&d.bytes)?;
            }
            plan.touches_sshd |= sshd_file(&d.path);
            plan.writes.push(d.clone());
        }
    }
    for p in managed {
        if p != &root.state_file() && !desired.iter().any(|d| &d.path == p) && p.exists() {
            plan.touches_sshd |= sshd_file(p);
            plan.removes.push(p.clone());
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names_cannot_escape_the_principals_directory() {
        assert!(safe_login("root"));
        assert!(!safe_login("../etc/passwd"));
        assert!(!safe_login(".."));
        assert!(!safe_login("a/b"));
        assert!(!safe_login(""));
    }

    fn bundle_with(lines: Vec<(&str, Vec<PrincipalLine>)>, bare: Vec<(&str, Vec<&str>)>) -> NodeBundle {
        NodeBundle {
            node: "n".into(),
            trusted_user_ca_keys: String::new(),
            principals: bare
                .into_iter()
                .map(|(l, p)| (l.to_owned(), p.into_iter().map(str::to_owned).collect()))
                .collect(),
            principal_lines: lines.into_iter().map(|(l, p)| (l.to_owned(), p)).collect(),
            krl_base64: String::new(),
            host_certificates: Vec::new(),
            trusted_host_ca_keys: String::new(),
        }
    }

    fn line(options: &[&str], principal: &str) -> PrincipalLine {
        PrincipalLine { options: options.iter().map(|o| (*o).to_owned()).collect(), principal: principal.into() }
    }

    #[test]
    fn principals_lines_carry_only_known_options() {
        let ok =
            bundle_with(vec![("root", vec![line(&["restrict", "pty"], "pc_a_root"), line(&[], "pn_b_root")])], vec![]);
        assert_eq!(principal_file_lines(&ok).unwrap()["root"], ["restrict,pty pc_a_root", "pn_b_root"]);
        // A CA from before principal lines: the bare principals.
        let old = bundle_with(vec![], vec![("root", vec!["pc_a_root"])]);
        assert_eq!(principal_file_lines(&old).unwrap()["root"], ["pc_a_root"]);
        // What a compromised or confused CA might send instead: all refused.
        for bad in [
            line(&["command=\"/bin/sh\""], "pc_a_root"),
            line(&["environment=\"LD_PRELOAD=/x\""], "pc_a_root"),
            line(&["restrict", "pty,permitopen=\"*:*\""], "pc_a_root"),
            line(&["restrict"], "pc_a_root\npc_evil"),
            line(&["restrict"], "two words"),
            line(&["restrict"], ""),
        ] {
            assert!(principal_file_lines(&bundle_with(vec![("root", vec![bad.clone()])], vec![])).is_err(), "{bad:?}");
        }
        let escape = bundle_with(vec![("../x", vec![line(&[], "p")])], vec![]);
        assert!(principal_file_lines(&escape).is_err());
    }

    #[test]
    fn refresh_splits_trust_files_from_the_sshd_change() {
        let root = Root::new("/r");
        let file = |path: PathBuf| Desired { path, bytes: Vec::new(), mode: 0o644 };
        let cert = root.stage().join("ssh_host_ed25519_key-cert.pub");
        let plan = Plan {
            writes: vec![
                file(root.krl()),
                file(root.user_ca()),
                file(root.principals_dir().join("root")),
                file(cert.clone()),
                file(root.drop_in()),
            ],
            removes: vec![root.principals_dir().join("x-cert.pub"), root.stage().join("old-cert.pub")],
            touches_sshd: true,
        };
        let (trust, sshd) = plan.split(&root);
        let paths = |p: &Plan| p.writes.iter().map(|d| d.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&trust), [root.krl(), root.user_ca(), root.principals_dir().join("root")]);
        assert_eq!(trust.removes, [root.principals_dir().join("x-cert.pub")]);
        assert!(!trust.touches_sshd);
        assert_eq!(paths(&sshd), [cert, root.drop_in()]);
        assert_eq!(sshd.removes, [root.stage().join("old-cert.pub")]);
        assert!(sshd.touches_sshd);
        let (trust, sshd) = Plan { writes: vec![file(root.krl())], ..Plan::default() }.split(&root);
        assert_eq!((trust.writes.len(), sshd.is_empty(), sshd.touches_sshd), (1, true, false));
    }

    #[test]
    fn a_krl_is_checked_whole_not_just_its_magic() {
        let mut b = portcullis_sshcert::KrlBuilder::new(1, 1_700_000_000, "");
        let key = ssh_key::PrivateKey::random(
            &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
            ssh_key::Algorithm::Ed25519,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        b.revoke_key_sha256(key.public_key().key_data());
        let good = b.encode();
        assert!(check_krl(&good).is_ok());
        assert!(check_krl(&good[..good.len() - 1]).is_err(), "truncated body");
        assert!(check_krl(b"SSHKRL\n\0").is_err(), "magic only");
    }

    /// A KRL that revokes every user CA key the bundle trusts would end every
    /// certificate login on the node: the bundle is refused. Revoking one of two (the
    /// old key during a rotation) passes.
    #[test]
    fn a_krl_revoking_every_trusted_user_ca_key_is_refused() {
        let key = || {
            ssh_key::PrivateKey::random(
                &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
                ssh_key::Algorithm::Ed25519,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let (old, new) = (key(), key());
        let openssh = |k: &ssh_key::PrivateKey| k.public_key().to_openssh().unwrap_or_default();
        let krl = |revoked: &[&ssh_key::PrivateKey]| {
            let mut b = portcullis_sshcert::KrlBuilder::new(1, 1_700_000_000, "");
            for k in revoked {
                b.revoke_key_sha256(k.public_key().key_data());
            }
            STANDARD.encode(b.encode())
        };
        let bundle = |cas: &[&ssh_key::PrivateKey], revoked: &[&ssh_key::PrivateKey]| NodeBundle {
            trusted_user_ca_keys: cas.iter().map(|k| openssh(k) + "\n").collect(),
            krl_base64: krl(revoked),
            ..bundle_with(vec![("root", vec![line(&[], "pn_n_root")])], vec![])
        };
        assert!(check_bundle(&bundle(&[&old], &[])).is_ok());
        let refused = check_bundle(&bundle(&[&old], &[&old])).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("revokes every user CA key"), "{refused}");
        assert!(check_bundle(&bundle(&[&old, &new], &[&old, &new])).is_err());
        assert!(check_bundle(&bundle(&[&old, &new], &[&old])).is_ok(), "revoking the old key in a rotation");
    }

    /// A KRL that revokes (nearly) every serial a trusted CA key could sign ends its
    /// certificate logins as surely as revoking the key: refused, for the key's own
    /// section and for the wildcard ("any CA") alike; a CA's usual serial list passes.
    #[test]
    fn a_krl_revoking_every_serial_is_refused() {
        let ca = ssh_key::PrivateKey::random(
            &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
            ssh_key::Algorithm::Ed25519,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ca_blob = ssh_key::encoding::Encode::encode_vec(ca.public_key().key_data()).unwrap_or_default();
        let string = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or_default().to_be_bytes());
            out.extend_from_slice(bytes);
        };
        // PROTOCOL.krl: a certificates section (1) for `ca_blob` with one serial range (0x21).
        let ranged = |ca_blob: &[u8], lo: u64, hi: u64| {
            let mut range = lo.to_be_bytes().to_vec();
            range.extend_from_slice(&hi.to_be_bytes());
            let mut section = Vec::new();
            string(&mut section, ca_blob);
            string(&mut section, b"");
            section.push(0x21);
            string(&mut section, &range);
            let mut krl = b"SSHKRL\n\0".to_vec();
            krl.extend_from_slice(&1u32.to_be_bytes());
            krl.extend_from_slice(&[0; 24]);
            string(&mut krl, b"");
            string(&mut krl, b"");
            krl.push(1);
            string(&mut krl, &section);
            STANDARD.encode(krl)
        };
        let bundle = |krl_base64: String| NodeBundle { krl_base64, ..valid_bundle() };
        let with_ca =
            |b: NodeBundle| NodeBundle { trusted_user_ca_keys: ca.public_key().to_openssh().unwrap_or_default(), ..b };
        for (what, krl) in
            [("its own section", ranged(&ca_blob, 1, u64::MAX)), ("the wildcard", ranged(&[], 1, u64::MAX))]
        {
            let refused = check_bundle(&with_ca(bundle(krl))).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(refused.contains("certificate serials"), "{what}: {refused}");
        }
        assert!(check_bundle(&with_ca(bundle(ranged(&ca_blob, 100, 100_000)))).is_ok(), "a usual range");
    }

    #[test]
    fn a_host_certificate_is_kept_only_while_it_says_the_same() {
        use ssh_key::certificate::{Builder, CertType};
        let random = || {
            ssh_key::PrivateKey::random(
                &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
                ssh_key::Algorithm::Ed25519,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let (ca, key) = (random(), random());
        let now = 1_800_000_000;
        let cert = |principals: &[&str]| {
            let mut b =
                Builder::new([7; 32], key.public_key().key_data().clone(), now - 60, now + 30 * 86_400).unwrap();
            b.cert_type(CertType::Host).unwrap();
            for p in principals {
                b.valid_principal(*p).unwrap();
            }
            b.sign(&ca).unwrap().to_openssh().unwrap()
        };
        let current = cert(&["pve01", "10.0.0.5"]);
        assert!(keep_host_cert(current.as_bytes(), &cert(&["pve01", "10.0.0.5"]), now), "the same: kept");
        assert!(!keep_host_cert(current.as_bytes(), &cert(&["pve01", "10.0.0.5", "10.0.1.5"]), now), "a new address");
    }

    #[test]
    fn host_certificates_go_to_the_keys_they_certify_whatever_their_order() {
        use ssh_key::certificate::{Builder, CertType};
        let random = |algorithm| {
            ssh_key::PrivateKey::random(&mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng), algorithm)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let ca = random(ssh_key::Algorithm::Ed25519);
        let cert = |key: &ssh_key::PrivateKey, kind: CertType| {
            let mut b = Builder::new([7; 32], key.public_key().key_data().clone(), 1, u64::MAX - 1).unwrap();
            b.cert_type(kind).unwrap();
            b.valid_principal("n").unwrap();
            b.sign(&ca).unwrap().to_openssh().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let ed25519 = random(ssh_key::Algorithm::Ed25519);
        let ecdsa = random(ssh_key::Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP256 });
        let regenerated = random(ssh_key::Algorithm::Ed25519);
        let paths: Vec<PathBuf> = ["ssh_host_ed25519_key", "ssh_host_ecdsa_key"].map(|n| dir.path().join(n)).into();
        for (path, key) in paths.iter().zip([&ed25519, &ecdsa]) {
            std::fs::write(format!("{}.pub", path.display()), key.public_key().to_openssh().unwrap()).unwrap();
        }
        let root = Root::new("/r");
        let checked = |certs: Vec<String>| {
            check_bundle(&NodeBundle { host_certificates: certs, ..valid_bundle() }).unwrap_or_else(|e| panic!("{e}"))
        };
        // The CA's order is not the node's: each key still gets its own.
        let bundle = checked(vec![cert(&ecdsa, CertType::Host), cert(&ed25519, CertType::Host)]);
        let pairs = pair_host_certificates(&root, &bundle, &paths);
        let expected: Vec<(PathBuf, String)> = vec![
            (root.stage().join("ssh_host_ed25519_key-cert.pub"), cert_of(&bundle, 1)),
            (root.stage().join("ssh_host_ecdsa_key-cert.pub"), cert_of(&bundle, 0)),
        ];
        assert_eq!((pairs.certified, pairs.uncertified.len(), pairs.stray), (expected, 0, 0));
        // A key regenerated since the CA recorded it: no certificate for it, the other kept.
        let bundle = checked(vec![cert(&regenerated, CertType::Host), cert(&ecdsa, CertType::Host)]);
        let pairs = pair_host_certificates(&root, &bundle, &paths);
        assert_eq!(pairs.paths(), [root.stage().join("ssh_host_ecdsa_key-cert.pub")]);
        assert_eq!((pairs.uncertified, pairs.stray), (vec![paths[0].clone()], 1));
        // An unreadable key is uncertified, not an error (a refresh still applies the KRL).
        let pairs = pair_host_certificates(&root, &bundle, &[dir.path().join("gone")]);
        assert_eq!((pairs.certified.len(), pairs.uncertified.len(), pairs.stray), (0, 1, 2));
        // A user certificate is no host certificate.
        let refused =
            check_bundle(&NodeBundle { host_certificates: vec![cert(&ecdsa, CertType::User)], ..valid_bundle() });
        assert!(refused.is_err());
    }

    fn cert_of(bundle: &CheckedBundle, i: usize) -> String {
        bundle.host_certificates[i].text.clone()
    }

    /// A bundle `check_bundle` accepts: one user CA key, an empty KRL.
    fn valid_bundle() -> NodeBundle {
        let ca = ssh_key::PrivateKey::random(
            &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
            ssh_key::Algorithm::Ed25519,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        NodeBundle {
            trusted_user_ca_keys: ca.public_key().to_openssh().unwrap_or_default(),
            krl_base64: STANDARD.encode(portcullis_sshcert::KrlBuilder::new(1, 1_700_000_000, "").encode()),
            ..bundle_with(vec![("root", vec![line(&[], "pn_n_root")])], vec![])
        }
    }

    #[test]
    fn drop_in_sets_only_our_four_keywords() {
        let root = Root::new("/r");
        let text = String::from_utf8(drop_in_text(&root, &[PathBuf::from("/r/c")])).unwrap_or_default();
        let keywords: Vec<&str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(' ').next()).collect();
        assert_eq!(keywords, ["TrustedUserCAKeys", "AuthorizedPrincipalsFile", "RevokedKeys", "HostCertificate"]);
    }
}
