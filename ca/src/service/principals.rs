//! What a node lets in: the `AuthorizedPrincipalsFile` lines per login that the
//! policy gives a node.

use super::device::device_of;
use super::nodes::Nodes;
use crate::error::CaError;
use portcullis_policies::{Grant, proof};
use portcullis_proto::{NodePrincipals, NodeRecord, PrincipalLine};
use std::collections::BTreeMap;

impl Nodes {
    /// What a node's `AuthorizedPrincipalsFile` for each login must list.
    pub async fn node_principals(
        &self,
        grant: &Grant<proof::NodesManage>,
        name: &str,
    ) -> Result<NodePrincipals, CaError> {
        let node = self.managed_node(grant, name).await?;
        let lines = self.principal_lines_of(&node);
        Ok(NodePrincipals { principals: principals_only(&lines), lines, node: node.name })
    }

    /// A node's `AuthorizedPrincipalsFile` lines per login: what the admin API shows and
    /// exactly what enrollment and refresh install.
    pub(crate) fn principal_lines_of(&self, node: &NodeRecord) -> BTreeMap<String, Vec<PrincipalLine>> {
        let wire = |line: portcullis_policies::PrincipalLine| PrincipalLine {
            options: line.options.iter().map(|o| (*o).to_owned()).collect(),
            principal: line.principal,
        };
        let mut lines: BTreeMap<String, Vec<PrincipalLine>> = self
            .core
            .policy()
            .node_principal_lines(&device_of(node))
            .into_iter()
            .map(|(login, lines)| (login, lines.into_iter().map(wire).collect()))
            .collect();
        // The discovery account accepts only its own node principal, and only while an
        // `inventory_enrichment` rule covers the node; its certificates allow no pty and
        // no forwarding, and neither does its line. No role's line, ever: the policy
        // loader refuses a role granting that login, and a policy from before that
        // refusal must not make it a shell either.
        let login = portcullis_proto::discovery::DISCOVERY_LOGIN;
        lines.remove(login);
        if self.core.discovery_allowed(node).is_some() {
            let principal = portcullis_policies::node_principal(&node.name, login);
            lines.insert(login.to_owned(), vec![PrincipalLine { options: vec!["restrict".to_owned()], principal }]);
        }
        lines
    }
}

/// The principals of each login's lines, without options.
pub(crate) fn principals_only(lines: &BTreeMap<String, Vec<PrincipalLine>>) -> BTreeMap<String, Vec<String>> {
    lines.iter().map(|(login, l)| (login.clone(), l.iter().map(|l| l.principal.clone()).collect())).collect()
}

#[cfg(test)]
mod tests {
    /// Every option the policy engine writes into a principals line is one a node's
    /// `portcullis-enroll` accepts (it refuses a bundle with any other).
    #[test]
    fn policy_line_options_are_accepted_by_nodes() {
        for option in portcullis_policies::LINE_OPTIONS {
            assert!(portcullis_proto::PRINCIPAL_LINE_OPTIONS.contains(option), "{option}");
        }
    }
}
