//! Cluster-pool (operator side): which node holds which `/clusterPoolIPv4MaskSize` block of
//! `clusterPoolIPv4PodCIDRList`.
//!
//! Beyond Cilium, a node that runs out of addresses can be handed an additional block
//! ([`ClusterPool::allocate_additional`]) while free blocks remain, and the CIDR list may
//! grow at runtime ([`ClusterPool::update_cidrs`]) without touching existing assignments.

use std::collections::{BTreeMap, HashMap};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::carver::BlockCarver;
use crate::error::{join_cidrs, IpamError};

/// Name used for the single cluster pool in error messages.
pub const CLUSTER_POOL_NAME: &str = "cluster-pool";

/// Persisted block assignments: node name -> blocks, in the order they were assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAssignments {
    /// Node name -> its blocks.
    pub nodes: BTreeMap<String, Vec<Ipv4Net>>,
}

/// Operator-side block assignment over one CIDR list and mask size.
#[derive(Debug, Clone)]
pub struct ClusterPool {
    name: String,
    carver: BlockCarver,
    nodes: BTreeMap<String, Vec<Ipv4Net>>,
    owners: HashMap<Ipv4Net, String>,
}

impl ClusterPool {
    /// A pool over `cidrs` (clusterPoolIPv4PodCIDRList) handing out `/mask_size` blocks
    /// (clusterPoolIPv4MaskSize). Rejects malformed or overlapping CIDRs and a mask size
    /// shorter than a listed prefix, naming the value.
    pub fn new(cidrs: &[Ipv4Net], mask_size: u8) -> Result<Self, IpamError> {
        Self::named(CLUSTER_POOL_NAME, cidrs, mask_size)
    }

    /// Like [`ClusterPool::new`] with a name used in error messages (multi-pool uses the
    /// pool's name).
    pub fn named(name: &str, cidrs: &[Ipv4Net], mask_size: u8) -> Result<Self, IpamError> {
        Ok(Self {
            name: name.to_owned(),
            carver: BlockCarver::new(cidrs, mask_size)?,
            nodes: BTreeMap::new(),
            owners: HashMap::new(),
        })
    }

    /// A pool with `assignments` restored (see [`ClusterPool::restore`]).
    pub fn from_assignments(
        cidrs: &[Ipv4Net],
        mask_size: u8,
        assignments: &BlockAssignments,
    ) -> Result<Self, IpamError> {
        let mut p = Self::new(cidrs, mask_size)?;
        p.restore(assignments)?;
        Ok(p)
    }

    /// The pool's name (`cluster-pool` unless created with [`ClusterPool::named`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CIDR list.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
        self.carver.cidrs()
    }

    /// The block size.
    pub fn mask_size(&self) -> u8 {
        self.carver.mask_size()
    }

    /// Total blocks in the list.
    pub fn total_blocks(&self) -> u64 {
        self.carver.total_blocks()
    }

    /// Blocks not assigned to any node.
    pub fn free_blocks(&self) -> u64 {
        self.carver.free_blocks()
    }

    /// Replaces the CIDR list (e.g. after `--set clusterPoolIPv4PodCIDRList=...`). New
    /// CIDRs are usable at once; existing assignments stay as they are. A CIDR may only be
    /// dropped (or shrunk) when no assigned block falls outside the new list.
    pub fn update_cidrs(&mut self, cidrs: &[Ipv4Net]) -> Result<(), IpamError> {
        self.reconfigure(cidrs, self.mask_size())
    }

    /// Replaces the CIDR list and mask size. The mask size may only change while no block
    /// is assigned.
    pub fn reconfigure(&mut self, cidrs: &[Ipv4Net], mask_size: u8) -> Result<(), IpamError> {
        if mask_size != self.mask_size() && !self.owners.is_empty() {
            return Err(IpamError::MaskSizeChange {
                from: self.mask_size(),
                to: mask_size,
            });
        }
        let mut carver = BlockCarver::new(cidrs, mask_size)?;
        for (node, blocks) in &self.nodes {
            for &b in blocks {
                if carver.take(b).is_err() {
                    let old = self
                        .carver
                        .cidrs()
                        .into_iter()
                        .find(|c| c.contains(&b))
                        .unwrap_or(b);
                    return Err(IpamError::CidrInUse {
                        cidr: old,
                        in_use: format!("block {b} is assigned to node {node:?}"),
                    });
                }
            }
        }
        self.carver = carver;
        Ok(())
    }

    /// Gives `node` its first block, or returns the blocks it already has (idempotent).
    pub fn allocate_node(&mut self, node: &str) -> Result<&[Ipv4Net], IpamError> {
        let has = self.nodes.get(node).is_some_and(|b| !b.is_empty());
        if !has {
            self.allocate_additional(node)?;
        }
        Ok(self.node_blocks(node))
    }

    /// Gives `node` one more block (for a node whose blocks are full). Errors when the
    /// pool has no free block.
    pub fn allocate_additional(&mut self, node: &str) -> Result<Ipv4Net, IpamError> {
        let block = self.carver.allocate().ok_or_else(|| self.exhausted())?;
        self.owners.insert(block, node.to_owned());
        self.nodes.entry(node.to_owned()).or_default().push(block);
        Ok(block)
    }

    /// Makes sure `node` holds blocks with at least `needed` usable addresses in total,
    /// adding blocks as needed. Returns the node's blocks.
    ///
    /// Cluster-pool: the operator calls it with the `used + pending` the node reports, so
    /// a node keeps its single block (as in the seeds) until it runs out, then gets another
    /// while free blocks remain. Multi-pool calls it with [`crate::needed_ips`].
    /// On exhaustion the blocks added so far stay assigned.
    pub fn ensure_capacity(&mut self, node: &str, needed: u64) -> Result<&[Ipv4Net], IpamError> {
        let per_block = usable_per_block(self.mask_size());
        let mut have = self.nodes.get(node).map_or(0, |b| b.len() as u64) * per_block;
        while have < needed {
            self.allocate_additional(node)?;
            have += per_block;
        }
        Ok(self.node_blocks(node))
    }

    /// Releases every block of a deleted node; returns them.
    pub fn release_node(&mut self, node: &str) -> Vec<Ipv4Net> {
        let blocks = self.nodes.remove(node).unwrap_or_default();
        for b in &blocks {
            self.owners.remove(b);
            // Blocks in `nodes` were taken through the carver, so they are located.
            let _ = self.carver.free(*b);
        }
        blocks
    }

    /// Releases one block of `node`.
    pub fn release_block(&mut self, node: &str, block: Ipv4Net) -> Result<(), IpamError> {
        if self.owners.get(&block).map(String::as_str) != Some(node) {
            return Err(IpamError::BlockNotAssigned {
                block,
                node: node.to_owned(),
            });
        }
        self.owners.remove(&block);
        if let Some(list) = self.nodes.get_mut(node) {
            list.retain(|b| *b != block);
            if list.is_empty() {
                self.nodes.remove(node);
            }
        }
        self.carver.free(block)?;
        Ok(())
    }

    /// Re-registers blocks a node held before an operator restart. All-or-nothing: a
    /// block outside the pool or held by another node fails the call and changes nothing.
    /// Blocks the node already holds are accepted again.
    pub fn restore_node(&mut self, node: &str, blocks: &[Ipv4Net]) -> Result<(), IpamError> {
        for &b in blocks {
            self.carver.check_block(b)?;
            if let Some(owner) = self.owners.get(&b) {
                if owner != node {
                    return Err(IpamError::BlockTaken {
                        block: b,
                        owner: owner.clone(),
                        node: node.to_owned(),
                    });
                }
            }
        }
        for &b in blocks {
            if self.owners.contains_key(&b) {
                continue;
            }
            self.carver.take(b)?;
            self.owners.insert(b, node.to_owned());
            self.nodes.entry(node.to_owned()).or_default().push(b);
        }
        Ok(())
    }

    /// Restores every node's blocks. All-or-nothing over the whole set.
    pub fn restore(&mut self, assignments: &BlockAssignments) -> Result<(), IpamError> {
        let mut next = self.clone();
        for (node, blocks) in &assignments.nodes {
            next.restore_node(node, blocks)?;
        }
        *self = next;
        Ok(())
    }

    /// The blocks of `node`, in assignment order (empty if none).
    pub fn node_blocks(&self, node: &str) -> &[Ipv4Net] {
        self.nodes.get(node).map_or(&[], Vec::as_slice)
    }

    /// The node holding `block`.
    pub fn owner_of(&self, block: Ipv4Net) -> Option<&str> {
        self.owners.get(&block).map(String::as_str)
    }

    /// Nodes holding at least one block.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// The assignments to persist.
    pub fn assignments(&self) -> BlockAssignments {
        BlockAssignments {
            nodes: self.nodes.clone(),
        }
    }

    fn exhausted(&self) -> IpamError {
        IpamError::PoolExhausted {
            pool: self.name.clone(),
            mask_size: self.mask_size(),
            cidrs: join_cidrs(self.carver.cidrs().iter()),
        }
    }
}

/// Usable addresses in one `/mask_size` block (network and broadcast excluded up to /30).
pub fn usable_per_block(mask_size: u8) -> u64 {
    match mask_size {
        0..=30 => (1u64 << (32 - u32::from(mask_size))) - 2,
        31 => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn seed_pool() -> ClusterPool {
        ClusterPool::new(&[net("172.20.42.0/28"), net("172.20.84.0/28")], 29).unwrap()
    }

    #[test]
    fn seed_three_nodes() {
        let mut p = seed_pool();
        let mut got = Vec::new();
        for n in ["cilium-ctr", "cilium-w1", "cilium-w2"] {
            let b = p.allocate_node(n).unwrap();
            assert_eq!(b.len(), 1);
            got.push(b[0]);
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                net("172.20.42.0/29"),
                net("172.20.42.8/29"),
                net("172.20.84.0/29")
            ]
        );
        // Idempotent.
        let again = p.allocate_node("cilium-w1").unwrap().to_vec();
        assert_eq!(again.len(), 1);
        assert_eq!(p.free_blocks(), 1);
        assert_eq!(usable_per_block(29), 6);
    }

    #[test]
    fn deterministic() {
        let run = || {
            let mut p = seed_pool();
            ["a", "b", "c"].map(|n| p.allocate_node(n).unwrap()[0])
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn exhausted_node_gets_additional_block_then_growth() {
        let mut p = seed_pool();
        for n in ["ctr", "w1", "w2"] {
            p.allocate_node(n).unwrap();
        }
        let extra = p.allocate_additional("w1").unwrap();
        assert_eq!(p.owner_of(extra), Some("w1"));
        assert_eq!(p.node_blocks("w1").len(), 2);
        let err = p.allocate_additional("w2").unwrap_err();
        assert!(
            err.to_string().contains("172.20.42.0/28, 172.20.84.0/28"),
            "{err}"
        );
        // The list grows by 10.0.0.0/28: new blocks usable at once, nothing moves.
        let before = p.assignments();
        p.update_cidrs(&[
            net("172.20.42.0/28"),
            net("172.20.84.0/28"),
            net("10.0.0.0/28"),
        ])
        .unwrap();
        assert_eq!(p.assignments(), before);
        assert_eq!(p.allocate_additional("w2").unwrap(), net("10.0.0.0/29"));
        assert_eq!(p.cidrs().len(), 3);
    }

    #[test]
    fn update_rejects_dropping_used_cidr_and_mask_change() {
        let mut p = seed_pool();
        p.allocate_node("w1").unwrap();
        let err = p.update_cidrs(&[net("172.20.84.0/28")]).unwrap_err();
        assert!(err.to_string().contains("172.20.42.0/28"), "{err}");
        assert!(err.to_string().contains("w1"), "{err}");
        let err = p.reconfigure(&[net("172.20.42.0/28")], 30).unwrap_err();
        assert!(matches!(
            err,
            IpamError::MaskSizeChange { from: 29, to: 30 }
        ));
        // Dropping an unused CIDR and widening a used one are fine.
        p.update_cidrs(&[net("172.20.42.0/24")]).unwrap();
        assert_eq!(p.node_blocks("w1"), &[net("172.20.42.0/29")]);
        assert_eq!(p.free_blocks(), 31);
        let err = p
            .update_cidrs(&[net("172.20.42.0/24"), net("172.20.42.0/28")])
            .unwrap_err();
        assert!(matches!(err, IpamError::Overlap { .. }));
    }

    #[test]
    fn invalid_configs_name_the_value() {
        let err = ClusterPool::new(&[net("172.20.0.0/16")], 8).unwrap_err();
        assert!(err.to_string().contains("172.20.0.0/16"), "{err}");
        assert!(err.to_string().contains("mask size 8"), "{err}");
        let err = ClusterPool::new(&[net("172.20.0.0/16"), net("172.20.0.0/16")], 24).unwrap_err();
        assert!(err.to_string().contains("172.20.0.0/16"), "{err}");
    }

    #[test]
    fn release_node_returns_blocks_for_reuse() {
        let mut p = seed_pool();
        for n in ["a", "b", "c", "d"] {
            p.allocate_node(n).unwrap();
        }
        assert!(p.allocate_node("e").is_err());
        let freed = p.release_node("b");
        assert_eq!(freed.len(), 1);
        assert_eq!(p.allocate_node("e").unwrap(), freed.as_slice());
        assert!(p.release_node("b").is_empty());
        let err = p.release_block("a", freed[0]).unwrap_err();
        assert!(matches!(err, IpamError::BlockNotAssigned { .. }));
        let a0 = p.node_blocks("a")[0];
        p.release_block("a", a0).unwrap();
        assert!(p.node_blocks("a").is_empty());
        assert_eq!(p.nodes().count(), 3);
    }

    #[test]
    fn restart_with_same_assignments_never_reshuffles() {
        let mut p = ClusterPool::new(&[net("172.20.0.0/16")], 24).unwrap();
        for i in 0..20 {
            p.allocate_node(&format!("node-{i}")).unwrap();
        }
        p.release_node("node-3");
        p.allocate_additional("node-7").unwrap();
        let saved = serde_json::to_string(&p.assignments()).unwrap();
        let saved: BlockAssignments = serde_json::from_str(&saved).unwrap();
        let mut q = ClusterPool::from_assignments(&p.cidrs(), 24, &saved).unwrap();
        for i in 0..20 {
            let n = format!("node-{i}");
            assert_eq!(q.allocate_node(&n).unwrap(), p.allocate_node(&n).unwrap());
        }
        // Next choices match too.
        assert_eq!(
            q.allocate_node("new").unwrap(),
            p.allocate_node("new").unwrap()
        );
    }

    #[test]
    fn restore_conflicts_change_nothing() {
        let mut p = seed_pool();
        p.restore_node("w1", &[net("172.20.42.0/29")]).unwrap();
        p.restore_node("w1", &[net("172.20.42.0/29")]).unwrap();
        let err = p
            .restore_node("w2", &[net("172.20.42.8/29"), net("172.20.42.0/29")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "block 172.20.42.0/29 is already assigned to node \"w1\", cannot give it to \"w2\""
        );
        assert!(p.node_blocks("w2").is_empty());
        let err = p.restore_node("w3", &[net("10.244.0.0/24")]).unwrap_err();
        assert!(matches!(err, IpamError::BlockOutsidePool { .. }), "{err}");
        let mut bad = BlockAssignments::default();
        bad.nodes.insert("x".into(), vec![net("172.20.84.0/29")]);
        bad.nodes.insert("y".into(), vec![net("172.20.84.0/29")]);
        assert!(p.restore(&bad).is_err());
        assert!(p.owner_of(net("172.20.84.0/29")).is_none());
    }

    #[test]
    fn ensure_capacity_rounds_up_to_blocks() {
        let mut p = ClusterPool::new(&[net("10.100.0.0/16")], 29).unwrap();
        assert_eq!(p.ensure_capacity("w1", 10).unwrap().len(), 2);
        assert_eq!(p.ensure_capacity("w1", 12).unwrap().len(), 2);
        assert_eq!(p.ensure_capacity("w1", 13).unwrap().len(), 3);
        assert_eq!(p.ensure_capacity("w1", 0).unwrap().len(), 3);
    }

    #[test]
    fn five_thousand_nodes_in_a_slash8() {
        let mut p = ClusterPool::new(&[net("10.0.0.0/8")], 24).unwrap();
        for i in 0..5000 {
            p.allocate_node(&format!("n{i}")).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        for n in p.nodes() {
            for b in p.node_blocks(n) {
                assert!(seen.insert(*b));
            }
        }
        assert_eq!(seen.len(), 5000);
    }
}
