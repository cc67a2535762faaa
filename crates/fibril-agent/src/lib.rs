//! The Fibril node agent (`fibril agent`, one per node; in the lab one per
//! node network namespace).
//!
//! [`run`] brings a node up and serves the endpoint API until `shutdown`:
//!
//! 1. reads the underlay device (`eth1`: node IP, MAC, MTU) in the node netns;
//! 2. registers the node's FibrilNode and waits for its pod CIDRs
//!    (`cluster-pool`: `spec.ipam.podCIDRs` written by the operator, more
//!    requested through `spec.ipam.pools.requested` when exhausted;
//!    `kubernetes`: the Node's `spec.podCIDRs`, copied into the FibrilNode;
//!    `multi-pool`: `default` pool blocks requested and waited for, other
//!    pools (by Pod/Namespace annotation) on demand, see [`ipam`]);
//! 3. restores IP allocations and endpoints from `<state_dir>/state.json`
//!    (marked `[restored]`), allocates the router and health IPs (first);
//! 4. creates `fibril_host`/`fibril_net` with the router IP (/32), loads the
//!    datapath (pinned under `pin_dir`, reused across restarts), attaches
//!    `bpf_host` to the underlay and `fibril_host`, re-attaches restored
//!    endpoints, writes the ip-masq-agent prefixes, sets up the health
//!    endpoint (netns `<node netns>-health`, `lxc_health`, the health IP);
//! 5. publishes internal IP, router IP, health IP in the FibrilNode;
//! 6. keeps the ipcache and kernel routes in sync with the other FibrilNodes
//!    ([`sync`]), and serves the HTTP/JSON API on a unix socket ([`server`],
//!    types and client in [`api`]).
//!
//! The datapath state (pinned maps and links) survives the agent: pods keep
//! forwarding while it is down.
//!
//! Per pod the agent writes a FibrilEndpoint (`<ns>/<pod>`: endpoint id,
//! identity and its labels, address, node IP, container id), removed again
//! on DELETE, and keeps the FibrilNode's `status.ipam.used` current.
//!
//! Identities: the agent looks up a FibrilIdentity with the pod's security
//! labels in the store (allocated by the operator); when none exists yet it
//! uses a deterministic fallback id (FNV-1a of the sorted labels folded into
//! 256..=65535; the same hash family the operator tries first).

pub mod api;
pub mod flows;
pub mod format;
mod garp;
pub mod ipam;
pub mod metrics;
mod node;
mod persist;
pub mod server;
pub mod services;
pub mod sync;
pub mod testing;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fibril_api::fibril::{FibrilNodeSpec, NodeIpamSpec};
use fibril_api::{FibrilNode, Node};
use fibril_config::{Config, IpamMode};
use fibril_store::{SharedStore, StoreError, StoreExt};
use ipnet::{IpNet, Ipv4Net};
use tracing::{info, warn};

/// The datapath crate (map readers and formatters for the debug CLI).
pub use fibril_datapath;
pub use node::NodeState;

/// How to run one node's agent.
#[derive(Clone)]
pub struct AgentOptions {
    /// Node name (FibrilNode / Node name).
    pub node_name: String,
    /// Named network namespace of the node (`/run/netns/<name>`); the agent's
    /// own process may live elsewhere.
    pub netns: String,
    /// Underlay device (`eth1`).
    pub underlay_device: String,
    /// Node IP; default: the first IPv4 address of the underlay device.
    pub node_ip: Option<Ipv4Addr>,
    /// bpffs directory of this node (e.g. `/sys/fs/bpf/fibril/<lab>/<node>`).
    pub pin_dir: PathBuf,
    /// Where allocations and endpoints are persisted.
    pub state_dir: PathBuf,
    /// Unix socket of the endpoint API (e.g. `/run/fibril/<lab>/<node>/agent.sock`).
    pub socket_path: PathBuf,
    /// Cluster configuration.
    pub config: Config,
    /// Cluster store.
    pub store: SharedStore,
    /// Interval of the node sync loop.
    pub sync_interval: Duration,
    /// Namespace of the health endpoint (created if missing; `lxc_health` in
    /// the node netns, `eth0` with the health IP inside). `None`: no health endpoint.
    pub health_netns: Option<String>,
    /// Multi-pool: how long an IPAM request waits for the operator to hand
    /// this node a block of a pool without room before `range is full`.
    pub pool_wait: Duration,
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("node_name", &self.node_name)
            .field("netns", &self.netns)
            .field("pin_dir", &self.pin_dir)
            .field("state_dir", &self.state_dir)
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

impl AgentOptions {
    /// Options with the lab's defaults for the given node.
    pub fn new(
        node_name: &str,
        netns: &str,
        run_dir: PathBuf,
        pin_dir: PathBuf,
        config: Config,
        store: SharedStore,
    ) -> Self {
        Self {
            node_name: node_name.to_string(),
            netns: netns.to_string(),
            underlay_device: "eth1".into(),
            node_ip: None,
            pin_dir,
            state_dir: run_dir.join("state"),
            socket_path: run_dir.join("agent.sock"),
            config,
            store,
            sync_interval: Duration::from_millis(500),
            pool_wait: Duration::from_secs(5),
            health_netns: Some(format!("{netns}-health")),
        }
    }
}

/// Failures that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Netlink in the node netns.
    #[error("node netns {netns}: {source}")]
    Netlink {
        /// Namespace.
        netns: String,
        /// Cause.
        source: Box<fibril_netlink::NetlinkError>,
    },
    /// The datapath.
    #[error("datapath: {0}")]
    Datapath(#[from] Box<fibril_datapath::DatapathError>),
    /// The store.
    #[error("store: {0}")]
    Store(#[from] Box<StoreError>),
    /// Node IPAM.
    #[error("ipam: {0}")]
    Ipam(String),
    /// Configuration not usable by this agent.
    #[error("config: {0}")]
    Config(String),
    /// State dir, socket.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Shut down before being ready.
    #[error("shut down while {0}")]
    Interrupted(String),
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::Store(Box::new(e))
    }
}

impl From<fibril_datapath::DatapathError> for AgentError {
    fn from(e: fibril_datapath::DatapathError) -> Self {
        AgentError::Datapath(Box::new(e))
    }
}

impl AgentError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Shared handle on a running agent's state (for the server and sync loop).
pub type Shared = Arc<Mutex<NodeState>>;

/// Runs the agent until `shutdown` resolves. The datapath stays pinned and
/// forwarding afterwards.
pub async fn run(
    opts: AgentOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx.clone();

    // Underlay facts (blocking netlink).
    let o = opts.clone();
    let underlay = tokio::task::spawn_blocking(move || node::read_underlay(&o))
        .await
        .map_err(|e| AgentError::Config(format!("underlay task: {e}")))??;
    info!(node = %opts.node_name, node_ip = %underlay.node_ip, "agent starting");

    register_node(&opts, underlay.node_ip).await?;
    let cidrs = tokio::select! {
        r = wait_pod_cidrs(&opts) => r?,
        _ = stop.wait_for(|s| *s) => return Err(AgentError::Interrupted("waiting for pod CIDRs".into())),
    };
    info!(node = %opts.node_name, cidrs = ?cidrs, "pod CIDRs");

    let (cidrs, pools) = cidrs;
    let o = opts.clone();
    let state = tokio::task::spawn_blocking(move || NodeState::start(&o, underlay, &cidrs, &pools))
        .await
        .map_err(|e| AgentError::Config(format!("start task: {e}")))??;
    let (router_ip, health_ip, node_ip) = (state.router_ip, state.health_ip, state.node_ip);
    let shared: Shared = Arc::new(Mutex::new(state));

    let result = serve_node(&opts, &shared, stop_rx, node_ip, router_ip, health_ip).await;
    // The node state owns a netlink runtime, which must not be dropped in
    // async context: save and drop it on a blocking thread.
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(st) = shared.lock() {
            if let Err(e) = st.save() {
                warn!(error = %e, "saving state at shutdown");
            }
        }
        drop(shared);
    })
    .await;
    info!(node = %opts.node_name, "agent stopped");
    result
}

async fn serve_node(
    opts: &AgentOptions,
    shared: &Shared,
    stop_rx: tokio::sync::watch::Receiver<bool>,
    node_ip: Ipv4Addr,
    router_ip: Ipv4Addr,
    health_ip: Ipv4Addr,
) -> Result<(), AgentError> {
    publish_node(opts, node_ip, router_ip, health_ip).await?;
    let sync_task = tokio::spawn(sync::run(opts.clone(), shared.clone(), stop_rx.clone()));
    let gc_task = tokio::spawn(sync::gc_loop(
        shared.clone(),
        stop_rx.clone(),
        sync::GC_INTERVAL,
    ));
    let flows = Arc::new(flows::FlowHub::new(
        &opts.node_name,
        flows::RING_CAPACITY,
        flows::FOLLOW_BUFFER,
    ));
    let flows_task = tokio::spawn(flows::run(
        opts.clone(),
        shared.clone(),
        flows.clone(),
        stop_rx.clone(),
    ));
    let served = server::serve_with_flows(opts.clone(), shared.clone(), flows, stop_rx).await;
    // Stopped (or the server failed): the sync, GC and flow loops go too.
    sync_task.abort();
    gc_task.abort();
    flows_task.abort();
    let _ = sync_task.await;
    let _ = gc_task.await;
    let _ = flows_task.await;
    served
}

/// Creates the FibrilNode if missing (with its InternalIP).
async fn register_node(opts: &AgentOptions, node_ip: Ipv4Addr) -> Result<(), AgentError> {
    let store = &opts.store;
    if store
        .get_as::<FibrilNode>(None, &opts.node_name)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let spec = FibrilNodeSpec {
        addresses: vec![fibril_api::fibril::NodeAddress {
            ip: node_ip.into(),
            address_type: fibril_api::fibril::NodeAddressType::InternalIP,
        }],
        ..Default::default()
    };
    match store
        .create_as(&FibrilNode::new(&opts.node_name, spec))
        .await
    {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Pod CIDRs (cluster-pool, kubernetes) and pool blocks (multi-pool).
type NodeCidrs = (
    Vec<Ipv4Net>,
    std::collections::BTreeMap<String, Vec<Ipv4Net>>,
);

/// Polls the store until the node has pod CIDRs for the configured IPAM mode
/// (multi-pool: asks for the `default` pool first and waits for its blocks).
async fn wait_pod_cidrs(opts: &AgentOptions) -> Result<NodeCidrs, AgentError> {
    let mut warned = false;
    if opts.config.ipam.mode == IpamMode::MultiPool {
        let req = fibril_ipam::MultiPoolNode::default().request(std::time::Instant::now());
        update_fibril_node(opts, |n| {
            // Keep requests of a previous run (they cover restored addresses).
            let has = fibril_operator::requested_ipv4(n, fibril_ipam::DEFAULT_POOL).is_some();
            !has && fibril_operator::contract::apply_pool_request(n, &req)
        })
        .await?;
    }
    loop {
        if opts.config.ipam.mode == IpamMode::MultiPool {
            let node = opts
                .store
                .get_as::<FibrilNode>(None, &opts.node_name)
                .await?;
            let pools = node
                .as_ref()
                .map(fibril_operator::allocated_pools)
                .unwrap_or_default();
            if pools
                .get(fibril_ipam::DEFAULT_POOL)
                .is_some_and(|b| !b.is_empty())
            {
                return Ok((Vec::new(), pools));
            }
        } else {
            let cidrs = current_pod_cidrs(opts).await?;
            if !cidrs.is_empty() {
                return Ok((cidrs, Default::default()));
            }
        }
        if !warned {
            info!(node = %opts.node_name, mode = %opts.config.ipam.mode, "waiting for pod CIDRs");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node's pod CIDRs as the store has them now (kubernetes mode also
/// copies them into the FibrilNode).
pub(crate) async fn current_pod_cidrs(opts: &AgentOptions) -> Result<Vec<Ipv4Net>, AgentError> {
    match opts.config.ipam.mode {
        IpamMode::ClusterPool => {
            let node = opts
                .store
                .get_as::<FibrilNode>(None, &opts.node_name)
                .await?;
            Ok(node.as_ref().map(fibril_node_cidrs).unwrap_or_default())
        }
        IpamMode::Kubernetes => {
            let Some(node) = opts.store.get_as::<Node>(None, &opts.node_name).await? else {
                return Ok(Vec::new());
            };
            let spec = node.spec.unwrap_or_default();
            let mut raw = spec.pod_cidrs.unwrap_or_default();
            if raw.is_empty() {
                raw.extend(spec.pod_cidr);
            }
            let mut out = Vec::new();
            for s in raw {
                if s.contains(':') {
                    continue;
                }
                let net: Ipv4Net = s.parse().map_err(|e| {
                    AgentError::Config(format!("Node {} spec.podCIDRs {s:?}: {e}", opts.node_name))
                })?;
                out.push(net);
            }
            if !out.is_empty() {
                copy_cidrs_to_fibril_node(opts, &out).await?;
            }
            Ok(out)
        }
        // Pool blocks come through `spec.ipam.pools.allocated` (see sync).
        IpamMode::MultiPool => Ok(Vec::new()),
    }
}

/// IPv4 pod CIDRs of a FibrilNode (`spec.ipam.podCIDRs`).
pub fn fibril_node_cidrs(node: &FibrilNode) -> Vec<Ipv4Net> {
    node.spec
        .as_ref()
        .and_then(|s| s.ipam.as_ref())
        .map(|i| {
            i.pod_cidrs
                .iter()
                .filter_map(|c| match c {
                    IpNet::V4(n) => Some(*n),
                    IpNet::V6(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn copy_cidrs_to_fibril_node(
    opts: &AgentOptions,
    cidrs: &[Ipv4Net],
) -> Result<(), AgentError> {
    update_fibril_node(opts, |n| {
        let ipam = n
            .spec
            .get_or_insert_with(FibrilNodeSpec::default)
            .ipam
            .get_or_insert_with(NodeIpamSpec::default);
        let want: Vec<IpNet> = cidrs.iter().map(|c| IpNet::V4(*c)).collect();
        if ipam.pod_cidrs == want {
            return false;
        }
        ipam.pod_cidrs = want;
        true
    })
    .await
}

/// Read-modify-write of the node's FibrilNode at the revision read, retried
/// on conflicts. `f` returns whether it changed anything.
pub(crate) async fn update_fibril_node(
    opts: &AgentOptions,
    f: impl Fn(&mut FibrilNode) -> bool,
) -> Result<(), AgentError> {
    for _ in 0..20 {
        let Some(mut node) = opts
            .store
            .get_as::<FibrilNode>(None, &opts.node_name)
            .await?
        else {
            let mut node = FibrilNode::new(&opts.node_name, FibrilNodeSpec::default());
            f(&mut node);
            match opts.store.create_as(&node).await {
                Ok(_) => return Ok(()),
                Err(StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if !f(&mut node) {
            return Ok(());
        }
        match opts.store.update_as(&node).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AgentError::Config(format!(
        "FibrilNode {}: still conflicting after 20 attempts",
        opts.node_name
    )))
}

/// Writes internal IP, router IP (CiliumInternalIP) and health IP.
async fn publish_node(
    opts: &AgentOptions,
    node_ip: Ipv4Addr,
    router_ip: Ipv4Addr,
    health_ip: Ipv4Addr,
) -> Result<(), AgentError> {
    use fibril_api::fibril::{HealthAddressing, NodeAddress, NodeAddressType};
    update_fibril_node(opts, |n| {
        let spec = n.spec.get_or_insert_with(FibrilNodeSpec::default);
        let want = vec![
            NodeAddress {
                ip: node_ip.into(),
                address_type: NodeAddressType::InternalIP,
            },
            NodeAddress {
                ip: router_ip.into(),
                address_type: NodeAddressType::CiliumInternalIP,
            },
        ];
        let health = Some(HealthAddressing {
            ipv4: Some(health_ip),
            ipv6: None,
        });
        if spec.addresses == want && spec.health == health {
            return false;
        }
        spec.addresses = want;
        spec.health = health;
        true
    })
    .await
}
