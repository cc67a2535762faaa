//! Queries per second and latency percentiles of `fibril dns` on one core
//! (the server runs on a single-threaded runtime) with a bounded load
//! generator (a fixed number of outstanding UDP queries) on loopback:
//!
//! ```text
//! dns_cluster_zone_qps <qps> p50_us <..> p99_us <..>
//! dns_cache_hit_qps <qps> p50_us <..> p99_us <..>
//! ```
//!
//! Run with `cargo bench -p fibril-dns --bench qps`. Env
//! `FIBRIL_BENCH_QUERIES` (default 50000) and `FIBRIL_BENCH_CONCURRENCY`
//! (default 32). Nothing is asserted.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_dns::{ClusterIndex, PortRecord, ServiceKind, ServiceRecord};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Message::new();
    q.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    q.to_vec().unwrap()
}

/// A trivial upstream answering every A query with 192.0.2.1, TTL 300.
fn upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, src)) = sock.recv_from(&mut buf) {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut m = Message::new();
            m.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true);
            m.add_queries(req.queries().iter().cloned());
            if let Some(q) = req.queries().first() {
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::A(A::new(192, 0, 2, 1)),
                ));
            }
            let _ = sock.send_to(&m.to_vec().unwrap(), src);
        }
    });
    addr
}

/// Sends `total` queries for `name` keeping `conc` outstanding; returns
/// (qps, sorted latencies).
fn load(target: SocketAddr, name: &str, total: usize, conc: usize) -> (f64, Vec<Duration>) {
    let per = total.div_ceil(conc);
    let start = Instant::now();
    let handles: Vec<_> = (0..conc)
        .map(|w| {
            let name = name.to_string();
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(target).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut lat = Vec::with_capacity(per);
                let mut buf = [0u8; 1500];
                for i in 0..per {
                    let id = ((w * per + i) & 0xffff) as u16;
                    let q = query(id, &name);
                    let t = Instant::now();
                    s.send(&q).unwrap();
                    // Timeouts count as 2 s latencies (visible in p99).
                    loop {
                        match s.recv(&mut buf) {
                            Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => break,
                            Ok(_) => continue,
                            Err(_) => break,
                        }
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / secs, all)
}

fn pct(v: &[Duration], p: f64) -> u128 {
    v[((v.len() as f64 - 1.0) * p) as usize].as_micros()
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let total = if quick {
        200
    } else {
        env("FIBRIL_BENCH_QUERIES", 50_000)
    };
    let conc = env("FIBRIL_BENCH_CONCURRENCY", 32);

    let mut idx = ClusterIndex::new();
    idx.upsert_service(ServiceRecord {
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
    let up = upstream();
    let port = free_port();
    // The seeds' CoreDNS Corefile on a test port.
    let corefile = format!(
        ".:{port} {{\n errors\n bind 127.0.0.1\n kubernetes cluster.local in-addr.arpa ip6.arpa {{\n  pods insecure\n  fallthrough in-addr.arpa ip6.arpa\n  ttl 30\n }}\n forward . {up} {{\n  max_concurrent 1000\n }}\n cache 30 {{\n  disable success cluster.local\n  disable denial cluster.local\n }}\n loadbalance\n}}\n"
    );
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let opts = fibril_dns::RunOptions {
                corefile: fibril_dns::CorefileSource::Text(corefile),
                placeholders: Default::default(),
                substitutions: Vec::new(),
            };
            let stop = async move {
                let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            };
            fibril_dns::run(opts, Arc::new(idx), stop).await.unwrap();
        });
    });
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while load(target, "webpod.default.svc.cluster.local.", 1, 1).1[0] >= Duration::from_secs(1) {
        assert!(Instant::now() < deadline, "server did not start");
    }
    for (label, name) in [
        ("dns_cluster_zone", "webpod.default.svc.cluster.local."),
        ("dns_cache_hit", "www.example.test."),
    ] {
        let _ = load(target, name, conc, conc); // warm (fills the cache)
        let (qps, lat) = load(target, name, total, conc);
        println!(
            "{label}_qps {qps:.0} p50_us {} p99_us {} (queries {total}, concurrency {conc}, server on 1 core)",
            pct(&lat, 0.50),
            pct(&lat, 0.99)
        );
    }
    let _ = tx.send(());
    server.join().unwrap();
}
