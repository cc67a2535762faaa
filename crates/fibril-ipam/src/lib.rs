//! IP address management for Fibril: pure logic, no I/O, no clock reads. The agent and
//! operator call it and persist the serde state types it exposes.
//!
//! Modules:
//! - [`node`]: [`NodeAllocator`], a node's addresses over one or more CIDRs (bitmap per
//!   CIDR with a next-free cursor; network/broadcast reserved; owners such as `router`,
//!   `health`, `ns/pod`; restore after restart marked `[restored]`; `used/total` status;
//!   exhaustion errors say `range is full`).
//! - [`carver`]: [`BlockCarver`], lowest-free `/mask` blocks out of a CIDR list; shared by
//!   the three pool flavours below.
//! - [`cluster_pool`]: [`ClusterPool`], operator-side cluster-pool assignment of blocks
//!   of `clusterPoolIPv4PodCIDRList` to nodes: deterministic, restart-safe, list growth,
//!   extra blocks for exhausted nodes, release of deleted nodes.
//! - [`multi_pool`]: named pools; [`MultiPool`] (operator) answers [`NodePoolRequest`]s
//!   computed by [`MultiPoolNode`] (agent) with the pre-allocation rule and a release
//!   grace period; pool selection by annotation with [`select_pool`].
//! - [`host_scope`]: Kubernetes host scope: a node allocator over the node's podCIDRs, and
//!   [`NodeCidrAllocator`], the kube-controller-manager-like `--cluster-cidr` /
//!   `--node-cidr-mask-size` allocator.
//! - [`config`]: parsing of the Helm-style values (`{a,b}` CIDR lists, mask sizes, the
//!   auto-created pools) with errors naming key and value, and [`config::fuzz_config`],
//!   the never-panicking fuzz entry point.
//! - [`error`]: the error type, [`IpamError`].

mod bitmap;
pub mod carver;
pub mod cluster_pool;
pub mod config;
pub mod error;
pub mod host_scope;
pub mod multi_pool;
pub mod node;

pub use carver::{validate_pool_cidrs, BlockCarver};
pub use cluster_pool::{usable_per_block, BlockAssignments, ClusterPool, CLUSTER_POOL_NAME};
pub use config::ConfigError;
pub use error::IpamError;
pub use host_scope::{node_allocator_from_pod_cidrs, NodeCidrAllocator, NodeCidrAssignments};
pub use multi_pool::{
    blocks_needed, needed_ips, select_pool, MultiPool, MultiPoolAssignments, MultiPoolNode,
    MultiPoolNodeState, NodePoolRequest, NodeReconcile, PoolSpec, PreAllocation, DEFAULT_POOL,
    POOL_ANNOTATION, POOL_ANNOTATION_ALIAS,
};
pub use node::{Allocation, CidrStatus, NodeAllocator, NodeAllocatorState, RestoreOutcome};
