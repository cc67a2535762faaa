//! Privileged tests (root): build the seed-4w fabric in namespaces, ping across
//! it, check the root namespace is untouched and nothing is left afterwards.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::process::Command;
use std::time::{Duration, Instant};

use fibril_lab::{netns_prefix, Fabric, LabError, LabState, Topology};
use fibril_netlink::rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use fibril_netlink::{list_netns, NetNs};

/// Netlink socket in the root namespace subscribed to link events
/// (RTMGRP_LINK): lab links must never appear there, not even transiently.
fn root_link_monitor() -> Socket {
    let mut s = Socket::new(NETLINK_ROUTE).unwrap();
    s.bind(&SocketAddr::new(0, 1)).unwrap();
    s.set_non_blocking(true).unwrap();
    s
}

fn drain(s: &Socket) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = s.recv(&mut &mut buf[..], 0) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    all
}

fn lab_name(tag: &str) -> String {
    format!("t{}_{tag}", std::process::id())
}

/// Output of a root-namespace command with volatile numbers masked.
fn run_masked(argv: &[&str]) -> String {
    let out = match Command::new(argv[0]).args(&argv[1..]).output() {
        Ok(o) => o,
        // A missing tool (e.g. nft) is treated as an empty, stable output.
        Err(_) => return String::new(),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let volatile = [
        "valid_lft",
        "preferred_lft",
        "expires",
        "packets",
        "bytes",
        "used",
        "age",
    ];
    text.lines()
        .map(|line| {
            let mut out = Vec::new();
            let mut mask_next = false;
            for tok in line.split_whitespace() {
                if mask_next {
                    out.push("X");
                    mask_next = false;
                    continue;
                }
                mask_next = volatile.contains(&tok);
                out.push(tok);
            }
            out.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn root_snapshot() -> Vec<(String, String)> {
    let cmds: &[&[&str]] = &[
        &["ip", "-d", "link", "show"],
        &["ip", "addr"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "rule"],
        &["nft", "list", "ruleset"],
    ];
    cmds.iter().map(|c| (c.join(" "), run_masked(c))).collect()
}

fn assert_eventually_pings(fabric: &Fabric, host: &str, dst: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = fabric
            .exec(host, &["ping", "-c1", "-W1", "-n", dst])
            .unwrap();
        if out.status.success() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{host} cannot ping {dst}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lab_leftovers(lab: &str) -> Vec<String> {
    let prefix = netns_prefix(lab);
    let mut left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for p in [
        format!("/run/fibril/labs/{lab}"),
        format!("/run/fibril/labs/{lab}.lock"),
    ] {
        if std::path::Path::new(&p).exists() {
            left.push(p);
        }
    }
    // Mounts of our namespaces.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mounts.lines() {
        if line.contains(&format!("/run/netns/{prefix}")) {
            left.push(line.to_string());
        }
    }
    left
}

#[test]
fn seed_4w_pings_across_router_and_leaves_nothing() {
    let before = root_snapshot();
    let monitor = root_link_monitor();
    let lab = lab_name("s4w");
    let topo = Topology::builtin("seed-4w").unwrap();
    let fabric = Fabric::up_guarded(&topo, &lab).unwrap();

    // One namespace per host plus the fabric, all with the lab prefix.
    for host in ["k8s-ctr", "k8s-w1", "k8s-w0", "router", "fabric"] {
        let ns = fabric.netns_name(host).unwrap();
        assert_eq!(ns, format!("fl-{lab}-{host}"));
        assert!(fibril_netlink::netns_exists(ns), "{ns} missing");
    }

    // Node-to-node across the router, same subnet, and router loop addresses.
    assert_eventually_pings(&fabric, "k8s-ctr", "192.168.20.100");
    assert_eventually_pings(&fabric, "k8s-w0", "192.168.10.101");
    assert_eventually_pings(&fabric, "k8s-w1", "192.168.10.100");
    assert_eventually_pings(&fabric, "k8s-ctr", "10.10.1.200");
    assert_eventually_pings(&fabric, "k8s-w0", "10.10.2.200");

    // eth1 on nodes with MTU 1500, router eth1/eth2, ip_forward on, no default route.
    for host in ["k8s-ctr", "k8s-w1", "k8s-w0"] {
        let nl = fabric.netlink(host).unwrap();
        let eth1 = nl.link("eth1").unwrap().expect("eth1");
        assert_eq!(eth1.mtu, 1500);
        assert!(eth1.up);
        assert_eq!(eth1.kind.as_deref(), Some("veth"));
    }
    let rnl = fabric.netlink("router").unwrap();
    for dev in ["eth1", "eth2", "loop1", "loop2"] {
        assert!(rnl.link(dev).unwrap().is_some(), "router {dev} missing");
    }
    for host in fabric.hosts() {
        let ns = fabric.netns_of(&host).unwrap();
        assert_eq!(ns.sysctl("net.ipv4.ip_forward").unwrap(), "1", "{host}");
        let routes = fabric.netlink(&host).unwrap().routes().unwrap();
        assert!(
            !routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.table == 254),
            "{host} has a default route: {routes:?}"
        );
    }
    let w0_routes = fabric.exec("k8s-w0", &["ip", "route"]).unwrap();
    let w0_routes = String::from_utf8_lossy(&w0_routes.stdout);
    assert!(
        w0_routes.contains("192.168.10.0/24 via 192.168.20.200 dev eth1"),
        "{w0_routes}"
    );

    // A second `up` of a running lab is refused and changes nothing.
    match Fabric::up(&topo, &lab) {
        Err(LabError::AlreadyRunning { lab: l, .. }) => assert_eq!(l, lab),
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    assert_eventually_pings(&fabric, "k8s-ctr", "192.168.20.100");

    // A process inside a node is stopped by `down`.
    let mut sleeper = fabric.command("k8s-w1", "sleep").unwrap();
    let mut child = sleeper.arg("300").spawn().unwrap();
    let netns = NetNs::open(fabric.netns_name("k8s-w1").unwrap()).unwrap();
    assert!(netns.pids().unwrap().contains(&(child.id() as i32)));

    let report = fabric.down().unwrap();
    assert_eq!(report.namespaces.len(), 5);
    assert!(report.killed_pids.contains(&(child.id() as i32)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sleep process survived lab down");
        std::thread::sleep(Duration::from_millis(20));
    }

    assert_eq!(lab_leftovers(&lab), Vec::<String>::new());
    let events = drain(&monitor);
    for name in ["k8s-ctr-eth1", "k8s-w0-eth1", "router-eth2", "br-net20"] {
        assert!(
            !events.windows(name.len()).any(|w| w == name.as_bytes()),
            "link {name} appeared in the root namespace"
        );
    }
    let after = root_snapshot();
    for ((cmd, b), (_, a)) in before.iter().zip(after.iter()) {
        assert_eq!(b, a, "root namespace changed: `{cmd}`");
    }
}

#[test]
fn half_built_lab_is_cleaned_by_next_up_and_down() {
    let lab = lab_name("crash");
    let topo = Topology::builtin("seed-3w").unwrap();
    let fabric = Fabric::up_guarded(&topo, &lab).unwrap();

    // Simulate a crash half-way: state says incomplete, one namespace gone,
    // plus a stray namespace with the lab's prefix.
    let mut state: LabState = fabric.state().clone();
    state.complete = false;
    state.save().unwrap();
    NetNs::delete_by_name(fabric.netns_name("k8s-w1").unwrap()).unwrap();
    NetNs::create(&format!("fl-{lab}-stray")).unwrap();

    let st = fibril_lab::status(Some(&lab)).unwrap();
    assert!(!st[0].healthy);
    assert_eq!(st[0].stray_namespaces, vec![format!("fl-{lab}-stray")]);

    // `up` cleans the leftovers and rebuilds.
    let _ = fabric.release();
    let fabric = Fabric::up_guarded(&topo, &lab).unwrap();
    assert!(!fibril_netlink::netns_exists(&format!("fl-{lab}-stray")));
    assert_eventually_pings(&fabric, "k8s-w1", "192.168.10.100");
    assert!(fibril_lab::status(Some(&lab)).unwrap()[0].healthy);
    drop(fabric);
    assert_eq!(lab_leftovers(&lab), Vec::<String>::new());

    // `down` of leftovers without any state file.
    NetNs::create(&format!("fl-{lab}-orphan")).unwrap();
    let report = fibril_lab::down(&lab).unwrap();
    assert_eq!(report.namespaces, vec![format!("fl-{lab}-orphan")]);
    assert_eq!(lab_leftovers(&lab), Vec::<String>::new());

    // Nothing left: `down` says the lab is not running.
    assert!(matches!(
        fibril_lab::down(&lab),
        Err(LabError::NotRunning { .. })
    ));
}

#[test]
fn two_labs_coexist() {
    let topo = Topology::builtin("3nodes").unwrap();
    let a = Fabric::up_guarded(&topo, &lab_name("a")).unwrap();
    let b = Fabric::up_guarded(&topo, &lab_name("b")).unwrap();
    assert_eventually_pings(&a, "k8s-ctr", "192.168.10.102");
    assert_eventually_pings(&b, "k8s-w2", "10.10.1.200");
    let a_lab = a.lab().to_string();
    drop(a);
    assert_eq!(lab_leftovers(&a_lab), Vec::<String>::new());
    assert_eventually_pings(&b, "k8s-ctr", "192.168.10.101");
}

#[test]
fn extra_namespaces_and_tracked_processes_go_with_down() {
    let lab = lab_name("extra");
    let topo = Topology::builtin("seed-3w").unwrap();
    let mut fabric = Fabric::up_guarded(&topo, &lab).unwrap();

    let pod = fabric.create_netns("k8s-w1-pod1").unwrap();
    assert_eq!(pod.name(), format!("fl-{lab}-k8s-w1-pod1"));
    let st = fibril_lab::status(Some(&lab)).unwrap();
    assert!(st[0].healthy);
    assert!(st[0].stray_namespaces.is_empty());
    assert!(st[0]
        .hosts
        .iter()
        .any(|h| h.extra && h.host == "k8s-w1-pod1"));

    // A process in the root namespace tracked by the lab, and one in the pod.
    let mut root_child = Command::new("sleep").arg("300").spawn().unwrap();
    fabric
        .track_process("sleeper", root_child.id() as i32)
        .unwrap();
    let mut pod_child = pod.command("sleep").unwrap().arg("300").spawn().unwrap();

    // Deleting an extra namespace also works on its own.
    fabric.create_netns("tmp").unwrap();
    fabric.delete_netns("tmp").unwrap();
    assert!(!fibril_netlink::netns_exists(&format!("fl-{lab}-tmp")));

    let report = fabric.down().unwrap();
    assert!(report.namespaces.contains(&format!("fl-{lab}-k8s-w1-pod1")));
    for child in [&mut root_child, &mut pod_child] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "tracked process survived down");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(lab_leftovers(&lab), Vec::<String>::new());
}

#[test]
fn failed_up_names_the_step_and_removes_everything() {
    let lab = lab_name("fail");
    let mut topo = Topology::builtin("seed-3w").unwrap();
    // Passes validation, but the kernel refuses it: the connected route exists.
    topo.nodes[1].routes.push(fibril_lab::StaticRoute {
        to: "192.168.10.0/24".parse().unwrap(),
        via: Some("192.168.10.200".parse().unwrap()),
        dev: None,
        onlink: false,
    });
    let err = Fabric::up(&topo, &lab).unwrap_err().to_string();
    assert!(
        err.contains("k8s-w1") && err.contains("192.168.10.0/24") && err.contains(&lab),
        "{err}"
    );
    assert_eq!(lab_leftovers(&lab), Vec::<String>::new());
}
