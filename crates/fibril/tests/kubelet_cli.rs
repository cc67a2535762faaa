//! Privileged end-to-end test of the pod runner: the seed-3w fabric, real
//! agents (in-process), two pod runners (in-process, running the real
//! `fibril-cni` plugin and `fibril workload` processes of this build), Pods
//! written to an in-memory store. Checks: Node registration, whoami and
//! netshoot pods Running with IPs, `fibril exec` curl from one pod to
//! another (same node and across nodes), hostname and resolv.conf inside,
//! unknown image event, `range is full` event on a tiny node CIDR, workload
//! restart, adoption by a restarted pod runner, deletion cleanup.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fibril_agent::testing::{
    block_on, config_with, eventually, store_with_pod_cidrs, RuntimeThread, TestAgent,
    SYNC_INTERVAL,
};
use fibril_agent::AgentOptions;
use fibril_api::{ObjectKey, Pod};
use fibril_kubelet::{KubeletOptions, PodRecord};
use fibril_lab::{netns_name, paths, Fabric, Topology};
use fibril_store::{SharedStore, StoreExt};
use serde_json::{json, Value};

const FIBRIL: &str = env!("CARGO_BIN_EXE_fibril");

/// A pod runner on its own runtime thread.
fn kubelet(opts: KubeletOptions) -> RuntimeThread {
    RuntimeThread::spawn(move |shutdown| fibril_kubelet::run(opts, shutdown))
}

fn pod(name: &str, node: &str, image: &str, extra: Value) -> Pod {
    let mut container = json!({"name": name.split('-').next().unwrap(), "image": image});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            container[k] = v;
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [container]},
    }))
    .unwrap()
}

fn get_pod(store: &SharedStore, name: &str) -> Option<Pod> {
    block_on(store.get_as::<Pod>(Some("default"), name)).unwrap()
}

fn running_ip(store: &SharedStore, name: &str) -> Option<String> {
    let p = get_pod(store, name)?;
    let s = p.status?;
    (s.phase.as_deref() == Some("Running")).then_some(())?;
    s.pod_ip
}

fn events_of(store: &SharedStore, pod: &str) -> Vec<Value> {
    block_on(store.list("Event", Some("default")))
        .unwrap()
        .items
        .into_iter()
        .map(|o| o.value)
        .filter(|v| v["involvedObject"]["name"] == pod)
        .collect()
}

fn exec(lab: &str, pod: &str, cmd: &[&str]) -> (i32, String, String) {
    let out = Command::new(FIBRIL)
        .args(["exec", pod, "-n", "default", "--lab", lab, "--"])
        .args(cmd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn record(lab: &str, pod: &str) -> Option<PodRecord> {
    fibril_kubelet::record::find(lab, "default", pod).unwrap()
}

#[test]
fn pod_runner_on_the_fabric() {
    let t0 = Instant::now();
    let lab = format!("kl{}", std::process::id() % 100_000);
    let topo = Topology::builtin("seed-3w").unwrap();
    let fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    let store = store_with_pod_cidrs(&[("k8s-ctr", "10.244.0.0/26"), ("k8s-w1", "10.244.1.0/29")]);
    let config = config_with(&[
        "ipam.mode=cluster-pool",
        "routingMode=native",
        "autoDirectNodeRoutes=true",
        "ipv4NativeRoutingCIDR=10.244.0.0/16",
    ]);
    let agent_opts = |node: &str| {
        let mut o = AgentOptions::new(
            node,
            &netns_name(&lab, node),
            paths::node_dir(&lab, node),
            paths::node_pin_dir(&lab, node),
            config.clone(),
            store.clone(),
        );
        o.sync_interval = SYNC_INTERVAL;
        o
    };
    let mut agents = vec![
        TestAgent::start(agent_opts("k8s-ctr")),
        TestAgent::start(agent_opts("k8s-w1")),
    ];
    let kubelet_opts = |node: &str| {
        let mut o = KubeletOptions::new(&lab, node, store.clone());
        o.fibril_exe = FIBRIL.into();
        o.poll_interval = Duration::from_millis(200);
        o
    };
    let mut ctr = kubelet(kubelet_opts("k8s-ctr"));
    let mut w1 = kubelet(kubelet_opts("k8s-w1"));
    eprintln!("agents and pod runners up after {:?}", t0.elapsed());

    // Node registration.
    let node = eventually(Duration::from_secs(10), || {
        block_on(store.get_as::<fibril_api::Node>(None, "k8s-ctr")).unwrap()
    })
    .expect("Node k8s-ctr registered");
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "k8s-ctr");
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "");
    let st = node.status.unwrap();
    let addrs = st.addresses.unwrap();
    assert_eq!(addrs[0].type_, "InternalIP");
    assert_eq!(addrs[0].address, "192.168.10.100");
    assert!(st
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));
    let w1_node: fibril_api::Node = eventually(Duration::from_secs(10), || {
        block_on(store.get_as::<fibril_api::Node>(None, "k8s-w1")).unwrap()
    })
    .unwrap();
    assert!(!w1_node
        .metadata
        .labels
        .unwrap()
        .contains_key("node-role.kubernetes.io/control-plane"));

    // Pods.
    let root_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for p in [
        pod("webpod", "k8s-ctr", "traefik/whoami", json!({})),
        pod(
            "curl-pod",
            "k8s-ctr",
            "nicolaka/netshoot",
            json!({"command": ["sleep", "infinity"]}),
        ),
        pod(
            "web-w1",
            "k8s-w1",
            "docker.io/traefik/whoami:v1.10",
            json!({"args": ["--port", "8080"]}),
        ),
        pod(
            "bad-image",
            "k8s-ctr",
            "example.com/nope/unknown:1",
            json!({}),
        ),
        {
            let mut p = pod("host-nginx", "k8s-w1", "nginx:1.27", json!({}));
            p.spec.as_mut().unwrap().host_network = Some(true);
            p
        },
    ] {
        block_on(store.create_as(&p)).unwrap();
    }
    let web_ip = eventually(Duration::from_secs(30), || running_ip(&store, "webpod"))
        .expect("webpod Running");
    let curl_ip = eventually(Duration::from_secs(30), || running_ip(&store, "curl-pod"))
        .expect("curl-pod Running");
    let w1_ip = eventually(Duration::from_secs(30), || running_ip(&store, "web-w1"))
        .expect("web-w1 Running");
    eprintln!(
        "pods running after {:?}: webpod {web_ip}, curl-pod {curl_ip}, web-w1 {w1_ip}",
        t0.elapsed()
    );
    let web = get_pod(&store, "webpod").unwrap();
    let ws = web.status.clone().unwrap();
    assert_eq!(ws.host_ip.as_deref(), Some("192.168.10.100"));
    assert!(ws.start_time.is_some());
    let cs = &ws.container_statuses.unwrap()[0];
    assert!(cs.ready && cs.state.as_ref().unwrap().running.is_some());
    assert!(cs.container_id.is_some());
    assert!(ws
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));
    let reasons: Vec<String> = events_of(&store, "webpod")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(reasons.contains(&"Started".to_string()), "{reasons:?}");

    // The record.
    let rec = record(&lab, "webpod").expect("record of webpod");
    assert_eq!(rec.ip, web_ip);
    assert!(rec.is_running());
    assert_eq!(rec.netns, paths::pod_netns_name(&lab, "default", "webpod"));
    assert!(Path::new("/run/netns").join(&rec.netns).exists());

    // exec: curl from curl-pod to webpod (same node) and web-w1 (other node).
    let (code, out, err) = exec(
        &lab,
        "curl-pod",
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{web_ip}/"),
        ],
    );
    eprintln!("curl webpod: {code}\n{out}{err}");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hostname: webpod\n"), "{out}");
    assert!(out.contains(&format!("IP: {web_ip}\n")), "{out}");
    assert!(out.contains(&format!("RemoteAddr: {curl_ip}:")), "{out}");
    let cross = eventually(Duration::from_secs(15), || {
        let (code, out, _) = exec(
            &lab,
            "curl-pod",
            &[
                "curl",
                "-s",
                "--max-time",
                "3",
                &format!("http://{w1_ip}:8080/"),
            ],
        );
        (code == 0 && out.contains("Hostname: web-w1")).then_some(out)
    });
    eprintln!("curl web-w1 across nodes: {cross:?}");
    assert!(cross.is_some(), "curl-pod -> web-w1:8080 across nodes");
    // hostNetwork: the node's namespace and IP, no CNI.
    let host_ip = eventually(Duration::from_secs(30), || running_ip(&store, "host-nginx"))
        .expect("host-nginx Running");
    assert_eq!(host_ip, "192.168.10.101");
    let (code, out, err) = exec(
        &lab,
        "curl-pod",
        &["curl", "-s", "--max-time", "5", "http://192.168.10.101/"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Welcome to nginx!"), "{out}");
    let (code, out, _) = exec(&lab, "host-nginx", &["hostname"]);
    assert_eq!((code, out.trim()), (0, "k8s-w1"));
    let (code, out, _) = exec(&lab, "curl-pod", &["hostname"]);
    assert_eq!((code, out.trim()), (0, "curl-pod"));
    let (code, out, _) = exec(&lab, "curl-pod", &["cat", "/etc/resolv.conf"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    let (code, out, _) = exec(&lab, "curl-pod", &["cat", "/etc/hostname"]);
    assert_eq!((code, out.trim()), (0, "curl-pod"));
    let (code, _, _) = exec(&lab, "curl-pod", &["sh", "-c", "exit 7"]);
    assert_eq!(code, 7, "exit code passes through");
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        root_resolv,
        "root resolv.conf untouched"
    );
    assert_ne!(
        nix::unistd::gethostname().unwrap().to_string_lossy(),
        "curl-pod"
    );
    let (code, _, err) = exec(&lab, "nope", &["true"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("\"nope\" not found in namespace \"default\""),
        "{err}"
    );

    // Unknown image: Pending, ErrImagePull, event naming the image.
    let bad = eventually(Duration::from_secs(10), || {
        let p = get_pod(&store, "bad-image")?;
        let w = p.status?.container_statuses?[0].state.clone()?.waiting?;
        (w.reason.as_deref() == Some("ErrImagePull")).then_some(())
    });
    assert!(bad.is_some(), "bad-image waiting ErrImagePull");
    let ev = events_of(&store, "bad-image");
    assert!(
        ev.iter().any(|e| e["reason"] == "Failed"
            && e["type"] == "Warning"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("example.com/nope/unknown:1")),
        "{ev:?}"
    );

    // Range is full on k8s-w1 (/29: router, health, web-w1 + 3 more).
    for i in 0..4 {
        block_on(store.create_as(&pod(&format!("idle-{i}"), "k8s-w1", "busybox", json!({}))))
            .unwrap();
    }
    let full = eventually(Duration::from_secs(30), || {
        (0..4).find_map(|i| {
            let name = format!("idle-{i}");
            events_of(&store, &name)
                .into_iter()
                .find(|e| e["reason"] == "FailedCreatePodSandBox")
                .map(|e| (name, e))
        })
    });
    let (full_pod, ev) = full.expect("FailedCreatePodSandBox on k8s-w1");
    eprintln!("range-full event on {full_pod}: {}", ev["message"]);
    let msg = ev["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Failed to create pod sandbox: plugin type=\"fibril-cni\" failed (add): "),
        "{msg}"
    );
    assert!(
        msg.contains("unable to allocate IP via local agent: range is full"),
        "{msg}"
    );
    assert_eq!(ev["type"], "Warning");
    let p = get_pod(&store, &full_pod).unwrap();
    let s = p.status.unwrap();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(
        s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap()
            .reason
            .as_deref(),
        Some("ContainerCreating")
    );
    assert!(
        !Path::new("/run/netns")
            .join(paths::pod_netns_name(&lab, "default", &full_pod))
            .exists()
            || record(&lab, &full_pod).is_none()
    );

    // Room again: the pending pod gets its sandbox on a later retry.
    let other = (0..4)
        .map(|i| format!("idle-{i}"))
        .find(|n| *n != full_pod)
        .unwrap();
    block_on(store.delete_as::<Pod>(Some("default"), &other, None)).unwrap();
    let t = Instant::now();
    let recovered = eventually(Duration::from_secs(45), || running_ip(&store, &full_pod));
    eprintln!(
        "{full_pod} Running after a retry ({:?} after {other} was deleted): {recovered:?}",
        t.elapsed()
    );
    assert!(
        recovered.is_some(),
        "{full_pod} runs once an address is free"
    );

    // Workload restart: kill curl-pod's process.
    let before = record(&lab, "curl-pod").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = eventually(Duration::from_secs(15), || {
        let p = get_pod(&store, "curl-pod")?;
        let s = p.status?;
        let c = s.container_statuses?[0].clone();
        (s.phase.as_deref() == Some("Running") && c.restart_count == 1 && c.ready).then_some(())
    });
    assert!(
        restarted.is_some(),
        "curl-pod restarted with restartCount 1"
    );
    let after = record(&lab, "curl-pod").unwrap();
    assert_ne!(after.pid, before.pid);
    assert!(after.is_running());

    // A restarted pod runner adopts running pods.
    ctr.stop().unwrap();
    let pid_before = record(&lab, "webpod").unwrap().pid;
    let mut ctr = kubelet(kubelet_opts("k8s-ctr"));
    std::thread::sleep(Duration::from_secs(2));
    let rec = record(&lab, "webpod").unwrap();
    assert_eq!(rec.pid, pid_before, "webpod not restarted");
    assert!(rec.is_running());
    assert_eq!(
        running_ip(&store, "webpod").as_deref(),
        Some(web_ip.as_str())
    );

    // Deletion (contract: deletionTimestamp set, the pod runner cleans up
    // and deletes the object).
    let key = ObjectKey::new("Pod", Some("default"), "webpod");
    let obj = block_on(store.get(&key)).unwrap().unwrap();
    let mut v = obj.value.clone();
    v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    block_on(store.update(&key, v, obj.mod_revision)).unwrap();
    let t = Instant::now();
    let gone = eventually(Duration::from_secs(15), || {
        get_pod(&store, "webpod").is_none().then_some(())
    });
    assert!(gone.is_some(), "webpod deleted by the pod runner");
    eprintln!("webpod deleted in {:?}", t.elapsed());
    assert!(
        !Path::new("/run/netns").join(&rec.netns).exists(),
        "netns removed"
    );
    assert!(record(&lab, "webpod").is_none(), "record removed");
    assert!(!rec.is_running(), "workload stopped");
    let links = fabric
        .exec("k8s-ctr", &["ip", "-o", "link", "show"])
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    let veth = fibril_agent::api::host_ifname(&rec.container_id);
    assert!(
        !links.contains(&format!(" {veth}@")),
        "{veth} left: {links}"
    );

    // A vanished pod object: the sandbox goes too.
    let rec = record(&lab, "curl-pod").unwrap();
    block_on(store.delete_as::<Pod>(Some("default"), "curl-pod", None)).unwrap();
    let cleaned = eventually(Duration::from_secs(15), || {
        (record(&lab, "curl-pod").is_none() && !rec.is_running()).then_some(())
    });
    assert!(
        cleaned.is_some(),
        "curl-pod sandbox removed after the object vanished"
    );
    assert!(!Path::new("/run/netns").join(&rec.netns).exists());

    // Deleting the host-network pod leaves the node's namespace alone.
    let rec = record(&lab, "host-nginx").unwrap();
    block_on(store.delete_as::<Pod>(Some("default"), "host-nginx", None)).unwrap();
    let cleaned = eventually(Duration::from_secs(15), || {
        (record(&lab, "host-nginx").is_none() && !rec.is_running()).then_some(())
    });
    assert!(cleaned.is_some(), "host-nginx stopped");
    assert!(Path::new("/run/netns")
        .join(netns_name(&lab, "k8s-w1"))
        .exists());

    ctr.stop().unwrap();
    w1.stop().unwrap();
    for a in &mut agents {
        a.stop().unwrap();
    }
    drop(agents);
    fabric.down().unwrap();
    eprintln!("total {:?}", t0.elapsed());
}
