//! End-to-end checks with `dig` (dnsutils) and `curl` against a server on
//! 127.0.0.1 with free ports, an in-memory cluster and an in-process
//! upstream serving the test zone `test.lab.`.
// Test helpers outside #[test] fns unwrap freely too.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_dns::corefile::{ForwardConfig, ForwardTo, Policy};
use fibril_dns::forward::{ForwardError, Forwarder};
use fibril_dns::{
    ClusterIndex, ClusterView, EndpointRecord, Metrics, PodRecord, PortRecord, ServiceKind,
    ServiceRecord,
};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The test zone's answers.
fn upstream_answer(req: &Message) -> Message {
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    m.add_queries(req.queries().iter().cloned());
    let Some(q) = req.queries().first() else {
        m.set_response_code(ResponseCode::FormErr);
        return m;
    };
    let name = q.name().to_ascii().to_ascii_lowercase();
    let zone = Name::from_ascii("test.lab.").unwrap();
    if !name.ends_with("test.lab.") {
        m.set_response_code(ResponseCode::Refused);
        m.set_authoritative(false);
        return m;
    }
    match (name.as_str(), q.query_type()) {
        ("www.test.lab.", RecordType::A) => {
            m.add_answer(Record::from_rdata(
                q.name().clone(),
                300,
                RData::A(A::new(192, 0, 2, 10)),
            ));
        }
        ("big.test.lab.", RecordType::A) => {
            for i in 0..100u8 {
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::A(A::new(198, 51, 100, i)),
                ));
            }
        }
        ("www.test.lab.", _) | ("big.test.lab.", _) => {
            m.add_name_server(soa(&zone));
        }
        _ => {
            m.set_response_code(ResponseCode::NXDomain);
            m.add_name_server(soa(&zone));
        }
    }
    m
}

fn soa(zone: &Name) -> Record {
    Record::from_rdata(
        zone.clone(),
        60,
        RData::SOA(SOA::new(
            Name::from_ascii("ns.test.lab.").unwrap(),
            Name::from_ascii("admin.test.lab.").unwrap(),
            1,
            60,
            60,
            60,
            60,
        )),
    )
}

struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicU32>,
    tcp_queries: Arc<AtomicU32>,
    tcp_conns: Arc<AtomicU32>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn start_upstream() -> Upstream {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let udp = Arc::new(UdpSocket::bind(addr).await.unwrap());
    let tcp = TcpListener::bind(addr).await.unwrap();
    let queries = Arc::new(AtomicU32::new(0));
    let tcp_queries = Arc::new(AtomicU32::new(0));
    let tcp_conns = Arc::new(AtomicU32::new(0));
    let q1 = queries.clone();
    let t1 = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, src)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            q1.fetch_add(1, Ordering::SeqCst);
            let resp = upstream_answer(&req);
            let mut bytes = resp.to_vec().unwrap();
            if bytes.len() > 512 {
                bytes = resp.truncate().to_vec().unwrap();
            }
            let _ = udp.send_to(&bytes, src).await;
        }
    });
    let (q2, tq, tc) = (queries.clone(), tcp_queries.clone(), tcp_conns.clone());
    let t2 = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            tc.fetch_add(1, Ordering::SeqCst);
            let (q2, tq) = (q2.clone(), tq.clone());
            tokio::spawn(async move {
                while let Ok(n) = s.read_u16().await {
                    let mut buf = vec![0u8; n as usize];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Ok(req) = Message::from_vec(&buf) else {
                        return;
                    };
                    q2.fetch_add(1, Ordering::SeqCst);
                    tq.fetch_add(1, Ordering::SeqCst);
                    let bytes = upstream_answer(&req).to_vec().unwrap();
                    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
                    out.extend(bytes);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        queries,
        tcp_queries,
        tcp_conns,
        tasks: vec![t1, t2],
    }
}

fn cluster() -> ClusterIndex {
    let mut i = ClusterIndex::new();
    i.upsert_service(ServiceRecord {
        namespace: "default".into(),
        name: "webpod".into(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec!["10.96.152.212".parse().unwrap()],
        ports: vec![PortRecord {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
        }],
    });
    i.upsert_service(ServiceRecord {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        ports: vec![
            PortRecord {
                name: "dns".into(),
                protocol: "UDP".into(),
                port: 53,
            },
            PortRecord {
                name: "dns-tcp".into(),
                protocol: "TCP".into(),
                port: 53,
            },
            PortRecord {
                name: "metrics".into(),
                protocol: "TCP".into(),
                port: 9153,
            },
        ],
    });
    i.upsert_service(ServiceRecord {
        namespace: "default".into(),
        name: "db".into(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec![],
        ports: vec![],
    });
    let ports = vec![PortRecord {
        name: "pg".into(),
        protocol: "TCP".into(),
        port: 5432,
    }];
    i.upsert_slice(
        "default",
        "db-x",
        "db",
        (0..3u8)
            .map(|n| EndpointRecord {
                addresses: vec![IpAddr::from([10, 244, 1, 20 + n])],
                hostname: Some(format!("db-{n}")),
                ready: n != 2,
                ports: ports.clone(),
            })
            .collect(),
    );
    i.upsert_pod(PodRecord {
        namespace: "default".into(),
        name: "curl-pod".into(),
        ips: vec!["10.244.1.9".parse().unwrap()],
    });
    i
}

struct Lab {
    port: u16,
    metrics: u16,
    health: u16,
    ready: u16,
    upstream: Upstream,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), fibril_dns::DnsError>>>,
}

impl Lab {
    async fn start(view: Arc<dyn ClusterView>, extra: &str) -> Lab {
        let upstream = start_upstream().await;
        let (port, metrics, health, ready) = (free_port(), free_port(), free_port(), free_port());
        let corefile = format!(
            r#".:{port} {{
    errors
    health 127.0.0.1:{health} {{
       lameduck 100ms
    }}
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus 127.0.0.1:{metrics}
    forward . {up} {{
       max_concurrent 1000
    }}
    cache 30 {{
       disable success cluster.local
       disable denial cluster.local
    }}
    loop
    reload
    loadbalance
    bind 127.0.0.1
    log
    {extra}
}}
"#,
            up = upstream.addr
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = fibril_dns::RunOptions {
            corefile: fibril_dns::CorefileSource::Text(corefile),
            placeholders: Default::default(),
            substitutions: Vec::new(),
        };
        let task = tokio::spawn(fibril_dns::run(opts, view, async {
            let _ = rx.await;
        }));
        let lab = Lab {
            port,
            metrics,
            health,
            ready,
            upstream,
            stop: Some(tx),
            task: Some(task),
        };
        // Eventually ready.
        let deadline = Instant::now() + Duration::from_secs(10);
        while curl(lab.ready, "/ready").await != "OK" {
            assert!(Instant::now() < deadline, "server never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lab
    }

    async fn dig(&self, args: &str) -> String {
        let mut cmd = tokio::process::Command::new("dig");
        cmd.arg("@127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .args(["+tries=1", "+time=5"])
            .args(args.split_whitespace());
        let out = cmd.output().await.expect("run dig");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

async fn curl(port: u16, path: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .await
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn header_flags(out: &str) -> Vec<String> {
    let line = out
        .lines()
        .find(|l| l.contains(";; flags:"))
        .unwrap_or_else(|| panic!("no flags line in:\n{out}"));
    let flags = line
        .split("flags:")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    flags.split_whitespace().map(String::from).collect()
}

fn status(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap().to_string())
        .unwrap_or_default()
}

/// A section's records, whitespace collapsed to single spaces.
fn section(out: &str, name: &str) -> Vec<String> {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.starts_with(&format!(";; {name} SECTION")));
    lines.next();
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_zone_answers() {
    let lab = Lab::start(Arc::new(cluster()), "").await;

    // ClusterIP A: authoritative, RD echoed, no RA (as the seeds' nslookup shows).
    let out = lab.dig("webpod.default.svc.cluster.local A").await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    let flags = header_flags(&out);
    assert!(
        flags.contains(&"aa".into()) && flags.contains(&"rd".into()),
        "{out}"
    );
    assert!(!flags.contains(&"ra".into()), "{out}");
    let ans = section(&out, "ANSWER");
    assert_eq!(ans.len(), 1, "{out}");
    assert!(ans[0].contains("30 IN A 10.96.152.212"), "{out}");

    // AAAA: NODATA with the zone SOA (TTL 30) in authority.
    let out = lab.dig("webpod.default.svc.cluster.local AAAA").await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(section(&out, "ANSWER").is_empty(), "{out}");
    let auth = section(&out, "AUTHORITY");
    assert_eq!(auth.len(), 1, "{out}");
    assert!(
        auth[0].starts_with(
            "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local."
        ),
        "{out}"
    );
    assert!(auth[0].ends_with(" 7200 1800 86400 30"), "{out}");

    // Search-path miss: NXDOMAIN with SOA.
    let out = lab.dig("google.com.default.svc.cluster.local A").await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(section(&out, "AUTHORITY")[0].contains("SOA"), "{out}");
    assert!(header_flags(&out).contains(&"aa".into()));

    // SRV for a named port, with the target's A in additional.
    let out = lab
        .dig("_metrics._tcp.kube-dns.kube-system.svc.cluster.local SRV")
        .await;
    let ans = section(&out, "ANSWER");
    assert_eq!(ans.len(), 1, "{out}");
    assert!(
        ans[0].ends_with("SRV 0 100 9153 kube-dns.kube-system.svc.cluster.local."),
        "{out}"
    );
    assert!(
        section(&out, "ADDITIONAL")
            .iter()
            .any(|l| l.contains("10.96.0.10")),
        "{out}"
    );

    // Headless: ready endpoints only; per-hostname names; SRV per endpoint.
    let out = lab.dig("db.default.svc.cluster.local A").await;
    assert_eq!(section(&out, "ANSWER").len(), 2, "{out}");
    let out = lab.dig("db-1.db.default.svc.cluster.local A").await;
    assert!(section(&out, "ANSWER")[0].ends_with("10.244.1.21"), "{out}");
    let out = lab.dig("_pg._tcp.db.default.svc.cluster.local SRV").await;
    assert_eq!(section(&out, "ANSWER").len(), 2, "{out}");

    // Pod records (pods insecure).
    let out = lab.dig("10-244-1-9.default.pod.cluster.local A").await;
    assert!(
        section(&out, "ANSWER")[0].ends_with("A 10.244.1.9"),
        "{out}"
    );

    // PTR for a service and a pod IP.
    let out = lab.dig("-x 10.96.152.212").await;
    assert!(
        section(&out, "ANSWER")[0].ends_with("PTR webpod.default.svc.cluster.local."),
        "{out}"
    );
    let out = lab.dig("-x 10.244.1.9").await;
    assert!(
        section(&out, "ANSWER")[0].ends_with("PTR 10-244-1-9.default.pod.cluster.local."),
        "{out}"
    );
    // Unknown reverse name falls through to the upstream (which refuses it).
    let out = lab.dig("-x 203.0.113.1").await;
    assert_eq!(status(&out), "REFUSED", "{out}");

    // Over TCP the same answer.
    let out = lab.dig("+tcp webpod.default.svc.cluster.local A").await;
    assert!(
        section(&out, "ANSWER")[0].ends_with("10.96.152.212"),
        "{out}"
    );

    // Unknown EDNS version: BADVERS.
    let out = lab
        .dig("+edns=1 +noednsneg webpod.default.svc.cluster.local A")
        .await;
    assert_eq!(status(&out), "BADVERS", "{out}");

    // ANY in the cluster zone: the addresses, bounded.
    let out = lab.dig("webpod.default.svc.cluster.local ANY").await;
    assert_eq!(status(&out), "NOERROR", "{out}");

    // Health and readiness.
    assert_eq!(curl(lab.health, "/health").await, "OK");
    assert_eq!(curl(lab.ready, "/ready").await, "OK");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_cache_truncation_metrics() {
    let lab = Lab::start(Arc::new(cluster()), "").await;

    let out = lab.dig("www.test.lab A").await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    let flags = header_flags(&out);
    assert!(
        flags.contains(&"ra".into()) && flags.contains(&"rd".into()),
        "{out}"
    );
    let ans = section(&out, "ANSWER");
    // The first answer is the upstream's, TTL and all.
    assert!(ans[0].contains(" 300 IN A "), "{out}");
    assert!(ans[0].ends_with("A 192.0.2.10"), "{out}");
    let before = lab.upstream.queries.load(Ordering::SeqCst);

    // Second query: a cache hit (upstream not asked), TTL capped at 30.
    let out = lab.dig("www.test.lab A").await;
    let ans = section(&out, "ANSWER");
    let ttl: u32 = ans[0].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(ttl <= 30, "{out}");
    assert_eq!(
        lab.upstream.queries.load(Ordering::SeqCst),
        before,
        "served from cache"
    );

    // Negative answers cached too (denial).
    let out = lab.dig("nope.test.lab A").await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(section(&out, "AUTHORITY")[0].contains("SOA"), "{out}");
    let n = lab.upstream.queries.load(Ordering::SeqCst);
    let out = lab.dig("nope.test.lab A").await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(lab.upstream.queries.load(Ordering::SeqCst), n);

    // Big answer: upstream truncates over UDP, we retry it over TCP; our
    // UDP answer to dig is truncated (TC), dig retries over TCP and gets all.
    let out = lab.dig("+ignore big.test.lab A").await;
    assert!(header_flags(&out).contains(&"tc".into()), "{out}");
    assert!(lab.upstream.tcp_queries.load(Ordering::SeqCst) >= 1);
    let out = lab.dig("big.test.lab A").await;
    assert_eq!(section(&out, "ANSWER").len(), 100, "{out}");
    // Without EDNS the limit is 512 bytes.
    let out = lab.dig("+noedns +ignore big.test.lab A").await;
    assert!(header_flags(&out).contains(&"tc".into()), "{out}");
    assert!(
        out.contains("MSG SIZE  rcvd: ") && !out.contains("ANSWER: 100"),
        "{out}"
    );

    // Cluster names are not cached (disable success/denial cluster.local).
    lab.dig("webpod.default.svc.cluster.local A").await;

    let m = curl(lab.metrics, "/metrics").await;
    let server = format!("server=\"dns://127.0.0.1:{}\"", lab.port);
    let has = |needle: &str| {
        m.lines()
            .any(|l| l.starts_with(needle) && l.contains(&server))
    };
    assert!(has("coredns_cache_hits_total"), "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("coredns_cache_hits_total") && l.contains("type=\"success\"")),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("coredns_cache_hits_total") && l.contains("type=\"denial\"")),
        "{m}"
    );
    assert!(has("coredns_cache_misses_total"), "{m}");
    assert!(has("coredns_cache_requests_total"), "{m}");
    assert!(has("coredns_cache_entries"), "{m}");
    assert!(has("coredns_dns_requests_total"), "{m}");
    assert!(has("coredns_dns_responses_total"), "{m}");
    assert!(m.contains("coredns_forward_requests_total{to=\""), "{m}");
    assert!(
        m.contains("coredns_forward_request_duration_seconds_bucket"),
        "{m}"
    );
    let entries_success = m
        .lines()
        .find(|l| l.starts_with("coredns_cache_entries") && l.contains("type=\"success\""))
        .unwrap();
    assert!(!entries_success.ends_with(" 0"), "{entries_success}");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_dropped_or_formerr() {
    let lab = Lab::start(Arc::new(cluster()), "").await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target: SocketAddr = format!("127.0.0.1:{}", lab.port).parse().unwrap();
    // Too short: dropped. Garbage with a header: FORMERR with our ID.
    sock.send_to(&[1, 2, 3], target).await.unwrap();
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xff; 40]);
    sock.send_to(&garbage, target).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let resp = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(resp.id(), 0xabcd);
    assert_eq!(resp.response_code(), ResponseCode::FormErr);
    // A response (QR set) is never answered: no reflection loops.
    let mut q = Message::new();
    q.set_id(7)
        .set_message_type(MessageType::Response)
        .add_query(Query::query(
            Name::from_ascii("webpod.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
    sock.send_to(&q.to_vec().unwrap(), target).await.unwrap();
    // Still serving.
    let out = lab.dig("webpod.default.svc.cluster.local A").await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    let r = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
    assert!(r.is_err(), "answered a response message");
    lab.stop().await;
}

fn fwd_cfg(max_concurrent: Option<usize>, max_fails: u32) -> ForwardConfig {
    ForwardConfig {
        from: ".".into(),
        to: vec![],
        except: vec![],
        max_concurrent,
        force_tcp: false,
        prefer_udp: false,
        policy: Policy::Sequential,
        max_fails,
        health_check: Duration::from_millis(200),
        expire: Duration::from_secs(10),
    }
}

fn query(name: &str) -> Message {
    let mut q = Message::new();
    q.set_id(42)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_max_concurrent_rejects() {
    // An upstream that never answers keeps one query in flight.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let f = Arc::new(Forwarder::new(
        fwd_cfg(Some(1), 0),
        vec![addr],
        Arc::new(Metrics::new()),
    ));
    let f2 = f.clone();
    let first = tokio::spawn(async move { f2.forward(&query("www.test.lab."), false).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.inflight() == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = f.forward(&query("www.test.lab."), false).await;
    assert!(
        matches!(second, Err(ForwardError::Overloaded(1))),
        "{second:?}"
    );
    first.abort();
    let _ = ForwardTo::Addr(addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_marks_dead_upstream_down_and_fails_over() {
    let up = start_upstream().await;
    // A port nobody listens on: connected UDP gets ECONNREFUSED at once.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let f = Forwarder::new(
        fwd_cfg(None, 1),
        vec![dead, up.addr],
        Arc::new(Metrics::new()),
    );
    let resp = f.forward(&query("www.test.lab."), false).await.unwrap();
    assert_eq!(resp.id(), 42);
    assert_eq!(resp.answers().len(), 1);
    assert!(!f.upstreams[0].healthy(), "dead upstream marked down");
    assert!(f.upstreams[1].healthy());
    // Next query goes straight to the healthy one.
    let before = up.queries.load(Ordering::SeqCst);
    f.forward(&query("www.test.lab."), false).await.unwrap();
    assert_eq!(up.queries.load(Ordering::SeqCst), before + 1);
    // force_tcp path.
    let mut cfg = fwd_cfg(None, 1);
    cfg.force_tcp = true;
    let t = Forwarder::new(cfg, vec![up.addr], Arc::new(Metrics::new()));
    let tcp_before = up.tcp_queries.load(Ordering::SeqCst);
    t.forward(&query("www.test.lab."), false).await.unwrap();
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), tcp_before + 1);
    // The connection is kept and reused.
    assert_eq!(t.upstreams[0].pool.idle(), 1);
    let conns = up.tcp_conns.load(Ordering::SeqCst);
    t.forward(&query("www.test.lab."), false).await.unwrap();
    assert_eq!(
        up.tcp_conns.load(Ordering::SeqCst),
        conns,
        "pooled connection reused"
    );
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), tcp_before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_fed_view_follows_changes() {
    use fibril_store::{MemoryStore, ObjectKey, SharedStore};
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let svc = |ip: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "webpod", "namespace": "default"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        })
    };
    let key = ObjectKey::new("Service", Some("default"), "webpod");
    shared.put(&key, svc("10.96.1.1")).await.unwrap();
    let view = Arc::new(fibril_dns::StoreClusterView::start(shared.clone()));
    let lab = Lab::start(view, "").await;
    let out = lab.dig("webpod.default.svc.cluster.local A").await;
    assert!(section(&out, "ANSWER")[0].ends_with("10.96.1.1"), "{out}");

    // Update without restart.
    shared.put(&key, svc("10.96.2.2")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.dig("webpod.default.svc.cluster.local A").await;
        if section(&out, "ANSWER")
            .first()
            .is_some_and(|l| l.ends_with("10.96.2.2"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "update not seen: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Headless service from an EndpointSlice.
    let hk = ObjectKey::new("Service", Some("default"), "db");
    shared
        .put(
            &hk,
            serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "db", "namespace": "default"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
        )
        .await
        .unwrap();
    let sk = ObjectKey::new("EndpointSlice", Some("default"), "db-abc");
    shared
        .put(
            &sk,
            serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "db-abc", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                              {"addresses": ["10.244.2.6"], "conditions": {"ready": false}}],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.dig("db.default.svc.cluster.local A").await;
        let a = section(&out, "ANSWER");
        if a.len() == 1 && a[0].ends_with("10.244.1.5") {
            break;
        }
        assert!(Instant::now() < deadline, "headless not seen: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Delete: NXDOMAIN.
    shared.delete(&key, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.dig("webpod.default.svc.cluster.local A").await;
        if status(&out) == "NXDOMAIN" {
            break;
        }
        assert!(Instant::now() < deadline, "delete not seen: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_picks_up_corefile_changes() {
    let dir = std::env::temp_dir().join(format!("fibril-dns-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(dir.clone());
    let path = dir.join("Corefile");
    let port = free_port();
    let text = |ttl: u32| {
        format!(".:{port} {{\n bind 127.0.0.1\n reload 1s\n kubernetes cluster.local {{\n  ttl {ttl}\n }}\n}}\n")
    };
    std::fs::write(&path, text(30)).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = fibril_dns::RunOptions {
        corefile: fibril_dns::CorefileSource::Path(path.clone()),
        placeholders: Default::default(),
        substitutions: Vec::new(),
    };
    let task = tokio::spawn(fibril_dns::run(opts, Arc::new(cluster()), async {
        let _ = rx.await;
    }));
    let dig = || async {
        let out = tokio::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=2"])
            .args(["webpod.default.svc.cluster.local", "A"])
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let wait_ttl = |ttl: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = dig().await;
            if section(&out, "ANSWER")
                .first()
                .is_some_and(|l| l.split(' ').nth(1) == Some(ttl))
            {
                return;
            }
            assert!(Instant::now() < deadline, "ttl {ttl} never seen: {out}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_ttl("30").await;
    // A broken file keeps the old config.
    std::fs::write(&path, ".:53 {\n bogus\n}\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_ttl("30").await;
    std::fs::write(&path, text(7)).unwrap();
    wait_ttl("7").await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_is_detected_and_broken() {
    let (port, ready) = (free_port(), free_port());
    let corefile = format!(
        ".:{port} {{\n bind 127.0.0.1\n ready 127.0.0.1:{ready}\n loop\n forward . 127.0.0.1:{port}\n}}\n"
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = fibril_dns::RunOptions {
        corefile: fibril_dns::CorefileSource::Text(corefile),
        placeholders: Default::default(),
        substitutions: Vec::new(),
    };
    let task = tokio::spawn(fibril_dns::run(
        opts,
        Arc::new(ClusterIndex::new()),
        async {
            let _ = rx.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while curl(ready, "/ready").await != "loop" {
        assert!(Instant::now() < deadline, "loop never detected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadbalance_rotates_answers() {
    let lab = Lab::start(Arc::new(cluster()), "").await;
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let out = lab.dig("db.default.svc.cluster.local A").await;
        firsts.insert(section(&out, "ANSWER")[0].clone());
        if firsts.len() > 1 {
            break;
        }
    }
    assert_eq!(firsts.len(), 2, "answer order never changed: {firsts:?}");
    lab.stop().await;
}

/// The seeds' node-local Corefile (placeholders and all, addresses moved to
/// loopback test ports) in front of the cluster DNS: cluster names go to the
/// cluster DNS over TCP, other names to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_local_corefile_chains_to_cluster_dns() {
    let lab = Lab::start(Arc::new(cluster()), "").await;
    let (port, prom, health) = (free_port(), free_port(), free_port());
    let seed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/corefile/seed002_nodelocal"),
    )
    .unwrap();
    let corefile = seed
        .replace("bind 169.254.20.10 10.96.0.10", "bind 127.0.0.1")
        .replace(":53 {", &format!(":{port} {{"))
        .replace("prometheus :9253", &format!("prometheus 127.0.0.1:{prom}"))
        .replace(
            "health 169.254.20.10:8080",
            &format!("health 127.0.0.1:{health}"),
        );
    let mut placeholders = fibril_dns::Placeholders::new();
    placeholders.insert(
        "__PILLAR__CLUSTER__DNS__".into(),
        vec![format!("127.0.0.1:{}", lab.port).parse().unwrap()],
    );
    placeholders.insert(
        "__PILLAR__UPSTREAM__SERVERS__".into(),
        vec![lab.upstream.addr],
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = fibril_dns::RunOptions {
        corefile: fibril_dns::CorefileSource::Text(corefile),
        placeholders,
        substitutions: Vec::new(),
    };
    let task = tokio::spawn(fibril_dns::run(
        opts,
        Arc::new(ClusterIndex::new()),
        async {
            let _ = rx.await;
        },
    ));
    let dig = |args: &'static str| async move {
        let out = tokio::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=3"])
            .args(args.split_whitespace())
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = dig("webpod.default.svc.cluster.local A").await;
        if section(&out, "ANSWER")
            .first()
            .is_some_and(|l| l.ends_with("A 10.96.152.212"))
        {
            // The cluster DNS's authoritative flag passes through.
            assert!(header_flags(&out).contains(&"aa".into()), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-local never answered: {out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = dig("-x 10.96.152.212").await;
    assert!(
        section(&out, "ANSWER")[0].ends_with("PTR webpod.default.svc.cluster.local."),
        "{out}"
    );
    let out = dig("www.test.lab A").await;
    assert!(
        section(&out, "ANSWER")[0].ends_with("A 192.0.2.10"),
        "{out}"
    );
    // The cluster DNS saw the cluster names over TCP (force_tcp).
    let m = curl(lab.metrics, "/metrics").await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("coredns_dns_requests_total")
                && l.contains("proto=\"tcp\"")
                && l.contains("zone=\".\"")),
        "{m}"
    );
    // The node-local cache's own metrics and health.
    let nm = curl(prom, "/metrics").await;
    assert!(nm.contains("coredns_cache_misses_total"), "{nm}");
    assert_eq!(curl(health, "/health").await, "OK");
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    lab.stop().await;
}

/// Shutdown with `health { lameduck }`: /ready fails at once (so endpoints
/// drain) while DNS keeps answering until the lameduck period ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lameduck_keeps_answering_while_not_ready() {
    let (port, health, ready) = (free_port(), free_port(), free_port());
    let corefile = format!(
        ".:{port} {{\n bind 127.0.0.1\n health 127.0.0.1:{health} {{\n  lameduck 3s\n }}\n ready 127.0.0.1:{ready}\n kubernetes cluster.local\n}}\n"
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = fibril_dns::RunOptions {
        corefile: fibril_dns::CorefileSource::Text(corefile),
        placeholders: Default::default(),
        substitutions: Vec::new(),
    };
    let task = tokio::spawn(fibril_dns::run(opts, Arc::new(cluster()), async {
        let _ = rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(ready, "/ready").await != "OK" {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tx.send(());
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(ready, "/ready").await != "lameduck" {
        assert!(Instant::now() < deadline, "never in lameduck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(curl(health, "/health").await, "OK");
    let out = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=2"])
        .args(["webpod.default.svc.cluster.local", "A"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(status(&out), "NOERROR", "{out}");
    task.await.unwrap().unwrap();
    // Stopped: the port is free again.
    assert!(std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok());
}

/// The Corefile read from a ConfigMap in the store (the lab's
/// kube-system/coredns) and reloaded when the ConfigMap changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corefile_from_configmap_reloads() {
    use fibril_store::{MemoryStore, ObjectKey, SharedStore};
    let store: SharedStore = Arc::new(MemoryStore::new());
    let port = free_port();
    let cm = |ttl: u32| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": format!(".:{port} {{\n bind 127.0.0.1\n reload 1s\n kubernetes cluster.local {{\n  ttl {ttl}\n }}\n}}\n")}})
    };
    let key = ObjectKey::new("ConfigMap", Some("kube-system"), "coredns");
    store.put(&key, cm(30)).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = fibril_dns::RunOptions {
        corefile: fibril_dns::CorefileSource::ConfigMap {
            store: store.clone(),
            namespace: "kube-system".into(),
            name: "coredns".into(),
            key: "Corefile".into(),
        },
        placeholders: Default::default(),
        substitutions: Vec::new(),
    };
    let task = tokio::spawn(fibril_dns::run(opts, Arc::new(cluster()), async {
        let _ = rx.await;
    }));
    let wait_ttl = |ttl: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = tokio::process::Command::new("dig")
                .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=2"])
                .args(["webpod.default.svc.cluster.local", "A"])
                .output()
                .await
                .unwrap();
            let out = String::from_utf8_lossy(&out.stdout).to_string();
            if section(&out, "ANSWER")
                .first()
                .is_some_and(|l| l.split(' ').nth(1) == Some(ttl))
            {
                return;
            }
            assert!(Instant::now() < deadline, "ttl {ttl} never seen: {out}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_ttl("30").await;
    store.put(&key, cm(9)).await.unwrap();
    wait_ttl("9").await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// `bind` to an address not (yet) on any interface works (IP_FREEBIND), as
/// node-local mode needs for 169.254.20.10 and the kube-dns ClusterIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_nonlocal_address() {
    let port = free_port();
    let hport = free_port();
    let cf = fibril_dns::parse_corefile(&format!(
        ".:{port} {{\n bind 198.51.100.53 127.0.0.1\n kubernetes cluster.local\n health 198.51.100.53:{hport}\n}}\n"
    ))
    .unwrap();
    let running = fibril_dns::start(
        &cf,
        Arc::new(cluster()),
        Arc::new(Metrics::new()),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(running.dns_addrs.len(), 2);
    // The health endpoint too (the hostNetwork node-local Corefile's
    // `health 169.254.20.10:8080`).
    assert_eq!(
        running.http_addrs,
        vec![format!("198.51.100.53:{hport}").parse().unwrap()]
    );
    let out = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=2"])
        .args(["webpod.default.svc.cluster.local", "A"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(status(&out), "NOERROR", "{out}");
    running.stop().await;
}
