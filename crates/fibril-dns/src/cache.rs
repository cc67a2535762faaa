//! The `cache` plugin: positive (success) and negative (denial) answers,
//! each with a capacity and TTL bounds, per server block. Entries are keyed
//! by (name, type, class, DO bit); remaining TTLs count down on hits.
//! When full, an arbitrary entry is evicted (CoreDNS evicts at random too).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};

use crate::corefile::{in_zone, CacheConfig};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    pub dnssec_ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Success,
    Denial,
}

impl EntryKind {
    pub fn label(self) -> &'static str {
        match self {
            EntryKind::Success => "success",
            EntryKind::Denial => "denial",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    rcode: ResponseCode,
    authoritative: bool,
    recursion_available: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additional: Vec<Record>,
    stored: Instant,
    ttl: Duration,
}

/// A cached answer ready to send (TTLs already decremented).
#[derive(Debug, Clone)]
pub struct Hit {
    pub kind: EntryKind,
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub recursion_available: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

pub struct Cache {
    cfg: CacheConfig,
    success: Mutex<HashMap<CacheKey, Entry>>,
    denial: Mutex<HashMap<CacheKey, Entry>>,
}

impl Cache {
    pub fn new(cfg: CacheConfig) -> Self {
        Self {
            cfg,
            success: Mutex::new(HashMap::new()),
            denial: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this cache covers `name` at all.
    pub fn covers(&self, name: &str) -> bool {
        self.cfg.zones.iter().any(|z| in_zone(name, z))
    }

    fn map(&self, kind: EntryKind) -> &Mutex<HashMap<CacheKey, Entry>> {
        match kind {
            EntryKind::Success => &self.success,
            EntryKind::Denial => &self.denial,
        }
    }

    pub fn len(&self, kind: EntryKind) -> usize {
        self.map(kind).lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len(EntryKind::Success) == 0 && self.len(EntryKind::Denial) == 0
    }

    /// A fresh entry for `key`, if any.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Hit> {
        for kind in [EntryKind::Success, EntryKind::Denial] {
            let mut m = self.map(kind).lock().ok()?;
            let Some(e) = m.get(key) else { continue };
            let age = now.saturating_duration_since(e.stored);
            if age >= e.ttl {
                m.remove(key);
                continue;
            }
            let age_s = age.as_secs() as u32;
            let dec = |rs: &[Record]| -> Vec<Record> {
                rs.iter()
                    .map(|r| {
                        let mut r = r.clone();
                        let t = r.ttl().saturating_sub(age_s);
                        r.set_ttl(t);
                        r
                    })
                    .collect()
            };
            return Some(Hit {
                kind,
                rcode: e.rcode,
                authoritative: e.authoritative,
                recursion_available: e.recursion_available,
                answers: dec(&e.answers),
                authority: dec(&e.authority),
                additional: dec(&e.additional),
            });
        }
        None
    }

    /// Stores `resp` for `key` if cacheable; returns the kind stored and
    /// how many entries were evicted to make room.
    pub fn put(&self, key: CacheKey, resp: &Message, now: Instant) -> Option<(EntryKind, usize)> {
        if resp.truncated() {
            return None;
        }
        let kind = match resp.response_code() {
            ResponseCode::NoError if !resp.answers().is_empty() => EntryKind::Success,
            ResponseCode::NoError | ResponseCode::NXDomain => EntryKind::Denial,
            _ => return None,
        };
        let disabled = match kind {
            EntryKind::Success => &self.cfg.disable_success,
            EntryKind::Denial => &self.cfg.disable_denial,
        };
        if disabled.iter().any(|z| in_zone(&key.name, z)) || !self.covers(&key.name) {
            return None;
        }
        let (cap, max, min) = match kind {
            EntryKind::Success => (
                self.cfg.success_capacity,
                self.cfg.success_ttl,
                self.cfg.success_min_ttl,
            ),
            EntryKind::Denial => (
                self.cfg.denial_capacity,
                self.cfg.denial_ttl,
                self.cfg.denial_min_ttl,
            ),
        };
        let natural = match kind {
            EntryKind::Success => resp
                .answers()
                .iter()
                .chain(resp.name_servers())
                .map(|r| r.ttl())
                .min(),
            EntryKind::Denial => resp
                .name_servers()
                .iter()
                .filter_map(|r| match r.data() {
                    RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
                    _ => None,
                })
                .min(),
        }
        .unwrap_or(min);
        let ttl = natural.clamp(min.min(max), max);
        if ttl == 0 {
            return None;
        }
        // Clients never see a TTL above the cache's (CoreDNS does the same).
        let strip = |rs: &[Record]| -> Vec<Record> {
            rs.iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .map(|r| {
                    let mut r = r.clone();
                    let t = r.ttl().min(ttl);
                    r.set_ttl(t);
                    r
                })
                .collect()
        };
        let entry = Entry {
            rcode: resp.response_code(),
            authoritative: resp.authoritative(),
            recursion_available: resp.recursion_available(),
            answers: strip(resp.answers()),
            authority: strip(resp.name_servers()),
            additional: strip(resp.additionals()),
            stored: now,
            ttl: Duration::from_secs(ttl.into()),
        };
        let mut m = self.map(kind).lock().ok()?;
        let mut evicted = 0;
        if !m.contains_key(&key) {
            while m.len() >= cap {
                // Expired first, else whatever the hash order yields first.
                let victim = m
                    .iter()
                    .find(|(_, e)| now.saturating_duration_since(e.stored) >= e.ttl)
                    .or_else(|| m.iter().next())
                    .map(|(k, _)| k.clone());
                match victim {
                    Some(k) => {
                        m.remove(&k);
                        evicted += 1;
                    }
                    None => break,
                }
            }
        }
        m.insert(key, entry);
        Some((kind, evicted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::MessageType;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Name;

    fn cfg() -> CacheConfig {
        CacheConfig {
            zones: vec![".".into()],
            success_capacity: 2,
            success_ttl: 30,
            success_min_ttl: 5,
            denial_capacity: 2,
            denial_ttl: 5,
            denial_min_ttl: 5,
            disable_success: vec!["cluster.local.".into()],
            disable_denial: vec![],
        }
    }

    fn key(n: &str) -> CacheKey {
        CacheKey {
            name: n.into(),
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
        }
    }

    fn positive(ttl: u32) -> Message {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        m.add_answer(Record::from_rdata(
            Name::from_ascii("a.example.").unwrap(),
            ttl,
            RData::A(A::new(1, 2, 3, 4)),
        ));
        m
    }

    fn negative() -> Message {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        m.set_response_code(ResponseCode::NXDomain);
        let n = Name::from_ascii("example.").unwrap();
        m.add_name_server(Record::from_rdata(
            n.clone(),
            300,
            RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, 60)),
        ));
        m
    }

    #[test]
    fn ttl_capped_and_decremented() {
        let c = Cache::new(cfg());
        let t0 = Instant::now();
        assert_eq!(
            c.put(key("a.example."), &positive(3600), t0),
            Some((EntryKind::Success, 0))
        );
        let h = c
            .get(&key("a.example."), t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(h.answers[0].ttl(), 20);
        assert!(c
            .get(&key("a.example."), t0 + Duration::from_secs(31))
            .is_none());
        assert_eq!(c.len(EntryKind::Success), 0);
    }

    #[test]
    fn denial_and_disable() {
        let c = Cache::new(cfg());
        let t0 = Instant::now();
        assert_eq!(
            c.put(key("x.example."), &negative(), t0),
            Some((EntryKind::Denial, 0))
        );
        assert!(c
            .get(&key("x.example."), t0 + Duration::from_secs(4))
            .is_some());
        assert!(c
            .get(&key("x.example."), t0 + Duration::from_secs(6))
            .is_none());
        assert_eq!(
            c.put(key("w.default.svc.cluster.local."), &positive(30), t0),
            None
        );
        assert!(c
            .put(key("w.default.svc.cluster.local."), &negative(), t0)
            .is_some());
    }

    #[test]
    fn capacity_evicts() {
        let c = Cache::new(cfg());
        let t0 = Instant::now();
        c.put(key("a."), &positive(30), t0);
        c.put(key("b."), &positive(30), t0);
        assert_eq!(
            c.put(key("c."), &positive(30), t0),
            Some((EntryKind::Success, 1))
        );
        assert_eq!(c.len(EntryKind::Success), 2);
    }
}
