//! The node's mutable state: IPAM, endpoints, the loaded datapath and the
//! netlink session in the node netns. Every method is blocking (netlink and
//! BPF syscalls); async callers use `spawn_blocking` while holding the mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

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
use crate::{AgentError, AgentOptions};

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
    pub(crate) dp: Datapath,
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
    state_path: PathBuf,
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
            dp,
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
            state_path,
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
        self.dp.attach_endpoint(HOST_IF)?;
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

    /// Writes `state.json` atomically.
    pub fn save(&self) -> Result<(), AgentError> {
        let st = PersistedState {
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
        };
        let tmp = self.state_path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&st)
            .map_err(|e| AgentError::Config(format!("encode state: {e}")))?;
        std::fs::write(&tmp, bytes)
            .map_err(|e| AgentError::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &self.state_path)
            .map_err(|e| AgentError::io(format!("rename {}", tmp.display()), e))
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

    /// `POST /v1/ipam`.
    pub fn allocate(
        &mut self,
        container_id: &str,
        owner: &str,
        pool: &str,
    ) -> Result<IpamResponse, ApiError> {
        let ip = match self.containers.get(container_id) {
            Some(ip) => *ip,
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
                self.save_api()?;
                ip
            }
        };
        let pod_cidr = self
            .alloc
            .cidrs()
            .into_iter()
            .find(|c| c.contains(&ip))
            .map(|c| c.to_string())
            .unwrap_or_default();
        Ok(IpamResponse {
            ip,
            gateway: self.router_ip,
            mtu: self.pod_mtu,
            pod_cidr,
            node_netns: self.netns.clone(),
        })
    }

    fn next_endpoint_id(&self) -> u16 {
        let used: BTreeSet<u16> = self.endpoints.values().map(|e| e.id).collect();
        (1..u16::MAX)
            .find(|i| !used.contains(i))
            .unwrap_or(u16::MAX)
    }

    /// `PUT /v1/endpoints/{id}`.
    pub fn put_endpoint(
        &mut self,
        container_id: &str,
        req: EndpointRequest,
        identity: u32,
    ) -> Result<EndpointResponse, ApiError> {
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
        let id = match self.endpoints.get(container_id) {
            Some(e) => e.id,
            None => self.next_endpoint_id(),
        };
        self.dp
            .attach_endpoint(&req.host_ifname)
            .map_err(|e| internal(format!("attach bpf_lxc to {}: {e}", req.host_ifname)))?;
        let info = EndpointInfo {
            ifindex: req.host_ifindex,
            sec_identity: identity,
            ep_id: id,
            flags: 0,
            mac: pod_mac,
            node_mac: host_mac,
        };
        self.maps
            .endpoints()
            .and_then(|mut m| m.upsert(ip, &info))
            .map_err(|e| internal(format!("fibril_endpoints {ip}: {e}")))?;
        let route = Route::dev(Ipv4Net::from(ip), &req.host_ifname);
        self.nl
            .replace_route(&route)
            .map_err(|e| internal(format!("route {route}: {e}")))?;
        self.endpoints.insert(
            container_id.to_string(),
            EndpointRecord {
                container_id: container_id.to_string(),
                id,
                ip,
                identity,
                spec: req,
                restored: false,
            },
        );
        self.save_api()?;
        Ok(EndpointResponse { id, identity })
    }

    /// `DELETE /v1/endpoints/{id}`: idempotent.
    pub fn delete_endpoint(&mut self, container_id: &str) -> Result<DeleteResponse, ApiError> {
        let rec = self.endpoints.remove(container_id);
        let ip = self
            .containers
            .remove(container_id)
            .or(rec.as_ref().map(|r| r.ip));
        let ifname = rec
            .as_ref()
            .map(|r| r.spec.host_ifname.clone())
            .unwrap_or_else(|| api::host_ifname(container_id));
        if let Err(e) = Datapath::detach_interface(self.dp.pin_dir(), &ifname) {
            warn!(%ifname, error = %e, "detach");
        }
        if let Ok(Some(_)) = self.nl.link(&ifname) {
            if let Err(e) = self.nl.delete_link(&ifname) {
                warn!(%ifname, error = %e, "delete host veth");
            }
        }
        let mut released = None;
        if let Some(ip) = ip {
            if let Ok(mut m) = self.maps.endpoints() {
                let _ = m.delete(ip);
            }
            let route = Route {
                dst: Ipv4Net::from(ip),
                via: None,
                dev: None,
                onlink: false,
                src: None,
                table: None,
            };
            // The route went with the veth unless the veth is somewhere else.
            let _ = self.nl.delete_route(&route);
            if self.alloc.release(ip).is_ok() {
                released = Some(ip);
            }
        }
        let existed = rec.is_some() || ip.is_some();
        if existed {
            self.save_api()?;
        }
        Ok(DeleteResponse { existed, released })
    }

    /// `POST /v1/gc`.
    pub fn gc(&mut self, valid: &[String]) -> Result<Vec<String>, ApiError> {
        let valid: BTreeSet<&str> = valid.iter().map(String::as_str).collect();
        let stale: Vec<String> = self
            .containers
            .keys()
            .chain(self.endpoints.keys())
            .filter(|c| !valid.contains(c.as_str()))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for c in &stale {
            self.delete_endpoint(c)?;
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
