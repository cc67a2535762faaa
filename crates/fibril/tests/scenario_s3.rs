//! Scenario S3 (../shared/scenarios/README.md): cluster-pool exhaustion
//! (`range is full` in `describe`, nothing leaked, an extra block once the
//! list grows) and multi-pool (pool annotations, on-demand blocks, native
//! and tunnel mode) on three nodes of one subnet. Root only.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod e2e;

use std::time::Duration;

use e2e::{eventually, Lab};

/// 10 replicas kept off the control plane, so they fill the two workers.
const FILLER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: filler
spec:
  replicas: 10
  selector:
    matchLabels: {app: filler}
  template:
    metadata:
      labels: {app: filler}
    spec:
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}
      containers:
      - name: idle
        image: nicolaka/netshoot
"#;

const POOLS: &str = concat!(
    include_str!("../../fibril-api/tests/fixtures/seeds/110-cilium-ip-pool-vac.yaml"),
    "\n---\n",
    include_str!("../../fibril-api/tests/fixtures/seeds/111-cilium-ip-pool-no-engine.yaml"),
);
const NGINX_POOLS: &str =
    include_str!("../../fibril-api/tests/fixtures/seeds/112-deploy-nginx-vac-no.yaml");
const CURL_POD: &str = include_str!("../../../lab/manifests/curl-pod.yaml");

/// `IPAM:` line of `fibril dbg --node NODE status`.
fn ipam_line(lab: &Lab, node: &str) -> String {
    let st = lab.ok(&["dbg", "--node", node, "status"]);
    st.lines()
        .find(|l| l.starts_with("IPAM:"))
        .unwrap_or_default()
        .to_string()
}

/// Pods whose name starts with `prefix` in phase Running / not Running.
fn running_split(lab: &Lab, prefix: &str) -> (usize, usize) {
    let v: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "pods", "-o", "json"])).unwrap();
    let mut run = (0, 0);
    for p in v["items"].as_array().unwrap() {
        if !p["metadata"]["name"].as_str().unwrap().starts_with(prefix) {
            continue;
        }
        if p["status"]["phase"] == "Running" {
            run.0 += 1;
        } else {
            run.1 += 1;
        }
    }
    run
}

#[test]
fn s3_cluster_pool_exhaustion_and_growth() {
    // Without the DNS add-on, so the counts are the seed's (2/6 before workloads).
    let lab = Lab::up_args(
        "s3c",
        "3nodes",
        &[
            "--no-dns",
            "--set",
            "ipam.mode=cluster-pool",
            "--set",
            "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.42.0/28,172.20.84.0/28}",
            "--set",
            "ipam.operator.clusterPoolIPv4MaskSize=29",
            "--set",
            "routingMode=native",
            "--set",
            "autoDirectNodeRoutes=true",
            "--set",
            "ipv4NativeRoutingCIDR=172.20.0.0/16",
        ],
    );
    // 1. One /29 per node; router and health take 2 of 6.
    let cn = lab.ok(&["get", "ciliumnodes", "-o", "json"]);
    assert_eq!(cn.matches("/29").count(), 3, "{cn}");
    let line = ipam_line(&lab, "k8s-w1");
    assert!(line.contains("IPv4: 2/6 allocated from 172.20."), "{line}");
    let verbose = lab.ok(&["dbg", "--node", "k8s-w1", "status", "--verbose"]);
    assert!(
        verbose.contains("(router)") && verbose.contains("(health)"),
        "{verbose}"
    );

    // 2. Ten replicas on two workers: the workers fill up (one of them may
    //    take the fourth, free block); the rest wait with `range is full`.
    lab.apply(FILLER);
    let pending = eventually(Duration::from_secs(90), || {
        let (run, wait) = running_split(&lab, "filler-");
        (run + wait == 10 && wait > 0 && run >= 8).then_some((run, wait))
    });
    let (_, waiting) =
        pending.unwrap_or_else(|| panic!("{}", lab.ok(&["get", "pods", "-o", "wide"])));
    let pods = lab.ok(&["get", "pods", "-o", "wide"]);
    assert!(pods.contains("ContainerCreating"), "{pods}");
    let stuck = pods
        .lines()
        .find(|l| l.contains("ContainerCreating"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let describe = eventually(Duration::from_secs(20), || {
        let d = lab.ok(&["describe", "pod", &stuck]);
        d.contains("range is full").then_some(d)
    })
    .unwrap_or_else(|| lab.ok(&["describe", "pod", &stuck]));
    assert!(
        describe.contains("FailedCreatePodSandBox")
            && describe.contains("unable to allocate IP via local agent: range is full"),
        "{describe}"
    );

    // 3. A longer list is accepted and the exhausted node gets a block from it.
    lab.ok(&[
        "lab",
        "upgrade",
        "--name",
        &lab.name,
        "--set",
        "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.42.0/28,172.20.84.0/28,10.0.0.0/28}",
    ]);
    let cfg = lab.ok(&["config", "view"]);
    assert!(cfg.contains("10.0.0.0/28"), "{cfg}");
    let all = eventually(Duration::from_secs(90), || {
        let (run, wait) = running_split(&lab, "filler-");
        (run == 10 && wait == 0).then_some(())
    });
    assert!(
        all.is_some(),
        "{waiting} pending pods start once 10.0.0.0/28 exists:\n{}",
        lab.ok(&["get", "pods", "-o", "wide"])
    );
    assert!(lab.ok(&["get", "pods", "-o", "wide"]).contains(" 10.0.0."));

    // Nothing leaked: every address comes back.
    lab.ok(&["delete", "deployment", "filler"]);
    let back = eventually(Duration::from_secs(60), || {
        let (run, wait) = running_split(&lab, "filler-");
        let lines = [ipam_line(&lab, "k8s-w1"), ipam_line(&lab, "k8s-w2")];
        (run + wait == 0 && lines.iter().all(|l| l.contains("IPv4: 2/"))).then_some(lines)
    });
    assert!(
        back.is_some(),
        "{} / {}",
        ipam_line(&lab, "k8s-w1"),
        ipam_line(&lab, "k8s-w2")
    );
    for node in ["k8s-w1", "k8s-w2"] {
        let eps = lab.ok(&["dbg", "--node", node, "bpf", "endpoint", "list"]);
        assert!(!eps.contains("filler"), "{eps}");
        let links = lab.lab_exec(node, &["ip", "-br", "link"]);
        let lxc = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|l| l.starts_with("lxc") && !l.starts_with("lxc_health"))
            .count();
        assert_eq!(lxc, 0, "veths left on {node}");
    }
}

#[test]
fn s3_multi_pool_native_then_tunnel() {
    let lab = Lab::up(
        "s3m",
        "3nodes",
        &[
            "ipam.mode=multi-pool",
            "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs={172.20.0.0/16}",
            "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.maskSize=28",
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=10.0.0.0/8",
        ],
    );
    let cn = lab.ok(&["get", "ciliumnodes", "k8s-w1", "-o", "yaml"]);
    assert!(cn.contains("default") && cn.contains("/28"), "{cn}");
    lab.apply(POOLS);
    lab.apply(NGINX_POOLS);
    lab.apply(CURL_POD);
    lab.wait_running(
        &["nginx-vac-", "nginx-no-", "curl-pod"],
        5,
        Duration::from_secs(90),
    );
    for (prefix, net) in [("nginx-vac-", "10.100."), ("nginx-no-", "10.200.")] {
        for p in lab.pods(prefix) {
            assert!(p.2.starts_with(net), "{p:?} from its pool");
        }
    }
    let curl_ip = lab.pod_ip("curl-pod", "default");
    assert!(curl_ip.starts_with("172.20."), "{curl_ip}");
    let yaml = lab.ok(&["get", "ciliumnodes", "-o", "yaml"]);
    for want in ["allocated", "vac", "no-engine", "10.100.", "10.200."] {
        assert!(yaml.contains(want), "pools.allocated lacks {want}:\n{yaml}");
    }
    // Pods of every pool answer curl-pod, on other nodes too.
    let reach = |lab: &Lab| {
        for p in lab.pods("nginx-") {
            let o = lab.exec_pod(
                "curl-pod",
                &["curl", "-s", "--max-time", "2", &format!("http://{}", p.2)],
            );
            let body = String::from_utf8_lossy(&o.stdout);
            assert!(
                body.contains("nginx"),
                "{} ({}) on {}: {body}",
                p.0,
                p.2,
                p.1
            );
        }
    };
    reach(&lab);

    // On-demand blocks: 20 replicas of nginx-vac need more than one /29 per node.
    lab.ok(&["scale", "deployment", "nginx-vac", "--replicas", "20"]);
    lab.wait_running(&["nginx-vac-"], 20, Duration::from_secs(120));
    let yaml = lab.ok(&["get", "ciliumnodes", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&yaml).unwrap();
    let vac_blocks: usize = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| {
            n["spec"]["ipam"]["pools"]["allocated"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|a| a["pool"] == "vac")
        .map(|a| a["cidrs"].as_array().map(Vec::len).unwrap_or(0))
        .sum();
    assert!(vac_blocks >= 4, "20 vac pods need more /29s: {vac_blocks}");
    lab.ok(&["scale", "deployment", "nginx-vac", "--replicas", "2"]);

    // Tunnel mode with the same pools.
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
    lab.wait_running(&["nginx-vac-"], 2, Duration::from_secs(60));
    let ok = eventually(Duration::from_secs(30), || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reach(&lab))).ok()
    });
    assert!(ok.is_some(), "multi-pool pods reachable in tunnel mode");
}
