//! Kubernetes host scope: the node's `spec.podCIDRs` as given by the control plane, and a
//! kube-controller-manager-like allocator (`--cluster-cidr` with `--node-cidr-mask-size`)
//! that gives each node exactly one podCIDR, for the lab's control plane.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::cluster_pool::{BlockAssignments, ClusterPool};
use crate::config::{parse_cidr, ConfigError};
use crate::error::IpamError;
use crate::node::NodeAllocator;

/// A node allocator over a node's `spec.podCIDRs`. IPv6 entries are skipped (Fibril is
/// IPv4-only for now); a malformed entry is an error naming it.
pub fn node_allocator_from_pod_cidrs<S: AsRef<str>>(
    pod_cidrs: &[S],
) -> Result<NodeAllocator, ConfigError> {
    let mut cidrs = Vec::new();
    for s in pod_cidrs {
        let s = s.as_ref().trim();
        if s.contains(':') && s.parse::<ipnet::Ipv6Net>().is_ok() {
            continue;
        }
        cidrs.push(parse_cidr("spec.podCIDRs", s)?);
    }
    NodeAllocator::with_cidrs(cidrs).map_err(|e| ConfigError::new("spec.podCIDRs", "", e))
}

/// Persisted state of a [`NodeCidrAllocator`]: node -> podCIDR.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCidrAssignments {
    /// The cluster CIDR.
    pub cluster_cidr: Option<Ipv4Net>,
    /// Node name -> its podCIDR.
    pub nodes: std::collections::BTreeMap<String, Ipv4Net>,
}

/// kube-controller-manager-like node podCIDR allocator: node 0 gets the first
/// `/node_cidr_mask_size` of `cluster_cidr`, the next node the next one, and so on.
/// Restart-safe: restoring the saved assignments reproduces every later choice.
#[derive(Debug, Clone)]
pub struct NodeCidrAllocator {
    cluster_cidr: Ipv4Net,
    pool: ClusterPool,
}

impl NodeCidrAllocator {
    /// `cluster_cidr` (e.g. 10.244.0.0/16) carved into `/node_cidr_mask_size` (e.g. 24).
    pub fn new(cluster_cidr: Ipv4Net, node_cidr_mask_size: u8) -> Result<Self, IpamError> {
        Ok(Self {
            cluster_cidr,
            pool: ClusterPool::named("cluster-cidr", &[cluster_cidr], node_cidr_mask_size)?,
        })
    }

    /// The cluster CIDR.
    pub fn cluster_cidr(&self) -> Ipv4Net {
        self.cluster_cidr
    }

    /// The node mask size.
    pub fn node_cidr_mask_size(&self) -> u8 {
        self.pool.mask_size()
    }

    /// The node's podCIDR, allocating one if it has none (idempotent).
    pub fn allocate(&mut self, node: &str) -> Result<Ipv4Net, IpamError> {
        let blocks = self.pool.allocate_node(node)?;
        // allocate_node returns at least one block on success.
        blocks
            .first()
            .copied()
            .ok_or_else(|| IpamError::PoolExhausted {
                pool: "cluster-cidr".into(),
                mask_size: self.pool.mask_size(),
                cidrs: self.cluster_cidr.to_string(),
            })
    }

    /// The node's podCIDR, if any.
    pub fn get(&self, node: &str) -> Option<Ipv4Net> {
        self.pool.node_blocks(node).first().copied()
    }

    /// Frees a deleted node's podCIDR.
    pub fn release(&mut self, node: &str) -> Option<Ipv4Net> {
        self.pool.release_node(node).first().copied()
    }

    /// Re-registers a podCIDR a node already has (e.g. read back from its Node object).
    pub fn restore(&mut self, node: &str, pod_cidr: Ipv4Net) -> Result<(), IpamError> {
        if let Some(have) = self.get(node) {
            if have != pod_cidr {
                return Err(IpamError::BlockTaken {
                    block: have,
                    owner: node.to_owned(),
                    node: format!("{node} (as {pod_cidr})"),
                });
            }
        }
        self.pool.restore_node(node, &[pod_cidr])
    }

    /// The assignments to persist.
    pub fn assignments(&self) -> NodeCidrAssignments {
        NodeCidrAssignments {
            cluster_cidr: Some(self.cluster_cidr),
            nodes: self
                .pool
                .assignments()
                .nodes
                .into_iter()
                .filter_map(|(n, b)| b.first().map(|c| (n, *c)))
                .collect(),
        }
    }

    /// Restores saved assignments (all-or-nothing).
    pub fn restore_all(&mut self, saved: &NodeCidrAssignments) -> Result<(), IpamError> {
        let mut a = BlockAssignments::default();
        for (n, c) in &saved.nodes {
            a.nodes.insert(n.clone(), vec![*c]);
        }
        self.pool.restore(&a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn kcm_like_sequence() {
        let mut k = NodeCidrAllocator::new(net("10.244.0.0/16"), 24).unwrap();
        assert_eq!(k.allocate("k8s-ctr").unwrap(), net("10.244.0.0/24"));
        assert_eq!(k.allocate("k8s-w1").unwrap(), net("10.244.1.0/24"));
        assert_eq!(k.allocate("k8s-ctr").unwrap(), net("10.244.0.0/24"));
        assert_eq!(k.get("k8s-w1"), Some(net("10.244.1.0/24")));
        let saved = k.assignments();
        let mut r = NodeCidrAllocator::new(net("10.244.0.0/16"), 24).unwrap();
        r.restore_all(&saved).unwrap();
        assert_eq!(r.allocate("k8s-w2").unwrap(), net("10.244.2.0/24"));
        assert_eq!(k.release("k8s-ctr"), Some(net("10.244.0.0/24")));
        assert_eq!(k.allocate("k8s-w2").unwrap(), net("10.244.0.0/24"));
        let err = k.restore("k8s-w1", net("10.244.9.0/24")).unwrap_err();
        assert!(err.to_string().contains("10.244.9.0/24"), "{err}");
        assert!(NodeCidrAllocator::new(net("10.244.0.0/16"), 8).is_err());
    }

    #[test]
    fn pod_cidrs_as_given() {
        let mut a = node_allocator_from_pod_cidrs(&["10.244.1.0/24", "fd00::/64"]).unwrap();
        assert_eq!(a.cidrs(), vec![net("10.244.1.0/24")]);
        assert_eq!(a.allocate("router").unwrap().to_string(), "10.244.1.1");
        let err = node_allocator_from_pod_cidrs(&["10.244.1.0/33"]).unwrap_err();
        assert!(err.to_string().contains("10.244.1.0/33"), "{err}");
    }
}
