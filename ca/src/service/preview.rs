//! The target preview: which devices a rule reaches, before a policy is loaded and after.

use super::admin::Admin;
use crate::error::CaError;
use portcullis_policies::{Device, Grant, Policy, PolicySource, Rule, proof};
use portcullis_proto::preview::{RulePreview, RulePreviewRequest};
use std::collections::BTreeMap;

/// Files of a previewed policy, at most.
const MAX_FILES: usize = 256;
const MAX_FILE_BYTES: usize = 1 << 20;

/// Previews computed at once, per replica. A preview matches every rule against every
/// device of the inventory (nodes and Proxmox guests), with the caller's own target
/// queries for a policy that is not loaded: CPU work that grows with what the caller
/// sends. It runs on a blocking thread, so sign-ins, issuance and heartbeats keep the
/// runtime's workers, and one at a time, so previews take at most one core; another
/// meanwhile is told to try again (a read-only `audit.read` holder stalled the CA with
/// a few large ones, found in review, 2026-12-06).
static PREVIEWS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

impl Admin {
    /// `GET /v1/admin/rules/{name}/preview`: a rule of the loaded policy;
    /// `GET /v1/admin/rules/preview` (`name` absent): every loaded rule.
    pub async fn preview_rule(
        &self,
        _grant: &Grant<proof::PolicyRead>,
        name: Option<&str>,
    ) -> Result<Vec<RulePreview>, CaError> {
        let turn = preview_turn()?;
        let policy = self.core.policy();
        let devices = self.devices().await?;
        let name = name.map(str::to_owned);
        off_the_runtime(turn, move || {
            Ok(rules_named(&policy, name.as_deref())?.into_iter().map(|r| preview(&policy, r, &devices)).collect())
        })
        .await
    }

    /// `POST /v1/admin/rules/preview`: rules of a policy that is not loaded.
    pub async fn preview_policy(
        &self,
        _grant: &Grant<proof::PolicyRead>,
        req: &RulePreviewRequest,
    ) -> Result<Vec<RulePreview>, CaError> {
        if req.files.len() > MAX_FILES || req.files.iter().any(|f| f.text.len() > MAX_FILE_BYTES) {
            return Err(CaError::BadRequest("too many or too large policy files".into()));
        }
        let turn = preview_turn()?;
        let devices = self.devices().await?;
        let req = req.clone();
        off_the_runtime(turn, move || {
            let sources: Vec<PolicySource<'_>> =
                req.files.iter().map(|f| PolicySource { name: &f.name, text: &f.text }).collect();
            // Load errors name file, line and column of the caller's own text.
            let policy = Policy::from_sources(&sources).map_err(|e| CaError::BadRequest(e.to_string()))?;
            Ok(rules_named(&policy, req.rule.as_deref())?.into_iter().map(|r| preview(&policy, r, &devices)).collect())
        })
        .await
    }

    /// Every device of the inventory as the policy sees it: nodes, then Proxmox VE guests.
    async fn devices(&self) -> Result<Vec<Device>, CaError> {
        let nodes = self.core.store.nodes().await?;
        let mut devices: Vec<Device> = nodes.iter().map(|n| self.core.device(n)).collect();
        devices.extend(self.proxmox.guest_devices().await?.into_iter().map(|(_, d)| d));
        Ok(devices)
    }
}

/// The one preview turn (see [`PREVIEWS`]), taken before anything is read.
fn preview_turn() -> Result<tokio::sync::SemaphorePermit<'static>, CaError> {
    PREVIEWS.try_acquire().map_err(|_| CaError::Busy { retry_after: 1 })
}

/// Runs `work` on a blocking thread, holding `turn` until it is done.
async fn off_the_runtime<T: Send + 'static>(
    turn: tokio::sync::SemaphorePermit<'static>,
    work: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, CaError> {
    // The turn goes with the work: a caller that hangs up does not free it early.
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .map_err(|_| CaError::Internal("the preview failed".into()))?
}

/// The named rule, or every rule.
fn rules_named<'p>(policy: &'p Policy, name: Option<&str>) -> Result<Vec<&'p Rule>, CaError> {
    match name {
        Some(name) => Ok(vec![policy.rule(name).ok_or(CaError::NotFound("rule"))?]),
        None => Ok(policy.rules().collect()),
    }
}

fn preview(policy: &Policy, rule: &Rule, devices: &[Device]) -> RulePreview {
    let mut out = RulePreview {
        rule: rule.name().to_owned(),
        purpose: rule.purpose().as_str().to_owned(),
        provider: rule.credential().map(|k| k.provider().as_str().to_owned()),
        matched: Vec::new(),
        in_scope: Vec::new(),
        decided_by_other_rule: BTreeMap::new(),
        by_agent: BTreeMap::new(),
    };
    for d in devices.iter().filter(|d| rule.targets().matches(d)) {
        out.matched.push(d.name.clone());
        if !rule.scope().includes_device(d) {
            continue;
        }
        out.in_scope.push(d.name.clone());
        *out.by_agent.entry(d.agent.clone().unwrap_or_else(|| "-".into())).or_default() += 1;
        // Say when the engine decides with another rule: the first credential rule by
        // name, or this one tightened by others holding the device too (`a+b`).
        let chosen = match rule.credential() {
            Some(k) => policy.match_credential_rule(k.provider(), d).map(std::borrow::Cow::Borrowed),
            None => policy.match_rule(rule.purpose(), d),
        };
        if let Ok(other) = chosen
            && other.name() != rule.name()
        {
            out.decided_by_other_rule.insert(d.name.clone(), other.name().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A preview's work does not hold the runtime (here a single thread, which a ticker
    /// shares), and a second one meanwhile is told to try again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_preview_runs_off_the_runtime_one_at_a_time() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticking = Arc::clone(&ticks);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticking.fetch_add(1, Ordering::Relaxed);
            }
        });
        let slow = off_the_runtime(preview_turn().unwrap(), || {
            std::thread::sleep(Duration::from_millis(400));
            Ok(())
        });
        let meanwhile = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            off_the_runtime(preview_turn()?, || Ok(())).await
        };
        let (first, second) = tokio::join!(slow, meanwhile);
        assert!(first.is_ok());
        assert!(matches!(second, Err(CaError::Busy { .. })), "{second:?}");
        assert!(ticks.load(Ordering::Relaxed) >= 10, "the runtime stood still while the preview ran");
        assert!(off_the_runtime(preview_turn().unwrap(), || Ok(())).await.is_ok(), "the turn came back");
    }
}
