//! `refresh` (and `enroll` on an enrolled node): fetch the bundle as the node and apply
//! only what differs, in two phases that commit separately.
//!
//! 1. **Trust files**: the KRL (always the first write), `user_ca.pub` and
//!    `principals/*`. sshd reads them at every login, so they act without a reload and
//!    nothing about them needs `sshd -t`; each is replaced atomically (the KRL is never
//!    missing or partial) and the phase commits on its own. A revocation therefore never
//!    waits on the sshd change — a persistent host-certificate or drop-in problem cannot
//!    hold revocations back.
//! 2. **sshd change**: the drop-in and host certificates, which act only after a reload.
//!    They are checked (`sshd -t`, then `sshd -T` shows our values) before the reload and,
//!    on any failure, rolled back to the previous bytes; phase 1 stands, and the exit
//!    code (4) still reports the failure.
//!
//! Each phase has its own journal ([`Txn`]). A crash inside phase 1 restores the old
//! trust files; a crash between the phases leaves phase 1 committed and the sshd files
//! untouched; a crash inside phase 2 restores only the sshd files (and reloads). Every
//! one of these is a consistent node, and the next refresh completes what is missing.

use crate::client::Api;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::plan::{self, HostCerts, Plan};
use crate::proof::node_proof;
use crate::report::Report;
use crate::root::Root;
use crate::run::{
    CHECK_PENDING, Global, lock, now, open_stage_dirs, recover, verify_effective, without_own_files, write_all,
};
use crate::state::State;
use crate::txn::{RolledBack, Txn};
use std::path::PathBuf;

/// JSON keys (`--json`) saying what became of each phase: `unchanged`, `applied`,
/// `rolled_back`, or `rollback_failed`.
const TRUST_KEY: &str = "trust_files";
const SSHD_KEY: &str = "sshd_change";

pub async fn refresh(g: &Global, r: &mut Report) -> Result<String> {
    let _lock = lock(g)?;
    if !recover(g, r)? {
        return Ok(CHECK_PENDING.into());
    }
    let state = State::load(&g.root)?.ok_or_else(|| Error::Failed("this node is not enrolled".into()))?;
    open_stage_dirs(g, r)?;
    let api = Api::new(&state.ca_url, &state.ca_fingerprint)?;
    refresh_with(g, state, &api, r).await
}

/// Fetches the bundle as the node and applies only what differs. On any failure to
/// fetch or check the bundle nothing is touched — the old KRL stays in force.
pub(crate) async fn refresh_with(g: &Global, state: State, api: &Api, r: &mut Report) -> Result<String> {
    let root = &g.root;
    let now = now();
    let proof = node_proof(&state.node, "refresh", &state.proof_key, now)?;
    let fetched = match api.refresh(&proof).await {
        Ok(b) => b,
        Err(e) => {
            r.step("fetch", format!("{e}; the current files (and KRL) stay in place"));
            return Err(e);
        }
    };
    let mut bundle = match plan::check_bundle(&fetched) {
        Ok(b) => b,
        Err(e) => {
            r.step("fetch", format!("{e}; the other files stay in place"));
            if !g.check {
                krl_despite_the_rest(g, &state, &fetched, r);
            }
            return Err(e);
        }
    };
    r.step("fetch", format!("bundle for {} fetched with the node's proof", state.node));
    if let Some((kept, held, sent)) = plan::newer_installed_krl(root, &bundle.krl)? {
        r.step(
            "krl",
            format!(
                "the CA sent an older KRL (version {sent}) than the one installed ({held}): was the CA restored from \
                 a backup? the installed one stays until the CA publishes a newer one"
            ),
        );
        bundle.krl = kept;
    }
    r.set("node", &state.node);
    let managed: Vec<PathBuf> = state.originals.iter().map(|o| o.path.clone()).collect();
    // A host key regenerated since enrollment is not the key the CA certifies: it goes
    // uncertified (the revocations still apply) and the report says what to do.
    let host_certs = plan::pair_host_certificates(root, &bundle, &state.host_keys);
    if !bundle.host_certificates.is_empty() {
        for key in &host_certs.uncertified {
            r.step(
                "host key",
                format!(
                    "{} is not the key the CA certified (regenerated?); it gets no host certificate until \
                     `portcullis-enroll enroll` runs again with a new token",
                    key.display()
                ),
            );
        }
    }
    let mut desired = plan::desired(root, &bundle, &host_certs, None, now, state.discovery)?;
    // The KRL first, so revocations take effect before anything else changes — unless it
    // revokes every user CA key the node trusts now (a rotation after a compromise
    // reaching a node that missed it): then the new trusted keys go first, as between
    // the two writes the node would trust only revoked keys and refuse every
    // certificate login (for good, should the run stop there).
    let krl_first = !plan::revokes_every_installed_user_ca(root, &bundle.krl)?;
    desired.sort_by_key(|d| (d.path != root.krl()) == krl_first);
    let plan = plan::diff(root, desired, &managed)?;
    if plan.is_empty() {
        r.step("compare", "no changes");
        return Ok("no changes".into());
    }
    let described = plan.describe();
    if g.check {
        for c in &described {
            r.step("check", format!("would {c}"));
        }
        r.changes = described;
        return Ok(format!("check: {} change(s) pending", r.changes.len()));
    }
    let (trust, sshd_change) = plan.split(root);
    r.set(TRUST_KEY, "unchanged");
    r.set(SSHD_KEY, "unchanged");

    let state = if trust.is_empty() {
        state
    } else {
        match apply_trust(g, &state, &trust, r) {
            Ok(s) => s,
            Err(e) => {
                r.set(TRUST_KEY, outcome(&e));
                r.step("rollback", e.to_string());
                return Err(e);
            }
        }
    };
    // Between the phases: no journal, phase 1 committed, the sshd files untouched.
    failpoint::after("apply")?;
    if sshd_change.is_empty() {
        return Ok(format!("refreshed: {} change(s), no reload needed", described.len()));
    }
    match apply_sshd_change(g, &state, &host_certs, &sshd_change, r) {
        Ok(()) => {
            r.set(SSHD_KEY, "applied");
            Ok(format!("refreshed: {} change(s)", described.len()))
        }
        Err(e) => {
            r.set(SSHD_KEY, outcome(&e));
            let e = if trust.is_empty() { e } else { after_trust_applied(e) };
            r.step("rollback", e.to_string());
            Err(e)
        }
    }
}

fn outcome(e: &Error) -> &'static str {
    match e {
        Error::RollbackFailed { .. } => "rollback_failed",
        _ => "rolled_back",
    }
}

/// Phase 2 failed after phase 1 committed: the error must not claim that everything
/// went back to the original files.
fn after_trust_applied(e: Error) -> Error {
    const APPLIED: &str = "the new revocations, trusted CA keys and principals were applied before and stay";
    match e {
        Error::RolledBack { cause } => Error::SshdChangeRolledBack { cause },
        Error::RollbackFailed { cause, rollback } => {
            Error::RollbackFailed { cause: format!("{cause} ({APPLIED})"), rollback }
        }
        Error::FailPoint(p) => Error::FailPoint(p),
        other => Error::Failed(format!("{other} (the sshd change was not made; {APPLIED})")),
    }
}

/// Runs `change` under its own journal: commits on success, rolls back on error. A
/// simulated crash (fail point) leaves the journal, as a real one would.
fn in_txn(g: &Global, r: &mut Report, change: impl FnOnce(&mut Txn, &mut Report) -> Result<()>) -> Result<()> {
    let mut txn = Txn::begin(&g.root)?;
    let result = change(&mut txn, r);
    r.writes += txn.writes();
    match result {
        Ok(()) => txn.commit().map(|_| ()),
        Err(Error::FailPoint(p)) => Err(Error::FailPoint(p)),
        Err(e) => {
            r.reloads += usize::from(txn.rollback_reloads());
            Err(txn.rollback(&g.sshd, e).map_or_else(|failed| failed, RolledBack::into_error))
        }
    }
}

/// Records in the state the originals of files this phase wrote for the first time.
fn update_state(txn: &mut Txn, root: &Root, state: &mut State) -> Result<()> {
    let journal = txn.journal().clone();
    let before = state.clone();
    state.absorb(&without_own_files(root, &journal.originals), &journal.created_dirs);
    if *state != before {
        txn.write(&root.state_file(), &state.to_bytes()?, 0o600)?;
    }
    Ok(())
}

fn write_and_remove(txn: &mut Txn, root: &Root, part: &Plan, r: &mut Report) -> Result<()> {
    write_all(txn, root, &part.writes, r)?;
    for p in &part.removes {
        txn.remove(p)?;
        r.changes.push(format!("remove {}", p.display()));
    }
    Ok(())
}

/// A bundle refused for something other than its KRL still brings its revocations: the
/// KRL alone, checked against the user CA keys the node keeps, as phase 1. (A CA that
/// added a principals option this tool does not know would otherwise stop every
/// revocation reaching its nodes.) The refresh still fails, with the reason.
fn krl_despite_the_rest(g: &Global, state: &State, fetched: &portcullis_proto::enroll::NodeBundle, r: &mut Report) {
    let plan = plan::krl_alone(&g.root, fetched).and_then(|krl| plan::diff(&g.root, vec![krl], &[]));
    match plan {
        Ok(plan) if plan.is_empty() => r.step("krl", "the KRL is current; the rest of the bundle was refused"),
        Ok(plan) => match apply_trust(g, state, &plan, r) {
            Ok(_) => r.step("krl", "the KRL was installed on its own; the rest of the bundle was refused"),
            Err(e) => r.step("krl", format!("the KRL could not be installed on its own either: {e}")),
        },
        Err(e) => r.step("krl", format!("the KRL is refused too: {e}")),
    }
}

/// Phase 1: KRL, trusted CA keys, principals. Returns the state as committed.
fn apply_trust(g: &Global, state: &State, trust: &Plan, r: &mut Report) -> Result<State> {
    let root = &g.root;
    let mut new_state = state.clone();
    in_txn(g, r, |txn, r| {
        write_and_remove(txn, root, trust, r)?;
        r.step("stage", format!("{} trust file change(s) written atomically", trust.describe().len()));
        failpoint::after("stage")?;
        update_state(txn, root, &mut new_state)
    })?;
    r.set(TRUST_KEY, "applied");
    r.step(
        "apply",
        "revocations, trusted CA keys and principals committed; sshd reads them at every login (no reload)",
    );
    Ok(new_state)
}

/// Phase 2: the drop-in and host certificates, checked before the reload.
fn apply_sshd_change(g: &Global, state: &State, host_certs: &HostCerts, change: &Plan, r: &mut Report) -> Result<()> {
    let root = &g.root;
    let mut new_state = state.clone();
    in_txn(g, r, |txn, r| {
        txn.mark_sshd_touched()?;
        write_and_remove(txn, root, change, r)?;
        r.step(
            "activate",
            format!("{} sshd file change(s) (drop-in, host certificates) written", change.describe().len()),
        );
        failpoint::after("activate")?;
        // As in enroll, nothing reaches the running daemon unchecked: `sshd -t` and
        // `sshd -T` read the files just written, so a failure here rolls back before
        // the reload.
        let checked = txn.check(&g.sshd)?;
        r.step("sshd -t", "configuration valid");
        failpoint::after("test")?;
        verify_effective(g, &host_certs.paths())?;
        r.step("verify", "sshd -T shows the CA, principals, KRL and host certificate settings");
        failpoint::after("verify")?;
        checked.reload(&g.sshd)?;
        r.reloads += 1;
        r.step("reload", "sshd validated and reloaded (host certificate or drop-in changed)");
        failpoint::after("reload")?;
        update_state(txn, root, &mut new_state)?;
        failpoint::after("commit")
    })
}
