//! Privileged tests on real traffic between namespaces: endpoints (ARP,
//! local delivery, host <-> pod), native routing across a router (lab
//! fabric seed-4w), no-route drops as events, conntrack and flow events.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{lab_name, TestNode};
use fibril_abi::{DropReason, ObsPoint, Verdict};
use fibril_datapath::testing::fixture::{eventually, TestNetns};
use fibril_datapath::{monotonic_ns, Flow};
use fibril_lab::{netns_name, Fabric, Topology};

fn ping(ns: &TestNetns, dst: Ipv4Addr) -> bool {
    ns.sh_output(&format!("ping -c 2 -i 0.2 -W 2 {dst}"))
        .status
        .success()
}

/// Serves one line over TCP from `server` and reads it from `client`.
fn tcp_exchange(server: &TestNetns, client: &TestNetns, dst: Ipv4Addr, port: u16) -> String {
    let srv = server.spawn(&format!("sh -c 'echo hello-from-{dst} | nc -N -l {port}'"));
    let got = eventually(Duration::from_secs(10), || {
        let out = client.sh_output(&format!("nc -N -w 2 {dst} {port} </dev/null"));
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !s.is_empty()).then_some(s)
    });
    drop(srv);
    got.unwrap_or_default()
}

fn drain(node: &TestNode) -> Vec<Flow> {
    node.maps().events().unwrap().drain().0
}

#[test]
fn endpoints_on_one_node() {
    let router = Ipv4Addr::new(10, 244, 0, 1);
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 0, 10), Ipv4Addr::new(10, 244, 0, 11));
    let mut node = TestNode::standalone(router);
    node.load(node.config());
    let a = node.add_pod("lxca", a_ip, 1000);
    let b = node.add_pod("lxcb", b_ip, 2000);

    // Pod -> gateway (router IP on fibril_host): ARP answered by BPF with
    // the host veth's MAC.
    assert!(ping(&node.pod(a).ns, router), "pod A -> router IP");
    let neigh = node.pod(a).ns.sh(&format!("ip neigh show {router}"));
    let lxca_mac = fibril_datapath::testing::packet::MacAddr(node.ns.mac("lxca")).to_string();
    assert!(
        neigh.contains(&lxca_mac),
        "gateway resolves to lxca's MAC: {neigh} vs {lxca_mac}"
    );
    // Pod <-> pod on the node (peer redirect), both directions.
    assert!(ping(&node.pod(a).ns, b_ip), "pod A -> pod B");
    assert!(ping(&node.pod(b).ns, a_ip), "pod B -> pod A");
    // Host -> pod and pod -> host.
    assert!(ping(&node.ns, a_ip), "node -> pod A");
    let got = tcp_exchange(&node.pod(b).ns, &node.pod(a).ns, b_ip, 8080);
    assert_eq!(got.trim(), format!("hello-from-{b_ip}"), "TCP A -> B");
    let got = tcp_exchange(&node.ns, &node.pod(a).ns, router, 8081);
    assert_eq!(
        got.trim(),
        format!("hello-from-{router}"),
        "TCP pod -> host"
    );

    // Events: to-endpoint for A -> B, with identities; to-stack for the
    // router.
    let flows = drain(&node);
    assert!(
        flows.iter().any(|f| f.obs_point == ObsPoint::ToEndpoint
            && f.src_ip == a_ip
            && f.dst_ip == b_ip
            && f.src_identity == 1000
            && f.dst_identity == 2000
            && f.proto == 6
            && f.verdict == Verdict::Forwarded),
        "to-endpoint TCP flow A -> B in {} flows",
        flows.len()
    );
    assert!(flows
        .iter()
        .any(|f| f.obs_point == ObsPoint::ToStack && f.dst_ip == router));
    for f in flows.iter().take(5) {
        eprintln!("flow: {f}");
    }

    let status = fibril_datapath::DatapathStatus::read(&node.pin_dir).unwrap();
    eprintln!("{status}");
    assert_eq!(
        status.attachments.len(),
        4,
        "fibril_host in/out, lxca, lxcb"
    );
    assert_eq!(status.endpoints, 2);
    assert!(status.forwarded > 0 && status.drops.is_empty());

    // Conntrack: TCP connections and ICMP flows recorded, all alive now.
    let mut ct = node.maps().conntrack().unwrap();
    let counts = ct.counts(monotonic_ns()).unwrap();
    eprintln!("conntrack: {counts:?}");
    assert!(counts.tcp >= 2 && counts.icmp >= 1, "{counts:?}");
    assert!(
        counts.closing >= 1,
        "finished TCP connections are closing: {counts:?}"
    );
    let st = ct.gc(monotonic_ns()).unwrap();
    assert_eq!(st.removed, 0, "nothing expired yet: {st:?}");
    // Far in the future everything has expired.
    let st = ct.gc(monotonic_ns() + 7 * 3600 * 1_000_000_000).unwrap();
    assert_eq!(st.removed, counts.total, "{st:?}");
    assert_eq!(ct.counts(monotonic_ns()).unwrap().total, 0);
}

#[test]
fn native_routing_across_router_with_no_route_drops() {
    let topo = Topology::builtin("seed-4w").unwrap();
    let lab = lab_name("dpn");
    let fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let router = TestNetns::existing(&netns_name(&lab, "router"));
    router.sh("ip route add 10.244.0.0/24 via 192.168.10.100 && \
         ip route add 10.244.1.0/24 via 192.168.20.100");

    let mut ctr = TestNode::in_netns(
        &netns_name(&lab, "k8s-ctr"),
        Ipv4Addr::new(192, 168, 10, 100),
        Ipv4Addr::new(10, 244, 0, 1),
    );
    let mut w0 = TestNode::in_netns(
        &netns_name(&lab, "k8s-w0"),
        Ipv4Addr::new(192, 168, 20, 100),
        Ipv4Addr::new(10, 244, 1, 1),
    );
    ctr.ns.sh("ip route add 10.244.1.0/24 via 192.168.10.200");
    w0.ns.sh("ip route add 10.244.0.0/24 via 192.168.20.200");
    ctr.load(ctr.config());
    w0.load(w0.config());
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 0, 10), Ipv4Addr::new(10, 244, 1, 10));
    let a = ctr.add_pod("lxca", a_ip, 1000);
    let b = w0.add_pod("lxcb", b_ip, 2000);

    // Capture on the router's eth1 (between k8s-ctr and the router): pod
    // IPs on the wire, no NAT, no encapsulation.
    let cap = router.spawn("tcpdump -i eth1 -nn -l -c 4 icmp");
    std::thread::sleep(Duration::from_millis(500)); // tcpdump start-up, not an assertion
    assert!(
        ping(&ctr.pod(a).ns, b_ip),
        "pod on k8s-ctr -> pod on k8s-w0"
    );
    let (wire, _) = cap.finish();
    eprintln!("router eth1:\n{wire}");
    assert!(
        wire.contains(&format!("{a_ip} > {b_ip}: ICMP echo request")),
        "pod IPs on the wire: {wire}"
    );
    assert!(
        wire.contains(&format!("{b_ip} > {a_ip}: ICMP echo reply")),
        "{wire}"
    );

    let got = tcp_exchange(&w0.pod(b).ns, &ctr.pod(a).ns, b_ip, 8080);
    assert_eq!(got.trim(), format!("hello-from-{b_ip}"), "TCP across nodes");

    let eth1 = ctr.ns.ifindex("eth1");
    let flows = drain(&ctr);
    assert!(
        flows.iter().any(|f| f.obs_point == ObsPoint::ToNetwork
            && f.dst_ip == b_ip
            && f.dst_ifindex == eth1),
        "to-network via FIB redirect on k8s-ctr"
    );
    let flows_w0 = drain(&w0);
    assert!(
        flows_w0
            .iter()
            .any(|f| f.obs_point == ObsPoint::ToEndpoint && f.src_ip == a_ip && f.dst_ip == b_ip),
        "to-endpoint on k8s-w0 (delivered from the underlay)"
    );

    // A pod CIDR without a route: dropped with a reason, counted, reported.
    let lost = Ipv4Addr::new(10, 244, 9, 9);
    assert!(!ping(&ctr.pod(a).ns, lost));
    let drops: Vec<Flow> = drain(&ctr)
        .into_iter()
        .filter(|f| f.verdict == Verdict::Dropped)
        .collect();
    assert!(
        drops
            .iter()
            .any(|f| f.dst_ip == lost && f.drop_reason == Some(DropReason::NoRoute)),
        "no-route drop event: {drops:?}"
    );
    eprintln!("drop event: {}", drops[0]);
    let m = ctr.maps().metrics().unwrap();
    assert!(m.drops(DropReason::NoRoute).unwrap() >= 2);

    drop(ctr);
    drop(w0);
    fabric.down().unwrap();
}
