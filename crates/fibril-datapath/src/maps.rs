//! Typed access to every pinned map of a node.
//!
//! Maps are opened from their pins (`<pin_dir>/<name>`), so tools can read
//! and write them without loading programs (the debug CLI, the agent after a
//! restart). Generic wrappers ([`HashTable`], [`LpmTable`]) carry the map
//! name into errors; per-map aliases and helpers add the Fibril semantics.

use std::mem::size_of;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as AyaHashMap, Map, MapData, MapError, PerCpuArray};
use aya::Pod;
use fibril_abi::{
    ct_flags, ip_be, ip_from_be, map_names, metrics, Ct4Key, Ct4Value, DropReason, EndpointInfo,
    EndpointKey, EventsRlState, IpcacheValue, IpmasqValue, Lb4Backend, Lb4BackendKey, Lb4Key,
    Lb4ReverseNat, Lb4ReverseNatKey, Lb4Service, MetricsValue, Nat4Value, PolicyKey, PolicyValue,
};

use crate::error::{DatapathError, Result};

/// Key and value sizes of each pinned map (layout check on reuse).
pub fn expected_sizes(name: &str) -> Option<(u32, u32)> {
    fn kv<K, V>() -> Option<(u32, u32)> {
        Some((size_of::<K>() as u32, size_of::<V>() as u32))
    }
    match name {
        map_names::ENDPOINTS => kv::<EndpointKey, EndpointInfo>(),
        map_names::IPCACHE => kv::<LpmKey<u32>, IpcacheValue>(),
        map_names::CT4 => kv::<Ct4Key, Ct4Value>(),
        map_names::NAT4 => kv::<Ct4Key, Nat4Value>(),
        map_names::IPMASQ => kv::<LpmKey<u32>, IpmasqValue>(),
        map_names::LB4_SERVICES => kv::<Lb4Key, Lb4Service>(),
        map_names::LB4_BACKENDS => kv::<Lb4BackendKey, Lb4Backend>(),
        map_names::LB4_REVERSE_NAT => kv::<Lb4ReverseNatKey, Lb4ReverseNat>(),
        map_names::LB4_SNAT => kv::<Ct4Key, fibril_abi::Lb4SnatValue>(),
        map_names::POLICY => kv::<PolicyKey, PolicyValue>(),
        map_names::EVENTS => Some((0, 0)),
        map_names::EVENTS_RL => kv::<u32, EventsRlState>(),
        map_names::METRICS => kv::<u32, MetricsValue>(),
        _ => None,
    }
}

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| DatapathError::OpenMap {
        path: path.clone(),
        source: Box::new(e),
    })?;
    Map::from_map_data(data).map_err(|e| DatapathError::OpenMap {
        path,
        source: Box::new(e),
    })
}

fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// A hash (or LRU hash) map with typed keys and values.
pub struct HashTable<K, V> {
    name: &'static str,
    map: AyaHashMap<MapData, K, V>,
}

impl<K: Pod + std::fmt::Debug, V: Pod> HashTable<K, V> {
    /// Opens the pinned map `name` under `dir`.
    pub fn open(dir: &Path, name: &'static str) -> Result<Self> {
        let map = open_map(dir, name)?;
        let map = AyaHashMap::try_from(map).map_err(|e| DatapathError::OpenMap {
            path: dir.join(name),
            source: Box::new(e),
        })?;
        Ok(Self { name, map })
    }

    /// Map name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Inserts or replaces.
    pub fn insert(&mut self, key: &K, value: &V) -> Result<()> {
        self.map
            .insert(key, value, 0)
            .map_err(|e| DatapathError::map(self.name, "insert", key, e))
    }

    /// Looks up.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(DatapathError::map(self.name, "get", key, e)),
        }
    }

    /// Removes; `false` if it was not there.
    pub fn remove(&mut self, key: &K) -> Result<bool> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(DatapathError::map(self.name, "remove", key, e)),
        }
    }

    /// All entries (entries deleted concurrently are skipped).
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok(kv) => out.push(kv),
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(DatapathError::map(self.name, "iterate", "", e)),
            }
        }
        Ok(out)
    }

    /// All keys.
    pub fn keys(&self) -> Result<Vec<K>> {
        let mut out = Vec::new();
        for k in self.map.keys() {
            match k {
                Ok(k) => out.push(k),
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(DatapathError::map(self.name, "keys", "", e)),
            }
        }
        Ok(out)
    }

    /// Number of entries (walks the map).
    pub fn len(&self) -> Result<usize> {
        Ok(self.keys()?.len())
    }

    /// True when empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.map.keys().next().is_none())
    }
}

/// An LPM trie keyed by IPv4 prefix.
pub struct LpmTable<V> {
    name: &'static str,
    map: LpmTrie<MapData, u32, V>,
}

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix4 {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl Prefix4 {
    /// A prefix; host bits are cleared. Errors on a length above 32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self> {
        if len > 32 {
            return Err(DatapathError::Config {
                field: "prefix",
                reason: format!("{addr}/{len}: prefix length above 32"),
            });
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    /// A /32.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }
}

impl std::fmt::Display for Prefix4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix4 {
    type Err = DatapathError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || DatapathError::Config {
            field: "prefix",
            reason: format!("{s:?} is not an IPv4 CIDR"),
        };
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        Prefix4::new(addr, len)
    }
}

impl<V: Pod> LpmTable<V> {
    /// Opens the pinned map `name` under `dir`.
    pub fn open(dir: &Path, name: &'static str) -> Result<Self> {
        let map = open_map(dir, name)?;
        let map = LpmTrie::try_from(map).map_err(|e| DatapathError::OpenMap {
            path: dir.join(name),
            source: Box::new(e),
        })?;
        Ok(Self { name, map })
    }

    fn key(p: Prefix4) -> LpmKey<u32> {
        LpmKey::new(u32::from(p.len), ip_be(p.addr))
    }

    /// Inserts or replaces a prefix.
    pub fn insert(&mut self, prefix: Prefix4, value: &V) -> Result<()> {
        self.map
            .insert(&Self::key(prefix), value, 0)
            .map_err(|e| DatapathError::map(self.name, "insert", prefix, e))
    }

    /// Exact-prefix lookup.
    pub fn get(&self, prefix: Prefix4) -> Result<Option<V>> {
        match self.map.get(&Self::key(prefix), 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(DatapathError::map(self.name, "get", prefix, e)),
        }
    }

    /// Longest-prefix match of an address.
    pub fn lookup(&self, addr: Ipv4Addr) -> Result<Option<V>> {
        self.get(Prefix4::host(addr))
    }

    /// Removes a prefix.
    pub fn remove(&mut self, prefix: Prefix4) -> Result<bool> {
        match self.map.remove(&Self::key(prefix)) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(DatapathError::map(self.name, "remove", prefix, e)),
        }
    }

    /// All prefixes.
    pub fn entries(&self) -> Result<Vec<(Prefix4, V)>> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok((k, v)) => out.push((
                    Prefix4 {
                        addr: ip_from_be(k.data()),
                        len: k.prefix_len() as u8,
                    },
                    v,
                )),
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(DatapathError::map(self.name, "iterate", "", e)),
            }
        }
        out.sort_by_key(|(p, _)| *p);
        Ok(out)
    }
}

/// `fibril_endpoints`.
pub type Endpoints = HashTable<EndpointKey, EndpointInfo>;
/// `fibril_ipcache`.
pub type Ipcache = LpmTable<IpcacheValue>;
/// `fibril_ipmasq`.
pub type Ipmasq = LpmTable<IpmasqValue>;
/// `fibril_nat4` (keys are [`Ct4Key`] with `nat_dir` in flags).
pub type Nat4 = HashTable<Ct4Key, Nat4Value>;
/// `fibril_lb4_services`.
pub type Lb4Services = HashTable<Lb4Key, Lb4Service>;
/// `fibril_lb4_backends`.
pub type Lb4Backends = HashTable<Lb4BackendKey, Lb4Backend>;
/// `fibril_lb4_reverse_nat`.
pub type Lb4RevNat = HashTable<Lb4ReverseNatKey, Lb4ReverseNat>;
/// `fibril_policy`.
pub type Policy = HashTable<PolicyKey, PolicyValue>;

impl HashTable<EndpointKey, EndpointInfo> {
    /// Adds or updates the endpoint owning `ip`.
    pub fn upsert(&mut self, ip: Ipv4Addr, info: &EndpointInfo) -> Result<()> {
        self.insert(&EndpointKey { ip: ip_be(ip) }, info)
    }

    /// The endpoint owning `ip`.
    pub fn lookup(&self, ip: Ipv4Addr) -> Result<Option<EndpointInfo>> {
        self.get(&EndpointKey { ip: ip_be(ip) })
    }

    /// Removes the endpoint owning `ip`.
    pub fn delete(&mut self, ip: Ipv4Addr) -> Result<bool> {
        self.remove(&EndpointKey { ip: ip_be(ip) })
    }

    /// All endpoints by IP.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, EndpointInfo)>> {
        let mut v: Vec<_> = self
            .entries()?
            .into_iter()
            .map(|(k, i)| (ip_from_be(k.ip), i))
            .collect();
        v.sort_by_key(|(ip, _)| *ip);
        Ok(v)
    }
}

/// Monotonic clock in ns, the clock of `bpf_ktime_get_ns()` (and so of
/// [`Ct4Value::lifetime`]).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Result of a conntrack GC pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries looked at.
    pub scanned: usize,
    /// Expired entries removed.
    pub removed: usize,
    /// Entries left.
    pub alive: usize,
}

/// Conntrack counts for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtCounts {
    /// All entries.
    pub total: usize,
    /// TCP entries.
    pub tcp: usize,
    /// UDP entries.
    pub udp: usize,
    /// ICMP entries.
    pub icmp: usize,
    /// Other protocols.
    pub other: usize,
    /// Established (TCP handshake done, or a reply seen).
    pub established: usize,
    /// Closing (FIN/RST seen).
    pub closing: usize,
    /// Expired but not yet collected.
    pub expired: usize,
    /// Capacity (`max_entries`).
    pub capacity: u32,
}

/// `fibril_ct4` with GC and counts.
pub struct Conntrack {
    table: HashTable<Ct4Key, Ct4Value>,
}

impl Conntrack {
    /// Opens the pinned `fibril_ct4`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            table: HashTable::open(dir, map_names::CT4)?,
        })
    }

    /// The underlying table (list, insert for tests, remove).
    pub fn table(&mut self) -> &mut HashTable<Ct4Key, Ct4Value> {
        &mut self.table
    }

    /// All entries.
    pub fn entries(&self) -> Result<Vec<(Ct4Key, Ct4Value)>> {
        self.table.entries()
    }

    /// Removes entries whose lifetime is before `now_ns` (a
    /// [`monotonic_ns`] reading).
    pub fn gc(&mut self, now_ns: u64) -> Result<GcStats> {
        let entries = self.table.entries()?;
        let mut st = GcStats {
            scanned: entries.len(),
            ..Default::default()
        };
        for (k, v) in entries {
            if v.lifetime < now_ns {
                if self.table.remove(&k)? {
                    st.removed += 1;
                }
            } else {
                st.alive += 1;
            }
        }
        Ok(st)
    }

    /// Counts by protocol and state at `now_ns`.
    pub fn counts(&self, now_ns: u64) -> Result<CtCounts> {
        let mut c = CtCounts {
            capacity: fibril_abi::map_sizes::CT4,
            ..Default::default()
        };
        for (k, v) in self.table.entries()? {
            c.total += 1;
            match k.proto {
                6 => c.tcp += 1,
                17 => c.udp += 1,
                1 => c.icmp += 1,
                _ => c.other += 1,
            }
            if v.flags & ct_flags::ESTABLISHED != 0 {
                c.established += 1;
            }
            if v.flags & (ct_flags::TX_CLOSING | ct_flags::RX_CLOSING) != 0 {
                c.closing += 1;
            }
            if v.lifetime < now_ns {
                c.expired += 1;
            }
        }
        Ok(c)
    }
}

/// One counter of `fibril_metrics`, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricEntry {
    /// `metrics::DIR_*`.
    pub dir: u8,
    /// 0 = forwarded, a drop reason, or an internal counter.
    pub reason: u8,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl MetricEntry {
    /// The drop reason, if this counter is one.
    pub fn drop_reason(&self) -> Option<DropReason> {
        DropReason::from_u8(self.reason)
    }
}

/// Event accounting for `status` (never silent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounters {
    /// Lost because the ring buffer was full.
    pub lost: u64,
    /// Dropped by the per-CPU rate limiter.
    pub rate_limited: u64,
    /// Trace events skipped by sampling (by design).
    pub sampled_out: u64,
    /// Trace events skipped by aggregation (by design).
    pub aggregated: u64,
}

/// `fibril_metrics`.
pub struct Metrics {
    map: PerCpuArray<MapData, MetricsValue>,
}

impl Metrics {
    /// Opens the pinned `fibril_metrics`.
    pub fn open(dir: &Path) -> Result<Self> {
        let map = open_map(dir, map_names::METRICS)?;
        let map = PerCpuArray::try_from(map).map_err(|e| DatapathError::OpenMap {
            path: dir.join(map_names::METRICS),
            source: Box::new(e),
        })?;
        Ok(Self { map })
    }

    /// One counter summed over CPUs.
    pub fn get(&self, dir: u8, reason: u8) -> Result<MetricsValue> {
        let key = metrics::key(dir, reason);
        let per_cpu = self
            .map
            .get(&key, 0)
            .map_err(|e| DatapathError::map(map_names::METRICS, "get", key, e))?;
        Ok(per_cpu
            .iter()
            .fold(MetricsValue::default(), |a, v| MetricsValue {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            }))
    }

    /// Packets dropped for `reason`, both directions.
    pub fn drops(&self, reason: DropReason) -> Result<u64> {
        let mut n = 0;
        for dir in [metrics::DIR_NONE, metrics::DIR_INGRESS, metrics::DIR_EGRESS] {
            n += self.get(dir, reason as u8)?.packets;
        }
        Ok(n)
    }

    /// Every non-zero counter.
    pub fn all(&self) -> Result<Vec<MetricEntry>> {
        let mut out = Vec::new();
        for (i, item) in self.map.iter().enumerate() {
            let per_cpu =
                item.map_err(|e| DatapathError::map(map_names::METRICS, "iterate", i, e))?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
            if packets > 0 || bytes > 0 {
                out.push(MetricEntry {
                    dir: (i >> 8) as u8,
                    reason: (i & 0xff) as u8,
                    packets,
                    bytes,
                });
            }
        }
        Ok(out)
    }

    /// Lost / rate-limited / sampled-out event counts.
    pub fn event_counters(&self) -> Result<EventCounters> {
        Ok(EventCounters {
            lost: self.get(metrics::DIR_NONE, metrics::EVENTS_LOST)?.packets,
            rate_limited: self
                .get(metrics::DIR_NONE, metrics::EVENTS_RATE_LIMITED)?
                .packets,
            sampled_out: self
                .get(metrics::DIR_NONE, metrics::EVENTS_SAMPLED_OUT)?
                .packets,
            aggregated: self
                .get(metrics::DIR_NONE, metrics::EVENTS_AGGREGATED)?
                .packets,
        })
    }
}

/// Opens the typed maps of one node's pin directory.
#[derive(Clone, Debug)]
pub struct Maps {
    dir: PathBuf,
}

impl Maps {
    /// Maps pinned under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `fibril_endpoints`.
    pub fn endpoints(&self) -> Result<Endpoints> {
        HashTable::open(&self.dir, map_names::ENDPOINTS)
    }
    /// `fibril_ipcache`.
    pub fn ipcache(&self) -> Result<Ipcache> {
        LpmTable::open(&self.dir, map_names::IPCACHE)
    }
    /// `fibril_ipmasq`.
    pub fn ipmasq(&self) -> Result<Ipmasq> {
        LpmTable::open(&self.dir, map_names::IPMASQ)
    }
    /// `fibril_ct4`.
    pub fn conntrack(&self) -> Result<Conntrack> {
        Conntrack::open(&self.dir)
    }
    /// `fibril_nat4`.
    pub fn nat4(&self) -> Result<Nat4> {
        HashTable::open(&self.dir, map_names::NAT4)
    }
    /// `fibril_lb4_services`.
    pub fn lb4_services(&self) -> Result<Lb4Services> {
        HashTable::open(&self.dir, map_names::LB4_SERVICES)
    }
    /// `fibril_lb4_backends`.
    pub fn lb4_backends(&self) -> Result<Lb4Backends> {
        HashTable::open(&self.dir, map_names::LB4_BACKENDS)
    }
    /// `fibril_lb4_reverse_nat`.
    pub fn lb4_reverse_nat(&self) -> Result<Lb4RevNat> {
        HashTable::open(&self.dir, map_names::LB4_REVERSE_NAT)
    }
    /// `fibril_policy`.
    pub fn policy(&self) -> Result<Policy> {
        HashTable::open(&self.dir, map_names::POLICY)
    }
    /// `fibril_metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        Metrics::open(&self.dir)
    }
    /// `fibril_events` reader.
    pub fn events(&self) -> Result<crate::events::EventReader> {
        crate::events::EventReader::open(&self.dir)
    }
}
