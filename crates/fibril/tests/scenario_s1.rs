//! Scenario S1 (../shared/scenarios/README.md): IPAM, native routing and
//! masquerading on seed-3w, driven through the `fibril` CLI and checked on
//! real packets. Root only (lab namespaces, eBPF).

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod e2e;

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{eventually, text, Lab};

const WEBPOD: &str = include_str!("../../../lab/manifests/webpod.yaml");
const CURL_POD: &str = include_str!("../../../lab/manifests/curl-pod.yaml");

/// `Hostname:` lines of repeated `curl` calls from curl-pod to `url`.
fn hostnames(lab: &Lab, url: &str, tries: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        let o = lab.exec_pod("curl-pod", &["curl", "-s", "--max-time", "2", url]);
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(h) = l.strip_prefix("Hostname: ") {
                seen.insert(h.trim().to_string());
            }
        }
    }
    seen
}

/// `RemoteAddr:` of one curl from curl-pod to a whoami server at `url`.
fn remote_addr(lab: &Lab, url: &str) -> Option<String> {
    let o = lab.exec_pod("curl-pod", &["curl", "-s", "--max-time", "3", url]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RemoteAddr: "))
        .map(|a| a.split(':').next().unwrap_or("").to_string())
}

#[test]
fn s1_ipam_native_routing_masquerading() {
    // 1. kubernetes IPAM, native routing.
    let lab = Lab::up(
        "s1",
        "seed-3w",
        &[
            "ipam.mode=kubernetes",
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=10.244.0.0/16",
            "bpf.masquerade=true",
        ],
    );
    let nodes = lab.ok(&["get", "nodes", "-o", "wide"]);
    for want in [
        "k8s-ctr",
        "k8s-w1",
        "Ready",
        "192.168.10.100",
        "192.168.10.101",
    ] {
        assert!(nodes.contains(want), "get nodes lacks {want}:\n{nodes}");
    }
    let js: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "nodes", "-o", "json"])).unwrap();
    let cidrs: BTreeSet<String> = js["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["spec"]["podCIDR"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        cidrs,
        BTreeSet::from(["10.244.0.0/24".to_string(), "10.244.1.0/24".to_string()]),
        "{js}"
    );
    let cn = lab.ok(&["get", "ciliumnodes"]);
    for want in [
        "CILIUMINTERNALIP",
        "INTERNALIP",
        "192.168.10.100",
        "10.244.",
    ] {
        assert!(cn.contains(want), "get ciliumnodes lacks {want}:\n{cn}");
    }
    let cfg = lab.ok(&["config", "view"]);
    assert!(
        cfg.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["ipam", "kubernetes"]),
        "{cfg}"
    );

    // 2. webpod + curl-pod.
    lab.apply(WEBPOD);
    lab.apply(CURL_POD);
    lab.wait_running(&["webpod-", "curl-pod"], 3, Duration::from_secs(90));
    let ceps = lab.ok(&["get", "ciliumendpoints"]);
    assert!(
        ceps.contains("curl-pod") && ceps.contains("ready"),
        "{ceps}"
    );
    let webpods = lab.pods("webpod-");
    assert_eq!(webpods.len(), 2);
    let ids: BTreeSet<String> = ceps
        .lines()
        .filter(|l| l.starts_with("webpod-"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(ids.len(), 1, "webpods share one identity:\n{ceps}");
    let svc = lab.cluster_ip("webpod", "default");
    let seen = hostnames(&lab, &format!("http://{svc}"), 16);
    let want: BTreeSet<String> = webpods.iter().map(|p| p.0.clone()).collect();
    assert_eq!(seen, want, "both replicas answer through the ClusterIP");

    // 3. cluster-pool: existing CIDRs stay until the FibrilNode goes and the agent restarts.
    lab.ok(&[
        "lab",
        "upgrade",
        "--name",
        &lab.name,
        "--set",
        "ipam.mode=cluster-pool",
        "--set",
        "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}",
        "--set",
        "ipv4NativeRoutingCIDR=172.20.0.0/16",
    ]);
    let cfg = lab.ok(&["config", "view"]);
    assert!(cfg.contains("cluster-pool"), "{cfg}");
    assert!(
        !hostnames(&lab, &format!("http://{svc}"), 4).is_empty(),
        "old pods keep working after the upgrade"
    );
    for n in ["k8s-ctr", "k8s-w1"] {
        lab.ok(&["delete", "ciliumnode", n]);
    }
    lab.ok(&["rollout", "restart", "ds/fibril"]);
    let cn = eventually(Duration::from_secs(60), || {
        let cn = lab.ok(&["get", "ciliumnodes", "-o", "json"]);
        (cn.matches("172.20.").count() >= 2).then_some(cn)
    })
    .expect("nodes get 172.20.x.0/24 blocks");
    assert!(cn.contains("172.20."), "{cn}");
    // New pods take addresses from the new blocks.
    lab.ok(&["delete", "pod", "curl-pod"]);
    lab.ok(&["rollout", "restart", "deployment/webpod"]);
    lab.apply(CURL_POD);
    let ready = eventually(Duration::from_secs(90), || {
        let pods: Vec<_> = lab
            .pods("")
            .into_iter()
            .filter(|p| p.0.starts_with("webpod-") || p.0 == "curl-pod")
            .collect();
        let fresh = pods.iter().filter(|p| p.2.starts_with("172.20.")).count();
        let old = pods.iter().filter(|p| p.2.starts_with("10.244.")).count();
        (fresh == 3 && old == 0).then_some(pods)
    });
    assert!(
        ready.is_some(),
        "{}",
        lab.ok(&["get", "pods", "-o", "wide"])
    );
    lab.wait_running(&["webpod-", "curl-pod"], 3, Duration::from_secs(60));
    let webpods = lab.pods("webpod-");
    let want: BTreeSet<String> = webpods.iter().map(|p| p.0.clone()).collect();
    assert_eq!(hostnames(&lab, &format!("http://{svc}"), 16), want);

    // 4. Native routing: a route per peer CIDR via the peer's node IP; pod
    //    IPs on the wire, no encapsulation.
    let remote = webpods.iter().find(|p| p.1 == "k8s-w1").unwrap().clone();
    let routes = text(&lab.lab_exec("k8s-ctr", &["ip", "route"]));
    let w1_block = routes
        .lines()
        .find(|l| l.starts_with("172.20.") && l.contains("via 192.168.10.101"));
    assert!(w1_block.is_some(), "no route to k8s-w1's block:\n{routes}");
    let curl_ip = lab.pod_ip("curl-pod", "default");
    let cap = lab.spawn_on("k8s-ctr", &["tcpdump", "-i", "eth1", "-nn", "-l", "icmp"]);
    std::thread::sleep(Duration::from_millis(800));
    let ping = lab.exec_pod("curl-pod", &["ping", "-c", "3", "-W", "2", &remote.2]);
    assert!(ping.status.success(), "{}", text(&ping));
    let seen = cap.stop();
    assert!(
        seen.contains(&format!("{curl_ip} > {}: ICMP echo request", remote.2)),
        "pod IPs on eth1:\n{seen}"
    );

    // 5. Masquerading: to a node, the pod IP stays; outside the cluster, the node IP.
    let status = lab.ok(&["dbg", "status"]);
    let masq = status
        .lines()
        .find(|l| l.starts_with("Masquerading:"))
        .unwrap_or("");
    assert!(
        masq.contains("BPF") && masq.contains("eth1") && masq.contains("172.20.0.0/16"),
        "{status}"
    );
    let _w1_server = lab.spawn_on(
        "k8s-w1",
        &[e2e::bin(), "workload", "whoami", "--port", "8080"],
    );
    let _router_server = lab.spawn_on(
        "router",
        &[e2e::bin(), "workload", "whoami", "--port", "80"],
    );
    let to_node = eventually(Duration::from_secs(10), || {
        remote_addr(&lab, "http://192.168.10.101:8080")
    });
    assert_eq!(
        to_node.as_deref(),
        Some(curl_ip.as_str()),
        "pod -> node keeps the pod IP"
    );
    let to_router = eventually(Duration::from_secs(10), || {
        remote_addr(&lab, "http://10.10.1.200")
    });
    assert_eq!(
        to_router.as_deref(),
        Some("192.168.10.100"),
        "pod -> outside is masqueraded"
    );

    // 6. ip-masq-agent: the listed CIDRs are not masqueraded.
    lab.ok(&[
        "lab",
        "upgrade",
        "--name",
        &lab.name,
        "--set",
        "ipMasqAgent.enabled=true",
        "--set",
        "ipMasqAgent.config.nonMasqueradeCIDRs={10.10.1.0/24,10.10.2.0/24}",
    ]);
    let list = eventually(Duration::from_secs(30), || {
        let l = lab.ok(&["dbg", "bpf", "ipmasq", "list"]);
        l.contains("10.10.1.0/24").then_some(l)
    })
    .expect("ipmasq list");
    for want in ["10.10.1.0/24", "10.10.2.0/24", "169.254.0.0/16"] {
        assert!(list.contains(want), "{list}");
    }
    let cap = lab.spawn_on(
        "router",
        &[
            "tcpdump",
            "-i",
            "eth1",
            "-nn",
            "-l",
            "tcp port 80 and tcp[tcpflags] & tcp-syn != 0",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        remote_addr(&lab, "http://10.10.1.200"),
        None,
        "no route back to the pod"
    );
    let seen = cap.stop();
    assert!(
        seen.contains(&format!("{curl_ip}.")),
        "SYN with the pod IP:\n{seen}"
    );
    for (cidr, via) in cluster_blocks(&lab) {
        let o = lab.lab_exec("router", &["ip", "route", "replace", &cidr, "via", &via]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let direct = eventually(Duration::from_secs(10), || {
        remote_addr(&lab, "http://10.10.1.200")
    });
    assert_eq!(
        direct.as_deref(),
        Some(curl_ip.as_str()),
        "pod IP seen by the router"
    );
}

/// (pod CIDR, node IP) of every node, from `get ciliumnodes -o json`.
fn cluster_blocks(lab: &Lab) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "ciliumnodes", "-o", "json"])).unwrap();
    let mut out = Vec::new();
    for n in v["items"].as_array().unwrap() {
        let ip = n["spec"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["ip"].as_str())
            .unwrap()
            .to_string();
        for c in n["spec"]["ipam"]["podCIDRs"].as_array().unwrap() {
            out.push((c.as_str().unwrap().to_string(), ip.clone()));
        }
    }
    out
}
