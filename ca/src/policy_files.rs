//! Reads a policy directory (every `*.toml`, in name order) into a validated `Policy`.
//! The only file I/O on policy; `policies` itself stays pure.

use crate::error::CaError;
use portcullis_policies::{Policy, PolicySource};
use std::path::Path;

/// Loads and validates; on failure the message lists every error as `file:line:col: …`.
pub fn load_policy_dir(dir: &Path) -> Result<Policy, CaError> {
    parse_policy(&read_policy_dir(dir)?.sources)
}

/// A policy directory as read: its `*.toml` files in name order, `(name, text)`, when
/// the newest of them last changed, and when the directory's listing did (a file added,
/// removed or renamed — of any name: an editor's swap file too). Unix seconds.
pub struct PolicyFiles {
    pub sources: Vec<(String, String)>,
    pub modified: u64,
    pub listing_modified: u64,
}

pub fn read_policy_dir(dir: &Path) -> Result<PolicyFiles, CaError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CaError::Config(format!("cannot read policy directory {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CaError::Config(format!("policy directory: {e}")))?.path();
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(CaError::Config(format!("no *.toml policy files in {}", dir.display())));
    }
    let modified_at = |path: &Path| {
        let changed = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        changed.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
    };
    let listing_modified = modified_at(dir);
    let mut modified = 0;
    let mut sources = Vec::with_capacity(files.len());
    for path in &files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaError::Config(format!("cannot read {}: {e}", path.display())))?;
        modified = modified.max(modified_at(path));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        sources.push((name, text));
    }
    Ok(PolicyFiles { sources, modified, listing_modified })
}

/// Validates a policy from its files' `(name, text)`; see [`load_policy_dir`].
pub fn parse_policy(texts: &[(String, String)]) -> Result<Policy, CaError> {
    let sources: Vec<PolicySource<'_>> = texts.iter().map(|(name, text)| PolicySource { name, text }).collect();
    let policy =
        Policy::from_sources(&sources).map_err(|errors| CaError::Config(format!("invalid policy:\n{errors}")))?;
    for rule in policy.rules().filter(|r| r.host_key_policy() == portcullis_policies::HostKeyPolicy::DangerSkipVerify) {
        tracing::warn!(
            rule = rule.name(),
            "policy rule skips host key verification (danger_skip_verify / skip_verify)"
        );
    }
    Ok(policy)
}

/// The policy the all-in-one server writes on first start: members of the group
/// `portcullis-admins` administer Portcullis and may log in as root on every device.
pub const DEFAULT_POLICY: &str = r#"# Portcullis policy. Every *.toml file in this directory is loaded; keep them in Git.
# Reload after editing: `portcullis admin policy reload`.

[[role]]
name = "portcullis-admin"
permissions = ["certs.revoke", "users.manage", "ca.manage", "audit.read", "policy.manage", "nodes.manage", "sessions.kill", "secrets.manage"]

[[role]]
name = "node-admin"
logins = ["root"]
# `name:%` deliberately matches every device; a bare `in:devices` is refused.
targets = 'in:devices name:%'
permissions = ["certs.issue", "devices.console.open"]
max_cert_ttl = "8h"
extensions = ["permit-pty", "permit-agent-forwarding"]

[[binding]]
group = "portcullis-admins"
roles = ["portcullis-admin", "node-admin"]

# Sessions through the bastion (`ssh -p 2222 root%NODE@host`, `ssh -J`) to devices
# served by the all-in-one's built-in agent, `local`.
[[rule]]
name = "ssh-via-local-agent"
purpose = "ssh_login"
targets = 'in:devices name:%'
scope = { agents = ["local"] }

# Browser consoles (web UI at /ui/) to the same devices.
[[rule]]
name = "console-via-local-agent"
purpose = "console_access"
targets = 'in:devices name:%'
scope = { agents = ["local"] }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policies_load() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/policy");
        let policy = load_policy_dir(&example).unwrap();
        assert_eq!(policy.rule("hardware").unwrap().purpose(), portcullis_policies::Purpose::InventoryEnrichment);
        // As shipped, the example's console rule covers a prod node enrolled the default
        // way (no partition) behind its agent; not one behind another agent.
        let mut node = portcullis_proto::NodeRecord {
            name: "pve01".into(),
            kind: Some("Hypervisor".into()),
            agent: Some("agent-fra-1".into()),
            tags: [("cluster".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        };
        let console = portcullis_policies::Purpose::ConsoleAccess;
        assert!(policy.match_rule(console, &crate::service::device_of(&node)).is_ok());
        node.agent = Some("agent-elsewhere".into());
        assert!(policy.match_rule(console, &crate::service::device_of(&node)).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.toml"), DEFAULT_POLICY).unwrap();
        assert!(load_policy_dir(dir.path()).unwrap().role("node-admin").is_some());
    }

    /// A file removed shows in the listing's time, which a file edited does not move.
    #[test]
    fn removing_a_file_moves_the_listing_time() {
        let dir = tempfile::tempdir().unwrap();
        let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        for name in ["a.toml", "b.toml"] {
            std::fs::write(dir.path().join(name), "").unwrap();
            std::fs::File::open(dir.path().join(name)).unwrap().set_modified(long_ago).unwrap();
        }
        std::fs::File::open(dir.path()).unwrap().set_modified(long_ago).unwrap();
        let before = read_policy_dir(dir.path()).unwrap();
        assert_eq!((before.modified, before.listing_modified), (1_000_000_000, 1_000_000_000));
        std::fs::remove_file(dir.path().join("b.toml")).unwrap();
        let after = read_policy_dir(dir.path()).unwrap();
        assert_eq!(after.modified, 1_000_000_000);
        assert!(after.listing_modified > 1_000_000_000);
    }

    /// The discovery account runs its one command under its own certificates; no role
    /// may grant its login (before, a role could, and the node listed that role's line
    /// with a pty for an account with a shell).
    #[test]
    fn a_role_granting_the_discovery_login_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let role = "[[role]]\nname = \"x\"\nlogins = [\"portcullis-discovery\"]\ntargets = 'in:devices name:%'\n\
                    permissions = [\"certs.issue\"]\n";
        std::fs::write(dir.path().join("a.toml"), role).unwrap();
        let err = load_policy_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("reserved for hardware discovery"), "{err}");
        std::fs::write(dir.path().join("a.toml"), role.replace("portcullis-discovery", "deploy")).unwrap();
        load_policy_dir(dir.path()).unwrap();
        // The policy engine's name for the login is the one nodes and bastions use.
        assert_eq!(portcullis_policies::DISCOVERY_LOGIN, portcullis_proto::discovery::DISCOVERY_LOGIN);
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "[[role]]\nname = \"x\"\nlogins = [\"root\"]\ntargets = 'in:devices'\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let err = load_policy_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.toml:4:"), "{err}");
    }

    #[test]
    fn empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_policy_dir(dir.path()).is_err());
    }
}
