//! The `#[repr(C)]` twins of the C structs. Declared through `abi_structs!`
//! so every struct also reports its layout ([`layouts`]) for the BTF check.

use std::mem::{offset_of, size_of};

/// Size and field offsets of one ABI struct, compared with the BTF of the
/// compiled objects by `fibril-datapath`'s tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructLayout {
    /// Name of the C struct (`struct <c_name>` in the headers).
    pub c_name: &'static str,
    /// Name of the Rust struct.
    pub rust_name: &'static str,
    /// `size_of` of the Rust struct.
    pub size: usize,
    /// `(field name, offset, size)` in declaration order; names equal the C
    /// member names.
    pub fields: Vec<(&'static str, usize, usize)>,
}

macro_rules! abi_structs {
    ($(
        $(#[$m:meta])*
        $c:literal => pub struct $name:ident {
            $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)?
        }
    )*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
            pub struct $name {
                $( $(#[$fm])* pub $f: $t ),*
            }

            // SAFETY: the struct is #[repr(C)], made only of integers and
            // integer arrays with explicit padding fields (checked by the
            // `no_implicit_padding` test), so every bit pattern is valid and
            // no byte is uninitialised.
            #[cfg(feature = "aya")]
            unsafe impl aya::Pod for $name {}
        )*

        /// Layouts of every ABI struct.
        pub fn layouts() -> Vec<StructLayout> {
            vec![$(
                StructLayout {
                    c_name: $c,
                    rust_name: stringify!($name),
                    size: size_of::<$name>(),
                    fields: vec![$(
                        (stringify!($f), offset_of!($name, $f), size_of::<$t>())
                    ),*],
                }
            ),*]
        }
    };
}

abi_structs! {
    /// Per-node load-time configuration (`volatile const struct fibril_config
    /// fibril_config` in every object). Addresses in network order, ports and
    /// lengths in host order.
    "fibril_config" => pub struct NodeConfig {
        /// Underlay IP of this node (network order).
        pub node_ip: u32,
        /// Router IP held by `fibril_host` (network order).
        pub router_ip: u32,
        /// ifindex of the underlay device (eth1).
        pub underlay_ifindex: u32,
        /// ifindex of `fibril_host`.
        pub host_ifindex: u32,
        /// ipv4NativeRoutingCIDR network (network order).
        pub native_cidr: u32,
        /// Its prefix length; 0 = no native routing CIDR.
        pub native_cidr_len: u32,
        /// `FEAT_*` bits ([`crate::features`]).
        pub features: u32,
        /// UDP port of the tunnel (host order).
        pub tunnel_port: u16,
        /// [`crate::TunnelProto`] as u8.
        pub tunnel_proto: u8,
        /// Padding.
        pub pad0: u8,
        /// Emit 1 of N trace events (0 = none, 1 = all).
        pub trace_sample: u32,
        /// Max events per second per CPU (0 = unlimited).
        pub events_rate_limit: u32,
        /// MTU of pod interfaces (tunnel overhead accounted).
        pub pod_mtu: u32,
        /// Cluster id.
        pub cluster_id: u32,
        /// MAC of the underlay device.
        pub node_mac: [u8; 6],
        /// Padding.
        pub pad1: [u8; 2],
        /// Lowest SNAT port / ICMP id (host order; 0 = default range).
        pub snat_port_min: u16,
        /// Highest SNAT port / ICMP id (host order).
        pub snat_port_max: u16,
    }

    /// `fibril_endpoints` key.
    "endpoint_key" => pub struct EndpointKey {
        /// Pod IP (network order).
        pub ip: u32,
    }

    /// `fibril_endpoints` value.
    "endpoint_info" => pub struct EndpointInfo {
        /// ifindex of the host-side veth.
        pub ifindex: u32,
        /// Security identity.
        pub sec_identity: u32,
        /// Endpoint id.
        pub ep_id: u16,
        /// `ENDPOINT_F_*` ([`crate::endpoint_flags`]).
        pub flags: u16,
        /// MAC of the pod's eth0.
        pub mac: [u8; 6],
        /// MAC of the host-side veth (the pod's gateway MAC).
        pub node_mac: [u8; 6],
    }

    /// `fibril_ipcache` LPM key (same layout as `aya::maps::lpm_trie::Key<u32>`).
    "ipcache_key" => pub struct IpcacheKey {
        /// Prefix length in bits.
        pub prefixlen: u32,
        /// Network (network order).
        pub ip: u32,
    }

    /// `fibril_ipcache` value.
    "ipcache_value" => pub struct IpcacheValue {
        /// Security identity of the prefix.
        pub sec_identity: u32,
        /// Remote node IP for tunneled prefixes, 0 otherwise (network order).
        pub tunnel_endpoint: u32,
        /// `IPCACHE_F_*` ([`crate::ipcache_flags`]).
        pub flags: u16,
        /// Padding.
        pub pad: u16,
    }

    /// `fibril_ct4` key (also the `fibril_nat4` key): the tuple of the first
    /// packet of a connection.
    "ct4_key" => pub struct Ct4Key {
        /// Source address (network order).
        pub saddr: u32,
        /// Destination address (network order).
        pub daddr: u32,
        /// Source port / ICMP echo id (network order).
        pub sport: u16,
        /// Destination port / ICMP echo id (network order).
        pub dport: u16,
        /// IP protocol.
        pub proto: u8,
        /// `CT_KEY_F_*`; in `fibril_nat4` the `NAT_DIR_*`.
        pub flags: u8,
        /// Padding.
        pub pad: u16,
    }

    /// `fibril_ct4` value.
    "ct4_value" => pub struct Ct4Value {
        /// Expiry in `bpf_ktime_get_ns` time (CLOCK_MONOTONIC ns).
        pub lifetime: u64,
        /// Creation time, same clock.
        pub created: u64,
        /// Packets in the original direction.
        pub packets_fwd: u64,
        /// Bytes in the original direction.
        pub bytes_fwd: u64,
        /// Packets in the reply direction.
        pub packets_rev: u64,
        /// Bytes in the reply direction.
        pub bytes_rev: u64,
        /// Identity of the originator.
        pub src_sec_id: u32,
        /// Selected service backend.
        pub backend_id: u32,
        /// Reverse-NAT index of the service, 0 if none.
        pub rev_nat_index: u16,
        /// `CT_F_*` ([`crate::ct_flags`]).
        pub flags: u16,
        /// Union of TCP flags seen in the original direction.
        pub tcp_flags_fwd: u8,
        /// Union of TCP flags seen in the reply direction.
        pub tcp_flags_rev: u8,
        /// Low 16 bits of the ifindex the first packet came in on.
        pub ifindex: u16,
        /// Trace aggregation: last report of the original direction
        /// (ktime seconds).
        pub last_report_fwd: u32,
        /// Same, reply direction.
        pub last_report_rev: u32,
    }

    /// `fibril_nat4` value.
    "nat4_value" => pub struct Nat4Value {
        /// Address to rewrite to (network order).
        pub to_addr: u32,
        /// Port / ICMP id to rewrite to (network order).
        pub to_port: u16,
        /// Padding.
        pub pad: u16,
        /// Creation time (ktime ns).
        pub created: u64,
        /// Last use (ktime ns).
        pub last_seen: u64,
    }

    /// `fibril_ipmasq` LPM key.
    "ipmasq_key" => pub struct IpmasqKey {
        /// Prefix length.
        pub prefixlen: u32,
        /// Network (network order).
        pub ip: u32,
    }

    /// `fibril_ipmasq` value.
    "ipmasq_value" => pub struct IpmasqValue {
        /// Reserved.
        pub flags: u8,
        /// Padding.
        pub pad: [u8; 3],
    }

    /// `fibril_lb4_services` key. Slot 0 is the service, slots 1..=count its
    /// backends.
    "lb4_key" => pub struct Lb4Key {
        /// Frontend address (network order).
        pub address: u32,
        /// Frontend port (network order).
        pub dport: u16,
        /// Backend slot (host order).
        pub backend_slot: u16,
        /// IP protocol (0 = any).
        pub proto: u8,
        /// `LB_SCOPE_EXT` (0) / `LB_SCOPE_INT` (1).
        pub scope: u8,
        /// Padding.
        pub pad: [u8; 2],
    }

    /// `fibril_lb4_services` value.
    "lb4_service" => pub struct Lb4Service {
        /// Slot > 0: the backend id.
        pub backend_id: u32,
        /// Slot 0: number of backends.
        pub count: u16,
        /// Reverse-NAT index (host order).
        pub rev_nat_index: u16,
        /// `SVC_F_*` ([`crate::svc_flags`]).
        pub flags: u16,
        /// Padding.
        pub pad: u16,
    }

    /// `fibril_lb4_backends` key.
    "lb4_backend_key" => pub struct Lb4BackendKey {
        /// Backend id.
        pub backend_id: u32,
    }

    /// `fibril_lb4_backends` value.
    "lb4_backend" => pub struct Lb4Backend {
        /// Backend address (network order).
        pub address: u32,
        /// Backend port (network order).
        pub port: u16,
        /// IP protocol.
        pub proto: u8,
        /// `BE_F_*` ([`crate::backend_flags`]).
        pub flags: u8,
        /// Cluster id.
        pub cluster_id: u16,
        /// Zone.
        pub zone: u8,
        /// Padding.
        pub pad: u8,
    }

    /// `fibril_lb4_reverse_nat` key.
    "lb4_reverse_nat_key" => pub struct Lb4ReverseNatKey {
        /// Reverse-NAT index (host order).
        pub rev_nat_index: u16,
    }

    /// `fibril_lb4_reverse_nat` value.
    "lb4_reverse_nat" => pub struct Lb4ReverseNat {
        /// Frontend address (network order).
        pub address: u32,
        /// Frontend port (network order).
        pub port: u16,
        /// Padding.
        pub pad: u16,
    }

    /// `fibril_lb4_snat` value (key: a [`Ct4Key`] with
    /// [`crate::lb4_snat_dir`] in flags).
    "lb4_snat_value" => pub struct Lb4SnatValue {
        /// FWD: backend address; REV: client address (network order).
        pub to_addr: u32,
        /// FWD: backend port; REV: client port (network order).
        pub to_port: u16,
        /// FWD: the allocated source port on the node IP (network order).
        pub snat_port: u16,
        /// REV: frontend address restored as source (network order).
        pub front_addr: u32,
        /// REV: frontend port (network order).
        pub front_port: u16,
        /// Reverse-NAT index (host order).
        pub rev_nat_index: u16,
        /// Last use (ktime ns).
        pub last_seen: u64,
    }

    /// `fibril_policy` key.
    "policy_key" => pub struct PolicyKey {
        /// Peer identity (0 = any).
        pub sec_label: u32,
        /// Local endpoint id.
        pub ep_id: u16,
        /// Port (network order, 0 = any).
        pub dport: u16,
        /// IP protocol (0 = any).
        pub proto: u8,
        /// 1 = egress rule, 0 = ingress.
        pub egress: u8,
        /// Padding.
        pub pad: u16,
    }

    /// `fibril_policy` value.
    "policy_value" => pub struct PolicyValue {
        /// `POLICY_F_*`.
        pub flags: u32,
        /// Padding.
        pub pad: u32,
        /// Packets matched.
        pub packets: u64,
        /// Bytes matched.
        pub bytes: u64,
    }

    /// A record of the `fibril_events` ring buffer.
    "flow_event" => pub struct FlowEvent {
        /// `bpf_ktime_get_ns()` when emitted.
        pub ts_ns: u64,
        /// [`crate::EventType`].
        pub event_type: u8,
        /// [`crate::ObsPoint`].
        pub obs_point: u8,
        /// [`crate::Verdict`].
        pub verdict: u8,
        /// [`crate::DropReason`] for drops, 0 otherwise.
        pub drop_reason: u8,
        /// Interface the program ran on.
        pub ifindex: u32,
        /// Redirect target, 0 if none.
        pub dst_ifindex: u32,
        /// Source address (network order).
        pub saddr: u32,
        /// Destination address (network order).
        pub daddr: u32,
        /// Source port / ICMP echo id (network order).
        pub sport: u16,
        /// Destination port / ICMP echo id or type<<8|code (network order).
        pub dport: u16,
        /// IP protocol.
        pub proto: u8,
        /// TCP flags of the packet.
        pub tcp_flags: u8,
        /// [`crate::CtState`].
        pub ct_state: u8,
        /// ICMP type.
        pub icmp_type: u8,
        /// Source identity.
        pub src_identity: u32,
        /// Destination identity.
        pub dst_identity: u32,
        /// Packet length.
        pub pkt_len: u32,
        /// CPU.
        pub cpu: u32,
        /// Padding.
        pub pad: u32,
    }

    /// `fibril_events_rl` value (per CPU).
    "events_rl_state" => pub struct EventsRlState {
        /// Last refill.
        pub last_ns: u64,
        /// Tokens left.
        pub tokens: u64,
    }

    /// `fibril_metrics` value (per CPU).
    "metrics_value" => pub struct MetricsValue {
        /// Packets.
        pub packets: u64,
        /// Bytes.
        pub bytes: u64,
    }
}

impl Ct4Key {
    /// The tuple of the reply direction.
    pub fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_implicit_padding() {
        for l in layouts() {
            let sum: usize = l.fields.iter().map(|(_, _, s)| s).sum();
            assert_eq!(sum, l.size, "{} has implicit padding", l.rust_name);
        }
    }

    #[test]
    fn known_sizes() {
        assert_eq!(size_of::<NodeConfig>(), 60);
        assert_eq!(size_of::<Ct4Key>(), 16);
        assert_eq!(size_of::<Ct4Value>(), 72);
        assert_eq!(size_of::<FlowEvent>(), 56);
        assert_eq!(size_of::<EndpointInfo>(), 24);
    }
}
