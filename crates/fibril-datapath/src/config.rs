//! Per-node datapath configuration, turned into the `fibril_config`
//! constant of every object at load time (no compiler at run time).

use std::net::Ipv4Addr;

use fibril_abi::{features, ip_be, NodeConfig, TunnelProto};

use crate::error::{DatapathError, Result};
use crate::netns::{self, Netns};

/// Tunnel settings (`routingMode=tunnel`, `tunnelProtocol`, `tunnelPort`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tunnel {
    /// Native routing.
    #[default]
    Disabled,
    /// VXLAN on the given UDP port (default 8472).
    Vxlan {
        /// UDP port.
        port: u16,
    },
    /// Geneve on the given UDP port (default 6081).
    Geneve {
        /// UDP port.
        port: u16,
    },
}

/// A device, by name (resolved in the datapath's netns at load) or ifindex.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// Not configured.
    #[default]
    None,
    /// Interface name.
    Name(String),
    /// Interface index.
    Index(u32),
}

impl Device {
    fn resolve(&self, ns: &Netns) -> Result<u32> {
        match self {
            Device::None => Ok(0),
            Device::Index(i) => Ok(*i),
            Device::Name(n) => netns::ifindex(ns, n),
        }
    }
}

/// Configuration of one node's datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Underlay IP of the node.
    pub node_ip: Ipv4Addr,
    /// Router IP (held by `fibril_host`, the pods' gateway).
    pub router_ip: Ipv4Addr,
    /// Underlay device (eth1).
    pub underlay_device: Device,
    /// `fibril_host`.
    pub host_device: Device,
    /// MAC of the underlay device (for encap/NodePort replies).
    pub node_mac: [u8; 6],
    /// `ipv4NativeRoutingCIDR` as (network, prefix length).
    pub native_routing_cidr: Option<(Ipv4Addr, u8)>,
    /// Tunnel mode.
    pub tunnel: Tunnel,
    /// `bpf.masquerade`.
    pub masquerade: bool,
    /// `ipMasqAgent.config.masqLinkLocal`.
    pub masq_link_local: bool,
    /// Service load balancing (kube-proxy replacement).
    pub load_balancing: bool,
    /// Policy enforcement.
    pub policy: bool,
    /// Also emit from-endpoint / from-network trace events (Hubble shows
    /// only to-* by default; doubles the event volume).
    pub trace_from: bool,
    /// Trace aggregation like Cilium's `monitorAggregation: medium`: a
    /// connection is traced when new, when a TCP flag appears for the first
    /// time in a direction, and every 5 s; drops are always reported.
    pub trace_aggregation: bool,
    /// Emit 1 of N trace events (0 = no trace events, 1 = all). Drops are
    /// never sampled.
    pub trace_sample: u32,
    /// Max events per second per CPU (0 = unlimited).
    pub events_rate_limit: u32,
    /// Pod MTU.
    pub pod_mtu: u32,
    /// Cluster id.
    pub cluster_id: u32,
    /// SNAT port / ICMP id range for masquerading (inclusive).
    pub snat_port_range: (u16, u16),
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            node_ip: Ipv4Addr::UNSPECIFIED,
            router_ip: Ipv4Addr::UNSPECIFIED,
            underlay_device: Device::None,
            host_device: Device::None,
            node_mac: [0; 6],
            native_routing_cidr: None,
            tunnel: Tunnel::Disabled,
            masquerade: false,
            masq_link_local: false,
            load_balancing: false,
            policy: false,
            trace_from: false,
            trace_aggregation: false,
            trace_sample: 1,
            events_rate_limit: 100_000,
            pod_mtu: 1500,
            cluster_id: 0,
            snat_port_range: (32768, 60999),
        }
    }
}

impl DatapathConfig {
    /// The `fibril_config` constant, resolving device names in `ns`.
    pub fn to_abi(&self, ns: &Netns) -> Result<NodeConfig> {
        let (native_cidr, native_cidr_len) = match self.native_routing_cidr {
            None => (0, 0),
            Some((net, len)) => {
                if len > 32 {
                    return Err(DatapathError::Config {
                        field: "native_routing_cidr",
                        reason: format!("{net}/{len}: prefix length above 32"),
                    });
                }
                (ip_be(net), u32::from(len))
            }
        };
        let (tunnel_proto, tunnel_port) = match self.tunnel {
            Tunnel::Disabled => (TunnelProto::None, 0),
            Tunnel::Vxlan { port } => (TunnelProto::Vxlan, port),
            Tunnel::Geneve { port } => (TunnelProto::Geneve, port),
        };
        if tunnel_proto != TunnelProto::None && tunnel_port == 0 {
            return Err(DatapathError::Config {
                field: "tunnel",
                reason: "tunnel port 0".into(),
            });
        }
        let (snat_min, snat_max) = self.snat_port_range;
        if snat_min == 0 || snat_min > snat_max {
            return Err(DatapathError::Config {
                field: "snat_port_range",
                reason: format!("{snat_min}-{snat_max}: need 1 <= min <= max"),
            });
        }
        let mut feats = 0;
        if tunnel_proto != TunnelProto::None {
            feats |= features::TUNNEL;
        }
        if self.masquerade {
            feats |= features::MASQUERADE;
        }
        if self.masq_link_local {
            feats |= features::MASQ_LINK_LOCAL;
        }
        if self.load_balancing {
            feats |= features::LB;
        }
        if self.policy {
            feats |= features::POLICY;
        }
        if self.trace_from {
            feats |= features::TRACE_FROM;
        }
        if self.trace_aggregation {
            feats |= features::TRACE_AGGREGATE;
        }
        Ok(NodeConfig {
            node_ip: ip_be(self.node_ip),
            router_ip: ip_be(self.router_ip),
            underlay_ifindex: self.underlay_device.resolve(ns)?,
            host_ifindex: self.host_device.resolve(ns)?,
            native_cidr,
            native_cidr_len,
            features: feats,
            tunnel_port,
            tunnel_proto: tunnel_proto as u8,
            pad0: 0,
            trace_sample: self.trace_sample,
            events_rate_limit: self.events_rate_limit,
            pod_mtu: self.pod_mtu,
            cluster_id: self.cluster_id,
            node_mac: self.node_mac,
            pad1: [0; 2],
            snat_port_min: snat_min,
            snat_port_max: snat_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_to_abi() {
        let cfg = DatapathConfig {
            node_ip: Ipv4Addr::new(192, 168, 10, 100),
            native_routing_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
            tunnel: Tunnel::Geneve { port: 6081 },
            masquerade: true,
            ..Default::default()
        };
        let abi = cfg.to_abi(&Netns::Current).unwrap();
        assert_eq!(abi.node_ip.to_ne_bytes(), [192, 168, 10, 100]);
        assert_eq!(abi.native_cidr_len, 16);
        assert_eq!(abi.tunnel_proto, TunnelProto::Geneve as u8);
        assert_eq!(abi.features, features::TUNNEL | features::MASQUERADE);
        let bad = DatapathConfig {
            native_routing_cidr: Some((Ipv4Addr::new(10, 0, 0, 0), 33)),
            ..Default::default()
        };
        assert!(bad
            .to_abi(&Netns::Current)
            .unwrap_err()
            .to_string()
            .contains("10.0.0.0/33"));
    }
}
