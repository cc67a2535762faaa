//! Service address allocation (the lab's kube-apiserver allocators and
//! LB-IPAM): ClusterIPs from `k8sServiceCIDR`, NodePorts from 30000-32767,
//! LoadBalancer ingress IPs from `loadBalancerIPPool`.
//!
//! Allocation state is not kept anywhere: each pass rebuilds it from the
//! stored Services (so a restarted controller never moves an assignment and a
//! deleted Service's addresses are free again). Claims are honoured oldest
//! Service first (creationTimestamp, then namespace/name); a Service whose
//! requested address or port is already another's, or outside its range, is
//! left unallocated and a warning names it.
//!
//! Dynamic ClusterIPs skip the network address, the first address (the
//! `default/kubernetes` Service's) and the broadcast address, and come from
//! the upper band first, as Kubernetes does (the lower
//! `min(max(16, size/16), 256)` addresses are kept for static requests such
//! as kube-dns' `10.96.0.10`). Assignments are deterministic (lowest free).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use fibril_api::Service;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

use crate::select::namespace_of;

/// The NodePort range (`--service-node-port-range`).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;

/// Where Service addresses come from.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRanges {
    /// `k8sServiceCIDR`.
    pub service_cidr: Ipv4Net,
    /// `loadBalancerIPPool` (empty: LoadBalancer Services stay pending).
    pub lb_pool: Vec<Ipv4Net>,
}

impl Default for ServiceRanges {
    fn default() -> Self {
        Self {
            service_cidr: Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 16)
                .unwrap_or_else(|_| Ipv4Net::default()),
            lb_pool: Vec::new(),
        }
    }
}

/// Services to write (at the revision read) and warnings about the ones that
/// cannot be allocated.
#[derive(Debug, Default, Clone)]
pub struct ServicePlan {
    pub updates: Vec<Service>,
    pub warnings: Vec<String>,
}

fn svc_id(s: &Service) -> String {
    format!(
        "{}/{}",
        namespace_of(&s.metadata),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

fn svc_type(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|sp| sp.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn wants_node_ports(s: &Service) -> bool {
    match svc_type(s) {
        "NodePort" => true,
        // `allocateLoadBalancerNodePorts: false` keeps requested ones only.
        "LoadBalancer" => s
            .spec
            .as_ref()
            .and_then(|sp| sp.allocate_load_balancer_node_ports)
            .unwrap_or(true),
        _ => false,
    }
}

/// Whether the Service may hold nodePorts at all (they are cleared
/// otherwise).
fn may_have_node_ports(s: &Service) -> bool {
    matches!(svc_type(s), "NodePort" | "LoadBalancer")
}

fn lb_ip(s: &Service) -> Option<&str> {
    s.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .as_deref()
}

/// Addresses in use, by owner.
#[derive(Default)]
struct Claims {
    ips: HashMap<Ipv4Addr, String>,
    ports: HashMap<i32, String>,
    lb: HashMap<Ipv4Addr, String>,
}

/// The first address a dynamic allocation may use in `cidr`, and the
/// addresses always skipped.
fn dynamic_order(cidr: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let net = u32::from(cidr.network());
    let size: u64 = 1u64 << (32 - u32::from(cidr.prefix_len()));
    let offset = (size / 16).clamp(16, 256);
    // Usable: net+2 ..= net+size-2 (no network, first, broadcast address).
    let first = 2u64;
    let last = size.saturating_sub(2);
    let upper = offset.max(first)..=last;
    let lower = first..=offset.saturating_sub(1).min(last);
    upper.chain(lower).filter_map(move |o| {
        u32::try_from(o)
            .ok()
            .map(|o| Ipv4Addr::from(net.wrapping_add(o)))
    })
}

/// Plans ClusterIP, NodePort and LoadBalancer IP assignments for all
/// Services.
pub fn allocate_services(services: &[Service], ranges: &ServiceRanges) -> ServicePlan {
    let mut plan = ServicePlan::default();
    let mut order: Vec<&Service> = services.iter().collect();
    order.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.clone(),
            namespace_of(&s.metadata).to_string(),
            s.metadata.name.clone(),
        )
    });
    let mut claims = Claims::default();
    let mut rejected: BTreeMap<String, ()> = BTreeMap::new();
    let mut reject = |plan: &mut ServicePlan, id: &str, msg: String| {
        plan.warnings.push(msg);
        rejected.insert(id.to_string(), ());
    };

    // Phase 1: claims of what Services already hold (or request).
    for s in &order {
        let id = svc_id(s);
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        if svc_type(s) == "ExternalName" {
            continue;
        }
        match spec.cluster_ip.as_deref() {
            None | Some("") | Some("None") => {}
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(ip) if ranges.service_cidr.contains(&ip) => {
                    if let Some(other) = claims.ips.get(&ip) {
                        reject(
                            &mut plan,
                            &id,
                            format!("service {id}: clusterIP {ip} is already allocated to {other}"),
                        );
                    } else {
                        claims.ips.insert(ip, id.clone());
                    }
                }
                // Outside the range (requested so, or the CIDR changed since
                // it was allocated): kept as it is, never moved.
                _ => plan.warnings.push(format!(
                    "service {id}: clusterIP {text} is not an address of the service CIDR {}; kept as is",
                    ranges.service_cidr
                )),
            },
        }
        if may_have_node_ports(s) {
            for p in spec.ports.iter().flatten() {
                let Some(np) = p.node_port else { continue };
                let pname = p.name.clone().unwrap_or_else(|| p.port.to_string());
                if !NODE_PORT_RANGE.contains(&np) {
                    reject(
                        &mut plan,
                        &id,
                        format!("service {id} port {pname}: nodePort {np} is outside 30000-32767"),
                    );
                } else if let Some(other) = claims.ports.get(&np).filter(|o| **o != id) {
                    reject(
                        &mut plan,
                        &id,
                        format!(
                            "service {id} port {pname}: nodePort {np} is already allocated to {other}"
                        ),
                    );
                } else {
                    claims.ports.insert(np, id.clone());
                }
            }
        }
        if svc_type(s) == "LoadBalancer" {
            if let Some(ip) = lb_ip(s).and_then(|t| t.parse::<Ipv4Addr>().ok()) {
                claims.lb.entry(ip).or_insert_with(|| id.clone());
            }
        }
    }

    // Phase 2: fill in what is missing.
    for s in &order {
        let id = svc_id(s);
        if rejected.contains_key(&id) || svc_type(s) == "ExternalName" {
            continue;
        }
        let mut s2 = (*s).clone();
        let Some(spec) = s2.spec.as_mut() else {
            continue;
        };
        let is_lb = svc_type(s) == "LoadBalancer";
        let node_ports = wants_node_ports(s);
        let keep_node_ports = may_have_node_ports(s);

        if spec.cluster_ip.as_deref().unwrap_or_default().is_empty() {
            let first = Ipv4Addr::from(u32::from(ranges.service_cidr.network()).wrapping_add(1));
            let is_kubernetes = id == "default/kubernetes";
            let pick = if is_kubernetes && !claims.ips.contains_key(&first) {
                Some(first)
            } else {
                dynamic_order(ranges.service_cidr).find(|ip| !claims.ips.contains_key(ip))
            };
            match pick {
                Some(ip) => {
                    claims.ips.insert(ip, id.clone());
                    spec.cluster_ip = Some(ip.to_string());
                }
                None => {
                    plan.warnings.push(format!(
                        "service {id}: no free clusterIP in {}",
                        ranges.service_cidr
                    ));
                    continue;
                }
            }
        }
        if let Some(ip) = spec.cluster_ip.clone() {
            if spec.cluster_ips.as_deref() != Some(std::slice::from_ref(&ip)) {
                spec.cluster_ips = Some(vec![ip]);
            }
            if spec.ip_families.is_none() {
                spec.ip_families = Some(vec!["IPv4".to_string()]);
            }
            if spec.ip_family_policy.is_none() {
                spec.ip_family_policy = Some("SingleStack".to_string());
            }
        }

        let mut ports_ok = true;
        for p in spec.ports.iter_mut().flatten() {
            if !keep_node_ports {
                p.node_port = None;
                continue;
            }
            if p.node_port.is_some() || !node_ports {
                continue;
            }
            match NODE_PORT_RANGE
                .clone()
                .find(|n| !claims.ports.contains_key(n))
            {
                Some(n) => {
                    claims.ports.insert(n, id.clone());
                    p.node_port = Some(n);
                }
                None => {
                    ports_ok = false;
                    plan.warnings
                        .push(format!("service {id}: no free nodePort in 30000-32767"));
                    break;
                }
            }
        }
        if !ports_ok {
            continue;
        }

        let has_lb_ip = lb_ip(s).is_some();
        if is_lb {
            if !has_lb_ip {
                let requested = spec.load_balancer_ip.clone().filter(|t| !t.is_empty());
                let pick = match requested {
                    Some(text) => match text.parse::<Ipv4Addr>() {
                        Ok(ip)
                            if ranges.lb_pool.iter().any(|n| n.contains(&ip))
                                && !claims.lb.contains_key(&ip) =>
                        {
                            Some(ip)
                        }
                        _ => {
                            plan.warnings.push(format!(
                                "service {id}: loadBalancerIP {text} is not a free address of loadBalancerIPPool {:?}",
                                ranges.lb_pool.iter().map(ToString::to_string).collect::<Vec<_>>()
                            ));
                            None
                        }
                    },
                    None => {
                        let ip = ranges
                            .lb_pool
                            .iter()
                            .flat_map(|n| n.hosts())
                            .find(|ip| !claims.lb.contains_key(ip));
                        if ip.is_none() && ranges.lb_pool.is_empty() {
                            plan.warnings.push(format!(
                                "service {id}: loadBalancerIPPool is empty (set loadBalancer.ipPool); EXTERNAL-IP stays pending"
                            ));
                        } else if ip.is_none() {
                            plan.warnings.push(format!(
                                "service {id}: no free address in loadBalancerIPPool {:?}; EXTERNAL-IP stays pending",
                                ranges.lb_pool.iter().map(ToString::to_string).collect::<Vec<_>>()
                            ));
                        }
                        ip
                    }
                };
                if let Some(ip) = pick {
                    claims.lb.insert(ip, id.clone());
                    let status = s2.status.get_or_insert_with(ServiceStatus::default);
                    status.load_balancer = Some(LoadBalancerStatus {
                        ingress: Some(vec![LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ip_mode: Some("VIP".to_string()),
                            ..Default::default()
                        }]),
                    });
                }
            }
        } else if has_lb_ip {
            if let Some(st) = s2.status.as_mut() {
                st.load_balancer = Some(LoadBalancerStatus::default());
            }
        }

        if &s2 != *s {
            plan.updates.push(s2);
        }
    }
    plan
}
