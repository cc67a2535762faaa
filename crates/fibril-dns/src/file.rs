//! The `file` plugin: serves a zone from an RFC 1035 zone file (the lab's
//! upstream resolver serves its test zone with it). Authoritative answers:
//! the records of the name and type (following in-zone CNAMEs, wildcards
//! `*.parent`), NODATA (NOERROR + SOA) for names that exist with other
//! types (or are empty non-terminals), NXDOMAIN + SOA otherwise; the apex NS
//! records go in the authority section of positive answers, as CoreDNS's
//! `file` does. Delegations below the apex, DNSSEC and zone transfers are
//! not implemented.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use thiserror::Error;

/// Most CNAME hops followed inside the zone.
const MAX_CNAME_CHAIN: usize = 8;

#[derive(Debug, Error)]
pub enum ZoneError {
    #[error("read zone file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("zone file {path} (origin {origin}): {message}")]
    Parse {
        path: PathBuf,
        origin: String,
        message: String,
    },
    #[error("zone file {path}: no SOA record at the origin {origin}")]
    NoSoa { path: PathBuf, origin: String },
}

/// A loaded zone.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lowercase, fully qualified (`example.test.`).
    pub origin: String,
    soa: Record,
    /// (lowercase name, type) -> records.
    records: BTreeMap<(String, RecordType), Vec<Record>>,
    /// Every name with records, and every name between them and the origin
    /// (empty non-terminals exist too: NODATA, not NXDOMAIN).
    names: BTreeSet<String>,
}

/// What the zone says about a query.
#[derive(Debug, Clone)]
pub struct FileAnswer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
}

fn lower(n: &Name) -> String {
    let mut s = n.to_ascii().to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

/// The parent of a fully qualified name (`a.b.` -> `b.`, `b.` -> `.`).
fn parent(name: &str) -> Option<&str> {
    if name == "." {
        return None;
    }
    match name.split_once('.') {
        Some((_, "")) => Some("."),
        Some((_, rest)) => Some(rest),
        None => None,
    }
}

impl Zone {
    /// Parses zone file text for `origin` (`$ORIGIN` in the text wins).
    /// `path` names the file in errors and anchors relative `$INCLUDE`s.
    pub fn parse(text: &str, origin: &str, path: &Path) -> Result<Self, ZoneError> {
        let perr = |message: String| ZoneError::Parse {
            path: path.to_path_buf(),
            origin: origin.to_string(),
            message,
        };
        let origin_name = Name::from_ascii(origin).map_err(|e| perr(e.to_string()))?;
        let (parsed_origin, sets) = Parser::new(text, Some(path.to_path_buf()), Some(origin_name))
            .parse()
            .map_err(|e| perr(e.to_string()))?;
        let origin = lower(&parsed_origin);
        let mut records: BTreeMap<(String, RecordType), Vec<Record>> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for (key, set) in sets {
            let name = lower(&Name::from(key.name.clone()));
            if !crate::corefile::in_zone(&name, &origin) {
                // Out-of-zone data (glue for other zones) is ignored.
                continue;
            }
            let mut n = name.as_str();
            while names.insert(n.to_string()) && n != origin {
                match parent(n) {
                    Some(p) => n = p,
                    None => break,
                }
            }
            records
                .entry((name.clone(), key.record_type))
                .or_default()
                .extend(set.records_without_rrsigs().cloned());
        }
        let soa = records
            .get(&(origin.clone(), RecordType::SOA))
            .and_then(|v| v.first())
            .cloned()
            .ok_or_else(|| ZoneError::NoSoa {
                path: path.to_path_buf(),
                origin: origin.clone(),
            })?;
        Ok(Self {
            origin,
            soa,
            records,
            names,
        })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path, origin: &str) -> Result<Self, ZoneError> {
        let text = std::fs::read_to_string(path).map_err(|source| ZoneError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, origin, path)
    }

    /// The SOA for negative answers: TTL = min(SOA TTL, SOA MINIMUM)
    /// (RFC 2308).
    fn negative_soa(&self) -> Record {
        let mut soa = self.soa.clone();
        if let RData::SOA(s) = self.soa.data() {
            let ttl = soa.ttl().min(s.minimum());
            soa.set_ttl(ttl);
        }
        soa
    }

    fn lookup(&self, name: &str, qtype: RecordType) -> Vec<Record> {
        if qtype == RecordType::ANY {
            return self
                .records
                .range((name.to_string(), RecordType::Unknown(0))..)
                .take_while(|((n, _), _)| n == name)
                .flat_map(|(_, v)| v.iter().cloned())
                .collect();
        }
        self.records
            .get(&(name.to_string(), qtype))
            .cloned()
            .unwrap_or_default()
    }

    /// The wildcard covering a name that does not exist: `*.` under its
    /// closest encloser (the nearest existing ancestor, RFC 4592).
    fn wildcard(&self, name: &str) -> Option<String> {
        let mut p = parent(name)?;
        while !self.names.contains(p) {
            if !crate::corefile::in_zone(p, &self.origin) {
                return None;
            }
            p = parent(p)?;
        }
        let w = if p == "." {
            "*.".to_string()
        } else {
            format!("*.{p}")
        };
        self.names.contains(&w).then_some(w)
    }

    /// Answers `qname` (lowercase, fully qualified, inside the zone).
    pub fn answer(&self, qname: &str, qtype: RecordType) -> FileAnswer {
        let mut answers = Vec::new();
        let mut name = qname.to_string();
        for _ in 0..MAX_CNAME_CHAIN {
            let (owner, synth) = if self.names.contains(&name) {
                (name.clone(), false)
            } else if let Some(w) = self.wildcard(&name) {
                (w, true)
            } else {
                break;
            };
            let fix = |mut r: Record| {
                if synth {
                    if let Ok(n) = Name::from_ascii(&name) {
                        r.set_name(n);
                    }
                }
                r
            };
            let found = self.lookup(&owner, qtype);
            if !found.is_empty() {
                answers.extend(found.into_iter().map(fix));
                return self.positive(answers);
            }
            if qtype != RecordType::CNAME {
                if let Some(c) = self.lookup(&owner, RecordType::CNAME).into_iter().next() {
                    let target = match c.data() {
                        RData::CNAME(t) => lower(&t.0),
                        _ => break,
                    };
                    answers.push(fix(c));
                    if crate::corefile::in_zone(&target, &self.origin) {
                        name = target;
                        continue;
                    }
                    // Out of zone: the client's resolver follows it.
                    return self.positive(answers);
                }
            }
            // The name exists without this type: NODATA.
            return FileAnswer {
                rcode: ResponseCode::NoError,
                answers,
                authority: vec![self.negative_soa()],
            };
        }
        // Missing name (or a CNAME chain into one): NXDOMAIN, with the
        // chain so far.
        FileAnswer {
            rcode: ResponseCode::NXDomain,
            answers,
            authority: vec![self.negative_soa()],
        }
    }

    fn positive(&self, answers: Vec<Record>) -> FileAnswer {
        let authority = self
            .records
            .get(&(self.origin.clone(), RecordType::NS))
            .cloned()
            .unwrap_or_default();
        FileAnswer {
            rcode: ResponseCode::NoError,
            answers,
            authority,
        }
    }
}

/// A zone served by a running server block, reloaded from its file when
/// the file's modification time changes.
pub struct ZoneFile {
    pub path: PathBuf,
    pub origin: String,
    zone: RwLock<Arc<Zone>>,
    mtime: RwLock<Option<SystemTime>>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ZoneFile {
    pub fn open(path: &Path, origin: &str) -> Result<Self, ZoneError> {
        let m = mtime(path);
        let zone = Zone::load(path, origin)?;
        Ok(Self {
            path: path.to_path_buf(),
            origin: origin.to_string(),
            zone: RwLock::new(Arc::new(zone)),
            mtime: RwLock::new(m),
        })
    }

    pub fn zone(&self) -> Option<Arc<Zone>> {
        self.zone.read().ok().map(|z| z.clone())
    }

    /// Re-reads the file if it changed; a broken file keeps the old zone.
    /// Returns whether the zone was replaced.
    pub fn reload_if_changed(&self) -> Result<bool, ZoneError> {
        let now = mtime(&self.path);
        let prev = self.mtime.read().ok().and_then(|g| *g);
        if now == prev {
            return Ok(false);
        }
        let zone = Zone::load(&self.path, &self.origin)?;
        if let Ok(mut g) = self.zone.write() {
            *g = Arc::new(zone);
        }
        if let Ok(mut g) = self.mtime.write() {
            *g = now;
        }
        Ok(true)
    }
}

/// Keeps `zones` fresh every `interval` until aborted.
pub async fn reload_loop(zones: Vec<Arc<ZoneFile>>, interval: Duration) {
    if interval.is_zero() || zones.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(interval).await;
        for z in &zones {
            match z.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(zone = %z.origin, path = %z.path.display(), "dns: file: zone reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "dns: file: reload failed; serving the previous zone")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ZONE: &str = "$ORIGIN example.test.
$TTL 300
@       IN SOA ns1.example.test. hostmaster.example.test. ( 1 7200 1800 86400 30 )
@       IN NS  ns1
ns1     IN A   10.10.1.200
www     IN A   10.10.1.200
www     IN AAAA fd00:10:10:1::200
alias   IN CNAME www
ext     IN CNAME www.example.org.
*.wild  IN A   10.10.1.201
a.b.c   IN TXT \"deep\"
";

    fn zone() -> Zone {
        Zone::parse(ZONE, "example.test.", Path::new("example.test.zone")).unwrap()
    }

    fn ips(a: &FileAnswer) -> Vec<String> {
        a.answers.iter().map(|r| r.data().to_string()).collect()
    }

    #[test]
    fn a_and_aaaa_with_ns_authority() {
        let z = zone();
        let a = z.answer("www.example.test.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(ips(&a), vec!["10.10.1.200"]);
        assert_eq!(a.answers[0].ttl(), 300);
        assert_eq!(a.authority.len(), 1);
        assert_eq!(a.authority[0].record_type(), RecordType::NS);
        let aaaa = z.answer("www.example.test.", RecordType::AAAA);
        assert_eq!(ips(&aaaa), vec!["fd00:10:10:1::200"]);
    }

    #[test]
    fn nxdomain_and_nodata_carry_the_soa_with_the_negative_ttl() {
        let z = zone();
        let nx = z.answer("nope.example.test.", RecordType::A);
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty());
        assert_eq!(nx.authority[0].record_type(), RecordType::SOA);
        assert_eq!(nx.authority[0].ttl(), 30);
        let nodata = z.answer("www.example.test.", RecordType::MX);
        assert_eq!(nodata.rcode, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authority[0].record_type(), RecordType::SOA);
        // Empty non-terminals exist.
        let ent = z.answer("b.c.example.test.", RecordType::A);
        assert_eq!(ent.rcode, ResponseCode::NoError);
        assert!(ent.answers.is_empty());
    }

    #[test]
    fn cnames_are_followed_inside_the_zone() {
        let z = zone();
        let a = z.answer("alias.example.test.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 2);
        assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(a.answers[1].data().to_string(), "10.10.1.200");
        let ext = z.answer("ext.example.test.", RecordType::A);
        assert_eq!(ext.answers.len(), 1);
        assert_eq!(ext.answers[0].record_type(), RecordType::CNAME);
        let c = z.answer("alias.example.test.", RecordType::CNAME);
        assert_eq!(c.answers.len(), 1);
    }

    #[test]
    fn wildcards_synthesize_the_query_name() {
        let z = zone();
        let a = z.answer("x.wild.example.test.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(a.answers[0].name().to_ascii(), "x.wild.example.test.");
        assert_eq!(ips(&a), vec!["10.10.1.201"]);
        // The wildcard does not cover names under an existing sibling.
        let nx = z.answer("x.www.example.test.", RecordType::A);
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn any_returns_every_type_of_the_name() {
        let z = zone();
        let a = z.answer("www.example.test.", RecordType::ANY);
        assert_eq!(a.answers.len(), 2);
    }

    #[test]
    fn errors_name_the_file() {
        let e = Zone::parse(
            "$TTL 60\nwww IN A 1.2.3.4\n",
            "example.test.",
            Path::new("z.zone"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("z.zone") && e.contains("SOA"), "{e}");
        let e = Zone::parse(
            "@ IN SOA a. b. 1 2 3 4 5\nwww IN A 999.1.1.1\n",
            "example.test.",
            Path::new("z.zone"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("z.zone"), "{e}");
    }

    #[test]
    fn reload_picks_up_a_changed_file() {
        let dir = std::env::temp_dir().join(format!("fibril-dns-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("z.zone");
        std::fs::write(&p, ZONE).unwrap();
        let zf = ZoneFile::open(&p, "example.test.").unwrap();
        assert!(!zf.reload_if_changed().unwrap());
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, format!("{ZONE}new IN A 10.10.1.9\n")).unwrap();
        // Force a visible mtime change on coarse filesystems.
        let later = SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(zf.reload_if_changed().unwrap());
        let a = zf
            .zone()
            .unwrap()
            .answer("new.example.test.", RecordType::A);
        assert_eq!(ips(&a), vec!["10.10.1.9"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
