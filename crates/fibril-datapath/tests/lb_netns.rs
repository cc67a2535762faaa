//! Service load balancing on real traffic (root): two nodes of the seed-4w
//! fabric (k8s-ctr 192.168.10.100, k8s-w0 192.168.20.100, a router between
//! them), pods as namespaces. ClusterIP from pods (backends on both nodes,
//! replies from the service IP on the client's eth0), UDP, NodePort from the
//! router (SNAT to the node IP for remote backends), eTP=Local, a
//! LoadBalancer IP, hairpin, and node -> ClusterIP; BPF masquerading on;
//! native routing and VXLAN.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{lab_name, TestNode};
use fibril_abi::{identity, ipcache_flags, DropReason, IpcacheValue, ObsPoint};
use fibril_datapath::lb::{BackendSpec, Frontend, LbDump, LoadBalancer, ServiceSpec, ServiceType};
use fibril_datapath::testing::fixture::{eventually, ChildGuard, TestNetns};
use fibril_datapath::{Prefix4, Tunnel};
use fibril_lab::{netns_name, Fabric, Topology};

const PY: &str = "/usr/bin/python3";

/// A TCP+UDP server answering `<name> <peer ip>:<peer port>` and a client
/// printing one answer per connection (`-` on failure).
const SCRIPT: &str = r#"
import socket, sys, threading
mode = sys.argv[1]
if mode == "serve":
    name, port = sys.argv[2], int(sys.argv[3])
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(64)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
    def udp():
        while True:
            d, a = u.recvfrom(2048)
            u.sendto(("%s %s:%d" % (name, a[0], a[1])).encode(), a)
    threading.Thread(target=udp, daemon=True).start()
    print("ready", flush=True)
    while True:
        c, a = t.accept()
        try:
            c.sendall(("%s %s:%d\n" % (name, a[0], a[1])).encode())
        finally:
            c.close()
else:
    proto, ip, port, n = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    for i in range(n):
        try:
            if proto == "tcp":
                s = socket.create_connection((ip, port), timeout=2)
                print(s.recv(200).decode().strip(), flush=True)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
                s.connect((ip, port)); s.send(b"q")
                print(s.recv(200).decode().strip(), flush=True)
            s.close()
        except Exception as e:
            print("-", e, flush=True)
"#;

struct Script {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Script {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lbtool.py");
        std::fs::write(&path, SCRIPT).unwrap();
        Script { path, _dir: dir }
    }
    fn path(&self) -> &Path {
        &self.path
    }
}

fn serve(ns: &TestNetns, script: &Script, name: &str, port: u16) -> ChildGuard {
    let g = ns.spawn(&format!(
        "{PY} {} serve {name} {port}",
        script.path().display()
    ));
    // Ready when the port accepts.
    let ok = eventually(Duration::from_secs(10), || {
        ns.sh_output(&format!(
            "{PY} -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'"
        ))
        .status
        .success()
        .then_some(())
    });
    assert!(ok.is_some(), "server {name} on {port} did not start");
    g
}

/// Answers `(backend name, peer ip seen by the backend)`; `None` = failed.
fn query(
    ns: &TestNetns,
    script: &Script,
    proto: &str,
    dst: Ipv4Addr,
    port: u16,
    n: u32,
) -> Vec<Option<(String, Ipv4Addr)>> {
    let out = ns.sh_output(&format!(
        "{PY} {} client {proto} {dst} {port} {n}",
        script.path().display()
    ));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            if name == "-" {
                return None;
            }
            let peer = it.next()?.split(':').next()?.parse().ok()?;
            Some((name.to_string(), peer))
        })
        .collect()
}

/// Waits for tcpdump's "listening on" (stderr) instead of sleeping.
fn wait_listening(cap: &mut ChildGuard) {
    use std::io::{BufRead, BufReader};
    let stderr = cap.child().stderr.take().expect("tcpdump stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("tcpdump did not start listening");
}

fn ok_answers(v: &[Option<(String, Ipv4Addr)>]) -> Vec<(String, Ipv4Addr)> {
    v.iter().flatten().cloned().collect()
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_HAIRPIN: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const LRP_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 10);
const CTR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 100);
const W0_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 100);
const ROUTER_10: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 200);
const ROUTER_20: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 200);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const B1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11); // on k8s-ctr
const B2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11); // on k8s-w0

/// The services as each node's agent would program them (`local` differs).
fn program(node: &TestNode, on_ctr: bool) -> LoadBalancer {
    let mut lb = LoadBalancer::open(&node.maps()).unwrap();
    let b1 = BackendSpec::new(B1, 8080, on_ctr);
    let b2 = BackendSpec::new(B2, 8080, !on_ctr);
    lb.upsert(&ServiceSpec::cluster_ip(
        Frontend::tcp(VIP, 80),
        vec![b1, b2],
    ))
    .unwrap();
    lb.upsert(&ServiceSpec::cluster_ip(
        Frontend::udp(VIP, 53),
        vec![b1, b2],
    ))
    .unwrap();
    lb.upsert(&ServiceSpec {
        frontend: Frontend::tcp(Ipv4Addr::UNSPECIFIED, 31000),
        svc_type: ServiceType::NodePort,
        ext_traffic_local: false,
        backends: vec![b1, b2],
    })
    .unwrap();
    // UDP NodePort whose only backend runs on k8s-ctr.
    lb.upsert(&ServiceSpec {
        frontend: Frontend::udp(Ipv4Addr::UNSPECIFIED, 31002),
        svc_type: ServiceType::NodePort,
        ext_traffic_local: false,
        backends: vec![b1],
    })
    .unwrap();
    // eTP=Local: the only backend runs on k8s-ctr.
    lb.upsert(&ServiceSpec {
        frontend: Frontend::tcp(Ipv4Addr::UNSPECIFIED, 31001),
        svc_type: ServiceType::NodePort,
        ext_traffic_local: true,
        backends: vec![b1],
    })
    .unwrap();
    lb.upsert(&ServiceSpec {
        frontend: Frontend::tcp(LB_IP, 80),
        svc_type: ServiceType::LoadBalancer,
        ext_traffic_local: false,
        backends: vec![b1, b2],
    })
    .unwrap();
    // Local Redirect: node-local backends only.
    lb.upsert(&ServiceSpec {
        frontend: Frontend::tcp(LRP_IP, 8080),
        svc_type: ServiceType::LocalRedirect,
        ext_traffic_local: false,
        backends: vec![b1, b2],
    })
    .unwrap();
    lb.upsert(&ServiceSpec::cluster_ip(
        Frontend::tcp(VIP_HAIRPIN, 80),
        vec![b1],
    ))
    .unwrap();
    lb
}

#[test]
fn services_on_two_nodes_native_routing() {
    services_on_two_nodes(None, "lbn");
}

#[test]
fn services_on_two_nodes_vxlan() {
    services_on_two_nodes(Some(Tunnel::Vxlan { port: 8472 }), "lbv");
}

fn services_on_two_nodes(tunnel: Option<Tunnel>, tag: &str) {
    let script = Script::new();
    let topo = Topology::builtin("seed-4w").unwrap();
    let lab = lab_name(tag);
    let fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let router = TestNetns::existing(&netns_name(&lab, "router"));
    if tunnel.is_none() {
        router.sh(&format!(
            "ip route add 10.244.0.0/24 via {CTR_IP} && ip route add 10.244.1.0/24 via {W0_IP}"
        ));
    }
    let mut ctr = TestNode::in_netns(
        &netns_name(&lab, "k8s-ctr"),
        CTR_IP,
        Ipv4Addr::new(10, 244, 0, 1),
    );
    let mut w0 = TestNode::in_netns(
        &netns_name(&lab, "k8s-w0"),
        W0_IP,
        Ipv4Addr::new(10, 244, 1, 1),
    );
    // Pod CIDR routes and the service CIDR route (node -> ClusterIP leaves
    // through the underlay, where cil_to_netdev translates it).
    ctr.ns
        .sh(&format!("ip route add 10.96.0.0/16 via {ROUTER_10}"));
    w0.ns
        .sh(&format!("ip route add 10.96.0.0/16 via {ROUTER_20}"));
    if tunnel.is_none() {
        ctr.ns
            .sh(&format!("ip route add 10.244.1.0/24 via {ROUTER_10}"));
        w0.ns
            .sh(&format!("ip route add 10.244.0.0/24 via {ROUTER_20}"));
    }
    for n in [&ctr, &w0] {
        n.ns.sh("sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0");
    }
    for node in [&mut ctr, &mut w0] {
        let mut cfg = node.config();
        if let Some(t) = tunnel {
            cfg = cfg.with_tunnel(t, 1500).unwrap();
            cfg.native_routing_cidr = None;
        }
        cfg.load_balancing = true;
        cfg.masquerade = true;
        node.load(cfg);
    }
    if tunnel.is_some() {
        ctr.maps()
            .ipcache()
            .unwrap()
            .upsert_tunnel_route("10.244.1.0/24".parse().unwrap(), W0_IP, 2)
            .unwrap();
        w0.maps()
            .ipcache()
            .unwrap()
            .upsert_tunnel_route("10.244.0.0/24".parse().unwrap(), CTR_IP, 2)
            .unwrap();
    }
    // The other node is a remote node in each ipcache (what the agent
    // installs): BPF masquerading leaves node-to-node traffic alone.
    for (n, other) in [(&ctr, W0_IP), (&w0, CTR_IP)] {
        n.maps()
            .ipcache()
            .unwrap()
            .insert(
                Prefix4::host(other),
                &IpcacheValue {
                    sec_identity: identity::REMOTE_NODE,
                    tunnel_endpoint: 0,
                    flags: ipcache_flags::REMOTE_NODE,
                    pad: 0,
                },
            )
            .unwrap();
    }
    let c = ctr.add_pod("lxcc", CLIENT, 1000);
    let b1 = ctr.add_pod("lxcb1", B1, 2000);
    let b2 = w0.add_pod("lxcb2", B2, 2000);
    let _s1 = serve(&ctr.pod(b1).ns, &script, "b1", 8080);
    let _s2 = serve(&w0.pod(b2).ns, &script, "b2", 8080);
    let _lb_ctr = program(&ctr, true);
    let _lb_w0 = program(&w0, false);
    eprintln!(
        "k8s-ctr $ service list\n{}",
        LbDump::read(&ctr.maps()).unwrap().format_service_list()
    );

    // --- ClusterIP from a pod, with a capture on the client's eth0.
    let mut cap = ctr
        .pod(c)
        .ns
        .spawn("tcpdump -i eth0 -nn -l -U 'tcp or udp'");
    wait_listening(&mut cap);
    let got = query(&ctr.pod(c).ns, &script, "tcp", VIP, 80, 30);
    let ok = ok_answers(&got);
    let udp = query(&ctr.pod(c).ns, &script, "udp", VIP, 53, 20);
    std::thread::sleep(Duration::from_millis(300)); // let tcpdump flush
    let (wire, _) = cap.finish();
    let names: HashMap<String, usize> = ok.iter().fold(HashMap::new(), |mut m, (n, _)| {
        *m.entry(n.clone()).or_default() += 1;
        m
    });
    eprintln!(
        "ClusterIP TCP from pod: {} of 30 answered, by backend {names:?}",
        ok.len()
    );
    assert_eq!(ok.len(), 30, "{got:?}");
    assert!(
        names.len() == 2,
        "both backends (both nodes) answer: {names:?}"
    );
    assert!(
        ok.iter().all(|(_, peer)| *peer == CLIENT),
        "no SNAT for ClusterIP: {ok:?}"
    );
    let from_vip = wire
        .lines()
        .filter(|l| l.contains(&format!("IP {VIP}.80 > {CLIENT}.")))
        .count();
    let from_backend = wire
        .lines()
        .filter(|l| l.contains(&format!("IP {B1}.")) || l.contains(&format!("IP {B2}.")))
        .count();
    eprintln!(
        "client eth0: {from_vip} TCP packets from {VIP}:80, {from_backend} from backend IPs; sample:\n{}",
        wire.lines().take(6).collect::<Vec<_>>().join("\n")
    );
    assert!(from_vip >= 60, "replies come from the service IP: {wire}");
    assert_eq!(from_backend, 0, "never from a backend address: {wire}");
    let udp_ok = ok_answers(&udp);
    eprintln!("ClusterIP UDP from pod: {} of 20 answered", udp_ok.len());
    assert_eq!(
        udp_ok.len(),
        20,
        "UDP answers reach the connected socket: {udp:?}"
    );
    assert!(wire.contains(&format!("IP {VIP}.53 > {CLIENT}.")), "{wire}");
    let flows = ctr.maps().events().unwrap().drain().0;
    for o in [
        ObsPoint::PreXlateFwd,
        ObsPoint::PostXlateFwd,
        ObsPoint::PreXlateRev,
        ObsPoint::PostXlateRev,
    ] {
        let f = flows.iter().find(|f| f.obs_point == o);
        assert!(f.is_some(), "{o:?} event on k8s-ctr");
        eprintln!("flow: {}", f.unwrap());
    }

    // --- NodePort from the router to each node IP.
    let mut seen = HashSet::new();
    for (node_ip, router_ip) in [(CTR_IP, ROUTER_10), (W0_IP, ROUTER_20)] {
        let got = query(&router, &script, "tcp", node_ip, 31000, 20);
        let ok = ok_answers(&got);
        eprintln!("NodePort {node_ip}:31000 from router: {ok:?}");
        assert_eq!(ok.len(), 20, "{got:?}");
        for (name, peer) in &ok {
            let local = (name == "b1") == (node_ip == CTR_IP);
            let want = if local { router_ip } else { node_ip };
            assert_eq!(*peer, want, "backend {name} via {node_ip}: source seen");
            seen.insert((node_ip, local));
        }
    }
    assert_eq!(
        seen.len(),
        4,
        "local and remote backends from both nodes: {seen:?}"
    );

    // --- UDP NodePort via k8s-w0: SNAT to its IP towards b1 on k8s-ctr.
    let ok = ok_answers(&query(&router, &script, "udp", W0_IP, 31002, 5));
    eprintln!("UDP NodePort {W0_IP}:31002 from router: {ok:?}");
    assert_eq!(ok.len(), 5);
    assert!(ok.iter().all(|(n, p)| n == "b1" && *p == W0_IP), "{ok:?}");

    // --- eTP=Local: only k8s-ctr (with the backend) answers, client IP kept.
    let ok = ok_answers(&query(&router, &script, "tcp", CTR_IP, 31001, 5));
    assert_eq!(ok.len(), 5);
    assert!(
        ok.iter().all(|(n, p)| n == "b1" && *p == ROUTER_10),
        "{ok:?}"
    );
    let w0_drops_before = w0
        .maps()
        .metrics()
        .unwrap()
        .drops(DropReason::NoService)
        .unwrap();
    let ok = ok_answers(&query(&router, &script, "tcp", W0_IP, 31001, 2));
    assert!(ok.is_empty(), "k8s-w0 has no local backend: {ok:?}");
    let drops = w0
        .maps()
        .metrics()
        .unwrap()
        .drops(DropReason::NoService)
        .unwrap();
    eprintln!(
        "eTP=Local on k8s-w0: {} drops (no service backend)",
        drops - w0_drops_before
    );
    assert!(drops > w0_drops_before);

    // --- LoadBalancer IP, routed to k8s-ctr by the router.
    router.sh(&format!("ip route add {LB_IP}/32 via {CTR_IP}"));
    let got = query(&router, &script, "tcp", LB_IP, 80, 20);
    let ok = ok_answers(&got);
    eprintln!("LoadBalancer {LB_IP}:80 from router: {ok:?}");
    assert_eq!(ok.len(), 20, "{got:?}");
    assert!(ok.iter().any(|(n, _)| n == "b1") && ok.iter().any(|(n, _)| n == "b2"));
    assert!(ok.iter().all(|(n, p)| if n == "b1" {
        *p == ROUTER_10
    } else {
        *p == CTR_IP
    }));

    // --- Hairpin: b1 reaches itself through its service.
    let ok = ok_answers(&query(&ctr.pod(b1).ns, &script, "tcp", VIP_HAIRPIN, 80, 3));
    eprintln!("hairpin: {ok:?}");
    assert_eq!(ok.len(), 3);
    assert!(ok
        .iter()
        .all(|(n, p)| n == "b1" && *p == Ipv4Addr::new(169, 254, 42, 1)));

    // --- Local Redirect from the client pod on k8s-ctr: only b1 (local).
    let ok = ok_answers(&query(&ctr.pod(c).ns, &script, "tcp", LRP_IP, 8080, 10));
    eprintln!("local redirect {LRP_IP}:8080 from k8s-ctr: {ok:?}");
    assert_eq!(ok.len(), 10);
    assert!(ok.iter().all(|(n, p)| n == "b1" && *p == CLIENT));

    // --- Node -> ClusterIP (from the node's own netns).
    let got = query(&ctr.ns, &script, "tcp", VIP, 80, 20);
    let ok = ok_answers(&got);
    eprintln!("node k8s-ctr -> {VIP}:80: {ok:?}");
    assert_eq!(ok.len(), 20, "{got:?}");
    assert!(ok.iter().any(|(n, _)| n == "b1") && ok.iter().any(|(n, _)| n == "b2"));
    assert!(ok.iter().all(|(_, p)| *p == CTR_IP));

    drop(ctr);
    drop(w0);
    fabric.down().unwrap();
}
