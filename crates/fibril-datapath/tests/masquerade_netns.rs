//! Masquerading with real traffic (root): a seed-3w fabric, the datapath on
//! k8s-ctr with `bpf.masquerade`, pods curling / pinging the router's
//! 10.10.1.200 (outside the cluster). Captures on the router show the node
//! IP as source; with 10.10.0.0/16 prefixes in ip-masq-agent the pod IP
//! stays, and replies only come back once the router routes the pod CIDR.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{lab_name, TestNode};
use fibril_abi::{ipcache_flags, IpcacheValue};
use fibril_datapath::ipmasq::{self, IpMasqConfig};
use fibril_datapath::nat::NatDir;
use fibril_datapath::testing::fixture::{ChildGuard, TestNetns};
use fibril_datapath::{monotonic_ns, DatapathConfig, Nat, Prefix4};
use fibril_lab::{netns_name, Fabric, Topology};

const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 200);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 100);
const PEER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 101);

fn capture(router: &TestNetns, filter: &str) -> ChildGuard {
    let cap = router.spawn(&format!("tcpdump -i eth1 -nn -l {filter}"));
    std::thread::sleep(Duration::from_millis(700)); // tcpdump start-up, not an assertion
    cap
}

fn stop(cap: ChildGuard) -> String {
    std::thread::sleep(Duration::from_millis(300)); // let the last lines out
    let (out, _) = cap.finish();
    out
}

fn curl(pod: &TestNetns, extra: &str, max_time: u32) -> (bool, String) {
    let out = pod.sh_output(&format!(
        "curl -s --max-time {max_time} {extra} http://{REMOTE}/"
    ));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// One 2-second iperf3 run from `pod` to a one-off server on the router;
/// Gbit/s received (0 on failure).
fn iperf_gbps(router: &TestNetns, pod: &TestNetns) -> f64 {
    let _server = router.spawn("iperf3 -s -1 -p 5201");
    let listening = fibril_datapath::testing::fixture::eventually(Duration::from_secs(10), || {
        let o = router.sh_output("ss -ltnH 'sport = :5201'");
        (!String::from_utf8_lossy(&o.stdout).trim().is_empty()).then_some(())
    });
    if listening.is_none() {
        eprintln!("iperf3 server did not start");
        return 0.0;
    }
    let mut out = String::new();
    for _ in 0..20 {
        // the server may still be starting
        let o = pod.sh_output(&format!("iperf3 -c {REMOTE} -p 5201 -t 2 -J"));
        out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !out.contains("sum_received") {
        eprintln!(
            "iperf3 failed: {}",
            out.lines()
                .filter(|l| l.contains("\"error\""))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    // "sum_received": { ... "bits_per_second": N ... }
    out.split("\"sum_received\"")
        .nth(1)
        .and_then(|s| s.split("\"bits_per_second\":").nth(1))
        .and_then(|s| s.split([',', '\n', '}']).next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(|b| b / 1e9)
        .unwrap_or(0.0)
}

#[test]
fn pods_reach_the_router_masqueraded_and_ipmasq_exceptions() {
    let topo = Topology::builtin("seed-3w").unwrap();
    let lab = lab_name("masq");
    let fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let router = TestNetns::existing(&netns_name(&lab, "router"));
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello-from-router\n").unwrap();
    let _httpd = router.spawn(&format!(
        "busybox httpd -f -p 80 -h {}",
        www.path().display()
    ));

    let mut ctr = TestNode::in_netns(
        &netns_name(&lab, "k8s-ctr"),
        NODE,
        Ipv4Addr::new(10, 244, 0, 1),
    );
    let cfg = DatapathConfig {
        masquerade: true,
        ..ctr.config()
    };
    ctr.load(cfg);
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 0, 10), Ipv4Addr::new(10, 244, 0, 11));
    let a = ctr.add_pod("lxca", a_ip, 1000);
    let b = ctr.add_pod("lxcb", b_ip, 2000);

    // 1. curl + ping to the router address: the router sees the node IP.
    let cap = capture(&router, "tcp port 80 or icmp");
    let mut ok = false;
    for _ in 0..20 {
        // first attempts may race the httpd start-up
        let (s, body) = curl(&ctr.pod(a).ns, "", 3);
        if s && body.contains("hello-from-router") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "pod A curls {REMOTE}");
    let ping = ctr
        .pod(a)
        .ns
        .sh_output(&format!("ping -c 2 -i 0.2 -W 2 {REMOTE}"));
    assert!(ping.status.success(), "pod A pings {REMOTE}");
    let wire = stop(cap);
    eprintln!("router eth1 (masquerading):\n{wire}");
    assert!(
        wire.contains(&format!("IP {NODE}."))
            && wire.contains(&format!("> {REMOTE}.80: Flags [S]")),
        "SYN from the node IP: {wire}"
    );
    assert!(
        wire.contains(&format!("{NODE} > {REMOTE}: ICMP echo request")),
        "ping from the node IP: {wire}"
    );
    assert!(
        !wire.contains(&a_ip.to_string()),
        "pod IP never on the wire: {wire}"
    );
    let nat = Nat::open(&ctr.pin_dir).unwrap();
    let listing = nat.list(monotonic_ns()).unwrap();
    eprintln!("bpf nat list:\n{listing}");
    assert!(listing.contains(&format!("TCP OUT {a_ip}:")));
    assert!(listing.contains(&format!("XLATE_SRC {NODE}:")));
    assert!(listing.contains(&format!("ICMP IN {REMOTE}:")));

    // 1b. Another node (k8s-w1, known to ipcache as a remote node): the pod
    // IP stays, as in the seed (`ping 192.168.10.101` shows the pod IP).
    let w1 = TestNetns::existing(&netns_name(&lab, "k8s-w1"));
    w1.sh("ip route add 10.244.0.0/24 via 192.168.10.100");
    ctr.maps()
        .ipcache()
        .unwrap()
        .insert(
            Prefix4::host(PEER_NODE),
            &IpcacheValue {
                sec_identity: fibril_abi::identity::REMOTE_NODE,
                tunnel_endpoint: 0,
                flags: ipcache_flags::REMOTE_NODE,
                pad: 0,
            },
        )
        .unwrap();
    let cap = w1.spawn("tcpdump -i eth1 -nn -l icmp");
    std::thread::sleep(Duration::from_millis(700)); // tcpdump start-up, not an assertion
    let ping = ctr
        .pod(a)
        .ns
        .sh_output(&format!("ping -c 2 -i 0.2 -W 2 {PEER_NODE}"));
    let wire = stop(cap);
    eprintln!("k8s-w1 eth1 (pod -> another node):\n{wire}");
    assert!(ping.status.success(), "pod A pings {PEER_NODE}");
    assert!(
        wire.contains(&format!("{a_ip} > {PEER_NODE}: ICMP echo request")),
        "pod IP kept towards a node: {wire}"
    );

    // 2. Two pods, same source port, same destination, concurrently.
    let cap = capture(&router, "tcp port 80 and 'tcp[tcpflags] & tcp-syn != 0'");
    let ca = ctr.pod(a).ns.spawn(&format!(
        "curl -s --max-time 5 --local-port 40000 http://{REMOTE}/"
    ));
    let cb = ctr.pod(b).ns.spawn(&format!(
        "curl -s --max-time 5 --local-port 40000 http://{REMOTE}/"
    ));
    let (sa, oa, ea) = ca.wait();
    let (sb, ob, eb) = cb.wait();
    let wire = stop(cap);
    eprintln!("router eth1 (two pods, port 40000):\n{wire}");
    assert!(sa && oa.contains("hello-from-router"), "pod A: {oa} {ea}");
    assert!(sb && ob.contains("hello-from-router"), "pod B: {ob} {eb}");
    let entries = nat.entries().unwrap();
    let port_of = |pod: Ipv4Addr| {
        entries
            .iter()
            .find(|e| {
                e.dir == NatDir::Out
                    && e.src == SocketAddrV4::new(pod, 40000)
                    && e.dst == SocketAddrV4::new(REMOTE, 80)
            })
            .map(|e| e.xlate.port())
            .unwrap()
    };
    let (pa, pb) = (port_of(a_ip), port_of(b_ip));
    eprintln!("node ports: pod A {pa}, pod B {pb}");
    assert_ne!(pa, pb);
    for p in [pa, pb] {
        assert!(
            wire.contains(&format!("{NODE}.{p} > {REMOTE}.80: Flags [S]")),
            "SYN from node port {p}: {wire}"
        );
    }

    // 2b. A masqueraded TCP connection and a ping keep working while the
    // programs are replaced (new load, pinned links replaced atomically):
    // the NAT table lives in pinned maps.
    let echo_srv = router.spawn("nc -l -p 7000");
    assert!(
        router.wait_tcp_listen(7000, Duration::from_secs(10)),
        "nc server on the router"
    );
    let cli = ctr.pod(a).ns.spawn(&format!(
        "sh -c 'echo before; sleep 2; echo after; sleep 1' | nc -q 1 -p 41000 {REMOTE} 7000"
    ));
    let pinger = ctr
        .pod(b)
        .ns
        .spawn(&format!("ping -c 30 -i 0.1 -W 1 {REMOTE}"));
    let tcp_port_before =
        fibril_datapath::testing::fixture::eventually(Duration::from_secs(5), || {
            nat.lookup_out(
                6,
                SocketAddrV4::new(a_ip, 41000),
                SocketAddrV4::new(REMOTE, 7000),
            )
            .unwrap()
        })
        .expect("NAT entry of the nc connection");
    let mut dp2 = fibril_datapath::Datapath::load(ctr.options(DatapathConfig {
        masquerade: true,
        ..ctr.config()
    }))
    .unwrap();
    let replaced = dp2.replace_pinned().unwrap();
    ctr.dp = Some(dp2);
    eprintln!("replaced {} pinned attachments", replaced.len());
    assert!(
        replaced.len() >= 3,
        "underlay + pods replaced: {replaced:?}"
    );
    let (ok, _, _) = cli.wait();
    let (ping_ok, ping_out, _) = pinger.wait();
    let (got, _) = echo_srv.finish();
    eprintln!("nc server got: {got:?}");
    assert!(ok, "nc client");
    assert_eq!(got, "before\nafter\n", "TCP across the replacement");
    let loss = ping_out
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or_default()
        .to_string();
    eprintln!("ping across the replacement: {loss}");
    assert!(ping_ok && loss.contains(" 0% packet loss"), "{ping_out}");
    assert_eq!(
        nat.lookup_out(
            6,
            SocketAddrV4::new(a_ip, 41000),
            SocketAddrV4::new(REMOTE, 7000)
        )
        .unwrap(),
        Some(tcp_port_before),
        "same translation after the replacement"
    );

    // Throughput through SNAT (a figure, not asserted).
    let masq_gbps = iperf_gbps(&router, &ctr.pod(a).ns);
    eprintln!("masq_tcp_tput_gbps {masq_gbps:.2}");

    // 3. ip-masq-agent with the seeds' nonMasqueradeCIDRs: the pod IP stays;
    // without a route back on the router the SYN gets no answer.
    let masq =
        IpMasqConfig::parse(r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"]}"#).unwrap();
    let st = ipmasq::apply(&ctr.maps(), true, &masq).unwrap();
    assert_eq!(st.added.len(), 3);
    let listing = ipmasq::list(&ctr.maps()).unwrap();
    eprintln!("bpf ipmasq list:\n{listing}");
    assert_eq!(
        listing,
        "IP PREFIX/ADDRESS\n10.10.1.0/24\n10.10.2.0/24\n169.254.0.0/16\n"
    );
    let cap = capture(&router, "tcp port 80");
    let (s, _) = curl(&ctr.pod(a).ns, "", 2);
    let wire = stop(cap);
    eprintln!("router eth1 (ipmasq, no route back):\n{wire}");
    assert!(!s, "no reply without a route to the pod CIDR");
    assert!(
        wire.contains(&format!("IP {a_ip}."))
            && wire.contains(&format!("> {REMOTE}.80: Flags [S]")),
        "SYN with the pod IP reaches the router: {wire}"
    );
    assert!(
        !wire.contains(&format!("{REMOTE}.80 > {a_ip}")),
        "no SYN-ACK on eth1"
    );

    router.sh("ip route add 10.244.0.0/24 via 192.168.10.100");
    let cap = capture(&router, "tcp port 80");
    let (s, body) = curl(&ctr.pod(a).ns, "", 5);
    let wire = stop(cap);
    eprintln!("router eth1 (ipmasq, route back):\n{wire}");
    assert!(
        s && body.contains("hello-from-router"),
        "curl with route back"
    );
    assert!(
        wire.contains(&format!("{REMOTE}.80 > {a_ip}.")),
        "reply to the pod IP: {wire}"
    );
    assert!(
        !wire.contains(&format!("IP {NODE}.")),
        "not masqueraded: {wire}"
    );
    let plain_gbps = iperf_gbps(&router, &ctr.pod(a).ns);
    eprintln!("nomasq_tcp_tput_gbps {plain_gbps:.2}");
    if plain_gbps > 0.0 {
        eprintln!("masq_vs_nomasq_tput {:.2}", masq_gbps / plain_gbps);
    }
    // 4. Inbound: with the pod CIDR routed to the node and no ipmasq
    // exception, the router opens a connection to the pod; the pod's
    // replies must keep its IP (conntrack knows the flow as router -> pod).
    ipmasq::apply(&ctr.maps(), false, &masq).unwrap();
    let srv = ctr
        .pod(a)
        .ns
        .spawn("sh -c 'echo hello-from-pod | nc -N -l 8080'");
    let cap = capture(&router, "tcp port 8080");
    let got = fibril_datapath::testing::fixture::eventually(Duration::from_secs(10), || {
        let o = router.sh_output(&format!("nc -N -w 2 {a_ip} 8080 </dev/null"));
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.success() && !s.is_empty()).then_some(s)
    });
    let wire = stop(cap);
    drop(srv);
    eprintln!("router eth1 (router -> pod, inbound):\n{wire}");
    assert_eq!(got.unwrap_or_default().trim(), "hello-from-pod");
    assert!(
        wire.contains(&format!("IP {a_ip}.8080 > 192.168.10.200.")),
        "pod replies with its own IP: {wire}"
    );
    assert!(!wire.contains(&format!("IP {NODE}.")), "{wire}");
    router.sh("ip route del 10.244.0.0/24 via 192.168.10.100");

    // GC against conntrack: closed TCP connections go after the closing
    // timeout, the rest stays.
    let before = nat.entries().unwrap().len();
    let st = fibril_datapath::nat::gc_node(
        &ctr.maps(),
        monotonic_ns(),
        &fibril_datapath::NatTimeouts::default(),
    )
    .unwrap();
    eprintln!("nat gc now: {st:?} of {before}");
    let st = fibril_datapath::nat::gc_node(
        &ctr.maps(),
        monotonic_ns() + 7 * 3600 * 1_000_000_000,
        &fibril_datapath::NatTimeouts::default(),
    )
    .unwrap();
    eprintln!("nat gc +7h: {st:?}");
    assert!(nat.entries().unwrap().is_empty(), "all pairs expire");

    drop(ctr);
    fabric.down().unwrap();
}
