//! The crate's error type. Every message names the address, CIDR, node or pool at fault
//! so the agent, operator and CLI can pass it on unchanged.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Errors returned by the allocators and carvers in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// No free address left in any of the node's CIDRs. The text contains `range is full`,
    /// which the CNI plugin passes through to the pod's events, as Cilium does.
    #[error("range is full: no free address in {cidrs}")]
    RangeFull {
        /// The CIDRs that were searched, comma separated (may be empty).
        cidrs: String,
    },
    /// The address is already held by someone.
    #[error("address {ip} is already allocated to {owner}")]
    AlreadyAllocated {
        /// The address asked for.
        ip: Ipv4Addr,
        /// Its current owner.
        owner: String,
    },
    /// The address lies in none of the allocator's CIDRs.
    #[error("address {ip} is not inside any of the node's CIDRs ({cidrs})")]
    NotInRange {
        /// The address asked for.
        ip: Ipv4Addr,
        /// The node's CIDRs, comma separated.
        cidrs: String,
    },
    /// The network or broadcast address of a CIDR was asked for.
    #[error("address {ip} is the network or broadcast address of {cidr} and cannot be allocated")]
    Reserved {
        /// The address asked for.
        ip: Ipv4Addr,
        /// The CIDR reserving it.
        cidr: Ipv4Net,
    },
    /// Release of an address nobody holds.
    #[error("address {ip} is not allocated")]
    NotAllocated {
        /// The address.
        ip: Ipv4Addr,
    },
    /// Two CIDRs of one allocator, pool or pool list overlap.
    #[error("CIDR {cidr} overlaps {other}")]
    Overlap {
        /// The CIDR being added.
        cidr: Ipv4Net,
        /// The CIDR already present.
        other: Ipv4Net,
    },
    /// Two named pools overlap.
    #[error("pool {pool:?} CIDR {cidr} overlaps pool {other_pool:?} CIDR {other_cidr}")]
    PoolOverlap {
        /// The pool being added or updated.
        pool: String,
        /// Its overlapping CIDR.
        cidr: Ipv4Net,
        /// The existing pool.
        other_pool: String,
        /// The existing pool's overlapping CIDR.
        other_cidr: Ipv4Net,
    },
    /// A CIDR cannot be removed while addresses or blocks in it are in use.
    #[error("CIDR {cidr} cannot be removed: {in_use} still in use")]
    CidrInUse {
        /// The CIDR.
        cidr: Ipv4Net,
        /// What is still in use, e.g. `3 addresses` or `block 10.0.0.0/29 (node w1)`.
        in_use: String,
    },
    /// The CIDR is not one of the allocator's.
    #[error("CIDR {cidr} is not configured")]
    UnknownCidr {
        /// The CIDR.
        cidr: Ipv4Net,
    },
    /// The CIDR would need more slots than the allocator supports.
    #[error("CIDR {cidr} is too large: {slots} slots of /{mask_size} exceed the limit of {limit}")]
    TooLarge {
        /// The CIDR.
        cidr: Ipv4Net,
        /// The mask size carved out of it (32 for node allocators).
        mask_size: u8,
        /// Slots it would need.
        slots: u64,
        /// The limit.
        limit: u64,
    },
    /// A pool CIDR has host bits set (e.g. `10.0.0.1/16`).
    #[error("CIDR {cidr} has host bits set; did you mean {network}?")]
    HostBitsSet {
        /// The CIDR as given.
        cidr: Ipv4Net,
        /// The network it probably meant.
        network: Ipv4Net,
    },
    /// The per-node mask size is outside 1..=32.
    #[error("mask size {mask_size} is invalid: it must be between 1 and 32")]
    InvalidMaskSize {
        /// The value given.
        mask_size: u8,
    },
    /// The per-node mask size is shorter than the prefix of a listed CIDR, so no block fits.
    #[error(
        "mask size {mask_size} is shorter than the prefix of {cidr}: blocks of /{mask_size} \
         cannot be carved from a /{prefix}; use a mask size of at least {prefix}"
    )]
    MaskShorterThanPrefix {
        /// The configured mask size.
        mask_size: u8,
        /// The listed CIDR.
        cidr: Ipv4Net,
        /// Its prefix length.
        prefix: u8,
    },
    /// The mask size of a pool cannot change while blocks are assigned.
    #[error("mask size cannot change from {from} to {to} while blocks are assigned")]
    MaskSizeChange {
        /// Current mask size.
        from: u8,
        /// Requested mask size.
        to: u8,
    },
    /// A block is not a `/mask_size` block of any pool CIDR.
    #[error("block {block} is not a /{mask_size} block of any pool CIDR ({cidrs})")]
    BlockOutsidePool {
        /// The block.
        block: Ipv4Net,
        /// The pool's mask size.
        mask_size: u8,
        /// The pool's CIDRs, comma separated.
        cidrs: String,
    },
    /// A block is already assigned to another node.
    #[error("block {block} is already assigned to node {owner:?}, cannot give it to {node:?}")]
    BlockTaken {
        /// The block.
        block: Ipv4Net,
        /// The node holding it.
        owner: String,
        /// The node asking for it.
        node: String,
    },
    /// A block is not assigned to the node.
    #[error("block {block} is not assigned to node {node:?}")]
    BlockNotAssigned {
        /// The block.
        block: Ipv4Net,
        /// The node.
        node: String,
    },
    /// All blocks of a pool are assigned.
    #[error("pool {pool:?} is exhausted: no free /{mask_size} block left in {cidrs}")]
    PoolExhausted {
        /// The pool (`cluster-pool` for the single cluster pool).
        pool: String,
        /// Block size.
        mask_size: u8,
        /// The pool's CIDRs, comma separated.
        cidrs: String,
    },
    /// A pool name that does not exist.
    #[error("unknown IP pool {pool:?}")]
    UnknownPool {
        /// The pool name.
        pool: String,
    },
    /// A pool with that name exists already.
    #[error("IP pool {pool:?} already exists")]
    PoolExists {
        /// The pool name.
        pool: String,
    },
    /// A pool cannot be removed while blocks are assigned from it.
    #[error("IP pool {pool:?} cannot be removed: {blocks} block(s) still assigned to nodes")]
    PoolInUse {
        /// The pool name.
        pool: String,
        /// Assigned blocks.
        blocks: usize,
    },
    /// A pool name is not a valid Kubernetes object name.
    #[error("invalid IP pool name {pool:?}: {reason}")]
    InvalidPoolName {
        /// The pool name.
        pool: String,
        /// Why.
        reason: &'static str,
    },
    /// A pool or cluster CIDR list is empty.
    #[error("{what} has no CIDRs")]
    NoCidrs {
        /// What was empty, e.g. `pool "vac"`.
        what: String,
    },
}

/// Joins CIDRs for error messages.
pub(crate) fn join_cidrs<'a>(cidrs: impl IntoIterator<Item = &'a Ipv4Net>) -> String {
    let mut out = String::new();
    for (i, c) in cidrs.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&c.to_string());
    }
    out
}
