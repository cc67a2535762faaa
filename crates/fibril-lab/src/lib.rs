//! The lab: topology files, the netns fabric builder, and the lab cluster.
//!
//! - [`topology`]: the YAML schema, built-in topologies, validation.
//! - [`fabric`]: builds a topology out of network namespaces ([`Fabric::up`]),
//!   runs commands inside them, tears them down ([`Fabric::down`], [`FabricGuard`]).
//! - [`state`]: the per-lab state directory under `/run/fibril/labs`.
//! - [`cluster`]: the lab cluster's processes (etcd, operator, controller,
//!   agents, kubelets), rollouts, and store access from the root namespace.

pub mod cluster;
pub mod error;
pub mod fabric;
pub mod paths;
pub mod state;
pub mod topology;

pub use error::{LabError, LabResult};
pub use fabric::{
    bridge_name, down, netns_name, status, DownReport, Fabric, FabricGuard, HostStatus, LabStatus,
    DEFAULT_LAB,
};
pub use state::{netns_prefix, validate_lab_name, LabState, NsRecord, LABS_DIR};
pub use topology::{
    ClusterSettings, HostKind, Interface, Loopback, Network, Node, Role, Router, StaticRoute,
    Topology, TopologyError,
};
