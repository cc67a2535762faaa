//! Scenario S4 (../shared/scenarios/README.md): kube-proxy replacement on
//! seed-3w: ClusterIP (and the dbg listings), NodePort from the router with
//! SNAT for remote backends, `externalTrafficPolicy: Local` preserving the
//! client IP, LoadBalancer IPs allocated from the lab's pool. Root only.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod e2e;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{eventually, Lab};

const WEBPOD: &str = include_str!("../../../lab/manifests/webpod.yaml");
const CURL_POD: &str = include_str!("../../../lab/manifests/curl-pod.yaml");
const NODEPORT: &str =
    include_str!("../../fibril-api/tests/fixtures/seeds/403-nginx-nodeport-test.yaml");

/// whoami behind NodePort 31001 (cluster policy), 31002 (Local, one
/// replica on k8s-w1) and a LoadBalancer.
const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers: [{name: whoami, image: traefik/whoami, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-np}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{port: 80, targetPort: 80, nodePort: 31001}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: local}
spec:
  replicas: 1
  selector: {matchLabels: {app: local}}
  template:
    metadata: {labels: {app: local}}
    spec:
      nodeSelector: {kubernetes.io/hostname: k8s-w1}
      containers: [{name: whoami, image: traefik/whoami, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: local-np}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: local}
  ports: [{port: 80, targetPort: 80, nodePort: 31002}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-lb}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{port: 80, targetPort: 80}]
"#;

/// (Hostname, RemoteAddr IP) of a curl from the router, if it answered.
fn from_router(lab: &Lab, url: &str) -> Option<(String, String)> {
    let o = lab.lab_exec(
        "router",
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
    let body = String::from_utf8_lossy(&o.stdout).into_owned();
    let field = |k: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let host = field("Hostname: ")?;
    let remote = field("RemoteAddr: ")?;
    Some((host, remote.split(':').next().unwrap_or("").to_string()))
}

#[test]
fn s4_clusterip_nodeport_local_loadbalancer() {
    let lab = Lab::up(
        "s4",
        "seed-3w",
        &[
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=10.0.0.0/8",
        ],
    );
    lab.apply(WEBPOD);
    lab.apply(CURL_POD);
    lab.apply(NODEPORT);
    lab.apply(ECHO);
    lab.wait_running(
        &[
            "webpod-",
            "curl-pod",
            "nginx-nodeport-test-",
            "echo-",
            "local-",
        ],
        9,
        Duration::from_secs(120),
    );

    // ClusterIP and the dbg listings.
    let svc = lab.cluster_ip("webpod", "default");
    let list = eventually(Duration::from_secs(20), || {
        let l = lab.ok(&["dbg", "service", "list"]);
        l.contains(&format!("{svc}:80/TCP")).then_some(l)
    })
    .expect("service list shows the ClusterIP");
    for want in [
        "ID",
        "Frontend",
        "Service Type",
        "Backend",
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
    ] {
        assert!(list.contains(want), "service list lacks {want}:\n{list}");
    }
    let lb = lab.ok(&["dbg", "bpf", "lb", "list"]);
    assert!(lb.contains(&format!("{svc}:80")), "{lb}");
    let revnat = lab.ok(&["dbg", "bpf", "lb", "list", "--revnat"]);
    assert!(revnat.contains(&format!("{svc}:80")), "{revnat}");
    let o = lab.exec_pod(
        "curl-pod",
        &["curl", "-s", "--max-time", "2", &format!("http://{svc}")],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("Hostname: webpod-"));

    // NodePort 31000 (the seed's nginx) on every node IP from the router.
    for node_ip in ["192.168.10.100", "192.168.10.101"] {
        for _ in 0..4 {
            let o = lab.lab_exec(
                "router",
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "2",
                    &format!("http://{node_ip}:31000"),
                ],
            );
            assert!(
                String::from_utf8_lossy(&o.stdout).contains("Welcome to nginx"),
                "NodePort 31000 on {node_ip}"
            );
        }
    }

    // SNAT to the node IP for a remote backend; the client IP for a local one.
    let echo: BTreeMap<String, String> =
        lab.pods("echo-").into_iter().map(|p| (p.0, p.1)).collect();
    let mut remote_seen = false;
    for _ in 0..16 {
        let (host, src) = from_router(&lab, "http://192.168.10.100:31001").expect("answer");
        if echo.get(&host).map(String::as_str) == Some("k8s-w1") {
            assert_eq!(src, "192.168.10.100", "remote backend sees the node IP");
            remote_seen = true;
        }
    }
    assert!(remote_seen, "a backend on k8s-w1 answered through k8s-ctr");

    // externalTrafficPolicy: Local: only k8s-w1 answers, with the router's IP.
    let (host, src) = from_router(&lab, "http://192.168.10.101:31002").expect("k8s-w1 answers");
    assert!(host.starts_with("local-"), "{host}");
    assert_eq!(src, "192.168.10.200", "client IP preserved");
    assert_eq!(
        from_router(&lab, "http://192.168.10.100:31002"),
        None,
        "no local backend on k8s-ctr"
    );

    // LoadBalancer: an IP from the lab pool (192.168.10.240/28), reachable from the router.
    let lb_ip = eventually(Duration::from_secs(20), || {
        let js = lab.ok(&["get", "services", "echo-lb", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&js).ok()?;
        v["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string)
    })
    .expect("LB IP allocated");
    assert!(
        lb_ip.starts_with("192.168.10.24") || lb_ip.starts_with("192.168.10.25"),
        "{lb_ip}"
    );
    let svcs = lab.ok(&["get", "services"]);
    assert!(svcs.contains(&lb_ip), "EXTERNAL-IP column:\n{svcs}");
    let got = eventually(Duration::from_secs(20), || {
        from_router(&lab, &format!("http://{lb_ip}"))
    });
    let (host, _) = got.expect("LB IP answers the router");
    assert!(host.starts_with("echo-"), "{host}");
}
