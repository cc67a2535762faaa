//! Service load-balancing figures (root; `cargo bench -p fibril-datapath
//! --bench lb`). One `<name> <value> <unit>` line per figure, medians of
//! several runs:
//! - map programming: 10,000 services with 100,000 backends through
//!   [`LoadBalancer::upsert_many`], an unchanged resync, one incremental
//!   update;
//! - connection setup latency (TCP connect + first byte, pod -> ClusterIP ->
//!   pod on one node) with 10, 1,000 and 10,000 services programmed, for
//!   Fibril's BPF maps and for a kube-proxy-iptables-model ruleset (a linear
//!   nftables chain with one rule per service, the measured service's rule
//!   last, `numgen random` DNAT chains per service; this machine has no
//!   iptables binary).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use fibril_datapath::lb::{BackendSpec, Frontend, LoadBalancer, ServiceSpec};
use fibril_datapath::testing::bed::TestBed;
use fibril_datapath::testing::fixture::{
    eventually, privileged, unique_name, ChildGuard, TestNetns, TestPod,
};
use fibril_datapath::{Datapath, DatapathConfig, DatapathOptions, Device};

const PY: &str = "/usr/bin/python3";
const SERVER: &str = r#"
import socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", int(sys.argv[1]))); t.listen(256)
while True:
    c, a = t.accept(); c.sendall(b"x"); c.close()
"#;
const CLIENT: &str = r#"
import socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lat = []
for i in range(n):
    t0 = time.perf_counter_ns()
    s = socket.create_connection((ip, port), timeout=2)
    s.recv(1)
    lat.append(time.perf_counter_ns() - t0)
    s.close()
lat.sort()
print(lat[len(lat) // 2] / 1000.0)
"#;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const RUNS: usize = 3;
const CONNECTS: u32 = 300;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn dummy_spec(i: u32) -> ServiceSpec {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
    ServiceSpec::cluster_ip(
        Frontend::tcp(vip, 80),
        (0..3)
            .map(|j| {
                BackendSpec::new(
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 3 + j),
                    8080,
                    false,
                )
            })
            .collect(),
    )
}

fn big_spec(i: u32) -> ServiceSpec {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
    ServiceSpec::cluster_ip(
        Frontend::tcp(vip, 80),
        (0..10)
            .map(|j| {
                BackendSpec::new(
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 10 + j),
                    8080,
                    false,
                )
            })
            .collect(),
    )
}

fn programming() {
    let specs: Vec<ServiceSpec> = (0..10_000).map(big_spec).collect();
    let (mut bulk, mut resync, mut update) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let bed = TestBed::new(
            DatapathConfig {
                load_balancing: true,
                ..Default::default()
            },
            "",
        );
        let mut lb = LoadBalancer::open(&bed.maps()).unwrap();
        let t = Instant::now();
        lb.upsert_many(&specs).unwrap();
        bulk.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        lb.upsert_many(&specs).unwrap();
        resync.push(t.elapsed().as_secs_f64() * 1e3);
        let mut ups = Vec::new();
        for k in 0..101u32 {
            let mut s = big_spec(k * 97);
            s.backends[k as usize % 10].port = 9000 + k as u16;
            let t = Instant::now();
            lb.upsert(&s).unwrap();
            ups.push(t.elapsed().as_secs_f64() * 1e6);
        }
        update.push(median(ups));
    }
    println!("svc_program_10k_100k_ms {:.1} ms", median(bulk));
    println!("svc_resync_10k_unchanged_ms {:.1} ms", median(resync));
    println!("svc_update_us {:.1} us", median(update));
}

struct Scripts {
    dir: tempfile::TempDir,
}

impl Scripts {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.py"), SERVER).unwrap();
        std::fs::write(dir.path().join("client.py"), CLIENT).unwrap();
        Self { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn start_server(ns: &TestNetns, s: &Scripts, port: u16) -> ChildGuard {
    let g = ns.spawn(&format!("{PY} {} {port}", s.path("server.py")));
    eventually(Duration::from_secs(10), || {
        ns.sh_output(&format!(
            "{PY} -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'"
        ))
        .status
        .success()
        .then_some(())
    })
    .expect("server did not start");
    g
}

/// Median (over RUNS) of the median connect latency in us.
fn connect_latency(client: &TestNetns, s: &Scripts, dst: Ipv4Addr) -> f64 {
    // Warm-up (ARP, caches).
    let _ = client.sh_output(&format!("{PY} {} {dst} 80 20", s.path("client.py")));
    let mut v = Vec::new();
    for _ in 0..RUNS {
        let out = client.sh(&format!("{PY} {} {dst} 80 {CONNECTS}", s.path("client.py")));
        v.push(out.trim().parse::<f64>().expect("client output"));
    }
    median(v)
}

/// Pod -> ClusterIP -> pod on one Fibril node.
fn bpf_scaling(s: &Scripts) -> Vec<(u32, f64)> {
    let router = Ipv4Addr::new(10, 244, 0, 1);
    let node = TestNetns::new("lbbn");
    node.sh(&format!(
        "sysctl -qw net.ipv4.ip_forward=1 && \
         ip link add fibril_host type veth peer name fibril_net && \
         ip addr add {router}/32 dev fibril_host && ip link set fibril_host up && \
         ip link set fibril_net up"
    ));
    let pin_dir = Path::new("/sys/fs/bpf/fibril-test").join(unique_name("lbbench"));
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = Datapath::destroy(&self.0);
            let _ = std::fs::remove_dir("/sys/fs/bpf/fibril-test");
        }
    }
    let _unpin = Unpin(pin_dir.clone());
    let mut dp = Datapath::load(DatapathOptions {
        pin_dir: pin_dir.clone(),
        netns: node.netns(),
        config: DatapathConfig {
            node_ip: Ipv4Addr::new(192, 168, 10, 100),
            router_ip: router,
            host_device: Device::Name("fibril_host".into()),
            native_routing_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
            load_balancing: true,
            trace_sample: 0,
            ..Default::default()
        },
    })
    .unwrap();
    dp.attach_host_device("fibril_host").unwrap();
    let client = TestPod::new(&node, "lxcc", Ipv4Addr::new(10, 244, 0, 10), router);
    let server = TestPod::new(&node, "lxcs", Ipv4Addr::new(10, 244, 0, 11), router);
    let maps = dp.maps();
    let mut eps = maps.endpoints().unwrap();
    for (i, p) in [&client, &server].into_iter().enumerate() {
        dp.attach_endpoint(&p.host_if).unwrap();
        eps.upsert(p.ip, &p.endpoint_info(&node, 1000 + i as u32, i as u16 + 1))
            .unwrap();
    }
    let _srv = start_server(&server.ns, s, 8080);
    let mut lb = LoadBalancer::open(&maps).unwrap();
    lb.upsert(&ServiceSpec::cluster_ip(
        Frontend::tcp(VIP, 80),
        vec![BackendSpec::new(server.ip, 8080, true)],
    ))
    .unwrap();
    let mut out = Vec::new();
    let mut have = 1;
    for n in [10u32, 1_000, 10_000] {
        let more: Vec<ServiceSpec> = (have..n).map(dummy_spec).collect();
        lb.upsert_many(&more).unwrap();
        have = n;
        out.push((n, connect_latency(&client.ns, s, VIP)));
    }
    drop(client);
    drop(server);
    out
}

/// The same through a kube-proxy-iptables-model nftables ruleset on a plain
/// routed node (no Fibril).
fn nft_scaling(s: &Scripts) -> Vec<(u32, f64)> {
    let node = TestNetns::new("lbbi");
    let client = TestNetns::new("lbbic");
    let server = TestNetns::new("lbbis");
    node.sh(&format!(
        "sysctl -qw net.ipv4.ip_forward=1 && \
         ip link add vc type veth peer name eth0 netns {c} && \
         ip link add vs type veth peer name eth0 netns {sv} && \
         ip addr add 10.245.0.1/24 dev vc && ip addr add 10.245.1.1/24 dev vs && \
         ip link set vc up && ip link set vs up",
        c = client.name(),
        sv = server.name()
    ));
    client.sh("ip addr add 10.245.0.10/24 dev eth0 && ip link set eth0 up && ip route add default via 10.245.0.1");
    server.sh("ip addr add 10.245.1.10/24 dev eth0 && ip link set eth0 up && ip route add default via 10.245.1.1");
    let _srv = start_server(&server, s, 8080);
    let mut out = Vec::new();
    for n in [10u32, 1_000, 10_000] {
        // KUBE-SERVICES: one rule per service; the measured one last.
        let mut rules = String::from(
            "flush ruleset\ntable ip kp {\n chain prerouting { type nat hook prerouting priority -100; jump services; }\n chain postrouting { type nat hook postrouting priority 100; }\n",
        );
        for i in 1..n {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
            rules.push_str(&format!(
                " chain svc{i} {{ dnat to numgen random mod 3 map {{ 0 : 10.128.{a}.1, 1 : 10.128.{a}.2, 2 : 10.128.{a}.3 }}; }}\n",
                a = i % 250
            ));
            let _ = vip;
        }
        rules.push_str(" chain svc0 { meta l4proto tcp dnat to 10.245.1.10:8080; }\n");
        rules.push_str(" chain services {\n");
        for i in 1..n {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
            rules.push_str(&format!("  ip daddr {vip} tcp dport 80 jump svc{i};\n"));
        }
        rules.push_str(&format!(
            "  ip daddr {VIP} tcp dport 80 jump svc0;\n }}\n}}\n"
        ));
        let file = s.dir.path().join("rules.nft");
        std::fs::write(&file, rules).unwrap();
        node.sh(&format!("nft -f {}", file.display()));
        out.push((n, connect_latency(&client, s, VIP)));
    }
    out
}

fn main() {
    if !privileged() {
        eprintln!("lb bench: needs root (BPF, namespaces); skipped");
        return;
    }
    // `cargo bench` passes --bench; nothing else to parse.
    programming();
    let s = Scripts::new();
    let bpf = bpf_scaling(&s);
    for (n, us) in &bpf {
        println!("svc_connect_{n}_us {us:.1} us");
    }
    println!("svc_connect_10k_vs_10 {:.3} ratio", bpf[2].1 / bpf[0].1);
    let nft = nft_scaling(&s);
    for (n, us) in &nft {
        println!("svc_connect_iptables_{n}_us {us:.1} us");
    }
    println!(
        "svc_connect_iptables_10k_vs_10 {:.3} ratio",
        nft[2].1 / nft[0].1
    );
}
