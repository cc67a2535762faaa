//! Numeric constants of the datapath (drop reasons, observation points,
//! verdicts, flag bits), mirroring `bpf/lib/{common,drop,trace,maps,metrics}.h`.

macro_rules! abi_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident {
            $( $(#[$vm:meta])* $v:ident = $n:literal => ($s:literal, $d:literal) ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vm])* $v = $n ),*
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$v),*];

            /// Decodes the C value; `None` for an unknown number.
            pub fn from_u8(n: u8) -> Option<Self> {
                match n {
                    $( $n => Some(Self::$v), )*
                    _ => None,
                }
            }

            /// The stable name (Hubble style).
            pub fn as_str(self) -> &'static str {
                match self { $( Self::$v => $s, )* }
            }

            /// A human description.
            pub fn description(self) -> &'static str {
                match self { $( Self::$v => $d, )* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

abi_enum! {
    /// Why a packet was dropped (`DROP_*` of `drop.h`).
    pub enum DropReason {
        /// Malformed or truncated headers.
        InvalidPacket = 1 => ("INVALID_PACKET", "Invalid packet"),
        /// Neither IPv4 nor ARP.
        UnsupportedL3 = 2 => ("UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
        /// Source IP not owned by the sending endpoint.
        InvalidSource = 3 => ("INVALID_SOURCE_IP", "Invalid source ip"),
        /// The FIB has no route to the destination.
        NoRoute = 4 => ("NO_ROUTE", "no route"),
        /// Conntrack insertion failed.
        CtMapFull = 5 => ("CT_MAP_INSERTION_FAILED", "CT map insertion failed"),
        /// Denied by policy.
        PolicyDenied = 6 => ("POLICY_DENIED", "Policy denied"),
        /// Endpoint lookup failed for delivery.
        UnknownEndpoint = 7 => ("UNKNOWN_ENDPOINT", "Unknown endpoint"),
        /// bpf_fib_lookup failed.
        FibFailed = 8 => ("FIB_LOOKUP_FAILED", "FIB lookup failed"),
        /// Service without backends.
        NoService = 9 => ("NO_SERVICE", "Service backend not found"),
        /// Backend id not found.
        NoBackend = 10 => ("NO_BACKEND", "No backend"),
        /// Reverse SNAT found no mapping.
        NatNoMapping = 11 => ("NAT_NO_MAPPING", "No mapping for NAT masquerade"),
        /// NAT table insertion failed.
        NatMapFull = 12 => ("NAT_MAP_INSERTION_FAILED", "NAT map insertion failed"),
        /// No free port/id for SNAT.
        NatNoPort = 13 => ("NAT_PORT_EXHAUSTED", "SNAT port allocation exhausted"),
        /// Encapsulation failed.
        EncapFailed = 14 => ("ENCAP_FAILED", "Encapsulation failed"),
        /// Decapsulation failed.
        DecapFailed = 15 => ("DECAP_FAILED", "Decapsulation failed"),
        /// No tunnel endpoint for the destination.
        NoTunnelEndpoint = 16 => ("NO_TUNNEL_ENDPOINT", "No tunnel/encapsulation endpoint"),
        /// A packet rewrite helper failed.
        WriteFailed = 17 => ("WRITE_FAILED", "Failed to write packet"),
        /// Redirect failed.
        RedirectFailed = 18 => ("REDIRECT_FAILED", "Redirect failed"),
        /// Malformed ARP.
        InvalidArp = 19 => ("INVALID_ARP", "Invalid ARP packet"),
        /// Some other map update failed.
        MapUpdateFailed = 20 => ("MAP_UPDATE_FAILED", "Map update failed"),
        /// Fragments are not supported here.
        FragNotSupported = 21 => ("FRAG_NOT_SUPPORTED", "Fragmentation not supported"),
        /// TTL expired.
        TtlExceeded = 22 => ("TTL_EXCEEDED", "TTL exceeded"),
    }
}

abi_enum! {
    /// Where an event was observed (`OBS_*` of `trace.h`).
    pub enum ObsPoint {
        /// Unknown.
        Unknown = 0 => ("unknown", "unknown"),
        /// Packet from a local pod.
        FromEndpoint = 1 => ("from-endpoint", "from a local endpoint"),
        /// Delivered to a local pod.
        ToEndpoint = 2 => ("to-endpoint", "to a local endpoint"),
        /// Entered from the underlay.
        FromNetwork = 3 => ("from-network", "from the network"),
        /// Sent out of the underlay.
        ToNetwork = 4 => ("to-network", "to the network"),
        /// Entered through a tunnel.
        FromOverlay = 5 => ("from-overlay", "from the overlay"),
        /// Sent into a tunnel.
        ToOverlay = 6 => ("to-overlay", "to the overlay"),
        /// Handed to the kernel stack.
        ToStack = 7 => ("to-stack", "to the stack"),
        /// Before service translation.
        PreXlateFwd = 8 => ("pre-xlate-fwd", "before service translation"),
        /// After service translation.
        PostXlateFwd = 9 => ("post-xlate-fwd", "after service translation"),
        /// Before reverse translation.
        PreXlateRev = 10 => ("pre-xlate-rev", "before reverse translation"),
        /// After reverse translation.
        PostXlateRev = 11 => ("post-xlate-rev", "after reverse translation"),
        /// From the host stack.
        FromHost = 12 => ("from-host", "from the host"),
        /// To the host stack.
        ToHost = 13 => ("to-host", "to the host"),
    }
}

abi_enum! {
    /// Verdict of an event (`VERDICT_*`).
    pub enum Verdict {
        /// Forwarded.
        Forwarded = 1 => ("FORWARDED", "forwarded"),
        /// Dropped.
        Dropped = 2 => ("DROPPED", "dropped"),
        /// Observed on the way in.
        Traced = 3 => ("TRACED", "traced"),
        /// Address translation.
        Translated = 4 => ("TRANSLATED", "translated"),
    }
}

abi_enum! {
    /// Kind of ring-buffer record (`EVENT_TYPE_*`).
    pub enum EventType {
        /// Trace event.
        Trace = 1 => ("trace", "trace event"),
        /// Drop event.
        Drop = 2 => ("drop", "drop event"),
    }
}

abi_enum! {
    /// Conntrack state of an event's packet (`CT_STATE_*`).
    pub enum CtState {
        /// Not looked up.
        Unknown = 0 => ("unknown", "unknown"),
        /// First packet of a connection.
        New = 1 => ("new", "new connection"),
        /// Original direction of a known connection.
        Established = 2 => ("established", "established"),
        /// Reply direction.
        Reply = 3 => ("reply", "reply"),
    }
}

abi_enum! {
    /// Tunnel protocol (`TUNNEL_PROTO_*`).
    pub enum TunnelProto {
        /// No tunnel.
        None = 0 => ("none", "no tunnel"),
        /// VXLAN.
        Vxlan = 1 => ("vxlan", "VXLAN"),
        /// Geneve.
        Geneve = 2 => ("geneve", "Geneve"),
    }
}

/// `FEAT_*` bits of [`crate::NodeConfig::features`].
pub mod features {
    /// routingMode=tunnel.
    pub const TUNNEL: u32 = 1 << 0;
    /// bpf.masquerade.
    pub const MASQUERADE: u32 = 1 << 1;
    /// kubeProxyReplacement.
    pub const LB: u32 = 1 << 2;
    /// Policy enforcement.
    pub const POLICY: u32 = 1 << 3;
    /// ipMasqAgent.masqLinkLocal.
    pub const MASQ_LINK_LOCAL: u32 = 1 << 4;
    /// Also emit from-endpoint / from-network trace events.
    pub const TRACE_FROM: u32 = 1 << 5;
    /// Trace aggregation (new flows, new TCP flags, every 5 s).
    pub const TRACE_AGGREGATE: u32 = 1 << 6;
}

/// `ENDPOINT_F_*`.
pub mod endpoint_flags {
    /// The node itself.
    pub const HOST: u16 = 1 << 0;
    /// The health endpoint.
    pub const HEALTH: u16 = 1 << 1;
}

/// `IPCACHE_F_*`.
pub mod ipcache_flags {
    /// A node IP.
    pub const REMOTE_NODE: u16 = 1 << 0;
    /// A remote node's pod CIDR.
    pub const POD_CIDR: u16 = 1 << 1;
}

/// `CT_F_*` of [`crate::Ct4Value::flags`].
pub mod ct_flags {
    /// SYN seen from the originator.
    pub const SYN_SEEN: u16 = 1 << 0;
    /// SYN+ACK seen from the responder.
    pub const SYNACK_SEEN: u16 = 1 << 1;
    /// Established.
    pub const ESTABLISHED: u16 = 1 << 2;
    /// FIN/RST from the originator.
    pub const TX_CLOSING: u16 = 1 << 3;
    /// FIN/RST from the responder.
    pub const RX_CLOSING: u16 = 1 << 4;
    /// Picked up mid-stream.
    pub const SEEN_NON_SYN: u16 = 1 << 5;
    /// NodePort connection.
    pub const NODE_PORT: u16 = 1 << 6;
    /// Masqueraded.
    pub const SNAT: u16 = 1 << 7;
    /// Hairpin (pod reached itself via a service).
    pub const HAIRPIN: u16 = 1 << 8;
}

/// `CT_KEY_F_*` of [`crate::Ct4Key::flags`].
pub mod ct_key_flags {
    /// Tuple carries the service frontend.
    pub const SERVICE: u8 = 1 << 0;
}

/// `NAT_DIR_*` in [`crate::Ct4Key::flags`] of `fibril_nat4` keys.
pub mod nat_dir {
    /// Original tuple (pod -> world).
    pub const EGRESS: u8 = 0;
    /// Translated reply tuple (world -> node).
    pub const INGRESS: u8 = 1;
}

/// `SVC_F_*` of [`crate::Lb4Service::flags`].
pub mod svc_flags {
    /// NodePort.
    pub const NODEPORT: u16 = 1 << 0;
    /// externalTrafficPolicy: Local.
    pub const EXT_LOCAL: u16 = 1 << 1;
    /// LoadBalancer IP.
    pub const LOADBALANCER: u16 = 1 << 2;
    /// Local redirect policy.
    pub const LOCAL_REDIRECT: u16 = 1 << 3;
    /// ClusterIP.
    pub const CLUSTER_IP: u16 = 1 << 4;
    /// HostPort.
    pub const HOSTPORT: u16 = 1 << 5;
}

/// `BE_F_*` of [`crate::Lb4Backend::flags`].
pub mod backend_flags {
    /// Backend on this node.
    pub const LOCAL: u8 = 1 << 0;
    /// Terminating.
    pub const TERMINATING: u8 = 1 << 1;
}

/// `LB_SCOPE_*` of [`crate::Lb4Key::scope`].
pub mod lb_scope {
    /// External scope: the backends for traffic from outside (only the
    /// node-local ones under eTP=Local); the only scope of most services.
    pub const EXT: u8 = 0;
    /// Internal scope of a two-scope (eTP=Local) service: the backends for
    /// in-cluster traffic (all of them).
    pub const INT: u8 = 1;
}

/// `LB4_SNAT_*` in [`crate::Ct4Key::flags`] of `fibril_lb4_snat` keys.
pub mod lb4_snat_dir {
    /// Client -> frontend tuple (value: backend and SNAT port).
    pub const FWD: u8 = 0;
    /// Backend -> node IP:SNAT port reply tuple (value: client, frontend).
    pub const REV: u8 = 1;
}

/// `POLICY_F_*`.
pub mod policy_flags {
    /// Deny rule.
    pub const DENY: u32 = 1 << 0;
}

/// Layout of `fibril_metrics` keys: `(dir << 8) | reason`.
pub mod metrics {
    /// No direction (internal counters).
    pub const DIR_NONE: u8 = 0;
    /// Towards a local endpoint / into the node.
    pub const DIR_INGRESS: u8 = 1;
    /// From a local endpoint / out of the node.
    pub const DIR_EGRESS: u8 = 2;
    /// Reason slot of forwarded packets.
    pub const FORWARDED: u8 = 0;
    /// Ring buffer full.
    pub const EVENTS_LOST: u8 = 250;
    /// Dropped by the per-CPU rate limiter.
    pub const EVENTS_RATE_LIMITED: u8 = 251;
    /// Skipped by trace sampling.
    pub const EVENTS_SAMPLED_OUT: u8 = 252;
    /// Skipped by trace aggregation.
    pub const EVENTS_AGGREGATED: u8 = 253;

    /// Index of a counter.
    pub const fn key(dir: u8, reason: u8) -> u32 {
        ((dir as u32) << 8) | reason as u32
    }
}

/// Reserved security identities.
pub mod identity {
    /// Unknown.
    pub const UNKNOWN: u32 = 0;
    /// The node.
    pub const HOST: u32 = 1;
    /// Outside the cluster.
    pub const WORLD: u32 = 2;
    /// Unmanaged.
    pub const UNMANAGED: u32 = 3;
    /// Health endpoint.
    pub const HEALTH: u32 = 4;
    /// Init.
    pub const INIT: u32 = 5;
    /// Another node.
    pub const REMOTE_NODE: u32 = 6;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip() {
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_u8(*r as u8), Some(*r));
        }
        assert_eq!(DropReason::NoRoute.description(), "no route");
        assert_eq!(ObsPoint::PreXlateFwd.as_str(), "pre-xlate-fwd");
        assert_eq!(DropReason::from_u8(0), None);
    }
}
