//! The nodes service: the inventory of nodes and how they join it — enrollment tokens
//! (`tokens.rs`), enrollment and its abort, a node's refresh and deregistration
//! (`enroll.rs`),
//! what each node's principals files list (`principals.rs`), and the records an
//! administrator adds, changes or removes by hand (here).

use super::core::Core;
use super::revocation::Revocation;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::store;
use crate::validate::address_host;
use portcullis_policies::{Grant, proof};
use portcullis_proto::{NodeRecord, NodeUpdate};
use portcullis_sshcert::fingerprint;
use ssh_key::PublicKey;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

/// The nodes service. Its own state: what it hands to nodes (the CA's TLS pin and the
/// enrollment binary) and the revocation service whose KRL goes into every bundle.
pub struct Nodes {
    pub(super) core: Arc<Core>,
    pub(super) revocation: Arc<Revocation>,
    tls_pin: String,
    enroll_binary: Option<PathBuf>,
    enroll_binary_cache: tokio::sync::Mutex<Option<Arc<EnrollBinary>>>,
}

/// The enrollment tool as served to nodes, with its checksum.
pub struct EnrollBinary {
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
}

impl Nodes {
    pub(super) fn new(
        core: Arc<Core>,
        revocation: Arc<Revocation>,
        tls_pin: String,
        enroll_binary: Option<PathBuf>,
    ) -> Nodes {
        Nodes { core, revocation, tls_pin, enroll_binary, enroll_binary_cache: tokio::sync::Mutex::new(None) }
    }

    pub fn tls_pin(&self) -> &str {
        &self.tls_pin
    }

    /// Reads (once) the enrollment binary the CA hands to nodes.
    pub async fn enroll_binary(&self) -> Result<Arc<EnrollBinary>, CaError> {
        let mut cache = self.enroll_binary_cache.lock().await;
        if let Some(binary) = cache.as_ref() {
            return Ok(Arc::clone(binary));
        }
        let path = self.enroll_binary.clone().ok_or(CaError::NotFound("enrollment binary on this CA"))?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the enrollment binary");
            CaError::NotFound("enrollment binary on this CA")
        })?;
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let binary = Arc::new(EnrollBinary { bytes: Arc::new(bytes), sha256 });
        *cache = Some(Arc::clone(&binary));
        Ok(binary)
    }

    /// The node called `name`, if `grant` manages it. A role's targets scope
    /// `nodes.manage` like the device permissions: a node outside them is "not found",
    /// as an unknown one is, so a lab administrator can neither change, retire nor learn
    /// of a prod node — and cannot re-tag one into the lab roles' reach.
    pub(super) async fn managed_node(
        &self,
        grant: &Grant<proof::NodesManage>,
        name: &str,
    ) -> Result<NodeRecord, CaError> {
        let node = self.core.store.node(name).await?;
        self.managed(grant, node)
    }

    fn managed(&self, grant: &Grant<proof::NodesManage>, node: Option<NodeRecord>) -> Result<NodeRecord, CaError> {
        node.filter(|node| grant.covers(&self.core.device(node))).ok_or(CaError::NotFound("node"))
    }

    /// Refuses a record whose name or host keys clash with another node's
    /// (see [`identity_clash`]).
    async fn check_identity(tx: &mut store::WriteTx<'_>, node: &NodeRecord) -> Result<(), CaError> {
        let keys = crate::validate::host_keys(&node.host_keys)?;
        let nodes = store::nodes_for_identity(tx).await?;
        match identity_clash(&node.name, &keys, &nodes) {
            Some((_, message)) => Err(CaError::Conflict(message.into())),
            None => Ok(()),
        }
    }

    /// Registers a new node; an existing name is refused (use [`Nodes::update_node`]).
    pub async fn add_node(&self, grant: &Grant<proof::NodesManage>, node: &NodeRecord) -> Result<(), CaError> {
        crate::validate::node_record(node)?;
        crate::validate::host_keys(&node.host_keys)?;
        if !grant.covers_everything() {
            return Err(CaError::Forbidden(ROUTE_NEEDS_EVERY_NODE));
        }
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        Self::check_identity(&mut tx, node).await?;
        if !store::insert_node(tx.conn(), node, now).await? {
            return Err(CaError::Conflict(format!(
                "node {} exists; change it with `node update` or remove it first",
                node.name
            )));
        }
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::NodeRegistered { actor: grant.username().to_owned(), name: node.name.clone(), new: true },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes only what `update` names.
    pub async fn update_node(
        &self,
        grant: &Grant<proof::NodesManage>,
        name: &str,
        update: &NodeUpdate,
    ) -> Result<NodeRecord, CaError> {
        let routes = update.addresses.is_some()
            || update.agent.is_some()
            || update.partition.is_some()
            || update.host_keys.is_some()
            || update.ssh_port.is_some();
        if routes && !grant.covers_everything() {
            return Err(CaError::Forbidden(ROUTE_NEEDS_EVERY_NODE));
        }
        // Read and written in one transaction: a change computed from an earlier read
        // would put back what a re-enrollment committed in between (its new host keys).
        let mut tx = self.core.store.begin().await?;
        let mut node = self.managed(grant, store::node_for_update(&mut tx, name).await?)?;
        let mut fields = Vec::new();
        if let Some(addresses) = &update.addresses {
            node.addresses = addresses.clone();
            fields.push("addresses");
        }
        if !update.set_tags.is_empty() || !update.remove_tags.is_empty() {
            for key in &update.remove_tags {
                node.tags.remove(key);
            }
            node.tags.extend(update.set_tags.clone());
            fields.push("tags");
        }
        if let Some(agent) = &update.agent {
            node.agent = Some(agent.clone()).filter(|a| !a.is_empty());
            fields.push("agent");
        }
        if let Some(partition) = &update.partition {
            node.partition = Some(partition.clone()).filter(|p| !p.is_empty());
            fields.push("partition");
        }
        if let Some(keys) = &update.host_keys {
            node.host_keys = keys.clone();
            Self::check_identity(&mut tx, &node).await?;
            fields.push("host_keys");
        }
        if let Some(port) = update.ssh_port {
            node.ssh_port = Some(port);
            fields.push("ssh_port");
        }
        crate::validate::node_record(&node)?;
        if !grant.covers(&self.core.device(&node)) {
            return Err(CaError::Forbidden(OUTSIDE_REACH));
        }
        let now = self.core.now();
        let actor = grant.username().to_owned();
        store::upsert_node(tx.conn(), &node, now).await?;
        if update.host_keys.is_some() {
            // Certificates for the old keys must not outlive the re-key.
            super::revocation::retire_node_certs(tx.conn(), &node.name, &actor, now).await?;
        }
        let event = AuditEvent::NodeUpdated { actor, name: node.name.clone(), fields };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        Ok(node)
    }

    /// Removes a node: its record (and with it the principals the CA lists for it, its
    /// pinned keys and inventory entry) and its host certificates, revoked.
    pub async fn remove_node(&self, grant: &Grant<proof::NodesManage>, name: &str) -> Result<(), CaError> {
        if !grant.covers_everything() {
            self.managed_node(grant, name).await?;
        }
        let now = self.core.now();
        let actor = grant.username().to_owned();
        let mut tx = self.core.store.begin().await?;
        if !store::delete_node(tx.conn(), name).await? {
            return Err(CaError::NotFound("node"));
        }
        let revoked = super::revocation::retire_node_certs(tx.conn(), name, &actor, now).await?;
        let event = AuditEvent::NodeRemoved { actor, name: name.to_owned(), host_certificates_revoked: revoked };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list(&self, grant: &Grant<proof::NodesManage>) -> Result<Vec<NodeRecord>, CaError> {
        let mut nodes = self.core.store.nodes().await?;
        nodes.retain(|node| grant.covers(&self.core.device(node)));
        Ok(nodes)
    }
}

/// Why a role with targets may not add a node or change where one is reached: a node's
/// addresses, port, agent and partition are where sessions through the agents connect
/// (the agents' allow-lists are made of them), and its host keys what they trust there.
/// Managing the lab's nodes must not be a way to point the lab's users, through the lab's
/// agent, at any address it can reach.
pub(super) const ROUTE_NEEDS_EVERY_NODE: &str = "adding a node, or changing its addresses, port, agent, partition or \
     host keys, sets where sessions connect: it needs nodes.manage from a role without targets";

/// Why a targeted role may not change a node so: it would leave the role's reach.
pub(super) const OUTSIDE_REACH: &str = "the node would be outside the devices your roles manage (their targets); an administrator whose role has \
     no targets can do it";

/// Why a node called `name` with `host_keys` cannot be registered beside `nodes` (its
/// own earlier record, if any, is skipped): the audited reason and what to tell the
/// caller.
/// - Its name is another node's address: it would be certified as this node's (its
///   name always is).
/// - Its session principal is another node's: session certificates name a node by a
///   48-bit digest of its name (`node_principal`), and a name is the enroller's choice,
///   so one searched to share another node's digest would be let in wherever that
///   node's session certificates are.
/// - One of its host keys is pinned to another node: a host key is what the bastion
///   knows a node by, so this record's sessions could be taken by that machine (public
///   host keys are public: `ssh-keyscan`), or by either of two clones of one image.
pub(super) fn identity_clash(
    name: &str,
    host_keys: &[PublicKey],
    nodes: &[NodeRecord],
) -> Option<(&'static str, &'static str)> {
    let others = || nodes.iter().filter(|n| n.name != name);
    let host = address_host(name);
    if others().any(|n| n.addresses.iter().any(|a| address_host(a) == host)) {
        return Some(("name_taken", "this name is an address of another enrolled node"));
    }
    let digest = |name: &str| portcullis_policies::node_principal(name, "");
    if others().any(|n| digest(&n.name) == digest(name)) {
        return Some(("name_taken", "this name's session principal is another node's; choose another name"));
    }
    host_key_owner(name, host_keys, nodes).map(|_| {
        (
            "host_key_taken",
            "a host key of this machine is another registered node's (a cloned image? generate new host keys)",
        )
    })
}

/// The node other than `name` that has one of `host_keys` pinned, if any.
pub(super) fn host_key_owner<'n>(
    name: &str,
    host_keys: &[PublicKey],
    nodes: &'n [NodeRecord],
) -> Option<&'n NodeRecord> {
    let reported: BTreeSet<String> = host_keys.iter().map(|k| fingerprint(k.key_data())).collect();
    nodes.iter().filter(|n| n.name != name).find(|n| {
        n.host_keys
            .iter()
            .filter_map(|k| PublicKey::from_openssh(k).ok())
            .any(|k| reported.contains(&fingerprint(k.key_data())))
    })
}
