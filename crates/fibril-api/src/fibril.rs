//! The `fibril.io/v1` kinds. Field names follow the Cilium CRDs the seeds
//! show (`kubectl get ciliumnode -o yaml`, CiliumPodIPPool,
//! CiliumLocalRedirectPolicy, ...) so the seeds' manifests and outputs keep
//! their shape; the kinds are Fibril's own.
//!
//! Every type serializes with `apiVersion: fibril.io/v1` and its canonical
//! kind; deserialization ignores `apiVersion`/`kind` (the manifest parser
//! checks them before, which is how the `cilium.io` aliases map here).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Deserializer, Serialize};

use crate::kind::FIBRIL_API_VERSION;
use crate::Resource;

/// A semantic check on a parsed object failed: `path` is the field
/// (`spec.redirectFrontend`), `message` what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub message: String,
}

impl Invalid {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Top-level fields left out of the serialized form when empty.
trait OmitEmpty {
    fn omit(&self) -> bool;
}
impl<T> OmitEmpty for Option<T> {
    fn omit(&self) -> bool {
        self.is_none()
    }
}
impl<K, V> OmitEmpty for BTreeMap<K, V> {
    fn omit(&self) -> bool {
        self.is_empty()
    }
}
impl<T> OmitEmpty for Vec<T> {
    fn omit(&self) -> bool {
        self.is_empty()
    }
}

macro_rules! fibril_resource {
    ($ty:ident, namespaced = $ns:expr, { $($field:ident => $wire:literal),* $(,)? }) => {
        impl Resource for $ty {
            const API_VERSION: &'static str = FIBRIL_API_VERSION;
            const KIND: &'static str = stringify!($ty);
            const NAMESPACED: bool = $ns;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("apiVersion", FIBRIL_API_VERSION)?;
                m.serialize_entry("kind", stringify!($ty))?;
                m.serialize_entry("metadata", &self.metadata)?;
                $(
                    if !OmitEmpty::omit(&self.$field) {
                        m.serialize_entry($wire, &self.$field)?;
                    }
                )*
                m.end()
            }
        }
    };
}

// ---------------------------------------------------------------- FibrilNode

/// Per-node object (Cilium's CiliumNode): the node's addresses (InternalIP,
/// and CiliumInternalIP = the router IP on `fibril_host`), its health
/// endpoint IP, and IPAM spec/status. Cluster-scoped, named after the node.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FibrilNode {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<FibrilNodeSpec>,
    #[serde(default)]
    pub status: Option<FibrilNodeStatus>,
}
fibril_resource!(FibrilNode, namespaced = false, { spec => "spec", status => "status" });

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FibrilNodeSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthAddressing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<NodeIpamSpec>,
    #[serde(
        default,
        rename = "instance-id",
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodeidentity: Option<u64>,
}

/// One node address, `type` as in CiliumNode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    pub ip: IpAddr,
    #[serde(rename = "type")]
    pub address_type: NodeAddressType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeAddressType {
    InternalIP,
    ExternalIP,
    /// The router IP held by `fibril_host` (Cilium: `cilium_host`).
    CiliumInternalIP,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthAddressing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionSpec {
    #[serde(default)]
    pub key: i64,
}

/// `spec.ipam` of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeIpamSpec {
    /// Pod CIDRs assigned to the node (cluster-pool / kubernetes modes).
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<IpNet>,
    /// Multi-pool mode: what the node requests and what it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<IpamPoolSpec>,
    /// Individually allocatable IPs (Cilium's CRD mode), IP -> owner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pool: BTreeMap<IpAddr, AllocationIp>,
    #[serde(
        default,
        rename = "min-allocate",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_allocate: Option<u32>,
    #[serde(
        default,
        rename = "max-allocate",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_allocate: Option<u32>,
    #[serde(
        default,
        rename = "pre-allocate",
        skip_serializing_if = "Option::is_none"
    )]
    pub pre_allocate: Option<u32>,
    #[serde(
        default,
        rename = "max-above-watermark",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_above_watermark: Option<u32>,
}

/// `spec.ipam.pools`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPoolSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requested: Vec<IpamPoolRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocated: Vec<IpamPoolAllocation>,
}

/// How many addresses a node needs from one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPoolRequest {
    pub pool: String,
    #[serde(default)]
    pub needed: IpamPoolDemand,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPoolDemand {
    #[serde(
        default,
        rename = "ipv4-addrs",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_addrs: Option<u32>,
    #[serde(
        default,
        rename = "ipv6-addrs",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_addrs: Option<u32>,
}

/// Blocks of one pool handed to a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPoolAllocation {
    pub pool: String,
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
}

/// Who holds an address: `owner` is `router`, `health` or `ns/pod`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FibrilNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<NodeIpamStatus>,
}

/// `status.ipam` of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIpamStatus {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: BTreeMap<IpAddr, AllocationIp>,
    #[serde(
        default,
        rename = "operator-status",
        skip_serializing_if = "Option::is_none"
    )]
    pub operator_status: Option<OperatorStatus>,
    /// IP -> release handshake state (`marked-for-release`, `ready-for-release`, ...).
    #[serde(
        default,
        rename = "release-ips",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub release_ips: BTreeMap<IpAddr, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FibrilNode {
    /// A node object with the given name and spec.
    pub fn new(name: &str, spec: FibrilNodeSpec) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn address(&self, t: NodeAddressType) -> Option<IpAddr> {
        self.spec
            .as_ref()?
            .addresses
            .iter()
            .find(|a| a.address_type == t)
            .map(|a| a.ip)
    }

    /// The node's InternalIP (underlay address).
    pub fn internal_ip(&self) -> Option<IpAddr> {
        self.address(NodeAddressType::InternalIP)
    }

    /// The router IP (CiliumInternalIP), held by `fibril_host`.
    pub fn router_ip(&self) -> Option<IpAddr> {
        self.address(NodeAddressType::CiliumInternalIP)
    }

    pub fn health_ipv4(&self) -> Option<Ipv4Addr> {
        self.spec.as_ref()?.health.as_ref()?.ipv4
    }

    /// `spec.ipam.podCIDRs`, empty when unset.
    pub fn pod_cidrs(&self) -> &[IpNet] {
        self.spec
            .as_ref()
            .and_then(|s| s.ipam.as_ref())
            .map(|i| i.pod_cidrs.as_slice())
            .unwrap_or_default()
    }
}

// ----------------------------------------------------------- FibrilPodIPPool

/// A named pool for multi-pool IPAM (Cilium's CiliumPodIPPool).
/// Cluster-scoped.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FibrilPodIPPool {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodIPPoolSpec>,
}
fibril_resource!(FibrilPodIPPool, namespaced = false, { spec => "spec" });

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodIPPoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<PoolFamilyV4>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PoolFamilyV6>,
    #[serde(
        default,
        rename = "namespaceSelector",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(
        default,
        rename = "podSelector",
        skip_serializing_if = "Option::is_none"
    )]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFamilyV4 {
    #[serde(default)]
    pub cidrs: Vec<Ipv4Net>,
    #[serde(rename = "maskSize")]
    pub mask_size: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFamilyV6 {
    #[serde(default)]
    pub cidrs: Vec<Ipv6Net>,
    #[serde(rename = "maskSize")]
    pub mask_size: u8,
}

impl FibrilPodIPPool {
    pub fn new(name: &str, cidrs: Vec<Ipv4Net>, mask_size: u8) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(PodIPPoolSpec {
                ipv4: Some(PoolFamilyV4 { cidrs, mask_size }),
                ..Default::default()
            }),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let Some(spec) = &self.spec else {
            return Err(Invalid::new("spec", "missing spec"));
        };
        if spec.ipv4.is_none() && spec.ipv6.is_none() {
            return Err(Invalid::new("spec", "one of ipv4 or ipv6 is required"));
        }
        if let Some(v4) = &spec.ipv4 {
            if v4.mask_size == 0 || v4.mask_size > 32 {
                return Err(Invalid::new(
                    "spec.ipv4.maskSize",
                    format!("mask size {} is not in 1..=32", v4.mask_size),
                ));
            }
        }
        if let Some(v6) = &spec.ipv6 {
            if v6.mask_size == 0 || v6.mask_size > 128 {
                return Err(Invalid::new(
                    "spec.ipv6.maskSize",
                    format!("mask size {} is not in 1..=128", v6.mask_size),
                ));
            }
        }
        Ok(())
    }
}

// ------------------------------------------------- FibrilLocalRedirectPolicy

/// Redirects traffic for a service or address to a node-local backend pod
/// (Cilium's CiliumLocalRedirectPolicy). Namespaced: the backend pods live in
/// the policy's namespace.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FibrilLocalRedirectPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<LocalRedirectPolicySpec>,
}
fibril_resource!(FibrilLocalRedirectPolicy, namespaced = true, { spec => "spec" });

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRedirectPolicySpec {
    pub redirect_frontend: RedirectFrontend,
    pub redirect_backend: RedirectBackend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_redirect_from_backend: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Exactly one of the two matchers is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectFrontend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_matcher: Option<ServiceMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_matcher: Option<AddressMatcher>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMatcher {
    pub service_name: String,
    pub namespace: String,
    /// Empty: every port of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressMatcher {
    pub ip: IpAddr,
    #[serde(default)]
    pub to_ports: Vec<PortInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectBackend {
    pub local_endpoint_selector: LabelSelector,
    #[serde(default)]
    pub to_ports: Vec<PortInfo>,
}

/// A port as Cilium writes it: the number as a string (`"53"`); an integer
/// is accepted too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    #[serde(deserialize_with = "port_string")]
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl PortInfo {
    /// The port number, if `port` is a valid one (1..=65535).
    pub fn number(&self) -> Option<u16> {
        self.port.parse::<u16>().ok().filter(|p| *p != 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
    #[serde(rename = "ICMP")]
    Icmp,
    #[serde(rename = "ANY")]
    Any,
}

fn port_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    // A visitor rather than `untagged`, which would hide serde's message.
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a port number or a string holding one")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

fn validate_ports(path: &str, ports: &[PortInfo]) -> Result<(), Invalid> {
    for (i, p) in ports.iter().enumerate() {
        if p.number().is_none() {
            return Err(Invalid::new(
                format!("{path}[{i}].port"),
                format!("\"{}\" is not a port number (1-65535)", p.port),
            ));
        }
    }
    Ok(())
}

impl FibrilLocalRedirectPolicy {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let Some(spec) = &self.spec else {
            return Err(Invalid::new("spec", "missing spec"));
        };
        let fe = &spec.redirect_frontend;
        match (&fe.service_matcher, &fe.address_matcher) {
            (Some(sm), None) => {
                validate_ports("spec.redirectFrontend.serviceMatcher.toPorts", &sm.to_ports)?
            }
            (None, Some(am)) => {
                validate_ports("spec.redirectFrontend.addressMatcher.toPorts", &am.to_ports)?
            }
            _ => {
                return Err(Invalid::new(
                    "spec.redirectFrontend",
                    "exactly one of serviceMatcher or addressMatcher is required",
                ))
            }
        }
        validate_ports(
            "spec.redirectBackend.toPorts",
            &spec.redirect_backend.to_ports,
        )
    }
}

// ------------------------------------------------------------ FibrilEndpoint

/// A pod's endpoint as the agent sees it (Cilium's CiliumEndpoint):
/// identity, addresses, node and state. Namespaced, named after the pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FibrilEndpoint {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<EndpointStatus>,
}
fibril_resource!(FibrilEndpoint, namespaced = true, { status => "status" });

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// Node-local endpoint id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<EndpointIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<EndpointNetworking>,
    /// `ready`, `waiting-for-identity`, `not-ready`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(
        default,
        rename = "external-identifiers",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_identifiers: Option<ExternalIdentifiers>,
    #[serde(default, rename = "named-ports", skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<PortInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointIdentity {
    pub id: i64,
    /// `k8s:app=curl`-style labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointNetworking {
    #[serde(default)]
    pub addressing: Vec<AddressPair>,
    /// The IP of the node hosting the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalIdentifiers {
    #[serde(
        default,
        rename = "container-id",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    #[serde(
        default,
        rename = "k8s-namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub k8s_namespace: Option<String>,
    #[serde(
        default,
        rename = "k8s-pod-name",
        skip_serializing_if = "Option::is_none"
    )]
    pub k8s_pod_name: Option<String>,
    #[serde(default, rename = "pod-name", skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

impl FibrilEndpoint {
    /// The endpoint's first IPv4 address.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.status
            .as_ref()?
            .networking
            .as_ref()?
            .addressing
            .iter()
            .find_map(|a| a.ipv4)
    }

    pub fn identity_id(&self) -> Option<i64> {
        Some(self.status.as_ref()?.identity.as_ref()?.id)
    }
}

// ------------------------------------------------------------ FibrilIdentity

/// A security identity (Cilium's CiliumIdentity): the name is the numeric
/// id, `security-labels` the label set it stands for. Cluster-scoped.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FibrilIdentity {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, rename = "security-labels")]
    pub security_labels: BTreeMap<String, String>,
}
fibril_resource!(FibrilIdentity, namespaced = false, { security_labels => "security-labels" });

impl FibrilIdentity {
    pub fn new(id: u32, security_labels: BTreeMap<String, String>) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(id.to_string()),
                ..Default::default()
            },
            security_labels,
        }
    }

    /// The numeric identity (the object's name).
    pub fn id(&self) -> Option<u32> {
        self.metadata.name.as_deref()?.parse().ok()
    }

    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        match self.id() {
            Some(_) => Ok(()),
            None => Err(Invalid::new(
                "metadata.name",
                format!(
                    "identity name {:?} is not a numeric id",
                    self.metadata.name.as_deref().unwrap_or_default()
                ),
            )),
        }
    }
}

// ------------------------------------------------------- FibrilNetworkPolicy

/// An L3/L4 policy in the shape of CiliumNetworkPolicy: `spec` holds one rule,
/// `specs` more. Namespaced.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FibrilNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PolicyRule>,
    #[serde(default)]
    pub specs: Vec<PolicyRule>,
}
fibril_resource!(FibrilNetworkPolicy, namespaced = true, { spec => "spec", specs => "specs" });

impl FibrilNetworkPolicy {
    /// `spec` followed by `specs`.
    pub fn rules(&self) -> impl Iterator<Item = &PolicyRule> {
        self.spec.iter().chain(self.specs.iter())
    }

    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.spec.is_none() && self.specs.is_empty() {
            return Err(Invalid::new("spec", "one of spec or specs is required"));
        }
        for (i, r) in self.rules().enumerate() {
            let base = if self.spec.is_some() && i == 0 {
                "spec".to_string()
            } else {
                format!("specs[{}]", i - usize::from(self.spec.is_some()))
            };
            if r.endpoint_selector.is_none() && r.node_selector.is_none() {
                return Err(Invalid::new(
                    base,
                    "one of endpointSelector or nodeSelector is required",
                ));
            }
            for (j, ing) in r.ingress.iter().enumerate() {
                for (k, pr) in ing.to_ports.iter().enumerate() {
                    validate_ports(
                        &format!("{base}.ingress[{j}].toPorts[{k}].ports"),
                        &pr.ports,
                    )?;
                }
            }
            for (j, eg) in r.egress.iter().enumerate() {
                for (k, pr) in eg.to_ports.iter().enumerate() {
                    validate_ports(&format!("{base}.egress[{j}].toPorts[{k}].ports"), &pr.ports)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<LabelSelector>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<IpNet>,
    #[serde(default, rename = "fromCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr_set: Vec<CidrRule>,
    /// `world`, `cluster`, `host`, `remote-node`, `all`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<LabelSelector>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<IpNet>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrRule {
    pub cidr: IpNet,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

/// L4 ports of a rule; `rules` (L7) is kept verbatim but not enforced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<serde_json::Value>,
}
