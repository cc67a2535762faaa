//! Privileged end-to-end test of flow observability (S6): two agents on the
//! seed-3w fabric (native routing, kube-proxy replacement), CNI pods, a
//! ClusterIP Service `default/webpod`. A curl from `default/client` through
//! the ClusterIP shows pre-xlate-fwd TRACED / post-xlate-fwd TRANSLATED
//! naming the service and to-endpoint FORWARDED with SYN, SYN-ACK, ACK,
//! ACK-PSH, ACK-FIN in order; with the backend on the other node the
//! client's node shows to-network and the backend's node to-endpoint; a
//! Service without backends gives a DROPPED flow with its reason; the flow
//! metrics count them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{serve_8080, TwoAgents, PY};
use fibril_agent::api::Client;
use fibril_agent::flows::{format_line, FlowFilter, FlowLine, FlowQuery};
use fibril_agent::testing::{block_on, eventually};
use fibril_api::{EndpointSlice, Service};
use fibril_datapath::testing::fixture::{ChildGuard, TestNetns};
use fibril_store::StoreExt;
use serde_json::json;

const CURL: &str = "/usr/bin/curl";
const CIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);

/// `<bed dir>/www` with `index.html` = `page`.
fn web_root(bed: &TwoAgents, page: &str) -> PathBuf {
    let www = bed.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), page).unwrap();
    www
}

fn serve_http(ns: &TestNetns, dir: &Path) -> ChildGuard {
    let cmd = format!(
        "{PY} -m http.server 8080 --bind 0.0.0.0 --directory {}",
        dir.display()
    );
    serve_8080(ns, &cmd, &format!("http server in {}", ns.name()))
}

fn curl(ns: &TestNetns, ip: Ipv4Addr, local_port: u16) -> bool {
    ns.sh_output(&format!(
        "{CURL} -s -o /dev/null --max-time 2 --local-port {local_port} http://{ip}:80/"
    ))
    .status
    .success()
}

fn service(name: &str, ip: Ipv4Addr) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(),
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}))
    .unwrap()
}

fn slice(svc: &str, backends: &[(Ipv4Addr, &str)]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = backends
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}, "nodeName": node}))
        .collect();
    serde_json::from_value(
        json!({"metadata": {"name": format!("{svc}-x1"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps}),
    )
    .unwrap()
}

/// Stored flows of an agent passing `filter` with `port` on either side.
fn flows(c: &Client, filter: FlowFilter) -> Vec<FlowLine> {
    let q = FlowQuery {
        last: 8192,
        follow: false,
        filter,
    };
    let mut v = Vec::new();
    c.flows(&q, |l| {
        v.push(l);
        true
    })
    .unwrap();
    v
}

fn by_port(port: u16) -> FlowFilter {
    FlowFilter {
        port: Some(port),
        ..Default::default()
    }
}

fn dump(what: &str, v: &[FlowLine]) {
    eprintln!("--- {what}");
    for l in v {
        eprintln!("{}", format_line(l));
    }
}

/// Index of the first to-endpoint flow at or after `from` whose flags are
/// exactly `flags` (`has` = contains them).
fn find_flags(v: &[FlowLine], from: usize, obs: &str, want: &[&str], exact: bool) -> Option<usize> {
    v.iter().enumerate().skip(from).find_map(|(i, l)| {
        let f = l.flow.as_ref()?;
        if f.obs_point != obs || f.verdict != "FORWARDED" {
            return None;
        }
        let ok = if exact {
            f.tcp_flags.len() == want.len()
                && want.iter().all(|w| f.tcp_flags.iter().any(|x| x == w))
        } else {
            want.iter().all(|w| f.tcp_flags.iter().any(|x| x == w))
        };
        ok.then_some(i)
    })
}

#[test]
fn flows_through_a_cluster_ip() {
    let t0 = Instant::now();
    let mut bed = TwoAgents::up(
        "flw",
        &[
            "ipam.mode=cluster-pool",
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=10.244.0.0/16",
            "kubeProxyReplacement=true",
        ],
    );
    eprintln!("agents ready after {:?}", t0.elapsed());
    let www = web_root(&bed, &"hello from webpod\n".repeat(50));
    let (client, c_ip) = bed.pod("k8s-ctr", "flwc", "cid-c", "client");
    let (ns1, s1_ip) = bed.pod("k8s-w1", "flw1", "cid-s1", "webpod-remote");
    let (ns2, s2_ip) = bed.pod("k8s-ctr", "flw2", "cid-s2", "webpod-local");
    let _g1 = serve_http(&ns1, &www);
    let _g2 = serve_http(&ns2, &www);

    // 1. ClusterIP with the local backend: the whole sequence on k8s-ctr.
    block_on(bed.store.put_as(&service("webpod", CIP))).unwrap();
    block_on(bed.store.put_as(&slice("webpod", &[(s2_ip, "k8s-ctr")]))).unwrap();
    let mut port = 45000u16;
    let ok = eventually(Duration::from_secs(15), || {
        port += 1;
        curl(&client, CIP, port).then_some(())
    });
    assert!(ok.is_some(), "curl through the ClusterIP never answered");
    // Let the names refresh (1 s) and the events arrive.
    std::thread::sleep(Duration::from_millis(1500));
    let port = port + 1;
    assert!(curl(&client, CIP, port), "curl on port {port}");
    let ctr_c = bed.ctr.client();
    let v = eventually(Duration::from_secs(5), || {
        let v = flows(&ctr_c, by_port(port));
        find_flags(&v, 0, "to-endpoint", &["ACK", "FIN"], false).map(|_| v)
    })
    .unwrap_or_else(|| flows(&ctr_c, by_port(port)));
    dump("local backend", &v);
    let lines: Vec<String> = v.iter().map(format_line).collect();
    let pre = v
        .iter()
        .position(|l| {
            l.flow
                .as_ref()
                .is_some_and(|f| f.obs_point == "pre-xlate-fwd")
        })
        .expect("pre-xlate-fwd flow");
    let pf = v[pre].flow.as_ref().unwrap();
    assert_eq!(pf.verdict, "TRACED");
    assert_eq!(pf.service.as_deref(), Some("default/webpod"));
    assert_eq!(pf.source.pod_name, "client");
    assert_eq!(pf.destination.ip, Some(CIP));
    assert!(
        lines[pre].contains("default/client (ID:")
            && lines[pre].contains("<> default/webpod:80 (world) pre-xlate-fwd TRACED (TCP)"),
        "{}",
        lines[pre]
    );
    let post = v
        .iter()
        .position(|l| {
            l.flow
                .as_ref()
                .is_some_and(|f| f.obs_point == "post-xlate-fwd")
        })
        .expect("post-xlate-fwd flow");
    assert!(post > pre, "post-xlate after pre-xlate");
    let qf = v[post].flow.as_ref().unwrap();
    assert_eq!(qf.verdict, "TRANSLATED");
    assert_eq!(qf.service.as_deref(), Some("default/webpod"));
    assert_eq!(qf.destination.ip, Some(s2_ip));
    assert_eq!(qf.destination.pod_name, "webpod-local");
    let syn = find_flags(&v, post, "to-endpoint", &["SYN"], true).expect("to-endpoint SYN");
    let synack =
        find_flags(&v, syn + 1, "to-endpoint", &["SYN", "ACK"], true).expect("SYN, ACK after SYN");
    let ack =
        find_flags(&v, synack + 1, "to-endpoint", &["ACK"], true).expect("ACK after SYN, ACK");
    let psh =
        find_flags(&v, ack + 1, "to-endpoint", &["ACK", "PSH"], false).expect("ACK, PSH after ACK");
    let fin = find_flags(&v, psh + 1, "to-endpoint", &["ACK", "FIN"], false)
        .expect("ACK, FIN after ACK, PSH");
    assert!(
        lines[syn].contains(&format!("default/client:{port} (ID:")),
        "{}",
        lines[syn]
    );
    assert!(
        lines[syn].contains(" -> default/webpod-local:8080 (ID:"),
        "{}",
        lines[syn]
    );
    assert!(
        lines[syn].ends_with("to-endpoint FORWARDED (TCP Flags: SYN)"),
        "{}",
        lines[syn]
    );
    assert!(
        lines[synack].contains(" <- default/webpod-local:8080"),
        "{}",
        lines[synack]
    );
    assert!(
        lines[synack].ends_with("(TCP Flags: SYN, ACK)"),
        "{}",
        lines[synack]
    );
    assert!(
        v[fin].flow.as_ref().unwrap().source.ip == Some(c_ip)
            || v[fin].flow.as_ref().unwrap().destination.ip == Some(c_ip)
    );
    // Agent-side filters.
    let by_pod = flows(
        &ctr_c,
        FlowFilter {
            pod: Some("default/client".into()),
            port: Some(port),
            ..Default::default()
        },
    );
    assert_eq!(by_pod.len(), v.len());
    let udp = flows(
        &ctr_c,
        FlowFilter {
            protocol: Some("udp".into()),
            port: Some(port),
            ..Default::default()
        },
    );
    assert!(udp.is_empty(), "{udp:?}");
    eprintln!("local ClusterIP sequence ok ({:?})", t0.elapsed());

    // 2. Remote backend (native routing): to-network on k8s-ctr,
    //    to-endpoint on k8s-w1.
    block_on(bed.store.put_as(&slice("webpod", &[(s1_ip, "k8s-w1")]))).unwrap();
    let mut port = 46000u16;
    let ok = eventually(Duration::from_secs(15), || {
        port += 1;
        if !curl(&client, CIP, port) {
            return None;
        }
        let v = flows(&ctr_c, by_port(port));
        v.iter()
            .any(|l| {
                l.flow
                    .as_ref()
                    .is_some_and(|f| f.destination.ip == Some(s1_ip))
            })
            .then_some(())
    });
    assert!(ok.is_some(), "curl to the remote backend");
    // The first connection may leave through the stack while the node's
    // neighbour entry resolves; the next one is pure datapath.
    let port = port + 1;
    assert!(
        curl(&client, CIP, port),
        "second curl to the remote backend"
    );
    std::thread::sleep(Duration::from_millis(300));
    let v = flows(&ctr_c, by_port(port));
    dump("remote backend, k8s-ctr", &v);
    let tn = v
        .iter()
        .find(|l| {
            l.flow.as_ref().is_some_and(|f| {
                f.obs_point == "to-network" && f.verdict == "FORWARDED" && f.tcp_flags == ["SYN"]
            })
        })
        .expect("to-network SYN on the client's node");
    let line = format_line(tn);
    assert!(
        line.contains(&format!("default/client:{port} (ID:")),
        "{line}"
    );
    assert!(
        line.contains(" -> default/webpod-remote:8080 (ID:"),
        "{line}"
    );
    assert!(
        line.ends_with("to-network FORWARDED (TCP Flags: SYN)"),
        "{line}"
    );
    let w1_c = bed.w1.client();
    let v = flows(&w1_c, by_port(port));
    dump("remote backend, k8s-w1", &v);
    assert!(
        v.iter().any(
            |l| l.flow.as_ref().is_some_and(|f| f.obs_point == "to-endpoint"
                && f.tcp_flags == ["SYN"]
                && f.source.pod_name == "client"
                && f.destination.pod_name == "webpod-remote")
        ),
        "to-endpoint SYN on the backend's node"
    );
    eprintln!("cross-node to-network ok ({:?})", t0.elapsed());

    // 3. A Service without backends: DROPPED with a reason (also seen by a
    //    follower that started before).
    let (ftx, frx) = std::sync::mpsc::channel::<FlowLine>();
    let follow_client = bed.ctr.client();
    let follower = std::thread::spawn(move || {
        let q = FlowQuery {
            last: 0,
            follow: true,
            filter: FlowFilter {
                event_type: Some("drop".into()),
                ..Default::default()
            },
        };
        let _ = follow_client.flows(&q, |l| ftx.send(l).is_ok());
    });
    block_on(bed.store.put_as(&service("empty", EMPTY_IP))).unwrap();
    block_on(bed.store.put_as(&slice("empty", &[]))).unwrap();
    let dport = 47001u16;
    let drop = eventually(Duration::from_secs(10), || {
        let _ = curl(&client, EMPTY_IP, dport);
        let v = flows(
            &ctr_c,
            FlowFilter {
                event_type: Some("drop".into()),
                verdict: Some("DROPPED".into()),
                ..Default::default()
            },
        );
        v.into_iter().find(|l| {
            l.flow
                .as_ref()
                .is_some_and(|f| f.destination.ip == Some(EMPTY_IP))
        })
    })
    .expect("a DROPPED flow to the Service without backends");
    let line = format_line(&drop);
    eprintln!("{line}");
    let f = drop.flow.as_ref().unwrap();
    assert!(f.drop_reason.is_some(), "{f:?}");
    assert!(line.contains(" DROPPED ("), "{line}");
    assert!(line.contains("default/client"), "{line}");

    let followed = eventually(Duration::from_secs(5), || {
        frx.try_iter().find(|l| {
            l.flow
                .as_ref()
                .is_some_and(|f| f.destination.ip == Some(EMPTY_IP) && f.verdict == "DROPPED")
        })
    })
    .expect("the follower saw the drop");
    eprintln!("followed: {}", format_line(&followed));
    std::mem::drop(frx);

    // 4. Metrics.
    let m = ctr_c.text("/metrics").unwrap();
    let metric_lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("fibril_flows") || l.starts_with("fibril_drops"))
        .collect();
    eprintln!("{}", metric_lines.join("\n"));
    assert!(
        m.contains("fibril_flows_total{verdict=\"FORWARDED\",type=\"trace\"}"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "fibril_drops_total{{reason=\"{}\"}}",
            f.drop_reason.clone().unwrap()
        )),
        "{m}"
    );
    assert!(m.contains("fibril_flows_lost_total "), "{m}");
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
    eprintln!("done in {:?}", t0.elapsed());
    // The follower ends with the agents (stream closed).
    std::mem::drop(bed.ctr);
    std::mem::drop(bed.w1);
    follower.join().unwrap();
}

#[test]
fn tunnel_mode_shows_to_overlay() {
    let mut bed = TwoAgents::up(
        "flt",
        &[
            "ipam.mode=cluster-pool",
            "routingMode=tunnel",
            "tunnelProtocol=vxlan",
            "kubeProxyReplacement=true",
        ],
    );
    let www = web_root(&bed, "hello\n");
    let (client, _c_ip) = bed.pod("k8s-ctr", "fltc", "cid-c", "client");
    let (ns1, s1_ip) = bed.pod("k8s-w1", "flt1", "cid-s1", "webpod-remote");
    let _g1 = serve_http(&ns1, &www);
    block_on(bed.store.put_as(&service("webpod", CIP))).unwrap();
    block_on(bed.store.put_as(&slice("webpod", &[(s1_ip, "k8s-w1")]))).unwrap();
    let mut port = 48000u16;
    let ok = eventually(Duration::from_secs(15), || {
        port += 1;
        curl(&client, CIP, port).then_some(())
    });
    assert!(
        ok.is_some(),
        "curl through the ClusterIP (tunnel) never answered"
    );
    let port = port + 1;
    assert!(curl(&client, CIP, port), "second curl");
    std::thread::sleep(Duration::from_millis(300));
    let v = flows(&bed.ctr.client(), by_port(port));
    dump("tunnel, k8s-ctr", &v);
    let syn = v
        .iter()
        .find(|l| {
            l.flow.as_ref().is_some_and(|f| {
                f.obs_point == "to-overlay" && f.verdict == "FORWARDED" && f.tcp_flags == ["SYN"]
            })
        })
        .expect("to-overlay SYN on the client's node");
    let line = format_line(syn);
    assert!(
        line.contains(" -> default/webpod-remote:8080 (ID:")
            && line.ends_with("to-overlay FORWARDED (TCP Flags: SYN)"),
        "{line}"
    );
    let v = flows(&bed.w1.client(), by_port(port));
    dump("tunnel, k8s-w1", &v);
    assert!(
        v.iter().any(
            |l| l.flow.as_ref().is_some_and(|f| f.obs_point == "to-endpoint"
                && f.tcp_flags == ["SYN"]
                && f.source.pod_name == "client")
        ),
        "to-endpoint SYN on the backend's node"
    );
}
