//! Which enrolled Portcullis node a Proxmox VE node is. Host names repeat across clusters
//! (`pve`, `pve1` are PVE's defaults), so a name alone links nothing across sites: an
//! enrolled node is a PVE node's only when nothing it reported or was given contradicts
//! the cluster it was collected from.
//!
//! The evidence, all of which must agree:
//! - the name PVE uses for it: the enrolled node's `pve_node` tag (`enroll` reads it from
//!   the host), else its own name;
//! - its cluster: the `pve_cluster` tag (from `corosync.conf`) must name the collected
//!   cluster, and a standalone PVE host's node carries none; a node without the tag (added
//!   by hand) is not contradicted;
//! - its agent: a node reached through another agent is in another site.
//!
//! Two enrolled nodes fitting one PVE node link neither (shown as ambiguous): a wrong link
//! would put one site's guests under another site's host. Links only arrange listings;
//! no decision reads them (a guest's policy device names its PVE node, never the link).

use crate::store::PveNodeRow;
use portcullis_policies::Device;

/// Where a PVE node stands among the enrolled nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    Enrolled(String),
    Ambiguous(Vec<String>),
    Unlinked,
}

fn tag<'a>(device: &'a Device, name: &str) -> Option<&'a str> {
    device.tags.get(name).map(String::as_str)
}

fn fits(pve: &PveNodeRow, enrolled: &Device) -> bool {
    let name = tag(enrolled, "pve_node").unwrap_or(&enrolled.name);
    let cluster_agrees = match tag(enrolled, "pve_cluster") {
        Some(cluster) => pve.clustered && cluster == pve.cluster,
        None => true,
    };
    let agent_agrees = enrolled.agent.as_deref().is_none_or(|a| a == pve.agent);
    name == pve.name && cluster_agrees && agent_agrees
}

/// The link of one PVE node.
pub(crate) fn link(pve: &PveNodeRow, enrolled: &[Device]) -> Link {
    let mut fitting: Vec<String> = enrolled.iter().filter(|d| fits(pve, d)).map(|d| d.name.clone()).collect();
    match fitting.len() {
        0 => Link::Unlinked,
        1 => Link::Enrolled(fitting.remove(0)),
        _ => Link::Ambiguous(fitting),
    }
}

/// Every PVE node with its link.
pub(crate) fn links(pve: Vec<PveNodeRow>, enrolled: &[Device]) -> Vec<(PveNodeRow, Link)> {
    pve.into_iter()
        .map(|n| {
            let link = link(&n, enrolled);
            (n, link)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pve(cluster: &str, clustered: bool, agent: &str, name: &str) -> PveNodeRow {
        PveNodeRow {
            cluster_id: format!("{agent}/{cluster}"),
            cluster: cluster.into(),
            clustered,
            agent: agent.into(),
            name: name.into(),
            status: "online".into(),
        }
    }

    fn node(name: &str, agent: Option<&str>, tags: &[(&str, &str)]) -> Device {
        Device {
            name: name.into(),
            agent: agent.map(str::to_owned),
            tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..Device::default()
        }
    }

    #[test]
    fn a_name_links_when_nothing_contradicts_it() {
        let enrolled = [node("pve01", Some("site-a"), &[("pve_cluster", "alpha")])];
        assert_eq!(link(&pve("alpha", true, "site-a", "pve01"), &enrolled), Link::Enrolled("pve01".into()));
        // Added by hand: no PVE tags, no agent.
        assert_eq!(
            link(&pve("alpha", true, "site-a", "pve01"), &[node("pve01", None, &[])]),
            Link::Enrolled("pve01".into())
        );
    }

    #[test]
    fn the_same_host_name_in_another_cluster_or_site_is_another_machine() {
        let enrolled = [
            node("pve.alpha", Some("site-a"), &[("pve_node", "pve"), ("pve_cluster", "alpha")]),
            node("pve.beta", Some("site-b"), &[("pve_node", "pve"), ("pve_cluster", "beta")]),
        ];
        assert_eq!(link(&pve("alpha", true, "site-a", "pve"), &enrolled), Link::Enrolled("pve.alpha".into()));
        assert_eq!(link(&pve("beta", true, "site-b", "pve"), &enrolled), Link::Enrolled("pve.beta".into()));
        // Right cluster name, wrong site.
        assert_eq!(link(&pve("alpha", true, "site-c", "pve"), &enrolled), Link::Unlinked);
        // A standalone host's node reports no cluster.
        assert_eq!(link(&pve("pve", false, "site-a", "pve"), &enrolled), Link::Unlinked);
        // The enrolled name alone does not win over the host's own name.
        assert_eq!(link(&pve("alpha", true, "site-a", "pve.alpha"), &enrolled), Link::Unlinked);
    }

    #[test]
    fn two_fitting_nodes_link_neither() {
        let enrolled = [node("pve01", None, &[]), node("pve01-mgmt", None, &[("pve_node", "pve01")])];
        assert_eq!(
            link(&pve("alpha", true, "site-a", "pve01"), &enrolled),
            Link::Ambiguous(vec!["pve01".into(), "pve01-mgmt".into()])
        );
    }
}
