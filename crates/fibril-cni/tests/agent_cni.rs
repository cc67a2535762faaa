//! Privileged end-to-end test: agents on the seed-3w fabric (k8s-ctr with a
//! /29, k8s-w1 with a /26, cluster-pool CIDRs written by the test, native
//! routing with autoDirectNodeRoutes), the CNI plugin driven through the
//! real protocol (env + stdin JSON, in-process). Pods ping each other, the
//! router IP and a pod on the other node; 50 concurrent ADDs get 50
//! distinct addresses; the /29 runs out with `range is full` and leaks
//! nothing; DEL of everything leaves no veth, route, map entry or address;
//! a restarted agent shows its allocations `[restored]`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_agent::api::{host_ifname, Client};
use fibril_agent::AgentOptions;
use fibril_api::fibril::{FibrilNodeSpec, NodeIpamSpec};
use fibril_api::FibrilNode;
use fibril_config::Config;
use fibril_datapath::{Datapath, Maps};
use fibril_lab::{netns_name, Fabric, Topology};
use fibril_netlink::NetNs;
use fibril_store::{MemoryStore, SharedStore, StoreExt};
use serde_json::Value;

fn uniq(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One agent running on its own tokio runtime thread.
struct Agent {
    opts: AgentOptions,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Agent {
    fn start(opts: AgentOptions) -> Agent {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let o = opts.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(fibril_agent::run(o, async move {
                let _ = rx.await;
            }))
            .map_err(|e| e.to_string())
        });
        let a = Agent {
            opts,
            stop: Some(tx),
            thread: Some(thread),
        };
        let client = a.client();
        let ok = eventually(Duration::from_secs(30), || {
            if a.thread.as_ref().is_some_and(|t| t.is_finished()) {
                return Some(false);
            }
            client.healthz().ok().map(|_| true)
        });
        if ok != Some(true) {
            let mut a = a;
            let res = a.stop_now();
            panic!("agent {} did not become ready: {res:?}", a.opts.node_name);
        }
        a
    }

    fn client(&self) -> Client {
        Client::new(&self.opts.socket_path)
    }

    fn stop_now(&mut self) -> Result<(), String> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err("agent panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop_now();
    }
}

/// Pod namespaces, pin dirs and run dirs of the test; removed on drop.
#[derive(Default)]
struct Cleanup {
    netns: Vec<String>,
    pin_dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.netns {
            let _ = NetNs::delete_by_name(n);
        }
        for p in &self.pin_dirs {
            if let Err(e) = Datapath::destroy(p) {
                eprintln!("cleanup {}: {e}", p.display());
            }
        }
        let _ = std::fs::remove_dir("/sys/fs/bpf/fibril-test");
    }
}

const PIN_ROOT: &str = "/sys/fs/bpf/fibril-test";

fn conf(socket: &std::path::Path) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "fibril",
        "type": "fibril-cni",
        "agentSocket": socket,
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
    })
    .to_string()
}

struct CniCall {
    code: i32,
    out: Value,
}

fn cni(command: &str, socket: &std::path::Path, cid: &str, netns: &str, pod: &str) -> CniCall {
    let mut env = BTreeMap::new();
    env.insert("CNI_COMMAND".to_string(), command.to_string());
    env.insert("CNI_CONTAINERID".to_string(), cid.to_string());
    env.insert("CNI_NETNS".to_string(), netns.to_string());
    env.insert("CNI_IFNAME".to_string(), "eth0".to_string());
    env.insert("CNI_PATH".to_string(), "/opt/cni/bin".to_string());
    env.insert(
        "CNI_ARGS".to_string(),
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
    );
    let mut out = Vec::new();
    let code = fibril_cni::run_cni(&env, conf(socket).as_bytes(), &mut out);
    let out = serde_json::from_slice(&out).unwrap_or(Value::Null);
    CniCall { code, out }
}

fn pod_ip(r: &CniCall) -> Ipv4Addr {
    assert_eq!(r.code, 0, "ADD failed: {}", r.out);
    let a = r.out["ips"][0]["address"].as_str().unwrap();
    a.trim_end_matches("/32").parse().unwrap()
}

fn ping(ns: &str, dst: Ipv4Addr) -> bool {
    let ns = NetNs::open(ns).unwrap();
    let out = ns
        .command("ping")
        .unwrap()
        .args(["-c", "2", "-i", "0.2", "-W", "2", &dst.to_string()])
        .output()
        .unwrap();
    out.status.success()
}

fn node_links(lab: &str, host: &str) -> BTreeSet<String> {
    let ns = NetNs::open(&netns_name(lab, host)).unwrap();
    ns.netlink()
        .unwrap()
        .links()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect()
}

fn node_routes(lab: &str, host: &str) -> Vec<String> {
    let ns = NetNs::open(&netns_name(lab, host)).unwrap();
    ns.netlink()
        .unwrap()
        .routes()
        .unwrap()
        .into_iter()
        .filter(|r| r.table == 254)
        .map(|r| format!("{} {:?} {:?}", r.dst, r.via, r.oif))
        .collect()
}

async fn set_pod_cidrs(store: &SharedStore, node: &str, cidr: &str) {
    let spec = FibrilNodeSpec {
        ipam: Some(NodeIpamSpec {
            pod_cidrs: vec![cidr.parse().unwrap()],
            ..Default::default()
        }),
        ..Default::default()
    };
    store.create_as(&FibrilNode::new(node, spec)).await.unwrap();
}

#[test]
fn agent_and_cni_on_the_fabric() {
    let t0 = Instant::now();
    let topo = Topology::builtin("seed-3w").unwrap();
    let lab = uniq("cni").replace('x', "_");
    let _fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let mut cleanup = Cleanup::default();
    let run_dir = tempfile::tempdir().unwrap();

    let store: SharedStore = Arc::new(MemoryStore::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(set_pod_cidrs(&store, "k8s-ctr", "10.244.0.0/29"));
    rt.block_on(set_pod_cidrs(&store, "k8s-w1", "10.244.1.0/26"));
    let mut config = Config::default();
    config
        .apply_sets([
            "ipam.mode=cluster-pool",
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=10.244.0.0/16",
        ])
        .unwrap();

    let mut opts = |node: &str| {
        let pin = PathBuf::from(PIN_ROOT).join(uniq("agent"));
        cleanup.pin_dirs.push(pin.clone());
        let mut o = AgentOptions::new(
            node,
            &netns_name(&lab, node),
            run_dir.path().join(node),
            pin,
            config.clone(),
            store.clone(),
        );
        o.sync_interval = Duration::from_millis(200);
        o
    };
    let ctr_opts = opts("k8s-ctr");
    let w1_opts = opts("k8s-w1");
    let mut ctr = Agent::start(ctr_opts.clone());
    let w1 = Agent::start(w1_opts.clone());
    eprintln!("agents ready after {:?}", t0.elapsed());

    let status = ctr.client().status().unwrap();
    eprintln!("k8s-ctr status: {status:#?}");
    assert_eq!(status.ipam, "IPv4: 2/6 allocated from 10.244.0.0/29");
    let router_ip = status.router_ip.unwrap();
    assert_eq!(router_ip, Ipv4Addr::new(10, 244, 0, 1));
    assert!(status
        .allocations
        .contains(&"10.244.0.1 (router)".to_string()));
    assert!(status
        .allocations
        .contains(&"10.244.0.2 (health)".to_string()));

    // The FibrilNode carries internal, router and health IPs.
    let node: FibrilNode = rt.block_on(store.get_as(None, "k8s-ctr")).unwrap().unwrap();
    let spec = node.spec.unwrap();
    assert_eq!(spec.addresses.len(), 2, "{:?}", spec.addresses);
    assert_eq!(
        spec.health.unwrap().ipv4,
        Some(Ipv4Addr::new(10, 244, 0, 2))
    );

    // Two pods on k8s-ctr, one on k8s-w1.
    let ctr_sock = ctr_opts.socket_path.clone();
    let w1_sock = w1_opts.socket_path.clone();
    let mut pod = |tag: &str| {
        let n = uniq(tag);
        NetNs::create(&n).unwrap();
        cleanup.netns.push(n.clone());
        n
    };
    let (pa, pb, pc) = (pod("fcpa"), pod("fcpb"), pod("fcpc"));
    let path = |n: &str| format!("/run/netns/{n}");
    let t = Instant::now();
    let ra = cni("ADD", &ctr_sock, "cid-a", &path(&pa), "pod-a");
    eprintln!("one ADD (idle agent): {:?}", t.elapsed());
    let a_ip = pod_ip(&ra);
    eprintln!("ADD result: {}", ra.out);
    assert_eq!(ra.out["ips"][0]["gateway"], "10.244.0.1");
    assert_eq!(ra.out["dns"]["nameservers"][0], "10.96.0.10");
    assert_eq!(ra.out["interfaces"][0]["name"], host_ifname("cid-a"));
    let b_ip = pod_ip(&cni("ADD", &ctr_sock, "cid-b", &path(&pb), "pod-b"));
    let c_ip = pod_ip(&cni("ADD", &w1_sock, "cid-c", &path(&pc), "pod-c"));
    assert_ne!(a_ip, b_ip);

    // ADD again for the same interface fails (it exists).
    let again = cni("ADD", &ctr_sock, "cid-a", &path(&pa), "pod-a");
    assert_eq!(again.code, 1);
    assert_eq!(again.out["code"], 100, "{}", again.out);

    // CHECK with prevResult.
    let mut env = BTreeMap::new();
    for (k, v) in [
        ("CNI_COMMAND", "CHECK"),
        ("CNI_CONTAINERID", "cid-a"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    env.insert("CNI_NETNS".into(), path(&pa));
    let mut c: Value = serde_json::from_str(&conf(&ctr_sock)).unwrap();
    c["prevResult"] = ra.out.clone();
    let mut out = Vec::new();
    assert_eq!(
        fibril_cni::run_cni(&env, c.to_string().as_bytes(), &mut out),
        0,
        "CHECK: {}",
        String::from_utf8_lossy(&out)
    );

    let used = eventually(Duration::from_secs(10), || {
        let n: FibrilNode = rt.block_on(store.get_as(None, "k8s-ctr")).unwrap()?;
        let used = n.status?.ipam?.used;
        let owner = used.get(&std::net::IpAddr::V4(a_ip))?.owner.clone()?;
        (owner == "default/pod-a" && used.len() == 4).then_some(used.len())
    });
    assert_eq!(used, Some(4), "FibrilNode status.ipam.used");

    let ep: fibril_api::FibrilEndpoint = rt
        .block_on(store.get_as(Some("default"), "pod-a"))
        .unwrap()
        .expect("FibrilEndpoint default/pod-a");
    assert_eq!(ep.ipv4(), Some(a_ip));
    assert!(ep.identity_id().unwrap() >= 1000, "{ep:?}");

    assert!(ping(&pa, b_ip), "pod A -> pod B");
    assert!(ping(&pb, a_ip), "pod B -> pod A");
    assert!(ping(&pa, router_ip), "pod A -> router IP");
    assert!(
        ping(&pa, Ipv4Addr::new(10, 244, 0, 2)),
        "pod A -> health endpoint"
    );
    assert!(
        ping(&netns_name(&lab, "k8s-ctr"), Ipv4Addr::new(10, 244, 0, 2)),
        "node -> health endpoint"
    );
    // Cross-node (native routing, autoDirectNodeRoutes installed by the sync loop).
    let routed = eventually(Duration::from_secs(10), || {
        node_routes(&lab, "k8s-ctr")
            .iter()
            .any(|r| r.starts_with("10.244.1.0/26"))
            .then_some(())
    });
    assert!(
        routed.is_some(),
        "route to k8s-w1's pod CIDR: {:?}",
        node_routes(&lab, "k8s-ctr")
    );
    let cross = ping(&pa, c_ip);
    eprintln!("pod A (k8s-ctr) -> pod C (k8s-w1) {c_ip}: {cross}");
    assert!(cross, "pod A -> pod C across nodes");

    // Exhaustion: the /29 has 6 addresses: router, health, a, b, then two more.
    let (pd, pe, pf) = (pod("fcpd"), pod("fcpe"), pod("fcpf"));
    pod_ip(&cni("ADD", &ctr_sock, "cid-d", &path(&pd), "pod-d"));
    pod_ip(&cni("ADD", &ctr_sock, "cid-e", &path(&pe), "pod-e"));
    let before = node_links(&lab, "k8s-ctr");
    let full = cni("ADD", &ctr_sock, "cid-f", &path(&pf), "pod-f");
    eprintln!("exhausted ADD: {}", full.out);
    assert_eq!(full.code, 1);
    assert!(
        full.out["msg"].as_str().unwrap().contains("range is full"),
        "{}",
        full.out
    );
    assert_eq!(node_links(&lab, "k8s-ctr"), before, "nothing leaked");
    let st = ctr.client().status().unwrap();
    assert_eq!(st.ipam, "IPv4: 6/6 allocated from 10.244.0.0/29");
    // STATUS reports the exhaustion (51).
    let mut env_s = BTreeMap::new();
    env_s.insert("CNI_COMMAND".to_string(), "STATUS".to_string());
    let mut out = Vec::new();
    assert_eq!(
        fibril_cni::run_cni(&env_s, conf(&ctr_sock).as_bytes(), &mut out),
        1
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["code"], 51, "{v}");

    // The agent asks the operator for more (cluster-pool contract).
    let asked = eventually(Duration::from_secs(10), || {
        let n: FibrilNode = rt.block_on(store.get_as(None, "k8s-ctr")).unwrap()?;
        fibril_operator::contract::requested_ipv4(&n, "cluster-pool")
    });
    assert_eq!(asked, Some(7), "cluster-pool request after exhaustion");

    // Agent restart: allocations come back [restored]; pods keep forwarding
    // while it is down.
    ctr.stop_now().unwrap();
    assert!(ping(&pa, b_ip), "pod A -> pod B while the agent is down");
    drop(ctr);
    let ctr = Agent::start(ctr_opts.clone());
    let st = ctr.client().status().unwrap();
    eprintln!("after restart: {:#?}", st.allocations);
    assert_eq!(st.ipam, "IPv4: 6/6 allocated from 10.244.0.0/29");
    assert!(st
        .allocations
        .iter()
        .any(|a| a == &format!("{a_ip} (default/pod-a [restored])")));
    assert!(st
        .allocations
        .iter()
        .any(|a| a == "10.244.0.1 (router [restored])"));
    assert!(ping(&pa, b_ip), "pod A -> pod B after restart");

    // The "operator" hands out a second block: the refused pod now gets an address.
    let mut n: FibrilNode = rt.block_on(store.get_as(None, "k8s-ctr")).unwrap().unwrap();
    n.spec
        .as_mut()
        .unwrap()
        .ipam
        .as_mut()
        .unwrap()
        .pod_cidrs
        .push("10.244.0.8/29".parse().unwrap());
    rt.block_on(store.update_as(&n)).unwrap();
    let grown = eventually(Duration::from_secs(10), || {
        let st = ctr.client().status().ok()?;
        (st.ipam == "IPv4: 6/12 allocated from 10.244.0.0/29, 10.244.0.8/29").then_some(())
    });
    assert!(grown.is_some(), "{:?}", ctr.client().status());
    let f_ip = pod_ip(&cni("ADD", &ctr_sock, "cid-f", &path(&pf), "pod-f"));
    assert!(ping(&pa, f_ip), "pod A -> pod F (second block)");

    // 50 concurrent ADDs on k8s-w1.
    let names: Vec<String> = (0..50).map(|i| pod(&format!("fcq{i}"))).collect();
    let t = Instant::now();
    let results: Vec<(Ipv4Addr, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let sock = w1_sock.clone();
                s.spawn(move || {
                    let t = Instant::now();
                    let ip = pod_ip(&cni(
                        "ADD",
                        &sock,
                        &format!("cid-q{i}"),
                        &format!("/run/netns/{n}"),
                        &format!("q{i}"),
                    ));
                    (ip, t.elapsed())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: Vec<Ipv4Addr> = results.iter().map(|r| r.0).collect();
    let mut lat: Vec<Duration> = results.iter().map(|r| r.1).collect();
    lat.sort();
    eprintln!(
        "50 concurrent ADDs: {:?} total, per ADD p50 {:?} p99 {:?} max {:?}",
        t.elapsed(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1]
    );
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 50);
    assert!(ping(&names[0], ips[49]), "q0 -> q49");

    // DEL everything (twice: idempotent), plus an unknown container.
    let t = Instant::now();
    std::thread::scope(|s| {
        for (i, n) in names.iter().enumerate() {
            let sock = w1_sock.clone();
            s.spawn(move || {
                for _ in 0..2 {
                    let r = cni(
                        "DEL",
                        &sock,
                        &format!("cid-q{i}"),
                        &format!("/run/netns/{n}"),
                        "",
                    );
                    assert_eq!(r.code, 0, "DEL: {}", r.out);
                }
            });
        }
    });
    eprintln!("50 concurrent DELs (x2): {:?}", t.elapsed());
    for (sock, cid) in [
        (&ctr_sock, "cid-a"),
        (&ctr_sock, "cid-b"),
        (&ctr_sock, "cid-d"),
        (&ctr_sock, "cid-e"),
        (&ctr_sock, "cid-f"),
        (&w1_sock, "cid-c"),
        (&w1_sock, "never-added"),
    ] {
        let r = cni("DEL", sock, cid, "", "");
        assert_eq!(r.code, 0, "DEL {cid}: {}", r.out);
    }
    let eps = rt
        .block_on(store.list_as::<fibril_api::FibrilEndpoint>(None))
        .unwrap()
        .items;
    assert!(eps.is_empty(), "FibrilEndpoints left: {eps:?}");
    for (agent, host, opts) in [(&ctr, "k8s-ctr", &ctr_opts), (&w1, "k8s-w1", &w1_opts)] {
        assert_node_clean(agent, &lab, host, opts);
    }
    drop(ctr);
    drop(w1);
    eprintln!("total {:?}", t0.elapsed());
}

/// Only the router and health addresses are allocated, and no endpoint,
/// veth, /32 route, endpoint map entry or lxc attachment is left.
fn assert_node_clean(agent: &Agent, lab: &str, host: &str, opts: &AgentOptions) {
    let st = agent.client().status().unwrap();
    assert_eq!(st.allocations.len(), 2, "{host}: {:?}", st.allocations);
    eprintln!("{host} after DEL: {}", st.ipam);
    assert_eq!(st.endpoints, 0);
    let lxc: Vec<_> = node_links(lab, host)
        .into_iter()
        .filter(|l| l.starts_with("lxc") && l != "lxc_health")
        .collect();
    assert!(lxc.is_empty(), "{host}: veths left: {lxc:?}");
    let routes: Vec<_> = node_routes(lab, host)
        .into_iter()
        .filter(|r| r.contains("/32") && !r.contains("lxc_health"))
        .collect();
    assert!(routes.is_empty(), "{host}: routes left: {routes:?}");
    let eps: Vec<_> = Maps::new(&opts.pin_dir)
        .endpoints()
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.flags & fibril_abi::endpoint_flags::HEALTH == 0)
        .collect();
    assert!(eps.is_empty(), "{host}: map entries left: {eps:?}");
    let links = fibril_datapath::pinned_attachments(&opts.pin_dir).unwrap();
    assert!(
        links
            .iter()
            .all(|l| !l.ifname.starts_with("lxc") || l.ifname == "lxc_health"),
        "{host}: lxc links left: {links:?}"
    );
}

/// 1,000 ADD/DEL cycles (4 pods at a time, each reusing its namespace)
/// through the plugin against one agent leave nothing behind: no veth,
/// route, address, endpoint map entry, attachment or FibrilEndpoint.
#[test]
fn thousand_add_del_cycles_leave_nothing() {
    const WORKERS: usize = 4;
    const CYCLES: usize = 1000;
    let topo = Topology::builtin("seed-3w").unwrap();
    let lab = uniq("churn").replace('x', "_");
    let _fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let mut cleanup = Cleanup::default();
    let run_dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(MemoryStore::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(set_pod_cidrs(&store, "k8s-ctr", "10.244.0.0/28"));
    let mut config = Config::default();
    config
        .apply_sets(["ipam.mode=cluster-pool", "routingMode=native"])
        .unwrap();
    let pin = PathBuf::from(PIN_ROOT).join(uniq("churn"));
    cleanup.pin_dirs.push(pin.clone());
    let opts = AgentOptions::new(
        "k8s-ctr",
        &netns_name(&lab, "k8s-ctr"),
        run_dir.path().join("k8s-ctr"),
        pin,
        config,
        store.clone(),
    );
    let agent = Agent::start(opts.clone());
    let names: Vec<String> = (0..WORKERS)
        .map(|_| {
            let n = uniq("fchurn");
            NetNs::create(&n).unwrap();
            cleanup.netns.push(n.clone());
            n
        })
        .collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for (w, n) in names.iter().enumerate() {
            let sock = opts.socket_path.clone();
            s.spawn(move || {
                let path = format!("/run/netns/{n}");
                for i in 0..CYCLES / WORKERS {
                    let cid = format!("churn-{w}-{i}");
                    let add = cni("ADD", &sock, &cid, &path, &cid);
                    assert_eq!(add.code, 0, "ADD {cid}: {}", add.out);
                    let del = cni("DEL", &sock, &cid, &path, &cid);
                    assert_eq!(del.code, 0, "DEL {cid}: {}", del.out);
                }
            });
        }
    });
    eprintln!("{CYCLES} ADD/DEL cycles: {:?}", t.elapsed());
    assert_node_clean(&agent, &lab, "k8s-ctr", &opts);
    for n in &names {
        let links: Vec<_> = NetNs::open(n)
            .unwrap()
            .netlink()
            .unwrap()
            .links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(links, ["lo"], "{n}: pod side left");
    }
    let eps = rt
        .block_on(store.list_as::<fibril_api::FibrilEndpoint>(None))
        .unwrap()
        .items;
    assert!(eps.is_empty(), "FibrilEndpoints left: {eps:?}");
}

/// Kills its child (by its own pid) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod_mtu(ns: &str) -> u32 {
    let ns = NetNs::open(ns).unwrap();
    ns.netlink().unwrap().link("eth0").unwrap().unwrap().mtu
}

/// `ipam.mode=kubernetes` (Node spec.podCIDRs in the store, copied into the
/// FibrilNode) with VXLAN tunnel routing: pods on two nodes reach each other
/// and the node reaches the remote pod through `fibril_host`.
#[test]
fn tunnel_mode_with_kubernetes_ipam() {
    let topo = Topology::builtin("seed-3w").unwrap();
    let lab = uniq("cnt").replace('x', "_");
    let _fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let mut cleanup = Cleanup::default();
    let run_dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(MemoryStore::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (node, cidr) in [("k8s-ctr", "10.244.0.0/24"), ("k8s-w1", "10.244.1.0/24")] {
        let n = fibril_api::Node {
            metadata: fibril_api::ObjectMeta {
                name: Some(node.into()),
                ..Default::default()
            },
            spec: Some(fibril_api::k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some(cidr.into()),
                pod_cidrs: Some(vec![cidr.into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        rt.block_on(store.create_as(&n)).unwrap();
    }
    let mut config = Config::default();
    config
        .apply_sets([
            "ipam.mode=kubernetes",
            "routingMode=tunnel",
            "tunnelProtocol=vxlan",
            "ipMasqAgent.enabled=true",
        ])
        .unwrap();
    let mut opts = |node: &str| {
        let pin = PathBuf::from(PIN_ROOT).join(uniq("agent"));
        cleanup.pin_dirs.push(pin.clone());
        let mut o = AgentOptions::new(
            node,
            &netns_name(&lab, node),
            run_dir.path().join(node),
            pin,
            config.clone(),
            store.clone(),
        );
        o.sync_interval = Duration::from_millis(200);
        o
    };
    let (ctr_opts, w1_opts) = (opts("k8s-ctr"), opts("k8s-w1"));
    let ctr = Agent::start(ctr_opts.clone());
    let w1 = Agent::start(w1_opts.clone());
    let st = ctr.client().status().unwrap();
    eprintln!("tunnel status: {st:?}");
    assert_eq!(st.ipam, "IPv4: 2/254 allocated from 10.244.0.0/24");
    assert!(st.routing.contains("Tunnel [vxlan]"), "{}", st.routing);
    let fnode: FibrilNode = rt.block_on(store.get_as(None, "k8s-w1")).unwrap().unwrap();
    assert_eq!(
        fibril_agent::fibril_node_cidrs(&fnode),
        vec!["10.244.1.0/24".parse().unwrap()]
    );

    let mut pod = |tag: &str| {
        let n = uniq(tag);
        NetNs::create(&n).unwrap();
        cleanup.netns.push(n.clone());
        n
    };
    let (pa, pc) = (pod("fcta"), pod("fctc"));
    let a_ip = pod_ip(&cni(
        "ADD",
        &ctr_opts.socket_path,
        "tun-a",
        &format!("/run/netns/{pa}"),
        "a",
    ));
    let c_ip = pod_ip(&cni(
        "ADD",
        &w1_opts.socket_path,
        "tun-c",
        &format!("/run/netns/{pc}"),
        "c",
    ));
    assert_eq!(pod_mtu(&pa), 1450);
    let ok = eventually(Duration::from_secs(10), || ping(&pa, c_ip).then_some(()));
    assert!(ok.is_some(), "pod A -> pod C over VXLAN");
    assert!(ping(&pc, a_ip), "pod C -> pod A over VXLAN");
    // Node -> remote pod via fibril_host (route + NOARP).
    let node_ns = netns_name(&lab, "k8s-ctr");
    let ok = eventually(Duration::from_secs(10), || {
        ping(&node_ns, c_ip).then_some(())
    });
    assert!(
        ok.is_some(),
        "k8s-ctr -> pod C; routes: {:?}",
        node_routes(&lab, "k8s-ctr")
    );

    // ip-masq-agent ConfigMap -> fibril_ipmasq.
    let mut data = std::collections::BTreeMap::new();
    data.insert(
        "config".to_string(),
        r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"]}"#.to_string(),
    );
    let cm = fibril_api::ConfigMap {
        metadata: fibril_api::ObjectMeta {
            name: Some("ip-masq-agent".into()),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    rt.block_on(store.create_as(&cm)).unwrap();
    let listed = eventually(Duration::from_secs(10), || {
        let l = fibril_datapath::ipmasq::list(&Maps::new(&ctr_opts.pin_dir)).ok()?;
        (l.contains("10.10.1.0/24") && l.contains("10.10.2.0/24")).then_some(l)
    });
    eprintln!("bpf ipmasq list:\n{}", listed.clone().unwrap_or_default());
    assert!(listed.is_some(), "ipmasq map follows the ConfigMap");

    // GC through the plugin: only tun-a is valid; a stale tun-x goes.
    let px = pod("fctx");
    pod_ip(&cni(
        "ADD",
        &ctr_opts.socket_path,
        "tun-x",
        &format!("/run/netns/{px}"),
        "x",
    ));
    let mut gc: Value = serde_json::from_str(&conf(&ctr_opts.socket_path)).unwrap();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "tun-a", "ifname": "eth0"}]);
    let mut env = BTreeMap::new();
    env.insert("CNI_COMMAND".to_string(), "GC".to_string());
    env.insert("CNI_PATH".to_string(), "/opt/cni/bin".to_string());
    let mut out = Vec::new();
    assert_eq!(
        fibril_cni::run_cni(&env, gc.to_string().as_bytes(), &mut out),
        0
    );
    let eps = ctr.client().endpoints().unwrap();
    assert_eq!(
        eps.iter()
            .map(|e| e.container_id.as_str())
            .collect::<Vec<_>>(),
        vec!["tun-a"]
    );
    assert!(!node_links(&lab, "k8s-ctr").contains(&host_ifname("tun-x")));

    // A runtime-style CNI_NETNS (/proc/PID/ns/net, not under /run/netns).
    let holder = KillOnDrop(
        std::process::Command::new("unshare")
            .args(["-n", "sleep", "60"])
            .spawn()
            .unwrap(),
    );
    let proc_ns = format!("/proc/{}/ns/net", holder.0.id());
    let same = eventually(Duration::from_secs(5), || {
        let a = std::fs::read_link(&proc_ns).ok()?;
        let b = std::fs::read_link("/proc/self/ns/net").ok()?;
        (a != b).then_some(())
    });
    assert!(same.is_some(), "unshare entered a new netns");
    let r = cni("ADD", &ctr_opts.socket_path, "tun-proc", &proc_ns, "proc");
    let proc_ip = pod_ip(&r);
    let pinged = std::process::Command::new("nsenter")
        .arg(format!("--net={proc_ns}"))
        .args(["ping", "-c", "2", "-i", "0.2", "-W", "2", &a_ip.to_string()])
        .output()
        .unwrap();
    assert!(pinged.status.success(), "/proc netns pod -> pod A");
    assert_eq!(
        cni("DEL", &ctr_opts.socket_path, "tun-proc", &proc_ns, "").code,
        0
    );
    drop(holder);
    eprintln!("/proc/PID/ns/net pod got {proc_ip}");
    let leftovers: Vec<_> = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("fibril-cni-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary netns mounts left");

    for (sock, cid) in [
        (&ctr_opts.socket_path, "tun-a"),
        (&w1_opts.socket_path, "tun-c"),
    ] {
        assert_eq!(cni("DEL", sock, cid, "", "").code, 0);
    }
    drop(ctr);
    drop(w1);
}

/// With real etcd and the real operator (cluster-pool, /28 list carved in
/// /29 blocks): the agent registers its FibrilNode, the operator assigns the
/// first block, the node runs out (`range is full`), asks for more, and the
/// operator's second block serves the refused pod.
#[test]
fn cluster_pool_with_etcd_and_operator() {
    let topo = Topology::builtin("seed-3w").unwrap();
    let lab = uniq("cno").replace('x', "_");
    let _fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let mut cleanup = Cleanup::default();
    let run_dir = tempfile::tempdir().unwrap();
    let etcd = fibril_store::EtcdServer::start_local(run_dir.path().join("etcd")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store: SharedStore = rt.block_on(async {
        Arc::new(
            fibril_store::EtcdStore::connect(
                vec![etcd.client_url().to_string()],
                Default::default(),
            )
            .await
            .unwrap(),
        )
    });
    let mut config = Config::default();
    config
        .apply_sets([
            "ipam.mode=cluster-pool",
            "ipam.operator.clusterPoolIPv4PodCIDRList={10.244.0.0/28}",
            "ipam.operator.clusterPoolIPv4MaskSize=29",
            "routingMode=native",
            "ipv4NativeRoutingCIDR=10.244.0.0/16",
        ])
        .unwrap();
    let (op_stop, op_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = rt.spawn(fibril_operator::run(
        store.clone(),
        config.clone(),
        async move {
            let _ = op_rx.await;
        },
    ));

    let pin = PathBuf::from(PIN_ROOT).join(uniq("agent"));
    cleanup.pin_dirs.push(pin.clone());
    let mut o = AgentOptions::new(
        "k8s-ctr",
        &netns_name(&lab, "k8s-ctr"),
        run_dir.path().join("k8s-ctr"),
        pin,
        config.clone(),
        store.clone(),
    );
    o.sync_interval = Duration::from_millis(200);
    let sock = o.socket_path.clone();
    let ctr = Agent::start(o);
    let st = ctr.client().status().unwrap();
    assert_eq!(st.ipam, "IPv4: 2/6 allocated from 10.244.0.0/29");

    let mut pod = |tag: &str| {
        let n = uniq(tag);
        NetNs::create(&n).unwrap();
        cleanup.netns.push(n.clone());
        n
    };
    let pods: Vec<String> = (0..5).map(|i| pod(&format!("fco{i}"))).collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().take(4).enumerate() {
        ips.push(pod_ip(&cni(
            "ADD",
            &sock,
            &format!("op-{i}"),
            &format!("/run/netns/{p}"),
            &format!("p{i}"),
        )));
    }
    let full = cni(
        "ADD",
        &sock,
        "op-4",
        &format!("/run/netns/{}", pods[4]),
        "p4",
    );
    assert!(
        full.out["msg"]
            .as_str()
            .unwrap_or("")
            .contains("range is full"),
        "{}",
        full.out
    );
    let grown = eventually(Duration::from_secs(20), || {
        let st = ctr.client().status().ok()?;
        st.ipam.contains("10.244.0.8/29").then_some(st.ipam)
    });
    eprintln!("after the operator's extra block: {grown:?}");
    assert!(grown.is_some(), "operator added a block");
    let ip4 = pod_ip(&cni(
        "ADD",
        &sock,
        "op-4",
        &format!("/run/netns/{}", pods[4]),
        "p4",
    ));
    assert!(
        ping(&pods[0], ip4),
        "pod in the first block -> pod in the second"
    );
    for i in 0..5 {
        assert_eq!(cni("DEL", &sock, &format!("op-{i}"), "", "").code, 0);
    }
    drop(ctr);
    let _ = op_stop.send(());
    let _ = rt.block_on(operator);
    drop(store);
    drop(rt);
    drop(etcd);
}

/// multi-pool with the real operator: the agent asks for `default` blocks
/// at start; a pod annotated `ipam.cilium.io/ip-pool: blue` makes the node
/// ask for a `blue` block on demand (the ADD waits for it).
#[test]
fn multi_pool_with_operator() {
    let topo = Topology::builtin("seed-3w").unwrap();
    let lab = uniq("cnm").replace('x', "_");
    let _fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let mut cleanup = Cleanup::default();
    let run_dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store: SharedStore = Arc::new(MemoryStore::new());
    let mut config = Config::default();
    config
        .apply_sets([
            "ipam.mode=multi-pool",
            "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs={10.244.0.0/16}",
            "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.maskSize=28",
            "ipam.operator.autoCreateCiliumPodIPPools.blue.ipv4.cidrs={10.250.0.0/24}",
            "ipam.operator.autoCreateCiliumPodIPPools.blue.ipv4.maskSize=29",
            "routingMode=native",
            "ipv4NativeRoutingCIDR=10.0.0.0/8",
        ])
        .unwrap();
    let (op_stop, op_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = rt.spawn(fibril_operator::run(
        store.clone(),
        config.clone(),
        async move {
            let _ = op_rx.await;
        },
    ));
    let pin = PathBuf::from(PIN_ROOT).join(uniq("agent"));
    cleanup.pin_dirs.push(pin.clone());
    let mut o = AgentOptions::new(
        "k8s-ctr",
        &netns_name(&lab, "k8s-ctr"),
        run_dir.path().join("k8s-ctr"),
        pin,
        config.clone(),
        store.clone(),
    );
    o.sync_interval = Duration::from_millis(200);
    let sock = o.socket_path.clone();
    let ctr = Agent::start(o);
    let st = ctr.client().status().unwrap();
    eprintln!("multi-pool start: {}", st.ipam);
    assert!(st.ipam.starts_with("IPv4: 2/"), "{}", st.ipam);
    assert!(st.ipam.contains("10.244.0.0/28"), "{}", st.ipam);

    // A pod of the blue pool (annotation on the Pod object in the store).
    let mut ann = std::collections::BTreeMap::new();
    ann.insert("ipam.cilium.io/ip-pool".to_string(), "blue".to_string());
    let p = fibril_api::Pod {
        metadata: fibril_api::ObjectMeta {
            name: Some("blue-pod".into()),
            namespace: Some("default".into()),
            annotations: Some(ann),
            ..Default::default()
        },
        ..Default::default()
    };
    rt.block_on(store.create_as(&p)).unwrap();
    let (pd, pb) = (uniq("fcmd"), uniq("fcmb"));
    for n in [&pd, &pb] {
        NetNs::create(n).unwrap();
        cleanup.netns.push(n.clone());
    }
    let d_ip = pod_ip(&cni(
        "ADD",
        &sock,
        "mp-d",
        &format!("/run/netns/{pd}"),
        "plain",
    ));
    let t = Instant::now();
    let b_ip = pod_ip(&cni(
        "ADD",
        &sock,
        "mp-b",
        &format!("/run/netns/{pb}"),
        "blue-pod",
    ));
    eprintln!(
        "default pod {d_ip}, blue pod {b_ip} (waited {:?} for the block)",
        t.elapsed()
    );
    assert!(d_ip.to_string().starts_with("10.244.0."));
    assert!(b_ip.to_string().starts_with("10.250.0."));
    assert!(ping(&pd, b_ip), "default pod -> blue pod");
    let st = ctr.client().status().unwrap();
    eprintln!("multi-pool status: {} {:?}", st.ipam, st.allocations);
    for cid in ["mp-d", "mp-b"] {
        assert_eq!(cni("DEL", &sock, cid, "", "").code, 0);
    }
    drop(ctr);
    let _ = op_stop.send(());
    let _ = rt.block_on(operator);
}
