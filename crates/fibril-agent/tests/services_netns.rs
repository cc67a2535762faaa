//! Privileged end-to-end test of the service sync: two agents on the seed-3w
//! fabric (native routing, kube-proxy replacement, Local Redirect Policies),
//! pods created through the CNI plugin with a small TCP server. Services and
//! EndpointSlices in the (in-memory) store are programmed by the agents:
//! ClusterIP from a pod, NodePort and an L2-announced LoadBalancer IP from
//! the router, backends following the slice, a Local Redirect Policy sending
//! the ClusterIP to the node-local pod (and back when it goes), an agent
//! restart that rewrites nothing, and the debug API/formatters on real data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{serve_8080, TwoAgents, PY};
use fibril_agent::testing::{block_on, eventually, TestAgent};
use fibril_api::{EndpointSlice, FibrilLocalRedirectPolicy, Pod, Service};
use fibril_datapath::testing::fixture::{ChildGuard, TestNetns};
use fibril_datapath::{LbDump, Maps};
use fibril_lab::netns_name;
use fibril_store::StoreExt;
use serde_json::json;

const CIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 240);
const CTR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 100);
const W1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 101);

/// TCP server answering `<name> <peer ip>` per connection; a client printing
/// one answer per connection (`-` on failure).
const SCRIPT: &str = r#"
import socket, sys
if sys.argv[1] == "serve":
    name, port = sys.argv[2], int(sys.argv[3])
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(64)
    import threading
    def handle(c, a):
        try:
            c.sendall(("%s %s\n" % (name, a[0])).encode())
            c.settimeout(30)
            while True:
                d = c.recv(200)
                if not d:
                    break
                c.sendall(d)
        except Exception:
            pass
        finally:
            c.close()
    while True:
        c, a = t.accept()
        threading.Thread(target=handle, args=(c, a), daemon=True).start()
elif sys.argv[1] == "hold":
    # One connection kept open until the flag file exists, then one echo.
    import os, time
    ip, port, flag = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    s = socket.create_connection((ip, port), timeout=5)
    print(s.recv(200).decode().strip(), flush=True)
    open(flag + ".up", "w").close()
    while not os.path.exists(flag):
        time.sleep(0.05)
    s.sendall(b"still-here\n")
    print(s.recv(200).decode().strip(), flush=True)
else:
    ip, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for i in range(n):
        try:
            s = socket.create_connection((ip, port), timeout=1)
            s.settimeout(2)
            print(s.recv(200).decode().strip(), flush=True)
            s.close()
        except Exception as e:
            print("-", e, flush=True)
"#;

fn serve(ns: &TestNetns, script: &Path, name: &str) -> ChildGuard {
    let cmd = format!("{PY} {} serve {name} 8080", script.display());
    serve_8080(ns, &cmd, &format!("server {name}"))
}

/// Backend names answering `n` connections to `dst:port` from `ns`.
fn names(ns: &TestNetns, script: &Path, dst: Ipv4Addr, port: u16, n: u32) -> Vec<String> {
    let out = ns.sh_output(&format!(
        "{PY} {} client {dst} {port} {n}",
        script.display()
    ));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("-").to_string())
        .collect()
}

/// `(backend name, peer IP seen by the backend)` of `n` connections.
fn answers(
    ns: &TestNetns,
    script: &Path,
    dst: Ipv4Addr,
    port: u16,
    n: u32,
) -> Vec<(String, Option<Ipv4Addr>)> {
    let out = ns.sh_output(&format!(
        "{PY} {} client {dst} {port} {n}",
        script.display()
    ));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().unwrap_or("-").to_string();
            (name, it.next().and_then(|p| p.parse().ok()))
        })
        .collect()
}

/// Waits until every answer is in `want` (and all of `want` show up).
fn until_only(ns: &TestNetns, script: &Path, dst: Ipv4Addr, port: u16, want: &[&str], what: &str) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let mut last = Vec::new();
    let ok = eventually(Duration::from_secs(15), || {
        last = names(ns, script, dst, port, 8);
        let got: BTreeSet<String> = last.iter().cloned().collect();
        (got == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: wanted {want:?}, last answers {last:?}"
    );
}

fn service(lb: bool) -> Service {
    let mut v = json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": if lb { "LoadBalancer" } else { "NodePort" }, "clusterIP": CIP.to_string(),
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31080, "protocol": "TCP"}]}});
    if lb {
        v["status"] = json!({"loadBalancer": {"ingress": [{"ip": LB_IP.to_string()}]}});
    }
    serde_json::from_value(v).unwrap()
}

fn slice(backends: &[(Ipv4Addr, &str)]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = backends
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}, "nodeName": node}))
        .collect();
    serde_json::from_value(
        json!({"metadata": {"name": "web-x1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps}),
    )
    .unwrap()
}

#[test]
fn services_follow_the_store() {
    let t0 = Instant::now();
    let mut bed = TwoAgents::up(
        "svc",
        &[
            "ipam.mode=cluster-pool",
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=10.244.0.0/16",
            "kubeProxyReplacement=true",
            "localRedirectPolicy=true",
        ],
    );
    eprintln!("agents ready after {:?}", t0.elapsed());
    let script = bed.dir.path().join("svc.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let router = TestNetns::existing(&netns_name(&bed.lab, "router"));

    // Pods: client and s2 on k8s-ctr, s1 on k8s-w1.
    let (client, _c_ip) = bed.pod("k8s-ctr", "svcc", "cid-c", "client");
    let (ns1, s1_ip) = bed.pod("k8s-w1", "svc1", "cid-s1", "s1");
    let (ns2, s2_ip) = bed.pod("k8s-ctr", "svc2", "cid-s2", "s2");
    let _g1 = serve(&ns1, &script, "s1");
    let _g2 = serve(&ns2, &script, "s2");

    // NodePort service with the remote backend s1.
    block_on(bed.store.put_as(&service(false))).unwrap();
    block_on(bed.store.put_as(&slice(&[(s1_ip, "k8s-w1")]))).unwrap();
    until_only(&client, &script, CIP, 80, &["s1"], "ClusterIP from a pod");
    until_only(
        &router,
        &script,
        CTR_IP,
        31080,
        &["s1"],
        "NodePort from the router",
    );
    let t = Instant::now();
    eprintln!("ClusterIP + NodePort ok ({:?})", t0.elapsed());

    // The slice changes: s2 only, then both.
    block_on(bed.store.put_as(&slice(&[(s2_ip, "k8s-ctr")]))).unwrap();
    until_only(
        &client,
        &script,
        CIP,
        80,
        &["s2"],
        "after the slice moved to s2",
    );
    block_on(
        bed.store
            .put_as(&slice(&[(s1_ip, "k8s-w1"), (s2_ip, "k8s-ctr")])),
    )
    .unwrap();
    until_only(&client, &script, CIP, 80, &["s1", "s2"], "both backends");
    eprintln!("slice updates followed in {:?}", t.elapsed());
    let listing = LbDump::read(&Maps::new(&bed.ctr_opts.pin_dir))
        .unwrap()
        .format_service_list();
    eprintln!("{listing}");
    assert!(listing.contains(&format!("{CIP}:80/TCP")), "{listing}");
    assert!(listing.contains("0.0.0.0:31080/TCP"), "{listing}");
    assert!(
        listing.contains(&format!("{s1_ip}:8080/TCP (active)")),
        "{listing}"
    );

    // LoadBalancer IP on the node subnet: k8s-ctr (smallest name) answers ARP.
    block_on(bed.store.put_as(&service(true))).unwrap();
    until_only(
        &router,
        &script,
        LB_IP,
        80,
        &["s1", "s2"],
        "LoadBalancer IP from the router",
    );
    let st = bed.ctr.client().status().unwrap();
    assert_eq!(st.announced, vec![LB_IP], "{st:?}");
    let st_w1 = bed.w1.client().status().unwrap();
    assert!(st_w1.announced.is_empty(), "{st_w1:?}");
    eprintln!("LoadBalancer ok ({:?})", t0.elapsed());

    // Local Redirect Policy: the ClusterIP goes to the local pod s2 on k8s-bed.ctr.
    block_on(bed.store.put_as(&slice(&[(s1_ip, "k8s-w1")]))).unwrap();
    until_only(&client, &script, CIP, 80, &["s1"], "before the LRP");
    let lrp_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "s2", "namespace": "default", "labels": {"app": "local-web"}},
        "spec": {"nodeName": "k8s-ctr", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": s2_ip.to_string()}}))
    .unwrap();
    block_on(bed.store.put_as(&lrp_pod)).unwrap();
    let lrp: FibrilLocalRedirectPolicy = serde_json::from_value(json!({
        "metadata": {"name": "web-local", "namespace": "default"},
        "spec": {"redirectFrontend": {"serviceMatcher": {"serviceName": "web", "namespace": "default"}},
            "redirectBackend": {"localEndpointSelector": {"matchLabels": {"app": "local-web"}},
                "toPorts": [{"port": "8080", "name": "http", "protocol": "TCP"}]}}}))
    .unwrap();
    block_on(bed.store.put_as(&lrp)).unwrap();
    until_only(&client, &script, CIP, 80, &["s2"], "LRP to the local pod");
    let lrps = bed.ctr.client().lrps().unwrap();
    let text = fibril_agent::services::format_lrp_list(&lrps);
    eprintln!("{text}");
    assert!(
        text.contains(&format!("{CIP}:80/TCP -> {s2_ip}:8080(default/s2),")),
        "{text}"
    );
    let listing = LbDump::read(&Maps::new(&bed.ctr_opts.pin_dir))
        .unwrap()
        .format_service_list();
    assert!(listing.contains("LocalRedirect"), "{listing}");
    // k8s-w1 has no local backend: its ClusterIP stays (fallback).
    let w1_list = LbDump::read(&Maps::new(&bed.w1_opts.pin_dir))
        .unwrap()
        .format_service_list();
    assert!(!w1_list.contains("LocalRedirect"), "{w1_list}");
    // The pod goes: back to the service's backends.
    block_on(bed.store.delete_as::<Pod>(Some("default"), "s2", None)).unwrap();
    until_only(&client, &script, CIP, 80, &["s1"], "LRP fallback");
    eprintln!("LRP ok ({:?})", t0.elapsed());

    // externalTrafficPolicy=Local: only k8s-w1 (with s1) serves NodePort
    // and LB IP from outside, with the client IP preserved; the LB IP moves
    // to k8s-w1 (gratuitous ARP updates the router at once).
    let mut local = service(true);
    local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    block_on(bed.store.put_as(&local)).unwrap();
    let moved = eventually(Duration::from_secs(10), || {
        let a = bed.ctr.client().status().ok()?.announced;
        let b = bed.w1.client().status().ok()?.announced;
        (a.is_empty() && b == vec![LB_IP]).then_some(())
    });
    assert!(moved.is_some(), "LB IP announced by k8s-w1 with eTP=Local");
    let router_ip = Ipv4Addr::new(192, 168, 10, 200);
    for dst in [LB_IP, W1_IP] {
        let port = if dst == LB_IP { 80 } else { 31080 };
        let mut last = Vec::new();
        let ok = eventually(Duration::from_secs(10), || {
            last = answers(&router, &script, dst, port, 4);
            last.iter()
                .all(|(n, peer)| n == "s1" && *peer == Some(router_ip))
                .then_some(())
        });
        assert!(ok.is_some(), "eTP=Local {dst}:{port}: {last:?}");
    }
    let none = names(&router, &script, CTR_IP, 31080, 2);
    assert!(
        none.iter().all(|n| n == "-"),
        "eTP=Local: k8s-ctr has no local backend: {none:?}"
    );
    eprintln!("eTP=Local ok ({:?})", t0.elapsed());

    // Debug API on real data.
    let c = bed.ctr.client();
    let svcs = c.services().unwrap();
    assert!(
        svcs.iter()
            .any(|s| s.owner == "default/web" && s.service_type == "LoadBalancer"),
        "{svcs:?}"
    );
    let ips = fibril_agent::format::format_ip_list(&c.ip_list().unwrap());
    assert!(
        ips.contains(&format!("{s1_ip}/32")),
        "remote pod in ip list: {ips}"
    );
    let eps = fibril_agent::format::format_endpoint_list(&c.endpoint_list().unwrap());
    assert!(eps.contains("reserved:health"), "{eps}");
    let metrics = c.text("/metrics").unwrap();
    assert!(metrics.contains("fibril_services "), "{metrics}");
    assert!(
        metrics.contains("fibril_service_updates_total{op=\"upsert\"}"),
        "{metrics}"
    );
    let status = fibril_agent::format::format_status(&c.status().unwrap(), true, false);
    eprintln!("{status}");
    assert!(
        status.contains("KubeProxyReplacement:   True   [eth1"),
        "{status}"
    );
    assert!(status.contains("Allocated addresses:"), "{status}");

    // Restart: ids and entries unchanged, nothing rewritten, and a
    // connection established through the ClusterIP keeps working.
    let flag = bed.dir.path().join("go");
    let held = client.spawn(&format!(
        "{PY} {} hold {CIP} 80 {}",
        script.display(),
        flag.display()
    ));
    let up = bed.dir.path().join("go.up");
    assert!(
        eventually(Duration::from_secs(10), || up.exists().then_some(())).is_some(),
        "held connection did not come up"
    );
    let before = LbDump::read(&Maps::new(&bed.ctr_opts.pin_dir)).unwrap();
    let upserts = c.status().unwrap().stats.services_upserted;
    assert!(upserts > 0);
    bed.ctr.stop().unwrap();
    until_only(
        &client,
        &script,
        CIP,
        80,
        &["s1"],
        "while the agent is down",
    );
    bed.ctr = TestAgent::start(bed.ctr_opts.clone());
    let synced = eventually(Duration::from_secs(10), || {
        let s = bed.ctr.client().status().ok()?;
        (s.stats.sync_passes >= 2).then_some(s)
    })
    .expect("sync after restart");
    let after = LbDump::read(&Maps::new(&bed.ctr_opts.pin_dir)).unwrap();
    assert_eq!(
        before.services, after.services,
        "service entries after restart"
    );
    assert_eq!(before.backends, after.backends);
    assert_eq!(synced.stats.services_deleted, 0, "{:?}", synced.stats);
    until_only(&client, &script, CIP, 80, &["s1"], "after the restart");
    std::fs::write(&flag, b"").unwrap();
    let (_, out, err) = held.wait();
    eprintln!("held connection: {out:?} {err:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("s1 ")),
        "{out:?} {err:?}"
    );
    assert_eq!(
        lines.get(1),
        Some(&"still-here"),
        "echo over the held connection: {out:?} {err:?}"
    );
    until_only(
        &router,
        &script,
        LB_IP,
        80,
        &["s1"],
        "LB IP after the restart",
    );
    eprintln!("total {:?}", t0.elapsed());
}
