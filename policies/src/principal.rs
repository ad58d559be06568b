//! Scoped principals: how a certificate's principals and a node's
//! `AuthorizedPrincipalsFile` meet.
//!
//! A user certificate does not carry the login (`root`) as a principal. It carries one
//! opaque token per (role, login) the user may use: `pc_<12 hex of sha256("portcullis-role-v1\0" + role)>_<login>`.
//! A node's `AuthorizedPrincipalsFile` for login `root` lists the tokens of exactly those
//! roles whose target query matches that node. So:
//!
//! - **Certificates stay small** at thousands of nodes: their size grows with the roles a
//!   user holds, not with the fleet (per-node tokens, like ServiceRadar's `srp_v1_…`, are
//!   tighter but would put thousands of principals in one certificate).
//! - **A node accepts only roles that cover it**: a certificate for `pc_…_root` of a role
//!   targeting `tags.env:prod` is useless on a staging node, with stock sshd doing the check.
//! - **Policy changes reach nodes through the enrollment refresh** of their principals
//!   files; changing a role's targets changes which nodes list its token.
//! - **Immediate revocation is the KRL's job**; principals files bound what a valid
//!   certificate can do, the KRL kills certificates that must stop working now.
//!
//! **Node principals** (`pn_…`, [`node_principal`]) are the other kind: one per (device,
//! login), listed only in that device's file. The CA puts exactly one of them in a
//! bastion's per-session certificate, so a certificate minted for one session on one node
//! is worthless anywhere else; they are never issued to users.
//!
//! The role name is hashed (rather than written out) so node files and certificates do not
//! disclose the policy's vocabulary, and the prefix keeps tokens from ever colliding with
//! real login names by accident. The `v1` domain separator allows a future
//! scheme change without ambiguity.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// One line of a node's `AuthorizedPrincipalsFile`: a principal, and the
/// `authorized_keys` options sshd applies to a certificate accepted through that line.
///
/// A certificate carries the union of its roles' extensions, but a role's extensions
/// must hold only where that role applies. sshd grants a permission only when both the
/// certificate *and* the principals line allow it, so each role's line starts with
/// `restrict` and re-allows exactly what that role grants: a certificate holding a lab
/// role's `permit-port-forwarding` forwards nothing on a prod node, whose file lists only
/// the prod role's line. sshd uses the first line naming one of the certificate's
/// principals, so lines are ordered by how much they allow (most first): a user holding
/// two roles that both cover a node gets, on that node, what one of them grants — never
/// what a role that does not cover it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalLine {
    pub principal: String,
    /// sshd option keywords, `restrict` first.
    pub options: Vec<&'static str>,
}

impl PrincipalLine {
    /// `restrict` plus what `extensions` (certificate extension names) and
    /// `critical_options` (names) allow or require, as sshd keywords.
    pub fn restricted<'a>(
        principal: String,
        extensions: impl IntoIterator<Item = &'a String>,
        critical_options: impl IntoIterator<Item = &'a String>,
    ) -> PrincipalLine {
        let allowed: BTreeSet<&'static str> = extensions
            .into_iter()
            .filter_map(|e| line_option_of_extension(e))
            .chain(critical_options.into_iter().filter(|o| *o == "verify-required").map(|_| "verify-required"))
            .collect();
        PrincipalLine { principal, options: std::iter::once("restrict").chain(allowed).collect() }
    }
}

/// The `authorized_keys` option that lets a certificate extension take effect after
/// `restrict` (sshd ANDs the two).
fn line_option_of_extension(extension: &str) -> Option<&'static str> {
    Some(match extension {
        "permit-pty" => "pty",
        "permit-port-forwarding" => "port-forwarding",
        "permit-agent-forwarding" => "agent-forwarding",
        "permit-X11-forwarding" => "X11-forwarding",
        "permit-user-rc" => "user-rc",
        "no-touch-required" => "no-touch-required",
        _ => return None,
    })
}

/// Every option a principals line may carry: what `portcullis-enroll` accepts from the CA.
pub const LINE_OPTIONS: &[&str] = &[
    "restrict",
    "pty",
    "port-forwarding",
    "agent-forwarding",
    "X11-forwarding",
    "user-rc",
    "no-touch-required",
    "verify-required",
];

/// The login hardware discovery logs in as (`portcullis_proto::discovery`): reserved, no
/// role may grant it.
pub const DISCOVERY_LOGIN: &str = "portcullis-discovery";

/// The principal that lets holders of `role` log in as `login` on nodes the role targets.
pub fn scoped_principal(role: &str, login: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"portcullis-role-v1\0");
    h.update(role.as_bytes());
    let hex = hex::encode(h.finalize());
    format!("pc_{}_{login}", hex.get(..12).unwrap_or(&hex))
}

/// The principal of a per-session certificate (bastion terminated mode, browser
/// console): `pn_<12 hex of sha256("portcullis-node-v1\0" + device)>_<login>`. Only the
/// node `device` lists it (for `login`), so a session certificate opens that one node and
/// nothing else, even within its minute of life.
pub fn node_principal(device: &str, login: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"portcullis-node-v1\0");
    h.update(device.as_bytes());
    let hex = hex::encode(h.finalize());
    format!("pn_{}_{login}", hex.get(..12).unwrap_or(&hex))
}

#[cfg(test)]
mod tests {
    use super::{LINE_OPTIONS, PrincipalLine, node_principal, scoped_principal};

    #[test]
    fn lines_restrict_then_allow_what_the_role_grants() {
        let ext = ["permit-pty".to_owned(), "permit-port-forwarding".to_owned()];
        let line = PrincipalLine::restricted("pc_x_root".into(), &ext, &["verify-required".to_owned()]);
        assert_eq!(line.options, ["restrict", "port-forwarding", "pty", "verify-required"]);
        assert_eq!(line.principal, "pc_x_root");
        assert!(line.options.iter().all(|o| LINE_OPTIONS.contains(o)));
        let bare = PrincipalLine::restricted("pc_x_root".into(), &[], &["force-command".to_owned()]);
        assert_eq!((bare.options.as_slice(), bare.principal.as_str()), (["restrict"].as_slice(), "pc_x_root"));
        let every: Vec<String> = [
            "permit-pty",
            "permit-port-forwarding",
            "permit-agent-forwarding",
            "permit-X11-forwarding",
            "permit-user-rc",
            "no-touch-required",
        ]
        .map(str::to_owned)
        .into();
        let all = PrincipalLine::restricted("p".into(), &every, &["verify-required".to_owned()]);
        assert_eq!(all.options.len(), LINE_OPTIONS.len(), "every option is reachable: {:?}", all.options);
    }

    #[test]
    fn shape_and_stability() {
        let p = scoped_principal("pve-admin", "root");
        assert!(p.starts_with("pc_") && p.ends_with("_root"));
        assert_eq!(p.len(), 3 + 12 + 1 + 4);
        assert_eq!(p, scoped_principal("pve-admin", "root"));
        assert_ne!(p, scoped_principal("pve-admin2", "root"));
        assert_ne!(p, scoped_principal("pve-admin", "admin"));
        // Pinned so an accidental scheme change (which would lock everyone out of every
        // node until refresh) fails a test. Computed independently with:
        // printf 'portcullis-role-v1\0pve-admin' | sha256sum | cut -c1-12
        assert_eq!(p, "pc_d678dd085269_root");
    }

    #[test]
    fn node_principal_shape_and_stability() {
        let p = node_principal("pve01", "root");
        assert!(p.starts_with("pn_") && p.ends_with("_root"));
        assert_eq!(p.len(), 3 + 12 + 1 + 4);
        assert_ne!(p, node_principal("pve02", "root"));
        assert_ne!(p, node_principal("pve01", "admin"));
        // Never equal to a role principal of the same text.
        assert_ne!(&p[3..], &scoped_principal("pve01", "root")[3..]);
        // Pinned, computed independently with:
        // printf 'portcullis-node-v1\0pve01' | sha256sum | cut -c1-12
        assert_eq!(p, "pn_3cd8d3700837_root");
    }
}
