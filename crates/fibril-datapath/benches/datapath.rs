//! `make bench-datapath` (root): datapath figures, one `<name> <value>
//! <unit>` line each on stdout (progress on stderr): absolutes are medians
//! of [`TRAFFIC_RUNS`] (traffic) or [`RUNS`] (services) runs; a ratio is the
//! median of its per-run ratios (both sides measured in the same run, paths
//! interleaved in a rotating order so drift and other load on the shared
//! machine hit all of them alike).
//!
//! Topologies are built here, in namespaces only (unique names with the
//! pid), and removed on exit, on panic (Drop guards) and on Ctrl-C/SIGTERM
//! (a signal thread kills our children and deletes our namespaces and pin
//! directories). A watchdog ends the run after [`WATCHDOG`].
//!
//! - Same node: pod -> pod through Fibril (endpoint programs, load
//!   balancing on with 10 services, trace aggregation on, as deployed) vs a
//!   bare veth pair (the limit) vs a Linux bridge with br_netfilter and a
//!   kube-proxy-iptables-model ruleset (nftables, the node netns only).
//!   iperf3 one TCP stream (3 s) and sockperf TCP ping-pong (half RTT, p50;
//!   client and server pinned to different CPUs).
//! - Across nodes (pod -> node -> router -> node -> pod): plain kernel
//!   routing without Fibril vs Fibril native routing, VXLAN, Geneve.
//! - Services: TCP connect() latency pod -> ClusterIP with 10, 1,000, 10,000
//!   services (3 backends each) in Fibril's maps vs the kube-proxy model
//!   (KUBE-SERVICES: one rule per service, the measured one last; per
//!   service a chain with probability-based backend selection and one chain
//!   per endpoint, as kube-proxy's iptables mode writes them).
//! - Programming: 10,000 services with 100,000 backends through
//!   `LoadBalancer::upsert_many`, and one incremental update.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fibril_datapath::lb::{BackendSpec, Frontend, LoadBalancer, ServiceSpec};
use fibril_datapath::testing::bed::TestBed;
use fibril_datapath::testing::fixture::{eventually, unique_name, ChildGuard, TestNetns, TestPod};
use fibril_datapath::{Datapath, DatapathConfig, DatapathOptions, Device, Tunnel};

/// Runs of the service-scaling and programming figures.
const RUNS: usize = 3;
/// Runs of the throughput/latency figures (noisier: the machine is shared).
const TRAFFIC_RUNS: usize = 5;
const IPERF_SECS: u32 = 3;
const SOCKPERF_SECS: u32 = 2;
const CONNECTS: usize = 2_000;
const WATCHDOG: Duration = Duration::from_secs(14 * 60);
const PIN_ROOT: &str = "/sys/fs/bpf/fibril-test";
const IPERF_PORT: u16 = 5201;
const SOCKPERF_PORT: u16 = 11111;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const BACKEND_PORTS: [u16; 3] = [8080, 8081, 8082];
/// Latency clients and servers (sockperf, connects) run on fixed, different
/// CPUs: on 2 cores, whether a ping-pong pair shares a core changes its
/// latency about 2x, which would otherwise land on one path or another at
/// random. iperf3 is left to the scheduler: pinned apart, one stream drops
/// from ~25 to ~8 Gbit/s on every path (a pod is not pinned either).
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
const SVC_LEVELS: [usize; 3] = [10, 1_000, 10_000];

// ---------------------------------------------------------------- helpers

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median of the per-run ratios `num[k] / den[k]`: both sides of a ratio
/// come from the same run, so load that comes and goes on the machine
/// cancels out (the printed absolutes are medians of their own).
fn ratio(num: &[f64], den: &[f64]) -> f64 {
    median(num.iter().zip(den).map(|(n, d)| n / d).collect())
}

/// `0..n` starting at `run % n`.
fn rotated(n: usize, run: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + run) % n)
}

fn figure(name: &str, value: f64, unit: &str) {
    let prec = if value.abs() < 10.0 { 3 } else { 1 };
    println!("{name} {value:.prec$} {unit}");
}

fn progress(msg: &str) {
    eprintln!("[bench-datapath] {msg}");
}

/// Our pid appears in every namespace and pin name ([`unique_name`]):
/// `<prefix><pid>x<n>` with an alphabetic prefix.
fn is_ours(name: &str) -> bool {
    let pid = std::process::id().to_string();
    let Some(pos) = name.rfind('x') else {
        return false;
    };
    let (head, tail) = (&name[..pos], &name[pos + 1..]);
    !tail.is_empty()
        && tail.bytes().all(|b| b.is_ascii_digit())
        && head.ends_with(&pid)
        && !head[..head.len() - pid.len()]
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_digit())
}

/// Emergency cleanup (signal, watchdog): our spawned children (each leads
/// its own process group), then our pin directories and namespaces.
fn cleanup_everything() {
    let me = std::process::id() as i32;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the `(comm)`: state ppid pgrp ...
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(me) {
                // SAFETY: kill on the pid of our own child (and its group
                // when it leads one); no memory is involved.
                unsafe {
                    if libc::getpgid(pid) == pid {
                        libc::kill(-pid, libc::SIGKILL);
                    }
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(PIN_ROOT) {
        for e in rd.flatten() {
            if is_ours(&e.file_name().to_string_lossy()) {
                let _ = Datapath::destroy(&e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let _ = std::fs::remove_dir(PIN_ROOT);
    }
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix("fibril-t-").is_some_and(is_ours) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &name])
                    .status();
            }
        }
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread (call first, before any
/// thread exists) and handles them on a dedicated thread; also starts the
/// watchdog.
fn install_cleanup_handlers() {
    // SAFETY: plain sigset manipulation on a local, zero-initialised set;
    // pthread_sigmask only changes this (the only) thread's mask, which the
    // threads created later inherit.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is a valid initialised sigset; `sig` a valid out
        // pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        progress(&format!("signal {sig}: cleaning up"));
        cleanup_everything();
        std::process::exit(130);
    });
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        progress("watchdog: run took too long, cleaning up");
        cleanup_everything();
        std::process::exit(2);
    });
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `f` on a new thread inside `ns` (setns only affects that thread).
fn spawn_in<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let file = std::fs::File::open(ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
    std::thread::spawn(move || {
        // SAFETY: setns on this fresh thread with a valid netns fd; only
        // this thread's network namespace changes.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

fn wait_listening(ns: &TestNetns, port: u16) {
    eventually(Duration::from_secs(10), || {
        let o = ns.sh_output(&format!("ss -Hltn 'sport = :{port}'"));
        (!o.stdout.is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("nothing listens on {port} in {}", ns.name()));
}

/// Persistent iperf3 and sockperf servers bound to `ip` inside `ns`.
struct Servers {
    _guards: Vec<ChildGuard>,
}

fn start_servers(ns: &TestNetns, ip: Ipv4Addr) -> Servers {
    let a = ns.spawn(&format!("iperf3 -s -B {ip} -p {IPERF_PORT}"));
    let b = ns.spawn(&format!(
        "taskset -c {SERVER_CPU} sockperf sr --tcp -i {ip} -p {SOCKPERF_PORT} >/dev/null 2>&1"
    ));
    wait_listening(ns, IPERF_PORT);
    wait_listening(ns, SOCKPERF_PORT);
    Servers {
        _guards: vec![a, b],
    }
}

/// iperf3 single TCP stream, receiver Gbit/s.
fn iperf(client: &TestNetns, dst: Ipv4Addr) -> f64 {
    let mut last = String::new();
    for _ in 0..3 {
        let o = client.sh_output(&format!(
            "iperf3 -c {dst} -p {IPERF_PORT} -t {IPERF_SECS} -f g"
        ));
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let v = s.lines().filter(|l| l.contains("receiver")).find_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let i = t.iter().position(|x| *x == "Gbits/sec")?;
            t.get(i.checked_sub(1)?)?.parse::<f64>().ok()
        });
        if let Some(v) = v {
            return v;
        }
        // A busy server (previous test still closing): retry.
        last = format!("{s}{}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("iperf3 -> {dst} in {}: {last}", client.name());
}

/// sockperf TCP ping-pong, p50 of half the round trip in us.
fn sockperf(client: &TestNetns, dst: Ipv4Addr) -> f64 {
    let o = client.sh_output(&format!(
        "taskset -c {CLIENT_CPU} sockperf pp --tcp -i {dst} -p {SOCKPERF_PORT} -t {SOCKPERF_SECS} 2>&1"
    ));
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.lines()
        .find_map(|l| {
            let rest = l.split("percentile 50.000 =").nth(1)?;
            rest.trim().parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("sockperf -> {dst} in {}: {s}", client.name()))
}

/// Accept-and-drop TCP servers on `ports` inside a namespace; stopped on
/// drop.
struct AcceptServers {
    stop: Arc<AtomicBool>,
    fds: Vec<i32>,
    threads: Vec<JoinHandle<()>>,
}

fn accept_servers(ns: &TestNetns, ip: Ipv4Addr, ports: &[u16]) -> AcceptServers {
    let stop = Arc::new(AtomicBool::new(false));
    let mut fds = Vec::new();
    let mut threads = Vec::new();
    for &port in ports {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = stop.clone();
        threads.push(spawn_in(&ns.path(), move || {
            pin_thread(SERVER_CPU);
            let l = TcpListener::bind((ip, port)).expect("bind");
            tx.send(l.as_raw_fd()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }
        }));
        fds.push(rx.recv().unwrap());
    }
    AcceptServers { stop, fds, threads }
}

impl Drop for AcceptServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for fd in &self.fds {
            // SAFETY: the listener fd is alive until its thread returns,
            // which needs this shutdown to wake up its accept().
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `n` sequential TCP connects from inside `client` to `dst:port`
/// (connect() time = the handshake), closed with RST (no TIME_WAIT).
/// Returns the median in us.
fn connects(client: &TestNetns, dst: Ipv4Addr, port: u16, n: usize) -> f64 {
    spawn_in(&client.path(), move || {
        pin_thread(CLIENT_CPU);
        let addr = SocketAddr::from((dst, port));
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid socket fd and a correctly sized linger struct.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
        median(lat)
    })
    .join()
    .unwrap()
}

/// One sample: a warm-up (neighbours, caches), then [`CONNECTS`] measured.
fn connect_sample(client: &TestNetns, dst: Ipv4Addr) -> f64 {
    connects(client, dst, 80, 100);
    connects(client, dst, 80, CONNECTS)
}

// ------------------------------------------------------------- topologies

/// Destroys a node's pins (detaching its programs); declared before the
/// namespaces in the structs below so it runs first.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = Datapath::destroy(&self.0);
        let _ = std::fs::remove_dir(PIN_ROOT);
    }
}

/// A Fibril node: `fibril_host`/`fibril_net` with the router IP, pods on
/// `lxc*` veths, the datapath loaded and attached.
struct FibrilNode {
    _pins: PinGuard,
    dp: Datapath,
    pods: Vec<TestPod>,
    ns: TestNetns,
}

impl FibrilNode {
    fn new(ns: TestNetns, router: Ipv4Addr, config: DatapathConfig) -> Self {
        ns.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && \
             sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1; \
             ip link add fibril_host type veth peer name fibril_net && \
             ip addr add {router}/32 dev fibril_host && \
             ip link set fibril_host up && ip link set fibril_net up"
        ));
        let pin_dir = Path::new(PIN_ROOT).join(unique_name("bench"));
        let pins = PinGuard(pin_dir.clone());
        let underlay = matches!(config.underlay_device, Device::Name(_));
        let mut dp = Datapath::load(DatapathOptions {
            pin_dir,
            netns: ns.netns(),
            config,
        })
        .unwrap_or_else(|e| panic!("load datapath: {e}: {:?}", std::error::Error::source(&e)));
        dp.attach_host_device("fibril_host").unwrap();
        if underlay {
            dp.attach_underlay("eth1").unwrap();
        }
        Self {
            _pins: pins,
            dp,
            pods: Vec::new(),
            ns,
        }
    }

    fn add_pod(&mut self, host_if: &str, ip: Ipv4Addr, router: Ipv4Addr, mtu: u32) -> usize {
        let pod = TestPod::new(&self.ns, host_if, ip, router);
        if mtu != 1500 {
            pod.ns.sh(&format!("ip link set eth0 mtu {mtu}"));
            self.ns.sh(&format!("ip link set {host_if} mtu {mtu}"));
        }
        self.dp.attach_endpoint(host_if).unwrap();
        let idx = self.pods.len();
        let info = pod.endpoint_info(&self.ns, 1000 + idx as u32, idx as u16 + 1);
        self.dp
            .maps()
            .endpoints()
            .unwrap()
            .upsert(ip, &info)
            .unwrap();
        self.pods.push(pod);
        idx
    }
}

fn fibril_config(node_ip: Ipv4Addr, router: Ipv4Addr) -> DatapathConfig {
    DatapathConfig {
        node_ip,
        router_ip: router,
        host_device: Device::Name("fibril_host".into()),
        native_routing_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
        load_balancing: true,
        // Cilium's default `monitorAggregation: medium`.
        trace_aggregation: true,
        ..Default::default()
    }
}

/// Two namespaces joined by a bare veth pair.
struct VethPair {
    a: TestNetns,
    b: TestNetns,
}

const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

fn veth_pair() -> VethPair {
    let a = TestNetns::new("bva");
    let b = TestNetns::new("bvb");
    a.sh(&format!(
        "ip link add eth0 type veth peer name eth0 netns {b} && \
         ip addr add {VETH_A}/24 dev eth0 && ip link set eth0 up",
        b = b.name()
    ));
    b.sh(&format!(
        "ip addr add {VETH_B}/24 dev eth0 && ip link set eth0 up"
    ));
    VethPair { a, b }
}

/// The classic path: pods on a Linux bridge (`cni0`), br_netfilter on, a
/// kube-proxy-iptables-model nftables ruleset in the node netns.
struct BridgeNode {
    pod_a: TestNetns,
    pod_b: TestNetns,
    node: TestNetns,
    dir: tempfile::TempDir,
}

const BR_GW: Ipv4Addr = Ipv4Addr::new(10, 245, 0, 1);
const BR_A: Ipv4Addr = Ipv4Addr::new(10, 245, 0, 10);
const BR_B: Ipv4Addr = Ipv4Addr::new(10, 245, 0, 11);

fn bridge_node() -> BridgeNode {
    let node = TestNetns::new("bbn");
    let pod_a = TestNetns::new("bba");
    let pod_b = TestNetns::new("bbb");
    node.sh(&format!(
        "sysctl -qw net.ipv4.ip_forward=1 && \
         sysctl -qw net.bridge.bridge-nf-call-iptables=1 && \
         ip link add cni0 type bridge && ip addr add {BR_GW}/24 dev cni0 && ip link set cni0 up"
    ));
    for (pod, ip, vif) in [(&pod_a, BR_A, "veth_a"), (&pod_b, BR_B, "veth_b")] {
        node.sh(&format!(
            "ip link add {vif} type veth peer name eth0 netns {p} && \
             ip link set {vif} master cni0 && ip link set {vif} up",
            p = pod.name()
        ));
        pod.sh(&format!(
            "ip addr add {ip}/24 dev eth0 && ip link set eth0 up && \
             ip route add default via {BR_GW}"
        ));
    }
    BridgeNode {
        pod_a,
        pod_b,
        node,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn dummy_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i as u32)
}

fn dummy_backend(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 3 + j) as u32)
}

/// kube-proxy iptables mode, in nftables syntax: KUBE-SERVICES with one
/// rule per service (the measured one last), KUBE-SVC-* picking an endpoint
/// with `statistic --probability 1/(n-i)` (here `numgen random mod (n-i)
/// 0`), KUBE-SEP-* marking hairpin traffic and DNATing, KUBE-POSTROUTING
/// masquerading marked packets, KUBE-FORWARD.
fn kube_proxy_ruleset(n_services: usize, measured_backend: Ipv4Addr) -> String {
    use std::fmt::Write;
    let mut r = String::with_capacity(n_services * 600);
    r.push_str("flush ruleset\ntable ip kube {\n");
    r.push_str(" chain mark-masq { meta mark set meta mark | 0x4000; }\n");
    r.push_str(
        " chain postrouting { type nat hook postrouting priority srcnat; \
         meta mark & 0x4000 != 0x4000 return; meta mark set meta mark ^ 0x4000; masquerade; }\n",
    );
    r.push_str(
        " chain forward { type filter hook forward priority filter; ct state invalid drop; \
         meta mark & 0x4000 == 0x4000 accept; ct state related,established accept; }\n",
    );
    let mut services = String::from(" chain services {\n");
    let svc = |r: &mut String,
               services: &mut String,
               name: &str,
               vip: Ipv4Addr,
               eps: &[(Ipv4Addr, u16)]| {
        for (j, (ip, port)) in eps.iter().enumerate() {
            let _ = writeln!(
                r,
                " chain sep-{name}-{j} {{ ip saddr {ip} jump mark-masq; meta l4proto tcp dnat to {ip}:{port}; }}"
            );
        }
        let _ = write!(
            r,
            " chain svc-{name} {{ ip saddr != 10.245.0.0/16 jump mark-masq;"
        );
        let k = eps.len();
        for j in 0..k {
            if j + 1 < k {
                let _ = write!(r, " numgen random mod {} 0 jump sep-{name}-{j};", k - j);
            } else {
                let _ = write!(r, " jump sep-{name}-{j};");
            }
        }
        r.push_str(" }\n");
        let _ = writeln!(services, "  ip daddr {vip} tcp dport 80 jump svc-{name}");
    };
    for i in 1..n_services {
        let eps: Vec<(Ipv4Addr, u16)> = (0..3).map(|j| (dummy_backend(i, j), 8080)).collect();
        svc(&mut r, &mut services, &i.to_string(), dummy_vip(i), &eps);
    }
    let eps: Vec<(Ipv4Addr, u16)> = BACKEND_PORTS
        .iter()
        .map(|p| (measured_backend, *p))
        .collect();
    svc(&mut r, &mut services, "m", VIP, &eps);
    services.push_str(" }\n");
    r.push_str(&services);
    r.push_str(" chain prerouting { type nat hook prerouting priority dstnat; jump services; }\n");
    r.push_str(" chain output { type nat hook output priority -100; jump services; }\n");
    r.push_str("}\n");
    r
}

impl BridgeNode {
    /// Loads the ruleset for `n` services; returns the `nft -f` time in ms.
    fn program(&self, n: usize) -> f64 {
        let file = self.dir.path().join("kube.nft");
        std::fs::write(&file, kube_proxy_ruleset(n, BR_B)).unwrap();
        let t = Instant::now();
        self.node.sh(&format!("nft -f {}", file.display()));
        t.elapsed().as_secs_f64() * 1e3
    }
}

fn fibril_services(n: usize, backend: Ipv4Addr) -> Vec<ServiceSpec> {
    let mut v: Vec<ServiceSpec> = (1..n)
        .map(|i| {
            ServiceSpec::cluster_ip(
                Frontend::tcp(dummy_vip(i), 80),
                (0..3)
                    .map(|j| BackendSpec::new(dummy_backend(i, j), 8080, false))
                    .collect(),
            )
        })
        .collect();
    v.push(ServiceSpec::cluster_ip(
        Frontend::tcp(VIP, 80),
        BACKEND_PORTS
            .iter()
            .map(|p| BackendSpec::new(backend, *p, true))
            .collect(),
    ));
    v
}

// ------------------------------------------------------------- same node

const FIB_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const FIB_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const FIB_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);

fn same_node_and_services() {
    progress("same node: building Fibril node, veth pair, bridge + kube-proxy rules");
    let mut fib = FibrilNode::new(
        TestNetns::new("bfn"),
        FIB_ROUTER,
        fibril_config(Ipv4Addr::new(192, 168, 10, 100), FIB_ROUTER),
    );
    let a = fib.add_pod("lxca", FIB_A, FIB_ROUTER, 1500);
    let b = fib.add_pod("lxcb", FIB_B, FIB_ROUTER, 1500);
    let mut lb = LoadBalancer::open(&fib.dp.maps()).unwrap();
    lb.upsert_many(&fibril_services(10, FIB_B)).unwrap();
    let veth = veth_pair();
    let br = bridge_node();
    br.program(10);

    let _s1 = start_servers(&fib.pods[b].ns, FIB_B);
    let _s2 = start_servers(&veth.b, VETH_B);
    let _s3 = start_servers(&br.pod_b, BR_B);
    let paths: [(&str, &TestNetns, Ipv4Addr); 3] = [
        ("veth", &veth.a, VETH_B),
        ("bridge_iptables", &br.pod_a, BR_B),
        ("fibril", &fib.pods[a].ns, FIB_B),
    ];
    // Warm-up (ARP, conntrack, first-packet paths), not measured.
    for (_, c, dst) in &paths {
        let _ = c.sh_output(&format!("ping -c 1 -W 2 {dst}"));
    }
    let mut tput = [Vec::new(), Vec::new(), Vec::new()];
    let mut lat = [Vec::new(), Vec::new(), Vec::new()];
    for run in 0..TRAFFIC_RUNS {
        // Rotated order: no path is always first after a pause.
        for i in rotated(paths.len(), run) {
            let (_, c, dst) = paths[i];
            tput[i].push(iperf(c, dst));
        }
        for i in rotated(paths.len(), run) {
            let (_, c, dst) = paths[i];
            lat[i].push(sockperf(c, dst));
        }
        let line: Vec<String> = paths
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| {
                format!("{name} {:.1} Gbit/s {:.2} us", tput[i][run], lat[i][run])
            })
            .collect();
        progress(&format!(
            "same node: run {}/{TRAFFIC_RUNS}: {}",
            run + 1,
            line.join(", ")
        ));
    }
    let t: Vec<f64> = tput.iter().map(|v| median(v.clone())).collect();
    let l: Vec<f64> = lat.iter().map(|v| median(v.clone())).collect();
    for (i, (name, _, _)) in paths.iter().enumerate() {
        figure(&format!("tput_same_node_{name}_gbps"), t[i], "Gbit/s");
        figure(&format!("lat_same_node_{name}_us"), l[i], "us");
    }
    figure("tput_same_node_vs_veth", ratio(&tput[2], &tput[0]), "ratio");
    figure(
        "tput_same_node_vs_bridge_iptables",
        ratio(&tput[2], &tput[1]),
        "ratio",
    );
    figure("lat_same_node_vs_veth", ratio(&lat[2], &lat[0]), "ratio");
    figure(
        "lat_same_node_vs_bridge_iptables",
        ratio(&lat[2], &lat[1]),
        "ratio",
    );
    drop((_s1, _s2, _s3));
    drop(veth);

    // Service scaling on the same two topologies.
    let _fa = accept_servers(&fib.pods[b].ns, FIB_B, &BACKEND_PORTS);
    let _ba = accept_servers(&br.pod_b, BR_B, &BACKEND_PORTS);
    // Levels interleaved run by run (ascending, then descending, ...) so
    // drift and other load on the machine hit every level alike.
    let dummies = fibril_services(SVC_LEVELS[SVC_LEVELS.len() - 1], FIB_B);
    let mut have = 10;
    let mut bpf = vec![Vec::new(); SVC_LEVELS.len()];
    let mut nft = vec![Vec::new(); SVC_LEVELS.len()];
    let mut nft_ms = vec![Vec::new(); SVC_LEVELS.len()];
    for run in 0..RUNS {
        let mut order: Vec<usize> = (0..SVC_LEVELS.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let n = SVC_LEVELS[i];
            // dummies[k] is dummy service k + 1; the measured one stays.
            if n > have {
                lb.upsert_many(&dummies[have - 1..n - 1]).unwrap();
            } else {
                for d in &dummies[n - 1..have - 1] {
                    lb.delete(&d.frontend).unwrap();
                }
            }
            have = n;
            assert_eq!(lb.len(), n);
            bpf[i].push(connect_sample(&fib.pods[a].ns, VIP));
            nft_ms[i].push(br.program(n));
            nft[i].push(connect_sample(&br.pod_a, VIP));
            progress(&format!(
                "services: run {}/{RUNS}, {n} services: fibril {:.1} us, kube-proxy model {:.1} us",
                run + 1,
                bpf[i][run],
                nft[i][run]
            ));
        }
    }
    let bpf_ratio = ratio(&bpf[2], &bpf[0]);
    let nft_ratio = ratio(&nft[2], &nft[0]);
    let bpf: Vec<f64> = bpf.into_iter().map(median).collect();
    let nft: Vec<f64> = nft.into_iter().map(median).collect();
    for (i, n) in SVC_LEVELS.iter().enumerate() {
        figure(
            &format!("svc_program_iptables_{n}_ms"),
            median(nft_ms[i].clone()),
            "ms",
        );
    }
    for (i, n) in SVC_LEVELS.iter().enumerate() {
        figure(&format!("svc_connect_{n}_us"), bpf[i], "us");
    }
    figure("svc_connect_10k_vs_10", bpf_ratio, "ratio");
    for (i, n) in SVC_LEVELS.iter().enumerate() {
        figure(&format!("svc_connect_iptables_{n}_us"), nft[i], "us");
    }
    figure("svc_connect_iptables_10k_vs_10", nft_ratio, "ratio");
}

// ------------------------------------------------------------ cross node

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Routed,
    Native,
    Tunnel(Tunnel),
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Routed => "routed",
            Mode::Native => "native",
            Mode::Tunnel(t) => t.name(),
        }
    }
}

const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 100);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 100);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const GW_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const GW_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// Two nodes in two subnets behind a router; one pod on each.
struct CrossNode {
    client: usize,
    server: usize,
    // Fibril nodes (pods inside) before the plain ones: pins go first.
    fib: Vec<FibrilNode>,
    plain_pods: Vec<TestNetns>,
    _nodes: Vec<TestNetns>,
    _router: TestNetns,
}

impl CrossNode {
    fn client(&self) -> &TestNetns {
        if self.fib.is_empty() {
            &self.plain_pods[self.client]
        } else {
            &self.fib[0].pods[self.client].ns
        }
    }
    fn server(&self) -> &TestNetns {
        if self.fib.is_empty() {
            &self.plain_pods[self.server]
        } else {
            &self.fib[1].pods[self.server].ns
        }
    }
}

fn cross_node(mode: Mode) -> CrossNode {
    let router = TestNetns::new("bxr");
    let na = TestNetns::new("bxa");
    let nb = TestNetns::new("bxb");
    router.sh(&format!(
        "sysctl -qw net.ipv4.ip_forward=1 && \
         ip link add ra type veth peer name eth1 netns {a} && \
         ip link add rb type veth peer name eth1 netns {b} && \
         ip addr add 192.168.10.200/24 dev ra && ip addr add 192.168.20.200/24 dev rb && \
         ip link set ra up && ip link set rb up",
        a = na.name(),
        b = nb.name()
    ));
    for (n, ip, other) in [
        (&na, NODE_A, "192.168.20.0/24 via 192.168.10.200"),
        (&nb, NODE_B, "192.168.10.0/24 via 192.168.20.200"),
    ] {
        n.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && \
             ip addr add {ip}/24 dev eth1 && ip link set eth1 up && ip route add {other}"
        ));
    }
    let routes = || {
        router.sh("ip route add 10.244.0.0/24 via 192.168.10.100 && \
             ip route add 10.244.1.0/24 via 192.168.20.100");
        na.sh("ip route add 10.244.1.0/24 via 192.168.10.200");
        nb.sh("ip route add 10.244.0.0/24 via 192.168.20.200");
    };
    match mode {
        Mode::Routed => {
            routes();
            let mut pods = Vec::new();
            for (n, ip, gw, vif) in [(&na, POD_A, GW_A, "lxca"), (&nb, POD_B, GW_B, "lxcb")] {
                let p = TestNetns::new("bxp");
                n.sh(&format!(
                    "ip link add {vif} type veth peer name eth0 netns {p} && \
                     ip addr add {gw}/32 dev {vif} && ip link set {vif} up && \
                     ip route add {ip}/32 dev {vif}",
                    p = p.name()
                ));
                p.sh(&format!(
                    "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && \
                     ip route add {gw}/32 dev eth0 && ip route add default via {gw} dev eth0"
                ));
                pods.push(p);
            }
            CrossNode {
                client: 0,
                server: 1,
                fib: Vec::new(),
                plain_pods: pods,
                _nodes: vec![na, nb],
                _router: router,
            }
        }
        Mode::Native | Mode::Tunnel(_) => {
            let mut fibs = Vec::new();
            let mut idx = Vec::new();
            if mode == Mode::Native {
                routes();
            }
            for (n, node_ip, gw, pod, vif) in [
                (na, NODE_A, GW_A, POD_A, "lxca"),
                (nb, NODE_B, GW_B, POD_B, "lxcb"),
            ] {
                let mut cfg = fibril_config(node_ip, gw);
                cfg.underlay_device = Device::Name("eth1".into());
                if let Mode::Tunnel(t) = mode {
                    cfg = cfg.with_tunnel(t, 1500).unwrap();
                    cfg.native_routing_cidr = None;
                }
                let mtu = cfg.pod_mtu;
                let mut f = FibrilNode::new(n, gw, cfg);
                idx.push(f.add_pod(vif, pod, gw, mtu));
                fibs.push(f);
            }
            if let Mode::Tunnel(_) = mode {
                fibs[0]
                    .dp
                    .maps()
                    .ipcache()
                    .unwrap()
                    .upsert_tunnel_route("10.244.1.0/24".parse().unwrap(), NODE_B, 2)
                    .unwrap();
                fibs[1]
                    .dp
                    .maps()
                    .ipcache()
                    .unwrap()
                    .upsert_tunnel_route("10.244.0.0/24".parse().unwrap(), NODE_A, 2)
                    .unwrap();
            }
            CrossNode {
                client: idx[0],
                server: idx[1],
                fib: fibs,
                plain_pods: Vec::new(),
                _nodes: Vec::new(),
                _router: router,
            }
        }
    }
}

fn cross_nodes() {
    let modes = [
        Mode::Routed,
        Mode::Native,
        Mode::Tunnel(Tunnel::vxlan()),
        Mode::Tunnel(Tunnel::geneve()),
    ];
    progress("across nodes: building routed, native, VXLAN, Geneve topologies");
    let topos: Vec<CrossNode> = modes.iter().map(|m| cross_node(*m)).collect();
    let _servers: Vec<Servers> = topos
        .iter()
        .map(|t| start_servers(t.server(), POD_B))
        .collect();
    for (t, m) in topos.iter().zip(modes) {
        let ok = eventually(Duration::from_secs(10), || {
            t.client()
                .sh_output(&format!("ping -c 1 -W 1 {POD_B}"))
                .status
                .success()
                .then_some(())
        });
        assert!(ok.is_some(), "{}: pod A cannot reach pod B", m.name());
    }
    let mut tput = vec![Vec::new(); modes.len()];
    let mut lat = vec![Vec::new(); modes.len()];
    for run in 0..TRAFFIC_RUNS {
        for i in rotated(topos.len(), run) {
            tput[i].push(iperf(topos[i].client(), POD_B));
        }
        for i in rotated(topos.len(), run) {
            lat[i].push(sockperf(topos[i].client(), POD_B));
        }
        let line: Vec<String> = modes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "{} {:.1} Gbit/s {:.2} us",
                    m.name(),
                    tput[i][run],
                    lat[i][run]
                )
            })
            .collect();
        progress(&format!(
            "across nodes: run {}/{TRAFFIC_RUNS}: {}",
            run + 1,
            line.join(", ")
        ));
    }
    let t: Vec<f64> = tput.iter().map(|v| median(v.clone())).collect();
    let l: Vec<f64> = lat.iter().map(|v| median(v.clone())).collect();
    for (i, m) in modes.iter().enumerate() {
        figure(&format!("tput_cross_{}_gbps", m.name()), t[i], "Gbit/s");
        figure(&format!("lat_cross_{}_us", m.name()), l[i], "us");
    }
    for (i, m) in modes.iter().enumerate().skip(1) {
        figure(
            &format!("tput_{}_vs_routed", m.name()),
            ratio(&tput[i], &tput[0]),
            "ratio",
        );
        figure(
            &format!("lat_{}_vs_routed", m.name()),
            ratio(&lat[i], &lat[0]),
            "ratio",
        );
    }
    drop(_servers);
    drop(topos);
}

// ------------------------------------------------------------ programming

fn big_spec(i: u32) -> ServiceSpec {
    ServiceSpec::cluster_ip(
        Frontend::tcp(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i),
            80,
        ),
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
    progress("map programming: 10,000 services / 100,000 backends");
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
        // The agent's periodic resync when nothing changed must write nothing.
        let t = Instant::now();
        lb.upsert_many(&specs).unwrap();
        resync.push(t.elapsed().as_secs_f64() * 1e3);
        // One incremental update = one service's backend changing (the
        // agent's reaction to one EndpointSlice event).
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
    figure("svc_program_10k_100k_ms", median(bulk), "ms");
    figure("svc_resync_10k_unchanged_ms", median(resync), "ms");
    figure("svc_update_us", median(update), "us");
}

fn main() {
    install_cleanup_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench-datapath needs root (BPF, namespaces); skipped");
        return;
    }
    let start = Instant::now();
    let r = std::panic::catch_unwind(|| {
        programming();
        same_node_and_services();
        cross_nodes();
    });
    // Drop guards ran while unwinding; this catches what a leaked guard
    // (or a panic inside a guard) left behind.
    cleanup_everything();
    progress(&format!("done in {:.0} s", start.elapsed().as_secs_f64()));
    if r.is_err() {
        std::process::exit(1);
    }
}
