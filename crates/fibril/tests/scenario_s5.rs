//! Scenario S5 (../shared/scenarios/README.md): cluster DNS behind the
//! kube-dns Service, the lab's upstream resolver, NodeLocal DNS cache with
//! the seeds' Local Redirect Policy, and a cache rollout that loses no
//! query. Driven through the CLI, answers checked with dig from a pod.
//! Root only.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod e2e;

use std::time::Duration;

use e2e::{eventually, text, Lab};

const WEBPOD: &str = include_str!("../../../lab/manifests/webpod.yaml");
const CURL_POD: &str = include_str!("../../../lab/manifests/curl-pod.yaml");
const NODELOCAL: &str = include_str!("../../../lab/manifests/nodelocaldns.yaml");
/// An address-matcher LRP: the node-local address 169.254.20.10:53 to the
/// cache pod on the same node.
const ADDRESS_LRP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumLocalRedirectPolicy
metadata: {name: nodelocaldns-address, namespace: kube-system}
spec:
  redirectFrontend:
    addressMatcher:
      ip: "169.254.20.10"
      toPorts: [{port: "53", name: dns, protocol: UDP}]
  redirectBackend:
    localEndpointSelector:
      matchLabels: {k8s-app: node-local-dns}
    toPorts: [{port: "53", name: dns, protocol: UDP}]
"#;

fn dig(lab: &Lab, args: &[&str]) -> String {
    let mut cmd = vec!["dig", "+tries=2", "+timeout=2"];
    cmd.extend_from_slice(args);
    text(&lab.exec_pod("curl-pod", &cmd))
}

/// Sum of `coredns_dns_requests_total` in a DNS pod's metrics at `ip:port`.
fn requests(lab: &Lab, ip: &str, port: u16, proto: &str) -> u64 {
    let o = lab.exec_pod(
        "curl-pod",
        &[
            "curl",
            "-s",
            "--max-time",
            "2",
            &format!("http://{ip}:{port}/metrics"),
        ],
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("coredns_dns_requests_total{")
                && l.contains(&format!("proto=\"{proto}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Runs `n` queries from curl-pod while `during` runs; returns how many failed.
fn queries_during(lab: &Lab, n: usize, during: impl FnOnce()) -> (usize, String) {
    let script = format!(
        "for i in $(seq {n}); do dig +tries=1 +timeout=1 +short webpod.default.svc.cluster.local || echo FAIL; sleep 0.03; done"
    );
    let mut bg = lab.spawn_in_pod("curl-pod", &["sh", "-c", &script]);
    std::thread::sleep(Duration::from_millis(500));
    during();
    let out = bg.wait(Duration::from_secs(60)).expect("query loop ends");
    let answered = out.lines().filter(|l| l.starts_with("10.")).count();
    (n - answered, out)
}

#[test]
fn s5_cluster_dns_nodelocal_and_lrp() {
    let lab = Lab::up("s5", "seed-3w", &[]);
    lab.apply(WEBPOD);
    lab.apply(CURL_POD);
    lab.wait_running(
        &["webpod-", "curl-pod", "coredns-"],
        5,
        Duration::from_secs(90),
    );
    let svc = lab.cluster_ip("webpod", "default");

    // Pods' resolv.conf.
    let resolv = text(&lab.exec_pod("curl-pod", &["cat", "/etc/resolv.conf"]));
    for want in [
        "search default.svc.cluster.local svc.cluster.local cluster.local",
        "nameserver 10.96.0.10",
        "options ndots:5",
    ] {
        assert!(resolv.contains(want), "{resolv}");
    }
    // kube-dns: 10.96.0.10 with 53/UDP, 53/TCP, 9153/TCP, two DNS pods.
    let kd = lab.ok(&["get", "svc", "kube-dns", "-n", "kube-system"]);
    for want in ["10.96.0.10", "53/UDP", "53/TCP", "9153/TCP"] {
        assert!(kd.contains(want), "{kd}");
    }
    // Names: service, AAAA NODATA with the SOA, pod records, upstream zone.
    let ns = eventually(Duration::from_secs(20), || {
        let o = text(&lab.exec_pod("curl-pod", &["nslookup", "webpod"]));
        o.contains(&format!("Address: {svc}")).then_some(o)
    });
    assert!(ns.is_some(), "nslookup webpod answers {svc}");
    let aaaa = dig(&lab, &["webpod.default.svc.cluster.local", "AAAA"]);
    assert!(aaaa.contains("status: NOERROR"), "{aaaa}");
    assert!(
        aaaa.contains("SOA") && aaaa.contains("ns.dns.cluster.local. hostmaster.cluster.local."),
        "{aaaa}"
    );
    let curl_ip = lab.pod_ip("curl-pod", "default");
    let pod_name = format!("{}.default.pod.cluster.local", curl_ip.replace('.', "-"));
    let a = dig(&lab, &["+short", &pod_name]);
    assert!(a.lines().any(|l| l.trim() == curl_ip), "{pod_name}: {a}");
    let ext = dig(&lab, &["+short", "www.example.test"]);
    assert!(ext.contains("10.10.1.200"), "forwarded upstream: {ext}");
    let nx = dig(&lab, &["nothing.example.test"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let metrics = text(&lab.exec_pod(
        "curl-pod",
        &[
            "curl",
            "-s",
            "--max-time",
            "2",
            "kube-dns.kube-system.svc:9153/metrics",
        ],
    ));
    assert!(
        metrics.contains("coredns_cache_requests_total")
            && metrics.contains("coredns_cache_misses_total"),
        "{metrics}"
    );

    // NodeLocal DNS with the seeds' Local Redirect Policy.
    lab.ok(&[
        "lab",
        "upgrade",
        "--name",
        &lab.name,
        "--set",
        "localRedirectPolicy=true",
    ]);
    lab.apply(NODELOCAL);
    lab.wait_running(&["node-local-dns-"], 2, Duration::from_secs(60));
    let lrp = eventually(Duration::from_secs(20), || {
        let l = lab.ok(&["dbg", "lrp", "list"]);
        (l.contains("nodelocaldns") && l.contains("node-local-dns-")).then_some(l)
    })
    .expect("lrp list shows the redirect");
    assert!(lrp.contains("kube-system/kube-dns"), "{lrp}");
    let list = lab.ok(&["dbg", "service", "list"]);
    assert!(
        list.lines()
            .filter(|l| l.contains("10.96.0.10:53") && l.contains("LocalRedirect"))
            .count()
            == 2,
        "{list}"
    );
    // Queries from curl-pod (k8s-ctr) reach the cache on k8s-ctr, which asks
    // kube-dns over TCP.
    let caches = lab.pods("node-local-dns-");
    let local = caches.iter().find(|p| p.1 == "k8s-ctr").unwrap().2.clone();
    let remote = caches.iter().find(|p| p.1 == "k8s-w1").unwrap().2.clone();
    let (l0, r0) = (
        requests(&lab, &local, 9253, "udp"),
        requests(&lab, &remote, 9253, "udp"),
    );
    for i in 0..10 {
        let name = format!("q{i}.example.test");
        dig(&lab, &["+short", &name]);
        dig(&lab, &["+short", "webpod.default.svc.cluster.local"]);
    }
    let (l1, r1) = (
        requests(&lab, &local, 9253, "udp"),
        requests(&lab, &remote, 9253, "udp"),
    );
    assert!(l1 >= l0 + 20, "local cache answered the pod: {l0} -> {l1}");
    assert_eq!(r1, r0, "the other node's cache saw nothing");
    let coredns_tcp: u64 = lab
        .pods("coredns-")
        .iter()
        .map(|p| requests(&lab, &p.2, 9153, "tcp"))
        .sum();
    assert!(coredns_tcp > 0, "the cache forwards cluster names over TCP");

    // An address matcher: 169.254.20.10:53 reaches the local cache too.
    lab.apply(ADDRESS_LRP);
    let l2 = requests(&lab, &local, 9253, "udp");
    let answered = eventually(Duration::from_secs(20), || {
        let a = dig(
            &lab,
            &[
                "@169.254.20.10",
                "+short",
                "webpod.default.svc.cluster.local",
            ],
        );
        a.lines().any(|l| l.trim() == svc).then_some(a)
    });
    assert!(answered.is_some(), "169.254.20.10 answers");
    assert!(
        requests(&lab, &local, 9253, "udp") > l2,
        "through the local cache"
    );
    assert!(lab.ok(&["dbg", "lrp", "list"]).contains("169.254.20.10"));

    // A rollout of the cache loses no query.
    let (lost, out) = queries_during(&lab, 120, || {
        lab.ok(&[
            "rollout",
            "restart",
            "ds/node-local-dns",
            "-n",
            "kube-system",
        ]);
        std::thread::sleep(Duration::from_secs(3));
    });
    assert_eq!(lost, 0, "queries lost during the cache rollout:\n{out}");
    // Without a cache pod, queries fall back to kube-dns.
    let (lost, out) = queries_during(&lab, 60, || {
        lab.ok(&["delete", "daemonset", "node-local-dns", "-n", "kube-system"]);
    });
    assert_eq!(lost, 0, "queries lost while the cache goes away:\n{out}");
    let list = lab.ok(&["dbg", "service", "list"]);
    assert!(!list.contains("LocalRedirect"), "{list}");
}
