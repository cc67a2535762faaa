//! Keeps the node in sync with the FibrilNodes of the store: new pod CIDRs
//! of this node go into its allocator; every other node becomes ipcache
//! entries (its node IP as remote-node, so it is never masqueraded; in tunnel
//! mode its pod CIDRs with the node IP as tunnel endpoint) and kernel routes
//! (tunnel: `podCIDR via <router IP> dev fibril_host`, for host -> remote pod;
//! native with `autoDirectNodeRoutes`: `podCIDR via <node IP>` only when the
//! peer is on a subnet of the underlay device). The `kube-system/ip-masq-agent`
//! ConfigMap (key `config`), when present, replaces the config's
//! `ipMasqAgent.config.*` values in `fibril_ipmasq`.
//!
//! With kube-proxy replacement the same pass keeps the load-balancing maps
//! equal to the store's Services/EndpointSlices/Local Redirect Policies
//! ([`crate::services`]), and announces LoadBalancer IPs on L2. Pods of
//! other nodes (their FibrilEndpoints) become /32 ipcache entries with their
//! security identity (tunnel mode: with their node as tunnel endpoint).
//!
//! [`gc_loop`] collects expired conntrack entries and idle NAT / NodePort
//! SNAT entries every `GC_INTERVAL`.
//!
//! First cut: the loop relists every `sync_interval` instead of watching
//! (the lists are small and applying them is idempotent: unchanged services
//! write nothing).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use fibril_abi::identity;
use fibril_api::fibril::NodeAddressType;
use fibril_api::{
    ConfigMap, EndpointSlice, FibrilEndpoint, FibrilLocalRedirectPolicy, FibrilNode, Pod, Service,
};
use fibril_config::IpamMode;
use fibril_datapath::{Prefix4, Tunnel};
use fibril_netlink::Route;
use fibril_operator::{IP_MASQ_AGENT_CONFIGMAP, IP_MASQ_AGENT_NAMESPACE};
use fibril_store::StoreExt;
use ipnet::Ipv4Net;
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::node::{NodeState, HOST_DEVICE};
use crate::{fibril_node_cidrs, AgentOptions, Shared};

/// A remote node as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    /// Node name.
    pub name: String,
    /// Underlay IP.
    pub node_ip: Ipv4Addr,
    /// Pod CIDRs.
    pub cidrs: Vec<Ipv4Net>,
}

/// Remote nodes of a FibrilNode list (nodes without an InternalIP are skipped).
pub fn remote_nodes(nodes: &[FibrilNode], me: &str) -> Vec<RemoteNode> {
    nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            if name == me {
                return None;
            }
            let node_ip =
                n.spec
                    .as_ref()?
                    .addresses
                    .iter()
                    .find_map(|a| match (a.address_type, a.ip) {
                        (NodeAddressType::InternalIP, IpAddr::V4(ip)) => Some(ip),
                        _ => None,
                    })?;
            let mut cidrs = fibril_node_cidrs(n);
            for blocks in fibril_operator::allocated_pools(n).into_values() {
                for b in blocks {
                    if !cidrs.contains(&b) {
                        cidrs.push(b);
                    }
                }
            }
            Some(RemoteNode {
                name,
                node_ip,
                cidrs,
            })
        })
        .collect()
}

/// Kinds whose changes trigger a sync pass at once (besides the periodic one).
fn watched_kinds(opts: &AgentOptions) -> Vec<&'static str> {
    let mut k = vec!["FibrilNode", "FibrilEndpoint"];
    if opts.config.kube_proxy_replacement {
        k.extend(["Service", "EndpointSlice"]);
        if opts.config.local_redirect_policy {
            k.extend(["FibrilLocalRedirectPolicy", "Pod"]);
        }
    }
    k
}

/// Watches `kind` and wakes the sync loop on every change (re-listing after
/// errors or compaction). Only a trigger: the pass itself re-lists.
async fn kick_on_changes(opts: AgentOptions, kind: &'static str, kick: Arc<Notify>) {
    use futures::StreamExt;
    loop {
        let started = async {
            let rev = opts.store.list(kind, None).await?.revision;
            opts.store.watch(kind, None, rev).await
        }
        .await;
        match started {
            Ok(mut stream) => {
                while let Some(ev) = stream.next().await {
                    if ev.is_err() {
                        break;
                    }
                    kick.notify_one();
                }
            }
            Err(e) => debug!(%kind, error = %e, "watch (falling back to polling)"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The sync loop (until `stop` is true): a pass every `sync_interval`, and
/// soon after any change of a watched kind.
pub async fn run(opts: AgentOptions, state: Shared, mut stop: watch::Receiver<bool>) {
    let kick = Arc::new(Notify::new());
    let watchers: Vec<tokio::task::JoinHandle<()>> = watched_kinds(&opts)
        .into_iter()
        .map(|k| tokio::spawn(kick_on_changes(opts.clone(), k, kick.clone())))
        .collect();
    // Aborted with the loop (the loop is aborted on shutdown).
    struct AbortAll(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortAll {
        fn drop(&mut self) {
            for h in &self.0 {
                h.abort();
            }
        }
    }
    let _watchers = AbortAll(watchers);
    let mut last_demand: Option<Option<u64>> = None;
    let mut last_used = None;
    loop {
        match once(&opts, &state).await {
            Ok((demand, used)) => {
                if last_used.as_ref() != Some(&used) {
                    let r = crate::update_fibril_node(&opts, |n| {
                        let ipam = n
                            .status
                            .get_or_insert_with(Default::default)
                            .ipam
                            .get_or_insert_with(Default::default);
                        if ipam.used == used {
                            return false;
                        }
                        ipam.used = used.clone();
                        true
                    })
                    .await;
                    match r {
                        Ok(()) => last_used = Some(used),
                        Err(e) => warn!(error = %e, "writing status.ipam.used"),
                    }
                }
                if opts.config.ipam.mode == IpamMode::ClusterPool && last_demand != Some(demand) {
                    let r = crate::update_fibril_node(&opts, |n| {
                        fibril_operator::contract::request_cluster_pool(n, demand)
                    })
                    .await;
                    match r {
                        Ok(()) => {
                            if demand.is_some() {
                                info!(needed = ?demand, "asked the operator for more pod CIDRs");
                            }
                            last_demand = Some(demand);
                        }
                        Err(e) => warn!(error = %e, "writing the cluster-pool request"),
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "node sync");
                let st = state.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(mut st) = st.lock() {
                        st.stats.sync_errors += 1;
                    }
                })
                .await;
            }
        }
        let kicked = tokio::select! {
            _ = tokio::time::sleep(opts.sync_interval) => false,
            _ = kick.notified() => true,
            _ = stop.wait_for(|s| *s) => return,
        };
        if kicked {
            // Let a burst of changes (a rollout) land in one pass.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// `status.ipam.used` of the FibrilNode.
type UsedMap = BTreeMap<std::net::IpAddr, fibril_api::fibril::AllocationIp>;

/// One pass; returns the cluster-pool demand and the used map to publish.
async fn once(
    opts: &AgentOptions,
    state: &Shared,
) -> Result<(Option<u64>, UsedMap), crate::AgentError> {
    let own = crate::current_pod_cidrs(opts).await.unwrap_or_default();
    let nodes = opts.store.list_as::<FibrilNode>(None).await?.items;
    let allocated = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(opts.node_name.as_str()))
        .map(fibril_operator::allocated_pools)
        .unwrap_or_default();
    let remotes = remote_nodes(&nodes, &opts.node_name);
    let masq = opts
        .store
        .get_as::<ConfigMap>(Some(IP_MASQ_AGENT_NAMESPACE), IP_MASQ_AGENT_CONFIGMAP)
        .await?
        .and_then(|cm| cm.data?.get("config").cloned());
    let svc_objs = if opts.config.kube_proxy_replacement {
        Some(list_service_objects(opts).await?)
    } else {
        None
    };
    let endpoints = opts.store.list_as::<FibrilEndpoint>(None).await?.items;
    let node_ips: BTreeMap<String, Ipv4Addr> = nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, internal_ip(n)?)))
        .collect();
    let state = state.clone();
    let lrp_enabled = opts.config.local_redirect_policy;
    let out = tokio::task::spawn_blocking(move || {
        let Ok(mut st) = state.lock() else {
            return (None, UsedMap::new(), None);
        };
        st.add_cidrs(&own);
        let pool_req = st.multi_pool_round(&allocated);
        apply_remotes(&mut st, &remotes);
        apply_remote_pods(&mut st, &endpoints);
        st.apply_ipmasq(masq);
        if let Some(objs) = svc_objs {
            let view = crate::services::NodeView {
                node_name: st.node_name.clone(),
                subnets: st.underlay.subnets.clone(),
                nodes: node_ips,
                lrp_enabled,
            };
            let want = crate::services::desired(&objs, &view);
            if let Some(svc) = st.services.as_mut() {
                let r = svc.apply(&want);
                st.stats.services_upserted += r.upserted as u64;
                st.stats.services_deleted += r.deleted as u64;
                st.stats.service_errors += r.errors as u64;
            }
            st.apply_announce(&want.announce);
        }
        st.stats.sync_passes += 1;
        (st.cluster_pool_demand(), st.used_map(), pool_req)
    })
    .await
    .map_err(|e| crate::AgentError::Config(format!("sync task: {e}")))?;
    let (demand, used, pool_req) = out;
    if let Some(req) = pool_req {
        crate::update_fibril_node(opts, |n| {
            fibril_operator::contract::apply_pool_request(n, &req)
        })
        .await?;
    }
    Ok((demand, used))
}

/// Makes ipcache and routes match `remotes` (adds/updates, then removes stale).
pub fn apply_remotes(st: &mut NodeState, remotes: &[RemoteNode]) {
    let tunnel = !matches!(st.tunnel, Tunnel::Disabled);
    let want: BTreeMap<String, (Ipv4Addr, Vec<Ipv4Net>)> = remotes
        .iter()
        .map(|r| (r.name.clone(), (r.node_ip, r.cidrs.clone())))
        .collect();
    if want == st.remote {
        return;
    }
    let mut ipc = match st.maps.ipcache() {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "open ipcache");
            return;
        }
    };
    let mut want_routes: BTreeMap<Ipv4Net, Route> = BTreeMap::new();
    for r in remotes {
        if let Err(e) = ipc.upsert_remote_node(r.node_ip, None) {
            warn!(node = %r.name, error = %e, "ipcache remote node");
        }
        for c in &r.cidrs {
            if tunnel {
                let Ok(p) = Prefix4::new(c.network(), c.prefix_len()) else {
                    continue;
                };
                if let Err(e) = ipc.upsert_tunnel_route(p, r.node_ip, identity::WORLD) {
                    warn!(node = %r.name, cidr = %c, error = %e, "ipcache tunnel route");
                }
                let route = Route {
                    dst: *c,
                    via: Some(st.router_ip),
                    dev: Some(HOST_DEVICE.into()),
                    // Not onlink: the kernel refuses a local address as an
                    // on-link gateway ("Nexthop has invalid gateway").
                    onlink: false,
                    src: Some(st.router_ip),
                    table: None,
                };
                match st.nl.replace_route(&route) {
                    Ok(()) => {
                        want_routes.insert(*c, route);
                    }
                    Err(e) => warn!(%route, error = %e, "tunnel route"),
                }
            } else if st.config.auto_direct_node_routes && st.directly_connected(r.node_ip) {
                let route = Route::via(*c, r.node_ip).with_dev(&st.underlay_device);
                match st.nl.replace_route(&route) {
                    Ok(()) => {
                        want_routes.insert(*c, route);
                    }
                    Err(e) => warn!(%route, error = %e, "direct node route"),
                }
            } else if st.config.auto_direct_node_routes {
                debug!(node = %r.name, node_ip = %r.node_ip, "not directly connected: no route");
            }
        }
    }
    // Stale entries of nodes that left or changed.
    for (name, (ip, cidrs)) in &st.remote {
        let kept = want.get(name);
        if kept.map(|(i, _)| i) != Some(ip) && !remotes.iter().any(|r| r.node_ip == *ip) {
            let _ = ipc.remove(Prefix4::host(*ip));
        }
        for c in cidrs {
            if kept.is_some_and(|(_, cs)| cs.contains(c)) {
                continue;
            }
            if let Ok(p) = Prefix4::new(c.network(), c.prefix_len()) {
                let _ = ipc.remove(p);
            }
        }
    }
    for (c, route) in &st.routes {
        if !want_routes.contains_key(c) {
            let mut route = route.clone();
            route.dev = None;
            route.onlink = false;
            route.src = None;
            let _ = st.nl.delete_route(&route);
        }
    }
    st.routes = want_routes;
    st.remote = want;
}

/// The InternalIP of a FibrilNode.
pub fn internal_ip(n: &FibrilNode) -> Option<Ipv4Addr> {
    n.spec
        .as_ref()?
        .addresses
        .iter()
        .find_map(|a| match (a.address_type, a.ip) {
            (NodeAddressType::InternalIP, IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
}

/// Services, slices, LRPs (and Pods when an LRP exists) from the store.
async fn list_service_objects(
    opts: &AgentOptions,
) -> Result<crate::services::Objects, crate::AgentError> {
    let store = &opts.store;
    let services = store.list_as::<Service>(None).await?.items;
    let slices = store.list_as::<EndpointSlice>(None).await?.items;
    let lrps = if opts.config.local_redirect_policy {
        store
            .list_as::<FibrilLocalRedirectPolicy>(None)
            .await?
            .items
    } else {
        Vec::new()
    };
    let pods = if lrps.is_empty() {
        Vec::new()
    } else {
        store.list_as::<Pod>(None).await?.items
    };
    Ok(crate::services::Objects {
        services,
        slices,
        lrps,
        pods,
    })
}

/// Remote pods' /32 ipcache entries from the FibrilEndpoints of other nodes
/// (identity; tunnel mode: the node as tunnel endpoint). Adds/updates, then
/// removes entries of pods that went away.
pub fn apply_remote_pods(st: &mut NodeState, endpoints: &[FibrilEndpoint]) {
    let tunnel = !matches!(st.tunnel, Tunnel::Disabled);
    let mut want: BTreeMap<Ipv4Addr, (u32, Ipv4Addr)> = BTreeMap::new();
    for ep in endpoints {
        let (Some(ip), Some(id)) = (ep.ipv4(), ep.identity_id()) else {
            continue;
        };
        let node = ep
            .status
            .as_ref()
            .and_then(|s| s.networking.as_ref())
            .and_then(|n| n.node.as_deref())
            .and_then(|n| n.parse::<Ipv4Addr>().ok());
        let Some(node) = node else { continue };
        if node == st.node_ip || st.alloc.is_allocated(ip) {
            continue;
        }
        let Ok(id) = u32::try_from(id) else { continue };
        want.insert(ip, (id, node));
    }
    if want == st.remote_pods {
        return;
    }
    let mut ipc = match st.maps.ipcache() {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "open ipcache");
            return;
        }
    };
    for (ip, (id, node)) in &want {
        if st.remote_pods.get(ip) == Some(&(*id, *node)) {
            continue;
        }
        let r = if tunnel {
            ipc.upsert_tunnel_route(Prefix4::host(*ip), *node, *id)
        } else {
            ipc.insert(
                Prefix4::host(*ip),
                &fibril_abi::IpcacheValue {
                    sec_identity: *id,
                    tunnel_endpoint: 0,
                    flags: 0,
                    pad: 0,
                },
            )
        };
        if let Err(e) = r {
            warn!(%ip, error = %e, "ipcache remote pod");
        }
    }
    for ip in st.remote_pods.keys() {
        if !want.contains_key(ip) {
            let _ = ipc.remove(Prefix4::host(*ip));
        }
    }
    st.remote_pods = want;
}

/// Interval of [`gc_loop`].
pub const GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Conntrack and NAT garbage collection (until `stop` is true).
pub async fn gc_loop(
    state: Shared,
    mut stop: watch::Receiver<bool>,
    interval: std::time::Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(mut st) = st.lock() else { return };
            gc_once(&mut st);
        })
        .await;
    }
}

/// One GC pass over conntrack, NAT and NodePort SNAT.
pub fn gc_once(st: &mut NodeState) {
    let now = fibril_datapath::monotonic_ns();
    match st.maps.conntrack().and_then(|mut c| c.gc(now)) {
        Ok(g) => {
            st.stats.ct_gc_runs += 1;
            st.stats.ct_gc_removed += g.removed as u64;
            st.stats.ct_alive = g.alive as u64;
            if g.removed > 0 {
                debug!(removed = g.removed, alive = g.alive, "conntrack GC");
            }
        }
        Err(e) => warn!(error = %e, "conntrack GC"),
    }
    let timeouts = fibril_datapath::NatTimeouts::default();
    match fibril_datapath::nat::gc_node(&st.maps, now, &timeouts) {
        Ok(g) => {
            st.stats.nat_gc_runs += 1;
            st.stats.nat_gc_removed += g.removed as u64;
        }
        Err(e) => warn!(error = %e, "NAT GC"),
    }
    match fibril_datapath::lb::gc_snat(&st.maps, now, timeouts.non_tcp_ns.max(timeouts.tcp_ns)) {
        Ok(n) => st.stats.nat_gc_removed += n as u64,
        Err(e) => debug!(error = %e, "NodePort SNAT GC"),
    }
}
