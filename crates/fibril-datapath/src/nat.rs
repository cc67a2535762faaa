//! Masquerading state: the `fibril_nat4` SNAT table written by
//! `bpf/lib/nat.h`. Owns the typed view of its entries, the listing in the
//! `cilium-dbg bpf nat list` format, counts, and the garbage collector the
//! agent runs periodically (the datapath only refreshes `last_seen`).
//!
//! Each translated flow is a pair: an `OUT` entry (pod tuple -> node
//! address/port) and an `IN` entry (reply tuple to the node port -> pod).
//! The GC always removes both halves together, and removes a half whose
//! partner is gone.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use fibril_abi::{ct_flags, ip_from_be, map_names, nat_dir, Ct4Key, Ct4Value, Nat4Value};

use crate::error::Result;
use crate::maps::{GcStats, HashTable, Nat4};

const NS: u64 = 1_000_000_000;

/// Direction of a NAT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatDir {
    /// Original tuple (pod -> world), translated source.
    Out,
    /// Reply tuple (world -> node), translated destination.
    In,
}

/// One `fibril_nat4` entry, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatEntry {
    /// IP protocol (6, 17, 1).
    pub proto: u8,
    /// Direction.
    pub dir: NatDir,
    /// Tuple source (ICMP: port = echo id).
    pub src: SocketAddrV4,
    /// Tuple destination.
    pub dst: SocketAddrV4,
    /// `Out`: the new source; `In`: the new destination.
    pub xlate: SocketAddrV4,
    /// Creation, `bpf_ktime_get_ns` clock.
    pub created_ns: u64,
    /// Last packet, same clock.
    pub last_seen_ns: u64,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        n => format!("PROTO{n}"),
    }
}

impl NatEntry {
    /// Decodes a raw key/value; `None` for a key with an unknown direction.
    pub fn from_raw(k: &Ct4Key, v: &Nat4Value) -> Option<Self> {
        let dir = match k.flags {
            nat_dir::EGRESS => NatDir::Out,
            nat_dir::INGRESS => NatDir::In,
            _ => return None,
        };
        Some(Self {
            proto: k.proto,
            dir,
            src: SocketAddrV4::new(ip_from_be(k.saddr), u16::from_be(k.sport)),
            dst: SocketAddrV4::new(ip_from_be(k.daddr), u16::from_be(k.dport)),
            xlate: SocketAddrV4::new(ip_from_be(v.to_addr), u16::from_be(v.to_port)),
            created_ns: v.created,
            last_seen_ns: v.last_seen,
        })
    }

    /// The map key of this entry.
    pub fn key(&self) -> Ct4Key {
        Ct4Key {
            saddr: fibril_abi::ip_be(*self.src.ip()),
            daddr: fibril_abi::ip_be(*self.dst.ip()),
            sport: self.src.port().to_be(),
            dport: self.dst.port().to_be(),
            proto: self.proto,
            flags: match self.dir {
                NatDir::Out => nat_dir::EGRESS,
                NatDir::In => nat_dir::INGRESS,
            },
            pad: 0,
        }
    }

    /// The key of the other half of the pair.
    pub fn partner_key(&self) -> Ct4Key {
        let icmp = self.proto == 1;
        let (src, dst, dir) = match self.dir {
            // OUT pod:p -> r:rp => node:n  <=>  IN r:rp -> node:n => pod:p
            NatDir::Out => (
                SocketAddrV4::new(
                    *self.dst.ip(),
                    if icmp {
                        self.xlate.port()
                    } else {
                        self.dst.port()
                    },
                ),
                self.xlate,
                NatDir::In,
            ),
            NatDir::In => (
                self.xlate,
                SocketAddrV4::new(
                    *self.src.ip(),
                    if icmp {
                        self.xlate.port()
                    } else {
                        self.src.port()
                    },
                ),
                NatDir::Out,
            ),
        };
        NatEntry {
            src,
            dst,
            dir,
            ..*self
        }
        .key()
    }

    /// True for the node's own connections (identity mapping that only
    /// reserves the port).
    pub fn is_host(&self) -> bool {
        match self.dir {
            NatDir::Out => self.src == self.xlate,
            NatDir::In => self.dst == self.xlate,
        }
    }

    /// One line as `cilium-dbg bpf nat list` prints it, e.g.
    /// `TCP OUT 10.244.0.5:45678 -> 10.10.1.200:80 XLATE_SRC 192.168.10.100:45678 Created=3sec ago NeedsCT=1`.
    pub fn format(&self, now_ns: u64) -> String {
        let (dir, what) = match self.dir {
            NatDir::Out => ("OUT", "XLATE_SRC"),
            NatDir::In => ("IN", "XLATE_DST"),
        };
        format!(
            "{} {dir} {} -> {} {what} {} Created={}sec ago NeedsCT=1",
            proto_name(self.proto),
            self.src,
            self.dst,
            self.xlate,
            now_ns.saturating_sub(self.created_ns) / NS
        )
    }
}

/// Idle timeouts of NAT pairs (since the last packet in either direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTimeouts {
    /// TCP pairs whose connection is unknown to conntrack, or established.
    pub tcp_ns: u64,
    /// TCP pairs whose conntrack entry is closing.
    pub tcp_closing_ns: u64,
    /// UDP and ICMP pairs.
    pub non_tcp_ns: u64,
}

impl Default for NatTimeouts {
    /// Conntrack's defaults (bpf/lib/conntrack.h).
    fn default() -> Self {
        Self {
            tcp_ns: 21_600 * NS,
            tcp_closing_ns: 10 * NS,
            non_tcp_ns: 60 * NS,
        }
    }
}

/// Counts for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatCounts {
    /// Entries (both directions).
    pub total: usize,
    /// Pod flows (pairs) by protocol.
    pub tcp: usize,
    /// UDP pairs.
    pub udp: usize,
    /// ICMP pairs.
    pub icmp: usize,
    /// Port reservations of the node's own connections (pairs).
    pub host: usize,
    /// Capacity (`max_entries`).
    pub capacity: u32,
}

/// `fibril_nat4` with listing, counts and GC.
pub struct Nat {
    table: Nat4,
}

impl Nat {
    /// Opens the pinned `fibril_nat4` under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            table: HashTable::open(dir, map_names::NAT4)?,
        })
    }

    /// The raw table.
    pub fn table(&mut self) -> &mut Nat4 {
        &mut self.table
    }

    /// Every entry, each `OUT` entry followed by its `IN` partner (sorted by
    /// the pod address), then unpaired halves.
    pub fn entries(&self) -> Result<Vec<NatEntry>> {
        let all: Vec<NatEntry> = self
            .table
            .entries()?
            .iter()
            .filter_map(|(k, v)| NatEntry::from_raw(k, v))
            .collect();
        Ok(order_pairs(all))
    }

    /// The listing (`cilium-dbg bpf nat list`), one line per entry.
    pub fn list(&self, now_ns: u64) -> Result<String> {
        Ok(format_list(&self.entries()?, now_ns))
    }

    /// Counts at this moment.
    pub fn counts(&self) -> Result<NatCounts> {
        let mut c = NatCounts {
            capacity: fibril_abi::map_sizes::NAT4,
            ..Default::default()
        };
        for e in self.entries()? {
            c.total += 1;
            if e.dir != NatDir::Out {
                continue;
            }
            if e.is_host() {
                c.host += 1;
                continue;
            }
            match e.proto {
                6 => c.tcp += 1,
                17 => c.udp += 1,
                _ => c.icmp += 1,
            }
        }
        Ok(c)
    }

    /// Removes idle pairs: a pair lives while its newest `last_seen` is
    /// within the protocol's timeout; for TCP the conntrack entry of the
    /// pod's connection (if given and found) shortens that to
    /// `tcp_closing_ns` once it is closing, and an expired conntrack entry
    /// ends the pair. Halves without a partner are removed.
    pub fn gc(
        &mut self,
        now_ns: u64,
        timeouts: &NatTimeouts,
        conntrack: Option<&[(Ct4Key, Ct4Value)]>,
    ) -> Result<GcStats> {
        let raw = self.table.entries()?;
        let entries: HashMap<Ct4Key, NatEntry> = raw
            .iter()
            .filter_map(|(k, v)| NatEntry::from_raw(k, v).map(|e| (*k, e)))
            .collect();
        let ct: HashMap<Ct4Key, Ct4Value> = conntrack
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        let mut st = GcStats {
            scanned: raw.len(),
            ..Default::default()
        };
        let mut doomed = Vec::new();
        for (k, e) in &entries {
            let partner = e.partner_key();
            let Some(p) = entries.get(&partner) else {
                doomed.push(*k);
                continue;
            };
            if e.dir != NatDir::Out {
                continue; // decided once, from the OUT half
            }
            let last = e.last_seen_ns.max(p.last_seen_ns);
            let mut timeout = if e.proto == 6 {
                timeouts.tcp_ns
            } else {
                timeouts.non_tcp_ns
            };
            let mut ct_dead = false;
            if e.proto == 6 && !e.is_host() {
                let ck = Ct4Key {
                    flags: 0,
                    ..e.key()
                };
                if let Some(c) = ct.get(&ck) {
                    if c.flags & (ct_flags::TX_CLOSING | ct_flags::RX_CLOSING) != 0 {
                        timeout = timeouts.tcp_closing_ns;
                    }
                    ct_dead = c.lifetime < now_ns;
                }
            }
            if ct_dead || last.saturating_add(timeout) < now_ns {
                doomed.push(*k);
                doomed.push(partner);
            }
        }
        for k in &doomed {
            if self.table.remove(k)? {
                st.removed += 1;
            }
        }
        st.alive = raw.len().saturating_sub(st.removed);
        if st.removed > 0 {
            tracing::debug!(removed = st.removed, alive = st.alive, "fibril_nat4 GC");
        }
        Ok(st)
    }

    /// Removes every entry (e.g. when masquerading is turned off).
    pub fn flush(&mut self) -> Result<usize> {
        let mut n = 0;
        for k in self.table.keys()? {
            if self.table.remove(&k)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The translation of a pod's flow: the node address and port its
    /// `OUT` entry rewrites to.
    pub fn lookup_out(
        &self,
        proto: u8,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<Option<SocketAddrV4>> {
        let key = NatEntry {
            proto,
            dir: NatDir::Out,
            src,
            dst,
            xlate: src,
            created_ns: 0,
            last_seen_ns: 0,
        }
        .key();
        Ok(self
            .table
            .get(&key)?
            .map(|v| SocketAddrV4::new(ip_from_be(v.to_addr), u16::from_be(v.to_port))))
    }
}

/// One GC pass for the agent: NAT pairs against the node's conntrack
/// table (see [`Nat::gc`]).
pub fn gc_node(maps: &crate::Maps, now_ns: u64, timeouts: &NatTimeouts) -> Result<GcStats> {
    let ct = maps.conntrack()?.entries()?;
    Nat::open(maps.dir())?.gc(now_ns, timeouts, Some(&ct))
}

/// Orders entries: each `OUT` (by source, destination) followed by its
/// `IN` partner, then orphans.
pub fn order_pairs(all: Vec<NatEntry>) -> Vec<NatEntry> {
    let mut by_key: BTreeMap<(u8, [u8; 13]), NatEntry> = BTreeMap::new();
    let sort_key = |e: &NatEntry| {
        let mut b = [0u8; 13];
        b[..4].copy_from_slice(&e.src.ip().octets());
        b[4..6].copy_from_slice(&e.src.port().to_be_bytes());
        b[6..10].copy_from_slice(&e.dst.ip().octets());
        b[10..12].copy_from_slice(&e.dst.port().to_be_bytes());
        b[12] = e.proto;
        (u8::from(e.dir == NatDir::In), b)
    };
    for e in all {
        by_key.insert(sort_key(&e), e);
    }
    let ins: HashMap<Ct4Key, NatEntry> = by_key
        .values()
        .filter(|e| e.dir == NatDir::In)
        .map(|e| (e.key(), *e))
        .collect();
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(by_key.len());
    for e in by_key.values().filter(|e| e.dir == NatDir::Out) {
        out.push(*e);
        let pk = e.partner_key();
        if let Some(p) = ins.get(&pk) {
            out.push(*p);
            used.insert(pk);
        }
    }
    for e in by_key.values().filter(|e| e.dir == NatDir::In) {
        if !used.contains(&e.key()) {
            out.push(*e);
        }
    }
    out
}

/// The value of the `Masquerading:` line of `status`, as in the seeds:
/// `BPF   [eth1]   172.20.0.0/16 [IPv4: Enabled, IPv6: Disabled]`, or
/// `Disabled`.
pub fn status_value(
    enabled: bool,
    devices: &[&str],
    native_routing_cidr: Option<crate::Prefix4>,
) -> String {
    if !enabled {
        return "Disabled".into();
    }
    let cidr = native_routing_cidr
        .map(|c| format!("{c} "))
        .unwrap_or_default();
    format!(
        "BPF   [{}]   {cidr}[IPv4: Enabled, IPv6: Disabled]",
        devices.join(", ")
    )
}

/// Formats entries as `cilium-dbg bpf nat list` does.
pub fn format_list(entries: &[NatEntry], now_ns: u64) -> String {
    let mut s = String::new();
    for e in entries {
        s.push_str(&e.format(now_ns));
        s.push('\n');
    }
    s
}

/// The node address a pod's flow is masqueraded to, if any (convenience
/// for tests and the CLI).
pub fn node_port_of(entries: &[NatEntry], pod: SocketAddrV4, remote: Ipv4Addr) -> Option<u16> {
    entries
        .iter()
        .find(|e| e.dir == NatDir::Out && e.src == pod && *e.dst.ip() == remote)
        .map(|e| e.xlate.port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn pair(proto: u8, pod: &str, remote: &str, node: &str) -> (NatEntry, NatEntry) {
        let out = NatEntry {
            proto,
            dir: NatDir::Out,
            src: sa(pod),
            dst: sa(remote),
            xlate: sa(node),
            created_ns: 5 * NS,
            last_seen_ns: 7 * NS,
        };
        let pk = out.partner_key();
        let inn = NatEntry {
            proto,
            dir: NatDir::In,
            src: SocketAddrV4::new(ip_from_be(pk.saddr), u16::from_be(pk.sport)),
            dst: SocketAddrV4::new(ip_from_be(pk.daddr), u16::from_be(pk.dport)),
            xlate: sa(pod),
            created_ns: 5 * NS,
            last_seen_ns: 7 * NS,
        };
        (out, inn)
    }

    #[test]
    fn cilium_format_and_pairing() {
        let (o, i) = pair(
            6,
            "10.244.0.5:45678",
            "10.10.1.200:80",
            "192.168.10.100:45678",
        );
        assert_eq!(i.src, sa("10.10.1.200:80"));
        assert_eq!(i.dst, sa("192.168.10.100:45678"));
        assert_eq!(i.partner_key(), o.key());
        assert_eq!(
            o.format(125 * NS),
            "TCP OUT 10.244.0.5:45678 -> 10.10.1.200:80 XLATE_SRC 192.168.10.100:45678 Created=120sec ago NeedsCT=1"
        );
        assert_eq!(
            i.format(125 * NS),
            "TCP IN 10.10.1.200:80 -> 192.168.10.100:45678 XLATE_DST 10.244.0.5:45678 Created=120sec ago NeedsCT=1"
        );
        // ICMP: the echo id is the port on both sides.
        let (o, i) = pair(1, "10.244.0.5:7", "10.10.1.200:7", "192.168.10.100:40001");
        assert_eq!(i.src, sa("10.10.1.200:40001"));
        assert_eq!(i.partner_key(), o.key());
        let (o2, i2) = pair(
            17,
            "10.244.0.6:5353",
            "10.10.1.200:53",
            "192.168.10.100:33333",
        );
        let listed = order_pairs(vec![i2, i, o2, o]);
        assert_eq!(listed, vec![o, i, o2, i2]);
        let raw_roundtrip = NatEntry::from_raw(
            &o.key(),
            &Nat4Value {
                to_addr: fibril_abi::ip_be(*o.xlate.ip()),
                to_port: o.xlate.port().to_be(),
                pad: 0,
                created: o.created_ns,
                last_seen: o.last_seen_ns,
            },
        )
        .unwrap();
        assert_eq!(raw_roundtrip, o);
        assert!(!o.is_host());
        let (h, _) = pair(
            6,
            "192.168.10.100:40000",
            "10.10.1.200:80",
            "192.168.10.100:40000",
        );
        assert!(h.is_host());
        assert_eq!(
            status_value(true, &["eth1"], Some("172.20.0.0/16".parse().unwrap())),
            "BPF   [eth1]   172.20.0.0/16 [IPv4: Enabled, IPv6: Disabled]"
        );
        assert_eq!(status_value(false, &["eth1"], None), "Disabled");
        assert_eq!(
            node_port_of(
                &listed,
                sa("10.244.0.6:5353"),
                "10.10.1.200".parse().unwrap()
            ),
            Some(33333)
        );
    }
}
