//! Flow observability (Hubble's role on one node): owns the task that reads
//! the datapath's `fibril_events` ring buffer, the enrichment of events into
//! [`FlowRecord`]s (namespace/pod names, identities, node names, service
//! names of translated flows, TCP flags, verdicts, drop reasons), the
//! bounded per-node history ring and the live fan-out to followers
//! (`GET /v1/flows`), the lost-event accounting, and the Hubble-style line
//! format shared with `fibril observe`.
//!
//! Lost events are never silent: ring-buffer overruns and rate-limited
//! events reported by the datapath, and flows a slow follower missed, each
//! become a [`FlowLine`] with `lost_events` (printed `EVENTS LOST: N`) and
//! count in `fibril_flows_lost_total`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fibril_abi::{CtState, EventType, ObsPoint, Verdict};
use fibril_api::{FibrilEndpoint, FibrilNode};
use fibril_datapath::events::Flow;
use fibril_store::StoreExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use crate::{AgentOptions, Shared};

/// Flows kept per node for `--last N`.
pub const RING_CAPACITY: usize = 8192;
/// Lines a follower may fall behind before it loses some.
pub const FOLLOW_BUFFER: usize = 4096;

/// One side of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Address.
    pub ip: Option<Ipv4Addr>,
    /// TCP/UDP port (0: none).
    #[serde(default)]
    pub port: u16,
    /// Security identity (0: unknown).
    #[serde(default)]
    pub identity: u32,
    /// Pod namespace (pods only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Pod name (pods only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// Node name when the address is a node's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// `ns/name` of the Service when the address is a service frontend.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

/// A flow as served by the agent (Hubble's `flow` object, flattened).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// `trace` or `drop`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Observation point (`to-endpoint`, `pre-xlate-fwd`, ...).
    pub obs_point: String,
    /// `FORWARDED`, `DROPPED`, `TRACED`, `TRANSLATED`.
    pub verdict: String,
    /// Drop reason name (`POLICY_DENIED`) of drops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// Drop reason as printed (`Policy denied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<String>,
    /// `TCP`, `UDP`, `ICMPv4`, or `proto N`.
    pub protocol: String,
    /// Source.
    pub source: Peer,
    /// Destination.
    pub destination: Peer,
    /// TCP flags (`SYN`, `ACK`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_flags: Vec<String>,
    /// ICMP type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// Reply direction of a connection.
    #[serde(default)]
    pub is_reply: bool,
    /// `ns/name` of the Service a translated flow went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Interface the event was seen on.
    #[serde(default)]
    pub ifindex: u32,
}

/// Lost events (Hubble's `lost_events`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    /// `DATAPATH_RING_BUFFER` (overrun / rate limit in the kernel) or
    /// `FOLLOWER_BUFFER` (this follower was too slow).
    pub source: String,
    /// How many.
    pub num_events_lost: u64,
}

/// One line of the `/v1/flows` stream: a flow or a lost-events notice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLine {
    /// The flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowRecord>,
    /// Lost events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_events: Option<LostEvents>,
    /// Node that saw it.
    pub node_name: String,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
}

impl FlowLine {
    /// A lost-events line.
    pub fn lost(node: &str, source: &str, n: u64, time_ns: u64) -> Self {
        FlowLine {
            flow: None,
            lost_events: Some(LostEvents {
                source: source.into(),
                num_events_lost: n,
            }),
            node_name: node.into(),
            time_ns,
        }
    }
}

/// Filters of `/v1/flows` (query parameters) and `fibril observe`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// `[ns/]name` prefix of a pod on either side (namespace default:
    /// `namespace`, else `default`).
    pub pod: Option<String>,
    /// Namespace of either side.
    pub namespace: Option<String>,
    /// `tcp`, `udp`, `icmp`.
    pub protocol: Option<String>,
    /// Port of either side.
    pub port: Option<u16>,
    /// Verdict.
    pub verdict: Option<String>,
    /// `trace` or `drop`.
    pub event_type: Option<String>,
}

/// `GET /v1/flows` query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowQuery {
    /// Send the last N stored flows first (after filtering).
    pub last: usize,
    /// Keep streaming new flows.
    pub follow: bool,
    /// Filters.
    pub filter: FlowFilter,
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pct_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FlowQuery {
    /// Parses the query string (`last=20&follow=1&pod=default/curl`).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut q = FlowQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = pct_decode(v);
            let bad = |what: &str| format!("query parameter {k}={v:?}: {what}");
            match k {
                "last" => q.last = v.parse().map_err(|_| bad("not a number"))?,
                "follow" => q.follow = matches!(v.as_str(), "1" | "true" | ""),
                "pod" => q.filter.pod = Some(v),
                "namespace" => q.filter.namespace = Some(v),
                "protocol" => {
                    let p = v.to_ascii_lowercase();
                    if !matches!(p.as_str(), "tcp" | "udp" | "icmp" | "icmpv4") {
                        return Err(bad("expected tcp, udp or icmp"));
                    }
                    q.filter.protocol = Some(p);
                }
                "port" => q.filter.port = Some(v.parse().map_err(|_| bad("not a port"))?),
                "verdict" => {
                    let u = v.to_ascii_uppercase();
                    if !Verdict::ALL.iter().any(|x| x.as_str() == u) {
                        return Err(bad("expected FORWARDED, DROPPED, TRACED or TRANSLATED"));
                    }
                    q.filter.verdict = Some(u);
                }
                "type" => {
                    let t = v.to_ascii_lowercase();
                    if t != "trace" && t != "drop" {
                        return Err(bad("expected trace or drop"));
                    }
                    q.filter.event_type = Some(t);
                }
                _ => return Err(format!("unknown query parameter {k:?}")),
            }
        }
        Ok(q)
    }

    /// The query string of this query.
    pub fn to_query_string(&self) -> String {
        let mut parts = vec![format!("last={}", self.last)];
        if self.follow {
            parts.push("follow=1".into());
        }
        let f = &self.filter;
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={}", pct_encode(v)));
            }
        };
        add("pod", &f.pod);
        add("namespace", &f.namespace);
        add("protocol", &f.protocol);
        add("verdict", &f.verdict);
        add("type", &f.event_type);
        if let Some(p) = f.port {
            parts.push(format!("port={p}"));
        }
        parts.join("&")
    }
}

impl FlowFilter {
    /// Whether `line` passes (lost-event notices always pass).
    pub fn matches(&self, line: &FlowLine) -> bool {
        let Some(f) = &line.flow else {
            return true;
        };
        if let Some(t) = &self.event_type {
            if !f.event_type.eq_ignore_ascii_case(t) {
                return false;
            }
        }
        if let Some(v) = &self.verdict {
            if !f.verdict.eq_ignore_ascii_case(v) {
                return false;
            }
        }
        if let Some(p) = &self.protocol {
            let want = if p.starts_with("icmp") { "icmpv4" } else { p };
            if !f.protocol.eq_ignore_ascii_case(want) {
                return false;
            }
        }
        if let Some(port) = self.port {
            if f.source.port != port && f.destination.port != port {
                return false;
            }
        }
        let sides = [&f.source, &f.destination];
        if let Some(ns) = &self.namespace {
            if self.pod.is_none() && !sides.iter().any(|p| &p.namespace == ns) {
                return false;
            }
        }
        if let Some(pod) = &self.pod {
            let (ns, name) = match pod.split_once('/') {
                Some((ns, name)) => (ns.to_string(), name),
                None => (
                    self.namespace.clone().unwrap_or_else(|| "default".into()),
                    pod.as_str(),
                ),
            };
            if !sides.iter().any(|p| {
                p.namespace == ns && !p.pod_name.is_empty() && p.pod_name.starts_with(name)
            }) {
                return false;
            }
        }
        true
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// (verdict, type) -> flows.
    pub flows: BTreeMap<(String, String), u64>,
    /// Drop reason -> drops.
    pub drops: BTreeMap<String, u64>,
    /// Events lost (datapath and followers).
    pub lost: u64,
}

impl FlowCounters {
    /// Prometheus text (no `# EOF`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP fibril_flows Flows observed by the agent by verdict and type.\n");
        s.push_str("# TYPE fibril_flows counter\n");
        for ((verdict, ty), n) in &self.flows {
            s.push_str(&format!(
                "fibril_flows_total{{verdict=\"{verdict}\",type=\"{ty}\"}} {n}\n"
            ));
        }
        s.push_str("# HELP fibril_drops Dropped flows by reason.\n");
        s.push_str("# TYPE fibril_drops counter\n");
        for (reason, n) in &self.drops {
            s.push_str(&format!("fibril_drops_total{{reason=\"{reason}\"}} {n}\n"));
        }
        s.push_str("# HELP fibril_flows_lost Flow events lost (ring buffer overruns, rate limit, slow followers).\n");
        s.push_str("# TYPE fibril_flows_lost counter\n");
        s.push_str(&format!("fibril_flows_lost_total {}\n", self.lost));
        s
    }
}

/// The node's flow history and live fan-out.
#[derive(Debug)]
pub struct FlowHub {
    node: String,
    ring: Mutex<VecDeque<FlowLine>>,
    capacity: usize,
    tx: broadcast::Sender<Arc<FlowLine>>,
    counters: Mutex<FlowCounters>,
    /// True once the agent stops: followers end their streams (the API
    /// server's graceful shutdown waits for open connections).
    closed: watch::Sender<bool>,
}

impl FlowHub {
    /// A hub keeping `capacity` lines; followers may lag `follow_buffer` lines.
    pub fn new(node: &str, capacity: usize, follow_buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(follow_buffer.max(1));
        Self {
            node: node.to_string(),
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(RING_CAPACITY))),
            capacity: capacity.max(1),
            tx,
            counters: Mutex::new(FlowCounters::default()),
            closed: watch::Sender::new(false),
        }
    }

    /// Ends every follower's stream (agent shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Stores and broadcasts a line; counts it.
    pub fn publish(&self, line: FlowLine) {
        if let Ok(mut c) = self.counters.lock() {
            if let Some(f) = &line.flow {
                *c.flows
                    .entry((f.verdict.clone(), f.event_type.clone()))
                    .or_default() += 1;
                if let Some(r) = &f.drop_reason {
                    *c.drops.entry(r.clone()).or_default() += 1;
                }
            }
            if let Some(l) = &line.lost_events {
                c.lost += l.num_events_lost;
            }
        }
        let line = Arc::new(line);
        if let Ok(mut r) = self.ring.lock() {
            if r.len() >= self.capacity {
                r.pop_front();
            }
            r.push_back((*line).clone());
        }
        // No follower is fine.
        let _ = self.tx.send(line);
    }

    /// The last `n` stored lines passing `filter`, oldest first.
    pub fn last(&self, n: usize, filter: &FlowFilter) -> Vec<FlowLine> {
        let Ok(r) = self.ring.lock() else {
            return Vec::new();
        };
        let mut out: Vec<FlowLine> = r
            .iter()
            .rev()
            .filter(|l| filter.matches(l))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// A follower (receives lines published from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FlowLine>> {
        self.tx.subscribe()
    }

    /// Next line for a follower: a lag becomes a lost-events line (and is
    /// counted). `None` when the hub is gone.
    pub async fn next_for(&self, rx: &mut broadcast::Receiver<Arc<FlowLine>>) -> Option<FlowLine> {
        let mut closed = self.closed.subscribe();
        let got = tokio::select! {
            r = rx.recv() => r,
            _ = closed.wait_for(|c| *c) => return None,
        };
        match got {
            Ok(l) => Some((*l).clone()),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                if let Ok(mut c) = self.counters.lock() {
                    c.lost += n;
                }
                Some(FlowLine::lost(&self.node, "FOLLOWER_BUFFER", n, now_ns()))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Snapshot of the counters.
    pub fn counters(&self) -> FlowCounters {
        self.counters.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Wall-clock nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the agent knows about addresses (refreshed every second).
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Pod IP -> (namespace, pod, identity).
    pub pods: HashMap<Ipv4Addr, (String, String, u32)>,
    /// Node and router IPs -> node name.
    pub nodes: HashMap<Ipv4Addr, String>,
    /// This node's name.
    pub local_node: String,
    /// Service frontends (addr, port, proto) -> `ns/name`.
    pub services: HashMap<(Ipv4Addr, u16, u8), String>,
}

/// Turns datapath flows into records (keeps the service of translated
/// connections between the pre- and post-translation events).
#[derive(Debug, Default)]
pub struct Enricher {
    /// Current names.
    pub names: Names,
    /// (client ip, client port, proto) -> service (from pre-xlate-fwd) and
    /// backend (from post-xlate-fwd).
    xlate: HashMap<(Ipv4Addr, u16, u8), Xlate>,
}

const XLATE_CACHE: usize = 16384;

/// A translated connection as seen at pre/post-xlate-fwd.
#[derive(Debug, Clone)]
struct Xlate {
    service: String,
    backend: Option<(Ipv4Addr, u16)>,
    /// Translation points already reported for this connection
    /// (pre-fwd, post-fwd, pre-rev, post-rev).
    reported: [bool; 4],
}

impl Enricher {
    /// An enricher with `names`.
    pub fn new(names: Names) -> Self {
        Self {
            names,
            xlate: HashMap::new(),
        }
    }

    fn peer(&self, ip: Ipv4Addr, port: u16, identity: u32, proto: u8) -> Peer {
        let mut p = Peer {
            ip: Some(ip),
            port,
            identity,
            ..Default::default()
        };
        if let Some((ns, pod, id)) = self.names.pods.get(&ip) {
            p.namespace = ns.clone();
            p.pod_name = pod.clone();
            if p.identity == 0 {
                p.identity = *id;
            }
        } else if let Some(n) = self.names.nodes.get(&ip) {
            p.node_name = n.clone();
            if p.identity == 0 {
                p.identity = if *n == self.names.local_node {
                    fibril_abi::identity::HOST
                } else {
                    fibril_abi::identity::REMOTE_NODE
                };
            }
        } else if let Some(s) = self.names.services.get(&(ip, port, proto)) {
            p.service = s.clone();
        }
        if p.identity == 0 && p.pod_name.is_empty() {
            p.identity = fibril_abi::identity::WORLD;
        }
        p
    }

    /// Enriches one datapath flow; `time_ns` is its wall-clock time.
    pub fn enrich(&mut self, f: &Flow, time_ns: u64) -> FlowLine {
        let proto = f.proto;
        let mut rec = FlowRecord {
            event_type: f.event_type.as_str().to_string(),
            obs_point: f.obs_point.as_str().to_string(),
            verdict: match f.obs_point {
                // Hubble: the packet before translation is TRACED.
                ObsPoint::PreXlateFwd | ObsPoint::PreXlateRev => Verdict::Traced,
                ObsPoint::PostXlateFwd | ObsPoint::PostXlateRev => Verdict::Translated,
                _ => f.verdict,
            }
            .as_str()
            .to_string(),
            drop_reason: f.drop_reason.map(|r| r.as_str().to_string()).or_else(|| {
                (f.event_type == EventType::Drop).then(|| format!("REASON_{}", f.drop_reason_code))
            }),
            drop_reason_desc: if f.event_type == EventType::Drop {
                Some(
                    f.drop_reason
                        .map(|r| r.description().to_string())
                        .unwrap_or_else(|| format!("reason {}", f.drop_reason_code)),
                )
            } else {
                None
            },
            protocol: f.proto_name(),
            source: self.peer(f.src_ip, f.src_port, f.src_identity, proto),
            destination: self.peer(f.dst_ip, f.dst_port, f.dst_identity, proto),
            tcp_flags: if proto == 6 {
                flag_names(f.tcp_flags.0)
            } else {
                Vec::new()
            },
            icmp_type: f.icmp_type,
            is_reply: f.ct_state == CtState::Reply
                || (f.ct_state == CtState::Unknown && proto == 6 && f.tcp_flags.has(0x12)),
            service: None,
            ifindex: f.ifindex,
        };
        if proto == 1 {
            rec.source.port = 0;
            rec.destination.port = 0;
        }
        let svc_of = |x: Option<&Xlate>| x.map(|x| x.service.clone());
        match f.obs_point {
            ObsPoint::PreXlateFwd => {
                let svc = self
                    .names
                    .services
                    .get(&(f.dst_ip, f.dst_port, proto))
                    .cloned();
                if let Some(s) = &svc {
                    if self.xlate.len() >= XLATE_CACHE {
                        self.xlate.clear();
                    }
                    let key = (f.src_ip, f.src_port, proto);
                    let keep =
                        !new_connection(f) && self.xlate.get(&key).is_some_and(|x| x.service == *s);
                    if !keep {
                        self.xlate.insert(
                            key,
                            Xlate {
                                service: s.clone(),
                                backend: None,
                                reported: [false; 4],
                            },
                        );
                    }
                }
                rec.service = svc;
            }
            ObsPoint::PostXlateFwd => {
                if let Some(x) = self.xlate.get_mut(&(f.src_ip, f.src_port, proto)) {
                    x.backend = Some((f.dst_ip, f.dst_port));
                    rec.service = Some(x.service.clone());
                }
            }
            ObsPoint::PreXlateRev => {
                rec.service = svc_of(self.xlate.get(&(f.dst_ip, f.dst_port, proto)));
            }
            ObsPoint::PostXlateRev => {
                rec.service = self
                    .names
                    .services
                    .get(&(f.src_ip, f.src_port, proto))
                    .cloned()
                    .or_else(|| svc_of(self.xlate.get(&(f.dst_ip, f.dst_port, proto))));
                if !rec.source.service.is_empty() {
                    // The frontend is no endpoint (Hubble: world).
                    rec.source.identity = fibril_abi::identity::WORLD;
                }
            }
            _ => {
                // A reply already translated back (source = the frontend):
                // show the backend that answered, like Hubble does.
                if !rec.source.service.is_empty() {
                    if let Some(x) = self.xlate.get(&(f.dst_ip, f.dst_port, proto)) {
                        if let Some((ip, port)) = x.backend {
                            rec.source = self.peer(ip, port, f.src_identity, proto);
                        }
                        rec.service = Some(x.service.clone());
                    }
                }
            }
        }
        FlowLine {
            flow: Some(rec),
            lost_events: None,
            node_name: self.names.local_node.clone(),
            time_ns,
        }
    }
}

/// A TCP SYN without ACK: a new connection (maybe on a reused port).
fn new_connection(f: &Flow) -> bool {
    f.proto == 6 && f.tcp_flags.has(0x02) && !f.tcp_flags.has(0x10)
}

impl Enricher {
    /// [`Enricher::enrich`] with translation aggregation (what Hubble shows
    /// with socket load balancing and Cilium's monitor aggregation): the
    /// pre/post-xlate events of a connection are reported once per
    /// direction, later packets' translation events give `None`.
    pub fn enrich_aggregated(&mut self, f: &Flow, time_ns: u64) -> Option<FlowLine> {
        let (slot, key) = match f.obs_point {
            ObsPoint::PreXlateFwd => (0, (f.src_ip, f.src_port, f.proto)),
            ObsPoint::PostXlateFwd => (1, (f.src_ip, f.src_port, f.proto)),
            ObsPoint::PreXlateRev => (2, (f.dst_ip, f.dst_port, f.proto)),
            ObsPoint::PostXlateRev => (3, (f.dst_ip, f.dst_port, f.proto)),
            _ => return Some(self.enrich(f, time_ns)),
        };
        let repeat = !(slot == 0 && new_connection(f))
            && self.xlate.get(&key).is_some_and(|x| x.reported[slot]);
        if repeat {
            return None;
        }
        let line = self.enrich(f, time_ns);
        if let Some(x) = self.xlate.get_mut(&key) {
            x.reported[slot] = true;
        }
        Some(line)
    }
}

fn flag_names(bits: u8) -> Vec<String> {
    [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

/// `Jul 30 06:30:32.254` (UTC) of a wall-clock time.
pub fn format_time(time_ns: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time_ns / 1_000_000_000;
    let millis = (time_ns / 1_000_000) % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let tod = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let month = MONTHS[usize::try_from(m - 1).unwrap_or(0).min(11)];
    format!(
        "{month} {d:>2} {:02}:{:02}:{:02}.{millis:03}",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

fn reserved_name(id: u32) -> Option<&'static str> {
    use fibril_abi::identity as i;
    Some(match id {
        i::HOST => "host",
        i::WORLD => "world",
        i::UNMANAGED => "unmanaged",
        i::HEALTH => "health",
        i::INIT => "init",
        i::REMOTE_NODE => "remote-node",
        _ => return None,
    })
}

fn endpoint(p: &Peer, show_port: bool) -> String {
    let host = if !p.pod_name.is_empty() {
        format!("{}/{}", p.namespace, p.pod_name)
    } else if !p.service.is_empty() {
        p.service.clone()
    } else {
        p.ip.map(|i| i.to_string()).unwrap_or_default()
    };
    let host = if show_port && p.port != 0 {
        format!("{host}:{}", p.port)
    } else {
        host
    };
    let id = match reserved_name(p.identity) {
        Some(n) => n.to_string(),
        None if p.identity == 0 => "world".to_string(),
        None => format!("ID:{}", p.identity),
    };
    format!("{host} ({id})")
}

/// The Hubble-style line (`Jul 30 06:30:32.254: src -> dst to-endpoint
/// FORWARDED (TCP Flags: SYN)`), or `EVENTS LOST: N`.
pub fn format_line(line: &FlowLine) -> String {
    let t = format_time(line.time_ns);
    if let Some(l) = &line.lost_events {
        return format!(
            "{t}: EVENTS LOST: {} ({}, node {})",
            l.num_events_lost, l.source, line.node_name
        );
    }
    let Some(f) = &line.flow else {
        return format!("{t}: (empty)");
    };
    let unspecified = |p: &Peer| p.ip.is_none_or(|i| i.is_unspecified());
    if unspecified(&f.source) && unspecified(&f.destination) && f.protocol == "proto 0" {
        // No IPv4 header (the datapath drops other L3 protocols).
        let mut s = format!(
            "{t}: non-IPv4 packet (ifindex {}) {} {}",
            f.ifindex, f.obs_point, f.verdict
        );
        if let Some(d) = &f.drop_reason_desc {
            s.push_str(&format!(" ({d})"));
        }
        return s;
    }
    let (src, arrow, dst) = match f.obs_point.as_str() {
        // Socket-level translation points: the client side without a port.
        "pre-xlate-fwd" | "post-xlate-fwd" => (
            endpoint(&f.source, false),
            "<>",
            endpoint(&f.destination, true),
        ),
        "pre-xlate-rev" | "post-xlate-rev" => (
            endpoint(&f.source, true),
            "<>",
            endpoint(&f.destination, false),
        ),
        _ if f.is_reply => (
            endpoint(&f.destination, true),
            "<-",
            endpoint(&f.source, true),
        ),
        _ => (
            endpoint(&f.source, true),
            "->",
            endpoint(&f.destination, true),
        ),
    };
    let mut s = format!("{t}: {src} {arrow} {dst} {} {}", f.obs_point, f.verdict);
    if let Some(d) = &f.drop_reason_desc {
        s.push_str(&format!(" ({d})"));
    }
    let xlate = f.obs_point.contains("xlate");
    let summary = match f.protocol.as_str() {
        "TCP" if xlate => "TCP".to_string(),
        "TCP" => format!("TCP Flags: {}", f.tcp_flags.join(", ")),
        "ICMPv4" => match f.icmp_type {
            Some(0) => "ICMPv4 EchoReply".into(),
            Some(8) => "ICMPv4 EchoRequest".into(),
            Some(3) => "ICMPv4 DestinationUnreachable".into(),
            Some(11) => "ICMPv4 TimeExceeded".into(),
            Some(t) => format!("ICMPv4 type {t}"),
            None => "ICMPv4".into(),
        },
        other => other.to_string(),
    };
    s.push_str(&format!(" ({summary})"));
    s
}

/// Current names from the node state and the store.
pub async fn load_names(opts: &AgentOptions, shared: &Shared) -> Names {
    let st = shared.clone();
    let local = tokio::task::spawn_blocking(move || {
        let Ok(st) = st.lock() else {
            return None;
        };
        let eps: Vec<(Ipv4Addr, String, String, u32)> = st
            .endpoints
            .values()
            .map(|e| {
                let ns = if e.spec.pod_namespace.is_empty() {
                    "default".to_string()
                } else {
                    e.spec.pod_namespace.clone()
                };
                (e.ip, ns, e.spec.pod_name.clone(), e.identity)
            })
            .collect();
        let svcs: Vec<((Ipv4Addr, u16, u8), String)> = st
            .services
            .as_ref()
            .map(|s| {
                s.applied()
                    .iter()
                    .map(|(fe, w)| ((fe.addr, fe.port, fe.proto.number()), w.owner.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Some((eps, svcs, st.node_ip, st.router_ip))
    })
    .await
    .ok()
    .flatten();
    let mut names = Names {
        local_node: opts.node_name.clone(),
        ..Default::default()
    };
    let store = &opts.store;
    match store.list_as::<FibrilEndpoint>(None).await {
        Ok(list) => {
            for ep in list.items {
                let Some(s) = ep.status.as_ref() else {
                    continue;
                };
                let id = s
                    .identity
                    .as_ref()
                    .and_then(|i| u32::try_from(i.id).ok())
                    .unwrap_or(0);
                let ns = ep.metadata.namespace.clone().unwrap_or_default();
                let name = ep.metadata.name.clone().unwrap_or_default();
                for a in s.networking.iter().flat_map(|n| n.addressing.iter()) {
                    if let Some(ip) = a.ipv4 {
                        names.pods.insert(ip, (ns.clone(), name.clone(), id));
                    }
                }
            }
        }
        Err(e) => debug!(error = %e, "flows: listing FibrilEndpoints"),
    }
    match store.list_as::<FibrilNode>(None).await {
        Ok(list) => {
            for n in list.items {
                let name = n.metadata.name.clone().unwrap_or_default();
                for a in n.spec.iter().flat_map(|s| s.addresses.iter()) {
                    if let std::net::IpAddr::V4(ip) = a.ip {
                        names.nodes.insert(ip, name.clone());
                    }
                }
            }
        }
        Err(e) => debug!(error = %e, "flows: listing FibrilNodes"),
    }
    if let Some((eps, svcs, node_ip, router_ip)) = local {
        for (ip, ns, pod, id) in eps {
            if !pod.is_empty() {
                names.pods.insert(ip, (ns, pod, id));
            }
        }
        names.services.extend(svcs);
        names.nodes.insert(node_ip, opts.node_name.clone());
        names.nodes.insert(router_ip, opts.node_name.clone());
    }
    names
}

/// Reads the node's ring buffer until `stop`: enriches, stores, fans out,
/// and turns the datapath's lost counter into lost-events lines.
pub async fn run(
    opts: AgentOptions,
    shared: Shared,
    hub: Arc<FlowHub>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = loop {
        match fibril_datapath::events::EventReader::open(&opts.pin_dir).and_then(|r| r.into_async())
        {
            Ok(r) => break r,
            Err(e) => {
                warn!(pin_dir = %opts.pin_dir.display(), error = %e, "flows: opening the event ring buffer; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.wait_for(|s| *s) => {
                        hub.close();
                        return;
                    }
                }
            }
        }
    };
    let mut enricher = Enricher::new(load_names(&opts, &shared).await);
    let mut names_at = std::time::Instant::now();
    let mut lost_seen = reader.lost_events().unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    enum Step {
        Batch(Result<Vec<Flow>, fibril_datapath::DatapathError>),
        Tick,
        Stop(bool),
    }
    loop {
        let step = tokio::select! {
            b = reader.next_batch() => Step::Batch(b),
            _ = tick.tick() => Step::Tick,
            r = stop.changed() => Step::Stop(r.is_err()),
        };
        match step {
            Step::Batch(Ok(flows)) => {
                // A pod that appeared since the last refresh would print as a
                // bare IP: refresh the names first (at most every 100 ms).
                // (Pods carry cluster identities, 256 and up.)
                let unknown = flows.iter().any(|f| {
                    let pods = &enricher.names.pods;
                    [(f.src_ip, f.src_identity), (f.dst_ip, f.dst_identity)]
                        .iter()
                        .any(|(ip, id)| *id >= 256 && !pods.contains_key(ip))
                });
                if unknown && names_at.elapsed() >= Duration::from_millis(100) {
                    enricher.names = load_names(&opts, &shared).await;
                    names_at = std::time::Instant::now();
                }
                for f in &flows {
                    let t = system_ns(f);
                    if let Some(line) = enricher.enrich_aggregated(f, t) {
                        hub.publish(line);
                    }
                }
            }
            Step::Batch(Err(e)) => {
                warn!(error = %e, "flows: reading the ring buffer");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Step::Tick => {
                enricher.names = load_names(&opts, &shared).await;
                names_at = std::time::Instant::now();
                if let Ok(n) = reader.lost_events() {
                    if n > lost_seen {
                        hub.publish(FlowLine::lost(
                            &opts.node_name,
                            "DATAPATH_RING_BUFFER",
                            n - lost_seen,
                            now_ns(),
                        ));
                    }
                    lost_seen = n;
                }
            }
            Step::Stop(gone) => {
                if gone || *stop.borrow() {
                    hub.close();
                    return;
                }
            }
        }
    }
}

fn system_ns(f: &Flow) -> u64 {
    f.system_time()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// State of the API server that has the node's flow hub.
pub(crate) trait HasFlows: Clone + Send + Sync + 'static {
    fn flow_hub(&self) -> Arc<FlowHub>;
}

/// `GET /v1/flows?last=N&follow=1&pod=..&namespace=..&protocol=..&port=..&verdict=..&type=..`:
/// JSON lines ([`FlowLine`]), the stored ones first, then (follow) new ones.
pub(crate) async fn serve_flows<S: HasFlows>(
    axum::extract::State(ctx): axum::extract::State<S>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let q = match FlowQuery::parse(uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(message) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(crate::api::ApiError {
                    kind: "bad-request".into(),
                    message,
                }),
            )
                .into_response()
        }
    };
    let hub = ctx.flow_hub();
    // Subscribe before reading the history: nothing falls between the two.
    let mut rx = q.follow.then(|| hub.subscribe());
    let history = hub.last(q.last, &q.filter);
    let (tx, out) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(256);
    tokio::spawn(async move {
        for l in history {
            if tx.send(Ok(json_line(&l))).await.is_err() {
                return;
            }
        }
        let Some(rx) = rx.as_mut() else { return };
        loop {
            tokio::select! {
                next = hub.next_for(rx) => match next {
                    Some(l) if q.filter.matches(&l) => {
                        if tx.send(Ok(json_line(&l))).await.is_err() {
                            return;
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
                // The client went away.
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(out, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

fn json_line(l: &FlowLine) -> String {
    let mut s = serde_json::to_string(l).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fibril_abi::{ip_be, port_be, DropReason, FlowEvent};

    const CURL: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 5);
    const WEB: Ipv4Addr = Ipv4Addr::new(172, 20, 1, 7);
    const CIP: Ipv4Addr = Ipv4Addr::new(10, 96, 152, 212);

    fn names() -> Names {
        let mut n = Names {
            local_node: "k8s-ctr".into(),
            ..Default::default()
        };
        n.pods
            .insert(CURL, ("default".into(), "curl-pod".into(), 5580));
        n.pods.insert(
            WEB,
            ("default".into(), "webpod-697b545f57-bpzn9".into(), 12497),
        );
        n.nodes
            .insert(Ipv4Addr::new(10, 0, 2, 15), "k8s-ctr".into());
        n
    }

    #[allow(clippy::too_many_arguments)]
    fn ev(
        obs: ObsPoint,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        proto: u8,
        flags: u8,
        ct: CtState,
    ) -> Flow {
        let ty = if obs == ObsPoint::Unknown {
            EventType::Drop
        } else {
            EventType::Trace
        };
        Flow::from_event(&FlowEvent {
            event_type: ty as u8,
            obs_point: obs as u8,
            verdict: Verdict::Forwarded as u8,
            saddr: ip_be(src.0),
            daddr: ip_be(dst.0),
            sport: port_be(src.1),
            dport: port_be(dst.1),
            proto,
            tcp_flags: flags,
            ct_state: ct as u8,
            ..Default::default()
        })
        .unwrap()
    }

    const T1: u64 = 1_753_857_032_254_000_000;

    #[test]
    fn time_format() {
        assert_eq!(format_time(T1), "Jul 30 06:30:32.254");
        assert_eq!(
            format_time(1_754_112_885_973_000_000),
            "Aug  2 05:34:45.973"
        );
    }

    #[test]
    fn seed_lines_tcp_through_a_service() {
        let mut e = Enricher::new(names());
        let line = |e: &mut Enricher, f: Flow| format_line(&e.enrich(&f, T1));
        assert_eq!(
            line(&mut e, ev(ObsPoint::PreXlateFwd, (CURL, 58930), (CIP, 80), 6, 0x02, CtState::New)),
            "Jul 30 06:30:32.254: default/curl-pod (ID:5580) <> 10.96.152.212:80 (world) pre-xlate-fwd TRACED (TCP)"
        );
        assert_eq!(
            line(&mut e, ev(ObsPoint::PostXlateFwd, (CURL, 58930), (WEB, 80), 6, 0x02, CtState::New)),
            "Jul 30 06:30:32.254: default/curl-pod (ID:5580) <> default/webpod-697b545f57-bpzn9:80 (ID:12497) post-xlate-fwd TRANSLATED (TCP)"
        );
        assert_eq!(
            line(&mut e, ev(ObsPoint::ToEndpoint, (CURL, 58930), (WEB, 80), 6, 0x02, CtState::New)),
            "Jul 30 06:30:32.254: default/curl-pod:58930 (ID:5580) -> default/webpod-697b545f57-bpzn9:80 (ID:12497) to-endpoint FORWARDED (TCP Flags: SYN)"
        );
        assert_eq!(
            line(&mut e, ev(ObsPoint::ToEndpoint, (WEB, 80), (CURL, 58930), 6, 0x12, CtState::Reply)),
            "Jul 30 06:30:32.254: default/curl-pod:58930 (ID:5580) <- default/webpod-697b545f57-bpzn9:80 (ID:12497) to-endpoint FORWARDED (TCP Flags: SYN, ACK)"
        );
        assert!(line(
            &mut e,
            ev(
                ObsPoint::ToEndpoint,
                (CURL, 58930),
                (WEB, 80),
                6,
                0x18,
                CtState::Established
            )
        )
        .ends_with("to-endpoint FORWARDED (TCP Flags: ACK, PSH)"));
        assert!(line(&mut e, ev(ObsPoint::ToNetwork, (WEB, 80), (CURL, 58930), 6, 0x11, CtState::Reply))
            .contains("default/curl-pod:58930 (ID:5580) <- default/webpod-697b545f57-bpzn9:80 (ID:12497) to-network FORWARDED (TCP Flags: ACK, FIN)"));
    }

    #[test]
    fn service_names_on_translation_points() {
        let mut n = names();
        n.services.insert((CIP, 80, 6), "default/webpod".into());
        let mut e = Enricher::new(n);
        let pre = e.enrich(
            &ev(
                ObsPoint::PreXlateFwd,
                (CURL, 40000),
                (CIP, 80),
                6,
                0x02,
                CtState::New,
            ),
            T1,
        );
        assert_eq!(
            pre.flow.as_ref().unwrap().service.as_deref(),
            Some("default/webpod")
        );
        assert!(
            format_line(&pre).contains("<> default/webpod:80 (world) pre-xlate-fwd TRACED (TCP)"),
            "{}",
            format_line(&pre)
        );
        let post = e.enrich(
            &ev(
                ObsPoint::PostXlateFwd,
                (CURL, 40000),
                (WEB, 80),
                6,
                0x02,
                CtState::New,
            ),
            T1,
        );
        assert_eq!(
            post.flow.as_ref().unwrap().service.as_deref(),
            Some("default/webpod")
        );
        let rev = e.enrich(
            &ev(
                ObsPoint::PostXlateRev,
                (CIP, 80),
                (CURL, 40000),
                6,
                0x12,
                CtState::Reply,
            ),
            T1,
        );
        assert_eq!(
            rev.flow.as_ref().unwrap().service.as_deref(),
            Some("default/webpod")
        );
        assert!(format_line(&rev).contains("default/webpod:80 (world) <> default/curl-pod (ID:5580) post-xlate-rev TRANSLATED (TCP)"));
    }

    #[test]
    fn translations_reported_once_per_connection() {
        let mut n = names();
        n.services.insert((CIP, 80, 6), "default/webpod".into());
        let mut e = Enricher::new(n);
        let mut obs = Vec::new();
        let pkt = |e: &mut Enricher, obs: &mut Vec<String>, fwd: bool, flags: u8| {
            let (c, b) = ((CURL, 40000), (WEB, 80));
            let evs = if fwd {
                vec![
                    ev(ObsPoint::PreXlateFwd, c, (CIP, 80), 6, flags, CtState::New),
                    ev(ObsPoint::PostXlateFwd, c, b, 6, flags, CtState::New),
                    ev(ObsPoint::ToEndpoint, c, b, 6, flags, CtState::New),
                ]
            } else {
                vec![
                    ev(ObsPoint::PreXlateRev, b, c, 6, flags, CtState::Reply),
                    ev(
                        ObsPoint::PostXlateRev,
                        (CIP, 80),
                        c,
                        6,
                        flags,
                        CtState::Reply,
                    ),
                    ev(ObsPoint::ToEndpoint, (CIP, 80), c, 6, flags, CtState::Reply),
                ]
            };
            for f in evs {
                if let Some(l) = e.enrich_aggregated(&f, T1) {
                    obs.push(format_line(&l));
                }
            }
        };
        pkt(&mut e, &mut obs, true, 0x02);
        pkt(&mut e, &mut obs, false, 0x12);
        pkt(&mut e, &mut obs, true, 0x10);
        pkt(&mut e, &mut obs, true, 0x18);
        pkt(&mut e, &mut obs, false, 0x18);
        assert_eq!(
            obs.iter().filter(|l| l.contains("xlate")).count(),
            4,
            "{obs:#?}"
        );
        assert_eq!(obs.len(), 9, "{obs:#?}");
        assert!(obs[5].contains("<- default/webpod-697b545f57-bpzn9:80 (ID:12497) to-endpoint FORWARDED (TCP Flags: SYN, ACK)"), "{obs:#?}");
        // A new connection on the same port is reported again.
        pkt(&mut e, &mut obs, true, 0x02);
        assert_eq!(
            obs.iter().filter(|l| l.contains("pre-xlate-fwd")).count(),
            2
        );
    }

    #[test]
    fn seed_lines_udp_icmp_host() {
        let mut e = Enricher::new(names());
        let mut n = names();
        n.pods.insert(
            WEB,
            (
                "kube-system".into(),
                "coredns-674b8bbfcf-vvgfm".into(),
                28565,
            ),
        );
        e.names = n;
        let t = 1_753_887_456_752_000_000;
        let l = format_line(&e.enrich(
            &ev(
                ObsPoint::PreXlateRev,
                (WEB, 53),
                (CURL, 32772),
                17,
                0,
                CtState::Reply,
            ),
            t,
        ));
        assert_eq!(l, "Jul 30 14:57:36.752: kube-system/coredns-674b8bbfcf-vvgfm:53 (ID:28565) <> default/curl-pod (ID:5580) pre-xlate-rev TRACED (UDP)");
        let l = format_line(&e.enrich(
            &ev(
                ObsPoint::PostXlateRev,
                (Ipv4Addr::new(10, 96, 0, 10), 53),
                (CURL, 32772),
                17,
                0,
                CtState::Reply,
            ),
            t,
        ));
        assert_eq!(l, "Jul 30 14:57:36.752: 10.96.0.10:53 (world) <> default/curl-pod (ID:5580) post-xlate-rev TRANSLATED (UDP)");
        let l = format_line(&e.enrich(
            &ev(
                ObsPoint::ToNetwork,
                (Ipv4Addr::new(10, 0, 2, 15), 44999),
                (Ipv4Addr::new(10, 0, 2, 3), 53),
                17,
                0,
                CtState::New,
            ),
            1_753_887_375_979_000_000,
        ));
        assert_eq!(l, "Jul 30 14:56:15.979: 10.0.2.15:44999 (host) -> 10.0.2.3:53 (world) to-network FORWARDED (UDP)");
        let mut icmp = ev(ObsPoint::ToNetwork, (CURL, 0), (WEB, 0), 1, 0, CtState::New);
        icmp.icmp_type = Some(8);
        let l = format_line(&e.enrich(&icmp, 1_754_112_885_973_000_000));
        assert_eq!(l, "Aug  2 05:34:45.973: default/curl-pod (ID:5580) -> kube-system/coredns-674b8bbfcf-vvgfm (ID:28565) to-network FORWARDED (ICMPv4 EchoRequest)");
    }

    #[test]
    fn drops_show_the_reason() {
        let mut e = Enricher::new(names());
        let f = Flow::from_event(&FlowEvent {
            event_type: EventType::Drop as u8,
            obs_point: ObsPoint::ToNetwork as u8,
            verdict: Verdict::Dropped as u8,
            drop_reason: DropReason::PolicyDenied as u8,
            saddr: ip_be(CURL),
            daddr: ip_be(WEB),
            sport: port_be(1234),
            dport: port_be(80),
            proto: 6,
            tcp_flags: 0x02,
            ..Default::default()
        })
        .unwrap();
        let l = e.enrich(&f, T1);
        assert_eq!(format_line(&l), "Jul 30 06:30:32.254: default/curl-pod:1234 (ID:5580) -> default/webpod-697b545f57-bpzn9:80 (ID:12497) to-network DROPPED (Policy denied) (TCP Flags: SYN)");
        let l3 = Flow::from_event(&FlowEvent {
            event_type: EventType::Drop as u8,
            obs_point: ObsPoint::FromEndpoint as u8,
            verdict: Verdict::Dropped as u8,
            drop_reason: DropReason::UnsupportedL3 as u8,
            ifindex: 7,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            format_line(&e.enrich(&l3, T1)),
            "Jul 30 06:30:32.254: non-IPv4 packet (ifindex 7) from-endpoint DROPPED (Unsupported L3 protocol)"
        );
        let hub = FlowHub::new("k8s-ctr", 4, 4);
        hub.publish(l);
        let c = hub.counters();
        assert_eq!(c.drops.get("POLICY_DENIED"), Some(&1));
        assert_eq!(
            c.flows.get(&("DROPPED".to_string(), "drop".to_string())),
            Some(&1)
        );
        let text = c.render();
        assert!(
            text.contains("fibril_drops_total{reason=\"POLICY_DENIED\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fibril_flows_total{verdict=\"DROPPED\",type=\"drop\"} 1"),
            "{text}"
        );
        assert!(text.contains("fibril_flows_lost_total 0"), "{text}");
    }

    #[test]
    fn filters_and_query_round_trip() {
        let q = FlowQuery::parse(
            "last=5&follow=1&pod=default%2Fcurl&protocol=TCP&port=80&verdict=forwarded&type=trace",
        )
        .unwrap();
        assert_eq!(q.last, 5);
        assert!(q.follow);
        assert_eq!(q.filter.pod.as_deref(), Some("default/curl"));
        assert_eq!(FlowQuery::parse(&q.to_query_string()).unwrap(), q);
        assert!(FlowQuery::parse("protocol=sctp").is_err());
        assert!(FlowQuery::parse("verdict=maybe").is_err());
        assert!(FlowQuery::parse("bogus=1").is_err());

        let mut e = Enricher::new(names());
        let syn = e.enrich(
            &ev(
                ObsPoint::ToEndpoint,
                (CURL, 5),
                (WEB, 80),
                6,
                2,
                CtState::New,
            ),
            T1,
        );
        let udp = e.enrich(
            &ev(
                ObsPoint::ToEndpoint,
                (CURL, 5),
                (WEB, 53),
                17,
                0,
                CtState::New,
            ),
            T1,
        );
        assert!(q.filter.matches(&syn));
        assert!(!q.filter.matches(&udp));
        let by_pod = |p: &str| FlowFilter {
            pod: Some(p.into()),
            ..Default::default()
        };
        assert!(by_pod("curl-pod").matches(&syn));
        assert!(by_pod("webpod").matches(&syn));
        assert!(!by_pod("kube-system/curl-pod").matches(&syn));
        let ns = FlowFilter {
            namespace: Some("kube-system".into()),
            ..Default::default()
        };
        assert!(!ns.matches(&syn));
        // Lost notices always pass.
        assert!(ns.matches(&FlowLine::lost("n", "X", 1, 0)));
    }

    #[test]
    fn ring_is_bounded_and_last_n_is_newest() {
        let hub = FlowHub::new("n", 8, 4);
        let mut e = Enricher::new(names());
        for i in 0..20u16 {
            hub.publish(e.enrich(
                &ev(
                    ObsPoint::ToEndpoint,
                    (CURL, i),
                    (WEB, 80),
                    6,
                    2,
                    CtState::New,
                ),
                u64::from(i),
            ));
        }
        let all = hub.last(100, &FlowFilter::default());
        assert_eq!(all.len(), 8);
        assert_eq!(all.first().unwrap().time_ns, 12);
        let last = hub.last(3, &FlowFilter::default());
        assert_eq!(
            last.iter().map(|l| l.time_ns).collect::<Vec<_>>(),
            vec![17, 18, 19]
        );
    }

    #[tokio::test]
    async fn slow_follower_loses_counted_events() {
        // A tiny follower buffer: a follower that reads nothing while 100
        // flows go by sees one EVENTS LOST line and then the newest flows.
        let hub = FlowHub::new("k8s-w1", 64, 4);
        let mut rx = hub.subscribe();
        let mut e = Enricher::new(names());
        for i in 0..100u16 {
            hub.publish(e.enrich(
                &ev(
                    ObsPoint::ToEndpoint,
                    (CURL, i),
                    (WEB, 80),
                    6,
                    2,
                    CtState::New,
                ),
                u64::from(i),
            ));
        }
        let first = hub.next_for(&mut rx).await.unwrap();
        let lost = first.lost_events.clone().expect("a lost-events line first");
        assert_eq!(lost.num_events_lost, 96);
        assert_eq!(lost.source, "FOLLOWER_BUFFER");
        assert!(
            format_line(&first).contains("EVENTS LOST: 96"),
            "{}",
            format_line(&first)
        );
        let next = hub.next_for(&mut rx).await.unwrap();
        assert_eq!(next.time_ns, 96);
        assert_eq!(hub.counters().lost, 96);
        assert!(hub
            .counters()
            .render()
            .contains("fibril_flows_lost_total 96"));
        // Datapath overruns are published as lines and counted too.
        hub.publish(FlowLine::lost("k8s-w1", "DATAPATH_RING_BUFFER", 4, 200));
        assert_eq!(hub.counters().lost, 100);
    }

    /// Ingest figure: enrichment + ring + fan-out to one reading follower,
    /// for a bounded number of events (the agent's consumer side; the
    /// datapath counts lost events once it falls behind this rate).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingest_rate() {
        const N: u64 = 200_000;
        let hub = Arc::new(FlowHub::new("n", RING_CAPACITY, FOLLOW_BUFFER));
        let mut rx = hub.subscribe();
        let h2 = hub.clone();
        let follower = tokio::spawn(async move {
            let mut seen = 0u64;
            let mut lost = 0u64;
            while seen + lost < N {
                match h2.next_for(&mut rx).await {
                    Some(l) => match l.lost_events {
                        Some(x) => lost += x.num_events_lost,
                        None => {
                            let _ = json_line(&l);
                            seen += 1
                        }
                    },
                    None => break,
                }
            }
            (seen, lost)
        });
        let mut n = names();
        n.services.insert((CIP, 80, 6), "default/webpod".into());
        let mut e = Enricher::new(n);
        let flows: Vec<Flow> = (0..1000u16)
            .map(|i| {
                ev(
                    ObsPoint::ToEndpoint,
                    (CURL, 30000 + i),
                    (WEB, 80),
                    6,
                    0x10,
                    CtState::Established,
                )
            })
            .collect();
        let start = std::time::Instant::now();
        let mut i = 0u64;
        while i < N {
            for f in &flows {
                hub.publish(e.enrich(f, i));
                i += 1;
            }
            // Batches as the ring buffer hands them over.
            tokio::task::yield_now().await;
        }
        let ingest = start.elapsed();
        let (seen, lost) = follower.await.unwrap();
        let rate = N as f64 / ingest.as_secs_f64();
        println!("flows_ingest_per_sec {rate:.0} flows/s");
        println!("follower: {seen} flows, {lost} lost (buffer {FOLLOW_BUFFER})");
        assert_eq!(seen + lost, N);
        assert!(rate > 1000.0, "{rate}");
    }
}
