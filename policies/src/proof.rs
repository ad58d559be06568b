//! Proof types for control-plane permissions: a [`Grant<P>`](crate::Grant) exists only
//! where the policy engine found that an identity holds what `P` names
//! ([`Policy::authorize`](crate::Policy::authorize)), and an operation that needs a
//! permission takes the grant of its proof type. Handing `certificates` a grant for
//! `nodes.manage` then does not compile, instead of working (compile-fail tests in
//! `policies/tests/compile_fail/`).
//!
//! The proof types are uninhabited and sealed: nothing outside this crate can name a new
//! one, and none has a value — only the engine's check makes a grant.

use crate::permission::Permission;

mod sealed {
    pub trait Sealed {}
}

/// A permission, or a set of which any one suffices, as a type.
pub trait Proof: sealed::Sealed {
    /// Holding any of these proves `Self`; the first is the one a refusal names.
    const ANY_OF: &'static [Permission];
}

macro_rules! proofs {
    ($($(#[$doc:meta])* $name:ident = $($permission:ident)|+;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $name {}
        impl sealed::Sealed for $name {}
        impl Proof for $name {
            const ANY_OF: &'static [Permission] = &[$(Permission::$permission),+];
        }
    )*};
}

proofs! {
    /// `certs.revoke`.
    CertsRevoke = CertsRevoke;
    /// `sessions.kill`.
    SessionsKill = SessionsKill;
    /// `users.manage`.
    UsersManage = UsersManage;
    /// `ca.manage`.
    CaManage = CaManage;
    /// `audit.read`.
    AuditRead = AuditRead;
    /// `policy.manage`.
    PolicyManage = PolicyManage;
    /// `nodes.manage`.
    NodesManage = NodesManage;
    /// `secrets.manage`.
    SecretsManage = SecretsManage;
    /// `recordings.read`.
    RecordingsRead = RecordingsRead;
    /// Reading the policy's effect (its history, the target preview): `policy.manage` or
    /// `audit.read`.
    PolicyRead = PolicyManage | AuditRead;
    /// Reading the inventory (hardware facts, Proxmox VE clusters): `nodes.manage` or
    /// `audit.read`.
    InventoryRead = NodesManage | AuditRead;
    /// Listing live sessions: `audit.read` or `sessions.kill`.
    SessionsRead = AuditRead | SessionsKill;
}
