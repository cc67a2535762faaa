//! Node-level address allocator: owns the addresses of the CIDRs a node was given (by
//! cluster-pool, multi-pool or Kubernetes host scope) and who holds each one.
//!
//! One bitmap per CIDR with a next-free cursor keeps allocation O(1) amortised. The cursor
//! moves forward past a released address instead of handing it straight back, so a pod
//! that just died does not pass its IP (and stale conntrack/identity entries) to the next
//! pod; the search wraps around, so no capacity is ever lost.
//!
//! Network and broadcast addresses are reserved for prefixes up to /30; a /31 holds two
//! usable addresses (RFC 3021) and a /32 one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::bitmap::{Bitmap, MAX_SLOTS};
use crate::error::{join_cidrs, IpamError};

/// One allocated address as listed by `status --verbose` and persisted by the agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Allocation {
    /// The address.
    pub ip: Ipv4Addr,
    /// Who holds it: `router`, `health` or `namespace/pod`.
    pub owner: String,
    /// True when it came back through [`NodeAllocator::restore`] (shown as `[restored]`).
    #[serde(default)]
    pub restored: bool,
}

impl fmt::Display for Allocation {
    /// `172.20.42.5 (kube-system/coredns-674b8bbfcf-xcvrr [restored])`, the seeds' format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.restored {
            write!(f, "{} ({} [restored])", self.ip, self.owner)
        } else {
            write!(f, "{} ({})", self.ip, self.owner)
        }
    }
}

/// Usage of one CIDR: `used` of `total` usable addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrStatus {
    /// The CIDR.
    pub cidr: Ipv4Net,
    /// Addresses allocated.
    pub used: u32,
    /// Usable addresses (network and broadcast excluded).
    pub total: u32,
}

/// What a node allocator persists: its CIDRs and allocations. Restoring it with
/// [`NodeAllocator::from_state`] gives back the same allocator (cursor aside).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAllocatorState {
    /// CIDRs in the order they were added.
    pub cidrs: Vec<Ipv4Net>,
    /// Allocations, in address order.
    pub allocations: Vec<Allocation>,
}

/// Result of [`NodeAllocator::restore`]: what came back and what had to be skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// Addresses restored (or already held by the same owner).
    pub restored: Vec<Ipv4Addr>,
    /// Addresses that could not be restored, with the reason (outside the node's CIDRs,
    /// held by another owner, reserved).
    pub skipped: Vec<(Ipv4Addr, IpamError)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    owner: String,
    restored: bool,
}

#[derive(Debug, Clone)]
struct Range {
    net: Ipv4Net,
    /// First usable address as u32.
    first: u32,
    bitmap: Bitmap,
    cursor: u32,
    entries: BTreeMap<u32, Entry>,
}

impl Range {
    fn new(net: Ipv4Net) -> Result<Self, IpamError> {
        let net = net.trunc();
        let size: u64 = 1u64 << (32 - u32::from(net.prefix_len()));
        let (first, count) = if net.prefix_len() <= 30 {
            (u32::from(net.network()) + 1, size - 2)
        } else {
            (u32::from(net.network()), size)
        };
        if count > MAX_SLOTS {
            return Err(IpamError::TooLarge {
                cidr: net,
                mask_size: 32,
                slots: count,
                limit: MAX_SLOTS,
            });
        }
        Ok(Self {
            net,
            first,
            // Checked against MAX_SLOTS (2^24) above, so it fits.
            bitmap: Bitmap::new(count as u32),
            cursor: 0,
            entries: BTreeMap::new(),
        })
    }

    /// Slot of `ip`, or the reason it has none.
    fn slot(&self, ip: Ipv4Addr) -> Result<u32, IpamError> {
        let v = u32::from(ip);
        if v < self.first || v - self.first >= self.bitmap.len() {
            return Err(IpamError::Reserved { ip, cidr: self.net });
        }
        Ok(v - self.first)
    }

    fn ip(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.first + slot)
    }

    fn status(&self) -> CidrStatus {
        CidrStatus {
            cidr: self.net,
            used: self.bitmap.used(),
            total: self.bitmap.len(),
        }
    }
}

/// Address allocator for one node over one or more CIDRs.
#[derive(Debug, Clone, Default)]
pub struct NodeAllocator {
    ranges: Vec<Range>,
}

impl NodeAllocator {
    /// An allocator with no CIDRs (every allocation fails with `range is full`).
    pub fn new() -> Self {
        Self::default()
    }

    /// An allocator over `cidrs`, in that order.
    pub fn with_cidrs(cidrs: impl IntoIterator<Item = Ipv4Net>) -> Result<Self, IpamError> {
        let mut a = Self::new();
        for c in cidrs {
            a.add_cidr(c)?;
        }
        Ok(a)
    }

    /// Rebuilds an allocator from persisted state, keeping each allocation's `restored` flag.
    pub fn from_state(state: &NodeAllocatorState) -> Result<Self, IpamError> {
        let mut a = Self::with_cidrs(state.cidrs.iter().copied())?;
        for al in &state.allocations {
            a.insert(al.ip, &al.owner, al.restored)?;
        }
        Ok(a)
    }

    /// The state to persist.
    pub fn state(&self) -> NodeAllocatorState {
        NodeAllocatorState {
            cidrs: self.cidrs(),
            allocations: self.allocations(),
        }
    }

    /// Adds a CIDR (host bits are cleared). Returns false if it was already there.
    /// Errors if it overlaps another CIDR of this node.
    pub fn add_cidr(&mut self, cidr: Ipv4Net) -> Result<bool, IpamError> {
        let cidr = cidr.trunc();
        for r in &self.ranges {
            if r.net == cidr {
                return Ok(false);
            }
            if r.net.contains(&cidr) || cidr.contains(&r.net) {
                return Err(IpamError::Overlap { cidr, other: r.net });
            }
        }
        self.ranges.push(Range::new(cidr)?);
        Ok(true)
    }

    /// Removes a CIDR that holds no allocation.
    pub fn remove_cidr(&mut self, cidr: Ipv4Net) -> Result<(), IpamError> {
        let cidr = cidr.trunc();
        let idx = self
            .ranges
            .iter()
            .position(|r| r.net == cidr)
            .ok_or(IpamError::UnknownCidr { cidr })?;
        let used = self.ranges[idx].bitmap.used();
        if used > 0 {
            return Err(IpamError::CidrInUse {
                cidr,
                in_use: format!("{used} address(es)"),
            });
        }
        self.ranges.remove(idx);
        Ok(())
    }

    /// The node's CIDRs in the order they were added.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
        self.ranges.iter().map(|r| r.net).collect()
    }

    /// True if `cidr` is one of the node's CIDRs.
    pub fn has_cidr(&self, cidr: Ipv4Net) -> bool {
        let cidr = cidr.trunc();
        self.ranges.iter().any(|r| r.net == cidr)
    }

    /// Allocates the next free address, from the first CIDR with room.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        for r in &mut self.ranges {
            if let Some(slot) = r.bitmap.find_free_from(r.cursor) {
                r.bitmap.set(slot);
                r.cursor = slot + 1;
                r.entries.insert(
                    slot,
                    Entry {
                        owner: owner.to_owned(),
                        restored: false,
                    },
                );
                return Ok(r.ip(slot));
            }
        }
        Err(self.full())
    }

    /// Allocates a specific address.
    pub fn allocate_ip(&mut self, ip: Ipv4Addr, owner: &str) -> Result<(), IpamError> {
        self.insert(ip, owner, false)
    }

    fn insert(&mut self, ip: Ipv4Addr, owner: &str, restored: bool) -> Result<(), IpamError> {
        let r = self.range_mut(ip)?;
        let slot = r.slot(ip)?;
        if let Some(e) = r.entries.get(&slot) {
            return Err(IpamError::AlreadyAllocated {
                ip,
                owner: e.owner.clone(),
            });
        }
        r.bitmap.set(slot);
        r.entries.insert(
            slot,
            Entry {
                owner: owner.to_owned(),
                restored,
            },
        );
        Ok(())
    }

    /// Re-registers addresses that were in use before a restart, marked `restored`.
    /// An address already held by the same owner counts as restored; anything else that
    /// does not fit is skipped with its reason, the rest still comes back.
    pub fn restore<'a>(
        &mut self,
        items: impl IntoIterator<Item = (Ipv4Addr, &'a str)>,
    ) -> RestoreOutcome {
        let mut out = RestoreOutcome::default();
        for (ip, owner) in items {
            match self.insert(ip, owner, true) {
                Ok(()) => out.restored.push(ip),
                Err(IpamError::AlreadyAllocated { owner: held, .. }) if held == owner => {
                    out.restored.push(ip)
                }
                Err(e) => out.skipped.push((ip, e)),
            }
        }
        out
    }

    /// Releases an address, returning what it was.
    pub fn release(&mut self, ip: Ipv4Addr) -> Result<Allocation, IpamError> {
        let r = self.range_mut(ip)?;
        let slot = r.slot(ip).map_err(|_| IpamError::NotAllocated { ip })?;
        let e = r
            .entries
            .remove(&slot)
            .ok_or(IpamError::NotAllocated { ip })?;
        r.bitmap.clear(slot);
        Ok(Allocation {
            ip,
            owner: e.owner,
            restored: e.restored,
        })
    }

    /// Releases every address held by `owner` (e.g. on CNI DEL); returns them.
    pub fn release_owner(&mut self, owner: &str) -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        for r in &mut self.ranges {
            let slots: Vec<u32> = r
                .entries
                .iter()
                .filter(|(_, e)| e.owner == owner)
                .map(|(s, _)| *s)
                .collect();
            for s in slots {
                r.entries.remove(&s);
                r.bitmap.clear(s);
                out.push(r.ip(s));
            }
        }
        out.sort();
        out
    }

    /// Who holds `ip`, if anyone.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<&str> {
        let r = self.range(ip)?;
        let slot = r.slot(ip).ok()?;
        r.entries.get(&slot).map(|e| e.owner.as_str())
    }

    /// Addresses held by `owner`.
    pub fn addresses_of(&self, owner: &str) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self
            .ranges
            .iter()
            .flat_map(|r| {
                r.entries
                    .iter()
                    .filter(|(_, e)| e.owner == owner)
                    .map(|(s, _)| r.ip(*s))
            })
            .collect();
        out.sort();
        out
    }

    /// True if `ip` is a usable address of one of the node's CIDRs.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.range(ip).is_some_and(|r| r.slot(ip).is_ok())
    }

    /// Every allocation, in address order.
    pub fn allocations(&self) -> Vec<Allocation> {
        let mut out: Vec<Allocation> = self
            .ranges
            .iter()
            .flat_map(|r| {
                r.entries.iter().map(|(s, e)| Allocation {
                    ip: r.ip(*s),
                    owner: e.owner.clone(),
                    restored: e.restored,
                })
            })
            .collect();
        out.sort();
        out
    }

    /// Per-CIDR usage, in the order the CIDRs were added.
    pub fn status(&self) -> Vec<CidrStatus> {
        self.ranges.iter().map(Range::status).collect()
    }

    /// Status of one CIDR.
    pub fn cidr_status(&self, cidr: Ipv4Net) -> Option<CidrStatus> {
        let cidr = cidr.trunc();
        self.ranges
            .iter()
            .find(|r| r.net == cidr)
            .map(Range::status)
    }

    /// Addresses allocated over all CIDRs.
    pub fn used(&self) -> u32 {
        self.ranges.iter().map(|r| r.bitmap.used()).sum()
    }

    /// Usable addresses over all CIDRs.
    pub fn total(&self) -> u32 {
        self.ranges.iter().map(|r| r.bitmap.len()).sum()
    }

    /// Free addresses over all CIDRs.
    pub fn free(&self) -> u32 {
        self.total() - self.used()
    }

    /// The `status` line body: `IPv4: 2/6 allocated from 172.20.42.0/29` (CIDRs joined
    /// with `, ` when there are several).
    pub fn status_line(&self) -> String {
        format!(
            "IPv4: {}/{} allocated from {}",
            self.used(),
            self.total(),
            join_cidrs(self.ranges.iter().map(|r| &r.net))
        )
    }

    fn full(&self) -> IpamError {
        IpamError::RangeFull {
            cidrs: join_cidrs(self.ranges.iter().map(|r| &r.net)),
        }
    }

    fn range(&self, ip: Ipv4Addr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.net.contains(&ip))
    }

    fn range_mut(&mut self, ip: Ipv4Addr) -> Result<&mut Range, IpamError> {
        match self.ranges.iter().position(|r| r.net.contains(&ip)) {
            Some(i) => Ok(&mut self.ranges[i]),
            None => Err(IpamError::NotInRange {
                ip,
                cidrs: join_cidrs(self.ranges.iter().map(|r| &r.net)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn slash29_holds_six_and_status_reads_like_cilium() {
        let mut a = NodeAllocator::with_cidrs([net("172.20.42.0/29")]).unwrap();
        assert_eq!(a.total(), 6);
        assert_eq!(a.allocate("router").unwrap(), ip("172.20.42.1"));
        assert_eq!(a.allocate("health").unwrap(), ip("172.20.42.2"));
        assert_eq!(a.status_line(), "IPv4: 2/6 allocated from 172.20.42.0/29");
        for i in 0..4 {
            a.allocate(&format!("default/p{i}")).unwrap();
        }
        let err = a.allocate("default/p4").unwrap_err();
        assert!(err.to_string().contains("range is full"), "{err}");
        assert!(err.to_string().contains("172.20.42.0/29"), "{err}");
        assert_eq!(a.status_line(), "IPv4: 6/6 allocated from 172.20.42.0/29");
        let ips: Vec<_> = a.allocations().iter().map(|x| x.ip).collect();
        assert_eq!(ips.first(), Some(&ip("172.20.42.1")));
        assert_eq!(ips.last(), Some(&ip("172.20.42.6")));
        assert!(!ips.contains(&ip("172.20.42.0")) && !ips.contains(&ip("172.20.42.7")));
    }

    #[test]
    fn network_and_broadcast_reserved() {
        let mut a = NodeAllocator::with_cidrs([net("10.0.0.0/24")]).unwrap();
        assert!(matches!(
            a.allocate_ip(ip("10.0.0.0"), "x"),
            Err(IpamError::Reserved { .. })
        ));
        assert!(matches!(
            a.allocate_ip(ip("10.0.0.255"), "x"),
            Err(IpamError::Reserved { .. })
        ));
        assert_eq!(a.total(), 254);
        let small = NodeAllocator::with_cidrs([net("10.1.0.0/31"), net("10.2.0.1/32")]).unwrap();
        assert_eq!(small.total(), 3);
    }

    #[test]
    fn allocate_specific_and_conflicts() {
        let mut a = NodeAllocator::with_cidrs([net("10.0.0.0/28")]).unwrap();
        a.allocate_ip(ip("10.0.0.5"), "ns/a").unwrap();
        let err = a.allocate_ip(ip("10.0.0.5"), "ns/b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 10.0.0.5 is already allocated to ns/a"
        );
        let err = a.allocate_ip(ip("10.9.0.5"), "ns/b").unwrap_err();
        assert!(err.to_string().contains("10.9.0.5"), "{err}");
        assert!(err.to_string().contains("10.0.0.0/28"), "{err}");
        assert_eq!(a.owner_of(ip("10.0.0.5")), Some("ns/a"));
        // Sequential allocation skips the taken address.
        let got: Vec<_> = (0..5).map(|_| a.allocate("x").unwrap()).collect();
        assert!(!got.contains(&ip("10.0.0.5")));
    }

    #[test]
    fn release_and_cursor_moves_on_then_wraps() {
        let mut a = NodeAllocator::with_cidrs([net("10.0.0.0/29")]).unwrap();
        let first = a.allocate("a").unwrap();
        let rel = a.release(first).unwrap();
        assert_eq!(rel.owner, "a");
        // Just-released address is not handed out again immediately.
        assert_ne!(a.allocate("b").unwrap(), first);
        assert!(matches!(
            a.release(first),
            Err(IpamError::NotAllocated { .. })
        ));
        for i in 0..5 {
            a.allocate(&format!("c{i}")).unwrap();
        }
        assert_eq!(a.used(), 6);
        assert_eq!(a.owner_of(first), Some("c4"));
    }

    #[test]
    fn release_owner_returns_all() {
        let mut a = NodeAllocator::with_cidrs([net("10.0.0.0/28")]).unwrap();
        let x = a.allocate("ns/p").unwrap();
        a.allocate("other").unwrap();
        let y = a.allocate("ns/p").unwrap();
        assert_eq!(a.addresses_of("ns/p"), vec![x, y]);
        assert_eq!(a.release_owner("ns/p"), vec![x, y]);
        assert_eq!(a.used(), 1);
    }

    #[test]
    fn multiple_cidrs_fill_in_order_and_status() {
        let mut a = NodeAllocator::with_cidrs([net("172.20.42.0/29"), net("10.0.0.0/29")]).unwrap();
        for _ in 0..7 {
            a.allocate("x").unwrap();
        }
        let st = a.status();
        assert_eq!(
            st[0],
            CidrStatus {
                cidr: net("172.20.42.0/29"),
                used: 6,
                total: 6
            }
        );
        assert_eq!(
            st[1],
            CidrStatus {
                cidr: net("10.0.0.0/29"),
                used: 1,
                total: 6
            }
        );
        assert_eq!(
            a.status_line(),
            "IPv4: 7/12 allocated from 172.20.42.0/29, 10.0.0.0/29"
        );
        let err = a.allocate_ip(ip("10.0.0.1"), "y").unwrap_err();
        assert!(matches!(err, IpamError::AlreadyAllocated { .. }));
    }

    #[test]
    fn add_remove_cidr_rules() {
        let mut a = NodeAllocator::with_cidrs([net("10.0.0.0/24")]).unwrap();
        assert!(!a.add_cidr(net("10.0.0.0/24")).unwrap());
        let err = a.add_cidr(net("10.0.0.128/25")).unwrap_err();
        assert_eq!(err.to_string(), "CIDR 10.0.0.128/25 overlaps 10.0.0.0/24");
        assert!(a.add_cidr(net("10.0.1.0/24")).unwrap());
        let x = a.allocate_ip(ip("10.0.1.9"), "p");
        assert!(x.is_ok());
        let err = a.remove_cidr(net("10.0.1.0/24")).unwrap_err();
        assert!(err.to_string().contains("10.0.1.0/24"), "{err}");
        a.release(ip("10.0.1.9")).unwrap();
        a.remove_cidr(net("10.0.1.0/24")).unwrap();
        assert!(matches!(
            a.remove_cidr(net("10.0.1.0/24")),
            Err(IpamError::UnknownCidr { .. })
        ));
        assert_eq!(a.cidrs(), vec![net("10.0.0.0/24")]);
        let err = NodeAllocator::with_cidrs([net("10.0.0.0/4")]).unwrap_err();
        assert!(matches!(err, IpamError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn empty_allocator_is_full() {
        let mut a = NodeAllocator::new();
        let err = a.allocate("router").unwrap_err();
        assert!(err.to_string().contains("range is full"));
    }

    #[test]
    fn restore_marks_and_skips() {
        let mut a = NodeAllocator::with_cidrs([net("172.20.42.0/29")]).unwrap();
        a.allocate_ip(ip("172.20.42.2"), "router").unwrap();
        let out = a.restore([
            (ip("172.20.42.2"), "router"),
            (ip("172.20.42.5"), "kube-system/coredns-674b8bbfcf-xcvrr"),
            (ip("172.20.42.3"), "health"),
            (ip("172.20.42.3"), "someone-else"),
            (ip("10.244.0.7"), "default/old"),
        ]);
        assert_eq!(out.restored.len(), 3);
        assert_eq!(out.skipped.len(), 2);
        assert_eq!(out.skipped[1].0, ip("10.244.0.7"));
        let lines: Vec<String> = a.allocations().iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "172.20.42.2 (router)",
                "172.20.42.3 (health [restored])",
                "172.20.42.5 (kube-system/coredns-674b8bbfcf-xcvrr [restored])",
            ]
        );
    }

    #[test]
    fn state_roundtrip_through_json() {
        let mut a = NodeAllocator::with_cidrs([net("10.0.0.0/28"), net("10.0.1.0/29")]).unwrap();
        a.allocate("router").unwrap();
        a.restore([(ip("10.0.1.3"), "ns/p")]);
        let st = a.state();
        let json = serde_json::to_string(&st).unwrap();
        let back: NodeAllocatorState = serde_json::from_str(&json).unwrap();
        let b = NodeAllocator::from_state(&back).unwrap();
        assert_eq!(b.state(), st);
        assert!(b.allocations()[1].restored);
    }
}
