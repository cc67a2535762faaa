//! Reliability (issue 4): an agent killed with SIGKILL during a long TCP
//! transfer and a ping flood loses nothing (the pinned datapath keeps
//! forwarding) and comes back with its allocations `[restored]`; etcd and
//! the operator restarted do not reshuffle anything and agents resync.
//! Root only.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod e2e;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{eventually, text, Lab};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WEBPOD: &str = include_str!("../../../lab/manifests/webpod.yaml");
const CURL_POD: &str = include_str!("../../../lab/manifests/curl-pod.yaml");

/// Bytes the client sends: 80 chunks of 1 MB, 0.1 s apart (about 8 s).
const CHUNKS: usize = 80;

fn sigkill(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
}

/// Pod CIDRs per node and identities per pod, as the store has them.
fn assignments(lab: &Lab) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let v: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "ciliumnodes", "-o", "json"])).unwrap();
    let cidrs = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["spec"]["ipam"]["podCIDRs"].to_string(),
            )
        })
        .collect();
    let ids = lab
        .ok(&["get", "ciliumendpoints"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect();
    (cidrs, ids)
}

#[test]
fn agent_kill9_etcd_and_operator_restart() {
    let lab = Lab::up(
        "rel",
        "seed-3w",
        &[
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=10.0.0.0/8",
        ],
    );
    lab.apply(WEBPOD);
    lab.apply(CURL_POD);
    lab.wait_running(&["webpod-", "curl-pod"], 3, Duration::from_secs(90));
    let remote = lab
        .pods("webpod-")
        .into_iter()
        .find(|p| p.1 == "k8s-w1")
        .expect("a webpod on k8s-w1");

    // A long transfer and a ping flood from curl-pod (k8s-ctr) to k8s-w1.
    let mut server = lab.spawn_in_pod(&remote.0, &["sh", "-c", "nc -l 9000 | wc -c"]);
    std::thread::sleep(Duration::from_millis(500));
    let send = format!(
        "for i in $(seq {CHUNKS}); do head -c 1000000 /dev/zero; sleep 0.1; done | nc -N {} 9000",
        remote.2
    );
    let mut client = lab.spawn_in_pod("curl-pod", &["sh", "-c", &send]);
    let mut ping = lab.spawn_in_pod(
        "curl-pod",
        &[
            "ping", "-q", "-i", "0.01", "-c", "700", "-W", "1", &remote.2,
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));

    // kill -9 the agent of k8s-ctr; it stays down for a while, then comes back.
    let agent = lab.pid_of("agent-k8s-ctr");
    sigkill(agent);
    std::thread::sleep(Duration::from_secs(2));
    lab.ok(&["lab", "restart", "agent-k8s-ctr", "--name", &lab.name]);
    assert_ne!(lab.pid_of("agent-k8s-ctr"), agent);

    let sent = client.wait(Duration::from_secs(60)).expect("transfer ends");
    let got = server.wait(Duration::from_secs(10)).expect("server ends");
    assert_eq!(
        got.trim(),
        (CHUNKS * 1_000_000).to_string(),
        "every byte arrived (client said: {sent})"
    );
    let pinged = ping.wait(Duration::from_secs(30)).expect("ping ends");
    assert!(pinged.contains(" 0% packet loss"), "{pinged}");

    let verbose = lab.ok(&["dbg", "status", "--verbose"]);
    assert!(
        verbose.contains("(default/curl-pod [restored])"),
        "allocations restored:\n{verbose}"
    );
    // A new pod never gets an address still in use.
    lab.ok(&["scale", "deployment", "webpod", "--replicas", "4"]);
    lab.wait_running(&["webpod-"], 4, Duration::from_secs(60));
    let ips: Vec<String> = lab.pods("").into_iter().map(|p| p.2).collect();
    let mut uniq = ips.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), ips.len(), "distinct pod IPs: {ips:?}");

    // etcd and the operator restarted: no reshuffle, agents resync.
    let before = assignments(&lab);
    sigkill(lab.pid_of("etcd"));
    sigkill(lab.pid_of("operator"));
    std::thread::sleep(Duration::from_secs(1));
    lab.ok(&["lab", "restart", "etcd", "--name", &lab.name]);
    lab.ok(&["lab", "restart", "operator", "--name", &lab.name]);
    let after = eventually(Duration::from_secs(30), || {
        lab.run(&["get", "ciliumnodes"])
            .status
            .success()
            .then(|| assignments(&lab))
    })
    .expect("the store answers again");
    assert_eq!(before, after, "nothing reshuffled");
    // Agents follow the store again: a new replica is programmed as a backend.
    lab.ok(&["scale", "deployment", "webpod", "--replicas", "5"]);
    lab.wait_running(&["webpod-"], 5, Duration::from_secs(60));
    let newest = lab
        .pods("webpod-")
        .into_iter()
        .map(|p| p.2)
        .collect::<Vec<_>>();
    let listed = eventually(Duration::from_secs(30), || {
        let l = lab.ok(&["dbg", "service", "list"]);
        newest
            .iter()
            .all(|ip| l.contains(&format!("{ip}:80")))
            .then_some(l)
    });
    assert!(
        listed.is_some(),
        "all 5 backends programmed:\n{}",
        text(&lab.run(&["dbg", "service", "list"]))
    );
}
