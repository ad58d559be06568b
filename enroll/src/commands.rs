//! The four commands. Each one is: take the run lock ([`crate::lock`]), recover an
//! interrupted run, check, then change inside a [`Txn`] that rolls back on any error — so
//! the node ends either as it was or fully enrolled, and the original way in (authorized
//! keys) is never touched. `refresh` (in [`crate::refresh`]) commits in two such
//! transactions: trust files, then the sshd change. `status` and `--check` never write.

use crate::addresses;
use crate::client::Api;
use crate::error::{Error, Result};
use crate::lock;
use crate::plan::{self, CheckedBundle, Desired, HostCerts};
use crate::preflight::{self, Facts};
use crate::proof::node_proof;
pub use crate::refresh::refresh;
use crate::refresh::refresh_with;
use crate::report::Report;
use crate::root::Root;
pub use crate::run::Global;
use crate::run::{CHECK_PENDING, lock, now, open_stage_dirs, recover, verify_effective, without_own_files, write_all};
use crate::secret::{ExposeSecret, Token};
use crate::sshd;
use crate::state::{PendingDeregistration, State};
use crate::txn::{self, RolledBack, Txn};
use crate::{failpoint, fsx};
use portcullis_proto::enroll::{EnrollAbortRequest, EnrollRequest, EnrollResponse, NodeFacts, NodeProof};
use portcullis_proto::pin::normalize_pin;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct EnrollArgs {
    pub ca: String,
    pub token: Token,
    pub ca_fingerprint: String,
    pub name: Option<String>,
    pub sshd_port: Option<u16>,
    pub addresses: Vec<String>,
    pub discovery: bool,
}

fn hostname(root: &Root) -> Option<String> {
    let text = std::fs::read_to_string(root.path("/etc/hostname")).ok().or_else(|| {
        let out = std::process::Command::new("hostname").output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    })?;
    text.trim().split('.').next().map(str::to_owned).filter(|s| !s.is_empty())
}

fn pin_of(fingerprint: &str) -> Result<String> {
    normalize_pin(fingerprint)
        .ok_or_else(|| Error::Usage("--ca-fingerprint must look like SHA256:<base64> (as the CA prints it)".into()))
}

pub async fn enroll(g: &Global, a: EnrollArgs, r: &mut Report) -> Result<String> {
    let _lock = lock(g)?;
    if !recover(g, r)? {
        return Ok(CHECK_PENDING.into());
    }
    open_stage_dirs(g, r)?;
    let pin = pin_of(&a.ca_fingerprint)?;
    let api = Api::new(&a.ca, &pin)?;
    let facts = preflight::run(&g.root, &g.sshd, a.sshd_port)?;
    r.step(
        "preflight",
        format!(
            "{}; {}; Proxmox VE: {}; service {}; {} host key(s); sshd port {}",
            facts.os.as_deref().unwrap_or("unknown OS"),
            facts.openssh.as_deref().unwrap_or("unknown OpenSSH"),
            if facts.pve { facts.pve_version.as_deref().unwrap_or("yes") } else { "no" },
            facts.service,
            facts.host_keys.len(),
            facts.port
        ),
    );
    r.set("facts", &facts);
    if let Some(state) = State::load(&g.root)? {
        if state.ca_url != a.ca.trim_end_matches('/') || state.ca_fingerprint != pin {
            return Err(Error::Refused(format!(
                "already enrolled with {} ({}); run `portcullis-enroll remove` first",
                state.ca_url, state.ca_fingerprint
            )));
        }
        if a.discovery && !state.discovery {
            return Err(Error::Refused(
                "already enrolled without --discovery; run `portcullis-enroll remove`, then enroll with --discovery"
                    .into(),
            ));
        }
        r.step("enroll", format!("already enrolled as {}: comparing with the CA (the token is not used)", state.node));
        return refresh_with(g, state, &api, r).await;
    }
    let name = match a.name.clone().or_else(|| hostname(&g.root)) {
        Some(n) => n,
        None => return Err(Error::Usage("cannot tell the node's name; pass --name".into())),
    };
    let addresses = node_addresses(&g.root, &name, &a.addresses, r);
    if g.check {
        r.step("check", format!("would register {name} and write the trust files and {}", g.root.drop_in().display()));
        return Ok(format!("check: {name} is not enrolled; enrolling would change the node"));
    }

    let key = ssh_key::PrivateKey::random(
        &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
        ssh_key::Algorithm::Ed25519,
    )
    .map_err(|e| Error::Failed(format!("cannot generate the verification key: {e}")))?;
    let verification_public_key =
        key.public_key().to_openssh().map_err(|e| Error::Failed(format!("cannot encode a key: {e}")))?;
    let mut req = EnrollRequest {
        facts: NodeFacts {
            name: name.clone(),
            addresses,
            host_keys: facts.host_keys.iter().map(|k| k.public.clone()).collect(),
            os: facts.os.clone(),
            sshd_version: facts.openssh.clone(),
            pve_cluster: facts.pve_cluster.clone(),
            pve_node: facts.pve.then(|| name.clone()),
            ssh_port: Some(facts.port),
        },
        verification_public_key,
        proof: None,
    };
    // The CA re-enrolls a name it already knows only for a holder of one of its pinned
    // host keys; the node holds them, so it always proves itself (bound to this request
    // and token).
    if let Some(host_key) = preflight::proof_key(&facts.host_keys) {
        let action = NodeProof::enroll_action(&req.facts, a.token.expose_secret());
        req.proof = Some(node_proof(&name, &action, &host_key, now())?);
    }
    let resp = api.enroll(&a.token, &req).await?;
    r.step("register", format!("the CA registered node {}", resp.bundle.node));
    r.set("node", &resp.bundle.node);
    let bundle = plan::check_bundle(&resp.bundle)?;
    let host_key_paths: Vec<PathBuf> = facts.host_keys.iter().map(|k| k.path.clone()).collect();
    let host_certs = plan::pair_host_certificates(&g.root, &bundle, &host_key_paths);
    // The CA certifies the keys just sent: anything else is a CA at fault.
    if !bundle.host_certificates.is_empty() && (!host_certs.uncertified.is_empty() || host_certs.stray > 0) {
        return Err(Error::Ca("the bundle's host certificates do not certify this node's host keys".into()));
    }

    let mut txn = Txn::begin(&g.root)?;
    // An account created for discovery is in the journal: a rollback deletes it.
    let activated = activate(g, &facts, &pin, &a.ca, &resp, (&bundle, &host_certs), &key, a.discovery, &mut txn, r);
    match activated {
        Ok(()) => {
            r.writes = txn.writes();
            txn.commit()?;
            r.step("commit", "enrolled; the original logins were never touched");
            Ok(format!("enrolled {} with {}", resp.bundle.node, api_base(&a.ca)))
        }
        Err(Error::FailPoint(p)) => Err(Error::FailPoint(p)),
        Err(e) => {
            r.writes = txn.writes();
            r.reloads += usize::from(txn.rollback_reloads());
            // Once the node is back as it was, the CA undoes the registration too (and
            // gives the token its use back). Only after a complete rollback — otherwise
            // the journal's next run finishes it and the node stays registered meanwhile.
            match txn.rollback(&g.sshd, e) {
                Ok(rolled_back) => {
                    let undone = abort_at_ca(&rolled_back, &api, &name, &resp.verification_principal, &facts).await;
                    let err = rolled_back.into_error();
                    r.step("rollback", err.to_string());
                    r.step("unregister", undone);
                    Err(err)
                }
                Err(err) => {
                    r.step("rollback", err.to_string());
                    Err(err)
                }
            }
        }
    }
}

/// Tells the CA the enrollment was rolled back (which `_done` proves); what happened,
/// for the report.
async fn abort_at_ca(_done: &RolledBack, api: &Api, name: &str, verification_principal: &str, facts: &Facts) -> String {
    let Some(host_key) = preflight::proof_key(&facts.host_keys) else {
        return "no host key to prove the node with; the CA keeps the registration".into();
    };
    let action = NodeProof::abort_action(verification_principal);
    let request = match node_proof(name, &action, &host_key, now()) {
        Ok(proof) => EnrollAbortRequest { verification_principal: verification_principal.to_owned(), proof },
        Err(e) => return format!("cannot prove the node to the CA ({e}); the CA keeps the registration"),
    };
    match api.abort_enrollment(&request).await {
        Ok(()) => "the CA removed the registration and gave the token its use back".into(),
        Err(e) => format!("the CA did not undo the registration ({e}); `portcullis admin node remove {name}` does"),
    }
}

/// `--address` as given, or else what the node can tell about itself; detection
/// problems are reported, never fatal (the CA then knows the node by name only).
fn node_addresses(root: &Root, name: &str, given: &[String], r: &mut Report) -> Vec<String> {
    if !given.is_empty() {
        r.step("addresses", format!("as given: {}", given.join(", ")));
        r.set("addresses", given);
        return given.to_vec();
    }
    let detected = addresses::detect(root, name);
    for problem in &detected.problems {
        r.step("addresses", format!("detection: {problem}"));
    }
    if detected.addresses.is_empty() {
        r.step("addresses", "none detected; registering none (pass --address to set them)");
    } else {
        r.step("addresses", format!("detected: {}", detected.addresses.join(", ")));
    }
    r.set("addresses", &detected.addresses);
    detected.addresses
}

fn api_base(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

#[allow(clippy::too_many_arguments)]
fn activate(
    g: &Global,
    facts: &Facts,
    pin: &str,
    ca: &str,
    resp: &EnrollResponse,
    (bundle, host_certs): (&CheckedBundle, &HostCerts),
    key: &ssh_key::PrivateKey,
    discovery: bool,
    txn: &mut Txn,
    r: &mut Report,
) -> Result<()> {
    let root = &g.root;
    let now = now();
    let host_key_paths: Vec<PathBuf> = facts.host_keys.iter().map(|k| k.path.clone()).collect();
    let login = resp.verification_login.as_str();
    let staged =
        plan::desired(root, bundle, host_certs, Some((login, resp.verification_principal.as_str())), now, discovery)?;
    let (drop_in, files): (Vec<Desired>, Vec<Desired>) =
        plan::diff(root, staged, &[])?.writes.into_iter().partition(|d| d.path == root.drop_in());

    write_all(txn, root, &files, r)?;
    r.step("stage", format!("{} file(s) under {}", files.len(), root.stage().display()));
    failpoint::after("stage")?;
    if discovery {
        crate::discovery::check_sudoers(&root.path(plan::SUDOERS_DROP_IN))?;
        crate::discovery::ensure_account(root, txn)?;
        r.step("discovery", "account, forced command and sudoers drop-in (visudo -cf) in place");
    }

    txn.mark_sshd_touched()?;
    write_all(txn, root, &drop_in, r)?;
    r.step("activate", format!("{}", root.drop_in().display()));
    failpoint::after("activate")?;

    let checked = txn.check(&g.sshd)?;
    r.step("sshd -t", "configuration valid");
    failpoint::after("test")?;

    checked.reload(&g.sshd)?;
    r.reloads += 1;
    r.step("reload", "sshd reloaded (not restarted)");
    failpoint::after("reload")?;

    verify_effective(g, &host_certs.paths())?;
    r.step("verify", "sshd -T shows the CA, principals, KRL and host certificate settings");
    let dir = tempfile::tempdir().map_err(|e| Error::Failed(format!("cannot create a temporary directory: {e}")))?;
    let (key_path, cert_path, known_hosts) = verification_files(dir.path(), facts, bundle, key, resp)?;
    sshd::verify_login(facts.verify_address, facts.port, login, &key_path, &cert_path, &known_hosts)?;
    r.step("verify", format!("a live login as {login} with a verification certificate succeeded"));
    failpoint::after("verify")?;

    // Unstage the verification principal; the final files are what the CA sent. A
    // principals file written only for the verification (policy grants that login
    // nothing here) goes again, so the next run finds nothing to change.
    let final_files = plan::desired(root, bundle, host_certs, None, now, discovery)?;
    let written: Vec<PathBuf> = txn.journal().originals.iter().map(|o| o.path.clone()).collect();
    let unstage = plan::diff(root, final_files, &written)?;
    write_all(txn, root, &unstage.writes, r)?;
    for p in &unstage.removes {
        txn.remove(p)?;
        r.changes.push(format!("remove {}", p.display()));
    }
    let journal = txn.journal().clone();
    let mut state = State {
        version: 1,
        ca_url: api_base(ca),
        ca_fingerprint: pin.to_owned(),
        node: resp.bundle.node.clone(),
        host_keys: host_key_paths.clone(),
        proof_key: preflight::proof_key(&facts.host_keys)
            .ok_or_else(|| Error::Failed("no host key to sign node proofs".into()))?,
        sshd_port: facts.port,
        originals: Vec::new(),
        created_dirs: Vec::new(),
        discovery,
        created_discovery_user: txn.journal().created_account,
    };
    state.absorb(&without_own_files(root, &journal.originals), &journal.created_dirs);
    txn.write(&root.state_file(), &state.to_bytes()?, 0o600)?;
    failpoint::after("commit")?;
    Ok(())
}

fn verification_files(
    dir: &Path,
    facts: &Facts,
    bundle: &CheckedBundle,
    key: &ssh_key::PrivateKey,
    resp: &EnrollResponse,
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let p = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| Error::io("cannot create", &p, e))?;
        f.write_all(bytes).map_err(|e| Error::io("cannot write", &p, e))?;
        Ok(p)
    };
    let pem = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| Error::Failed(format!("cannot encode the verification key: {e}")))?;
    let key_path = write("id_verify", pem.as_bytes())?;
    let cert_path = write("id_verify-cert.pub", format!("{}\n", resp.verification_certificate.trim()).as_bytes())?;
    let host = sshd::known_hosts_name(facts.verify_address, facts.port);
    let mut kh = String::new();
    for k in &facts.host_keys {
        kh.push_str(&format!("{host} {}\n", k.public));
    }
    for ca in bundle.trusted_host_ca_keys.lines().filter(|l| !l.trim().is_empty()) {
        kh.push_str(&format!("@cert-authority {host} {}\n", ca.trim()));
    }
    let known_hosts = write("known_hosts", kh.as_bytes())?;
    Ok((key_path, cert_path, known_hosts))
}

/// Restores every managed file, in the order that keeps the running sshd consistent with
/// the disk at each instant: first the drop-in (and every file that gets bytes back),
/// then `sshd -t`, a check that `sshd -T` no longer names our KRL, trusted CA keys or host
/// certificates, and the reload; only then are the files enrollment created (the KRL
/// among them) deleted. A crash anywhere leaves the journal, and the next run rolls back
/// to the enrolled node (which `remove` then removes again).
pub async fn remove(g: &Global, r: &mut Report) -> Result<String> {
    let _lock = lock(g)?;
    if !recover(g, r)? {
        return Ok(CHECK_PENDING.into());
    }
    let root = &g.root;
    let Some(state) = State::load(root)? else {
        if let Some(pending) = PendingDeregistration::load(root)? {
            if g.check {
                return Ok(format!("check: would retry deregistering {} at the CA", pending.node));
            }
            r.step("remove", "not enrolled; an earlier remove could not deregister the node: retrying");
            return deregister(root, pending, r).await;
        }
        r.step("remove", "not enrolled; nothing to remove");
        return Ok("no changes".into());
    };
    if g.check {
        for o in &state.originals {
            let what = if o.is_absence() { "remove" } else { "restore" };
            r.step("check", format!("would {what} {}", o.path.display()));
        }
        return Ok("check: removal would restore the original files".into());
    }
    let mut txn = Txn::begin(root)?;
    let result = (|| -> Result<()> {
        txn.mark_sshd_touched()?;
        let (before, after) = txn::split_for_undo(root, &state.originals);
        for o in before.iter().rev() {
            txn.restore(o)?;
            r.changes.push(format!("restore {}", o.path.display()));
        }
        r.step("restore", "the drop-in is gone; the KRL and trust files stay until sshd has reloaded");
        failpoint::after("restore")?;
        let checked = txn.check(&g.sshd)?;
        txn::check_not_named(&g.sshd, &after)?;
        checked.reload(&g.sshd)?;
        r.reloads += 1;
        r.step("reload", "sshd reloaded without the Portcullis configuration");
        failpoint::after("reload")?;
        if !after.is_empty() {
            // Sessions accepted before the reload still authenticate under the old
            // configuration, which names the KRL.
            txn::settle();
        }
        for o in after.iter().rev() {
            txn.restore(o)?;
            r.changes.push(format!("remove {}", o.path.display()));
        }
        txn.remove(&root.state_file())?;
        r.step("delete", format!("{} file(s) restored to their state before enrollment", state.originals.len()));
        failpoint::after("delete")?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            r.writes = txn.writes();
            txn.commit()?;
        }
        Err(Error::FailPoint(p)) => return Err(Error::FailPoint(p)),
        Err(e) => {
            r.writes = txn.writes();
            r.reloads += usize::from(txn.rollback_reloads());
            let err = txn.rollback(&g.sshd, e).map_or_else(|failed| failed, RolledBack::into_error);
            r.step("rollback", err.to_string());
            return Err(err);
        }
    }
    for d in state.created_dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    if state.created_discovery_user {
        crate::account::delete(root);
        r.step("discovery", "the discovery account enrollment created was deleted");
    }
    // An older leftover is superseded by this removal's own deregistration.
    if let Some(stale) = PendingDeregistration::load(root)? {
        stale.clear(root)?;
    }
    deregister(root, PendingDeregistration::of(&state), r).await
}

/// Tells the CA the node is gone, proving it with the node's host key. When the CA
/// cannot be told, the attempt is kept (`Root::pending_deregistration`) and the next
/// `remove` retries it; once told, the record goes.
async fn deregister(root: &Root, pending: PendingDeregistration, r: &mut Report) -> Result<String> {
    let node = pending.node.clone();
    let told = async {
        let proof = node_proof(&node, "deregister", &pending.proof_key, now())?;
        Api::new(&pending.ca_url, &pending.ca_fingerprint)?.deregister(&proof).await
    };
    match told.await {
        Ok(()) => {
            r.step("deregister", format!("the CA deregistered {node}"));
            if root.pending_deregistration().exists() {
                pending.clear(root)?;
            }
            Ok(format!("removed; {node} deregistered"))
        }
        Err(e) => {
            r.step("deregister", format!("failed: {e}"));
            let kept = root.pending_deregistration();
            if !kept.exists() {
                pending.save(root)?;
            }
            Err(Error::Deregister(format!(
                "the node's files are restored (it no longer trusts the CA), but deregistering {node} failed: {e}; \
                 run `portcullis-enroll remove` again to retry (kept in {}), or remove it at the CA with \
                 `portcullis admin node remove {node}`",
                kept.display()
            )))
        }
    }
}

/// Reports the enrollment and whether the node is healthy. Exits non-zero (8) when a
/// lockout-relevant file is missing or invalid — while sshd's `RevokedKeys` names a
/// missing or unloadable KRL it refuses every public key — or an interrupted run is
/// pending, and says which command repairs it. Never writes.
pub fn status(g: &Global, r: &mut Report) -> Result<String> {
    let root = &g.root;
    if !root.path("/etc/ssh").is_dir() {
        r.set("enrolled", false);
        return Ok("not enrolled (no /etc/ssh)".into());
    }
    let lock = lock::acquire(root, lock::Mode::Shared, std::time::Duration::ZERO)?;
    let mut problems: Vec<String> = Vec::new();
    if lock.is_none() {
        r.step("lock", "another portcullis-enroll run is in progress; this is a snapshot of it");
    } else if fsx::read_opt(&root.journal())?.is_some() {
        r.step("journal", "an interrupted run is pending rollback (any command completes it)");
        problems.push(
            "an interrupted run (or an incomplete rollback) is pending: run `portcullis-enroll refresh` \
             (or `remove`) to complete it"
                .into(),
        );
    }
    r.set("journal_pending", lock.is_some() && !problems.is_empty());
    let Some(state) = State::load(root)? else {
        r.set("enrolled", false);
        if let Some(p) = problems.first() {
            return Err(Error::NeedsRepair(format!("not enrolled, but {p}")));
        }
        if let Some(pending) = PendingDeregistration::load(root)? {
            r.set("pending_deregistration", &pending.node);
            return Ok(format!(
                "not enrolled; the CA still lists {}: run `portcullis-enroll remove` to retry deregistering it",
                pending.node
            ));
        }
        return Ok("not enrolled".into());
    };
    r.set("enrolled", true);
    r.set("node", &state.node);
    r.set("ca", &state.ca_url);
    let mut files = BTreeMap::new();
    for o in &state.originals {
        let present = o.path.exists();
        files.insert(o.path.display().to_string(), present);
        r.step("file", format!("{} {}", if present { "present" } else { "MISSING" }, o.path.display()));
    }
    r.set("files", &files);
    if lock.is_some() {
        match fsx::read_opt(&root.krl())? {
            None => problems.push(format!(
                "the KRL {} is MISSING: sshd refuses every public-key login while RevokedKeys names it; \
                 run `portcullis-enroll refresh` to restore it",
                root.krl().display()
            )),
            Some(bytes) => {
                let invalid = plan::check_krl(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|()| crate::sshd::node_loads_krl(&bytes).map_err(|e| e.to_string()));
                if let Err(e) = invalid {
                    problems.push(format!(
                        "the KRL {} is invalid ({e}): sshd refuses every public-key login while RevokedKeys \
                         names it; run `portcullis-enroll refresh` to replace it",
                        root.krl().display()
                    ));
                }
            }
        }
        for (what, path) in [("trusted CA keys", root.user_ca()), ("drop-in", root.drop_in())] {
            if !path.exists() {
                problems.push(format!(
                    "the {what} {} is MISSING; run `portcullis-enroll refresh` to restore it",
                    path.display()
                ));
            }
        }
    }
    r.set("healthy", problems.is_empty());
    let active = g.sshd.effective().ok().and_then(|e| e.get("trustedusercakeys").and_then(|v| v.first()).cloned());
    let active = active.as_deref() == Some(root.user_ca().display().to_string().as_str());
    r.set("active", active);
    let summary = format!(
        "enrolled as {} with {} ({}); sshd {}",
        state.node,
        state.ca_url,
        state.ca_fingerprint,
        if active { "uses it" } else { "does NOT use it" }
    );
    if problems.is_empty() {
        return Ok(summary);
    }
    for p in &problems {
        r.step("problem", p.clone());
    }
    Err(Error::NeedsRepair(format!("{summary}; NEEDS REPAIR: {}", problems.join("; "))))
}
