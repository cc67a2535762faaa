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
//! First cut: the loop relists FibrilNodes every `sync_interval` instead of
//! watching (the list is small and idempotent to apply).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use fibril_abi::identity;
use fibril_api::fibril::NodeAddressType;
use fibril_api::{ConfigMap, FibrilNode};
use fibril_config::IpamMode;
use fibril_datapath::{Prefix4, Tunnel};
use fibril_netlink::Route;
use fibril_operator::{IP_MASQ_AGENT_CONFIGMAP, IP_MASQ_AGENT_NAMESPACE};
use fibril_store::StoreExt;
use ipnet::Ipv4Net;
use tokio::sync::watch;
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

/// The sync loop (until `stop` is true).
pub async fn run(opts: AgentOptions, state: Shared, mut stop: watch::Receiver<bool>) {
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
            Err(e) => warn!(error = %e, "node sync"),
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.sync_interval) => {}
            _ = stop.wait_for(|s| *s) => return,
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
    let state = state.clone();
    let out = tokio::task::spawn_blocking(move || {
        let Ok(mut st) = state.lock() else {
            return (None, UsedMap::new(), None);
        };
        st.add_cidrs(&own);
        let pool_req = st.multi_pool_round(&allocated);
        apply_remotes(&mut st, &remotes);
        st.apply_ipmasq(masq);
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
