//! Multi-pool IPAM: named pools (FibrilPodIPPool / CiliumPodIPPool plus the auto-created
//! `default`), each carved into per-node blocks on demand.
//!
//! Split as in Cilium: the node side ([`MultiPoolNode`]) allocates pod addresses from the
//! blocks it holds and computes a [`NodePoolRequest`] (addresses needed per pool, blocks it
//! gives back); the operator side ([`MultiPool`]) answers requests with blocks. Time is
//! passed in (`now: Instant`) so the release grace period is testable without sleeping.
//!
//! Pre-allocation follows Cilium's rule: a pool with pre-allocation `p > 0` needs
//! `round_up(in_use + pending, p) + p` addresses, i.e. always at least `p` spare; a pool
//! with `p = 0` needs exactly `in_use + pending`. The node asks for whole blocks covering
//! that. By default only `default` pre-allocates (8), as Cilium's
//! `ipam-multi-pool-pre-allocation=default=8`; with it the seed's nodes hold two /28s of
//! `default` and one /29 per used custom pool, as in seed 001.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::cluster_pool::{usable_per_block, BlockAssignments, ClusterPool};
use crate::error::{join_cidrs, IpamError};
use crate::node::{Allocation, CidrStatus, NodeAllocator, NodeAllocatorState, RestoreOutcome};

/// Name of the auto-created pool.
pub const DEFAULT_POOL: &str = "default";
/// Pod/namespace annotation selecting a pool.
pub const POOL_ANNOTATION: &str = "ipam.fibril.io/ip-pool";
/// Cilium's spelling of [`POOL_ANNOTATION`], accepted as an alias.
pub const POOL_ANNOTATION_ALIAS: &str = "ipam.cilium.io/ip-pool";
/// Default pre-allocation of the `default` pool.
pub const DEFAULT_PRE_ALLOCATE: u32 = 8;
/// Default time an unused surplus block stays on a node before it is given back.
pub const DEFAULT_RELEASE_GRACE: Duration = Duration::from_secs(60);

/// A named pool: CIDRs and the block size handed to nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Pool name (a Kubernetes object name).
    pub name: String,
    /// CIDRs blocks are carved from.
    pub cidrs: Vec<Ipv4Net>,
    /// Block size per node allocation.
    #[serde(rename = "maskSize")]
    pub mask_size: u8,
}

/// Checks a pool name is a DNS-1123 subdomain (what Kubernetes accepts as object name).
pub fn validate_pool_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("only lowercase letters, digits, '-' and '.' are allowed");
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// The pool a pod's addresses come from: the pod's annotation
/// (`ipam.fibril.io/ip-pool`, then the alias `ipam.cilium.io/ip-pool`), else the
/// namespace's, else `default`. Empty values count as absent. Whether the pool exists is
/// checked by the caller (see [`MultiPool::pool`], [`IpamError::UnknownPool`]).
pub fn select_pool<'a>(
    pod_annotations: Option<&'a BTreeMap<String, String>>,
    namespace_annotations: Option<&'a BTreeMap<String, String>>,
) -> &'a str {
    let pick = |a: Option<&'a BTreeMap<String, String>>| {
        let a = a?;
        [POOL_ANNOTATION, POOL_ANNOTATION_ALIAS]
            .iter()
            .filter_map(|k| a.get(*k))
            .map(|v| v.trim())
            .find(|v| !v.is_empty())
    };
    pick(pod_annotations)
        .or_else(|| pick(namespace_annotations))
        .unwrap_or(DEFAULT_POOL)
}

/// Pre-allocation per pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreAllocation {
    /// Pool name -> spare addresses to keep.
    pub per_pool: BTreeMap<String, u32>,
    /// For pools not listed.
    pub fallback: u32,
}

impl Default for PreAllocation {
    /// `default` keeps 8 spare addresses, other pools none (Cilium's default).
    fn default() -> Self {
        Self {
            per_pool: BTreeMap::from([(DEFAULT_POOL.to_owned(), DEFAULT_PRE_ALLOCATE)]),
            fallback: 0,
        }
    }
}

impl PreAllocation {
    /// Every pool keeps `n` spare addresses.
    pub fn uniform(n: u32) -> Self {
        Self {
            per_pool: BTreeMap::new(),
            fallback: n,
        }
    }

    /// The pre-allocation of `pool`.
    pub fn for_pool(&self, pool: &str) -> u32 {
        self.per_pool.get(pool).copied().unwrap_or(self.fallback)
    }
}

/// Addresses a node needs in a pool: `round_up(in_use + pending, pre) + pre` when
/// `pre > 0`, else `in_use + pending`.
pub fn needed_ips(in_use: u64, pending: u64, pre_allocate: u32) -> u64 {
    let demand = in_use + pending;
    let p = u64::from(pre_allocate);
    if p == 0 {
        demand
    } else {
        demand.div_ceil(p) * p + p
    }
}

/// Whole `/mask_size` blocks covering `needed` addresses.
pub fn blocks_needed(needed: u64, mask_size: u8) -> u64 {
    needed.div_ceil(usable_per_block(mask_size))
}

/// What a node asks the operator for (Cilium: `spec.ipam.pools.requested` and the
/// blocks dropped from `spec.ipam.pools.allocated`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePoolRequest {
    /// Pool -> addresses needed.
    pub requested: BTreeMap<String, u64>,
    /// Pool -> blocks the node gives back.
    #[serde(default)]
    pub released: BTreeMap<String, Vec<Ipv4Net>>,
}

/// The operator's answer for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReconcile {
    /// Pool -> the node's blocks after the call (`spec.ipam.pools.allocated`).
    pub allocated: BTreeMap<String, Vec<Ipv4Net>>,
    /// Problems with single pools (unknown pool, pool exhausted); other pools were served.
    pub errors: Vec<IpamError>,
}

/// Persisted operator state: pool -> node -> blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiPoolAssignments {
    /// Pool name -> its block assignments.
    pub pools: BTreeMap<String, BlockAssignments>,
}

/// Operator side of multi-pool.
#[derive(Debug, Clone, Default)]
pub struct MultiPool {
    pools: BTreeMap<String, ClusterPool>,
}

impl MultiPool {
    /// No pools.
    pub fn new() -> Self {
        Self::default()
    }

    /// With the auto-created `default` pool (see
    /// [`crate::config::default_pool_from_values`]).
    pub fn with_default(cidrs: &[Ipv4Net], mask_size: u8) -> Result<Self, IpamError> {
        let mut m = Self::new();
        m.upsert_pool(&PoolSpec {
            name: DEFAULT_POOL.to_owned(),
            cidrs: cidrs.to_vec(),
            mask_size,
        })?;
        Ok(m)
    }

    /// Adds a pool, or updates an existing one (CIDR list growth; mask size only while no
    /// block is assigned). Rejects a CIDR overlapping another pool, naming both.
    pub fn upsert_pool(&mut self, spec: &PoolSpec) -> Result<(), IpamError> {
        validate_pool_name(&spec.name).map_err(|reason| IpamError::InvalidPoolName {
            pool: spec.name.clone(),
            reason,
        })?;
        if spec.cidrs.is_empty() {
            return Err(IpamError::NoCidrs {
                what: format!("pool {:?}", spec.name),
            });
        }
        for (name, other) in &self.pools {
            if *name == spec.name {
                continue;
            }
            for c in &spec.cidrs {
                for o in other.cidrs() {
                    if c.contains(&o) || o.contains(c) {
                        return Err(IpamError::PoolOverlap {
                            pool: spec.name.clone(),
                            cidr: *c,
                            other_pool: name.clone(),
                            other_cidr: o,
                        });
                    }
                }
            }
        }
        match self.pools.get_mut(&spec.name) {
            Some(p) => p.reconfigure(&spec.cidrs, spec.mask_size),
            None => {
                let p = ClusterPool::named(&spec.name, &spec.cidrs, spec.mask_size)?;
                self.pools.insert(spec.name.clone(), p);
                Ok(())
            }
        }
    }

    /// Adds a new pool; errors if the name exists.
    pub fn add_pool(&mut self, spec: &PoolSpec) -> Result<(), IpamError> {
        if self.pools.contains_key(&spec.name) {
            return Err(IpamError::PoolExists {
                pool: spec.name.clone(),
            });
        }
        self.upsert_pool(spec)
    }

    /// Removes a pool with no assigned block.
    pub fn remove_pool(&mut self, name: &str) -> Result<(), IpamError> {
        let p = self.pool(name)?;
        let blocks: usize = p.nodes().map(|n| p.node_blocks(n).len()).sum();
        if blocks > 0 {
            return Err(IpamError::PoolInUse {
                pool: name.to_owned(),
                blocks,
            });
        }
        self.pools.remove(name);
        Ok(())
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Result<&ClusterPool, IpamError> {
        self.pools.get(name).ok_or_else(|| IpamError::UnknownPool {
            pool: name.to_owned(),
        })
    }

    fn pool_mut(&mut self, name: &str) -> Result<&mut ClusterPool, IpamError> {
        self.pools
            .get_mut(name)
            .ok_or_else(|| IpamError::UnknownPool {
                pool: name.to_owned(),
            })
    }

    /// The pools' specs, by name.
    pub fn specs(&self) -> Vec<PoolSpec> {
        self.pools
            .iter()
            .map(|(n, p)| PoolSpec {
                name: n.clone(),
                cidrs: p.cidrs(),
                mask_size: p.mask_size(),
            })
            .collect()
    }

    /// Makes sure `node` holds blocks of `pool` covering `needed` addresses.
    pub fn allocate(
        &mut self,
        node: &str,
        pool: &str,
        needed: u64,
    ) -> Result<Vec<Ipv4Net>, IpamError> {
        Ok(self.pool_mut(pool)?.ensure_capacity(node, needed)?.to_vec())
    }

    /// Gives back one block of `node`.
    pub fn release_block(
        &mut self,
        node: &str,
        pool: &str,
        block: Ipv4Net,
    ) -> Result<(), IpamError> {
        self.pool_mut(pool)?.release_block(node, block)
    }

    /// Applies a node's request: takes back released blocks, then adds blocks until each
    /// requested pool covers the addresses asked for. A failing pool does not stop others.
    pub fn reconcile_node(&mut self, node: &str, req: &NodePoolRequest) -> NodeReconcile {
        let mut out = NodeReconcile::default();
        for (pool, blocks) in &req.released {
            for b in blocks {
                match self.release_block(node, pool, *b) {
                    // Released already (the node repeats its list until it sees the change).
                    Ok(()) | Err(IpamError::BlockNotAssigned { .. }) => {}
                    Err(e) => out.errors.push(e),
                }
            }
        }
        for (pool, needed) in &req.requested {
            if let Err(e) = self.allocate(node, pool, *needed) {
                out.errors.push(e);
            }
        }
        out.allocated = self.node_allocations(node);
        out
    }

    /// Pool -> blocks of `node` (pools where it holds none are left out).
    pub fn node_allocations(&self, node: &str) -> BTreeMap<String, Vec<Ipv4Net>> {
        self.pools
            .iter()
            .filter(|(_, p)| !p.node_blocks(node).is_empty())
            .map(|(n, p)| (n.clone(), p.node_blocks(node).to_vec()))
            .collect()
    }

    /// Releases every block of a deleted node.
    pub fn release_node(&mut self, node: &str) -> BTreeMap<String, Vec<Ipv4Net>> {
        self.pools
            .iter_mut()
            .map(|(n, p)| (n.clone(), p.release_node(node)))
            .filter(|(_, b)| !b.is_empty())
            .collect()
    }

    /// The assignments to persist.
    pub fn assignments(&self) -> MultiPoolAssignments {
        MultiPoolAssignments {
            pools: self
                .pools
                .iter()
                .map(|(n, p)| (n.clone(), p.assignments()))
                .collect(),
        }
    }

    /// Restores saved assignments; all-or-nothing. Pools must exist already.
    pub fn restore(&mut self, saved: &MultiPoolAssignments) -> Result<(), IpamError> {
        let mut next = self.clone();
        for (pool, a) in &saved.pools {
            next.pool_mut(pool)?.restore(a)?;
        }
        *self = next;
        Ok(())
    }
}

/// Node-side persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiPoolNodeState {
    /// Pool -> allocator state.
    pub pools: BTreeMap<String, NodeAllocatorState>,
    /// Pool -> blocks given back but not yet confirmed by the operator.
    #[serde(default)]
    pub releasing: BTreeMap<String, Vec<Ipv4Net>>,
}

#[derive(Debug, Clone, Default)]
struct NodePool {
    alloc: NodeAllocator,
    pending: u64,
    releasing: BTreeSet<Ipv4Net>,
    surplus_since: BTreeMap<Ipv4Net, Instant>,
}

/// Node side of multi-pool: per-pool address allocators over the node's blocks.
#[derive(Debug, Clone)]
pub struct MultiPoolNode {
    pre_allocate: PreAllocation,
    release_grace: Duration,
    pools: BTreeMap<String, NodePool>,
    known_pools: Option<BTreeSet<String>>,
}

impl Default for MultiPoolNode {
    fn default() -> Self {
        Self::new(PreAllocation::default(), DEFAULT_RELEASE_GRACE)
    }
}

impl MultiPoolNode {
    /// A node that always requests the `default` pool.
    pub fn new(pre_allocate: PreAllocation, release_grace: Duration) -> Self {
        let mut pools = BTreeMap::new();
        pools.insert(DEFAULT_POOL.to_owned(), NodePool::default());
        Self {
            pre_allocate,
            release_grace,
            pools,
            known_pools: None,
        }
    }

    /// Tells the node which pools exist (from the store). Once set, allocating from any
    /// other pool fails with [`IpamError::UnknownPool`] instead of waiting for blocks.
    pub fn set_known_pools<S: AsRef<str>>(&mut self, pools: impl IntoIterator<Item = S>) {
        self.known_pools = Some(pools.into_iter().map(|p| p.as_ref().to_owned()).collect());
    }

    fn check_known(&self, pool: &str) -> Result<(), IpamError> {
        match &self.known_pools {
            Some(k) if !k.contains(pool) => Err(IpamError::UnknownPool {
                pool: pool.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Rebuilds from persisted state.
    pub fn from_state(
        state: &MultiPoolNodeState,
        pre_allocate: PreAllocation,
        release_grace: Duration,
    ) -> Result<Self, IpamError> {
        let mut n = Self::new(pre_allocate, release_grace);
        for (name, st) in &state.pools {
            let np = n.pools.entry(name.clone()).or_default();
            np.alloc = NodeAllocator::from_state(st)?;
        }
        for (name, blocks) in &state.releasing {
            n.pools
                .entry(name.clone())
                .or_default()
                .releasing
                .extend(blocks.iter().copied());
        }
        Ok(n)
    }

    /// The state to persist.
    pub fn state(&self) -> MultiPoolNodeState {
        MultiPoolNodeState {
            pools: self
                .pools
                .iter()
                .map(|(n, p)| (n.clone(), p.alloc.state()))
                .collect(),
            releasing: self
                .pools
                .iter()
                .filter(|(_, p)| !p.releasing.is_empty())
                .map(|(n, p)| (n.clone(), p.releasing.iter().copied().collect()))
                .collect(),
        }
    }

    /// Registers interest in a pool (a pod asked for it) so the next request includes it.
    pub fn ensure_pool(&mut self, pool: &str) {
        self.pools.entry(pool.to_owned()).or_default();
    }

    /// Sets how many allocations are waiting for addresses in `pool` (pods whose CNI ADD
    /// failed with `range is full`).
    pub fn set_pending(&mut self, pool: &str, pending: u64) {
        self.pools.entry(pool.to_owned()).or_default().pending = pending;
    }

    /// Applies the operator's `allocated` map for this node: new blocks become usable,
    /// blocks the operator took back are dropped (only if empty: an error names a block
    /// that still holds addresses, which stays). Pools absent from the map hold nothing.
    pub fn sync(&mut self, allocated: &BTreeMap<String, Vec<Ipv4Net>>) -> Result<(), IpamError> {
        let mut first_err = None;
        for name in allocated.keys() {
            self.ensure_pool(name);
        }
        for (name, np) in &mut self.pools {
            let want: &[Ipv4Net] = allocated.get(name).map_or(&[], Vec::as_slice);
            np.releasing.retain(|b| want.contains(b));
            for b in want {
                if np.releasing.contains(b) {
                    continue;
                }
                if let Err(e) = np.alloc.add_cidr(*b) {
                    first_err.get_or_insert(e);
                }
            }
            for c in np.alloc.cidrs() {
                if !want.contains(&c) {
                    np.surplus_since.remove(&c);
                    if let Err(e) = np.alloc.remove_cidr(c) {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn pool_mut(&mut self, pool: &str) -> Result<&mut NodePool, IpamError> {
        self.pools
            .get_mut(pool)
            .ok_or_else(|| IpamError::UnknownPool {
                pool: pool.to_owned(),
            })
    }

    /// Allocates an address from `pool`. With no free address the error says
    /// `range is full` and names the pool; call [`MultiPoolNode::set_pending`] so the next
    /// request asks for more.
    pub fn allocate(&mut self, pool: &str, owner: &str) -> Result<Ipv4Addr, IpamError> {
        self.check_known(pool)?;
        self.ensure_pool(pool);
        let np = self.pool_mut(pool)?;
        np.alloc.allocate(owner).map_err(|e| match e {
            IpamError::RangeFull { cidrs } if cidrs.is_empty() => IpamError::RangeFull {
                cidrs: format!("pool {pool:?} (no block on this node yet)"),
            },
            IpamError::RangeFull { cidrs } => IpamError::RangeFull {
                cidrs: format!("pool {pool:?} ({cidrs})"),
            },
            e => e,
        })
    }

    /// Allocates a specific address from `pool`.
    pub fn allocate_ip(&mut self, pool: &str, ip: Ipv4Addr, owner: &str) -> Result<(), IpamError> {
        self.check_known(pool)?;
        self.pool_mut(pool)?.alloc.allocate_ip(ip, owner)
    }

    /// Releases an address, whichever pool it is in.
    pub fn release(&mut self, ip: Ipv4Addr) -> Result<Allocation, IpamError> {
        for np in self.pools.values_mut() {
            if np.alloc.contains(ip) {
                return np.alloc.release(ip);
            }
        }
        Err(IpamError::NotAllocated { ip })
    }

    /// Restores addresses of `pool` after an agent restart.
    pub fn restore<'a>(
        &mut self,
        pool: &str,
        items: impl IntoIterator<Item = (Ipv4Addr, &'a str)>,
    ) -> RestoreOutcome {
        self.ensure_pool(pool);
        match self.pools.get_mut(pool) {
            Some(np) => np.alloc.restore(items),
            None => RestoreOutcome::default(),
        }
    }

    /// The node's request at time `now`: addresses needed per pool, and the blocks given
    /// back. An empty block is given back once it has been surplus (not needed to cover
    /// the pool's need) for the grace period; from then on nothing is allocated from it.
    pub fn request(&mut self, now: Instant) -> NodePoolRequest {
        let mut req = NodePoolRequest::default();
        for (name, np) in &mut self.pools {
            let pre = self.pre_allocate.for_pool(name);
            let needed = needed_ips(u64::from(np.alloc.used()), np.pending, pre);
            req.requested.insert(name.clone(), needed);
            let mut capacity = u64::from(np.alloc.total());
            let mut surplus = BTreeSet::new();
            // Newest blocks go first, so long-lived blocks (and their routes) stay.
            for st in np.alloc.status().into_iter().rev() {
                let size = u64::from(st.total);
                if st.used == 0 && capacity >= needed + size {
                    capacity -= size;
                    surplus.insert(st.cidr);
                }
            }
            np.surplus_since.retain(|c, _| surplus.contains(c));
            for c in surplus {
                let since = *np.surplus_since.entry(c).or_insert(now);
                if now.saturating_duration_since(since) >= self.release_grace
                    && np.alloc.remove_cidr(c).is_ok()
                {
                    np.surplus_since.remove(&c);
                    np.releasing.insert(c);
                }
            }
            if !np.releasing.is_empty() {
                req.released
                    .insert(name.clone(), np.releasing.iter().copied().collect());
            }
        }
        req
    }

    /// Pool -> per-block usage.
    pub fn status(&self) -> BTreeMap<String, Vec<CidrStatus>> {
        self.pools
            .iter()
            .map(|(n, p)| (n.clone(), p.alloc.status()))
            .collect()
    }

    /// The `status` line over all pools: `IPv4: 5/40 allocated from a, b, c`.
    pub fn status_line(&self) -> String {
        let (mut used, mut total, mut cidrs) = (0u32, 0u32, Vec::new());
        for p in self.pools.values() {
            used += p.alloc.used();
            total += p.alloc.total();
            cidrs.extend(p.alloc.cidrs());
        }
        format!(
            "IPv4: {used}/{total} allocated from {}",
            join_cidrs(cidrs.iter())
        )
    }

    /// Every allocation with its pool, in address order.
    pub fn allocations(&self) -> Vec<(String, Allocation)> {
        let mut out: Vec<(String, Allocation)> = self
            .pools
            .iter()
            .flat_map(|(n, p)| {
                p.alloc
                    .allocations()
                    .into_iter()
                    .map(move |a| (n.clone(), a))
            })
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// The allocator of one pool.
    pub fn pool(&self, pool: &str) -> Option<&NodeAllocator> {
        self.pools.get(pool).map(|p| &p.alloc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn spec(name: &str, cidr: &str, mask: u8) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            cidrs: vec![net(cidr)],
            mask_size: mask,
        }
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn needed_rule_matches_cilium() {
        assert_eq!(needed_ips(0, 0, 8), 8);
        assert_eq!(needed_ips(3, 0, 8), 16);
        assert_eq!(needed_ips(8, 0, 8), 16);
        assert_eq!(needed_ips(9, 2, 8), 24);
        assert_eq!(needed_ips(10, 0, 0), 10);
        assert_eq!(blocks_needed(16, 28), 2);
        assert_eq!(blocks_needed(10, 29), 2);
        assert_eq!(blocks_needed(0, 29), 0);
    }

    #[test]
    fn pool_selection_precedence() {
        let pod = ann(&[(POOL_ANNOTATION_ALIAS, "vac")]);
        let ns = ann(&[(POOL_ANNOTATION, "no-engine")]);
        assert_eq!(select_pool(Some(&pod), Some(&ns)), "vac");
        assert_eq!(select_pool(None, Some(&ns)), "no-engine");
        assert_eq!(select_pool(Some(&ann(&[])), None), DEFAULT_POOL);
        let both = ann(&[(POOL_ANNOTATION, "a"), (POOL_ANNOTATION_ALIAS, "b")]);
        assert_eq!(select_pool(Some(&both), None), "a");
        let empty = ann(&[(POOL_ANNOTATION, " ")]);
        assert_eq!(select_pool(Some(&empty), Some(&ns)), "no-engine");
    }

    #[test]
    fn pools_overlap_unknown_and_names() {
        let mut m = MultiPool::with_default(&[net("172.20.0.0/16")], 28).unwrap();
        m.add_pool(&spec("vac", "10.100.0.0/16", 29)).unwrap();
        let err = m.add_pool(&spec("dup", "10.100.8.0/24", 29)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pool \"dup\" CIDR 10.100.8.0/24 overlaps pool \"vac\" CIDR 10.100.0.0/16"
        );
        assert!(matches!(
            m.add_pool(&spec("vac", "10.1.0.0/16", 29)),
            Err(IpamError::PoolExists { .. })
        ));
        let err = m.allocate("w1", "nope", 1).unwrap_err();
        assert_eq!(err.to_string(), "unknown IP pool \"nope\"");
        let err = m.add_pool(&spec("Bad", "10.9.0.0/16", 29)).unwrap_err();
        assert!(err.to_string().contains("Bad"), "{err}");
        let err = m.add_pool(&spec("short", "10.9.0.0/16", 8)).unwrap_err();
        assert!(err.to_string().contains("10.9.0.0/16"), "{err}");
        m.allocate("w1", "vac", 1).unwrap();
        assert!(matches!(
            m.remove_pool("vac"),
            Err(IpamError::PoolInUse { .. })
        ));
        m.release_node("w1");
        m.remove_pool("vac").unwrap();
        assert_eq!(m.specs().len(), 1);
    }

    /// Runs node-side request -> operator reconcile -> node sync once.
    fn round(node: &str, n: &mut MultiPoolNode, m: &mut MultiPool, now: Instant) -> NodeReconcile {
        let req = n.request(now);
        let r = m.reconcile_node(node, &req);
        n.sync(&r.allocated).unwrap();
        r
    }

    #[test]
    fn seed_multi_pool_shape() {
        let mut m = MultiPool::with_default(&[net("172.20.0.0/16")], 28).unwrap();
        m.add_pool(&spec("vac", "10.100.0.0/16", 29)).unwrap();
        m.add_pool(&spec("no-engine", "10.200.0.0/16", 29)).unwrap();
        let t0 = Instant::now();
        let mut w1 = MultiPoolNode::default();
        round("w1", &mut w1, &mut m, t0);
        w1.allocate(DEFAULT_POOL, "router").unwrap();
        w1.allocate(DEFAULT_POOL, "health").unwrap();
        w1.allocate(DEFAULT_POOL, "kube-system/coredns").unwrap();
        round("w1", &mut w1, &mut m, t0);
        // 3 in use + pre-allocate 8 -> 16 addresses -> two /28s, as in seed 001.
        assert_eq!(m.node_allocations("w1")[DEFAULT_POOL].len(), 2);
        assert_eq!(
            m.node_allocations("w1")[DEFAULT_POOL],
            vec![net("172.20.0.0/28"), net("172.20.0.16/28")]
        );
        // A pod annotated with vac: nothing yet -> range is full naming the pool.
        let err = w1.allocate("vac", "default/nginx-vac-1").unwrap_err();
        assert!(err.to_string().contains("range is full"), "{err}");
        assert!(err.to_string().contains("vac"), "{err}");
        w1.set_pending("vac", 1);
        round("w1", &mut w1, &mut m, t0);
        w1.set_pending("vac", 0);
        w1.allocate("vac", "default/nginx-vac-1").unwrap();
        assert_eq!(m.node_allocations("w1")["vac"], vec![net("10.100.0.0/29")]);
        // Scale to 10 vac pods on this node: blocks added on demand.
        let mut pods = Vec::new();
        for i in 2..=10 {
            let owner = format!("default/nginx-vac-{i}");
            match w1.allocate("vac", &owner) {
                Ok(ip) => pods.push(ip),
                Err(_) => {
                    w1.set_pending("vac", 1);
                    round("w1", &mut w1, &mut m, t0);
                    w1.set_pending("vac", 0);
                    pods.push(w1.allocate("vac", &owner).unwrap());
                }
            }
        }
        assert_eq!(m.node_allocations("w1")["vac"].len(), 2);
        assert_eq!(w1.pool("vac").unwrap().used(), 10);
        // Scale down: blocks come back only after the grace period.
        for ip in pods {
            w1.release(ip).unwrap();
        }
        round("w1", &mut w1, &mut m, t0 + Duration::from_secs(1));
        assert_eq!(m.node_allocations("w1")["vac"].len(), 2);
        round("w1", &mut w1, &mut m, t0 + Duration::from_secs(30));
        assert_eq!(m.node_allocations("w1")["vac"].len(), 2);
        round(
            "w1",
            &mut w1,
            &mut m,
            t0 + DEFAULT_RELEASE_GRACE + Duration::from_secs(1),
        );
        // Only the first vac pod stays -> one block.
        w1.set_known_pools(["default", "vac", "no-engine"]);
        let err = w1.allocate("typo", "default/x").unwrap_err();
        assert_eq!(err.to_string(), "unknown IP pool \"typo\"");
        assert_eq!(m.node_allocations("w1")["vac"], vec![net("10.100.0.0/29")]);
        assert_eq!(w1.pool("vac").unwrap().cidrs(), vec![net("10.100.0.0/29")]);
        // The operator hands the freed block to someone else.
        assert_eq!(
            m.allocate("w2", "vac", 1).unwrap(),
            vec![net("10.100.0.8/29")]
        );
        // Default pool keeps its pre-allocated blocks.
        assert_eq!(m.node_allocations("w1")[DEFAULT_POOL].len(), 2);
    }

    #[test]
    fn surplus_timer_resets_when_block_used_again() {
        let mut m = MultiPool::new();
        m.add_pool(&spec("p", "10.0.0.0/24", 29)).unwrap();
        let t0 = Instant::now();
        let mut n = MultiPoolNode::new(PreAllocation::uniform(0), Duration::from_secs(10));
        n.set_pending("p", 1);
        round("n", &mut n, &mut m, t0);
        n.set_pending("p", 0);
        let ip = n.allocate("p", "x").unwrap();
        n.release(ip).unwrap();
        round("n", &mut n, &mut m, t0);
        let ip = n.allocate("p", "y").unwrap();
        round("n", &mut n, &mut m, t0 + Duration::from_secs(11));
        assert_eq!(m.node_allocations("n")["p"].len(), 1);
        n.release(ip).unwrap();
        round("n", &mut n, &mut m, t0 + Duration::from_secs(12));
        assert_eq!(m.node_allocations("n")["p"].len(), 1);
        round("n", &mut n, &mut m, t0 + Duration::from_secs(23));
        assert!(!m.node_allocations("n").contains_key("p"));
        assert!(n.pool("p").unwrap().cidrs().is_empty());
    }

    #[test]
    fn state_roundtrips() {
        let mut m = MultiPool::with_default(&[net("172.20.0.0/16")], 28).unwrap();
        let mut n = MultiPoolNode::default();
        let t0 = Instant::now();
        round("w1", &mut n, &mut m, t0);
        n.allocate(DEFAULT_POOL, "router").unwrap();
        let json = serde_json::to_string(&n.state()).unwrap();
        let st: MultiPoolNodeState = serde_json::from_str(&json).unwrap();
        let n2 = MultiPoolNode::from_state(&st, PreAllocation::default(), DEFAULT_RELEASE_GRACE)
            .unwrap();
        assert_eq!(n2.allocations(), n.allocations());
        assert!(n2
            .status_line()
            .starts_with("IPv4: 1/14 allocated from 172.20.0.0/28"));
        let saved = m.assignments();
        let json = serde_json::to_string(&saved).unwrap();
        let saved: MultiPoolAssignments = serde_json::from_str(&json).unwrap();
        let mut m2 = MultiPool::with_default(&[net("172.20.0.0/16")], 28).unwrap();
        m2.restore(&saved).unwrap();
        assert_eq!(m2.node_allocations("w1"), m.node_allocations("w1"));
        assert_eq!(
            m2.allocate("w2", DEFAULT_POOL, 1).unwrap(),
            m.allocate("w2", DEFAULT_POOL, 1).unwrap()
        );
    }
}
