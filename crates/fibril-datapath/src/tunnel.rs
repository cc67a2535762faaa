//! Tunnel routing mode: VXLAN and Geneve done in eBPF (`bpf/lib/encap.h`).
//!
//! This module owns the Rust side of the tunnel: protocol/port settings and
//! their defaults ([`Tunnel`] constructors, `tunnelProtocol`/`tunnelPort`
//! parsing), the MTU figure pods get (underlay MTU minus
//! [`ENCAP_OVERHEAD`]), the VNI <-> security identity mapping, ipcache
//! helpers that map a remote pod CIDR to its node IP (tunnel endpoint), and
//! a never-panicking decoder of encapsulated frames for tests and tools.
//!
//! No kernel `vxlan`/`geneve` device is involved: `cil_from_container`
//! builds the outer Ethernet/IPv4/UDP/VXLAN-or-Geneve headers itself and
//! redirects to the underlay; `cil_from_netdev` strips them.

use std::net::Ipv4Addr;

use fibril_abi::{identity, ip_be, ip_from_be, ipcache_flags, IpcacheValue, TunnelProto};

use crate::config::{DatapathConfig, Tunnel};
use crate::error::{DatapathError, Result};
use crate::maps::{Ipcache, Prefix4};

/// Default VXLAN UDP port (Cilium's, not IANA's 4789).
pub const VXLAN_PORT: u16 = 8472;
/// Default Geneve UDP port (IANA).
pub const GENEVE_PORT: u16 = 6081;
/// Bytes added by encapsulation, the same for both protocols: outer IPv4
/// (20) + UDP (8) + VXLAN/Geneve header without options (8) + inner
/// Ethernet (14).
pub const ENCAP_OVERHEAD: u32 = 50;
/// Largest VNI (24 bits), so the largest identity a tunnel can carry.
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// Smallest pod MTU accepted (IPv4 minimum reassembly size).
pub const MIN_POD_MTU: u32 = 576;

impl Tunnel {
    /// VXLAN on the default port 8472.
    pub const fn vxlan() -> Self {
        Tunnel::Vxlan { port: VXLAN_PORT }
    }

    /// Geneve on the default port 6081.
    pub const fn geneve() -> Self {
        Tunnel::Geneve { port: GENEVE_PORT }
    }

    /// From Helm-style settings: `routingMode` is tunnel when `protocol` is
    /// `vxlan` or `geneve` (`""`/`disabled`/`native` = native routing);
    /// `port` None or 0 = the protocol's default.
    pub fn from_settings(protocol: &str, port: Option<u16>) -> Result<Self> {
        let port = port.filter(|p| *p != 0);
        match protocol.to_ascii_lowercase().as_str() {
            "vxlan" => Ok(Tunnel::Vxlan {
                port: port.unwrap_or(VXLAN_PORT),
            }),
            "geneve" => Ok(Tunnel::Geneve {
                port: port.unwrap_or(GENEVE_PORT),
            }),
            "" | "disabled" | "native" | "none" => Ok(Tunnel::Disabled),
            other => Err(DatapathError::Config {
                field: "tunnelProtocol",
                reason: format!("{other:?} is not one of vxlan, geneve, disabled"),
            }),
        }
    }

    /// The ABI protocol number.
    pub fn protocol(&self) -> TunnelProto {
        match self {
            Tunnel::Disabled => TunnelProto::None,
            Tunnel::Vxlan { .. } => TunnelProto::Vxlan,
            Tunnel::Geneve { .. } => TunnelProto::Geneve,
        }
    }

    /// `vxlan`, `geneve` or `disabled`.
    pub fn name(&self) -> &'static str {
        match self {
            Tunnel::Disabled => "disabled",
            Tunnel::Vxlan { .. } => "vxlan",
            Tunnel::Geneve { .. } => "geneve",
        }
    }

    /// UDP port, None when disabled.
    pub fn port(&self) -> Option<u16> {
        match self {
            Tunnel::Disabled => None,
            Tunnel::Vxlan { port } | Tunnel::Geneve { port } => Some(*port),
        }
    }

    /// True in tunnel routing mode.
    pub fn is_enabled(&self) -> bool {
        !matches!(self, Tunnel::Disabled)
    }

    /// Bytes of encapsulation overhead (0 when disabled).
    pub fn overhead(&self) -> u32 {
        if self.is_enabled() {
            ENCAP_OVERHEAD
        } else {
            0
        }
    }

    /// The pod MTU for an underlay MTU (1450 for 1500 in tunnel mode).
    /// Errors when the result would be below [`MIN_POD_MTU`].
    pub fn pod_mtu(&self, underlay_mtu: u32) -> Result<u32> {
        let mtu = underlay_mtu.saturating_sub(self.overhead());
        if mtu < MIN_POD_MTU {
            return Err(DatapathError::Config {
                field: "mtu",
                reason: format!(
                    "underlay MTU {underlay_mtu} leaves a pod MTU of {mtu} with {} ({} bytes of \
                     overhead); need at least {MIN_POD_MTU}",
                    self.name(),
                    self.overhead()
                ),
            });
        }
        Ok(mtu)
    }

    /// The `Routing: Network:` part of `status`: `Native`, `Tunnel [vxlan]`.
    pub fn status_line(&self) -> String {
        match self {
            Tunnel::Disabled => "Native".to_string(),
            t => format!("Tunnel [{}]", t.name()),
        }
    }
}

impl DatapathConfig {
    /// Sets the tunnel mode and the pod MTU that goes with it for an
    /// underlay of `underlay_mtu` bytes.
    pub fn with_tunnel(mut self, tunnel: Tunnel, underlay_mtu: u32) -> Result<Self> {
        if let Some(0) = tunnel.port() {
            return Err(DatapathError::Config {
                field: "tunnelPort",
                reason: format!("{} port 0", tunnel.name()),
            });
        }
        self.pod_mtu = tunnel.pod_mtu(underlay_mtu)?;
        self.tunnel = tunnel;
        Ok(self)
    }
}

/// The VNI carrying a source security identity. Errors when the identity
/// does not fit in 24 bits.
pub fn vni_for_identity(id: u32) -> Result<u32> {
    if id > MAX_VNI {
        return Err(DatapathError::Config {
            field: "identity",
            reason: format!("identity {id} does not fit in a 24-bit VNI (max {MAX_VNI})"),
        });
    }
    Ok(id)
}

/// The source identity a received VNI stands for.
pub fn identity_for_vni(vni: u32) -> u32 {
    vni & MAX_VNI
}

/// A remote pod CIDR behind a node (one ipcache entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelRoute {
    /// The remote pod CIDR (or a single pod IP).
    pub prefix: Prefix4,
    /// The node's underlay IP (outer destination).
    pub node_ip: Ipv4Addr,
    /// Identity of the prefix.
    pub identity: u32,
}

impl Ipcache {
    /// Maps a remote node's pod CIDR (or one remote pod /32 with its own
    /// identity) to the node's IP: packets from local pods to it are
    /// encapsulated towards `node_ip`. Replaces an existing entry.
    pub fn upsert_tunnel_route(
        &mut self,
        prefix: Prefix4,
        node_ip: Ipv4Addr,
        sec_identity: u32,
    ) -> Result<()> {
        if node_ip.is_unspecified() {
            return Err(DatapathError::Config {
                field: "tunnel_endpoint",
                reason: format!("{prefix}: node IP 0.0.0.0"),
            });
        }
        self.insert(
            prefix,
            &IpcacheValue {
                sec_identity,
                tunnel_endpoint: ip_be(node_ip),
                flags: ipcache_flags::POD_CIDR,
                pad: 0,
            },
        )
    }

    /// Records a node IP (identity `remote-node` unless given).
    pub fn upsert_remote_node(
        &mut self,
        node_ip: Ipv4Addr,
        sec_identity: Option<u32>,
    ) -> Result<()> {
        self.insert(
            Prefix4::host(node_ip),
            &IpcacheValue {
                sec_identity: sec_identity.unwrap_or(identity::REMOTE_NODE),
                tunnel_endpoint: 0,
                flags: ipcache_flags::REMOTE_NODE,
                pad: 0,
            },
        )
    }

    /// The node IP packets to `addr` are tunneled to (longest prefix).
    pub fn tunnel_endpoint(&self, addr: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .lookup(addr)?
            .filter(|v| v.tunnel_endpoint != 0)
            .map(|v| ip_from_be(v.tunnel_endpoint)))
    }

    /// Every prefix with a tunnel endpoint.
    pub fn tunnel_routes(&self) -> Result<Vec<TunnelRoute>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(_, v)| v.tunnel_endpoint != 0)
            .map(|(prefix, v)| TunnelRoute {
                prefix,
                node_ip: ip_from_be(v.tunnel_endpoint),
                identity: v.sec_identity,
            })
            .collect())
    }
}

/// A decoded encapsulated frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encapsulated {
    /// Outer source IP (sending node).
    pub outer_src: Ipv4Addr,
    /// Outer destination IP (receiving node).
    pub outer_dst: Ipv4Addr,
    /// Outer TTL.
    pub outer_ttl: u8,
    /// Outer IPv4 header checksum verifies.
    pub outer_ip_csum_ok: bool,
    /// Outer UDP source port (flow entropy).
    pub udp_sport: u16,
    /// Outer UDP destination port (the tunnel port).
    pub udp_dport: u16,
    /// Outer UDP checksum field (0 = none).
    pub udp_csum: u16,
    /// Protocol decoded.
    pub protocol: TunnelProto,
    /// VNI (24 bits).
    pub vni: u32,
    /// Geneve option bytes skipped (0 for VXLAN).
    pub geneve_opt_len: usize,
    /// The inner Ethernet frame.
    pub inner: Vec<u8>,
}

/// Decodes an Ethernet frame carrying IPv4/UDP to `tunnel`'s port with a
/// VXLAN or Geneve header. `None` for anything else (other ports,
/// truncated or malformed headers). Never panics, whatever the bytes.
pub fn decode(frame: &[u8], tunnel: Tunnel) -> Option<Encapsulated> {
    let port = tunnel.port()?;
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let b0 = *ip.first()?;
    let ihl = usize::from(b0 & 0x0f) * 4;
    if b0 >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let tot = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let ip = ip.get(..tot)?;
    let hdr = ip.get(..ihl)?;
    let addr = |o: usize| -> Option<Ipv4Addr> {
        let s = hdr.get(o..o + 4)?;
        Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
    };
    let outer_src = addr(12)?;
    let outer_dst = addr(16)?;
    let outer_ip_csum_ok = crate::testing::packet::checksum(hdr, 0) == 0;
    let udp = ip.get(ihl..)?;
    let be16 = |s: &[u8], o: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*s.get(o)?, *s.get(o + 1)?]))
    };
    let udp_sport = be16(udp, 0)?;
    let udp_dport = be16(udp, 2)?;
    let udp_csum = be16(udp, 6)?;
    if udp_dport != port {
        return None;
    }
    let tun = udp.get(8..)?;
    let t = tun.get(..8)?;
    let (hlen, geneve_opt_len) = match tunnel.protocol() {
        TunnelProto::Vxlan => {
            if t[0] & 0x08 == 0 {
                return None;
            }
            (8, 0)
        }
        TunnelProto::Geneve => {
            if t[0] >> 6 != 0 || be16(t, 2)? != 0x6558 {
                return None;
            }
            let opt = usize::from(t[0] & 0x3f) * 4;
            (8 + opt, opt)
        }
        TunnelProto::None => return None,
    };
    let vni = (u32::from(t[4]) << 16) | (u32::from(t[5]) << 8) | u32::from(t[6]);
    let inner = tun.get(hlen..)?;
    if inner.len() < 14 {
        return None;
    }
    Some(Encapsulated {
        outer_src,
        outer_dst,
        outer_ttl: hdr[8],
        outer_ip_csum_ok,
        udp_sport,
        udp_dport,
        udp_csum,
        protocol: tunnel.protocol(),
        vni,
        geneve_opt_len,
        inner: inner.to_vec(),
    })
}

/// Fuzz entry point: decodes `data` as VXLAN and as Geneve on the port
/// found in its UDP header and checks the decoder's invariants. Returns how
/// many decodings succeeded; panics only if an invariant breaks (the
/// decoder itself never panics).
pub fn fuzz_decode(data: &[u8]) -> usize {
    let port = match data.get(36..38) {
        Some(p) => u16::from_be_bytes([p[0], p[1]]).max(1),
        None => VXLAN_PORT,
    };
    let mut ok = 0;
    for tunnel in [Tunnel::Vxlan { port }, Tunnel::Geneve { port }] {
        if let Some(d) = decode(data, tunnel) {
            assert!(d.vni <= MAX_VNI, "{d:?}");
            assert!(d.inner.len() >= 14, "{d:?}");
            assert!(d.inner.len() + 50 + d.geneve_opt_len <= data.len(), "{d:?}");
            assert_eq!(d.udp_dport, port);
            ok += 1;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::packet::Packet;

    #[test]
    fn settings_defaults_and_errors() {
        assert_eq!(
            Tunnel::from_settings("vxlan", None).unwrap(),
            Tunnel::vxlan()
        );
        assert_eq!(
            Tunnel::from_settings("Geneve", Some(0)).unwrap(),
            Tunnel::Geneve { port: 6081 }
        );
        assert_eq!(
            Tunnel::from_settings("geneve", Some(7000)).unwrap().port(),
            Some(7000)
        );
        assert_eq!(Tunnel::from_settings("", None).unwrap(), Tunnel::Disabled);
        let e = Tunnel::from_settings("gre", None).unwrap_err().to_string();
        assert!(e.contains("\"gre\""), "{e}");
        assert_eq!(Tunnel::vxlan().status_line(), "Tunnel [vxlan]");
        assert_eq!(Tunnel::Disabled.status_line(), "Native");
    }

    #[test]
    fn mtu_accounts_for_overhead() {
        assert_eq!(Tunnel::vxlan().pod_mtu(1500).unwrap(), 1450);
        assert_eq!(Tunnel::geneve().pod_mtu(9000).unwrap(), 8950);
        assert_eq!(Tunnel::Disabled.pod_mtu(1500).unwrap(), 1500);
        let e = Tunnel::geneve().pod_mtu(600).unwrap_err().to_string();
        assert!(e.contains("600") && e.contains("550"), "{e}");
        let cfg = DatapathConfig::default()
            .with_tunnel(Tunnel::geneve(), 1500)
            .unwrap();
        assert_eq!((cfg.pod_mtu, cfg.tunnel), (1450, Tunnel::geneve()));
        assert!(DatapathConfig::default()
            .with_tunnel(Tunnel::Vxlan { port: 0 }, 1500)
            .is_err());
    }

    #[test]
    fn vni_identity() {
        assert_eq!(vni_for_identity(0xcba).unwrap(), 0xcba);
        assert!(vni_for_identity(1 << 24).is_err());
        assert_eq!(identity_for_vni(0x0100_0cba), 0xcba);
    }

    fn encap(inner: &[u8], geneve: bool, vni: u32) -> Vec<u8> {
        let mut tun = vec![0u8; 8];
        if geneve {
            tun[2..4].copy_from_slice(&0x6558u16.to_be_bytes());
        } else {
            tun[0] = 0x08;
        }
        tun[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
        tun.extend_from_slice(inner);
        Packet::udp([192, 168, 10, 100], 40000, [192, 168, 20, 100], 8472)
            .payload(&tun)
            .build()
    }

    #[test]
    fn decode_round_trip_and_garbage() {
        let inner = Packet::icmp_echo([10, 244, 0, 10], [10, 244, 1, 10], 1, 1).build();
        let f = encap(&inner, false, 1000);
        let d = decode(&f, Tunnel::vxlan()).unwrap();
        assert_eq!(d.vni, 1000);
        assert_eq!(d.inner, inner);
        assert_eq!(d.outer_src, Ipv4Addr::new(192, 168, 10, 100));
        assert!(d.outer_ip_csum_ok);
        assert!(decode(&f, Tunnel::geneve()).is_none(), "other port");
        assert!(
            decode(&f, Tunnel::Geneve { port: 8472 }).is_none(),
            "not geneve"
        );
        let g = encap(&inner, true, 7);
        assert_eq!(decode(&g, Tunnel::Geneve { port: 8472 }).unwrap().vni, 7);
        // Every truncation and pseudo-random bytes: no panic.
        for n in 0..f.len() {
            let _ = decode(&f[..n], Tunnel::vxlan());
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400 {
            let mut buf = f.clone();
            for _ in 0..(len % 7 + 1) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % buf.len();
                buf[i] = (x >> 32) as u8;
            }
            buf.truncate(len % (buf.len() + 1));
            let _ = decode(&buf, Tunnel::vxlan());
            let _ = decode(&buf, Tunnel::Geneve { port: 8472 });
        }
    }
}
