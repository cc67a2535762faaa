//! The node's mutable state: IPAM, endpoints, the loaded datapath and the
//! netlink session in the node netns. Every method is blocking (netlink and
//! BPF syscalls); async callers use `spawn_blocking` while holding the mutex.
//!
//! The CNI calls (`allocate_shared`, `put_endpoint_shared`,
//! `delete_endpoint_shared`) hold the mutex only for the in-memory tables:
//! the BPF attach, map writes, netlink routes and the fsync of `state.json`
//! (coalesced by [`crate::persist::Saver`]) run without it, so concurrent
//! ADDs and DELs overlap. An address is released only after everything
//! that referred to it is gone, so it is never handed out twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::ipam::NodeIpam;
use fibril_abi::EndpointInfo;
use fibril_config::{Config, RoutingMode, TunnelProtocol};
use fibril_datapath::ipmasq::{self, IpMasqConfig};
use fibril_datapath::{Datapath, DatapathConfig, DatapathOptions, Device, Maps, Netns, Tunnel};
use fibril_ipam::{IpamError, MultiPoolNode, NodeAllocator, NodeAllocatorState, DEFAULT_POOL};
use fibril_netlink::{NetNs, Netlink, NetlinkError, Route};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::api::{
    self, ApiError, DeleteResponse, EndpointRecord, EndpointRequest, EndpointResponse,
    IpamResponse, StatusResponse,
};
use crate::persist::Saver;
use crate::{AgentError, AgentOptions, Shared};

/// Name of the host device holding the router IP.
pub const HOST_DEVICE: &str = "fibril_host";
/// Its veth peer.
pub const NET_DEVICE: &str = "fibril_net";

/// What the agent persists in `<state_dir>/state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PersistedState {
    /// Allocator CIDRs and allocations (single allocator; kept for older files).
    pub ipam: NodeAllocatorState,
    /// Every allocation with its pool.
    #[serde(default)]
    pub allocations: Vec<PoolAllocation>,
    /// Container id -> its address.
    pub containers: BTreeMap<String, Ipv4Addr>,
    /// Container id -> endpoint.
    pub endpoints: BTreeMap<String, EndpointRecord>,
}

/// One persisted allocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolAllocation {
    /// Pool (`default` outside multi-pool).
    pub pool: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Owner.
    pub owner: String,
}

/// Facts about the underlay device.
#[derive(Debug, Clone)]
pub struct Underlay {
    /// Node IP.
    pub node_ip: Ipv4Addr,
    /// Subnets of the underlay device (for autoDirectNodeRoutes).
    pub subnets: Vec<Ipv4Net>,
    /// MAC.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
}

fn nl_err(ns: &str) -> impl Fn(NetlinkError) -> AgentError + '_ {
    move |source| AgentError::Netlink {
        netns: ns.to_string(),
        source: Box::new(source),
    }
}

pub(crate) fn read_underlay(opts: &AgentOptions) -> Result<Underlay, AgentError> {
    let err = nl_err(&opts.netns);
    let ns = NetNs::open(&opts.netns).map_err(&err)?;
    let nl = ns.netlink().map_err(&err)?;
    let link = nl
        .link(&opts.underlay_device)
        .map_err(&err)?
        .ok_or_else(|| {
            AgentError::Config(format!(
                "underlay device {} not found in netns {}",
                opts.underlay_device, opts.netns
            ))
        })?;
    let subnets: Vec<Ipv4Net> = nl
        .addresses()
        .map_err(&err)?
        .into_iter()
        .filter(|a| a.ifname == opts.underlay_device)
        .filter_map(|a| match a.addr {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect();
    let node_ip = match opts.node_ip {
        Some(ip) => ip,
        None => subnets.first().map(|n| n.addr()).ok_or_else(|| {
            AgentError::Config(format!(
                "underlay device {} has no IPv4 address",
                opts.underlay_device
            ))
        })?,
    };
    Ok(Underlay {
        node_ip,
        subnets: subnets.iter().map(|n| n.trunc()).collect(),
        mac: link.mac.unwrap_or_default(),
        mtu: link.mtu,
    })
}

/// A running node.
pub struct NodeState {
    pub(crate) node_name: String,
    pub(crate) netns: String,
    pub(crate) nl: Netlink,
    /// Its own lock: attaching runs outside the node lock.
    pub(crate) dp: Arc<Mutex<Datapath>>,
    pin_dir: PathBuf,
    /// Netlink sessions for work done outside the node lock.
    nl_pool: Arc<NlPool>,
    saver: Arc<Saver>,
    /// Endpoint ids handed to PUTs still attaching (not yet in `endpoints`).
    reserved_ids: BTreeSet<u16>,
    /// Containers with a PUT or DELETE in progress (one at a time each).
    busy: BTreeSet<String>,
    /// Signalled (with the node mutex) when a container leaves `busy`.
    idle: Arc<Condvar>,
    pub(crate) maps: Maps,
    pub(crate) alloc: NodeIpam,
    pub(crate) containers: BTreeMap<String, Ipv4Addr>,
    pub(crate) endpoints: BTreeMap<String, EndpointRecord>,
    /// Router IP.
    pub router_ip: Ipv4Addr,
    /// Health IP.
    pub health_ip: Ipv4Addr,
    /// Node IP.
    pub node_ip: Ipv4Addr,
    pub(crate) underlay: Underlay,
    pub(crate) underlay_device: String,
    pub(crate) pod_mtu: u32,
    pub(crate) config: Config,
    pub(crate) tunnel: Tunnel,
    /// Remote nodes as last applied: name -> (node IP, pod CIDRs).
    pub(crate) remote: BTreeMap<String, (Ipv4Addr, Vec<Ipv4Net>)>,
    /// Routes installed for remote pod CIDRs.
    pub(crate) routes: BTreeMap<Ipv4Net, Route>,
    /// Containers refused with `range is full` (-> their pool) since the pool last had room.
    pub(crate) starved: BTreeMap<String, String>,
    /// The ip-masq-agent ConfigMap text last applied (`None`: the config's values).
    ipmasq_applied: Option<Option<String>>,
    /// Services programmed (kube-proxy replacement on; `None` otherwise or
    /// when the LB maps could not be opened).
    pub(crate) services: Option<crate::services::ServiceSync>,
    /// Remote pod /32s in the ipcache: IP -> (identity, node IP).
    pub(crate) remote_pods: BTreeMap<Ipv4Addr, (u32, Ipv4Addr)>,
    /// Counters for `/metrics` and `status`.
    pub(crate) stats: crate::metrics::AgentStats,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("node", &self.node_name)
            .field("router_ip", &self.router_ip)
            .finish_non_exhaustive()
    }
}

fn tunnel_of(config: &Config) -> Tunnel {
    match config.routing_mode {
        RoutingMode::Native => Tunnel::Disabled,
        RoutingMode::Tunnel => {
            let port = config.effective_tunnel_port();
            match config.tunnel_protocol {
                TunnelProtocol::Vxlan => Tunnel::Vxlan { port },
                TunnelProtocol::Geneve => Tunnel::Geneve { port },
            }
        }
    }
}

fn ipam_err(e: IpamError) -> AgentError {
    AgentError::Ipam(e.to_string())
}

impl NodeState {
    /// Restores state, allocates router/health IPs, sets up devices and the datapath.
    pub(crate) fn start(
        opts: &AgentOptions,
        underlay: Underlay,
        cidrs: &[Ipv4Net],
        pools: &BTreeMap<String, Vec<Ipv4Net>>,
    ) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|e| AgentError::io(format!("create {}", opts.state_dir.display()), e))?;
        let state_path = opts.state_dir.join("state.json");
        let saved: PersistedState = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                AgentError::Config(format!("state file {}: {e}", state_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PersistedState::default(),
            Err(e) => return Err(AgentError::io(format!("read {}", state_path.display()), e)),
        };

        // IPAM: the node's CIDRs (or pool blocks), then the saved allocations.
        let mut alloc = match opts.config.ipam.mode {
            fibril_config::IpamMode::MultiPool => {
                let mut m = MultiPoolNode::default();
                if let Err(e) = m.sync(pools) {
                    warn!(error = %e, "pool blocks");
                }
                NodeIpam::Multi(Box::new(m))
            }
            _ => NodeIpam::Single(
                NodeAllocator::with_cidrs(cidrs.iter().copied()).map_err(ipam_err)?,
            ),
        };
        let saved_allocs: Vec<(String, Ipv4Addr, String)> = if saved.allocations.is_empty() {
            saved
                .ipam
                .allocations
                .iter()
                .map(|a| (DEFAULT_POOL.to_string(), a.ip, a.owner.clone()))
                .collect()
        } else {
            saved
                .allocations
                .iter()
                .map(|a| (a.pool.clone(), a.ip, a.owner.clone()))
                .collect()
        };
        alloc.restore(&saved_allocs);
        let containers: BTreeMap<String, Ipv4Addr> = saved
            .containers
            .into_iter()
            .filter(|(_, ip)| alloc.is_allocated(*ip))
            .collect();
        let router_ip = match alloc.addresses_of("router").first() {
            Some(ip) => *ip,
            None => alloc.allocate(DEFAULT_POOL, "router").map_err(ipam_err)?,
        };
        let health_ip = match alloc.addresses_of("health").first() {
            Some(ip) => *ip,
            None => alloc.allocate(DEFAULT_POOL, "health").map_err(ipam_err)?,
        };

        let config = opts.config.clone();
        let tunnel = tunnel_of(&config);
        let pod_mtu = if matches!(tunnel, Tunnel::Disabled) {
            underlay.mtu
        } else {
            underlay.mtu.saturating_sub(fibril_datapath::ENCAP_OVERHEAD)
        };

        let err = nl_err(&opts.netns);
        let ns = NetNs::open(&opts.netns).map_err(&err)?;
        let nl = ns.netlink().map_err(&err)?;
        ns.set_sysctl("net/ipv4/ip_forward", "1").map_err(&err)?;
        setup_host_device(&ns, &nl, router_ip, !matches!(tunnel, Tunnel::Disabled))?;

        let dp_config = DatapathConfig {
            node_ip: underlay.node_ip,
            router_ip,
            underlay_device: Device::Name(opts.underlay_device.clone()),
            host_device: Device::Name(HOST_DEVICE.into()),
            node_mac: underlay.mac,
            native_routing_cidr: config
                .ipv4_native_routing_cidr
                .map(|n| (n.network(), n.prefix_len())),
            tunnel,
            masquerade: config.masquerading(),
            masq_link_local: config.ip_masq_agent.masq_link_local,
            load_balancing: config.kube_proxy_replacement,
            pod_mtu,
            ..Default::default()
        };
        let mut dp = Datapath::load(DatapathOptions {
            pin_dir: opts.pin_dir.clone(),
            netns: Netns::named(&opts.netns),
            config: dp_config,
        })?;
        let replaced = dp.replace_pinned()?;
        dp.attach_underlay(&opts.underlay_device)?;
        dp.attach_host_device(HOST_DEVICE)?;
        let maps = dp.maps();

        // Endpoints whose veth still exists come back; the others are gone
        // (pod deleted while the agent was down) and release their address.
        let mut endpoints = BTreeMap::new();
        let mut containers = containers;
        for (cid, mut rec) in saved.endpoints {
            let alive = nl.link(&rec.spec.host_ifname).ok().flatten();
            match alive {
                Some(link) if containers.get(&cid) == Some(&rec.ip) => {
                    rec.restored = true;
                    rec.spec.host_ifindex = link.index;
                    if let Err(e) = dp.attach_endpoint(&rec.spec.host_ifname) {
                        warn!(container = %cid, error = %e, "re-attach endpoint");
                    }
                    endpoints.insert(cid, rec);
                }
                _ => {
                    info!(container = %cid, ip = %rec.ip, "endpoint gone while the agent was down");
                    let _ = Datapath::detach_interface(&opts.pin_dir, &rec.spec.host_ifname);
                    if let Ok(mut m) = maps.endpoints() {
                        let _ = m.delete(rec.ip);
                    }
                    let _ = alloc.release(rec.ip);
                    containers.remove(&cid);
                }
            }
        }
        info!(
            restored_links = replaced.len(),
            endpoints = endpoints.len(),
            "datapath attached"
        );

        let st = NodeState {
            node_name: opts.node_name.clone(),
            netns: opts.netns.clone(),
            nl,
            dp: Arc::new(Mutex::new(dp)),
            pin_dir: opts.pin_dir.clone(),
            nl_pool: Arc::new(NlPool::new(&opts.netns)),
            saver: Arc::new(Saver::new(state_path)),
            reserved_ids: BTreeSet::new(),
            busy: BTreeSet::new(),
            idle: Arc::new(Condvar::new()),
            maps,
            alloc,
            containers,
            endpoints,
            router_ip,
            health_ip,
            node_ip: underlay.node_ip,
            underlay,
            underlay_device: opts.underlay_device.clone(),
            pod_mtu,
            config,
            tunnel,
            remote: BTreeMap::new(),
            routes: BTreeMap::new(),
            starved: BTreeMap::new(),
            ipmasq_applied: None,
            services: None,
            remote_pods: BTreeMap::new(),
            stats: Default::default(),
        };
        let mut st = st;
        if st.config.kube_proxy_replacement {
            // Node -> ClusterIP is translated on the underlay's egress
            // (docs/datapath-lb.md): the service CIDR must route out of it,
            // and replies of local backends come back through a pod veth
            // with the service IP as source (strict rp_filter would drop them).
            for key in [
                "net/ipv4/conf/all/rp_filter",
                "net/ipv4/conf/default/rp_filter",
            ] {
                if let Err(e) = ns.set_sysctl(key, "0") {
                    warn!(%key, error = %e, "rp_filter");
                }
            }
            st.route_service_cidr();
            match crate::services::ServiceSync::open(&st.maps) {
                Ok(s) => {
                    info!(services = s.len(), "load-balancing maps opened");
                    st.services = Some(s);
                }
                Err(e) => warn!(error = %e, "load-balancing maps: services not synced"),
            }
        }
        st.apply_ipmasq(None);
        if let Some(hn) = &opts.health_netns {
            if let Err(e) = st.setup_health(hn) {
                warn!(netns = %hn, error = %e, "health endpoint");
            }
        }
        st.save()?;
        Ok(st)
    }

    /// The health endpoint: namespace `name` with `eth0` holding the health
    /// IP (default route via the router IP), `lxc_health` in the node netns
    /// with `bpf_lxc`, a `fibril_endpoints` entry flagged HEALTH and the /32
    /// route. Idempotent (reused after a restart).
    fn setup_health(&mut self, name: &str) -> Result<(), AgentError> {
        const HOST_IF: &str = "lxc_health";
        let err = nl_err(name);
        let hns = if fibril_netlink::netns_exists(name) {
            NetNs::open(name).map_err(&err)?
        } else {
            NetNs::create(name).map_err(&err)?
        };
        let hnl = hns.netlink().map_err(&err)?;
        let node_err = nl_err(&self.netns);
        if self.nl.link(HOST_IF).map_err(&node_err)?.is_none() {
            if hnl.link("eth0").map_err(&err)?.is_some() {
                hnl.delete_link("eth0").map_err(&err)?;
            }
            self.nl
                .add_veth(HOST_IF, "eth0", Some(&hns), Some(self.pod_mtu))
                .map_err(&node_err)?;
            hnl.add_address("eth0", IpNet::V4(Ipv4Net::from(self.health_ip)))
                .map_err(&err)?;
            hnl.set_up("eth0").map_err(&err)?;
            let _ = hnl.set_up("lo");
            hnl.add_route(
                &Route::via(Ipv4Net::default(), self.router_ip)
                    .with_dev("eth0")
                    .onlink(),
            )
            .map_err(&err)?;
        }
        self.nl.set_up(HOST_IF).map_err(&node_err)?;
        let host = self
            .nl
            .link(HOST_IF)
            .map_err(&node_err)?
            .ok_or_else(|| AgentError::Config(format!("{HOST_IF} vanished")))?;
        let pod = hnl
            .link("eth0")
            .map_err(&err)?
            .ok_or_else(|| AgentError::Config(format!("eth0 in {name} vanished")))?;
        self.dp
            .lock()
            .map_err(|_| AgentError::Config("datapath lock poisoned".into()))?
            .attach_endpoint(HOST_IF)?;
        let info = EndpointInfo {
            ifindex: host.index,
            sec_identity: fibril_abi::identity::HEALTH,
            ep_id: u16::MAX,
            flags: fibril_abi::endpoint_flags::HEALTH,
            mac: pod.mac.unwrap_or_default(),
            node_mac: host.mac.unwrap_or_default(),
        };
        self.maps.endpoints()?.upsert(self.health_ip, &info)?;
        self.nl
            .replace_route(&Route::dev(Ipv4Net::from(self.health_ip), HOST_IF))
            .map_err(&node_err)?;
        info!(ip = %self.health_ip, netns = %name, "health endpoint ready");
        Ok(())
    }

    /// Syncs `fibril_ipmasq` with the `kube-system/ip-masq-agent` ConfigMap's
    /// `config` text, or with the config's `ipMasqAgent.config.*` values when
    /// there is no ConfigMap. No-op when unchanged.
    pub(crate) fn apply_ipmasq(&mut self, configmap: Option<String>) {
        if self.ipmasq_applied.as_ref() == Some(&configmap) {
            return;
        }
        let cfg = match &configmap {
            Some(text) => match IpMasqConfig::parse(text) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "kube-system/ip-masq-agent: config ignored");
                    self.ipmasq_applied = Some(configmap);
                    return;
                }
            },
            None => IpMasqConfig::from_ipv4nets(
                self.config.ip_masq_agent.non_masquerade_cidrs.as_deref(),
                self.config.ip_masq_agent.masq_link_local,
            ),
        };
        match ipmasq::apply(&self.maps, self.config.ip_masq_agent.enabled, &cfg) {
            Ok(_) => {
                info!(
                    from_configmap = configmap.is_some(),
                    "ip-masq-agent prefixes applied"
                );
                self.ipmasq_applied = Some(configmap);
            }
            Err(e) => warn!(error = %e, "ip-masq-agent prefixes"),
        }
    }

    /// Writes `state.json` atomically and durably (waits for the writer).
    pub fn save(&self) -> Result<(), AgentError> {
        let gen = self.stage();
        self.saver
            .wait(gen)
            .map_err(|e| AgentError::Config(format!("saving state: {e}")))
    }

    /// Hands the current state to the writer; returns its generation.
    fn stage(&self) -> u64 {
        self.saver.stage(self.persisted())
    }

    fn persisted(&self) -> PersistedState {
        PersistedState {
            ipam: self.alloc.single_state(),
            allocations: self
                .alloc
                .allocations_with_pool()
                .into_iter()
                .map(|(pool, a)| PoolAllocation {
                    pool,
                    ip: a.ip,
                    owner: a.owner,
                })
                .collect(),
            containers: self.containers.clone(),
            endpoints: self.endpoints.clone(),
        }
    }

    fn save_api(&self) -> Result<(), ApiError> {
        self.save().map_err(|e| internal(e.to_string()))
    }

    /// Adds pod CIDRs given to the node later (extra cluster-pool blocks).
    pub(crate) fn add_cidrs(&mut self, cidrs: &[Ipv4Net]) {
        for c in cidrs {
            match self.alloc.add_cidr(*c) {
                Ok(true) => info!(cidr = %c, "pod CIDR added"),
                Ok(false) => {}
                Err(e) => warn!(cidr = %c, error = %e, "pod CIDR not added"),
            }
        }
    }

    /// `POST /v1/ipam` with the node lock held throughout (saves too).
    pub fn allocate(
        &mut self,
        container_id: &str,
        owner: &str,
        pool: &str,
    ) -> Result<IpamResponse, ApiError> {
        let (r, fresh) = self.allocate_locked(container_id, owner, pool)?;
        if fresh {
            self.save_api()?;
        }
        Ok(r)
    }

    /// The in-memory part of an allocation; `true` when the address is new
    /// (and must be saved before it is handed out).
    fn allocate_locked(
        &mut self,
        container_id: &str,
        owner: &str,
        pool: &str,
    ) -> Result<(IpamResponse, bool), ApiError> {
        let (ip, fresh) = match self.containers.get(container_id) {
            Some(ip) => (*ip, false),
            None => {
                let ip = match self.alloc.allocate(pool, owner) {
                    Ok(ip) => ip,
                    Err(e @ IpamError::RangeFull { .. }) => {
                        self.starved
                            .insert(container_id.to_string(), pool.to_string());
                        let pending = self.starved.values().filter(|p| p.as_str() == pool).count();
                        self.alloc.set_pending(pool, pending as u64);
                        return Err(ApiError {
                            kind: "range-full".into(),
                            message: e.to_string(),
                        });
                    }
                    Err(e @ IpamError::UnknownPool { .. }) => return Err(bad(e.to_string())),
                    Err(e) => return Err(internal(e.to_string())),
                };
                self.starved.remove(container_id);
                self.containers.insert(container_id.to_string(), ip);
                (ip, true)
            }
        };
        let pod_cidr = self
            .alloc
            .cidrs()
            .into_iter()
            .find(|c| c.contains(&ip))
            .map(|c| c.to_string())
            .unwrap_or_default();
        Ok((
            IpamResponse {
                ip,
                gateway: self.router_ip,
                mtu: self.pod_mtu,
                pod_cidr,
                node_netns: self.netns.clone(),
            },
            fresh,
        ))
    }

    fn next_endpoint_id(&self) -> u16 {
        let used: BTreeSet<u16> = self.endpoints.values().map(|e| e.id).collect();
        (1..u16::MAX)
            .find(|i| !used.contains(i) && !self.reserved_ids.contains(i))
            .unwrap_or(u16::MAX)
    }

    /// Handles for the work done without the node lock.
    fn handles(&self) -> Handles {
        Handles {
            dp: self.dp.clone(),
            pin_dir: self.pin_dir.clone(),
            maps: self.maps.clone(),
            nl: self.nl_pool.clone(),
            saver: self.saver.clone(),
        }
    }

    fn unbusy(&mut self, container_id: &str) {
        self.busy.remove(container_id);
        self.idle.notify_all();
    }

    /// Checks a PUT and picks (reserves) its endpoint id.
    fn put_begin(
        &mut self,
        container_id: &str,
        req: &EndpointRequest,
    ) -> Result<PutPlan, ApiError> {
        let ip = *self.containers.get(container_id).ok_or_else(|| ApiError {
            kind: "not-found".into(),
            message: format!("container {container_id} has no address (call /v1/ipam first)"),
        })?;
        if let Some(want) = req.ip {
            if want != ip {
                return Err(bad(format!(
                    "container {container_id}: ip {want} does not match its allocation {ip}"
                )));
            }
        }
        let pod_mac = api::parse_mac(&req.pod_mac)
            .ok_or_else(|| bad(format!("pod_mac {:?} is not a MAC", req.pod_mac)))?;
        let host_mac = api::parse_mac(&req.host_mac)
            .ok_or_else(|| bad(format!("host_mac {:?} is not a MAC", req.host_mac)))?;
        let (id, existed) = match self.endpoints.get(container_id) {
            Some(e) => (e.id, true),
            None => {
                let id = self.next_endpoint_id();
                self.reserved_ids.insert(id);
                (id, false)
            }
        };
        Ok(PutPlan {
            ip,
            id,
            existed,
            pod_mac,
            host_mac,
        })
    }

    /// Records a PUT whose datapath work is done; returns the save generation.
    fn put_finish(
        &mut self,
        container_id: &str,
        plan: &PutPlan,
        req: EndpointRequest,
        identity: u32,
    ) -> Result<u64, ApiError> {
        if self.containers.get(container_id) != Some(&plan.ip) {
            return Err(ApiError {
                kind: "not-found".into(),
                message: format!(
                    "container {container_id} lost its address {} while attaching",
                    plan.ip
                ),
            });
        }
        self.endpoints.insert(
            container_id.to_string(),
            EndpointRecord {
                container_id: container_id.to_string(),
                id: plan.id,
                ip: plan.ip,
                identity,
                spec: req,
                restored: false,
            },
        );
        Ok(self.stage())
    }

    /// `PUT /v1/endpoints/{id}` with the node lock held throughout (saves too).
    pub fn put_endpoint(
        &mut self,
        container_id: &str,
        req: EndpointRequest,
        identity: u32,
    ) -> Result<EndpointResponse, ApiError> {
        let plan = self.put_begin(container_id, &req)?;
        let h = self.handles();
        let done = put_datapath(&h, &plan, &req, identity);
        self.reserved_ids.remove(&plan.id);
        done?;
        let gen = match self.put_finish(container_id, &plan, req.clone(), identity) {
            Ok(g) => g,
            Err(e) => {
                undo_datapath(&h, plan.ip, &req.host_ifname);
                return Err(e);
            }
        };
        h.saver
            .wait(gen)
            .map_err(|e| internal(format!("saving state: {e}")))?;
        Ok(EndpointResponse {
            id: plan.id,
            identity,
        })
    }

    /// Takes a container out of the tables; its address stays allocated
    /// until [`NodeState::delete_finish`] (after the datapath forgot it).
    fn delete_begin(&mut self, container_id: &str) -> DelPlan {
        let rec = self.endpoints.remove(container_id);
        let ip = self
            .containers
            .remove(container_id)
            .or(rec.as_ref().map(|r| r.ip));
        let ifname = rec
            .as_ref()
            .map(|r| r.spec.host_ifname.clone())
            .unwrap_or_else(|| api::host_ifname(container_id));
        DelPlan {
            existed: rec.is_some() || ip.is_some(),
            ip,
            ifname,
        }
    }

    /// Releases the address of a deleted container; `Some(generation)` when
    /// the state changed.
    fn delete_finish(&mut self, plan: &DelPlan) -> (DeleteResponse, Option<u64>) {
        let mut released = None;
        if let Some(ip) = plan.ip {
            if self.alloc.release(ip).is_ok() {
                released = Some(ip);
            }
        }
        let gen = plan.existed.then(|| self.stage());
        (
            DeleteResponse {
                existed: plan.existed,
                released,
            },
            gen,
        )
    }

    /// `DELETE /v1/endpoints/{id}` with the node lock held throughout:
    /// idempotent.
    pub fn delete_endpoint(&mut self, container_id: &str) -> Result<DeleteResponse, ApiError> {
        let (r, gen) = self.delete_locked(container_id);
        if let Some(gen) = gen {
            self.saver
                .wait(gen)
                .map_err(|e| internal(format!("saving state: {e}")))?;
        }
        Ok(r)
    }

    fn delete_locked(&mut self, container_id: &str) -> (DeleteResponse, Option<u64>) {
        let plan = self.delete_begin(container_id);
        delete_datapath(&self.handles(), &plan);
        self.delete_finish(&plan)
    }

    /// `POST /v1/gc`. Containers with a call in progress are left to the next GC.
    pub fn gc(&mut self, valid: &[String]) -> Result<Vec<String>, ApiError> {
        let valid: BTreeSet<&str> = valid.iter().map(String::as_str).collect();
        let stale: Vec<String> = self
            .containers
            .keys()
            .chain(self.endpoints.keys())
            .filter(|c| !valid.contains(c.as_str()) && !self.busy.contains(*c))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut last = None;
        for c in &stale {
            if let (_, Some(gen)) = self.delete_locked(c) {
                last = Some(gen);
            }
        }
        if let Some(gen) = last {
            self.saver
                .wait(gen)
                .map_err(|e| internal(format!("saving state: {e}")))?;
        }
        Ok(stale)
    }

    /// `GET /v1/endpoints`.
    pub fn endpoint_list(&self) -> Vec<EndpointRecord> {
        self.endpoints.values().cloned().collect()
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> StatusResponse {
        let mut allocations: Vec<_> = self.alloc.allocations();
        allocations.sort_by_key(|a| a.ip);
        let routing = match self.tunnel {
            Tunnel::Disabled => "Network: Native   Host: BPF".to_string(),
            t => format!("Network: {}   Host: BPF", t.status_line()),
        };
        let masquerading = if self.config.masquerading() {
            let cidr = self
                .config
                .ipv4_native_routing_cidr
                .map(|c| format!("   {c}"))
                .unwrap_or_default();
            format!(
                "BPF   [{}]{cidr} [IPv4: Enabled, IPv6: Disabled]",
                self.underlay_device
            )
        } else {
            "Disabled".to_string()
        };
        let kpr = if self.config.kube_proxy_replacement {
            format!(
                "True   [{}   {} (Direct Routing)]",
                self.underlay_device, self.node_ip
            )
        } else {
            "False".to_string()
        };
        StatusResponse {
            node: self.node_name.clone(),
            ipam: self.alloc.status_line(),
            allocations: allocations.iter().map(|a| a.to_string()).collect(),
            free: self.alloc.free(),
            routing,
            masquerading,
            kube_proxy_replacement: kpr,
            router_ip: Some(self.router_ip),
            health_ip: Some(self.health_ip),
            node_ip: Some(self.node_ip),
            endpoints: self.endpoints.len(),
            services: self.services.as_ref().map_or(0, |s| s.len()),
            announced: self
                .services
                .as_ref()
                .map(|s| s.announced.iter().copied().collect())
                .unwrap_or_default(),
            stats: self.stats,
            maps: crate::metrics::map_fill(self.maps.dir()),
            datapath: fibril_datapath::DatapathStatus::read(self.maps.dir())
                .map(|d| d.to_string())
                .unwrap_or_else(|e| format!("unavailable: {e}")),
            routing_mode: self.config.routing_mode.to_string(),
            store: String::new(),
        }
    }

    /// `GET /v1/services`: the programmed frontends with their owners.
    pub fn service_entries(&self) -> Vec<api::ServiceEntry> {
        let Some(svc) = &self.services else {
            return Vec::new();
        };
        let dump = fibril_datapath::LbDump::read(&self.maps).ok();
        svc.applied()
            .iter()
            .map(|(fe, w)| api::ServiceEntry {
                id: dump
                    .as_ref()
                    .and_then(|d| d.services.iter().find(|s| s.frontend == *fe))
                    .map_or(0, |s| s.rev_nat),
                frontend: fe.to_string(),
                service_type: w.spec.svc_type.to_string(),
                owner: w.owner.clone(),
                backends: w
                    .spec
                    .backends
                    .iter()
                    .map(|b| {
                        let mut t = format!("{}:{}/{}", b.addr, b.port, fe.proto);
                        if b.local {
                            t.push_str(" (local)");
                        }
                        if b.terminating {
                            t.push_str(" (terminating)");
                        }
                        t
                    })
                    .collect(),
            })
            .collect()
    }

    /// LRPs of the last sync.
    pub fn lrp_list(&self) -> Vec<crate::services::LrpStatus> {
        self.services
            .as_ref()
            .map(|s| s.lrps.clone())
            .unwrap_or_default()
    }

    /// Local endpoints for `endpoint list` (identity labels filled by the server).
    pub fn endpoint_entries(&self) -> Vec<api::EndpointListEntry> {
        let mut v: Vec<api::EndpointListEntry> = self
            .endpoints
            .values()
            .map(|e| {
                let ns = if e.spec.pod_namespace.is_empty() {
                    "default"
                } else {
                    &e.spec.pod_namespace
                };
                api::EndpointListEntry {
                    id: u32::from(e.id),
                    identity: e.identity,
                    labels: Vec::new(),
                    ipv4: Some(e.ip),
                    status: "ready".into(),
                    pod: if e.spec.pod_name.is_empty() {
                        String::new()
                    } else {
                        format!("{ns}/{}", e.spec.pod_name)
                    },
                    policy: ("Disabled".into(), "Disabled".into()),
                }
            })
            .collect();
        v.push(api::EndpointListEntry {
            id: u32::from(u16::MAX),
            identity: fibril_abi::identity::HEALTH,
            labels: vec!["reserved:health".into()],
            ipv4: Some(self.health_ip),
            status: "ready".into(),
            pod: String::new(),
            policy: ("Disabled".into(), "Disabled".into()),
        });
        v.sort_by_key(|e| e.id);
        v
    }

    /// Ipcache and local endpoints for `ip list`: (prefix, identity, source).
    pub fn ip_entries(&self) -> Vec<(String, u32, String)> {
        let mut v = Vec::new();
        v.push((
            "0.0.0.0/0".to_string(),
            fibril_abi::identity::WORLD,
            "reserved".to_string(),
        ));
        v.push((
            format!("{}/32", self.node_ip),
            fibril_abi::identity::HOST,
            "generated".into(),
        ));
        v.push((
            format!("{}/32", self.router_ip),
            fibril_abi::identity::HOST,
            "generated".into(),
        ));
        if let Ok(list) = self.maps.endpoints().and_then(|m| m.list()) {
            for (ip, info) in list {
                v.push((format!("{ip}/32"), info.sec_identity, "local".into()));
            }
        }
        if let Ok(ipc) = self.maps.ipcache().and_then(|m| m.entries()) {
            for (p, val) in ipc {
                v.push((p.to_string(), val.sec_identity, "custom-resource".into()));
            }
        }
        v
    }

    /// Cluster-pool demand for the operator (`spec.ipam.pools.requested`):
    /// `used + refused` while the node is out of addresses and pods were
    /// refused, `None` once there is room again.
    pub(crate) fn cluster_pool_demand(&mut self) -> Option<u64> {
        if matches!(self.alloc, NodeIpam::Multi(_)) {
            return None;
        }
        if self.alloc.free() > 0 {
            self.starved.clear();
            return None;
        }
        if self.starved.is_empty() {
            return None;
        }
        Some(u64::from(self.alloc.used()) + self.starved.len() as u64)
    }

    /// Multi-pool: applies the operator's blocks, forgets refused pods of pools
    /// that have room again, and returns the request to publish.
    pub(crate) fn multi_pool_round(
        &mut self,
        allocated: &BTreeMap<String, Vec<Ipv4Net>>,
    ) -> Option<fibril_ipam::NodePoolRequest> {
        if !matches!(self.alloc, NodeIpam::Multi(_)) {
            return None;
        }
        self.alloc.sync_pools(allocated);
        let pools: BTreeSet<String> = self.starved.values().cloned().collect();
        for pool in pools {
            if self.alloc.free_in(&pool) > 0 {
                self.starved.retain(|_, p| *p != pool);
                self.alloc.set_pending(&pool, 0);
            }
        }
        self.alloc.pool_request(std::time::Instant::now())
    }

    /// `status.ipam.used` of the FibrilNode: address -> owner.
    pub(crate) fn used_map(&self) -> BTreeMap<std::net::IpAddr, fibril_api::fibril::AllocationIp> {
        self.alloc
            .allocations()
            .into_iter()
            .map(|a| {
                (
                    std::net::IpAddr::V4(a.ip),
                    fibril_api::fibril::AllocationIp {
                        owner: Some(a.owner),
                        resource: Some(self.node_name.clone()),
                    },
                )
            })
            .collect()
    }

    /// `k8sServiceCIDR via <gateway> dev <underlay>`, the gateway being the
    /// first one the node already uses on the underlay (no route when the
    /// node has none: node -> ClusterIP then does not work).
    fn route_service_cidr(&mut self) {
        let cidr = self.config.k8s_service_cidr;
        let routes = match self.nl.routes() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "listing routes");
                return;
            }
        };
        let gw = routes
            .iter()
            .filter(|r| r.table == 254 && r.oif.as_deref() == Some(self.underlay_device.as_str()))
            .filter_map(|r| r.via.map(|v| (r.dst.prefix_len(), v)))
            .min_by_key(|(len, _)| *len)
            .map(|(_, v)| v);
        let Some(gw) = gw else {
            info!(%cidr, "no gateway on the underlay: no service CIDR route");
            return;
        };
        let route = Route::via(cidr, gw).with_dev(&self.underlay_device);
        match self.nl.replace_route(&route) {
            Ok(()) => info!(%route, "service CIDR route"),
            Err(e) => warn!(%route, error = %e, "service CIDR route"),
        }
    }

    /// L2 announcement of LoadBalancer IPs: `want` as /32 addresses on
    /// `fibril_host` (the kernel then answers ARP for them on the underlay),
    /// others removed. Addresses of a previous agent are found on the device.
    pub(crate) fn apply_announce(&mut self, want: &BTreeSet<Ipv4Addr>) {
        let Some(svc) = self.services.as_mut() else {
            return;
        };
        if !svc.announce_loaded {
            svc.announce_loaded = true;
            if let Ok(addrs) = self.nl.addresses() {
                for a in addrs {
                    if let (true, IpNet::V4(n)) = (a.ifname == HOST_DEVICE, a.addr) {
                        if n.prefix_len() == 32 && n.addr() != self.router_ip {
                            svc.announced.insert(n.addr());
                        }
                    }
                }
            }
        }
        if &svc.announced == want {
            return;
        }
        for ip in want.difference(&svc.announced.clone()) {
            match self
                .nl
                .add_address(HOST_DEVICE, IpNet::V4(Ipv4Net::from(*ip)))
            {
                Ok(()) => {
                    info!(%ip, "announcing LoadBalancer IP");
                    svc.announced.insert(*ip);
                    // Neighbours that learnt another node's MAC for it
                    // (announcer moved) update at once.
                    let r = NetNs::open(&self.netns).map(|ns| {
                        crate::garp::send(&ns, &self.underlay_device, self.underlay.mac, *ip)
                    });
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!(%ip, error = %e, "gratuitous ARP"),
                        Err(e) => warn!(%ip, error = %e, "gratuitous ARP"),
                    }
                }
                Err(e) if e.is_errno(libc::EEXIST) => {
                    svc.announced.insert(*ip);
                }
                Err(e) => warn!(%ip, error = %e, "announcing LoadBalancer IP"),
            }
        }
        let stale: Vec<Ipv4Addr> = svc.announced.difference(want).copied().collect();
        for ip in stale {
            let r = NetNs::open(&self.netns)
                .and_then(|ns| ns.command("ip"))
                .map(|mut c| {
                    c.args(["addr", "del", &format!("{ip}/32"), "dev", HOST_DEVICE])
                        .output()
                });
            match r {
                Ok(Ok(o)) if o.status.success() => {
                    info!(%ip, "LoadBalancer IP no longer announced");
                    svc.announced.remove(&ip);
                }
                Ok(Ok(o)) => {
                    warn!(%ip, stderr = %String::from_utf8_lossy(&o.stderr), "removing announced IP");
                    svc.announced.remove(&ip);
                }
                Ok(Err(e)) => warn!(%ip, error = %e, "removing announced IP"),
                Err(e) => warn!(%ip, error = %e, "removing announced IP"),
            }
        }
    }

    /// Whether `ip` is on a subnet of the underlay device.
    pub(crate) fn directly_connected(&self, ip: Ipv4Addr) -> bool {
        self.underlay.subnets.iter().any(|n| n.contains(&ip))
    }
}

fn setup_host_device(
    ns: &NetNs,
    nl: &Netlink,
    router_ip: Ipv4Addr,
    tunnel: bool,
) -> Result<(), AgentError> {
    let err = nl_err(ns.name());
    if nl.link(HOST_DEVICE).map_err(&err)?.is_none() {
        nl.add_veth(HOST_DEVICE, NET_DEVICE, None, None)
            .map_err(&err)?;
    }
    let want = IpNet::V4(Ipv4Net::from(router_ip));
    let has = nl
        .addresses()
        .map_err(&err)?
        .into_iter()
        .any(|a| a.ifname == HOST_DEVICE && a.addr == want);
    if !has {
        nl.add_address(HOST_DEVICE, want).map_err(&err)?;
    }
    nl.set_up(HOST_DEVICE).map_err(&err)?;
    nl.set_up(NET_DEVICE).map_err(&err)?;
    if tunnel {
        // Host -> remote pod goes via fibril_host (docs/tunnel.md): NOARP so
        // the kernel hands packets to bpf_host without resolving a neighbour.
        let out = ns
            .command("ip")
            .map_err(&err)?
            .args(["link", "set", HOST_DEVICE, "arp", "off"])
            .output()
            .map_err(|e| AgentError::io("ip link set fibril_host arp off", e))?;
        if !out.status.success() {
            return Err(AgentError::Config(format!(
                "ip link set {HOST_DEVICE} arp off: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

fn internal(message: String) -> ApiError {
    ApiError {
        kind: "internal".into(),
        message,
    }
}

fn bad(message: String) -> ApiError {
    ApiError {
        kind: "bad-request".into(),
        message,
    }
}

/// Netlink sessions in the node netns for work done without the node lock
/// (each call uses one session alone; idle ones are kept for the next call).
pub(crate) struct NlPool {
    netns: String,
    idle: Mutex<Vec<Netlink>>,
}

/// Idle sessions kept.
const NL_POOL_MAX: usize = 8;

impl NlPool {
    fn new(netns: &str) -> Self {
        NlPool {
            netns: netns.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Netlink) -> Result<T, NetlinkError>,
    ) -> Result<T, NetlinkError> {
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        let nl = match pooled {
            Some(nl) => nl,
            None => NetNs::open(&self.netns)?.netlink()?,
        };
        let r = f(&nl);
        // A session that failed may be broken: only good ones go back.
        if r.is_ok() {
            if let Ok(mut v) = self.idle.lock() {
                if v.len() < NL_POOL_MAX {
                    v.push(nl);
                }
            }
        }
        r
    }
}

/// What the datapath work of an API call needs (no node lock).
#[derive(Clone)]
struct Handles {
    dp: Arc<Mutex<Datapath>>,
    pin_dir: PathBuf,
    maps: Maps,
    nl: Arc<NlPool>,
    saver: Arc<Saver>,
}

/// A PUT checked under the lock.
struct PutPlan {
    ip: Ipv4Addr,
    id: u16,
    /// The container already had an endpoint (a repeated PUT).
    existed: bool,
    pod_mac: [u8; 6],
    host_mac: [u8; 6],
}

/// A DELETE's container, out of the tables.
struct DelPlan {
    existed: bool,
    ip: Option<Ipv4Addr>,
    ifname: String,
}

/// Attaches `bpf_lxc`, writes the endpoint map entry and the /32 route.
/// A new endpoint is undone on failure.
fn put_datapath(
    h: &Handles,
    plan: &PutPlan,
    req: &EndpointRequest,
    identity: u32,
) -> Result<(), ApiError> {
    let ifname = &req.host_ifname;
    let r = (|| {
        h.dp.lock()
            .map_err(|_| internal("datapath lock poisoned".into()))?
            .attach_endpoint(ifname)
            .map_err(|e| internal(format!("attach bpf_lxc to {ifname}: {e}")))?;
        let info = EndpointInfo {
            ifindex: req.host_ifindex,
            sec_identity: identity,
            ep_id: plan.id,
            flags: 0,
            mac: plan.pod_mac,
            node_mac: plan.host_mac,
        };
        let ip = plan.ip;
        h.maps
            .endpoints()
            .and_then(|mut m| m.upsert(ip, &info))
            .map_err(|e| internal(format!("fibril_endpoints {ip}: {e}")))?;
        let route = Route::dev(Ipv4Net::from(ip), ifname);
        h.nl.with(|nl| nl.replace_route(&route))
            .map_err(|e| internal(format!("route {route}: {e}")))
    })();
    if r.is_err() && !plan.existed {
        undo_datapath(h, plan.ip, ifname);
    }
    r
}

/// Removes what [`put_datapath`] created (errors ignored: best effort).
fn undo_datapath(h: &Handles, ip: Ipv4Addr, ifname: &str) {
    // The veth may still exist here: delete its tc filter too.
    match h.dp.lock() {
        Ok(mut dp) => {
            let _ = dp.detach_endpoint(ifname);
        }
        Err(_) => {
            let _ = Datapath::detach_interface(&h.pin_dir, ifname);
        }
    }
    if let Ok(mut m) = h.maps.endpoints() {
        let _ = m.delete(ip);
    }
    let _ = h.nl.with(|nl| nl.delete_route(&host_route(ip)));
}

fn host_route(ip: Ipv4Addr) -> Route {
    Route {
        dst: Ipv4Net::from(ip),
        via: None,
        dev: None,
        onlink: false,
        src: None,
        table: None,
    }
}

/// Deletes the host veth, the attachment records, the map entry and the route.
fn delete_datapath(h: &Handles, plan: &DelPlan) {
    let ifname = &plan.ifname;
    // The veth first: its teardown removes the pod's tc filter with the
    // device, so only the record is left to drop.
    let deleted = h.nl.with(|nl| match nl.link(ifname)? {
        Some(_) => nl.delete_link(ifname).map(|()| true),
        None => Ok(false),
    });
    if let Err(e) = deleted {
        warn!(%ifname, error = %e, "delete host veth");
    }
    if let Err(e) = Datapath::detach_interface(&h.pin_dir, ifname) {
        warn!(%ifname, error = %e, "detach");
    }
    if let Some(ip) = plan.ip {
        if let Ok(mut m) = h.maps.endpoints() {
            let _ = m.delete(ip);
        }
        // The route went with the veth unless the veth is somewhere else.
        let _ = h.nl.with(|nl| nl.delete_route(&host_route(ip)));
    }
}

fn lock(shared: &Shared) -> Result<MutexGuard<'_, NodeState>, ApiError> {
    shared
        .lock()
        .map_err(|_| internal("node state lock poisoned".into()))
}

/// Locks the node once no other PUT/DELETE of `container_id` runs, and
/// marks the container busy (the caller calls [`NodeState::unbusy`]).
fn lock_idle<'a>(
    shared: &'a Shared,
    container_id: &str,
) -> Result<MutexGuard<'a, NodeState>, ApiError> {
    let mut st = lock(shared)?;
    while st.busy.contains(container_id) {
        let idle = st.idle.clone();
        st = idle
            .wait(st)
            .map_err(|_| internal("node state lock poisoned".into()))?;
    }
    st.busy.insert(container_id.to_string());
    Ok(st)
}

/// `POST /v1/ipam`: allocates under the node lock and answers once the
/// allocation is on disk (the fsync shared with concurrent calls).
pub(crate) fn allocate_shared(
    shared: &Shared,
    container_id: &str,
    owner: &str,
    pool: &str,
) -> Result<IpamResponse, ApiError> {
    let (r, fresh, gen, saver) = {
        let mut st = lock(shared)?;
        let (r, fresh) = st.allocate_locked(container_id, owner, pool)?;
        // A repeated call may race the first one's save: wait for it too.
        let gen = if fresh { st.stage() } else { st.saver.latest() };
        (r, fresh, gen, st.saver.clone())
    };
    if let Err(e) = saver.wait(gen) {
        if fresh {
            // Not durable: take the address back rather than hand it out.
            let mut st = lock(shared)?;
            let untouched = st.containers.get(container_id) == Some(&r.ip)
                && !st.endpoints.contains_key(container_id)
                && !st.busy.contains(container_id);
            if untouched {
                st.containers.remove(container_id);
                let _ = st.alloc.release(r.ip);
                st.stage();
            }
        }
        return Err(internal(format!("saving state: {e}")));
    }
    Ok(r)
}

/// `PUT /v1/endpoints/{id}`: the node lock only to check and to record;
/// attach, map entry, route and the state fsync run without it. Returns the
/// answer, the endpoint's address and the node IP.
pub(crate) fn put_endpoint_shared(
    shared: &Shared,
    container_id: &str,
    req: EndpointRequest,
    identity: u32,
) -> Result<(EndpointResponse, Ipv4Addr, Ipv4Addr), ApiError> {
    let (plan, h, node_ip) = {
        let mut st = lock_idle(shared, container_id)?;
        match st.put_begin(container_id, &req) {
            Ok(plan) => (plan, st.handles(), st.node_ip),
            Err(e) => {
                st.unbusy(container_id);
                return Err(e);
            }
        }
    };
    let done = put_datapath(&h, &plan, &req, identity);
    let ifname = req.host_ifname.clone();
    let recorded = {
        let mut st = lock(shared)?;
        st.reserved_ids.remove(&plan.id);
        let r = done.and_then(|()| st.put_finish(container_id, &plan, req, identity));
        st.unbusy(container_id);
        r
    };
    let gen = match recorded {
        Ok(gen) => gen,
        Err(e) => {
            if !plan.existed {
                undo_datapath(&h, plan.ip, &ifname);
            }
            return Err(e);
        }
    };
    h.saver
        .wait(gen)
        .map_err(|e| internal(format!("saving state: {e}")))?;
    Ok((
        EndpointResponse {
            id: plan.id,
            identity,
        },
        plan.ip,
        node_ip,
    ))
}

/// `DELETE /v1/endpoints/{id}` (idempotent): the container leaves the
/// tables under the lock, the datapath work runs without it, and only then
/// is the address released. Returns the answer and the pod (`ns`, `name`).
pub(crate) fn delete_endpoint_shared(
    shared: &Shared,
    container_id: &str,
) -> Result<(DeleteResponse, Option<(String, String)>), ApiError> {
    let (plan, pod, h) = {
        let mut st = lock_idle(shared, container_id)?;
        let pod = st
            .endpoints
            .get(container_id)
            .map(|e| (e.spec.pod_namespace.clone(), e.spec.pod_name.clone()));
        (st.delete_begin(container_id), pod, st.handles())
    };
    delete_datapath(&h, &plan);
    let (r, gen) = {
        let mut st = lock(shared)?;
        let out = st.delete_finish(&plan);
        st.unbusy(container_id);
        out
    };
    if let Some(gen) = gen {
        h.saver
            .wait(gen)
            .map_err(|e| internal(format!("saving state: {e}")))?;
    }
    Ok((r, pod))
}
