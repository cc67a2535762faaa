//! Queries per second and latency percentiles of `fibril dns` on one core
//! (each server runs on a single-threaded runtime) with a bounded load
//! generator (a fixed number of outstanding UDP queries) on loopback, and
//! dnsmasq (Debian's dnsmasq-base, single-threaded) as a node cache next to
//! the node-local `fibril dns` in the same run. `<name> <value> <unit>`
//! lines:
//!
//! ```text
//! dns_cluster_zone_qps <n> qps        # kubernetes plugin answers
//! dns_cache_hit_qps <n> qps           # cluster DNS, forwarded name, cached
//! dns_nodelocal_cluster_hit_qps ...   # node-local Corefile, cluster name cached
//! dns_nodelocal_external_hit_qps ...  # node-local Corefile, other name cached
//! dnsmasq_cluster_hit_qps ...         # dnsmasq in the same place
//! dnsmasq_external_hit_qps ...
//! ```
//!
//! with `_p50_us`/`_p99_us` lines for each. Run with `cargo bench -p
//! fibril-dns --bench qps`. Env `FIBRIL_BENCH_QUERIES` (default 50000) and
//! `FIBRIL_BENCH_CONCURRENCY` (default 32). Nothing is asserted; without
//! dnsmasq installed its lines are skipped (said on stderr).

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
    let cluster = spawn_server(corefile, idx, Default::default());
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_answering(target, "webpod.default.svc.cluster.local.");

    // The node-local cache: the seeds' node-local Corefile (cluster zones
    // over TCP to the cluster DNS, the rest to the upstream) on loopback.
    let nl_port = free_port();
    let nl_corefile =
        fibril_dns::node_local_corefile(&["127.0.0.1".parse().unwrap()], "cluster.local")
            .replace(":53 {", &format!(":{nl_port} {{"))
            .replace("prometheus :9253\n", "")
            .replace(
                "health 127.0.0.1:8080",
                &format!("health 127.0.0.1:{}", free_port()),
            );
    let mut placeholders = fibril_dns::Placeholders::new();
    placeholders.insert("__PILLAR__CLUSTER__DNS__".into(), vec![target]);
    placeholders.insert("__PILLAR__UPSTREAM__SERVERS__".into(), vec![up]);
    let nodelocal = spawn_server(nl_corefile, ClusterIndex::new(), placeholders);
    let nl_target: SocketAddr = format!("127.0.0.1:{nl_port}").parse().unwrap();
    wait_answering(nl_target, "webpod.default.svc.cluster.local.");

    let dnsmasq = Dnsmasq::start(target, up);
    if let Some(d) = &dnsmasq {
        wait_answering(d.addr, "webpod.default.svc.cluster.local.");
    }

    let mut runs = vec![
        (
            "dns_cluster_zone",
            target,
            "webpod.default.svc.cluster.local.",
        ),
        ("dns_cache_hit", target, "www.example.test."),
        (
            "dns_nodelocal_cluster_hit",
            nl_target,
            "webpod.default.svc.cluster.local.",
        ),
        ("dns_nodelocal_external_hit", nl_target, "www.example.test."),
    ];
    if let Some(d) = &dnsmasq {
        runs.push((
            "dnsmasq_cluster_hit",
            d.addr,
            "webpod.default.svc.cluster.local.",
        ));
        runs.push(("dnsmasq_external_hit", d.addr, "www.example.test."));
    }
    eprintln!("queries {total}, concurrency {conc}, each server on 1 core");
    for (label, addr, name) in runs {
        let _ = load(addr, name, conc, conc); // warm (fills the cache)
        let (qps, lat) = load(addr, name, total, conc);
        println!("{label}_qps {qps:.0} qps");
        println!("{label}_p50_us {} us", pct(&lat, 0.50));
        println!("{label}_p99_us {} us", pct(&lat, 0.99));
    }
    drop(dnsmasq);
    nodelocal.stop();
    cluster.stop();
}

/// A `fibril dns` on its own thread with a single-threaded runtime.
struct Server {
    tx: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    fn stop(self) {
        let _ = self.tx.send(());
        self.thread.join().unwrap();
    }
}

fn spawn_server(
    corefile: String,
    idx: ClusterIndex,
    placeholders: fibril_dns::Placeholders,
) -> Server {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let opts = fibril_dns::RunOptions {
                corefile: fibril_dns::CorefileSource::Text(corefile),
                placeholders,
                substitutions: Vec::new(),
            };
            let stop = async move {
                let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            };
            fibril_dns::run(opts, Arc::new(idx), stop).await.unwrap();
        });
    });
    Server { tx, thread }
}

/// Waits until `target` answers a query for `name` (a refused or lost
/// query is retried).
fn wait_answering(target: SocketAddr, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1500];
    loop {
        let _ = s.send_to(&query(7, name), target);
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if Message::from_vec(&buf[..n]).is_ok_and(|m| m.id() == 7) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{target} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// dnsmasq as a node cache: cluster.local to the cluster DNS, the rest to
/// the upstream, a 10000-entry cache. Killed on drop.
struct Dnsmasq {
    addr: SocketAddr,
    child: std::process::Child,
}

impl Dnsmasq {
    fn start(cluster: SocketAddr, upstream: SocketAddr) -> Option<Self> {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            eprintln!("dnsmasq not installed (Debian dnsmasq-base): skipping its figures");
            return None;
        };
        let port = free_port();
        let hash = |a: SocketAddr| format!("{}#{}", a.ip(), a.port());
        let child = std::process::Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--pid-file",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--cache-size=10000",
                "--dns-forward-max=1000",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--server=/cluster.local/{}", hash(cluster)))
            .arg(format!("--server={}", hash(upstream)))
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(Self {
                addr: format!("127.0.0.1:{port}").parse().unwrap(),
                child,
            }),
            Err(e) => {
                eprintln!("dnsmasq did not start ({e}): skipping its figures");
                None
            }
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
