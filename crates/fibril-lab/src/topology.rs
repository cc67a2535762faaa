//! Topology files: the YAML schema of a lab (subnets, nodes, router, static
//! routes, cluster settings), the shipped topologies embedded in the binary,
//! and validation whose errors name the key at fault.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Topologies shipped in `lab/topologies/`, embedded so `--topology NAME` works anywhere.
pub const BUILTIN_TOPOLOGIES: &[(&str, &str)] = &[
    (
        "seed-3w",
        include_str!("../../../lab/topologies/seed-3w.yaml"),
    ),
    (
        "seed-4w",
        include_str!("../../../lab/topologies/seed-4w.yaml"),
    ),
    (
        "3nodes",
        include_str!("../../../lab/topologies/3nodes.yaml"),
    ),
];

/// Host name reserved for the per-lab fabric namespace.
pub const FABRIC_HOST: &str = "fabric";

/// Errors loading or validating a topology. `at` is the key path at fault,
/// e.g. `nodes[1].interfaces[0].address`.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("unknown topology {name:?}: not a file and not one of the built-in topologies ({available})")]
    Unknown { name: String, available: String },

    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("topology {source_name}: {error}")]
    Parse {
        source_name: String,
        #[source]
        error: serde_yaml::Error,
    },

    #[error("{at}: duplicate {kind} name {name:?} (first defined at {first})")]
    DuplicateName {
        at: String,
        kind: &'static str,
        name: String,
        first: String,
    },

    #[error("{at}: invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        at: String,
        kind: &'static str,
        name: String,
        reason: String,
    },

    #[error("{at}: unknown network {network:?} (defined networks: {known})")]
    UnknownNetwork {
        at: String,
        network: String,
        known: String,
    },

    #[error("{at}: address {address} is outside network {network} ({cidr})")]
    AddressOutsideSubnet {
        at: String,
        address: Ipv4Addr,
        network: String,
        cidr: Ipv4Net,
    },

    #[error("{at}: address {address} is the network or broadcast address of {cidr}")]
    ReservedAddress {
        at: String,
        address: Ipv4Addr,
        cidr: Ipv4Net,
    },

    #[error("{at}: duplicate IP address {address} (already used at {first})")]
    DuplicateAddress {
        at: String,
        address: Ipv4Addr,
        first: String,
    },

    #[error("{at}: CIDR {cidr} has host bits set (did you mean {}?)", .cidr.trunc())]
    HostBitsSet { at: String, cidr: Ipv4Net },

    #[error("{at}: network {cidr} overlaps network {other} ({other_cidr})")]
    OverlappingNetworks {
        at: String,
        cidr: Ipv4Net,
        other: String,
        other_cidr: Ipv4Net,
    },

    #[error("{at}: gateway {via} is not on any subnet of this host (add `onlink: true` and `dev` to force)")]
    UnreachableGateway { at: String, via: Ipv4Addr },

    #[error("{at}: unknown device {dev:?} on this host")]
    UnknownDevice { at: String, dev: String },

    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
}

/// Result alias for topology operations.
pub type TopologyResult<T> = Result<T, TopologyError>;

/// A lab topology (one YAML file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Topology name (informational; the lab name is chosen at `lab up`).
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// MTU of every underlay link and bridge.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// L2 subnets; each becomes a bridge in the fabric namespace.
    pub networks: Vec<Network>,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub router: Option<Router>,
    #[serde(default)]
    pub cluster: ClusterSettings,
}

fn default_mtu() -> u32 {
    1500
}

/// One L2 subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub cidr: Ipv4Net,
}

/// Node role, as kubeadm labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        })
    }
}

/// A Kubernetes node (one network namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
}

/// An underlay interface attached to a network (`eth1` on nodes as in the seeds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub network: String,
    /// Host address; the prefix length is the network's.
    pub address: Ipv4Addr,
}

/// The router (one network namespace, IP forwarding on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    #[serde(default = "default_router_name")]
    pub name: String,
    pub interfaces: Vec<Interface>,
    /// Loopback-like addresses on port-less bridges (`loop1`, `loop2` in the seeds).
    #[serde(default)]
    pub loopbacks: Vec<Loopback>,
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
}

fn default_router_name() -> String {
    "router".to_string()
}

/// A loopback-like device with one address (the kernel has no `dummy`
/// module here, so it is a bridge without ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loopback {
    pub name: String,
    pub address: Ipv4Net,
}

/// `ip route add TO [via VIA] [dev DEV] [onlink]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    pub to: Ipv4Net,
    #[serde(default)]
    pub via: Option<Ipv4Addr>,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub onlink: bool,
}

/// Cluster-wide settings later issues use (pod and service ranges, DNS IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    #[serde(rename = "clusterCIDR", default = "default_cluster_cidr")]
    pub cluster_cidr: Ipv4Net,
    #[serde(rename = "nodeCIDRMaskSize", default = "default_node_mask")]
    pub node_cidr_mask_size: u8,
    #[serde(rename = "serviceCIDR", default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
    #[serde(rename = "dnsServiceIP", default = "default_dns_ip")]
    pub dns_service_ip: Ipv4Addr,
    /// LoadBalancer IPs (`loadBalancerIPPool`); inside a node subnet the
    /// agents answer ARP for them, so the router reaches them without BGP.
    #[serde(rename = "loadBalancerCIDRs", default)]
    pub load_balancer_cidrs: Vec<Ipv4Net>,
}

fn default_cluster_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default()
}
fn default_node_mask() -> u8 {
    24
}
fn default_service_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 16).unwrap_or_default()
}
fn default_dns_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, 10)
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            cluster_cidr: default_cluster_cidr(),
            node_cidr_mask_size: default_node_mask(),
            service_cidr: default_service_cidr(),
            dns_service_ip: default_dns_ip(),
            load_balancer_cidrs: Vec::new(),
        }
    }
}

/// What kind of host a namespace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKind {
    ControlPlane,
    Worker,
    Router,
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostKind::ControlPlane => "control-plane",
            HostKind::Worker => "worker",
            HostKind::Router => "router",
        })
    }
}

/// A node or the router, seen uniformly.
#[derive(Debug, Clone)]
pub struct HostRef<'a> {
    pub name: &'a str,
    pub kind: HostKind,
    pub interfaces: &'a [Interface],
    pub routes: &'a [StaticRoute],
    pub loopbacks: &'a [Loopback],
    /// Key path prefix for error messages (`nodes[0]`, `router`).
    pub at: String,
}

impl Topology {
    /// Names of the built-in topologies.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN_TOPOLOGIES.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in topology by name (`seed-3w`, `seed-4w`, `3nodes`).
    pub fn builtin(name: &str) -> TopologyResult<Topology> {
        let (_, text) = BUILTIN_TOPOLOGIES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| TopologyError::Unknown {
                name: name.to_string(),
                available: Self::builtin_names().join(", "),
            })?;
        Self::from_yaml_str(text, name)
    }

    /// `name_or_path`: a path to a YAML file if such a file exists (or it
    /// looks like a path), else a built-in topology name.
    pub fn load(name_or_path: &str) -> TopologyResult<Topology> {
        let path = Path::new(name_or_path);
        let looks_like_path = name_or_path.contains('/')
            || name_or_path.ends_with(".yaml")
            || name_or_path.ends_with(".yml");
        if path.is_file() || looks_like_path {
            let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
                path: name_or_path.to_string(),
                source,
            })?;
            return Self::from_yaml_str(&text, name_or_path);
        }
        Self::builtin(name_or_path)
    }

    /// Parses and validates YAML; `source_name` appears in parse errors.
    pub fn from_yaml_str(text: &str, source_name: &str) -> TopologyResult<Topology> {
        let topo: Topology = serde_yaml::from_str(text).map_err(|error| TopologyError::Parse {
            source_name: source_name.to_string(),
            error,
        })?;
        topo.validate()?;
        Ok(topo)
    }

    /// Serialises back to YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Nodes first (in file order), then the router.
    pub fn hosts(&self) -> Vec<HostRef<'_>> {
        let mut out: Vec<HostRef<'_>> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| HostRef {
                name: &n.name,
                kind: match n.role {
                    Role::ControlPlane => HostKind::ControlPlane,
                    Role::Worker => HostKind::Worker,
                },
                interfaces: &n.interfaces,
                routes: &n.routes,
                loopbacks: &[],
                at: format!("nodes[{i}]"),
            })
            .collect();
        if let Some(r) = &self.router {
            out.push(HostRef {
                name: &r.name,
                kind: HostKind::Router,
                interfaces: &r.interfaces,
                routes: &r.routes,
                loopbacks: &r.loopbacks,
                at: "router".to_string(),
            });
        }
        out
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<HostRef<'_>> {
        self.hosts().into_iter().find(|h| h.name == name)
    }

    /// The network named `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Node IP: the address of the host's first interface.
    pub fn node_ip(&self, host: &str) -> Option<Ipv4Addr> {
        self.host(host)
            .and_then(|h| h.interfaces.first().map(|i| i.address))
    }

    /// Interface address with its network's prefix length.
    pub fn interface_net(&self, iface: &Interface) -> Option<Ipv4Net> {
        self.network(&iface.network)
            .and_then(|n| Ipv4Net::new(iface.address, n.cidr.prefix_len()).ok())
    }

    /// Checks every rule; the error names the key path at fault.
    pub fn validate(&self) -> TopologyResult<()> {
        check_name("topology", "name", &self.name, 64)?;
        if !(576..=65535).contains(&self.mtu) {
            return Err(TopologyError::Invalid {
                at: "mtu".into(),
                message: format!("MTU {} is outside 576..=65535", self.mtu),
            });
        }
        if self.networks.is_empty() {
            return Err(TopologyError::Invalid {
                at: "networks".into(),
                message: "at least one network is required".into(),
            });
        }
        if self.nodes.is_empty() {
            return Err(TopologyError::Invalid {
                at: "nodes".into(),
                message: "at least one node is required".into(),
            });
        }

        // Networks: names (bridge names `br-NAME` must fit IFNAMSIZ), CIDRs.
        let mut net_names: HashMap<&str, String> = HashMap::new();
        for (i, net) in self.networks.iter().enumerate() {
            let at = format!("networks[{i}]");
            check_ifname(&format!("{at}.name"), "network", &net.name, 12)?;
            if let Some(first) = net_names.insert(&net.name, format!("{at}.name")) {
                return Err(TopologyError::DuplicateName {
                    at: format!("{at}.name"),
                    kind: "network",
                    name: net.name.clone(),
                    first,
                });
            }
            if net.cidr != net.cidr.trunc() {
                return Err(TopologyError::HostBitsSet {
                    at: format!("{at}.cidr"),
                    cidr: net.cidr,
                });
            }
            if net.cidr.prefix_len() > 30 {
                return Err(TopologyError::Invalid {
                    at: format!("{at}.cidr"),
                    message: format!("network {} is smaller than a /30", net.cidr),
                });
            }
            for other in &self.networks[..i] {
                if other.cidr.contains(&net.cidr) || net.cidr.contains(&other.cidr) {
                    return Err(TopologyError::OverlappingNetworks {
                        at: format!("{at}.cidr"),
                        cidr: net.cidr,
                        other: other.name.clone(),
                        other_cidr: other.cidr,
                    });
                }
            }
        }
        let known_nets = || {
            self.networks
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };

        // Hosts: names, interfaces, addresses, routes.
        let mut host_names: HashMap<&str, String> = HashMap::new();
        let mut addresses: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for host in self.hosts() {
            let at = host.at.clone();
            check_name(&format!("{at}.name"), "host", host.name, 40)?;
            if host.name == FABRIC_HOST {
                return Err(TopologyError::InvalidName {
                    at: format!("{at}.name"),
                    kind: "host",
                    name: host.name.to_string(),
                    reason: format!("{FABRIC_HOST:?} is reserved for the fabric namespace"),
                });
            }
            if let Some(first) = host_names.insert(host.name, format!("{at}.name")) {
                return Err(TopologyError::DuplicateName {
                    at: format!("{at}.name"),
                    kind: "host",
                    name: host.name.to_string(),
                    first,
                });
            }
            if host.interfaces.is_empty() {
                return Err(TopologyError::Invalid {
                    at: format!("{at}.interfaces"),
                    message: format!("host {} needs at least one interface", host.name),
                });
            }
            let mut dev_names: HashMap<&str, String> = HashMap::new();
            // Connected subnets of this host, for route gateway checks.
            let mut connected: Vec<Ipv4Net> = Vec::new();
            for (j, iface) in host.interfaces.iter().enumerate() {
                let iat = format!("{at}.interfaces[{j}]");
                check_ifname(&format!("{iat}.name"), "interface", &iface.name, 15)?;
                if let Some(first) = dev_names.insert(&iface.name, format!("{iat}.name")) {
                    return Err(TopologyError::DuplicateName {
                        at: format!("{iat}.name"),
                        kind: "interface",
                        name: iface.name.clone(),
                        first,
                    });
                }
                let net =
                    self.network(&iface.network)
                        .ok_or_else(|| TopologyError::UnknownNetwork {
                            at: format!("{iat}.network"),
                            network: iface.network.clone(),
                            known: known_nets(),
                        })?;
                if !net.cidr.contains(&iface.address) {
                    return Err(TopologyError::AddressOutsideSubnet {
                        at: format!("{iat}.address"),
                        address: iface.address,
                        network: net.name.clone(),
                        cidr: net.cidr,
                    });
                }
                if iface.address == net.cidr.network() || iface.address == net.cidr.broadcast() {
                    return Err(TopologyError::ReservedAddress {
                        at: format!("{iat}.address"),
                        address: iface.address,
                        cidr: net.cidr,
                    });
                }
                if let Some(first) = addresses.insert(iface.address, format!("{iat}.address")) {
                    return Err(TopologyError::DuplicateAddress {
                        at: format!("{iat}.address"),
                        address: iface.address,
                        first,
                    });
                }
                connected.push(net.cidr);
            }
            for (j, lo) in host.loopbacks.iter().enumerate() {
                let lat = format!("{at}.loopbacks[{j}]");
                check_ifname(&format!("{lat}.name"), "loopback", &lo.name, 15)?;
                if let Some(first) = dev_names.insert(&lo.name, format!("{lat}.name")) {
                    return Err(TopologyError::DuplicateName {
                        at: format!("{lat}.name"),
                        kind: "interface",
                        name: lo.name.clone(),
                        first,
                    });
                }
                if let Some(first) = addresses.insert(lo.address.addr(), format!("{lat}.address")) {
                    return Err(TopologyError::DuplicateAddress {
                        at: format!("{lat}.address"),
                        address: lo.address.addr(),
                        first,
                    });
                }
                if let Some(net) = self
                    .networks
                    .iter()
                    .find(|n| n.cidr.contains(&lo.address.addr()))
                {
                    return Err(TopologyError::Invalid {
                        at: format!("{lat}.address"),
                        message: format!(
                            "loopback address {} lies inside network {} ({})",
                            lo.address, net.name, net.cidr
                        ),
                    });
                }
                connected.push(lo.address.trunc());
            }
            let mut route_dsts: HashMap<Ipv4Net, String> = HashMap::new();
            for (j, route) in host.routes.iter().enumerate() {
                let rat = format!("{at}.routes[{j}]");
                if route.to != route.to.trunc() {
                    return Err(TopologyError::HostBitsSet {
                        at: format!("{rat}.to"),
                        cidr: route.to,
                    });
                }
                if route.to.prefix_len() == 0 {
                    return Err(TopologyError::Invalid {
                        at: format!("{rat}.to"),
                        message: "default routes are not allowed in the lab (nothing routes out)"
                            .into(),
                    });
                }
                if let Some(first) = route_dsts.insert(route.to, format!("{rat}.to")) {
                    return Err(TopologyError::Invalid {
                        at: format!("{rat}.to"),
                        message: format!("duplicate route to {} (first at {first})", route.to),
                    });
                }
                if let Some(dev) = &route.dev {
                    if !dev_names.contains_key(dev.as_str()) {
                        return Err(TopologyError::UnknownDevice {
                            at: format!("{rat}.dev"),
                            dev: dev.clone(),
                        });
                    }
                }
                match route.via {
                    Some(via) => {
                        if route.onlink {
                            if route.dev.is_none() {
                                return Err(TopologyError::Invalid {
                                    at: format!("{rat}.dev"),
                                    message: "an onlink route needs `dev`".into(),
                                });
                            }
                        } else if !connected.iter().any(|c| c.contains(&via)) {
                            return Err(TopologyError::UnreachableGateway {
                                at: format!("{rat}.via"),
                                via,
                            });
                        }
                    }
                    None => {
                        if route.dev.is_none() {
                            return Err(TopologyError::Invalid {
                                at: rat,
                                message: "a route needs `via`, `dev` or both".into(),
                            });
                        }
                    }
                }
            }
        }

        let c = &self.cluster;
        if c.cluster_cidr != c.cluster_cidr.trunc() {
            return Err(TopologyError::HostBitsSet {
                at: "cluster.clusterCIDR".into(),
                cidr: c.cluster_cidr,
            });
        }
        if c.service_cidr != c.service_cidr.trunc() {
            return Err(TopologyError::HostBitsSet {
                at: "cluster.serviceCIDR".into(),
                cidr: c.service_cidr,
            });
        }
        if c.node_cidr_mask_size < c.cluster_cidr.prefix_len() || c.node_cidr_mask_size > 30 {
            return Err(TopologyError::Invalid {
                at: "cluster.nodeCIDRMaskSize".into(),
                message: format!(
                    "mask size {} must be between the cluster CIDR prefix /{} and 30",
                    c.node_cidr_mask_size,
                    c.cluster_cidr.prefix_len()
                ),
            });
        }
        if !c.service_cidr.contains(&c.dns_service_ip) {
            return Err(TopologyError::Invalid {
                at: "cluster.dnsServiceIP".into(),
                message: format!(
                    "{} is outside serviceCIDR {}",
                    c.dns_service_ip, c.service_cidr
                ),
            });
        }
        if c.cluster_cidr.contains(&c.service_cidr) || c.service_cidr.contains(&c.cluster_cidr) {
            return Err(TopologyError::Invalid {
                at: "cluster.serviceCIDR".into(),
                message: format!("{} overlaps clusterCIDR {}", c.service_cidr, c.cluster_cidr),
            });
        }
        for net in &self.networks {
            if net.cidr.contains(&c.cluster_cidr.network())
                || c.cluster_cidr.contains(&net.cidr.network())
            {
                return Err(TopologyError::Invalid {
                    at: "cluster.clusterCIDR".into(),
                    message: format!(
                        "{} overlaps network {} ({})",
                        c.cluster_cidr, net.name, net.cidr
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Fuzz entry point: parses and validates arbitrary bytes as a topology and
/// never panics. Valid topologies must survive a YAML round trip; returns
/// whether the input was a valid topology.
pub fn fuzz_topology(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    match Topology::from_yaml_str(&text, "fuzz") {
        Ok(t) => {
            // A valid topology serialises to YAML that parses back to itself.
            matches!(Topology::from_yaml_str(&t.to_yaml(), "fuzz-roundtrip"), Ok(back) if back == t)
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

/// Host and topology names: lowercase DNS-label style.
fn check_name(at: &str, kind: &'static str, name: &str, max: usize) -> TopologyResult<()> {
    let reason = if name.is_empty() {
        Some("empty".to_string())
    } else if name.len() > max {
        Some(format!("longer than {max} characters"))
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some("only lowercase letters, digits and '-' are allowed".to_string())
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("must not start or end with '-'".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TopologyError::InvalidName {
            at: at.to_string(),
            kind,
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Interface names: at most `max` bytes (IFNAMSIZ-1 is 15), no `/`, no spaces.
fn check_ifname(at: &str, kind: &'static str, name: &str, max: usize) -> TopologyResult<()> {
    let reason = if name.is_empty() {
        Some("empty".to_string())
    } else if name.len() > max {
        Some(format!("longer than {max} characters"))
    } else if name == "lo" || name == "." || name == ".." {
        Some("reserved name".to_string())
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Some("only letters, digits, '-', '_' and '.' are allowed".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TopologyError::InvalidName {
            at: at.to_string(),
            kind,
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed4w() -> Topology {
        Topology::builtin("seed-4w").unwrap()
    }

    fn err_of(t: &Topology) -> String {
        t.validate().unwrap_err().to_string()
    }

    #[test]
    fn builtins_parse_and_validate() {
        for name in Topology::builtin_names() {
            let t = Topology::builtin(name).unwrap();
            assert_eq!(t.name, name);
            assert!(t.router.is_some());
        }
    }

    #[test]
    fn seed_3w_matches_design() {
        let t = Topology::builtin("seed-3w").unwrap();
        assert_eq!(t.node_ip("k8s-ctr"), Some(Ipv4Addr::new(192, 168, 10, 100)));
        assert_eq!(t.node_ip("k8s-w1"), Some(Ipv4Addr::new(192, 168, 10, 101)));
        assert_eq!(t.node_ip("router"), Some(Ipv4Addr::new(192, 168, 10, 200)));
        let r = t.router.as_ref().unwrap();
        let loops: Vec<String> = r
            .loopbacks
            .iter()
            .map(|l| format!("{} {}", l.name, l.address))
            .collect();
        assert_eq!(loops, ["loop1 10.10.1.200/24", "loop2 10.10.2.200/24"]);
        assert_eq!(t.cluster.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(t.cluster.node_cidr_mask_size, 24);
        assert_eq!(t.cluster.service_cidr.to_string(), "10.96.0.0/16");
        assert_eq!(t.cluster.dns_service_ip, Ipv4Addr::new(10, 96, 0, 10));
        for n in &t.nodes {
            assert_eq!(n.interfaces[0].name, "eth1");
            assert_eq!(n.routes[0].to.to_string(), "10.10.0.0/16");
            assert_eq!(n.routes[0].via, Some(Ipv4Addr::new(192, 168, 10, 200)));
        }
    }

    #[test]
    fn seed_4w_routes_between_subnets() {
        let t = seed4w();
        assert_eq!(t.node_ip("k8s-w0"), Some(Ipv4Addr::new(192, 168, 20, 100)));
        let w0 = t.node("k8s-w0").unwrap();
        assert!(w0
            .routes
            .iter()
            .any(|r| r.to.to_string() == "192.168.10.0/24"
                && r.via == Some(Ipv4Addr::new(192, 168, 20, 200))));
        let ctr = t.node("k8s-ctr").unwrap();
        assert!(ctr
            .routes
            .iter()
            .any(|r| r.to.to_string() == "192.168.20.0/24"));
        assert_eq!(t.router.as_ref().unwrap().interfaces[1].name, "eth2");
    }

    #[test]
    fn load_accepts_names_and_paths() {
        assert!(Topology::load("seed-3w").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.yaml");
        std::fs::write(&p, BUILTIN_TOPOLOGIES[1].1).unwrap();
        assert_eq!(Topology::load(p.to_str().unwrap()).unwrap().name, "seed-4w");
        let e = Topology::load("nope").unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("seed-3w"), "{e}");
        let e = Topology::load("/nonexistent/x.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.yaml"), "{e}");
    }

    #[test]
    fn duplicate_ip_is_named() {
        let mut t = seed4w();
        t.nodes[1].interfaces[0].address = Ipv4Addr::new(192, 168, 10, 100);
        let e = err_of(&t);
        assert!(e.contains("nodes[1].interfaces[0].address"), "{e}");
        assert!(
            e.contains("192.168.10.100") && e.contains("nodes[0]"),
            "{e}"
        );
    }

    #[test]
    fn unknown_network_is_named() {
        let mut t = seed4w();
        t.nodes[2].interfaces[0].network = "net99".into();
        let e = err_of(&t);
        assert!(e.contains("nodes[2].interfaces[0].network"), "{e}");
        assert!(e.contains("net99") && e.contains("net10"), "{e}");
    }

    #[test]
    fn address_outside_subnet_is_named() {
        let mut t = seed4w();
        t.router.as_mut().unwrap().interfaces[1].address = Ipv4Addr::new(192, 168, 30, 1);
        let e = err_of(&t);
        assert!(e.contains("router.interfaces[1].address"), "{e}");
        assert!(
            e.contains("192.168.30.1") && e.contains("192.168.20.0/24"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_names_are_named() {
        let mut t = seed4w();
        t.nodes[2].name = "k8s-ctr".into();
        let e = err_of(&t);
        assert!(e.contains("nodes[2].name") && e.contains("k8s-ctr"), "{e}");

        let mut t = seed4w();
        t.router.as_mut().unwrap().name = "k8s-w1".into();
        assert!(err_of(&t).contains("router.name"));

        let mut t = seed4w();
        t.networks[1].name = "net10".into();
        assert!(err_of(&t).contains("networks[1].name"));

        let mut t = seed4w();
        t.router.as_mut().unwrap().loopbacks[1].name = "eth1".into();
        assert!(err_of(&t).contains("router.loopbacks[1].name"));
    }

    #[test]
    fn other_rules() {
        let mut t = seed4w();
        t.nodes[0].interfaces[0].address = Ipv4Addr::new(192, 168, 10, 255);
        assert!(err_of(&t).contains("broadcast"));

        let mut t = seed4w();
        t.networks[1].cidr = "192.168.10.0/23".parse().unwrap();
        let e = err_of(&t);
        assert!(e.contains("networks[1].cidr"), "{e}");

        let mut t = seed4w();
        t.networks[0].cidr = "192.168.10.1/24".parse().unwrap();
        assert!(err_of(&t).contains("host bits"));

        let mut t = seed4w();
        t.nodes[0].routes[0].via = Some(Ipv4Addr::new(172, 16, 0, 1));
        let e = err_of(&t);
        assert!(
            e.contains("nodes[0].routes[0].via") && e.contains("172.16.0.1"),
            "{e}"
        );

        let mut t = seed4w();
        t.nodes[0].routes[0].to = "0.0.0.0/0".parse().unwrap();
        assert!(err_of(&t).contains("default route"));

        let mut t = seed4w();
        t.nodes[0].interfaces[0].name = "a-very-long-interface".into();
        assert!(err_of(&t).contains("nodes[0].interfaces[0].name"));

        let mut t = seed4w();
        t.nodes[0].name = "fabric".into();
        assert!(err_of(&t).contains("reserved"));

        let mut t = seed4w();
        t.cluster.dns_service_ip = Ipv4Addr::new(10, 97, 0, 10);
        assert!(err_of(&t).contains("cluster.dnsServiceIP"));

        let mut t = seed4w();
        t.cluster.node_cidr_mask_size = 8;
        assert!(err_of(&t).contains("cluster.nodeCIDRMaskSize"));

        let mut t = seed4w();
        t.nodes[0].routes[0].dev = Some("eth9".into());
        assert!(err_of(&t).contains("eth9"));
    }

    #[test]
    fn yaml_errors_name_the_source_and_key() {
        let e = Topology::from_yaml_str("name: x\nnetworks: []\nnodes: []\nbogus: 1\n", "my.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("my.yaml") && e.contains("bogus"), "{e}");
        let text = BUILTIN_TOPOLOGIES[0]
            .1
            .replace("address: 192.168.10.101", "address: 192.168.10.300");
        let e = Topology::from_yaml_str(&text, "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.yaml") && e.contains("nodes[1]"), "{e}");
    }

    #[test]
    fn round_trips_through_yaml() {
        let t = seed4w();
        let back = Topology::from_yaml_str(&t.to_yaml(), "roundtrip").unwrap();
        assert_eq!(t, back);
    }
}
