//! The `forward` plugin: sends queries to upstream resolvers over UDP
//! (retrying over TCP when the answer is truncated) or TCP (`force_tcp`),
//! bounds in-flight queries (`max_concurrent` -> REFUSED), marks upstreams
//! down after `max_fails` consecutive failures and probes them back
//! (`. IN NS` every `health_check`), picks upstreams at random, round robin
//! or in order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::corefile::{ForwardConfig, ForwardTo, Policy};
use crate::metrics::Metrics;

/// Per-attempt timeout; the whole forward gives up after `TOTAL_TIMEOUT`.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("max_concurrent {0} queries in flight")]
    Overloaded(usize),
    #[error("no upstream answered: {0}")]
    AllFailed(String),
    #[error("cannot resolve forward target `{0}`: {1}")]
    Target(String, String),
    #[error("encode query: {0}")]
    Encode(String),
}

#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub pool: TcpPool,
    fails: AtomicU32,
    down: AtomicBool,
    probing: AtomicBool,
}

impl Upstream {
    fn new(addr: SocketAddr, expire: Duration) -> Self {
        Self {
            addr,
            pool: TcpPool::new(expire),
            fails: AtomicU32::new(0),
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
        }
    }
    pub fn healthy(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
}

/// Nameservers from a resolv.conf text.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("nameserver")).then_some(())?;
            let ip = it.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Resolves forward targets; `resolve` maps placeholders
/// (`__PILLAR__CLUSTER__DNS__`) to addresses.
pub fn resolve_targets(
    to: &[ForwardTo],
    resolve: &dyn Fn(&str) -> Option<Vec<SocketAddr>>,
) -> Result<Vec<SocketAddr>, ForwardError> {
    let mut out = Vec::new();
    for t in to {
        match t {
            ForwardTo::Addr(a) => out.push(*a),
            ForwardTo::ResolvConf(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ForwardError::Target(path.clone(), e.to_string()))?;
                let ns = parse_resolv_conf(&text);
                if ns.is_empty() {
                    return Err(ForwardError::Target(
                        path.clone(),
                        "no nameserver lines".into(),
                    ));
                }
                out.extend(ns);
            }
            ForwardTo::Placeholder(p) => match resolve(p) {
                Some(list) if !list.is_empty() => out.extend(list),
                _ => {
                    return Err(ForwardError::Target(
                        p.clone(),
                        "placeholder has no value (pass it in RunOptions::placeholders)".into(),
                    ))
                }
            },
        }
    }
    Ok(out)
}

pub struct Forwarder {
    pub cfg: ForwardConfig,
    pub upstreams: Vec<Arc<Upstream>>,
    inflight: Arc<AtomicUsize>,
    rr: AtomicUsize,
    metrics: Arc<Metrics>,
}

struct InflightGuard(Arc<AtomicUsize>);
impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Forwarder {
    pub fn new(cfg: ForwardConfig, addrs: Vec<SocketAddr>, metrics: Arc<Metrics>) -> Self {
        let expire = cfg.expire;
        Self {
            cfg,
            upstreams: addrs
                .into_iter()
                .map(|a| Arc::new(Upstream::new(a, expire)))
                .collect(),
            inflight: Arc::new(AtomicUsize::new(0)),
            rr: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Queries in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Whether `qname` (lowercase fqdn) is forwarded by this plugin.
    pub fn matches(&self, qname: &str) -> bool {
        crate::corefile::in_zone(qname, &self.cfg.from)
            && !self
                .cfg
                .except
                .iter()
                .any(|z| crate::corefile::in_zone(qname, z))
    }

    fn order(&self) -> Vec<Arc<Upstream>> {
        let mut list: Vec<Arc<Upstream>> = self.upstreams.clone();
        match self.cfg.policy {
            Policy::Random => fastrand::shuffle(&mut list),
            Policy::RoundRobin => {
                let n = list.len().max(1);
                let i = self.rr.fetch_add(1, Ordering::Relaxed) % n;
                list.rotate_left(i);
            }
            Policy::Sequential => {}
        }
        let (mut up, down): (Vec<_>, Vec<_>) = list.into_iter().partition(|u| u.healthy());
        if up.is_empty() {
            // Everything down: try them anyway (CoreDNS does the same).
            up = down;
        }
        up
    }

    /// Forwards `req` (the client's query); `client_tcp` says how the client
    /// asked. Returns the upstream's response with the client's ID.
    pub async fn forward(&self, req: &Message, client_tcp: bool) -> Result<Message, ForwardError> {
        let prev = self.inflight.fetch_add(1, Ordering::AcqRel);
        let _g = InflightGuard(self.inflight.clone());
        if let Some(max) = self.cfg.max_concurrent {
            if prev >= max {
                self.metrics.forward_max_concurrent_rejects.inc();
                return Err(ForwardError::Overloaded(max));
            }
        }
        let use_tcp = self.cfg.force_tcp || (client_tcp && !self.cfg.prefer_udp);
        let deadline = Instant::now() + TOTAL_TIMEOUT;
        let mut errors = Vec::new();
        for up in self.order() {
            if Instant::now() >= deadline {
                break;
            }
            let to = up.addr.to_string();
            self.metrics
                .forward_requests
                .get_or_create(&Metrics::l(&[("to", &to)]))
                .inc();
            let start = Instant::now();
            match exchange_with(up.addr, req, use_tcp, Some(&up.pool)).await {
                Ok(mut resp) => {
                    up.fails.store(0, Ordering::Relaxed);
                    let rcode = resp.response_code().to_string().to_uppercase();
                    let secs = start.elapsed().as_secs_f64();
                    self.metrics
                        .forward_responses
                        .get_or_create(&Metrics::l(&[("to", &to), ("rcode", &rcode)]))
                        .inc();
                    self.metrics
                        .forward_duration
                        .get_or_create(&Metrics::l(&[("to", &to), ("rcode", &rcode)]))
                        .observe(secs);
                    self.metrics
                        .proxy_duration
                        .get_or_create(&Metrics::l(&[
                            ("proxy_name", "forward"),
                            ("to", &to),
                            ("rcode", &rcode),
                        ]))
                        .observe(secs);
                    resp.set_id(req.id());
                    return Ok(resp);
                }
                Err(e) => {
                    tracing::debug!(upstream = %up.addr, error = %e, "forward attempt failed");
                    errors.push(format!("{}: {e}", up.addr));
                    self.failed(&up);
                }
            }
        }
        Err(ForwardError::AllFailed(errors.join("; ")))
    }

    fn failed(&self, up: &Arc<Upstream>) {
        let n = up.fails.fetch_add(1, Ordering::AcqRel) + 1;
        if self.cfg.max_fails == 0 || n < self.cfg.max_fails {
            return;
        }
        up.down.store(true, Ordering::Relaxed);
        if self.upstreams.iter().all(|u| !u.healthy()) {
            self.metrics.forward_healthcheck_broken.inc();
        }
        if up.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let up = up.clone();
        let interval = self.cfg.health_check.max(Duration::from_millis(100));
        let tcp = self.cfg.force_tcp;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            tracing::warn!(upstream = %up.addr, "forward: upstream marked down; probing");
            loop {
                tokio::time::sleep(interval).await;
                let mut q = Message::new();
                q.set_id(fastrand::u16(..))
                    .set_message_type(MessageType::Query)
                    .set_op_code(OpCode::Query)
                    .set_recursion_desired(true)
                    .add_query(Query::query(Name::root(), RecordType::NS));
                match exchange(up.addr, &q, tcp).await {
                    Ok(_) => {
                        up.fails.store(0, Ordering::Relaxed);
                        up.down.store(false, Ordering::Relaxed);
                        up.probing.store(false, Ordering::Release);
                        tracing::info!(upstream = %up.addr, "forward: upstream healthy again");
                        return;
                    }
                    Err(_) => {
                        metrics
                            .forward_healthcheck_failures
                            .get_or_create(&Metrics::l(&[("to", &up.addr.to_string())]))
                            .inc();
                    }
                }
            }
        });
    }
}

#[derive(Debug, Error)]
pub enum ExchangeError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("timeout")]
    Timeout,
    #[error("bad response: {0}")]
    Bad(String),
}

/// Idle TCP connections to one upstream, reused until `expire` (CoreDNS's
/// forward keeps connections the same way); node-local mode forwards every
/// cluster query over TCP, so a handshake per query would dominate.
#[derive(Debug)]
pub struct TcpPool {
    idle: std::sync::Mutex<Vec<(TcpStream, Instant)>>,
    expire: Duration,
}

/// Idle connections kept per upstream.
const POOL_MAX_IDLE: usize = 16;

impl TcpPool {
    pub fn new(expire: Duration) -> Self {
        Self {
            idle: std::sync::Mutex::new(Vec::new()),
            expire,
        }
    }

    fn take(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((s, at)) = idle.pop() {
            if at.elapsed() < self.expire {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, s: TcpStream) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < POOL_MAX_IDLE {
                idle.push((s, Instant::now()));
            }
        }
    }

    /// Idle connections now (tests, debugging).
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// One query/response exchange with `addr` (a fresh query ID; UDP falls
/// back to TCP on TC).
pub async fn exchange(
    addr: SocketAddr,
    req: &Message,
    tcp: bool,
) -> Result<Message, ExchangeError> {
    exchange_with(addr, req, tcp, None).await
}

/// [`exchange`], reusing TCP connections from `pool`.
pub async fn exchange_with(
    addr: SocketAddr,
    req: &Message,
    tcp: bool,
    pool: Option<&TcpPool>,
) -> Result<Message, ExchangeError> {
    let mut q = req.clone();
    let id = fastrand::u16(..);
    q.set_id(id);
    let bytes = q.to_vec().map_err(|e| ExchangeError::Bad(e.to_string()))?;
    if !tcp {
        let resp = tokio::time::timeout(TRY_TIMEOUT, udp_exchange(addr, &bytes, &q))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        if !resp.truncated() {
            return Ok(resp);
        }
    }
    tokio::time::timeout(TRY_TIMEOUT, async {
        if let Some(s) = pool.and_then(TcpPool::take) {
            // A pooled connection may have been closed by the server while
            // idle: on any error, fall through to a fresh one.
            if let Ok((m, s)) = tcp_exchange(s, &bytes, &q).await {
                if let Some(p) = pool {
                    p.put(s);
                }
                return Ok(m);
            }
        }
        let s = TcpStream::connect(addr).await?;
        let (m, s) = tcp_exchange(s, &bytes, &q).await?;
        if let Some(p) = pool {
            p.put(s);
        }
        Ok(m)
    })
    .await
    .map_err(|_| ExchangeError::Timeout)?
}

fn matches_query(resp: &Message, q: &Message) -> bool {
    resp.id() == q.id()
        && resp.message_type() == MessageType::Response
        && resp.queries().len() == q.queries().len()
        && resp.queries().iter().zip(q.queries()).all(|(a, b)| {
            a.name().to_lowercase() == b.name().to_lowercase() && a.query_type() == b.query_type()
        })
}

async fn udp_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    q: &Message,
) -> Result<Message, ExchangeError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
            .parse()
            .map_err(|_| ExchangeError::Bad("bind".into()))?
    } else {
        "[::]:0"
            .parse()
            .map_err(|_| ExchangeError::Bad("bind".into()))?
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Ignore stray datagrams (spoofing attempts, late answers).
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if matches_query(&m, q) {
                return Ok(m);
            }
        }
    }
}

async fn tcp_exchange(
    mut s: TcpStream,
    bytes: &[u8],
    q: &Message,
) -> Result<(Message, TcpStream), ExchangeError> {
    let len =
        u16::try_from(bytes.len()).map_err(|_| ExchangeError::Bad("query too long".into()))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await?;
    loop {
        let n = s.read_u16().await? as usize;
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await?;
        let m = Message::from_vec(&buf).map_err(|e| ExchangeError::Bad(e.to_string()))?;
        if matches_query(&m, q) {
            return Ok((m, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let v = parse_resolv_conf(
            "# c\nnameserver 10.0.2.3\nnameserver fe80::1%eth0\noptions ndots:5\nsearch x\n",
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], "10.0.2.3:53".parse().unwrap());
    }

    #[test]
    fn placeholders_resolve_or_fail() {
        let to = vec![ForwardTo::Placeholder("__PILLAR__CLUSTER__DNS__".into())];
        let ok = resolve_targets(&to, &|p| {
            (p == "__PILLAR__CLUSTER__DNS__").then(|| vec!["10.96.0.10:53".parse().unwrap()])
        })
        .unwrap();
        assert_eq!(ok.len(), 1);
        assert!(resolve_targets(&to, &|_| None).is_err());
    }
}
