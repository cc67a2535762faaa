//! Fibril `#[repr(C)]` map keys and values shared with the C eBPF programs.
//!
//! This crate owns the Rust side of the datapath ABI: one struct per C struct
//! of `bpf/lib/maps.h` (and the event/config structs of `common.h` and
//! `trace.h`), the map names, and the numeric enums (drop reasons,
//! observation points, verdicts). The C headers are the source of truth;
//! `fibril-datapath`'s tests compare every size and field offset here with
//! the BTF of the compiled objects.
//!
//! Byte order: fields documented as "network order" hold the on-wire bytes,
//! i.e. `u32::from_ne_bytes(addr.octets())` for an [`std::net::Ipv4Addr`] and
//! `u16::from_ne_bytes(port.to_be_bytes())` for a port; use [`ip_be`],
//! [`ip_from_be`], [`port_be`], [`port_from_be`].
//!
//! With the `aya` feature every struct implements `aya::Pod`.

mod enums;
mod structs;

pub use enums::*;
pub use structs::*;

use std::net::Ipv4Addr;

/// Map names (pinned under the node's bpffs directory with these names).
/// A layout change bumps the suffix (`_v2`) together with migration code.
pub mod map_names {
    /// Local pod IP -> delivery info (`EndpointKey` -> `EndpointInfo`).
    pub const ENDPOINTS: &str = "fibril_endpoints";
    /// LPM prefix -> identity and tunnel endpoint.
    pub const IPCACHE: &str = "fibril_ipcache";
    /// LRU conntrack.
    pub const CT4: &str = "fibril_ct4";
    /// LRU SNAT table.
    pub const NAT4: &str = "fibril_nat4";
    /// LPM of non-masquerade prefixes.
    pub const IPMASQ: &str = "fibril_ipmasq";
    /// Service frontends and backend slots.
    pub const LB4_SERVICES: &str = "fibril_lb4_services";
    /// Backend id -> backend address.
    pub const LB4_BACKENDS: &str = "fibril_lb4_backends";
    /// Reverse-NAT index -> frontend.
    pub const LB4_REVERSE_NAT: &str = "fibril_lb4_reverse_nat";
    /// NodePort SNAT state for remote backends (LRU).
    pub const LB4_SNAT: &str = "fibril_lb4_snat";
    /// Per-endpoint policy.
    pub const POLICY: &str = "fibril_policy";
    /// Ring buffer of flow events.
    pub const EVENTS: &str = "fibril_events";
    /// Per-CPU token bucket of the event rate limiter (internal).
    pub const EVENTS_RL: &str = "fibril_events_rl";
    /// Per-CPU counters by (direction, reason).
    pub const METRICS: &str = "fibril_metrics";

    /// Every pinned map.
    pub const ALL: &[&str] = &[
        ENDPOINTS,
        IPCACHE,
        CT4,
        NAT4,
        IPMASQ,
        LB4_SERVICES,
        LB4_BACKENDS,
        LB4_REVERSE_NAT,
        LB4_SNAT,
        POLICY,
        EVENTS,
        EVENTS_RL,
        METRICS,
    ];
}

/// Sizes of the maps (`max_entries`), as compiled into `maps.h`.
pub mod map_sizes {
    /// `fibril_ct4`.
    pub const CT4: u32 = 65536;
    /// `fibril_nat4`.
    pub const NAT4: u32 = 65536;
    /// `fibril_lb4_services`.
    pub const LB4_SERVICES: u32 = 262144;
    /// `fibril_lb4_backends`.
    pub const LB4_BACKENDS: u32 = 131072;
    /// `fibril_lb4_reverse_nat`.
    pub const LB4_REVERSE_NAT: u32 = 65536;
    /// `fibril_lb4_snat`.
    pub const LB4_SNAT: u32 = 65536;
    /// `fibril_ipcache`.
    pub const IPCACHE: u32 = 16384;
    /// `fibril_endpoints`.
    pub const ENDPOINTS: u32 = 4096;
    /// `fibril_ipmasq`.
    pub const IPMASQ: u32 = 64;
    /// `fibril_policy`.
    pub const POLICY: u32 = 16384;
    /// `fibril_events` ring buffer bytes.
    pub const EVENTS: u32 = 1 << 20;
    /// `fibril_metrics` slots: `(dir << 8) | reason`.
    pub const METRICS: u32 = 768;
}

/// An IPv4 address as the network-order `u32` the C side stores.
pub const fn ip_be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`ip_be`].
pub const fn ip_from_be(raw: u32) -> Ipv4Addr {
    let b = raw.to_ne_bytes();
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// A port as the network-order `u16` the C side stores.
pub const fn port_be(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The inverse of [`port_be`].
pub const fn port_from_be(raw: u16) -> u16 {
    u16::from_be_bytes(raw.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_helpers_round_trip() {
        let a = Ipv4Addr::new(10, 244, 1, 7);
        assert_eq!(ip_be(a).to_ne_bytes(), [10, 244, 1, 7]);
        assert_eq!(ip_from_be(ip_be(a)), a);
        assert_eq!(port_be(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_from_be(port_be(8472)), 8472);
    }
}
