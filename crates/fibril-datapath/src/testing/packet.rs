//! A small packet builder and parser for `BPF_PROG_TEST_RUN` tests.
//!
//! ```
//! use fibril_datapath::testing::packet::{Packet, MacAddr};
//! let bytes = Packet::tcp([10, 244, 0, 5], 40000, [10, 244, 0, 6], 80, 0x02)
//!     .macs(MacAddr([2, 0, 0, 0, 0, 5]), MacAddr([2, 0, 0, 0, 0, 1]))
//!     .build();
//! let p = fibril_datapath::testing::packet::Parsed::parse(&bytes).unwrap();
//! assert_eq!(p.dport, Some(80));
//! assert!(p.ip_csum_ok);
//! ```

use std::net::Ipv4Addr;

/// A MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Layer 4 of a built packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with flags.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flags byte.
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP echo request (`reply` = false) or reply.
    IcmpEcho {
        /// Echo id.
        id: u16,
        /// Sequence.
        seq: u16,
        /// Reply instead of request.
        reply: bool,
    },
    /// Raw protocol number with the payload as body.
    Raw(u8),
}

/// Builder of Ethernet/IPv4 or ARP frames.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Source MAC.
    pub smac: MacAddr,
    /// Destination MAC.
    pub dmac: MacAddr,
    /// Source IP.
    pub saddr: Ipv4Addr,
    /// Destination IP.
    pub daddr: Ipv4Addr,
    /// TTL.
    pub ttl: u8,
    /// L4.
    pub l4: L4,
    /// Payload after the L4 header.
    pub payload: Vec<u8>,
    /// Ethertype override (e.g. 0x86dd to fake IPv6).
    pub ethertype: u16,
    /// Fragment offset field (host order, includes flags).
    pub frag_off: u16,
}

impl Packet {
    fn base(saddr: [u8; 4], daddr: [u8; 4], l4: L4) -> Self {
        Self {
            smac: MacAddr([0x02, 0, 0, 0, 0, 0xaa]),
            dmac: MacAddr([0x02, 0, 0, 0, 0, 0xbb]),
            saddr: Ipv4Addr::from(saddr),
            daddr: Ipv4Addr::from(daddr),
            ttl: 64,
            l4,
            payload: Vec::new(),
            ethertype: 0x0800,
            frag_off: 0,
        }
    }

    /// A TCP segment.
    pub fn tcp(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16, flags: u8) -> Self {
        Self::base(
            saddr,
            daddr,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    /// A UDP datagram.
    pub fn udp(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> Self {
        Self::base(saddr, daddr, L4::Udp { sport, dport })
    }

    /// An ICMP echo request.
    pub fn icmp_echo(saddr: [u8; 4], daddr: [u8; 4], id: u16, seq: u16) -> Self {
        Self::base(
            saddr,
            daddr,
            L4::IcmpEcho {
                id,
                seq,
                reply: false,
            },
        )
    }

    /// Sets both MACs.
    pub fn macs(mut self, smac: MacAddr, dmac: MacAddr) -> Self {
        self.smac = smac;
        self.dmac = dmac;
        self
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    /// Builds the frame with valid checksums.
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let proto = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&1u32.to_be_bytes()); // seq
                l4.extend_from_slice(&0u32.to_be_bytes()); // ack
                l4.push(5 << 4);
                l4.push(*flags);
                l4.extend_from_slice(&65535u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]); // csum, urg
                l4.extend_from_slice(&self.payload);
                6
            }
            L4::Udp { sport, dport } => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                17
            }
            L4::IcmpEcho { id, seq, reply } => {
                l4.push(if *reply { 0 } else { 8 });
                l4.push(0);
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&id.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&self.payload);
                let c = checksum(&l4, 0);
                l4[2..4].copy_from_slice(&c.to_be_bytes());
                1
            }
            L4::Raw(p) => {
                l4.extend_from_slice(&self.payload);
                *p
            }
        };
        if proto == 6 || proto == 17 {
            let mut pseudo = 0u32;
            for w in [self.saddr.octets(), self.daddr.octets()] {
                pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
                pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
            }
            pseudo += u32::from(proto);
            pseudo += l4.len() as u32;
            let c = checksum(&l4, pseudo);
            let off = if proto == 6 { 16 } else { 6 };
            l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34]);
        ip.extend_from_slice(&self.frag_off.to_be_bytes());
        ip.push(self.ttl);
        ip.push(proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.saddr.octets());
        ip.extend_from_slice(&self.daddr.octets());
        let c = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut f = Vec::new();
        f.extend_from_slice(&self.dmac.0);
        f.extend_from_slice(&self.smac.0);
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }
}

/// An ARP request `who-has tpa tell spa`.
pub fn arp_request(sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hrd ether
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.push(6);
    f.push(4);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// Internet checksum of `data` with an initial sum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A parsed output frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Destination MAC.
    pub dmac: MacAddr,
    /// Source MAC.
    pub smac: MacAddr,
    /// Ethertype.
    pub ethertype: u16,
    /// IPv4 source.
    pub saddr: Option<Ipv4Addr>,
    /// IPv4 destination.
    pub daddr: Option<Ipv4Addr>,
    /// TTL.
    pub ttl: u8,
    /// IP protocol.
    pub proto: u8,
    /// IPv4 header checksum verifies.
    pub ip_csum_ok: bool,
    /// TCP/UDP checksum verifies (None if not TCP/UDP).
    pub l4_csum_ok: Option<bool>,
    /// Source port.
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
    /// ARP opcode.
    pub arp_op: Option<u16>,
    /// ARP sender MAC.
    pub arp_sha: Option<MacAddr>,
    /// ARP sender IP.
    pub arp_spa: Option<Ipv4Addr>,
    /// ARP target MAC.
    pub arp_tha: Option<MacAddr>,
    /// ARP target IP.
    pub arp_tpa: Option<Ipv4Addr>,
}

impl Parsed {
    /// Parses a frame; `None` if shorter than an Ethernet header.
    pub fn parse(b: &[u8]) -> Option<Parsed> {
        if b.len() < 14 {
            return None;
        }
        let mac = |s: &[u8]| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&s[..6]);
            MacAddr(m)
        };
        let mut p = Parsed {
            dmac: mac(&b[0..6]),
            smac: mac(&b[6..12]),
            ethertype: u16::from_be_bytes([b[12], b[13]]),
            ..Default::default()
        };
        let ip4 = |s: &[u8]| Ipv4Addr::new(s[0], s[1], s[2], s[3]);
        if p.ethertype == 0x0806 && b.len() >= 42 {
            p.arp_op = Some(u16::from_be_bytes([b[20], b[21]]));
            p.arp_sha = Some(mac(&b[22..28]));
            p.arp_spa = Some(ip4(&b[28..32]));
            p.arp_tha = Some(mac(&b[32..38]));
            p.arp_tpa = Some(ip4(&b[38..42]));
        }
        if p.ethertype == 0x0800 && b.len() >= 34 {
            let ip = &b[14..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 || ip.len() < ihl {
                return Some(p);
            }
            p.saddr = Some(ip4(&ip[12..16]));
            p.daddr = Some(ip4(&ip[16..20]));
            p.ttl = ip[8];
            p.proto = ip[9];
            p.ip_csum_ok = checksum(&ip[..ihl], 0) == 0;
            let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
            let l4 = &ip[ihl.min(tot)..tot];
            if (p.proto == 6 || p.proto == 17) && l4.len() >= 8 {
                p.sport = Some(u16::from_be_bytes([l4[0], l4[1]]));
                p.dport = Some(u16::from_be_bytes([l4[2], l4[3]]));
                let mut pseudo = 0u32;
                for w in [&ip[12..16], &ip[16..20]] {
                    pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
                    pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
                }
                pseudo += u32::from(p.proto) + l4.len() as u32;
                p.l4_csum_ok = Some(checksum(l4, pseudo) == 0);
            }
        }
        Some(p)
    }
}
