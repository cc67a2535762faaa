//! `fibril observe` against fake agents (unix sockets answering
//! `GET /v1/flows` with chunked JSON lines): flows of several nodes merged by
//! time, `--last N` over all nodes, filters passed to the agents as query
//! parameters, the seeds' line format, `-o json`, `EVENTS LOST` lines, and
//! `-f` ordering through the reorder window. No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use fibril_agent::flows::{FlowLine, FlowRecord, Peer};

fn flow(node: &str, t: u64, sport: u16, flags: &[&str]) -> FlowLine {
    FlowLine {
        flow: Some(FlowRecord {
            event_type: "trace".into(),
            obs_point: "to-endpoint".into(),
            verdict: "FORWARDED".into(),
            protocol: "TCP".into(),
            source: Peer {
                ip: Some(Ipv4Addr::new(10, 244, 0, 5)),
                port: sport,
                identity: 5580,
                namespace: "default".into(),
                pod_name: "curl-pod".into(),
                ..Default::default()
            },
            destination: Peer {
                ip: Some(Ipv4Addr::new(10, 244, 1, 7)),
                port: 80,
                identity: 12497,
                namespace: "default".into(),
                pod_name: "webpod-697b545f57-bpzn9".into(),
                ..Default::default()
            },
            tcp_flags: flags.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        lost_events: None,
        node_name: node.into(),
        time_ns: t,
    }
}

/// A fake agent answering every connection with `lines` (chunked), recording
/// request lines.
fn fake_agent(path: &Path, lines: Vec<FlowLine>) -> Arc<Mutex<Vec<String>>> {
    let listener = UnixListener::bind(path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            s2.lock().unwrap().push(first.trim().to_string());
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap() == 0 || l.trim().is_empty() {
                    break;
                }
            }
            let mut out =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec();
            for l in &lines {
                let mut j = serde_json::to_string(l).unwrap();
                j.push('\n');
                out.extend_from_slice(format!("{:x}\r\n", j.len()).as_bytes());
                out.extend_from_slice(j.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            let _ = c.write_all(&out);
        }
    });
    seen
}

fn observe(args: &[&str], sockets: &[PathBuf]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fibril"));
    cmd.arg("observe");
    for s in sockets {
        cmd.arg("--socket").arg(s);
    }
    cmd.args(args);
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// 2025-07-30 06:30:32.254 UTC
const T: u64 = 1_753_857_032_254_000_000;
const MS: u64 = 1_000_000;

#[test]
fn merges_nodes_by_time_with_filters_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let seen_a = fake_agent(
        &a,
        vec![
            flow("k8s-ctr", T, 1, &["SYN"]),
            flow("k8s-ctr", T + 2 * MS, 3, &["ACK"]),
            flow("k8s-ctr", T + 4 * MS, 5, &["ACK", "FIN"]),
        ],
    );
    let _seen_b = fake_agent(
        &b,
        vec![
            flow("k8s-w1", T + MS, 2, &["SYN", "ACK"]),
            FlowLine::lost("k8s-w1", "DATAPATH_RING_BUFFER", 7, T + 3 * MS),
            flow("k8s-w1", T + 5 * MS, 6, &["ACK", "PSH"]),
        ],
    );
    let socks = [a.clone(), b.clone()];
    let (ok, out, err) = observe(
        &[
            "--last",
            "4",
            "--pod",
            "default/curl-pod",
            "--port",
            "80",
            "--protocol",
            "tcp",
            "--verdict",
            "FORWARDED",
        ],
        &socks,
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        lines[0],
        "Jul 30 06:30:32.256: default/curl-pod:3 (ID:5580) -> default/webpod-697b545f57-bpzn9:80 (ID:12497) to-endpoint FORWARDED (TCP Flags: ACK)"
    );
    assert!(
        lines[1].starts_with("Jul 30 06:30:32.257: EVENTS LOST: 7"),
        "{out}"
    );
    assert!(lines[2].contains(":5 (ID:5580)"), "{out}");
    assert!(lines[3].ends_with("(TCP Flags: ACK, PSH)"), "{out}");
    let req = seen_a.lock().unwrap().clone();
    assert_eq!(req.len(), 1, "{req:?}");
    for want in [
        "last=4",
        "pod=default/curl-pod",
        "port=80",
        "protocol=tcp",
        "verdict=FORWARDED",
    ] {
        assert!(req[0].contains(want), "{want} in {req:?}");
    }

    // -o json: one object per line, merged the same way.
    let (ok, out, err) = observe(&["--last", "10", "-o", "json"], &socks);
    assert!(ok, "{err}");
    let parsed: Vec<FlowLine> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 6);
    assert!(parsed.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    assert_eq!(parsed[3].lost_events.as_ref().unwrap().num_events_lost, 7);

    // Bad filters are refused before any agent is asked.
    let (ok, _, err) = observe(&["--protocol", "sctp"], &socks);
    assert!(!ok);
    assert!(err.contains("protocol"), "{err}");
    let (ok, _, err) = observe(&["-o", "yaml"], &socks);
    assert!(!ok);
    assert!(err.contains("yaml"), "{err}");
}

#[test]
fn follow_orders_nodes_and_reports_unreachable_agents() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    fake_agent(&a, vec![flow("k8s-ctr", now + 20 * MS, 2, &["ACK"])]);
    fake_agent(&b, vec![flow("k8s-w1", now + 10 * MS, 1, &["SYN"])]);
    // -f --last: the stored flows, then live ones, nothing twice.
    let (_, out, err) = observe(&["-f", "--last", "5"], &[a.clone(), b.clone()]);
    assert_eq!(out.lines().count(), 2, "{out}\n{err}");
    let missing = dir.path().join("missing.sock");
    let (ok, out, err) = observe(&["-f"], &[a, b, missing]);
    // Every stream ends (fake agents close): the buffered flows are printed
    // in time order, then the command fails naming the ends.
    assert!(!ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}\n{err}");
    assert!(lines[0].ends_with("(TCP Flags: SYN)"), "{out}");
    assert!(lines[1].ends_with("(TCP Flags: ACK)"), "{out}");
    assert!(err.contains("missing.sock"), "{err}");
}
