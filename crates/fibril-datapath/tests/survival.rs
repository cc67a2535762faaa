//! Programs survive their loading process: a child process loads and
//! attaches, exits (or is killed -9), the next child re-opens the pins and
//! replaces the programs atomically. A ping (0% loss) and a TCP stream run
//! across all of it, and map contents (endpoints, the ping's conntrack
//! entry) are kept.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestNode;
use fibril_datapath::testing::fixture::{eventually, ChildGuard};
use fibril_datapath::{pinned_attachments, Datapath, DatapathConfig, Device, Netns};

const ENV_PIN: &str = "FIBRIL_DP_CHILD_PIN_DIR";
const ENV_NETNS: &str = "FIBRIL_DP_CHILD_NETNS";
const ENV_MODE: &str = "FIBRIL_DP_CHILD_MODE";
const ENV_IFS: &str = "FIBRIL_DP_CHILD_LXC";

/// The loader process (run by re-executing this test binary). Does
/// nothing unless the parent set the environment.
#[test]
fn child_loader() {
    let Ok(pin_dir) = std::env::var(ENV_PIN) else {
        return;
    };
    let netns = Netns::Path(PathBuf::from(std::env::var(ENV_NETNS).unwrap()));
    let mode = std::env::var(ENV_MODE).unwrap();
    let config = DatapathConfig {
        node_ip: Ipv4Addr::new(192, 168, 10, 100),
        router_ip: Ipv4Addr::new(10, 244, 0, 1),
        host_device: Device::Name("fibril_host".into()),
        native_routing_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
        ..Default::default()
    };
    let mut dp = Datapath::load(fibril_datapath::DatapathOptions {
        pin_dir: pin_dir.into(),
        netns,
        config,
    })
    .unwrap();
    // First start attaches; restarts take the replace path for everything
    // pinned, then (idempotently) attach what should be there.
    let replaced = dp.replace_pinned().unwrap();
    println!("REPLACED {}", replaced.len());
    dp.attach_host_device("fibril_host").unwrap();
    for ifname in std::env::var(ENV_IFS).unwrap().split(',') {
        dp.attach_endpoint(ifname).unwrap();
    }
    println!("READY");
    if mode == "hang" {
        std::thread::sleep(Duration::from_secs(600));
    }
}

fn spawn_child(node: &TestNode, mode: &str) -> ChildGuard {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", "child_loader", "--nocapture", "--test-threads=1"])
        .env(ENV_PIN, &node.pin_dir)
        .env(ENV_NETNS, node.ns.path())
        .env(ENV_MODE, mode)
        .env(ENV_IFS, "lxca,lxcb")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ChildGuard(Some(child))
}

/// Runs a loader child to completion (mode "exit").
fn run_child(node: &TestNode) -> String {
    let (ok, out, err) = spawn_child(node, "exit").wait();
    assert!(ok && out.contains("READY"), "child failed: {out}{err}");
    out
}

/// (link id, prog id) of every pinned attachment.
fn link_ids(node: &TestNode) -> Vec<(String, u32, u32)> {
    pinned_attachments(&node.pin_dir)
        .unwrap()
        .into_iter()
        .map(|a| {
            let (l, p) = a.ids().unwrap();
            (format!("{}/{}", a.ifname, a.prog.name()), l, p)
        })
        .collect()
}

/// The pods' tc filters (netlink mode) run exactly the recorded program,
/// one filter per pod veth.
fn assert_filters_run(node: &TestNode, ids: &[(String, u32, u32)]) {
    for (name, _, prog) in ids {
        let Some(ifname) = name.strip_suffix("/cil_from_container") else {
            continue;
        };
        let out = node.ns.sh(&format!("tc filter show dev {ifname} ingress"));
        assert_eq!(
            out.matches("cil_from_container").count(),
            1,
            "{ifname}: {out}"
        );
        assert!(out.contains(&format!(" id {prog} ")), "{ifname}: {out}");
    }
}

fn received(file: &std::path::Path) -> u64 {
    std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn programs_survive_loader_exit_and_kill_and_are_replaced_atomically() {
    let router = Ipv4Addr::new(10, 244, 0, 1);
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 0, 10), Ipv4Addr::new(10, 244, 0, 11));
    let mut node = TestNode::standalone(router);
    let a = node.add_pod("lxca", a_ip, 1000);
    let b = node.add_pod("lxcb", b_ip, 2000);

    // 1. A loader process attaches and exits.
    let out = run_child(&node);
    assert!(out.contains("REPLACED 0"), "{out}");
    let ids0 = link_ids(&node);
    assert_eq!(ids0.len(), 4, "lxca, lxcb, fibril_host in+out: {ids0:?}");
    node.register_pod(a, 1000);
    node.register_pod(b, 2000);

    // 2. Traffic with no loader process alive at all.
    let ping = node
        .pod(a)
        .ns
        .spawn(&format!("ping -i 0.02 -c 400 -W 1 {b_ip}"));
    let tmp = tempfile::tempdir().unwrap();
    let sink = tmp.path().join("received");
    let _server = node
        .pod(b)
        .ns
        .spawn(&format!("sh -c 'nc -l 5001 > {}'", sink.display()));
    let mut client = eventually(Duration::from_secs(10), || {
        let mut c = node.pod(a).ns.spawn(&format!(
            "sh -c 'i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.002; done | nc {b_ip} 5001'"
        ));
        std::thread::sleep(Duration::from_millis(300)); // let it connect before judging
        match c.child().try_wait().unwrap() {
            None => Some(c),
            Some(_) => None,
        }
    })
    .expect("TCP stream to pod B");
    let before = eventually(Duration::from_secs(5), || {
        let n = received(&sink);
        (n > 0).then_some(n)
    })
    .expect("stream flowing");
    let ct_before = node.maps().conntrack().unwrap().entries().unwrap();
    let icmp_before = ct_before
        .iter()
        .find(|(k, _)| k.proto == 1)
        .map(|(k, v)| (*k, v.packets_fwd));

    // 3. A restart that exits normally: links stay, programs swapped.
    let out = run_child(&node);
    assert!(out.contains("REPLACED 4"), "{out}");
    let ids1 = link_ids(&node);
    for ((n0, l0, p0), (n1, l1, p1)) in ids0.iter().zip(&ids1) {
        assert_eq!((n0, l0), (n1, l1), "same link / filter handle");
        assert_ne!(p0, p1, "{n0}: program replaced");
    }
    assert_filters_run(&node, &ids1);

    // 4. A loader killed with SIGKILL.
    let mut hang = spawn_child(&node, "hang");
    let stdout = hang.child().stdout.take().unwrap();
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("READY") {
            ready = true;
            break;
        }
    }
    assert!(ready, "hanging child attached");
    let pid = hang.child().id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let _ = hang.child().wait();
    let ids2 = link_ids(&node);
    assert_eq!(ids2.len(), 4, "links survive kill -9");

    // 5. Restart after the kill.
    let out = run_child(&node);
    assert!(out.contains("REPLACED 4"), "{out}");
    let ids3 = link_ids(&node);
    assert!(ids3
        .iter()
        .zip(&ids2)
        .all(|(x, y)| x.1 == y.1 && x.2 != y.2));
    assert_filters_run(&node, &ids3);

    // The TCP stream is still the same connection and still flowing.
    let mid = received(&sink);
    assert!(mid > before);
    assert!(
        eventually(Duration::from_secs(5), || (received(&sink) > mid + 1000)
            .then_some(()))
        .is_some(),
        "stream keeps flowing after the restarts"
    );
    assert!(
        client.child().try_wait().unwrap().is_none(),
        "nc client still connected"
    );

    // Ping: 0% loss over the whole sequence.
    let (ok, out, err) = ping.wait();
    eprintln!(
        "{}",
        out.lines().rev().take(2).collect::<Vec<_>>().join("\n")
    );
    assert!(ok, "ping failed: {out}{err}");
    assert!(out.contains(" 0% packet loss"), "{out}");

    // Map contents kept: the same ICMP conntrack entry kept counting.
    if let Some((k, n)) = icmp_before {
        let after = node.maps().conntrack().unwrap().table().get(&k).unwrap();
        assert!(
            after.unwrap().packets_fwd > n,
            "conntrack entry kept and updated"
        );
    }
    assert_eq!(node.maps().endpoints().unwrap().list().unwrap().len(), 2);
    let _ = client.finish();
    eprintln!("received {} bytes over one TCP connection", received(&sink));
}
