//! Portcullis policy model and decision engine.
//!
//! This crate turns policy files (TOML, handed in as text) into a validated, immutable
//! [`Policy`], and answers every access question of the control plane with a value: an
//! unforgeable [`Grant`] / [`CertPermit`] or a [`Deny`] with a stable reason code. Target
//! queries are a strict SRQL subset ([`TargetQuery`]); principals on certificates and
//! nodes use the per-role scheme described in [`principal`].
//!
//! It must never perform I/O (no filesystem, network, environment, clock or randomness):
//! callers read files and pass text in, so the whole engine is deterministic and tested
//! with plain unit tests. It must never panic on input, and a typo in a policy must be a
//! load error, never a silently wider grant.

pub mod account;
mod decision;
mod device;
mod engine;
mod load;
mod model;
mod permission;
mod policy;
pub mod principal;
pub mod proof;
pub mod srql;
mod summary;

pub use account::{USER_NAME_RULE, UserSource, account_name, parse_account, valid_user_name};
pub use decision::{CertPermit, CertRequest, Deny, DenyReason, Grant, Held, Identity};
pub use device::{DEFAULT_SSH_PORT, Device};
pub use load::{LoadError, LoadErrors, PolicySource};
pub use model::{
    AuthMethod, Credential, DEFAULT_MAX_PER_AGENT, DEFAULT_MAX_PER_DEVICE, DEFAULT_MAX_PER_USER,
    DEFAULT_PROXMOX_API_PORT, DenyStatement, HostKeyPolicy, IdleCounts, OverLimit, Provider, Purpose, Recording, Role,
    Rule, SECRET_NAME_RULE, Scope, SessionLimits, Subject, valid_secret_name,
};
pub use permission::{Permission, UnknownPermission};
pub use policy::Policy;
pub use principal::{DISCOVERY_LOGIN, LINE_OPTIONS, PrincipalLine, node_principal, scoped_principal};
pub use srql::{QueryError, TargetQuery};
pub use summary::{FieldChange, ItemSummary, PolicyDiff, PolicySummary, diff};
