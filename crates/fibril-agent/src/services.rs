//! Services -> the node's load-balancing maps (kube-proxy replacement).
//!
//! [`desired`] turns the store's Services, EndpointSlices, Local Redirect
//! Policies and Pods into the frontends this node must program (a pure
//! function, unit-tested): per service port a ClusterIP frontend; for
//! NodePort/LoadBalancer services a NodePort frontend `0.0.0.0:<nodePort>`
//! (the datapath matches it on the node IP); per `status.loadBalancer.ingress`
//! IP and `spec.externalIPs` a LoadBalancer frontend. `externalTrafficPolicy:
//! Local` makes NodePort/LoadBalancer frontends two-scope (outside: local
//! backends only). Backends are the ready endpoints of the service's slices
//! (terminating ones are kept for existing connections), the port resolved
//! by the service port's name, `local` when the endpoint's `nodeName` is this
//! node. Headless and ExternalName services are skipped.
//!
//! Local Redirect Policies (config `localRedirectPolicy`): the matched
//! frontends (service matcher: the ClusterIP ports, all or `toPorts`;
//! address matcher: `ip` + `toPorts`) become `LocalRedirect` services whose
//! backends are the node-local Running pods selected by
//! `redirectBackend.localEndpointSelector` in the policy's namespace (ports
//! mapped by name, else the single backend port of the protocol). Without a
//! local backend the original service stays (fallback).
//!
//! [`ServiceSync`] applies a desired set by diff: unchanged frontends write
//! nothing (so an agent restart, which rebuilds the id state from the maps,
//! keeps established connections), changed ones are upserted, frontends no
//! longer wanted are deleted.
//!
//! LoadBalancer IPs on the underlay's subnet are announced on L2: exactly one
//! node per IP (the smallest node name among the candidates: nodes on that
//! subnet, with eTP=Local only nodes with a ready local backend) adds the IP
//! as a /32 to `fibril_host`, so the kernel answers ARP for it on the
//! underlay; the packets themselves are translated by `bpf_host` on the
//! underlay's ingress before the stack sees them. LB IPs off the node
//! subnets need a route on the router (`ip route add <ip> via <node IP>`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use fibril_api::fibril::{LocalRedirectPolicySpec, PortInfo};
use fibril_api::k8s_openapi::api::core::v1::ServicePort;
use fibril_api::{EndpointSlice, FibrilLocalRedirectPolicy, LabelSelector, Pod, Service};
use fibril_datapath::lb::{LbError, LoadBalancer, Protocol};
use fibril_datapath::{BackendSpec, Frontend, Maps, ServiceSpec, ServiceType};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// Label of an EndpointSlice naming its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What [`desired`] needs besides the objects.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// This node's name.
    pub node_name: String,
    /// Subnets of this node's underlay device.
    pub subnets: Vec<Ipv4Net>,
    /// Every node (this one too): name -> internal IP.
    pub nodes: BTreeMap<String, Ipv4Addr>,
    /// Local Redirect Policies enabled.
    pub lrp_enabled: bool,
}

/// The store objects [`desired`] reads.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// Local Redirect Policies (Fibril and cilium.io kinds are one kind).
    pub lrps: Vec<FibrilLocalRedirectPolicy>,
    /// Pods (only needed with LRPs: the node-local backends).
    pub pods: Vec<Pod>,
}

/// One programmed frontend and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The spec.
    pub spec: ServiceSpec,
    /// `namespace/name` of the service (or of the LRP for address matchers).
    pub owner: String,
}

/// A Local Redirect Policy as applied on this node (`lrp list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LrpStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `clusterIP + all svc ports`, `clusterIP + named ports`, `IP + port`, ...
    pub frontend_type: String,
    /// `namespace/name` of the matched service (service matcher).
    pub service: Option<String>,
    /// Frontend -> local backends (`ip:port(ns/pod)`).
    pub mappings: Vec<LrpMapping>,
}

/// One frontend of an LRP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LrpMapping {
    /// `10.96.0.10:53/UDP`.
    pub frontend: String,
    /// `172.20.1.236:53(kube-system/node-local-dns-nnt9r)`.
    pub backends: Vec<String>,
}

/// Everything this node should program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Frontend -> spec.
    pub services: BTreeMap<Frontend, Wanted>,
    /// LRPs (for listing).
    pub lrps: Vec<LrpStatus>,
    /// LoadBalancer IPs this node announces on L2.
    pub announce: BTreeSet<Ipv4Addr>,
}

fn proto_of(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

fn api_proto(p: Option<fibril_api::fibril::Protocol>) -> Option<Protocol> {
    use fibril_api::fibril::Protocol as P;
    match p {
        None | Some(P::Tcp) => Some(Protocol::Tcp),
        Some(P::Udp) => Some(Protocol::Udp),
        _ => None,
    }
}

fn ns_of(meta: &fibril_api::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// True if the labels match the selector (`matchLabels` and
/// `matchExpressions` with In, NotIn, Exists, DoesNotExist).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let val = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => val.is_some_and(|v| values.contains(v)),
            "NotIn" => !val.is_some_and(|v| values.contains(v)),
            "Exists" => val.is_some(),
            "DoesNotExist" => val.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Backends of one service port from the slices (ready ones active,
/// terminating ones kept as terminating), with the node of each.
fn backends_for(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    node_name: &str,
) -> Vec<(BackendSpec, Option<String>)> {
    let want_name = port.name.clone().unwrap_or_default();
    let want_proto = port.protocol.clone().unwrap_or_else(|| "TCP".into());
    let mut out: Vec<(BackendSpec, Option<String>)> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let Some(p) = s.ports.iter().flatten().find(|p| {
            p.name.clone().unwrap_or_default() == want_name
                && p.protocol.clone().unwrap_or_else(|| "TCP".into()) == want_proto
        }) else {
            continue;
        };
        let Some(target) = p
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in s.endpoints.iter().flatten() {
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            let terminating = c.terminating.unwrap_or(false);
            if !ready && !terminating {
                continue;
            }
            let local = ep.node_name.as_deref() == Some(node_name);
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<Ipv4Addr>() else {
                    continue;
                };
                if !seen.insert((ip, target)) {
                    continue;
                }
                let mut b = BackendSpec::new(ip, target, local);
                b.terminating = !ready;
                out.push((b, ep.node_name.clone()));
            }
        }
    }
    out.sort_by_key(|(b, _)| (b.addr, b.port));
    out
}

fn parse_v4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// Computes what this node should program.
pub fn desired(objs: &Objects, view: &NodeView) -> Desired {
    let mut out = Desired::default();
    // Slices by (namespace, service name).
    let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in &objs.slices {
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        slices
            .entry((ns_of(&s.metadata), svc.clone()))
            .or_default()
            .push(s);
    }
    // LB IP -> candidate nodes (for the L2 announcement).
    let mut lb_nodes: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for svc in &objs.services {
        let (Some(name), Some(spec)) = (svc.metadata.name.clone(), svc.spec.as_ref()) else {
            continue;
        };
        let ns = ns_of(&svc.metadata);
        let owner = format!("{ns}/{name}");
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let cluster_ip = spec.cluster_ip.as_deref().and_then(parse_v4);
        let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let external = ty == "NodePort" || ty == "LoadBalancer";
        let mut lb_ips: Vec<Ipv4Addr> = Vec::new();
        if ty == "LoadBalancer" {
            for ing in svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
            {
                if let Some(ip) = ing.ip.as_deref().and_then(parse_v4) {
                    lb_ips.push(ip);
                }
            }
        }
        for ip in spec.external_ips.iter().flatten() {
            if let Some(ip) = parse_v4(ip) {
                lb_ips.push(ip);
            }
        }
        let svc_slices = slices.get(&(ns.clone(), name.clone()));
        for port in spec.ports.iter().flatten() {
            let Some(proto) = proto_of(port.protocol.as_deref()) else {
                continue;
            };
            let Some(fport) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
                continue;
            };
            let bes = svc_slices
                .map(|s| backends_for(s, port, &view.node_name))
                .unwrap_or_default();
            let backends: Vec<BackendSpec> = bes.iter().map(|(b, _)| *b).collect();
            let mut add = |addr: Ipv4Addr, port: u16, svc_type: ServiceType, etl: bool| {
                let frontend = Frontend { addr, port, proto };
                out.services.insert(
                    frontend,
                    Wanted {
                        spec: ServiceSpec {
                            frontend,
                            svc_type,
                            ext_traffic_local: etl,
                            backends: backends.clone(),
                        },
                        owner: owner.clone(),
                    },
                );
            };
            // Headless services get no ClusterIP frontend (nor any other).
            let Some(cip) = cluster_ip else {
                continue;
            };
            add(cip, fport, ServiceType::ClusterIp, false);
            if external {
                if let Some(np) = port
                    .node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                {
                    add(Ipv4Addr::UNSPECIFIED, np, ServiceType::NodePort, etp_local);
                }
            }
            for ip in &lb_ips {
                add(*ip, fport, ServiceType::LoadBalancer, etp_local);
                let nodes = lb_nodes.entry(*ip).or_default();
                if etp_local {
                    nodes.extend(
                        bes.iter()
                            .filter(|(b, _)| !b.terminating)
                            .filter_map(|(_, n)| n.clone()),
                    );
                } else {
                    nodes.extend(view.nodes.keys().cloned());
                }
            }
        }
    }
    // L2 announcement: one node per LB IP among the nodes on its subnet.
    for (ip, cands) in lb_nodes {
        let Some(subnet) = view.subnets.iter().find(|n| n.contains(&ip)) else {
            continue;
        };
        let winner = cands
            .iter()
            .filter(|n| view.nodes.get(*n).is_some_and(|nip| subnet.contains(nip)))
            .min();
        if winner.map(String::as_str) == Some(view.node_name.as_str()) {
            out.announce.insert(ip);
        }
    }
    if view.lrp_enabled {
        for lrp in &objs.lrps {
            if let Some(st) = apply_lrp(lrp, objs, view, &mut out) {
                out.lrps.push(st);
            }
        }
    }
    out
}

/// Local pods selected by an LRP: (ip, `ns/name`, pod).
fn local_backend_pods<'a>(
    objs: &'a Objects,
    ns: &str,
    sel: &LabelSelector,
    node: &str,
) -> Vec<(Ipv4Addr, String, &'a Pod)> {
    let mut v: Vec<(Ipv4Addr, String, &Pod)> = objs
        .pods
        .iter()
        .filter(|p| ns_of(&p.metadata) == ns)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| {
            // Running, and not reported unready (a crashed cache would
            // blackhole the redirected traffic; the fallback serves instead).
            let st = p.status.as_ref();
            let unready = st
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "False");
            st.and_then(|s| s.phase.as_deref()) == Some("Running") && !unready
        })
        .filter(|p| selector_matches(sel, &p.metadata.labels.clone().unwrap_or_default()))
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_deref().and_then(parse_v4)?;
            Some((
                ip,
                format!("{ns}/{}", p.metadata.name.clone().unwrap_or_default()),
                p,
            ))
        })
        .collect();
    v.sort_by_key(|(ip, _, _)| *ip);
    v
}

/// The backend port for a frontend port: same name, else the only backend
/// port of that protocol.
fn backend_port(fe_name: Option<&str>, proto: Protocol, backend_ports: &[PortInfo]) -> Option<u16> {
    let same_proto: Vec<&PortInfo> = backend_ports
        .iter()
        .filter(|p| api_proto(p.protocol) == Some(proto))
        .collect();
    if let Some(n) = fe_name.filter(|n| !n.is_empty()) {
        if let Some(p) = same_proto.iter().find(|p| p.name.as_deref() == Some(n)) {
            return p.number();
        }
        // A named frontend port only matches a named backend port when the
        // backend names its ports.
        if same_proto.iter().any(|p| p.name.is_some()) {
            return None;
        }
    }
    match same_proto.as_slice() {
        [one] => one.number(),
        _ => None,
    }
}

fn apply_lrp(
    lrp: &FibrilLocalRedirectPolicy,
    objs: &Objects,
    view: &NodeView,
    out: &mut Desired,
) -> Option<LrpStatus> {
    let spec: &LocalRedirectPolicySpec = lrp.spec.as_ref()?;
    let ns = ns_of(&lrp.metadata);
    let name = lrp.metadata.name.clone().unwrap_or_default();
    let pods = local_backend_pods(
        objs,
        &ns,
        &spec.redirect_backend.local_endpoint_selector,
        &view.node_name,
    );
    let be_ports = &spec.redirect_backend.to_ports;
    // (frontend, frontend port name)
    let mut fes: Vec<(Frontend, Option<String>)> = Vec::new();
    let mut st = LrpStatus {
        namespace: ns.clone(),
        name: name.clone(),
        ..Default::default()
    };
    if let Some(sm) = &spec.redirect_frontend.service_matcher {
        st.service = Some(format!("{}/{}", sm.namespace, sm.service_name));
        st.frontend_type = match sm.to_ports.len() {
            0 => "clusterIP + all svc ports",
            1 => "clusterIP + port",
            _ => "clusterIP + named ports",
        }
        .into();
        let svc = objs.services.iter().find(|s| {
            s.metadata.name.as_deref() == Some(sm.service_name.as_str())
                && ns_of(&s.metadata) == sm.namespace
        })?;
        let sspec = svc.spec.as_ref()?;
        let cip = sspec.cluster_ip.as_deref().and_then(parse_v4)?;
        for p in sspec.ports.iter().flatten() {
            let Some(proto) = proto_of(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let selected = sm.to_ports.is_empty()
                || sm.to_ports.iter().any(|tp| {
                    api_proto(tp.protocol) == Some(proto)
                        && (tp.number() == Some(port) || (tp.name.is_some() && tp.name == p.name))
                });
            if selected {
                fes.push((
                    Frontend {
                        addr: cip,
                        port,
                        proto,
                    },
                    p.name.clone(),
                ));
            }
        }
    } else if let Some(am) = &spec.redirect_frontend.address_matcher {
        let std::net::IpAddr::V4(ip) = am.ip else {
            return None;
        };
        st.frontend_type = if am.to_ports.len() == 1 {
            "IP + port"
        } else {
            "IP + named ports"
        }
        .into();
        for tp in &am.to_ports {
            let (Some(proto), Some(port)) = (api_proto(tp.protocol), tp.number()) else {
                continue;
            };
            fes.push((
                Frontend {
                    addr: ip,
                    port,
                    proto,
                },
                tp.name.clone(),
            ));
        }
    } else {
        return None;
    }
    let owner = format!("{ns}/{name}");
    for (fe, fe_name) in fes {
        let mut shown = Vec::new();
        let mut backends = Vec::new();
        if let Some(bport) = backend_port(fe_name.as_deref(), fe.proto, be_ports) {
            for (ip, pod, _) in &pods {
                backends.push(BackendSpec::new(*ip, bport, true));
                shown.push(format!("{ip}:{bport}({pod})"));
            }
        }
        st.mappings.push(LrpMapping {
            frontend: fe.to_string(),
            backends: shown,
        });
        if backends.is_empty() {
            continue; // fallback: the original service (if any) stays
        }
        out.services.insert(
            fe,
            Wanted {
                spec: ServiceSpec {
                    frontend: fe,
                    svc_type: ServiceType::LocalRedirect,
                    ext_traffic_local: false,
                    backends,
                },
                owner: owner.clone(),
            },
        );
    }
    Some(st)
}

/// Counters of [`ServiceSync::apply`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStats {
    /// Frontends written (new or changed).
    pub upserted: usize,
    /// Frontends removed.
    pub deleted: usize,
    /// Frontends that failed.
    pub errors: usize,
}

/// The node's services as programmed.
pub struct ServiceSync {
    lb: LoadBalancer,
    applied: BTreeMap<Frontend, Wanted>,
    /// LRPs of the last pass.
    pub lrps: Vec<LrpStatus>,
    /// LB IPs announced (addresses on `fibril_host`).
    pub announced: BTreeSet<Ipv4Addr>,
    /// Whether `announced` was read back from the device after a start.
    pub announce_loaded: bool,
}

impl ServiceSync {
    /// Opens the LB maps (rebuilding ids from what a previous agent wrote).
    pub fn open(maps: &Maps) -> Result<Self, LbError> {
        Ok(Self {
            lb: LoadBalancer::open(maps)?,
            applied: BTreeMap::new(),
            lrps: Vec::new(),
            announced: BTreeSet::new(),
            announce_loaded: false,
        })
    }

    /// Frontends programmed with their owner.
    pub fn applied(&self) -> &BTreeMap<Frontend, Wanted> {
        &self.applied
    }

    /// Number of frontends in the maps.
    pub fn len(&self) -> usize {
        self.lb.len()
    }

    /// True when nothing is programmed.
    pub fn is_empty(&self) -> bool {
        self.lb.is_empty()
    }

    /// Makes the maps equal to `want` (diff against the last pass; the first
    /// pass after a start compares with the maps themselves through the
    /// load balancer's no-op check, so nothing unchanged is rewritten).
    pub fn apply(&mut self, want: &Desired) -> ApplyStats {
        let mut st = ApplyStats::default();
        for (fe, w) in &want.services {
            if self.applied.get(fe) == Some(w) {
                continue;
            }
            match self.lb.upsert(&w.spec) {
                Ok(p) => {
                    debug!(frontend = %fe, id = p.id, owner = %w.owner, backends = w.spec.backends.len(), "service programmed");
                    self.applied.insert(*fe, w.clone());
                    st.upserted += 1;
                }
                Err(e) => {
                    warn!(frontend = %fe, owner = %w.owner, error = %e, "programming service");
                    st.errors += 1;
                }
            }
        }
        for fe in self.lb.frontends() {
            if want.services.contains_key(&fe) {
                continue;
            }
            match self.lb.delete(&fe) {
                Ok(_) => {
                    let owner = self.applied.remove(&fe).map(|w| w.owner);
                    debug!(frontend = %fe, owner = ?owner, "service removed");
                    st.deleted += 1;
                }
                Err(e) => {
                    warn!(frontend = %fe, error = %e, "removing service");
                    st.errors += 1;
                }
            }
        }
        self.applied.retain(|fe, _| want.services.contains_key(fe));
        self.lrps = want.lrps.clone();
        if st.upserted + st.deleted > 0 {
            info!(
                upserted = st.upserted,
                deleted = st.deleted,
                total = self.lb.len(),
                "services synced"
            );
        }
        st
    }
}

/// `lrp list` in cilium-dbg's layout.
pub fn format_lrp_list(lrps: &[LrpStatus]) -> String {
    let mut rows: Vec<[String; 4]> = Vec::new();
    for l in lrps {
        rows.push([
            l.namespace.clone(),
            l.name.clone(),
            l.frontend_type.clone(),
            l.service.clone().unwrap_or_default(),
        ]);
        for m in &l.mappings {
            let be: String = m.backends.iter().map(|b| format!(" {b},")).collect();
            rows.push([
                "|".into(),
                String::new(),
                format!("{} ->{be}", m.frontend),
                String::new(),
            ]);
        }
    }
    let header = [
        "LRP namespace",
        "LRP name",
        "FrontendType",
        "Matching Service",
    ];
    let mut w = [0usize; 4];
    for (i, h) in header.iter().enumerate() {
        w[i] = h.len();
    }
    for r in &rows {
        if r[0] == "|" {
            continue; // mapping lines run past the columns
        }
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: [&str; 4], out: &mut String| {
        let l = format!(
            "{:<w0$}{:<w1$}{:<w2$}{}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = w[0] + 3,
            w1 = w[1] + 3,
            w2 = w[2] + 3
        );
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header, &mut out);
    for r in &rows {
        if r[0] == "|" {
            let l = format!(
                "{:<w0$}|{:<w1$}{}",
                "",
                "",
                r[2],
                w0 = w[0] + 3,
                w1 = w[1] + 2
            );
            out.push_str(l.trim_end());
            out.push('\n');
        } else {
            line([&r[0], &r[1], &r[2], &r[3]], &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn view() -> NodeView {
        NodeView {
            node_name: "k8s-ctr".into(),
            subnets: vec!["192.168.10.0/24".parse().unwrap()],
            nodes: [
                ("k8s-ctr".to_string(), Ipv4Addr::new(192, 168, 10, 100)),
                ("k8s-w1".to_string(), Ipv4Addr::new(192, 168, 10, 101)),
                ("k8s-w0".to_string(), Ipv4Addr::new(192, 168, 20, 100)),
            ]
            .into_iter()
            .collect(),
            lrp_enabled: true,
        }
    }

    fn webpod() -> Objects {
        Objects {
            services: vec![
                svc(json!({"metadata": {"name": "webpod", "namespace": "default"},
                    "spec": {"type": "LoadBalancer", "clusterIP": "10.96.1.1",
                        "externalTrafficPolicy": "Cluster",
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31000, "protocol": "TCP"}]},
                    "status": {"loadBalancer": {"ingress": [{"ip": "192.168.10.211"}]}}})),
                svc(json!({"metadata": {"name": "headless", "namespace": "default"},
                    "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
                svc(json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
                    "spec": {"clusterIP": "10.96.0.10", "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                        {"name": "metrics", "port": 9153, "protocol": "TCP"}]}})),
            ],
            slices: vec![
                slice(json!({"metadata": {"name": "webpod-abc", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "webpod"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": [
                        {"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "nodeName": "k8s-ctr"},
                        {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "k8s-w1"},
                        {"addresses": ["10.244.1.6"], "conditions": {"ready": false}, "nodeName": "k8s-w1"},
                        {"addresses": ["10.244.1.7"], "conditions": {"ready": false, "terminating": true}, "nodeName": "k8s-w1"}]})),
                slice(json!({"metadata": {"name": "kube-dns-x", "namespace": "kube-system",
                        "labels": {"kubernetes.io/service-name": "kube-dns"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                              {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                              {"name": "metrics", "port": 9153, "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["10.244.1.9"], "conditions": {"ready": true}, "nodeName": "k8s-w1"}]})),
            ],
            lrps: vec![serde_json::from_value(json!({
                "metadata": {"name": "nodelocaldns", "namespace": "kube-system"},
                "spec": {"redirectFrontend": {"serviceMatcher": {"serviceName": "kube-dns", "namespace": "kube-system"}},
                    "redirectBackend": {"localEndpointSelector": {"matchLabels": {"k8s-app": "node-local-dns"}},
                        "toPorts": [{"port": "53", "name": "dns", "protocol": "UDP"},
                                    {"port": "53", "name": "dns-tcp", "protocol": "TCP"}]}}})).unwrap()],
            pods: vec![serde_json::from_value(json!({
                "metadata": {"name": "node-local-dns-nnt9r", "namespace": "kube-system", "labels": {"k8s-app": "node-local-dns"}},
                "spec": {"nodeName": "k8s-ctr", "containers": []},
                "status": {"phase": "Running", "podIP": "10.244.0.236"}})).unwrap()],
        }
    }

    #[test]
    fn frontends_and_backends() {
        let d = desired(&webpod(), &view());
        let cip = d.services[&Frontend::tcp(Ipv4Addr::new(10, 96, 1, 1), 80)].clone();
        assert_eq!(cip.owner, "default/webpod");
        assert_eq!(cip.spec.svc_type, ServiceType::ClusterIp);
        let addrs: Vec<_> = cip
            .spec
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.port, b.local, b.terminating))
            .collect();
        assert_eq!(
            addrs,
            vec![
                ("10.244.0.5".into(), 8080, true, false),
                ("10.244.1.5".into(), 8080, false, false),
                ("10.244.1.7".into(), 8080, false, true),
            ]
        );
        let np = &d.services[&Frontend::tcp(Ipv4Addr::UNSPECIFIED, 31000)];
        assert_eq!(np.spec.svc_type, ServiceType::NodePort);
        let lb = &d.services[&Frontend::tcp(Ipv4Addr::new(192, 168, 10, 211), 80)];
        assert_eq!(lb.spec.svc_type, ServiceType::LoadBalancer);
        // Headless: nothing. kube-dns: 3 frontends (53/UDP, 53/TCP redirected).
        assert!(!d.services.values().any(|w| w.owner == "default/headless"));
        // eTP=Cluster: all nodes are candidates; k8s-ctr < k8s-w1 announces.
        assert!(d.announce.contains(&Ipv4Addr::new(192, 168, 10, 211)));
        let mut v = view();
        v.node_name = "k8s-w1".into();
        assert!(desired(&webpod(), &v).announce.is_empty());
    }

    #[test]
    fn etp_local_announcer_has_a_backend() {
        let mut objs = webpod();
        objs.services[0]
            .spec
            .as_mut()
            .unwrap()
            .external_traffic_policy = Some("Local".into());
        // Make the only ready endpoint on k8s-w1.
        objs.slices[0].endpoints.as_mut().unwrap().remove(0);
        let d = desired(&objs, &view());
        assert!(d.announce.is_empty());
        assert!(
            d.services[&Frontend::tcp(Ipv4Addr::UNSPECIFIED, 31000)]
                .spec
                .ext_traffic_local
        );
        let mut v = view();
        v.node_name = "k8s-w1".into();
        assert_eq!(desired(&objs, &v).announce.len(), 1);
    }

    #[test]
    fn lrp_redirects_named_ports_and_falls_back() {
        let d = desired(&webpod(), &view());
        let udp = &d.services[&Frontend::udp(Ipv4Addr::new(10, 96, 0, 10), 53)];
        assert_eq!(udp.spec.svc_type, ServiceType::LocalRedirect);
        assert_eq!(
            udp.spec.backends,
            vec![BackendSpec::new(Ipv4Addr::new(10, 244, 0, 236), 53, true)]
        );
        let m = &d.services[&Frontend::tcp(Ipv4Addr::new(10, 96, 0, 10), 9153)];
        assert_eq!(m.spec.svc_type, ServiceType::ClusterIp);
        let text = format_lrp_list(&d.lrps);
        assert!(
            text.starts_with(
                "LRP namespace   LRP name       FrontendType                Matching Service\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kube-system     nodelocaldns   clusterIP + all svc ports   kube-system/kube-dns\n"
            ),
            "{text}"
        );
        assert!(text.contains("|              10.96.0.10:53/UDP -> 10.244.0.236:53(kube-system/node-local-dns-nnt9r),\n"), "{text}");
        assert!(text.contains("10.96.0.10:9153/TCP ->\n"), "{text}");
        // The cache pod is not ready: fallback.
        let mut objs = webpod();
        objs.pods[0].status.as_mut().unwrap().conditions = Some(vec![serde_json::from_value(
            json!({"type": "Ready", "status": "False"}),
        )
        .unwrap()]);
        let d2 = desired(&objs, &view());
        let udp2 = &d2.services[&Frontend::udp(Ipv4Addr::new(10, 96, 0, 10), 53)];
        assert_eq!(udp2.spec.svc_type, ServiceType::ClusterIp);
        // Another node has no local DNS cache: the ClusterIP stays.
        let mut v = view();
        v.node_name = "k8s-w1".into();
        let d = desired(&webpod(), &v);
        let udp = &d.services[&Frontend::udp(Ipv4Addr::new(10, 96, 0, 10), 53)];
        assert_eq!(udp.spec.svc_type, ServiceType::ClusterIp);
        // Disabled: no redirect anywhere.
        let mut v = view();
        v.lrp_enabled = false;
        let d = desired(&webpod(), &v);
        assert!(d
            .services
            .values()
            .all(|w| w.spec.svc_type != ServiceType::LocalRedirect));
    }

    #[test]
    fn selectors() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "In", "values": ["x", "y"]},
                                 {"key": "c", "operator": "DoesNotExist"}]}))
        .unwrap();
        let l = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector_matches(&sel, &l(&[("a", "1"), ("b", "y")])));
        assert!(!selector_matches(&sel, &l(&[("a", "1"), ("b", "z")])));
        assert!(!selector_matches(
            &sel,
            &l(&[("a", "1"), ("b", "x"), ("c", "")])
        ));
        assert!(!selector_matches(&sel, &l(&[("b", "x")])));
    }
}
