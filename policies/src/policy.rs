//! The validated policy: the union of all policy sources.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{DenyStatement, Role, Rule, Subject};

/// A validated, immutable policy. Only [`Policy::from_sources`] and [`Policy::empty`]
/// create one (`from_sources` is the loader's, in `load`), so holding a `Policy` means every item passed validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub(crate) roles: BTreeMap<String, Role>,
    /// Repeated bindings of one subject are merged.
    pub(crate) bindings: BTreeMap<Subject, BTreeSet<String>>,
    pub(crate) denies: BTreeMap<String, DenyStatement>,
    pub(crate) rules: BTreeMap<String, Rule>,
}

impl Policy {
    /// A policy that grants nothing.
    pub fn empty() -> Policy {
        Policy::default()
    }

    /// Roles by name order.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Bindings, merged per subject.
    pub fn bindings(&self) -> &BTreeMap<Subject, BTreeSet<String>> {
        &self.bindings
    }

    /// Deny statements by name order.
    pub fn denies(&self) -> impl Iterator<Item = &DenyStatement> {
        self.denies.values()
    }

    /// Rules by name order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    /// The rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.get(name)
    }
}
