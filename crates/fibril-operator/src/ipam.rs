//! Per-node CIDR reconcilers: cluster-pool and multi-pool blocks on FibrilNodes, and
//! kube-controller-manager-like podCIDRs on Nodes.
//!
//! The store is the source of truth: at start (and on an IPAM mode change) the
//! allocators are rebuilt from what the FibrilNodes / Nodes hold, so a restarted operator
//! never moves an existing block. Each reconcile reads the object, adjusts the in-memory
//! allocator, and writes the object back at the revision it read (a conflict requeues).

use std::collections::BTreeMap;

use fibril_api::fibril::{
    FibrilNodeSpec, FibrilNodeStatus, IpamPoolAllocation, IpamPoolSpec, NodeIpamSpec,
    NodeIpamStatus, OperatorStatus,
};
use fibril_api::{FibrilNode, FibrilPodIPPool, Node};
use fibril_config::{Config, IpamMode};
use fibril_ipam::{
    ClusterPool, IpamError, MultiPool, MultiPoolAssignments, NodeCidrAllocator, PoolSpec,
    CLUSTER_POOL_NAME,
};
use fibril_store::{Store, StoreError, StoreExt};
use ipnet::{IpNet, Ipv4Net};
use tracing::{debug, info, warn};

use crate::OperatorError;

/// The IPv4 CIDRs of a list of `IpNet`s.
fn v4(nets: &[IpNet]) -> Vec<Ipv4Net> {
    nets.iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Addresses the node asks for in `pool` (`spec.ipam.pools.requested[pool].needed.ipv4-addrs`).
pub fn requested_ipv4(node: &FibrilNode, pool: &str) -> Option<u64> {
    node.spec
        .as_ref()?
        .ipam
        .as_ref()?
        .pools
        .as_ref()?
        .requested
        .iter()
        .find(|r| r.pool == pool)?
        .needed
        .ipv4_addrs
        .map(u64::from)
}

/// `spec.ipam.pools.allocated` as pool -> IPv4 blocks.
pub fn allocated_pools(node: &FibrilNode) -> BTreeMap<String, Vec<Ipv4Net>> {
    let mut out: BTreeMap<String, Vec<Ipv4Net>> = BTreeMap::new();
    let Some(pools) = node
        .spec
        .as_ref()
        .and_then(|s| s.ipam.as_ref())
        .and_then(|i| i.pools.as_ref())
    else {
        return out;
    };
    for a in &pools.allocated {
        out.entry(a.pool.clone()).or_default().extend(v4(&a.cidrs));
    }
    out
}

fn node_name(node: &FibrilNode) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

fn ipam_spec_mut(node: &mut FibrilNode) -> &mut NodeIpamSpec {
    node.spec
        .get_or_insert_with(FibrilNodeSpec::default)
        .ipam
        .get_or_insert_with(NodeIpamSpec::default)
}

fn set_operator_error(node: &mut FibrilNode, error: Option<String>) {
    let current = node
        .status
        .as_ref()
        .and_then(|s| s.ipam.as_ref())
        .and_then(|i| i.operator_status.as_ref())
        .and_then(|o| o.error.clone());
    if current == error {
        return;
    }
    let ipam = node
        .status
        .get_or_insert_with(FibrilNodeStatus::default)
        .ipam
        .get_or_insert_with(NodeIpamStatus::default);
    ipam.operator_status = error.map(|e| OperatorStatus { error: Some(e) });
}

/// The pool spec of a FibrilPodIPPool (IPv4 part), if it has one.
pub fn pool_spec(pool: &FibrilPodIPPool) -> Option<PoolSpec> {
    let v4 = pool.spec.as_ref()?.ipv4.as_ref()?;
    Some(PoolSpec {
        name: pool.metadata.name.clone()?,
        cidrs: v4.cidrs.clone(),
        mask_size: v4.mask_size,
    })
}

/// The allocators of the current IPAM mode.
#[derive(Debug)]
pub(crate) enum Allocator {
    /// `kubernetes` mode: nothing on FibrilNodes (agents copy the Node's podCIDRs).
    None,
    ClusterPool(ClusterPool),
    MultiPool(MultiPool),
}

/// What a node reconcile decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done; nothing pending.
    Done,
    /// Written or unchanged, but a problem remains (exhaustion, unknown pool): retry later.
    Degraded(String),
}

pub(crate) struct IpamState {
    pub alloc: Allocator,
    pub node_cidrs: Option<NodeCidrAllocator>,
}

impl IpamState {
    /// Builds the allocators for `config` from the store's FibrilNodes, pools and Nodes.
    pub async fn restore(
        store: &dyn Store,
        config: &Config,
        manage_node_cidrs: bool,
    ) -> Result<Self, OperatorError> {
        let alloc = match config.ipam.mode {
            IpamMode::Kubernetes => Allocator::None,
            IpamMode::ClusterPool => {
                let mut pool = ClusterPool::new(
                    &config.ipam.cluster_pool_ipv4_pod_cidr_list,
                    config.ipam.cluster_pool_ipv4_mask_size,
                )
                .map_err(|e| OperatorError::Config(e.to_string()))?;
                for node in store.list_as::<FibrilNode>(None).await?.items {
                    let name = node_name(&node);
                    let blocks: Vec<Ipv4Net> = v4(node.pod_cidrs())
                        .into_iter()
                        .filter(|b| pool.cidrs().iter().any(|c| c.contains(b)))
                        .collect();
                    if blocks.is_empty() {
                        continue;
                    }
                    match pool.restore_node(name, &blocks) {
                        Ok(()) => debug!(node = name, ?blocks, "restored cluster-pool blocks"),
                        Err(e) => {
                            warn!(node = name, error = %e, "cannot restore cluster-pool blocks")
                        }
                    }
                }
                Allocator::ClusterPool(pool)
            }
            IpamMode::MultiPool => {
                let mut mp = MultiPool::new();
                ensure_auto_pools(store, config).await?;
                for p in store.list_as::<FibrilPodIPPool>(None).await?.items {
                    if let Some(spec) = pool_spec(&p) {
                        if let Err(e) = mp.upsert_pool(&spec) {
                            warn!(pool = %spec.name, error = %e, "ignoring pod IP pool");
                        }
                    }
                }
                for node in store.list_as::<FibrilNode>(None).await?.items {
                    restore_multi_pool_node(&mut mp, node_name(&node), &allocated_pools(&node));
                }
                Allocator::MultiPool(mp)
            }
        };
        let node_cidrs = if manage_node_cidrs {
            let mut a =
                NodeCidrAllocator::new(config.k8s_cluster_cidr, config.k8s_node_cidr_mask_size)
                    .map_err(|e| OperatorError::Config(e.to_string()))?;
            for node in store.list_as::<Node>(None).await?.items {
                let name = node.metadata.name.clone().unwrap_or_default();
                if let Some(c) = node_pod_cidr(&node) {
                    if a.cluster_cidr().contains(&c) {
                        if let Err(e) = a.restore(&name, c) {
                            warn!(node = %name, error = %e, "cannot restore node podCIDR");
                        }
                    }
                }
            }
            Some(a)
        } else {
            None
        };
        Ok(Self { alloc, node_cidrs })
    }

    /// Applies a changed config without a mode change: a grown cluster-pool list, new or
    /// grown auto-created pools. Changes the allocator cannot take (a mask size change
    /// while blocks are assigned, dropping a CIDR in use) are errors; the old settings
    /// stay.
    pub async fn reconfigure(
        &mut self,
        store: &dyn Store,
        previous: &Config,
        config: &Config,
    ) -> Result<(), OperatorError> {
        match &mut self.alloc {
            Allocator::ClusterPool(pool) => pool
                .reconfigure(
                    &config.ipam.cluster_pool_ipv4_pod_cidr_list,
                    config.ipam.cluster_pool_ipv4_mask_size,
                )
                .map_err(|e| OperatorError::Config(e.to_string()))?,
            Allocator::MultiPool(_) => {
                ensure_auto_pools(store, config).await?;
                update_changed_auto_pools(store, previous, config).await?;
                self.sync_pools(store).await?;
            }
            Allocator::None => {}
        }
        if let Some(a) = &self.node_cidrs {
            if a.cluster_cidr() != config.k8s_cluster_cidr
                || a.node_cidr_mask_size() != config.k8s_node_cidr_mask_size
            {
                if a.assignments().nodes.is_empty() {
                    self.node_cidrs = Some(
                        NodeCidrAllocator::new(
                            config.k8s_cluster_cidr,
                            config.k8s_node_cidr_mask_size,
                        )
                        .map_err(|e| OperatorError::Config(e.to_string()))?,
                    );
                } else {
                    return Err(OperatorError::Config(format!(
                        "k8sClusterCIDR/k8sNodeCIDRMaskSize cannot change from {}/{} to {}/{} while nodes hold podCIDRs",
                        a.cluster_cidr(),
                        a.node_cidr_mask_size(),
                        config.k8s_cluster_cidr,
                        config.k8s_node_cidr_mask_size
                    )));
                }
            }
        }
        Ok(())
    }

    /// Multi-pool: brings the pools in line with the FibrilPodIPPool objects. A deleted
    /// pool is dropped once no node holds a block of it.
    pub async fn sync_pools(&mut self, store: &dyn Store) -> Result<(), OperatorError> {
        let Allocator::MultiPool(mp) = &mut self.alloc else {
            return Ok(());
        };
        let mut present = Vec::new();
        for p in store.list_as::<FibrilPodIPPool>(None).await?.items {
            let Some(spec) = pool_spec(&p) else { continue };
            present.push(spec.name.clone());
            if mp
                .pool(&spec.name)
                .ok()
                .map(|cur| (cur.cidrs(), cur.mask_size()))
                == Some((spec.cidrs.clone(), spec.mask_size))
            {
                continue;
            }
            match mp.upsert_pool(&spec) {
                Ok(()) => {
                    info!(pool = %spec.name, cidrs = ?spec.cidrs, mask = spec.mask_size, "pod IP pool ready")
                }
                Err(e) => warn!(pool = %spec.name, error = %e, "ignoring pod IP pool"),
            }
        }
        for old in mp.specs() {
            if !present.contains(&old.name) {
                match mp.remove_pool(&old.name) {
                    Ok(()) => info!(pool = %old.name, "pod IP pool removed"),
                    Err(e) => debug!(pool = %old.name, error = %e, "deleted pool still in use"),
                }
            }
        }
        Ok(())
    }

    /// Reconciles one FibrilNode (by name).
    pub async fn reconcile_fibril_node(
        &mut self,
        store: &dyn Store,
        name: &str,
    ) -> Result<Outcome, StoreError> {
        let Some(node) = store.get_as::<FibrilNode>(None, name).await? else {
            match &mut self.alloc {
                Allocator::ClusterPool(p) => {
                    let freed = p.release_node(name);
                    if !freed.is_empty() {
                        info!(
                            node = name,
                            ?freed,
                            "node deleted: cluster-pool blocks released"
                        );
                    }
                }
                Allocator::MultiPool(mp) => {
                    let freed = mp.release_node(name);
                    if !freed.is_empty() {
                        info!(
                            node = name,
                            ?freed,
                            "node deleted: multi-pool blocks released"
                        );
                    }
                }
                Allocator::None => {}
            }
            return Ok(Outcome::Done);
        };
        let mut next = node.clone();
        let outcome = match &mut self.alloc {
            Allocator::None => return Ok(Outcome::Done),
            Allocator::ClusterPool(p) => reconcile_cluster_pool(p, &mut next),
            Allocator::MultiPool(mp) => reconcile_multi_pool(mp, &mut next),
        };
        let err = match &outcome {
            Outcome::Done => None,
            Outcome::Degraded(e) => Some(e.clone()),
        };
        set_operator_error(&mut next, err);
        if next != node {
            store.update_as(&next).await?;
            debug!(node = name, "FibrilNode IPAM spec updated");
        }
        Ok(outcome)
    }

    /// Reconciles one Node's podCIDR (kube-controller-manager's job in the lab).
    pub async fn reconcile_node(
        &mut self,
        store: &dyn Store,
        name: &str,
    ) -> Result<Outcome, StoreError> {
        let Some(alloc) = &mut self.node_cidrs else {
            return Ok(Outcome::Done);
        };
        let Some(node) = store.get_as::<Node>(None, name).await? else {
            if let Some(c) = alloc.release(name) {
                info!(node = name, cidr = %c, "node deleted: podCIDR released");
            }
            return Ok(Outcome::Done);
        };
        if let Some(have) = node_pod_cidr(&node) {
            if alloc.cluster_cidr().contains(&have) && alloc.get(name) != Some(have) {
                if let Err(e) = alloc.restore(name, have) {
                    return Ok(Outcome::Degraded(e.to_string()));
                }
            }
            return Ok(Outcome::Done);
        }
        let cidr = match alloc.allocate(name) {
            Ok(c) => c,
            Err(e) => return Ok(Outcome::Degraded(e.to_string())),
        };
        let mut next = node.clone();
        let spec = next.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = Some(cidr.to_string());
        spec.pod_cidrs = Some(vec![cidr.to_string()]);
        store.update_as(&next).await?;
        info!(node = name, cidr = %cidr, "node podCIDR assigned");
        Ok(Outcome::Done)
    }

    /// Names of nodes the allocators hold blocks for (to notice deletions after a relist).
    pub fn known_nodes(&self) -> Vec<String> {
        match &self.alloc {
            Allocator::ClusterPool(p) => p.nodes().map(str::to_owned).collect(),
            Allocator::MultiPool(mp) => {
                let mut v: Vec<String> = mp
                    .assignments()
                    .pools
                    .values()
                    .flat_map(|a| a.nodes.keys().cloned())
                    .collect();
                v.sort();
                v.dedup();
                v
            }
            Allocator::None => Vec::new(),
        }
    }

    /// Names of Nodes holding a podCIDR.
    pub fn known_k8s_nodes(&self) -> Vec<String> {
        self.node_cidrs
            .as_ref()
            .map(|a| a.assignments().nodes.into_keys().collect())
            .unwrap_or_default()
    }
}

/// The node's podCIDR (`spec.podCIDRs[0]`, else `spec.podCIDR`), IPv4 only.
pub fn node_pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|s| s.parse::<Ipv4Net>().ok())
}

/// Creates the FibrilPodIPPool objects of `ipam.operator.autoCreateCiliumPodIPPools`
/// that do not exist yet (existing ones are left as they are, like Cilium).
pub async fn ensure_auto_pools(store: &dyn Store, config: &Config) -> Result<(), StoreError> {
    for spec in config.auto_create_pool_specs() {
        if store
            .get_as::<FibrilPodIPPool>(None, &spec.name)
            .await?
            .is_some()
        {
            continue;
        }
        let pool = FibrilPodIPPool::new(&spec.name, spec.cidrs.clone(), spec.mask_size);
        match store.create_as(&pool).await {
            Ok(_) => {
                info!(pool = %spec.name, cidrs = ?spec.cidrs, mask = spec.mask_size, "auto-created pod IP pool")
            }
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the auto-created pools whose settings changed between `previous` and
/// `config` into their FibrilPodIPPool objects (a grown CIDR list applies live; at
/// start-up existing objects are left alone, see [`ensure_auto_pools`]).
async fn update_changed_auto_pools(
    store: &dyn Store,
    previous: &Config,
    config: &Config,
) -> Result<(), StoreError> {
    for spec in config.auto_create_pool_specs() {
        let before = previous
            .auto_create_pool_specs()
            .into_iter()
            .find(|p| p.name == spec.name);
        if before.as_ref() == Some(&spec) {
            continue;
        }
        loop {
            let Some(mut obj) = store.get_as::<FibrilPodIPPool>(None, &spec.name).await? else {
                break;
            };
            let fresh = FibrilPodIPPool::new(&spec.name, spec.cidrs.clone(), spec.mask_size);
            let s = obj.spec.get_or_insert_with(Default::default);
            let want = fresh.spec.and_then(|f| f.ipv4);
            if s.ipv4 == want {
                break;
            }
            s.ipv4 = want;
            match store.update_as(&obj).await {
                Ok(_) => {
                    info!(pool = %spec.name, cidrs = ?spec.cidrs, mask = spec.mask_size, "auto-created pod IP pool updated from config");
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn restore_multi_pool_node(
    mp: &mut MultiPool,
    name: &str,
    allocated: &BTreeMap<String, Vec<Ipv4Net>>,
) {
    for (pool, blocks) in allocated {
        let mut a = MultiPoolAssignments::default();
        a.pools
            .entry(pool.clone())
            .or_default()
            .nodes
            .insert(name.to_owned(), blocks.clone());
        match mp.restore(&a) {
            Ok(()) => debug!(node = name, pool = %pool, ?blocks, "restored multi-pool blocks"),
            Err(e) => {
                warn!(node = name, pool = %pool, error = %e, "cannot restore multi-pool blocks")
            }
        }
    }
}

/// Cluster-pool: the node keeps its blocks; a node without one gets one; a node asking
/// (through `requested[cluster-pool]`) for more addresses than its blocks hold gets more
/// while free blocks remain. Nodes whose podCIDRs all lie outside the pool (set in
/// another IPAM mode) are left alone until their FibrilNode is re-created.
fn reconcile_cluster_pool(pool: &mut ClusterPool, node: &mut FibrilNode) -> Outcome {
    let name = node_name(node).to_owned();
    let current = v4(node.pod_cidrs());
    let in_pool: Vec<Ipv4Net> = current
        .iter()
        .copied()
        .filter(|b| pool.cidrs().iter().any(|c| c.contains(b)))
        .collect();
    if !current.is_empty() && in_pool.is_empty() {
        return Outcome::Done;
    }
    let missing: Vec<Ipv4Net> = in_pool
        .iter()
        .copied()
        .filter(|b| !pool.node_blocks(&name).contains(b))
        .collect();
    if !missing.is_empty() {
        if let Err(e) = pool.restore_node(&name, &missing) {
            return Outcome::Degraded(e.to_string());
        }
    }
    let mut problem = None;
    if let Err(e) = pool.allocate_node(&name) {
        problem = Some(e.to_string());
    } else if let Some(needed) = requested_ipv4(node, CLUSTER_POOL_NAME) {
        if let Err(e) = pool.ensure_capacity(&name, needed) {
            problem = Some(format!("node needs {needed} addresses: {e}"));
        }
    }
    let blocks = pool.node_blocks(&name).to_vec();
    let pool_cidrs = pool.cidrs();
    let spec = ipam_spec_mut(node);
    // Pool blocks first (assignment order), then whatever else the node lists: IPv6, and
    // IPv4 CIDRs from another IPAM mode that may still hold pods.
    let mut want: Vec<IpNet> = blocks.iter().map(|b| IpNet::V4(*b)).collect();
    want.extend(spec.pod_cidrs.iter().copied().filter(|c| match c {
        IpNet::V4(c) => !pool_cidrs.iter().any(|p| p.contains(c)),
        IpNet::V6(_) => true,
    }));
    if spec.pod_cidrs != want {
        info!(node = %name, cidrs = ?blocks, "cluster-pool podCIDRs");
        spec.pod_cidrs = want;
    }
    match problem {
        Some(p) => Outcome::Degraded(p),
        None => Outcome::Done,
    }
}

/// Multi-pool: blocks the node dropped from `allocated` are released, blocks it lists
/// that the operator does not know are restored, then every `requested` pool is
/// covered. `allocated` is rewritten from the allocator, pools sorted by name.
fn reconcile_multi_pool(mp: &mut MultiPool, node: &mut FibrilNode) -> Outcome {
    let name = node_name(node).to_owned();
    let listed = allocated_pools(node);
    let held = mp.node_allocations(&name);
    for (pool, blocks) in &held {
        let keep = listed.get(pool).map_or(&[][..], Vec::as_slice);
        for b in blocks {
            if !keep.contains(b) {
                match mp.release_block(&name, pool, *b) {
                    Ok(()) => info!(node = %name, pool = %pool, block = %b, "block given back"),
                    Err(e) => warn!(node = %name, pool = %pool, error = %e, "cannot release block"),
                }
            }
        }
    }
    let mut problems = Vec::new();
    let held = mp.node_allocations(&name);
    let unknown: BTreeMap<String, Vec<Ipv4Net>> = listed
        .iter()
        .map(|(p, bs)| {
            let have = held.get(p).map_or(&[][..], Vec::as_slice);
            (
                p.clone(),
                bs.iter()
                    .copied()
                    .filter(|b| !have.contains(b))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, bs)| !bs.is_empty())
        .collect();
    for (pool, blocks) in &unknown {
        let mut a = MultiPoolAssignments::default();
        a.pools
            .entry(pool.clone())
            .or_default()
            .nodes
            .insert(name.clone(), blocks.clone());
        if let Err(e) = mp.restore(&a) {
            problems.push(e.to_string());
        }
    }
    let requests: Vec<(String, u64)> = node
        .spec
        .as_ref()
        .and_then(|s| s.ipam.as_ref())
        .and_then(|i| i.pools.as_ref())
        .map(|p| {
            p.requested
                .iter()
                .map(|r| (r.pool.clone(), r.needed.ipv4_addrs.map_or(0, u64::from)))
                .collect()
        })
        .unwrap_or_default();
    for (pool, needed) in &requests {
        if let Err(e) = mp.allocate(&name, pool, *needed) {
            problems.push(match e {
                IpamError::UnknownPool { .. } => format!("{e} (requested {needed} addresses)"),
                e => e.to_string(),
            });
        }
    }
    let mut allocated: BTreeMap<String, Vec<Ipv4Net>> = mp.node_allocations(&name);
    // Blocks the node lists but the operator could not take (conflict with another
    // node) stay listed: the node may have addresses in them.
    for (pool, blocks) in &unknown {
        let entry = allocated.entry(pool.clone()).or_default();
        for b in blocks {
            if !entry.contains(b) {
                entry.push(*b);
            }
        }
    }
    let spec = ipam_spec_mut(node);
    let pools = spec.pools.get_or_insert_with(IpamPoolSpec::default);
    let want: Vec<IpamPoolAllocation> = allocated
        .into_iter()
        .map(|(pool, cidrs)| IpamPoolAllocation {
            pool,
            cidrs: cidrs.into_iter().map(IpNet::V4).collect(),
        })
        .collect();
    if pools.allocated != want {
        info!(node = %name, allocated = ?want.iter().map(|a| (&a.pool, &a.cidrs)).collect::<Vec<_>>(), "multi-pool allocation");
        pools.allocated = want;
    }
    if problems.is_empty() {
        Outcome::Done
    } else {
        Outcome::Degraded(problems.join("; "))
    }
}
