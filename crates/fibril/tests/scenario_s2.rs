//! Scenario S2 (../shared/scenarios/README.md): nodes on two subnets behind
//! a router (seed-4w). Native routing cannot reach the pods of the node on
//! the other subnet; VXLAN and Geneve (both done in eBPF) can, and the
//! router's captures decode the tunnel with the inner pod packet. Root only.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod e2e;

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{eventually, text, Lab};

const WEBPOD: &str = include_str!("../../../lab/manifests/webpod.yaml");
const CURL_POD: &str = include_str!("../../../lab/manifests/curl-pod.yaml");

/// Hostnames answering `tries` curls to `url` from curl-pod, and how many failed.
fn answers(lab: &Lab, url: &str, tries: usize) -> (BTreeSet<String>, usize) {
    let mut seen = BTreeSet::new();
    let mut failed = 0;
    for _ in 0..tries {
        let o = lab.exec_pod(
            "curl-pod",
            &[
                "curl",
                "-s",
                "--connect-timeout",
                "1",
                "--max-time",
                "2",
                url,
            ],
        );
        let out = String::from_utf8_lossy(&o.stdout);
        match out.lines().find_map(|l| l.strip_prefix("Hostname: ")) {
            Some(h) => {
                seen.insert(h.trim().to_string());
            }
            None => failed += 1,
        }
    }
    (seen, failed)
}

/// Captures on the router while `f` runs; returns tshark's field lines.
fn capture_tunnel(lab: &Lab, port: u16, proto: &str, f: impl FnOnce()) -> String {
    let filter = format!("udp port {port}");
    let decode = format!("udp.port=={port},{proto}");
    let cap = lab.spawn_on(
        "router",
        &[
            "tshark",
            "-l",
            "-n",
            "-i",
            "eth1",
            "-i",
            "eth2",
            "-f",
            &filter,
            "-d",
            &decode,
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
            "-e",
            "vxlan.vni",
            "-e",
            "geneve.vni",
        ],
    );
    // tshark needs a moment before it captures.
    std::thread::sleep(Duration::from_secs(2));
    f();
    std::thread::sleep(Duration::from_millis(500));
    cap.stop()
}

#[test]
fn s2_cross_subnet_native_vxlan_geneve() {
    let lab = Lab::up(
        "s2",
        "seed-4w",
        &[
            "ipam.mode=cluster-pool",
            "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}",
            "ipam.operator.clusterPoolIPv4MaskSize=24",
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=172.20.0.0/16",
        ],
    );
    lab.apply(WEBPOD);
    lab.apply(CURL_POD);
    lab.ok(&["scale", "deployment", "webpod", "--replicas", "3"]);
    lab.wait_running(&["webpod-", "curl-pod"], 4, Duration::from_secs(90));
    let webpods = lab.pods("webpod-");
    let nodes: BTreeSet<&str> = webpods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one replica per node: {webpods:?}");
    let w0 = webpods.iter().find(|p| p.1 == "k8s-w0").unwrap().clone();
    let all: BTreeSet<String> = webpods.iter().map(|p| p.0.clone()).collect();
    let svc = format!("http://{}", lab.cluster_ip("webpod", "default"));

    // 1. Native: a route to k8s-w1's block (same subnet), none to k8s-w0's.
    let cidr_of = |node: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&lab.ok(&["get", "ciliumnodes", node, "-o", "json"])).unwrap();
        v["spec"]["ipam"]["podCIDRs"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (w1_cidr, w0_cidr) = (cidr_of("k8s-w1"), cidr_of("k8s-w0"));
    let routes = text(&lab.lab_exec("k8s-ctr", &["ip", "route"]));
    assert!(
        routes.contains(&format!("{w1_cidr} via 192.168.10.101")),
        "{routes}"
    );
    assert!(
        !routes.contains(&w0_cidr),
        "no direct route to k8s-w0:\n{routes}"
    );
    let cap = lab.spawn_on(
        "router",
        &[
            "tcpdump",
            "-i",
            "eth1",
            "-nn",
            "-l",
            "tcp[tcpflags] & tcp-syn != 0",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    // Routes to peers follow the FibrilNodes within a sync period: wait
    // for the two reachable replicas, counting what fails meanwhile.
    let mut failed = 0;
    let seen = eventually(Duration::from_secs(20), || {
        let (seen, f) = answers(&lab, &svc, 9);
        failed += f;
        (seen.len() == 2).then_some(seen)
    });
    let syns = cap.stop();
    let seen = seen.expect("the replicas on k8s-ctr and k8s-w1 answer");
    assert!(!seen.contains(&w0.0), "k8s-w0's replica answered natively");
    assert!(failed > 0, "requests to k8s-w0's replica time out");
    assert!(
        syns.contains(&format!("> {}.80:", w0.2)),
        "router sees the SYN to the w0 pod:\n{syns}"
    );

    // 2. VXLAN.
    lab.ok(&[
        "lab",
        "upgrade",
        "--name",
        &lab.name,
        "--set",
        "routingMode=tunnel",
        "--set",
        "tunnelProtocol=vxlan",
        "--set",
        "autoDirectNodeRoutes=false",
    ]);
    let status = lab.ok(&["dbg", "status"]);
    assert!(status.contains("Network: Tunnel [vxlan]"), "{status}");
    let got = eventually(Duration::from_secs(20), || {
        let (seen, _) = answers(&lab, &svc, 9);
        (seen == all).then_some(())
    });
    assert!(got.is_some(), "all three replicas answer over VXLAN");
    let curl_ip = lab.pod_ip("curl-pod", "default");
    let lines = capture_tunnel(&lab, 8472, "vxlan", || {
        let o = lab.exec_pod("curl-pod", &["ping", "-c", "2", "-W", "2", &w0.2]);
        assert!(o.status.success(), "{}", text(&o));
    });
    assert!(
        lines
            .lines()
            .any(|l| l.starts_with("192.168.10.100,") || l.starts_with("192.168.10.100|")),
        "outer 192.168.10.100 -> 192.168.20.100:\n{lines}"
    );
    assert!(
        lines.contains(&curl_ip) && lines.contains(&w0.2),
        "inner pod IPs decoded:\n{lines}"
    );
    assert!(lines.contains("8472"), "{lines}");

    // 3. Geneve: UDP 6081, the VNI carries the source identity.
    lab.ok(&[
        "lab",
        "upgrade",
        "--name",
        &lab.name,
        "--set",
        "tunnelProtocol=geneve",
    ]);
    let status = lab.ok(&["dbg", "status"]);
    assert!(status.contains("Network: Tunnel [geneve]"), "{status}");
    let got = eventually(Duration::from_secs(20), || {
        let (seen, _) = answers(&lab, &svc, 9);
        (seen == all).then_some(())
    });
    assert!(got.is_some(), "all three replicas answer over Geneve");
    let ceps = lab.ok(&["get", "ciliumendpoints"]);
    let curl_id = ceps
        .lines()
        .find(|l| l.starts_with("curl-pod"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let lines = capture_tunnel(&lab, 6081, "geneve", || {
        let o = lab.exec_pod("curl-pod", &["ping", "-c", "2", "-W", "2", &w0.2]);
        assert!(o.status.success(), "{}", text(&o));
    });
    assert!(lines.contains("6081"), "{lines}");
    assert!(
        lines.contains(&curl_ip) && lines.contains(&w0.2),
        "inner pod IPs decoded:\n{lines}"
    );
    // tshark prints the Geneve VNI in hex (0x00f3f6).
    let vni = |v: &str| match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    };
    let want: u32 = curl_id.parse().unwrap();
    let vni_ok = lines.lines().any(|l| {
        l.starts_with(&format!("192.168.10.100,{curl_ip}"))
            && l.split('|').nth(4).and_then(vni) == Some(want)
    });
    assert!(vni_ok, "VNI {curl_id} (curl-pod's identity):\n{lines}");
}
