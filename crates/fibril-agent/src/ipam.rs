//! The node's address allocator in either shape: one [`NodeAllocator`] over
//! the node's pod CIDRs (`cluster-pool`, `kubernetes`) or a
//! [`MultiPoolNode`] (`multi-pool`: named pools, blocks on demand).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use fibril_ipam::{
    Allocation, IpamError, MultiPoolNode, NodeAllocator, NodeAllocatorState, NodePoolRequest,
    DEFAULT_POOL,
};
use ipnet::Ipv4Net;

/// Either allocator.
#[derive(Debug)]
pub enum NodeIpam {
    /// cluster-pool / kubernetes.
    Single(NodeAllocator),
    /// multi-pool.
    Multi(Box<MultiPoolNode>),
}

impl NodeIpam {
    /// Allocates for `owner` from `pool` (ignored by a single allocator).
    pub fn allocate(&mut self, pool: &str, owner: &str) -> Result<Ipv4Addr, IpamError> {
        match self {
            NodeIpam::Single(a) => a.allocate(owner),
            NodeIpam::Multi(m) => m.allocate(pool, owner),
        }
    }

    /// Releases an address.
    pub fn release(&mut self, ip: Ipv4Addr) -> Result<Allocation, IpamError> {
        match self {
            NodeIpam::Single(a) => a.release(ip),
            NodeIpam::Multi(m) => m.release(ip),
        }
    }

    /// Every allocation (address order).
    pub fn allocations(&self) -> Vec<Allocation> {
        match self {
            NodeIpam::Single(a) => a.allocations(),
            NodeIpam::Multi(m) => m.allocations().into_iter().map(|(_, a)| a).collect(),
        }
    }

    /// Allocations with their pool (`default` for a single allocator).
    pub fn allocations_with_pool(&self) -> Vec<(String, Allocation)> {
        match self {
            NodeIpam::Single(a) => a
                .allocations()
                .into_iter()
                .map(|a| (DEFAULT_POOL.to_string(), a))
                .collect(),
            NodeIpam::Multi(m) => m.allocations(),
        }
    }

    /// Addresses held by `owner`.
    pub fn addresses_of(&self, owner: &str) -> Vec<Ipv4Addr> {
        self.allocations()
            .into_iter()
            .filter(|a| a.owner == owner)
            .map(|a| a.ip)
            .collect()
    }

    /// Whether `ip` is allocated.
    pub fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.allocations().iter().any(|a| a.ip == ip)
    }

    /// Every CIDR the node holds.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
        match self {
            NodeIpam::Single(a) => a.cidrs(),
            NodeIpam::Multi(m) => m
                .status()
                .values()
                .flat_map(|s| s.iter().map(|c| c.cidr))
                .collect(),
        }
    }

    /// `IPv4: 2/6 allocated from ...`.
    pub fn status_line(&self) -> String {
        match self {
            NodeIpam::Single(a) => a.status_line(),
            NodeIpam::Multi(m) => m.status_line(),
        }
    }

    /// Free addresses in `pool` (all pools of a single allocator).
    pub fn free_in(&self, pool: &str) -> u32 {
        match self {
            NodeIpam::Single(a) => a.free(),
            NodeIpam::Multi(m) => m.pool(pool).map(|p| p.free()).unwrap_or(0),
        }
    }

    /// Free addresses overall.
    pub fn free(&self) -> u32 {
        match self {
            NodeIpam::Single(a) => a.free(),
            NodeIpam::Multi(m) => m
                .status()
                .values()
                .flatten()
                .map(|c| c.total - c.used)
                .sum(),
        }
    }

    /// Used addresses overall.
    pub fn used(&self) -> u32 {
        self.allocations().len() as u32
    }

    /// Adds pod CIDRs (single allocator only; blocks of pools come with [`Self::sync_pools`]).
    pub fn add_cidr(&mut self, cidr: Ipv4Net) -> Result<bool, IpamError> {
        match self {
            NodeIpam::Single(a) => {
                if a.has_cidr(cidr) {
                    Ok(false)
                } else {
                    a.add_cidr(cidr)
                }
            }
            NodeIpam::Multi(_) => Ok(false),
        }
    }

    /// Applies the operator's `allocated` blocks (multi-pool).
    pub fn sync_pools(&mut self, allocated: &BTreeMap<String, Vec<Ipv4Net>>) {
        if let NodeIpam::Multi(m) = self {
            if let Err(e) = m.sync(allocated) {
                tracing::warn!(error = %e, "applying the operator's pool blocks");
            }
        }
    }

    /// The multi-pool request to publish (`None` for a single allocator).
    pub fn pool_request(&mut self, now: Instant) -> Option<NodePoolRequest> {
        match self {
            NodeIpam::Single(_) => None,
            NodeIpam::Multi(m) => Some(m.request(now)),
        }
    }

    /// Sets the number of refused allocations waiting in `pool` (multi-pool).
    pub fn set_pending(&mut self, pool: &str, pending: u64) {
        if let NodeIpam::Multi(m) = self {
            m.set_pending(pool, pending);
        }
    }

    /// Re-registers saved allocations (marked restored). `items`: (pool, ip, owner).
    pub fn restore(&mut self, items: &[(String, Ipv4Addr, String)]) {
        for (pool, ip, owner) in items {
            let out = match self {
                NodeIpam::Single(a) => a.restore([(*ip, owner.as_str())]),
                NodeIpam::Multi(m) => m.restore(pool, [(*ip, owner.as_str())]),
            };
            for (ip, e) in out.skipped {
                tracing::warn!(%ip, error = %e, "allocation not restored");
            }
        }
    }

    /// Single-allocator state (for the persisted file's `ipam` field).
    pub fn single_state(&self) -> NodeAllocatorState {
        match self {
            NodeIpam::Single(a) => a.state(),
            NodeIpam::Multi(_) => NodeAllocatorState::default(),
        }
    }
}
