//! Content digests of a policy, for audit ("which policy decided this?") and for telling
//! operators what a reload changed.
//!
//! Each item is hashed over a canonical encoding of its *validated* form (length-prefixed
//! fields in a fixed order, sets sorted, durations in nanoseconds, queries in canonical
//! text), so reformatting a file, reordering keys or moving an item to another file does
//! not change its digest, while any semantic change does.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{DenyStatement, Role, Rule};
use crate::policy::Policy;

/// Per item kind, item name → its digest and fields. Bindings are named `group:<g>` /
/// `user:<u>` (repeated bindings of one subject are merged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySummary {
    /// `[[role]]` items.
    #[serde(default)]
    pub role: BTreeMap<String, ItemSummary>,
    /// `[[binding]]` items, merged per subject.
    #[serde(default)]
    pub binding: BTreeMap<String, ItemSummary>,
    /// `[[deny]]` items.
    #[serde(default)]
    pub deny: BTreeMap<String, ItemSummary>,
    /// `[[rule]]` items.
    #[serde(default)]
    pub rule: BTreeMap<String, ItemSummary>,
}

/// One item: the sha256 hex of its canonical form, and the same fields as text, so a
/// change can say what changed (a rule's target query, scope, ports, timeouts, a
/// binding's roles), not only which item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredItem")]
pub struct ItemSummary {
    pub digest: String,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// Summaries stored before fields were kept hold the digest alone.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredItem {
    Full {
        digest: String,
        #[serde(default)]
        fields: BTreeMap<String, String>,
    },
    Digest(String),
}

impl From<StoredItem> for ItemSummary {
    fn from(stored: StoredItem) -> Self {
        match stored {
            StoredItem::Full { digest, fields } => ItemSummary { digest, fields },
            StoredItem::Digest(digest) => ItemSummary { digest, fields: BTreeMap::new() },
        }
    }
}

impl PolicySummary {
    /// `(kind, items)` in a fixed order.
    pub fn kinds(&self) -> [(&'static str, &BTreeMap<String, ItemSummary>); 4] {
        [("role", &self.role), ("binding", &self.binding), ("deny", &self.deny), ("rule", &self.rule)]
    }

    /// sha256 hex over the whole summary (the items' digests, not their text).
    pub fn digest(&self) -> String {
        let mut c = Canon::new("portcullis-policy-summary-v1");
        for (kind, items) in self.kinds() {
            c.str("kind", kind);
            for (name, item) in items {
                c.str("name", name);
                c.str("hash", &item.digest);
            }
        }
        c.finish().digest
    }
}

/// What changed between two summaries; entries look like `role:pve-admin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDiff {
    /// Items only in the new policy.
    pub added: Vec<String>,
    /// Items only in the old policy.
    pub removed: Vec<String>,
    /// Items in both with different content.
    pub changed: Vec<String>,
    /// For changed items, each field that differs, with its old and new value (empty for
    /// an item whose earlier summary predates field tracking).
    #[serde(default)]
    pub fields: Vec<FieldChange>,
}

/// One field of a changed item: `rule:prod-ssh` `targets` from one query to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub item: String,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl PolicyDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares two summaries item by item, and a changed item field by field.
pub fn diff(old: &PolicySummary, new: &PolicySummary) -> PolicyDiff {
    let mut out = PolicyDiff::default();
    for ((kind, old), (_, new)) in old.kinds().into_iter().zip(new.kinds()) {
        for (name, before) in old {
            match new.get(name) {
                None => out.removed.push(format!("{kind}:{name}")),
                Some(after) if after.digest != before.digest => {
                    let item = format!("{kind}:{name}");
                    if !before.fields.is_empty() {
                        let keys: BTreeSet<&String> = before.fields.keys().chain(after.fields.keys()).collect();
                        for field in keys {
                            let (old, new) = (before.fields.get(field), after.fields.get(field));
                            if old != new {
                                out.fields.push(FieldChange {
                                    item: item.clone(),
                                    field: field.clone(),
                                    old: old.cloned(),
                                    new: new.cloned(),
                                });
                            }
                        }
                    }
                    out.changed.push(item);
                }
                Some(_) => {}
            }
        }
        for name in new.keys().filter(|n| !old.contains_key(*n)) {
            out.added.push(format!("{kind}:{name}"));
        }
    }
    out
}

/// Length-prefixed field encoder feeding a hash: unambiguous whatever the field
/// contents. It also keeps each field as text (sets comma-separated), which is what a
/// change shows; the hash alone decides whether anything changed.
struct Canon(Sha256, BTreeMap<String, String>);

impl Canon {
    fn new(domain: &str) -> Canon {
        let mut c = Canon(Sha256::new(), BTreeMap::new());
        c.bytes(b"domain");
        c.bytes(domain.as_bytes());
        c
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_be_bytes());
        self.0.update(b);
    }
    fn str(&mut self, key: &str, v: &str) {
        self.bytes(key.as_bytes());
        self.bytes(v.as_bytes());
        self.1.insert(key.to_owned(), v.to_owned());
    }
    fn num(&mut self, key: &str, v: u128) {
        self.str(key, &v.to_string());
    }
    fn opt_num(&mut self, key: &str, v: Option<u32>) {
        self.str(key, &v.map_or_else(|| "none".to_owned(), |v| v.to_string()));
    }
    fn set<'a>(&mut self, key: &str, items: impl IntoIterator<Item = &'a str>) {
        let items: Vec<&str> = items.into_iter().collect();
        self.num(key, items.len() as u128);
        for i in &items {
            self.bytes(i.as_bytes());
        }
        self.1.insert(key.to_owned(), items.join(", "));
    }
    fn finish(self) -> ItemSummary {
        ItemSummary { digest: hex::encode(self.0.finalize()), fields: self.1 }
    }
}

fn role_hash(r: &Role) -> ItemSummary {
    let mut c = Canon::new("role-v1");
    c.str("name", &r.name);
    c.set("logins", r.logins.iter().map(String::as_str));
    c.str("targets", &r.targets.as_ref().map(ToString::to_string).unwrap_or_default());
    c.set("permissions", r.permissions.iter().map(|p| p.as_str()));
    c.num("max_cert_ttl_ns", r.max_cert_ttl.as_nanos());
    c.set("extensions", r.extensions.iter().map(String::as_str));
    c.num("critical_options", r.critical_options.len() as u128);
    for (k, v) in &r.critical_options {
        c.str(k, v);
    }
    c.num("idle_ns", r.session.idle.as_nanos());
    c.num("absolute_ns", r.session.absolute.as_nanos());
    c.opt_num("max_per_user", r.session.max_per_user);
    c.opt_num("max_per_device", r.session.max_per_device);
    c.opt_num("max_per_agent", r.session.max_per_agent);
    c.finish()
}

fn binding_hash(subject: &str, roles: &BTreeSet<String>) -> ItemSummary {
    let mut c = Canon::new("binding-v1");
    c.str("subject", subject);
    c.set("roles", roles.iter().map(String::as_str));
    c.finish()
}

fn deny_hash(d: &DenyStatement) -> ItemSummary {
    let mut c = Canon::new("deny-v1");
    c.str("name", &d.name);
    c.set("users", d.users.iter().map(String::as_str));
    c.set("groups", d.groups.iter().map(String::as_str));
    c.set("logins", d.logins.iter().map(String::as_str));
    c.set("permissions", d.permissions.iter().map(String::as_str));
    c.finish()
}

fn rule_hash(r: &Rule) -> ItemSummary {
    let mut c = Canon::new("rule-v1");
    c.str("name", &r.name);
    c.str("purpose", r.purpose.as_str());
    c.str("targets", &r.targets.to_string());
    c.set("partitions", r.scope.partitions.iter().map(String::as_str));
    c.set("agents", r.scope.agents.iter().map(String::as_str));
    c.set("gateways", r.scope.gateways.iter().map(String::as_str));
    c.str("host_key_policy", r.host_key_policy.as_str());
    c.num("timeout_ns", r.timeout.as_nanos());
    // No list means the device's own SSH port, which is not the same as `[22]`.
    let ports: Vec<String> = match &r.allowed_ports {
        Some(ports) => ports.iter().map(u16::to_string).collect(),
        None => vec!["ssh".to_owned()],
    };
    c.set("allowed_ports", ports.iter().map(String::as_str));
    c.str("idle_counts", r.idle_counts.as_str());
    // Only rules that ask for it hash it, so other rules' digests are what they were.
    if let Some(d) = r.fresh_auth_within {
        c.num("fresh_auth_within_s", u128::from(d.as_secs()));
    }
    if let Some(r) = r.recording {
        c.str("record", "true");
        c.str("record_input", if r.input { "true" } else { "false" });
        c.num("record_max_bytes", u128::from(r.max_bytes));
        c.str("record_over_limit", r.over_limit.as_str());
    }
    // Only credential rules hash these, so an SSH rule's digest is what it always was.
    if let Some(k) = &r.credential {
        c.str("provider", k.provider.as_str());
        c.str("auth_method", k.auth_method.as_str());
        c.str("secret", &k.secret);
        c.num("api_port", u128::from(k.api_port));
        c.str("auto_discovery_trials", if k.auto_discovery_trials { "true" } else { "false" });
        c.str("strict_permissions", if k.strict_permissions { "true" } else { "false" });
    }
    c.finish()
}

impl Policy {
    /// Per-item digests.
    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            role: self.roles.iter().map(|(n, r)| (n.clone(), role_hash(r))).collect(),
            binding: self
                .bindings
                .iter()
                .map(|(s, roles)| {
                    let name = s.to_string();
                    let hash = binding_hash(&name, roles);
                    (name, hash)
                })
                .collect(),
            deny: self.denies.iter().map(|(n, d)| (n.clone(), deny_hash(d))).collect(),
            rule: self.rules.iter().map(|(n, r)| (n.clone(), rule_hash(r))).collect(),
        }
    }

    /// sha256 hex identifying the whole policy's content.
    pub fn digest(&self) -> String {
        self.summary().digest()
    }
}
