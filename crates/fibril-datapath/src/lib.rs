//! Loads, pins and attaches the eBPF programs; typed access to every map.
//!
//! - [`Datapath`] loads `bpf_lxc.o` / `bpf_host.o` (compiled by build.rs from
//!   `bpf/`) with per-node constants ([`DatapathConfig`]), pins maps and TCX
//!   links under the node's bpffs directory, attaches in the node's netns and
//!   atomically replaces programs on restart.
//! - [`Maps`] opens the pinned maps with typed wrappers ([`maps`]).
//! - [`events`] decodes the ring buffer into [`Flow`]s.
//! - [`testing`] has the packet builder and `BPF_PROG_TEST_RUN` harness and a
//!   netns fixture for the datapath's (and its users') tests.

pub mod bpffs;
pub mod btf;
pub mod config;
pub mod error;
pub mod events;
pub mod ipmasq;
pub mod lb;
pub mod loader;
pub mod maps;
pub mod nat;
pub mod netns;
pub mod objects;
pub mod status;
pub mod testing;
pub mod tunnel;

pub use config::{DatapathConfig, Device, Tunnel};
pub use error::{DatapathError, Result};
pub use events::{AsyncEventReader, EventReader, Flow, TcpFlags};
pub use lb::{BackendSpec, Frontend, LbDump, LoadBalancer, ServiceSpec, ServiceType};
pub use loader::{
    pinned_attachments, AttachMode, AttachOutcome, Datapath, DatapathOptions, PinnedAttachment,
    POD_FILTER_HANDLE, POD_FILTER_PRIORITY,
};
pub use maps::{
    monotonic_ns, Conntrack, CtCounts, EventCounters, GcStats, HashTable, LpmTable, Maps,
    MetricEntry, Metrics, Prefix4,
};
pub use nat::{Nat, NatDir, NatEntry, NatTimeouts};
pub use netns::Netns;
pub use objects::{Hook, Object, Prog};
pub use status::{DatapathStatus, DropCount};
pub use tunnel::{Encapsulated, TunnelRoute, ENCAP_OVERHEAD, GENEVE_PORT, VXLAN_PORT};
