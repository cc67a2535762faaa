//! The config object: typed fields with Cilium's defaults, and the key table that maps
//! each Helm value name to its field, its flat (`cilium-config`) name, its parser and its
//! formatter. [`Config::set`] and [`Config::get`] go through that table.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use fibril_ipam::config::{format_cidr_list, parse_cidr, parse_cidr_list, parse_mask_size};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $var),+
        }
        impl $name {
            /// Every accepted spelling, in declaration order.
            pub const VALUES: &'static [&'static str] = &[$($s),+];
            /// The value as written in config.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$var => $s),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$var),)+
                    _ => Err(format!("expected one of {}", Self::VALUES.join(", "))),
                }
            }
        }
    };
}

str_enum!(
    /// `ipam.mode`.
    IpamMode {
        /// Host scope: node podCIDR from the control plane (`Node.spec.podCIDRs`).
        Kubernetes => "kubernetes",
        /// The operator carves per-node blocks of `clusterPoolIPv4PodCIDRList`.
        ClusterPool => "cluster-pool",
        /// Named pools, per-node blocks on demand.
        MultiPool => "multi-pool",
    }
);

str_enum!(
    /// `routingMode`.
    RoutingMode {
        /// Pod CIDRs routed by the underlay (kernel routes, BGP).
        Native => "native",
        /// Encapsulation between nodes.
        Tunnel => "tunnel",
    }
);

str_enum!(
    /// `tunnelProtocol`.
    TunnelProtocol {
        /// VXLAN, UDP 8472 by default.
        Vxlan => "vxlan",
        /// Geneve, UDP 6081 by default.
        Geneve => "geneve",
    }
);

str_enum!(
    /// `policyEnforcementMode` (Cilium's `enable-policy`).
    PolicyEnforcementMode {
        /// Enforce for endpoints selected by some policy.
        Default => "default",
        /// Enforce for every endpoint (deny unless allowed).
        Always => "always",
        /// Never enforce.
        Never => "never",
    }
);

impl TunnelProtocol {
    /// The protocol's standard UDP port (Cilium's: 8472 for VXLAN, 6081 for Geneve).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Vxlan => 8472,
            Self::Geneve => 6081,
        }
    }
}

/// One auto-created multi-pool pool
/// (`ipam.operator.autoCreateCiliumPodIPPools.<name>.ipv4`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoPool {
    /// `.ipv4.cidrs`.
    #[serde(default)]
    pub cidrs: Vec<Ipv4Net>,
    /// `.ipv4.maskSize`; required (validation fails without it).
    #[serde(default)]
    pub mask_size: Option<u8>,
}

/// `ipam.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IpamConfig {
    /// `ipam.mode`.
    pub mode: IpamMode,
    /// `ipam.operator.clusterPoolIPv4PodCIDRList`.
    #[serde(rename = "clusterPoolIPv4PodCIDRList")]
    pub cluster_pool_ipv4_pod_cidr_list: Vec<Ipv4Net>,
    /// `ipam.operator.clusterPoolIPv4MaskSize`.
    #[serde(rename = "clusterPoolIPv4MaskSize")]
    pub cluster_pool_ipv4_mask_size: u8,
    /// `ipam.operator.autoCreateCiliumPodIPPools`: pool name -> pool.
    #[serde(rename = "autoCreateCiliumPodIPPools")]
    pub auto_create_pools: BTreeMap<String, AutoPool>,
}

impl Default for IpamConfig {
    fn default() -> Self {
        Self {
            mode: IpamMode::ClusterPool,
            cluster_pool_ipv4_pod_cidr_list: vec![net(10, 0, 0, 0, 8)],
            cluster_pool_ipv4_mask_size: 24,
            auto_create_pools: BTreeMap::new(),
        }
    }
}

/// `ipMasqAgent.*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IpMasqAgentConfig {
    /// `ipMasqAgent.enabled`.
    pub enabled: bool,
    /// `ipMasqAgent.config.nonMasqueradeCIDRs`; `None` means the default list
    /// ([`DEFAULT_NON_MASQUERADE_CIDRS`]).
    #[serde(rename = "nonMasqueradeCIDRs")]
    pub non_masquerade_cidrs: Option<Vec<Ipv4Net>>,
    /// `ipMasqAgent.config.masqLinkLocal`: when false, 169.254.0.0/16 is not masqueraded.
    pub masq_link_local: bool,
}

/// A BGP peer (`bgp.peers` entry `ADDRESS:ASN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    /// Peer address.
    pub address: Ipv4Addr,
    /// Peer AS number.
    pub asn: u32,
}

impl fmt::Display for BgpPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.address, self.asn)
    }
}

/// `bgp.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct BgpConfig {
    /// `bgp.enabled`: advertise the node's pod CIDRs to the peers.
    pub enabled: bool,
    /// `bgp.localASN`: the nodes' AS number.
    #[serde(rename = "localASN")]
    pub local_asn: u32,
    /// `bgp.peers`.
    pub peers: Vec<BgpPeer>,
}

impl Default for BgpConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            local_asn: 64512,
            peers: Vec::new(),
        }
    }
}

pub use fibril_ipam::config::DEFAULT_NON_MASQUERADE_CIDRS;

/// The one Fibril config object. Field names follow the Helm values; defaults are
/// Cilium's (cluster-pool 10.0.0.0/8 with /24 per node, tunnel routing with VXLAN,
/// kube-proxy replacement off, ...) plus the lab's Kubernetes ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    /// `ipam.*`.
    pub ipam: IpamConfig,
    /// `routingMode`.
    pub routing_mode: RoutingMode,
    /// `tunnelProtocol`.
    pub tunnel_protocol: TunnelProtocol,
    /// `tunnelPort`; 0 means the protocol's port ([`Config::effective_tunnel_port`]).
    pub tunnel_port: u16,
    /// `autoDirectNodeRoutes`.
    pub auto_direct_node_routes: bool,
    /// `ipv4NativeRoutingCIDR`: destinations in it are not masqueraded.
    #[serde(rename = "ipv4NativeRoutingCIDR")]
    pub ipv4_native_routing_cidr: Option<Ipv4Net>,
    /// `enableIPv4Masquerade`: masquerade pod traffic leaving the cluster.
    #[serde(rename = "enableIPv4Masquerade")]
    pub enable_ipv4_masquerade: bool,
    /// `bpf.masquerade`: masquerade in eBPF (Fibril's only masquerading implementation:
    /// with it off nothing is masqueraded).
    pub bpf_masquerade: bool,
    /// `ipMasqAgent.*`.
    pub ip_masq_agent: IpMasqAgentConfig,
    /// `kubeProxyReplacement`.
    pub kube_proxy_replacement: bool,
    /// `localRedirectPolicy`.
    pub local_redirect_policy: bool,
    /// `bgp.*`.
    pub bgp: BgpConfig,
    /// `policyEnforcementMode`.
    pub policy_enforcement_mode: PolicyEnforcementMode,
    /// `k8sClusterCIDR`: kube-controller-manager's `--cluster-cidr` (kubernetes IPAM).
    #[serde(rename = "k8sClusterCIDR")]
    pub k8s_cluster_cidr: Ipv4Net,
    /// `k8sNodeCIDRMaskSize`: kube-controller-manager's `--node-cidr-mask-size`.
    #[serde(rename = "k8sNodeCIDRMaskSize")]
    pub k8s_node_cidr_mask_size: u8,
    /// `k8sServiceCIDR`: `--service-cluster-ip-range` (ClusterIP allocation).
    #[serde(rename = "k8sServiceCIDR")]
    pub k8s_service_cidr: Ipv4Net,
    /// `loadBalancer.ipPool`: CIDRs LoadBalancer IPs are allocated from (empty: none).
    #[serde(rename = "loadBalancerIPPool")]
    pub load_balancer_ip_pool: Vec<Ipv4Net>,
    /// `installNoConntrackIptablesRules`: accepted so the seeds' Helm commands apply
    /// unchanged; Fibril installs no iptables rules, so it has no effect.
    pub install_no_conntrack_iptables_rules: bool,
}

const fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len) {
        Ok(n) => n,
        Err(_) => panic!("constant prefix length out of range"),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ipam: IpamConfig::default(),
            routing_mode: RoutingMode::Tunnel,
            tunnel_protocol: TunnelProtocol::Vxlan,
            tunnel_port: 0,
            auto_direct_node_routes: false,
            ipv4_native_routing_cidr: None,
            enable_ipv4_masquerade: true,
            bpf_masquerade: false,
            ip_masq_agent: IpMasqAgentConfig::default(),
            kube_proxy_replacement: false,
            local_redirect_policy: false,
            bgp: BgpConfig::default(),
            policy_enforcement_mode: PolicyEnforcementMode::Default,
            k8s_cluster_cidr: net(10, 244, 0, 0, 16),
            k8s_node_cidr_mask_size: 24,
            k8s_service_cidr: net(10, 96, 0, 0, 16),
            load_balancer_ip_pool: Vec::new(),
            install_no_conntrack_iptables_rules: false,
        }
    }
}

/// Helm name prefix of the auto-created pools.
pub const AUTO_POOL_PREFIX: &str = "ipam.operator.autoCreateCiliumPodIPPools.";

/// One fixed key: Helm name, flat name, accessors.
pub(crate) struct KeyDef {
    pub helm: &'static str,
    pub flat: &'static str,
    /// The flat-form value; `None` leaves the line out (unset optional).
    pub get: fn(&Config) -> Option<String>,
    pub set: fn(&mut Config, key: &str, value: &str) -> Result<(), ConfigError>,
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|x| x.strip_suffix(q)) {
            return inner.trim();
        }
    }
    s
}

/// Parses `true`/`false` (any case).
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    let v = unquote(value);
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ConfigError::invalid(key, value, "expected true or false"))
    }
}

fn parse_enum<T: FromStr<Err = String>>(key: &str, value: &str) -> Result<T, ConfigError> {
    unquote(value)
        .parse()
        .map_err(|e| ConfigError::invalid(key, value, e))
}

fn parse_u16_port(key: &str, value: &str) -> Result<u16, ConfigError> {
    match unquote(value).parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(p as u16),
        _ => Err(ConfigError::invalid(
            key,
            value,
            "expected a UDP port 1..65535 (0 = the protocol's default)",
        )),
    }
}

fn parse_asn(key: &str, value: &str) -> Result<u32, ConfigError> {
    match unquote(value).parse::<u32>() {
        Ok(a) if a > 0 => Ok(a),
        _ => Err(ConfigError::invalid(
            key,
            value,
            "expected an AS number 1..4294967295",
        )),
    }
}

fn strip_list(value: &str) -> &str {
    let s = value.trim();
    s.strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .or_else(|| s.strip_prefix('[').and_then(|x| x.strip_suffix(']')))
        .unwrap_or(s)
}

/// Parses `bgp.peers`: `{ADDR:ASN,...}`, or the flat space-separated form.
pub fn parse_bgp_peers(key: &str, value: &str) -> Result<Vec<BgpPeer>, ConfigError> {
    let inner = strip_list(value);
    if inner.contains(['{', '}', '[', ']']) {
        return Err(ConfigError::invalid(
            key,
            value,
            "unbalanced or nested brackets",
        ));
    }
    let mut out: Vec<BgpPeer> = Vec::new();
    for item in inner
        .split([',', ' ', '\t'])
        .map(unquote)
        .filter(|s| !s.is_empty())
    {
        let Some((addr, asn)) = item.rsplit_once(':') else {
            return Err(ConfigError::invalid(key, item, "expected ADDRESS:ASN"));
        };
        let address: Ipv4Addr = addr
            .parse()
            .map_err(|_| ConfigError::invalid(key, item, "not an IPv4 address"))?;
        let asn = parse_asn(key, asn)?;
        if out.iter().any(|p| p.address == address) {
            return Err(ConfigError::invalid(key, item, "peer listed twice"));
        }
        out.push(BgpPeer { address, asn });
    }
    Ok(out)
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn opt_nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

macro_rules! key {
    ($helm:literal, $flat:literal, |$c:ident| $get:expr, |$sc:ident, $k:ident, $v:ident| $set:expr) => {
        KeyDef {
            helm: $helm,
            flat: $flat,
            get: |$c: &Config| $get,
            set: |$sc: &mut Config, $k: &str, $v: &str| {
                $set;
                Ok(())
            },
        }
    };
}

/// Every fixed key (the auto-created pools are handled apart: their Helm keys carry the
/// pool name, their flat form is one `auto-create-cilium-pod-ip-pools` line).
pub(crate) static KEYS: &[KeyDef] = &[
    key!(
        "ipam.mode",
        "ipam",
        |c| Some(c.ipam.mode.to_string()),
        |c, k, v| c.ipam.mode = parse_enum(k, v)?
    ),
    key!(
        "ipam.operator.clusterPoolIPv4PodCIDRList",
        "cluster-pool-ipv4-cidr",
        |c| Some(format_cidr_list(&c.ipam.cluster_pool_ipv4_pod_cidr_list)),
        |c, k, v| c.ipam.cluster_pool_ipv4_pod_cidr_list = parse_cidr_list(k, v)?
    ),
    key!(
        "ipam.operator.clusterPoolIPv4MaskSize",
        "cluster-pool-ipv4-mask-size",
        |c| Some(c.ipam.cluster_pool_ipv4_mask_size.to_string()),
        |c, k, v| c.ipam.cluster_pool_ipv4_mask_size = parse_mask_size(k, v)?
    ),
    key!(
        "routingMode",
        "routing-mode",
        |c| Some(c.routing_mode.to_string()),
        |c, k, v| c.routing_mode = parse_enum(k, v)?
    ),
    key!(
        "tunnelProtocol",
        "tunnel-protocol",
        |c| Some(c.tunnel_protocol.to_string()),
        |c, k, v| c.tunnel_protocol = parse_enum(k, v)?
    ),
    key!(
        "tunnelPort",
        "tunnel-port",
        |c| Some(c.tunnel_port.to_string()),
        |c, k, v| c.tunnel_port = parse_u16_port(k, v)?
    ),
    key!(
        "autoDirectNodeRoutes",
        "auto-direct-node-routes",
        |c| Some(c.auto_direct_node_routes.to_string()),
        |c, k, v| c.auto_direct_node_routes = parse_bool(k, v)?
    ),
    key!(
        "ipv4NativeRoutingCIDR",
        "ipv4-native-routing-cidr",
        |c| c.ipv4_native_routing_cidr.map(|n| n.to_string()),
        |c, k, v| c.ipv4_native_routing_cidr = if unquote(v).is_empty() {
            None
        } else {
            Some(parse_cidr(k, v)?)
        }
    ),
    key!(
        "enableIPv4Masquerade",
        "enable-ipv4-masquerade",
        |c| Some(c.enable_ipv4_masquerade.to_string()),
        |c, k, v| c.enable_ipv4_masquerade = parse_bool(k, v)?
    ),
    key!(
        "bpf.masquerade",
        "enable-bpf-masquerade",
        |c| Some(c.bpf_masquerade.to_string()),
        |c, k, v| c.bpf_masquerade = parse_bool(k, v)?
    ),
    key!(
        "ipMasqAgent.enabled",
        "enable-ip-masq-agent",
        |c| Some(c.ip_masq_agent.enabled.to_string()),
        |c, k, v| c.ip_masq_agent.enabled = parse_bool(k, v)?
    ),
    key!(
        "ipMasqAgent.config.nonMasqueradeCIDRs",
        "ip-masq-agent-non-masquerade-cidrs",
        |c| c
            .ip_masq_agent
            .non_masquerade_cidrs
            .as_deref()
            .map(format_cidr_list),
        |c, k, v| c.ip_masq_agent.non_masquerade_cidrs = Some(parse_cidr_list(k, v)?)
    ),
    key!(
        "ipMasqAgent.config.masqLinkLocal",
        "ip-masq-agent-masq-link-local",
        |c| Some(c.ip_masq_agent.masq_link_local.to_string()),
        |c, k, v| c.ip_masq_agent.masq_link_local = parse_bool(k, v)?
    ),
    key!(
        "kubeProxyReplacement",
        "kube-proxy-replacement",
        |c| Some(c.kube_proxy_replacement.to_string()),
        |c, k, v| c.kube_proxy_replacement = parse_bool(k, v)?
    ),
    key!(
        "localRedirectPolicy",
        "enable-local-redirect-policy",
        |c| Some(c.local_redirect_policy.to_string()),
        |c, k, v| c.local_redirect_policy = parse_bool(k, v)?
    ),
    key!(
        "bgp.enabled",
        "enable-bgp-control-plane",
        |c| Some(c.bgp.enabled.to_string()),
        |c, k, v| c.bgp.enabled = parse_bool(k, v)?
    ),
    key!(
        "bgp.localASN",
        "bgp-local-asn",
        |c| Some(c.bgp.local_asn.to_string()),
        |c, k, v| c.bgp.local_asn = parse_asn(k, v)?
    ),
    key!(
        "bgp.peers",
        "bgp-peers",
        |c| opt_nonempty(join(&c.bgp.peers)),
        |c, k, v| c.bgp.peers = parse_bgp_peers(k, v)?
    ),
    key!(
        "policyEnforcementMode",
        "enable-policy",
        |c| Some(c.policy_enforcement_mode.to_string()),
        |c, k, v| c.policy_enforcement_mode = parse_enum(k, v)?
    ),
    key!(
        "k8sClusterCIDR",
        "k8s-cluster-cidr",
        |c| Some(c.k8s_cluster_cidr.to_string()),
        |c, k, v| c.k8s_cluster_cidr = parse_cidr(k, v)?
    ),
    key!(
        "k8sNodeCIDRMaskSize",
        "k8s-node-cidr-mask-size",
        |c| Some(c.k8s_node_cidr_mask_size.to_string()),
        |c, k, v| c.k8s_node_cidr_mask_size = parse_mask_size(k, v)?
    ),
    key!(
        "k8sServiceCIDR",
        "k8s-service-cidr",
        |c| Some(c.k8s_service_cidr.to_string()),
        |c, k, v| c.k8s_service_cidr = parse_cidr(k, v)?
    ),
    key!(
        "installNoConntrackIptablesRules",
        "install-no-conntrack-iptables-rules",
        |c| Some(c.install_no_conntrack_iptables_rules.to_string()),
        |c, k, v| c.install_no_conntrack_iptables_rules = parse_bool(k, v)?
    ),
    key!(
        "loadBalancer.ipPool",
        "lb-ip-pool",
        |c| opt_nonempty(format_cidr_list(&c.load_balancer_ip_pool)),
        |c, k, v| c.load_balancer_ip_pool = parse_cidr_list(k, v)?
    ),
];

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(crate) fn unknown_key(
    key: &str,
    candidates: impl Iterator<Item = &'static str>,
) -> ConfigError {
    let lower = key.to_ascii_lowercase();
    let best = candidates
        .map(|c| {
            let d = if c.to_ascii_lowercase() == lower {
                0
            } else {
                distance(&lower, &c.to_ascii_lowercase())
            };
            (d, c)
        })
        .min();
    let hint = match best {
        Some((d, c)) if d <= 3.max(key.len() / 5) => format!("; did you mean {c:?}?"),
        _ => String::new(),
    };
    ConfigError::UnknownKey {
        key: key.to_owned(),
        hint,
    }
}

/// The pool name and field of an auto-created pool key
/// (`ipam.operator.autoCreateCiliumPodIPPools.<pool>.ipv4.cidrs|maskSize`).
fn auto_pool_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(AUTO_POOL_PREFIX)?;
    let (pool, field) = rest.split_once(".ipv4.")?;
    Some((pool, field))
}

impl Config {
    /// The Helm names of the fixed keys, in `config view` order of their flat names, plus
    /// the auto-created pool key pattern.
    pub fn helm_keys() -> Vec<&'static str> {
        let mut v: Vec<&'static str> = KEYS.iter().map(|k| k.helm).collect();
        v.push("ipam.operator.autoCreateCiliumPodIPPools.<pool>.ipv4.cidrs");
        v.push("ipam.operator.autoCreateCiliumPodIPPools.<pool>.ipv4.maskSize");
        v
    }

    /// Sets one key by its Helm name (`bpf.masquerade`, `ipam.operator.clusterPoolIPv4PodCIDRList`,
    /// `ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs`, ...). The value uses
    /// Helm `--set` syntax (`{a,b}` lists). Cross-field checks run in
    /// [`Config::validate`]; this only checks the value itself. On error nothing changes.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        // `k="{a,b}"` as typed without a shell: the quotes are not part of the value.
        let value = unquote(value);
        if let Some(def) = KEYS.iter().find(|d| d.helm == key) {
            let mut next = self.clone();
            (def.set)(&mut next, key, value)?;
            *self = next;
            return Ok(());
        }
        if let Some((pool, field)) = auto_pool_key(key) {
            fibril_ipam::multi_pool::validate_pool_name(pool)
                .map_err(|e| ConfigError::invalid(key, pool, format!("pool name {e}")))?;
            match field {
                "cidrs" => {
                    let cidrs = parse_cidr_list(key, value)?;
                    self.ipam
                        .auto_create_pools
                        .entry(pool.to_owned())
                        .or_default()
                        .cidrs = cidrs;
                }
                "maskSize" => {
                    let m = parse_mask_size(key, value)?;
                    self.ipam
                        .auto_create_pools
                        .entry(pool.to_owned())
                        .or_default()
                        .mask_size = Some(m);
                }
                _ => {
                    return Err(unknown_key(
                        key,
                        [
                            "ipam.operator.autoCreateCiliumPodIPPools.<pool>.ipv4.cidrs",
                            "ipam.operator.autoCreateCiliumPodIPPools.<pool>.ipv4.maskSize",
                        ]
                        .into_iter(),
                    ))
                }
            }
            return Ok(());
        }
        Err(unknown_key(key, KEYS.iter().map(|d| d.helm)))
    }

    /// The value of a Helm key in the flat form's spelling (`None` for an unset optional
    /// key). Errors on unknown keys.
    pub fn get(&self, key: &str) -> Result<Option<String>, ConfigError> {
        if let Some(def) = KEYS.iter().find(|d| d.helm == key) {
            return Ok((def.get)(self));
        }
        if let Some((pool, field)) = auto_pool_key(key) {
            let p = self.ipam.auto_create_pools.get(pool);
            return match field {
                "cidrs" => Ok(p.map(|p| format_cidr_list(&p.cidrs))),
                "maskSize" => Ok(p.and_then(|p| p.mask_size).map(|m| m.to_string())),
                _ => Err(unknown_key(key, std::iter::empty())),
            };
        }
        Err(unknown_key(key, KEYS.iter().map(|d| d.helm)))
    }

    /// The tunnel's UDP port: `tunnelPort`, or the protocol's port when it is 0.
    pub fn effective_tunnel_port(&self) -> u16 {
        if self.tunnel_port == 0 {
            self.tunnel_protocol.default_port()
        } else {
            self.tunnel_port
        }
    }

    /// Whether pod traffic leaving the cluster is masqueraded (`enableIPv4Masquerade`
    /// and `bpf.masquerade`).
    pub fn masquerading(&self) -> bool {
        self.enable_ipv4_masquerade && self.bpf_masquerade
    }

    /// The prefixes the ip-masq-agent does not masquerade: the configured list (or the
    /// default list), plus 169.254.0.0/16 unless `masqLinkLocal`. Empty when the agent
    /// is disabled.
    pub fn non_masquerade_cidrs(&self) -> Vec<Ipv4Net> {
        if !self.ip_masq_agent.enabled {
            return Vec::new();
        }
        let mut out: Vec<Ipv4Net> = match &self.ip_masq_agent.non_masquerade_cidrs {
            Some(list) => list.clone(),
            None => DEFAULT_NON_MASQUERADE_CIDRS
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        };
        let link_local = net(169, 254, 0, 0, 16);
        if !self.ip_masq_agent.masq_link_local && !out.contains(&link_local) {
            out.insert(0, link_local);
        }
        out
    }

    /// The `config` JSON of the `kube-system/ip-masq-agent` ConfigMap, as in the seeds:
    /// `{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"]}` (plus `"masqLinkLocal":true`
    /// when set). `None` when the list is unset (the agent then uses the default list).
    pub fn ip_masq_agent_config_json(&self) -> Option<String> {
        let list = self.ip_masq_agent.non_masquerade_cidrs.as_ref()?;
        let mut m = serde_json::Map::new();
        m.insert(
            "nonMasqueradeCIDRs".into(),
            list.iter().map(|n| n.to_string()).collect(),
        );
        if self.ip_masq_agent.masq_link_local {
            m.insert("masqLinkLocal".into(), true.into());
        }
        Some(serde_json::Value::Object(m).to_string())
    }

    /// The auto-created pools as IPAM pool specs (pools without a mask size are left
    /// out; [`Config::validate`] rejects them).
    pub fn auto_create_pool_specs(&self) -> Vec<fibril_ipam::PoolSpec> {
        self.ipam
            .auto_create_pools
            .iter()
            .filter_map(|(name, p)| {
                Some(fibril_ipam::PoolSpec {
                    name: name.clone(),
                    cidrs: p.cidrs.clone(),
                    mask_size: p.mask_size?,
                })
            })
            .collect()
    }
}
