//! The DNS server: listeners (UDP and TCP per bind address and port),
//! routing a query to the server block with the longest matching zone, the
//! plugin chain of a block (loadbalance -> cache -> kubernetes -> forward),
//! response size limits (TC over UDP, full answers over TCP), and the HTTP
//! endpoints (health, ready, metrics).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::cache::{Cache, CacheKey, EntryKind};
use crate::cluster::ClusterView;
use crate::corefile::{in_zone, Corefile, ServerBlock};
use crate::file::ZoneFile;
use crate::forward::{resolve_targets, ForwardError, Forwarder};
use crate::kubernetes::{self, KubeResult};
use crate::metrics::Metrics;

/// UDP payload size we advertise and cap responses at (DNS flag day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;
const MAX_UDP_INFLIGHT: usize = 4096;
const MAX_TCP_CONNS: usize = 1024;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Cap on answer records for any one response (ANY and huge headless sets).
const MAX_ANSWERS: usize = 256;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("bind {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server block at line {line}: {source}")]
    File {
        line: usize,
        #[source]
        source: crate::file::ZoneError,
    },
    #[error("server block at line {line} ({zones}): {source}")]
    Forward {
        line: usize,
        zones: String,
        #[source]
        source: ForwardError,
    },
}

/// One server block, ready to answer.
pub struct Block {
    pub cfg: ServerBlock,
    server_label: String,
    forward: Option<Forwarder>,
    cache: Option<Cache>,
    /// `file` zones: (zone, its file).
    files: Vec<(String, Arc<ZoneFile>)>,
}

/// Shared state of a running server set.
pub struct Shared {
    pub cluster: Arc<dyn ClusterView>,
    pub metrics: Arc<Metrics>,
    /// Set when shutting down (lameduck): /ready fails, DNS still answers.
    pub lameduck: AtomicBool,
    loop_probe: std::sync::Mutex<Option<String>>,
    loop_seen: AtomicU32,
    pub loop_detected: AtomicBool,
}

/// Maps placeholders such as `__PILLAR__CLUSTER__DNS__` to addresses.
pub type Placeholders = HashMap<String, Vec<SocketAddr>>;

/// A running set of listeners for one Corefile.
pub struct Running {
    pub shared: Arc<Shared>,
    /// Bound DNS addresses (UDP and TCP share each).
    pub dns_addrs: Vec<SocketAddr>,
    /// Bound HTTP addresses (health/ready/metrics).
    pub http_addrs: Vec<SocketAddr>,
    lameduck: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Lameduck (keep answering, /ready fails) then stop every listener.
    pub async fn shutdown(self) {
        if !self.lameduck.is_zero() {
            self.shared.lameduck.store(true, Ordering::Relaxed);
            self.shared.metrics.health_lameduck.set(1);
            tracing::info!(duration = ?self.lameduck, "dns: lameduck before shutdown");
            tokio::time::sleep(self.lameduck).await;
        }
        self.stop().await;
    }

    /// Stops immediately.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn server_label(cfg: &ServerBlock) -> String {
    match cfg.bind.first() {
        Some(ip) => format!("dns://{}", SocketAddr::new(*ip, cfg.port)),
        None => format!("dns://:{}", cfg.port),
    }
}

/// Binds every listener of `corefile` and starts serving.
pub async fn start(
    corefile: &Corefile,
    cluster: Arc<dyn ClusterView>,
    metrics: Arc<Metrics>,
    placeholders: &Placeholders,
) -> Result<Running, ServerError> {
    let shared = Arc::new(Shared {
        cluster,
        metrics: metrics.clone(),
        lameduck: AtomicBool::new(false),
        loop_probe: std::sync::Mutex::new(None),
        loop_seen: AtomicU32::new(0),
        loop_detected: AtomicBool::new(false),
    });
    metrics.health_lameduck.set(0);
    // Listener address -> blocks served there.
    let mut by_addr: BTreeMap<SocketAddr, Vec<Arc<Block>>> = BTreeMap::new();
    // HTTP address -> (health, ready, metrics).
    let mut http: BTreeMap<SocketAddr, (bool, bool, bool)> = BTreeMap::new();
    let mut lameduck = Duration::ZERO;
    // Zone files to keep fresh (started once every listener is bound).
    let mut reloaders: Vec<(Vec<Arc<ZoneFile>>, Duration)> = Vec::new();
    for b in &corefile.servers {
        let forward = match &b.forward {
            Some(f) => {
                let lookup = |p: &str| placeholders.get(p).cloned();
                let addrs =
                    resolve_targets(&f.to, &lookup).map_err(|source| ServerError::Forward {
                        line: b.line,
                        zones: b.zones.join(","),
                        source,
                    })?;
                Some(Forwarder::new(f.clone(), addrs, metrics.clone()))
            }
            None => None,
        };
        let mut files = Vec::new();
        for f in &b.files {
            let mut opened = Vec::new();
            for z in &f.zones {
                let zf = ZoneFile::open(std::path::Path::new(&f.path), z).map_err(|source| {
                    ServerError::File {
                        line: b.line,
                        source,
                    }
                })?;
                let zf = Arc::new(zf);
                opened.push(zf.clone());
                files.push((z.clone(), zf));
            }
            reloaders.push((opened, f.reload));
        }
        let label = server_label(b);
        for z in &b.zones {
            for (plugin, on) in [
                ("cache", b.cache.is_some()),
                ("kubernetes", b.kubernetes.is_some()),
                ("file", !b.files.is_empty()),
                ("forward", b.forward.is_some()),
                ("loadbalance", b.loadbalance),
                ("prometheus", b.prometheus.is_some()),
                ("log", b.log),
                ("errors", b.errors),
            ] {
                if on {
                    metrics
                        .plugin_enabled
                        .get_or_create(&Metrics::l(&[
                            ("server", &label),
                            ("zone", z),
                            ("view", ""),
                            ("name", plugin),
                        ]))
                        .set(1);
                }
            }
        }
        let block = Arc::new(Block {
            cfg: b.clone(),
            server_label: label,
            forward,
            cache: b.cache.clone().map(Cache::new),
            files,
        });
        let ips = if b.bind.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        } else {
            b.bind.clone()
        };
        for ip in ips {
            by_addr
                .entry(SocketAddr::new(ip, b.port))
                .or_default()
                .push(block.clone());
        }
        if let Some(h) = &b.health {
            http.entry(h.addr.socket_addr()).or_default().0 = true;
            lameduck = lameduck.max(h.lameduck);
        }
        if let Some(r) = &b.ready {
            http.entry(r.socket_addr()).or_default().1 = true;
        }
        if let Some(p) = &b.prometheus {
            http.entry(p.socket_addr()).or_default().2 = true;
        }
    }
    let mut tasks = Vec::new();
    let mut dns_addrs = Vec::new();
    let mut http_addrs = Vec::new();
    let bound = async {
        for (addr, blocks) in by_addr {
            let udp = bind_dns(addr, false)
                .and_then(|fd| UdpSocket::from_std(std::net::UdpSocket::from(fd)))
                .map_err(|source| ServerError::Bind {
                    proto: "udp",
                    addr,
                    source,
                })?;
            let tcp = bind_dns(addr, true)
                .and_then(|fd| TcpListener::from_std(std::net::TcpListener::from(fd)))
                .map_err(|source| ServerError::Bind {
                    proto: "tcp",
                    addr,
                    source,
                })?;
            dns_addrs.push(addr);
            let blocks = Arc::new(blocks);
            tasks.push(tokio::spawn(serve_udp(
                Arc::new(udp),
                blocks.clone(),
                shared.clone(),
            )));
            tasks.push(tokio::spawn(serve_tcp(tcp, blocks, shared.clone())));
        }
        for (addr, roles) in http {
            // Same socket options as DNS: `health 169.254.20.10:8080` (the
            // hostNetwork node-local Corefile) binds before the address is
            // on an interface.
            let l = bind_dns(addr, true)
                .and_then(|fd| TcpListener::from_std(std::net::TcpListener::from(fd)))
                .map_err(|source| ServerError::Bind {
                    proto: "tcp (http)",
                    addr,
                    source,
                })?;
            http_addrs.push(addr);
            tasks.push(tokio::spawn(serve_http(l, roles, shared.clone())));
        }
        Ok::<(), ServerError>(())
    };
    if let Err(e) = bound.await {
        for t in &tasks {
            t.abort();
        }
        return Err(e);
    }
    for (zones, every) in reloaders {
        tasks.push(tokio::spawn(crate::file::reload_loop(zones, every)));
    }
    // The loop plugin: a query for a random name to ourselves; seeing it
    // come back more than twice means the upstream forwards to us.
    if let Some(b) = corefile
        .servers
        .iter()
        .find(|b| b.loop_detect && b.forward.is_some())
    {
        let zone = b.zones.first().cloned().unwrap_or_else(|| ".".into());
        let probe = format!(
            "{}.{}.{}",
            fastrand::u64(..),
            fastrand::u64(..),
            if zone == "." { "" } else { zone.as_str() }
        );
        if let Ok(mut g) = shared.loop_probe.lock() {
            *g = Some(probe.clone());
        }
        let ip = b
            .bind
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let ip = if ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            ip
        };
        let target = SocketAddr::new(ip, b.port);
        tasks.push(tokio::spawn(async move {
            if let Ok(name) = hickory_proto::rr::Name::from_ascii(&probe) {
                let mut q = Message::new();
                q.set_id(fastrand::u16(..))
                    .set_message_type(MessageType::Query)
                    .set_op_code(OpCode::Query)
                    .set_recursion_desired(true)
                    .add_query(hickory_proto::op::Query::query(name, RecordType::HINFO));
                let _ = crate::forward::exchange(target, &q, false).await;
            }
        }));
    }
    Ok(Running {
        shared,
        dns_addrs,
        http_addrs,
        lameduck,
        tasks,
    })
}

/// A non-blocking UDP socket or TCP listener on `addr`. Specific addresses
/// are bound with IP_FREEBIND, so node-local mode can bind 169.254.20.10 and
/// the kube-dns ClusterIP before (or without) them being on an interface,
/// and the seeds' `bind` lines load unchanged.
fn bind_dns(addr: SocketAddr, tcp: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{self as ns, sockopt, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let ty = if tcp {
        SockType::Stream
    } else {
        SockType::Datagram
    };
    let fd = ns::socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if tcp {
        // Quick rebinds after a reload (TIME_WAIT), as tokio does.
        ns::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    if !addr.ip().is_unspecified() {
        ns::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    }
    if addr.is_ipv6() {
        ns::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    ns::bind(fd.as_raw_fd(), &ns::SockaddrStorage::from(addr))?;
    if tcp {
        ns::listen(&fd, ns::Backlog::new(1024)?)?;
    }
    Ok(fd)
}

async fn serve_udp(sock: Arc<UdpSocket>, blocks: Arc<Vec<Arc<Block>>>, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(MAX_UDP_INFLIGHT));
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp recv");
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Overloaded: drop (the client retries) rather than queue.
            continue;
        };
        let data = buf[..n].to_vec();
        let (sock, blocks, shared) = (sock.clone(), blocks.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(resp) = handle(&data, Proto::Udp, src, &blocks, &shared).await {
                let _ = sock.send_to(&resp, src).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(l: TcpListener, blocks: Arc<Vec<Arc<Block>>>, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNS));
    loop {
        let Ok((s, src)) = l.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (blocks, shared) = (blocks.clone(), shared.clone());
        tokio::spawn(async move {
            let _ = tcp_conn(s, src, &blocks, &shared).await;
            drop(permit);
        });
    }
}

async fn tcp_conn(
    mut s: TcpStream,
    src: SocketAddr,
    blocks: &[Arc<Block>],
    shared: &Shared,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => return Ok(()),
        };
        let mut buf = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(resp) = handle(&buf, Proto::Tcp, src, blocks, shared).await else {
            return Ok(());
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&resp);
        s.write_all(&out).await?;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

/// CoreDNS's rcode names.
pub fn rcode_name(rc: ResponseCode) -> String {
    match rc {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

/// A bare error response built from the raw header (for messages that do
/// not parse): ID and opcode copied, QR set, no sections.
fn raw_error(data: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut h = [0u8; 12];
    h[..2].copy_from_slice(&data[..2]);
    h[2] = 0x80 | (data[2] & 0x79); // QR, opcode, RD
    h[3] = rcode.low() & 0x0f;
    h.to_vec()
}

/// What a block's plugin chain produced.
struct Answer {
    rcode: ResponseCode,
    aa: bool,
    ra: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additional: Vec<Record>,
    plugin: &'static str,
}

impl Answer {
    fn error(rcode: ResponseCode, plugin: &'static str) -> Self {
        Self {
            rcode,
            aa: false,
            ra: true,
            answers: vec![],
            authority: vec![],
            additional: vec![],
            plugin,
        }
    }
}

/// Answers one query from raw bytes. `None` means drop (too short, a
/// response, or otherwise not worth answering). Never panics.
pub async fn handle(
    data: &[u8],
    proto: Proto,
    src: SocketAddr,
    blocks: &[Arc<Block>],
    shared: &Shared,
) -> Option<Vec<u8>> {
    let start = Instant::now();
    if data.len() < 12 || data[2] & 0x80 != 0 {
        return None;
    }
    let req = match Message::from_vec(data) {
        Ok(m) => m,
        Err(_) => return Some(raw_error(data, ResponseCode::FormErr)),
    };
    if req.op_code() != OpCode::Query {
        return Some(raw_error(data, ResponseCode::NotImp));
    }
    if req.queries().len() != 1 {
        return Some(raw_error(data, ResponseCode::FormErr));
    }
    if req.extensions().as_ref().is_some_and(|e| e.version() > 0) {
        // RFC 6891: unknown EDNS version.
        return build(&req, Answer::error(ResponseCode::BADVERS, ""))
            .and_then(|m| encode(m, &req, proto));
    }
    let q = req.queries()[0].clone();
    let mut qname = q.name().to_ascii().to_ascii_lowercase();
    if !qname.ends_with('.') {
        qname.push('.');
    }
    let qtype = q.query_type();
    let block = blocks
        .iter()
        .flat_map(|b| b.cfg.zones.iter().map(move |z| (b, z)))
        .filter(|(_, z)| in_zone(&qname, z))
        .max_by_key(|(_, z)| z.len());
    let Some((block, zone)) = block else {
        return build(&req, Answer::error(ResponseCode::Refused, ""))
            .and_then(|m| encode(m, &req, proto));
    };
    let max_udp = match req.extensions() {
        Some(e) => e.max_payload().clamp(512, EDNS_PAYLOAD),
        None => 512,
    };
    let family = if src.is_ipv4() { "1" } else { "2" };
    let proto_s = if proto == Proto::Udp { "udp" } else { "tcp" };
    let qtype_s = qtype.to_string();
    let m = &shared.metrics;
    m.requests
        .get_or_create(&Metrics::l(&[
            ("server", &block.server_label),
            ("zone", zone),
            ("view", ""),
            ("proto", proto_s),
            ("family", family),
            ("type", &qtype_s),
        ]))
        .inc();
    m.request_size
        .get_or_create(&Metrics::l(&[
            ("server", &block.server_label),
            ("zone", zone),
            ("view", ""),
            ("proto", proto_s),
        ]))
        .observe(data.len() as f64);

    // The loop plugin's own probe.
    if qtype == RecordType::HINFO {
        let is_probe = shared
            .loop_probe
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .is_some_and(|p| p == qname);
        if is_probe {
            // Seen once from our own probe; more means it came back through
            // an upstream. CoreDNS exits; we stop the loop here and report
            // not ready.
            let n = shared.loop_seen.fetch_add(1, Ordering::AcqRel) + 1;
            if n > 2 {
                if !shared.loop_detected.swap(true, Ordering::AcqRel) {
                    tracing::error!(name = %qname, "dns: loop detected: an upstream forwards our own queries back to us; /ready fails");
                }
                return build(&req, Answer::error(ResponseCode::ServFail, "loop"))
                    .and_then(|m| encode(m, &req, proto));
            }
        }
    }

    let mut ans = resolve(block, &req, &qname, qtype, proto, shared).await;
    if block.cfg.loadbalance {
        shuffle_addresses(&mut ans.answers);
    }
    if ans.answers.len() > MAX_ANSWERS {
        ans.answers.truncate(MAX_ANSWERS);
    }
    let rcode = ans.rcode;
    let plugin = ans.plugin;
    let msg = build(&req, ans)?;
    let mut bytes = encode(msg.clone(), &req, proto)?;
    let mut truncated = false;
    if proto == Proto::Udp && bytes.len() > max_udp as usize {
        truncated = true;
        bytes = encode(msg.truncate(), &req, proto)?;
        if bytes.len() > max_udp as usize {
            return Some(raw_error(data, ResponseCode::ServFail));
        }
    }
    let rc = rcode_name(rcode);
    m.responses
        .get_or_create(&Metrics::l(&[
            ("server", &block.server_label),
            ("zone", zone),
            ("view", ""),
            ("rcode", &rc),
            ("plugin", plugin),
        ]))
        .inc();
    m.response_size
        .get_or_create(&Metrics::l(&[
            ("server", &block.server_label),
            ("zone", zone),
            ("view", ""),
            ("proto", proto_s),
        ]))
        .observe(bytes.len() as f64);
    let elapsed = start.elapsed();
    m.request_duration
        .get_or_create(&Metrics::l(&[
            ("server", &block.server_label),
            ("zone", zone),
            ("view", ""),
            ("type", &qtype_s),
        ]))
        .observe(elapsed.as_secs_f64());
    if block.cfg.log {
        let mut flags = vec!["qr"];
        if msg.authoritative() {
            flags.push("aa");
        }
        if truncated {
            flags.push("tc");
        }
        if msg.recursion_desired() {
            flags.push("rd");
        }
        if msg.recursion_available() {
            flags.push("ra");
        }
        // CoreDNS's log line format, on stdout as CoreDNS prints it (the
        // pod log), whatever the tracing filter.
        let line = format!(
            "[INFO] {src} - {} \"{qtype_s} {} {qname} {proto_s} {} {} {max_udp}\" {rc} {} {} {:.9}s\n",
            req.id(),
            q.query_class(),
            data.len(),
            req.extensions().as_ref().is_some_and(|e| e.flags().dnssec_ok),
            flags.join(","),
            bytes.len(),
            elapsed.as_secs_f64()
        );
        {
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
    Some(bytes)
}

fn build(req: &Message, ans: Answer) -> Option<Message> {
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(req.recursion_desired())
        .set_checking_disabled(req.checking_disabled())
        .set_authoritative(ans.aa)
        .set_recursion_available(ans.ra)
        .set_response_code(ans.rcode);
    m.add_queries(req.queries().iter().cloned());
    m.add_answers(ans.answers);
    m.add_name_servers(ans.authority);
    m.add_additionals(
        ans.additional
            .into_iter()
            .filter(|r| r.record_type() != RecordType::OPT),
    );
    Some(m)
}

fn encode(mut m: Message, req: &Message, _proto: Proto) -> Option<Vec<u8>> {
    if let Some(e) = req.extensions() {
        let mut out = Edns::new();
        out.set_max_payload(EDNS_PAYLOAD)
            .set_version(0)
            .set_dnssec_ok(e.flags().dnssec_ok);
        m.set_edns(out);
    }
    m.to_vec().ok()
}

fn shuffle_addresses(rs: &mut [Record]) {
    // Only rotate when the answer is purely addresses (CNAME chains keep order).
    if rs.len() > 1
        && rs
            .iter()
            .all(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
    {
        fastrand::shuffle(rs);
    }
}

async fn resolve(
    block: &Block,
    req: &Message,
    qname: &str,
    qtype: RecordType,
    proto: Proto,
    shared: &Shared,
) -> Answer {
    let m = &shared.metrics;
    let zone_l = block
        .cfg
        .zones
        .iter()
        .find(|z| in_zone(qname, z))
        .cloned()
        .unwrap_or_default();
    let cache_labels = Metrics::l(&[
        ("server", &block.server_label),
        ("view", ""),
        ("zones", &zone_l),
    ]);
    let qclass = req.queries()[0].query_class();
    let key = CacheKey {
        name: qname.to_string(),
        qtype: u16::from(qtype),
        qclass: u16::from(qclass),
        dnssec_ok: req
            .extensions()
            .as_ref()
            .is_some_and(|e| e.flags().dnssec_ok),
    };
    let cache = block.cache.as_ref().filter(|c| c.covers(qname));
    if let Some(c) = cache {
        m.cache_requests.get_or_create(&cache_labels).inc();
        if let Some(hit) = c.get(&key, Instant::now()) {
            let mut l = cache_labels.clone();
            l.push(("type".into(), hit.kind.label().into()));
            m.cache_hits.get_or_create(&l).inc();
            update_entries(block, &cache_labels, shared);
            return Answer {
                rcode: hit.rcode,
                aa: hit.authoritative,
                ra: hit.recursion_available,
                answers: hit.answers,
                authority: hit.authority,
                additional: hit.additional,
                plugin: "cache",
            };
        }
        m.cache_misses.get_or_create(&cache_labels).inc();
    }
    let ans = resolve_uncached(block, req, qname, qtype, qclass, proto, shared).await;
    if let Some(c) = cache {
        if matches!(ans.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            let mut resp = Message::new();
            resp.set_message_type(MessageType::Response)
                .set_response_code(ans.rcode)
                .set_authoritative(ans.aa)
                .set_recursion_available(ans.ra);
            resp.add_answers(ans.answers.iter().cloned());
            resp.add_name_servers(ans.authority.iter().cloned());
            resp.add_additionals(ans.additional.iter().cloned());
            if let Some((_, evicted)) = c.put(key, &resp, Instant::now()) {
                if evicted > 0 {
                    m.cache_evictions
                        .get_or_create(&cache_labels)
                        .inc_by(evicted as u64);
                }
            }
            update_entries(block, &cache_labels, shared);
        }
    }
    ans
}

fn update_entries(block: &Block, labels: &[(String, String)], shared: &Shared) {
    if let Some(c) = &block.cache {
        for kind in [EntryKind::Success, EntryKind::Denial] {
            let mut l = labels.to_vec();
            l.push(("type".into(), kind.label().into()));
            shared
                .metrics
                .cache_entries
                .get_or_create(&l)
                .set(c.len(kind) as i64);
        }
    }
}

async fn resolve_uncached(
    block: &Block,
    req: &Message,
    qname: &str,
    qtype: RecordType,
    qclass: DNSClass,
    proto: Proto,
    shared: &Shared,
) -> Answer {
    if let Some(k) = &block.cfg.kubernetes {
        if qclass == DNSClass::IN || qclass == DNSClass::ANY {
            if let KubeResult::Answer {
                rcode,
                answers,
                authority,
                additional,
            } = kubernetes::answer(k, shared.cluster.as_ref(), qname, qtype)
            {
                return Answer {
                    rcode,
                    aa: true,
                    ra: false,
                    answers,
                    authority,
                    additional,
                    plugin: "kubernetes",
                };
            }
        }
    }
    if let Some((_, zf)) = block
        .files
        .iter()
        .filter(|(z, _)| in_zone(qname, z))
        .max_by_key(|(z, _)| z.len())
    {
        if let (Some(zone), true) = (zf.zone(), qclass == DNSClass::IN) {
            let a = zone.answer(qname, qtype);
            return Answer {
                rcode: a.rcode,
                aa: true,
                ra: false,
                answers: a.answers,
                authority: a.authority,
                additional: Vec::new(),
                plugin: "file",
            };
        }
    }
    if let Some(f) = block.forward.as_ref().filter(|f| f.matches(qname)) {
        return match f.forward(req, proto == Proto::Tcp).await {
            Ok(mut resp) => Answer {
                rcode: resp.response_code(),
                aa: resp.authoritative(),
                ra: resp.recursion_available(),
                answers: resp.take_answers(),
                authority: resp.take_name_servers(),
                additional: resp.take_additionals(),
                plugin: "forward",
            },
            Err(ForwardError::Overloaded(n)) => {
                if block.cfg.errors {
                    tracing::error!("[ERROR] plugin/errors: 5 {qname} {qtype}: forward max_concurrent {n} reached");
                }
                Answer::error(ResponseCode::Refused, "forward")
            }
            Err(e) => {
                if block.cfg.errors {
                    tracing::error!("[ERROR] plugin/errors: 2 {qname} {qtype}: {e}");
                }
                Answer::error(ResponseCode::ServFail, "forward")
            }
        };
    }
    Answer::error(ResponseCode::ServFail, "")
}

// ------------------------------------------------------------------ http

async fn serve_http(l: TcpListener, roles: (bool, bool, bool), shared: Arc<Shared>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), http_conn(s, roles, &shared)).await;
        });
    }
}

async fn http_conn(
    mut s: TcpStream,
    roles: (bool, bool, bool),
    shared: &Shared,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 8192 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let path = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let (health, ready, metrics) = roles;
    let (status, ctype, body) = match path.as_str() {
        "/health" if health => (200, "text/plain", "OK".to_string()),
        "/ready" if ready => {
            if shared.lameduck.load(Ordering::Relaxed) {
                (503, "text/plain", "lameduck".to_string())
            } else if shared.loop_detected.load(Ordering::Relaxed) {
                (503, "text/plain", "loop".to_string())
            } else if !shared.cluster.synced() {
                (503, "text/plain", "kubernetes".to_string())
            } else {
                (200, "text/plain", "OK".to_string())
            }
        }
        "/metrics" if metrics => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.render(),
        ),
        _ => (404, "text/plain", "404 page not found\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

/// Answers `data` for the fuzz target and tests without sockets: the same
/// path as a UDP query from 127.0.0.1, with blocks that have no forwarder.
pub fn handle_sync(data: &[u8], blocks: &[Arc<Block>], shared: &Shared) -> Option<Vec<u8>> {
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);
    let fut = handle(data, Proto::Udp, src, blocks, shared);
    futures::executor::block_on(fut)
}

/// Blocks (without forward targets resolved) for offline use: fuzzing and
/// unit tests. Forward directives are dropped.
pub fn offline_blocks(corefile: &Corefile) -> Vec<Arc<Block>> {
    corefile
        .servers
        .iter()
        .map(|b| {
            Arc::new(Block {
                server_label: server_label(b),
                forward: None,
                cache: b.cache.clone().map(Cache::new),
                files: Vec::new(),
                cfg: b.clone(),
            })
        })
        .collect()
}

/// Shared state for [`handle_sync`].
pub fn offline_shared(cluster: Arc<dyn ClusterView>) -> Shared {
    Shared {
        cluster,
        metrics: Arc::new(Metrics::new()),
        lameduck: AtomicBool::new(false),
        loop_probe: std::sync::Mutex::new(None),
        loop_seen: AtomicU32::new(0),
        loop_detected: AtomicBool::new(false),
    }
}
