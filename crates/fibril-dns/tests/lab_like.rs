//! The lab's DNS pieces without the lab: every file under lab/manifests/
//! parses (manifests with fibril_api, Corefiles and zone files with
//! fibril-dns), and the lab's own configuration answers as S5 expects:
//! CoreDNS with the `kube-system/coredns` ConfigMap from a real etcd
//! (fibril_store::EtcdServer on loopback) holding a Service, EndpointSlices
//! and Pods, forwarding outside names to the router's upstream resolver
//! (lab/manifests/upstream-dns, served by fibril-dns's `file` plugin), and the
//! node-local cache (the `kube-system/node-local-dns` ConfigMap) in front.
//! Only ports change: everything binds 127.0.0.1 on free ports.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_api::parse_manifests;
use fibril_store::{EtcdServer, EtcdStore, EtcdStoreOptions, ObjectKey, SharedStore};
use serde_json::json;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lab/manifests")
}

fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `data[key]` of ConfigMap `name` in a manifest file.
fn configmap_data(file: &str, name: &str, key: &str) -> String {
    let text = std::fs::read_to_string(manifests_dir().join(file)).unwrap();
    let objs = parse_manifests(&text).unwrap();
    let cm = objs
        .iter()
        .find(|o| o.kind() == "ConfigMap" && o.name() == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name} in {file}"));
    let (_, v) = cm.to_store().unwrap();
    v["data"][key].as_str().unwrap().to_string()
}

/// Node-local placeholders as `fibril dns` fills them for the seeds' args.
fn node_local_subst() -> Vec<(String, String)> {
    vec![
        ("__PILLAR__LOCAL__DNS__".into(), "169.254.20.10".into()),
        ("__PILLAR__DNS__SERVER__".into(), "10.96.0.10".into()),
        ("__PILLAR__DNS__DOMAIN__".into(), "cluster.local".into()),
    ]
}

#[test]
fn every_lab_manifest_parses() {
    let files = files_under(&manifests_dir());
    assert!(!files.is_empty());
    let mut corefiles = 0;
    let mut zones = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            let objs = parse_manifests(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(!objs.is_empty(), "{}: no objects", f.display());
            for o in &objs {
                o.to_store()
                    .unwrap_or_else(|e| panic!("{}: {}/{}: {e}", f.display(), o.kind(), o.name()));
                // Corefiles shipped in ConfigMaps load (placeholders filled).
                if o.kind() == "ConfigMap" {
                    let (_, v) = o.to_store().unwrap();
                    if let Some(cf) = v["data"]["Corefile"].as_str() {
                        let mut cf = cf.to_string();
                        for (a, b) in node_local_subst() {
                            cf = cf.replace(&a, &b);
                        }
                        fibril_dns::parse_corefile(&cf)
                            .unwrap_or_else(|e| panic!("{}: {}: {e}", f.display(), o.name()));
                        corefiles += 1;
                    }
                }
            }
        } else if name == "Corefile" {
            let cf = fibril_dns::parse_corefile(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            for b in &cf.servers {
                for fc in &b.files {
                    for z in &fc.zones {
                        let path = f.parent().unwrap().join(&fc.path);
                        fibril_dns::file::Zone::load(&path, z)
                            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                        zones += 1;
                    }
                }
            }
            corefiles += 1;
        }
        // Zone files are loaded through the Corefile that names them; other
        // files (docs) are not manifests.
    }
    assert!(corefiles >= 3, "coredns, node-local-dns, upstream-dns");
    assert!(zones >= 3);

    // The shapes S5 relies on.
    let text = std::fs::read_to_string(manifests_dir().join("coredns.yaml")).unwrap();
    let objs = parse_manifests(&text).unwrap();
    let get = |kind: &str, name: &str| {
        objs.iter()
            .find(|o| o.kind() == kind && o.name() == name)
            .map(|o| o.to_store().unwrap().1)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let svc = get("Service", "kube-dns");
    assert_eq!(svc["metadata"]["namespace"], "kube-system");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
    let ports: Vec<String> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {}/{}",
                p["name"].as_str().unwrap(),
                p["port"],
                p["protocol"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(ports, ["dns 53/UDP", "dns-tcp 53/TCP", "metrics 9153/TCP"]);
    let dep = get("Deployment", "coredns");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(
        dep["spec"]["template"]["metadata"]["labels"]["k8s-app"],
        "kube-dns"
    );
    assert_eq!(dep["spec"]["template"]["spec"]["dnsPolicy"], "Default");
    assert!(dep["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .starts_with("coredns/coredns"));
    let text = std::fs::read_to_string(manifests_dir().join("nodelocaldns.yaml")).unwrap();
    let kinds: Vec<String> = parse_manifests(&text)
        .unwrap()
        .iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect();
    for want in [
        "Service/kube-dns-upstream",
        "ConfigMap/node-local-dns",
        "DaemonSet/node-local-dns",
        "LocalRedirectPolicy/nodelocaldns",
    ] {
        // CiliumLocalRedirectPolicy is read as FibrilLocalRedirectPolicy.
        assert!(
            kinds.iter().any(|k| k.ends_with(want)),
            "{want} missing: {kinds:?}"
        );
    }
}

// ------------------------------------------------------------ live checks

struct TempDir(PathBuf);
impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "fibril-dns-lab-like-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `fibril_dns::run` task stopped on drop (and by `stop`).
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), fibril_dns::DnsError>>>,
}
impl Server {
    fn spawn(opts: fibril_dns::RunOptions, store: Option<SharedStore>) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = rx.await;
        };
        let task = match store {
            Some(s) => tokio::spawn(fibril_dns::run_with_store(opts, s, stop)),
            None => tokio::spawn(fibril_dns::run(
                opts,
                Arc::new(fibril_dns::ClusterIndex::new()),
                stop,
            )),
        };
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }
    /// Panics with the server's error if it exited.
    async fn check(&mut self) {
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            let r = self.task.take().unwrap().await.unwrap();
            panic!("dns server exited: {r:?}");
        }
    }
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}
impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn dig(port: u16, args: &str) -> String {
    let out = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=5"])
        .args(args.split_whitespace())
        .output()
        .await
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn curl(port: u16, path: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .await
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn status(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap().to_string())
        .unwrap_or_default()
}

fn flags(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split(";; flags: ").nth(1))
        .map(|s| s.split(';').next().unwrap().to_string())
        .unwrap_or_default()
}

/// A section's records, whitespace collapsed.
fn section(out: &str, name: &str) -> Vec<String> {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.starts_with(&format!(";; {name} SECTION")));
    lines.next();
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Retries `dig` until `ok` (the server may still be starting or syncing).
async fn dig_until(port: u16, args: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = dig(port, args).await;
        if ok(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "dig {args} never as expected:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put(store: &SharedStore, kind: &str, ns: &str, name: &str, v: serde_json::Value) {
    store
        .put(&ObjectKey::new(kind, Some(ns), name), v)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coredns_and_node_local_from_etcd_with_the_lab_upstream() {
    if !Path::new("/usr/bin/etcd").exists() {
        eprintln!("skipped: /usr/bin/etcd missing (Debian etcd-server)");
        return;
    }
    let tmp = TempDir::new();

    // The router's upstream resolver: lab/manifests/upstream-dns on a free
    // loopback port.
    let up_port = free_port();
    let up_dir = tmp.0.join("upstream-dns");
    std::fs::create_dir_all(&up_dir).unwrap();
    for f in files_under(&manifests_dir().join("upstream-dns")) {
        let name = f.file_name().unwrap().to_owned();
        let mut text = std::fs::read_to_string(&f).unwrap();
        if name == "Corefile" {
            text = text.replace(":53 {", &format!(":{up_port} {{\n    bind 127.0.0.1"));
        }
        std::fs::write(up_dir.join(name), text).unwrap();
    }
    let upstream = Server::spawn(
        fibril_dns::RunOptions {
            corefile: fibril_dns::CorefileSource::Path(up_dir.join("Corefile")),
            placeholders: Default::default(),
            substitutions: Vec::new(),
        },
        None,
    );
    let out = dig_until(up_port, "www.example.test A", |o| status(o) == "NOERROR").await;
    assert_eq!(
        section(&out, "ANSWER"),
        ["www.example.test. 300 IN A 10.10.1.200"],
        "{out}"
    );

    // The cluster store: a real etcd.
    let etcd = EtcdServer::start_local(tmp.0.join("etcd")).unwrap();
    let store: SharedStore = Arc::new(
        EtcdStore::connect(
            vec![etcd.client_url().to_string()],
            EtcdStoreOptions::default(),
        )
        .await
        .unwrap(),
    );
    put(
        &store,
        "Service",
        "default",
        "webpod",
        json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "webpod", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.152.212", "clusterIPs": ["10.96.152.212"],
                 "selector": {"app": "webpod"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]}}),
    )
    .await;
    put(
        &store,
        "EndpointSlice",
        "default",
        "webpod-x1",
        json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "webpod-x1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "webpod"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["172.20.1.10"], "conditions": {"ready": true}, "nodeName": "k8s-w1"},
            {"addresses": ["172.20.2.20"], "conditions": {"ready": true}, "nodeName": "k8s-w2"}]}),
    )
    .await;
    for (name, ip) in [("webpod-a", "172.20.1.10"), ("webpod-b", "172.20.2.20")] {
        put(
            &store,
            "Pod",
            "default",
            name,
            json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "webpod"}},
            "spec": {"containers": [{"name": "w", "image": "traefik/whoami"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        )
        .await;
    }
    // kube-dns itself, from the manifest.
    let text = std::fs::read_to_string(manifests_dir().join("coredns.yaml")).unwrap();
    for o in parse_manifests(&text).unwrap() {
        if o.kind() == "Service" {
            let (k, v) = o.to_store().unwrap();
            store.put(&k, v).await.unwrap();
        }
    }

    // CoreDNS with the manifest's ConfigMap, ports moved to loopback test
    // ports and `/etc/resolv.conf` (the router, in the lab) replaced by the
    // upstream's test address.
    let (port, health, ready, metrics) = (free_port(), free_port(), free_port(), free_port());
    let corefile = configmap_data("coredns.yaml", "coredns", "Corefile")
        .replace(".:53 {", &format!(".:{port} {{\n    bind 127.0.0.1"))
        .replace("health {", &format!("health 127.0.0.1:{health} {{"))
        .replace("    ready\n", &format!("    ready 127.0.0.1:{ready}\n"))
        .replace(
            "prometheus :9153",
            &format!("prometheus 127.0.0.1:{metrics}"),
        )
        .replace("/etc/resolv.conf", &format!("127.0.0.1:{up_port}"));
    put(
        &store,
        "ConfigMap",
        "kube-system",
        "coredns",
        json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "coredns", "namespace": "kube-system"},
        "data": {"Corefile": corefile}}),
    )
    .await;
    let mut coredns = Server::spawn(
        fibril_dns::RunOptions {
            corefile: fibril_dns::CorefileSource::ConfigMap {
                store: store.clone(),
                namespace: "kube-system".into(),
                name: "coredns".into(),
                key: "Corefile".into(),
            },
            placeholders: Default::default(),
            substitutions: Vec::new(),
        },
        Some(store.clone()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(ready, "/ready").await != "OK" {
        coredns.check().await;
        assert!(Instant::now() < deadline, "coredns never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(curl(health, "/health").await, "OK");

    // S5: the ClusterIP, authoritative.
    let out = dig_until(port, "webpod.default.svc.cluster.local A", |o| {
        status(o) == "NOERROR"
    })
    .await;
    assert_eq!(
        section(&out, "ANSWER"),
        ["webpod.default.svc.cluster.local. 30 IN A 10.96.152.212"],
        "{out}"
    );
    assert!(flags(&out).contains("aa"), "{out}");
    let out = dig(port, "kube-dns.kube-system.svc.cluster.local A").await;
    assert_eq!(
        section(&out, "ANSWER"),
        ["kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10"],
        "{out}"
    );
    // AAAA: NOERROR, no answer, the zone's SOA.
    let out = dig(port, "webpod.default.svc.cluster.local AAAA").await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(section(&out, "ANSWER").is_empty(), "{out}");
    let auth = section(&out, "AUTHORITY");
    assert_eq!(auth.len(), 1, "{out}");
    assert!(
        auth[0].starts_with(
            "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local."
        ),
        "{out}"
    );
    // Pod records (`pods insecure`).
    let out = dig(port, "172-20-1-10.default.pod.cluster.local A").await;
    assert_eq!(
        section(&out, "ANSWER"),
        ["172-20-1-10.default.pod.cluster.local. 30 IN A 172.20.1.10"],
        "{out}"
    );
    // Missing service: NXDOMAIN with SOA.
    let out = dig(port, "nope.default.svc.cluster.local A").await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    // Outside names: forwarded to the lab upstream's test zone.
    let out = dig(port, "www.example.test A").await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(
        section(&out, "ANSWER"),
        ["www.example.test. 300 IN A 10.10.1.200"],
        "{out}"
    );
    let out = dig(port, "missing.example.test A").await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(
        section(&out, "AUTHORITY")[0].starts_with("example.test."),
        "{out}"
    );
    let out = dig(port, "example.org A").await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    // Reverse: the ClusterIP's PTR from the cluster, 10.10/16 from the router.
    let out = dig(port, "-x 10.96.152.212").await;
    assert_eq!(
        section(&out, "ANSWER"),
        ["212.152.96.10.in-addr.arpa. 30 IN PTR webpod.default.svc.cluster.local."],
        "{out}"
    );
    let out = dig(port, "-x 10.10.1.200").await;
    assert_eq!(
        section(&out, "ANSWER"),
        ["200.1.10.10.in-addr.arpa. 300 IN PTR www.example.test."],
        "{out}"
    );
    // The store is followed: a new Service answers without restarts.
    put(
        &store,
        "Service",
        "default",
        "late",
        json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "late", "namespace": "default"},
        "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 80}]}}),
    )
    .await;
    dig_until(port, "late.default.svc.cluster.local A", |o| {
        o.contains("10.96.7.7")
    })
    .await;
    // Metrics as `curl kube-dns.kube-system.svc:9153/metrics` shows them.
    let m = curl(metrics, "/metrics").await;
    for name in [
        "coredns_dns_requests_total",
        "coredns_cache_requests_total",
        "coredns_cache_misses_total",
    ] {
        assert!(m.contains(name), "{name} missing");
    }

    // The node-local cache with the manifest's ConfigMap: cluster names over
    // TCP to CoreDNS (__PILLAR__CLUSTER__DNS__), others to the upstream.
    let (nl_port, nl_health, nl_metrics) = (free_port(), free_port(), free_port());
    let corefile = configmap_data("nodelocaldns.yaml", "node-local-dns", "Corefile")
        .replace(":53 {", &format!(":{nl_port} {{"))
        .replace("bind 0.0.0.0", "bind 127.0.0.1")
        .replace(
            "prometheus :9253",
            &format!("prometheus 127.0.0.1:{nl_metrics}"),
        )
        .replace(
            "    health\n",
            &format!("    health 127.0.0.1:{nl_health}\n"),
        );
    put(
        &store,
        "ConfigMap",
        "kube-system",
        "node-local-dns",
        json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "node-local-dns", "namespace": "kube-system"},
        "data": {"Corefile": corefile}}),
    )
    .await;
    let mut placeholders = fibril_dns::Placeholders::new();
    placeholders.insert(
        "__PILLAR__CLUSTER__DNS__".into(),
        vec![format!("127.0.0.1:{port}").parse().unwrap()],
    );
    placeholders.insert(
        "__PILLAR__UPSTREAM__SERVERS__".into(),
        vec![format!("127.0.0.1:{up_port}").parse().unwrap()],
    );
    let mut nodelocal = Server::spawn(
        fibril_dns::RunOptions {
            corefile: fibril_dns::CorefileSource::ConfigMap {
                store: store.clone(),
                namespace: "kube-system".into(),
                name: "node-local-dns".into(),
                key: "Corefile".into(),
            },
            placeholders,
            substitutions: node_local_subst(),
        },
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(nl_health, "/health").await != "OK" {
        nodelocal.check().await;
        assert!(Instant::now() < deadline, "node-local cache never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..2 {
        let out = dig_until(nl_port, "webpod.default.svc.cluster.local A", |o| {
            status(o) == "NOERROR"
        })
        .await;
        assert_eq!(
            section(&out, "ANSWER")[0].split(' ').next_back(),
            Some("10.96.152.212"),
            "{out}"
        );
        let out = dig(nl_port, "www.example.test A").await;
        assert_eq!(
            section(&out, "ANSWER")[0].split(' ').next_back(),
            Some("10.10.1.200"),
            "{out}"
        );
    }
    let out = dig(nl_port, "webpod.default.svc.cluster.local AAAA").await;
    assert!(
        section(&out, "AUTHORITY")[0].contains("SOA ns.dns.cluster.local."),
        "{out}"
    );
    let m = curl(nl_metrics, "/metrics").await;
    let hits: f64 = m
        .lines()
        .filter(|l| l.starts_with("coredns_cache_hits_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(hits >= 2.0, "second round should hit the cache:\n{m}");

    nodelocal.stop().await;
    coredns.stop().await;
    upstream.stop().await;
    drop(etcd);
}
