//! Policy loading: many `(name, text)` sources → one validated [`Policy`].
//!
//! Guarantees: unknown keys anywhere are errors; every error carries file:line:col; all
//! errors of a load are reported together (per item, so one broken item does not hide
//! problems in the next); a policy is returned only if there were none.

mod error;
mod fields;
mod raw;
mod validate;

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

pub(crate) use error::Pos;
pub use error::{LoadError, LoadErrors};

use crate::model::Subject;
use crate::policy::Policy;
use raw::{RawBinding, RawDeny, RawRole, RawRule};

/// The source being loaded.
pub(crate) struct File<'a> {
    idx: usize,
    name: &'a str,
    text: &'a str,
}

/// Collected errors with a sort key (source index, byte offset).
#[derive(Default)]
pub(crate) struct Errors(Vec<(usize, usize, LoadError)>);

impl Errors {
    pub(crate) fn at(&mut self, f: &File<'_>, offset: usize, message: impl Into<String>) {
        let pos = Pos::at(f.text, offset);
        self.0.push((
            f.idx,
            offset,
            LoadError { file: f.name.to_owned(), line: pos.line, column: pos.column, message: message.into() },
        ));
    }
}

/// Where an item was first defined, for duplicate messages.
fn location(f: &File<'_>, offset: usize) -> String {
    format!("{}:{}", f.name, Pos::at(f.text, offset))
}

/// A binding whose role references are checked once every file is read.
struct PendingBinding {
    file: usize,
    subject: Subject,
    roles: Vec<Spanned<String>>,
}

#[derive(Default)]
struct Loader {
    errs: Errors,
    policy: Policy,
    first_seen: BTreeMap<(&'static str, String), String>,
    bindings: Vec<PendingBinding>,
}

impl Loader {
    /// Records a name; false (with an error naming both places) if it was already taken.
    fn claim(&mut self, f: &File<'_>, kind: &'static str, name: &Spanned<String>) -> bool {
        let key = (kind, name.get_ref().clone());
        let here = location(f, name.span().start);
        if let Some(first) = self.first_seen.get(&key) {
            let msg = format!("duplicate {kind} `{}` (first defined at {first})", name.get_ref());
            self.errs.at(f, name.span().start, msg);
            return false;
        }
        self.first_seen.insert(key, here);
        true
    }

    fn item<'i, T: Deserialize<'i>>(&mut self, f: &File<'_>, item: &Spanned<DeValue<'i>>) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(item.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                let at = e.span().map_or(item.span().start, |s| s.start);
                self.errs.at(f, at, e.message().trim().to_owned());
                None
            }
        }
    }

    fn file(&mut self, f: &File<'_>) {
        let (table, parse_errors) = DeTable::parse_recoverable(f.text);
        if !parse_errors.is_empty() {
            // A file that is not valid TOML is reported as such; checking the recovered
            // remainder would mostly produce confusing follow-on errors.
            for e in parse_errors {
                self.errs.at(f, e.span().map_or(0, |s| s.start), e.message().trim().to_owned());
            }
            return;
        }
        let mut entries: Vec<_> = table.get_ref().iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in entries {
            let kind = key.get_ref().as_ref();
            let Some(items) = value.get_ref().as_array() else {
                let msg = if matches!(kind, "role" | "binding" | "deny" | "rule") {
                    format!("`{kind}` must be an array of tables (write [[{kind}]])")
                } else {
                    format!("unknown top-level key `{kind}`; expected role, binding, deny or rule")
                };
                self.errs.at(f, key.span().start, msg);
                continue;
            };
            for item in items.iter() {
                match kind {
                    "role" => self.role(f, item),
                    "binding" => self.binding(f, item),
                    "deny" => self.deny(f, item),
                    "rule" => self.rule(f, item),
                    _ => {
                        let msg = format!("unknown top-level key `{kind}`; expected role, binding, deny or rule");
                        self.errs.at(f, key.span().start, msg);
                        break;
                    }
                }
            }
        }
    }

    fn role(&mut self, f: &File<'_>, item: &Spanned<DeValue<'_>>) {
        let Some(raw) = self.item::<RawRole>(f, item) else {
            return;
        };
        let unique = self.claim(f, "role", &raw.name);
        if let Some(role) = validate::role(f, &mut self.errs, raw)
            && unique
        {
            self.policy.roles.insert(role.name.clone(), role);
        }
    }

    fn deny(&mut self, f: &File<'_>, item: &Spanned<DeValue<'_>>) {
        let Some(raw) = self.item::<RawDeny>(f, item) else {
            return;
        };
        let unique = self.claim(f, "deny", &raw.name);
        if let Some(d) = validate::deny(f, &mut self.errs, raw)
            && unique
        {
            self.policy.denies.insert(d.name.clone(), d);
        }
    }

    fn rule(&mut self, f: &File<'_>, item: &Spanned<DeValue<'_>>) {
        let Some(raw) = self.item::<RawRule>(f, item) else {
            return;
        };
        let unique = self.claim(f, "rule", &raw.name);
        if let Some(r) = validate::rule(f, &mut self.errs, raw)
            && unique
        {
            self.policy.rules.insert(r.name.clone(), r);
        }
    }

    fn binding(&mut self, f: &File<'_>, item: &Spanned<DeValue<'_>>) {
        let Some(raw) = self.item::<RawBinding>(f, item) else {
            return;
        };
        let subject = match (raw.group, raw.user) {
            (Some(g), None) if fields::is_subject(g.get_ref()) => Subject::Group(g.into_inner()),
            (None, Some(u)) if fields::is_account(u.get_ref()) => Subject::User(u.into_inner()),
            (Some(bad), None) => {
                self.errs.at(f, bad.span().start, format!("invalid group name {:?}", bad.get_ref()));
                return;
            }
            (None, Some(bad)) => {
                self.errs.at(f, bad.span().start, fields::invalid_account(bad.get_ref()));
                return;
            }
            _ => {
                self.errs.at(f, item.span().start, "a binding needs exactly one of `group` or `user`");
                return;
            }
        };
        if raw.roles.get_ref().is_empty() {
            self.errs.at(f, raw.roles.span().start, "`roles` must not be empty");
            return;
        }
        self.bindings.push(PendingBinding { file: f.idx, subject, roles: raw.roles.into_inner() });
    }

    /// Role references can point into any file, so they are checked last.
    fn resolve_bindings(&mut self, files: &[File<'_>]) {
        for b in std::mem::take(&mut self.bindings) {
            let mut roles = BTreeSet::new();
            for r in b.roles {
                if self.policy.roles.contains_key(r.get_ref()) {
                    roles.insert(r.into_inner());
                } else if self.first_seen.contains_key(&("role", r.get_ref().clone())) {
                    // The role exists but failed validation; that error is already reported.
                } else if let Some(f) = files.get(b.file) {
                    self.errs.at(f, r.span().start, format!("unknown role `{}`", r.get_ref()));
                }
            }
            self.policy.bindings.entry(b.subject).or_default().extend(roles);
        }
    }
}

/// One policy source as read by the caller (this crate never touches the filesystem).
#[derive(Debug, Clone, Copy)]
pub struct PolicySource<'a> {
    /// Shown in errors, e.g. the file name.
    pub name: &'a str,
    /// The TOML text.
    pub text: &'a str,
}

impl Policy {
    /// Loads and validates the union of `sources`, reporting every error found.
    pub fn from_sources(sources: &[PolicySource<'_>]) -> Result<Policy, LoadErrors> {
        load(sources)
    }
}

pub(crate) fn load(sources: &[PolicySource<'_>]) -> Result<Policy, LoadErrors> {
    let files: Vec<File<'_>> =
        sources.iter().enumerate().map(|(idx, s)| File { idx, name: s.name, text: s.text }).collect();
    let mut loader = Loader::default();
    for f in &files {
        loader.file(f);
    }
    loader.resolve_bindings(&files);
    if loader.errs.0.is_empty() {
        let mut policy = loader.policy;
        policy.scoped = policy
            .roles
            .values()
            .flat_map(|r| r.logins.iter().map(|l| (crate::scoped_principal(&r.name, l), (r.name.clone(), l.clone()))))
            .collect();
        return Ok(policy);
    }
    let mut errs = loader.errs.0;
    errs.sort_by_key(|(file, offset, _)| (*file, *offset));
    Err(LoadErrors(errs.into_iter().map(|(_, _, e)| e).collect()))
}
