//! Privileged CLI tests (root): `fibril lab up/status/exec/down` (fabric only),
//! and the lab cluster with the kubectl-like commands, through the built
//! binary, with unique lab names.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::process::{Command, Output};

fn fibril(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fibril"))
        .args(args)
        .env_remove("FIBRIL_LAB")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes the lab even if the test fails half-way.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fibril(&["lab", "down", "--name", &self.0]);
    }
}

#[test]
fn lab_up_status_exec_down() {
    let lab = format!("cli{}", std::process::id());
    let _cleanup = Cleanup(lab.clone());

    let up = fibril(&[
        "lab",
        "up",
        "--topology",
        "seed-4w",
        "--name",
        &lab,
        "--fabric-only",
    ]);
    let out = text(&up);
    assert!(up.status.success(), "{out}");
    assert!(out.contains("How to explore"), "{out}");
    assert!(
        out.contains(&format!("fibril lab down --name {lab}")),
        "{out}"
    );

    // A second up is refused, non-zero, and says so.
    let again = fibril(&[
        "lab",
        "up",
        "--topology",
        "seed-4w",
        "--name",
        &lab,
        "--fabric-only",
    ]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));

    let st = fibril(&["lab", "status", "--name", &lab]);
    let out = text(&st);
    assert!(st.status.success(), "{out}");
    for want in [
        "seed-4w",
        "running",
        &format!("fl-{lab}-k8s-w0"),
        "eth1 192.168.20.100/24",
        "loop1 10.10.1.200/24",
        "br-net20",
    ] {
        assert!(out.contains(want), "status lacks {want:?}:\n{out}");
    }

    let js = fibril(&["lab", "status", "--name", &lab, "-o", "json"]);
    assert!(js.status.success(), "{}", text(&js));
    let v: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(v[0]["lab"], lab.as_str());
    assert_eq!(v[0]["healthy"], true);
    let hosts = v[0]["hosts"].as_array().unwrap();
    assert!(hosts
        .iter()
        .any(|h| h["host"] == "router" && h["addresses"].to_string().contains("10.10.2.200/24")));

    let ping = fibril(&[
        "lab",
        "exec",
        "k8s-ctr",
        "--name",
        &lab,
        "--",
        "ping",
        "-c1",
        "-W2",
        "192.168.20.100",
    ]);
    assert!(ping.status.success(), "{}", text(&ping));

    // The command's exit code is passed through.
    let code = fibril(&[
        "lab", "exec", "router", "--name", &lab, "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(code.status.code(), Some(7));

    let unknown = fibril(&["lab", "exec", "nope", "--name", &lab, "--", "true"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("nope"), "{}", text(&unknown));

    let down = fibril(&["lab", "down", "--name", &lab]);
    assert!(down.status.success(), "{}", text(&down));
    let st = fibril(&["lab", "status", "--name", &lab]);
    assert!(!st.status.success());
    assert!(text(&st).contains("not running"), "{}", text(&st));
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("fl-{lab}-")));
}

#[test]
fn help_on_every_lab_command() {
    for args in [
        &["lab", "--help"][..],
        &["lab", "up", "--help"],
        &["lab", "down", "--help"],
        &["lab", "status", "--help"],
        &["lab", "exec", "--help"],
        &["lab", "upgrade", "--help"],
        &["apply", "--help"],
        &["get", "--help"],
        &["describe", "--help"],
        &["delete", "--help"],
        &["scale", "--help"],
        &["rollout", "restart", "--help"],
    ] {
        let o = fibril(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("Usage"), "{args:?}");
    }
    let o = fibril(&["lab", "up", "--topology", "no-such-topology", "--name", "x"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no-such-topology"), "{}", text(&o));
}

fn ok(args: &[&str]) -> String {
    let o = fibril(args);
    let out = text(&o);
    assert!(o.status.success(), "fibril {args:?} failed:\n{out}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

fn cluster_pids(lab: &str) -> Vec<(String, i32)> {
    let text = std::fs::read_to_string(format!("/run/fibril/labs/{lab}/cluster.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["component"].as_str().unwrap().to_string(),
                p["pid"].as_i64().unwrap() as i32,
            )
        })
        .collect()
}

/// Polls `f` for up to `secs` seconds.
fn eventually(secs: u64, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => panic!("timed out: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

#[test]
fn lab_cluster_up_get_apply_upgrade_down() {
    let lab = format!("cl{}", std::process::id());
    let _cleanup = Cleanup(lab.clone());
    let l = ["--lab", lab.as_str()];

    let up = fibril(&[
        "lab",
        "up",
        "--topology",
        "seed-3w",
        "--name",
        &lab,
        "--set",
        "ipam.mode=kubernetes",
    ]);
    let out = text(&up);
    assert!(up.status.success(), "{out}");
    for want in [
        "✓ etcd",
        "✓ operator",
        "✓ agent       k8s-ctr",
        "✓ agent       k8s-w1",
    ] {
        assert!(out.contains(want), "lab up lacks {want:?}:\n{out}");
    }
    let pids = cluster_pids(&lab);
    assert!(pids.iter().any(|(c, _)| c == "etcd"), "{pids:?}");
    for (c, p) in &pids {
        assert!(pid_alive(*p), "{c} (pid {p}) is not running");
    }
    let kubelet = pids.iter().any(|(c, _)| c.starts_with("kubelet-"));

    // Nodes: Ready with podCIDRs from the operator (kubernetes IPAM) when the
    // kubelet registers them.
    if kubelet {
        let wide = ok(&["get", "nodes", "-o", "wide", l[0], l[1]]);
        assert!(wide.starts_with("NAME"), "{wide}");
        assert!(wide.contains("INTERNAL-IP"), "{wide}");
        for (node, ip) in [("k8s-ctr", "192.168.10.100"), ("k8s-w1", "192.168.10.101")] {
            let line = wide
                .lines()
                .find(|x| x.starts_with(node))
                .unwrap_or_default();
            assert!(
                line.contains("Ready") && line.contains(ip),
                "{node}: {wide}"
            );
        }
        eventually(30, || {
            let cidrs = ok(&[
                "get",
                "nodes",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.spec.podCIDR}{"\n"}{end}"#,
                l[0],
                l[1],
            ]);
            if cidrs.matches("10.244.").count() == 2 {
                Ok(())
            } else {
                Err(cidrs)
            }
        });
    }
    eventually(30, || {
        let cn = ok(&["get", "ciliumnodes", l[0], l[1]]);
        if cn.contains("CILIUMINTERNALIP")
            && cn.contains("k8s-ctr")
            && cn.contains("k8s-w1")
            && cn.contains("192.168.10.101")
        {
            Ok(())
        } else {
            Err(cn)
        }
    });

    let view = ok(&["config", "view", l[0], l[1]]);
    assert!(
        view.lines()
            .any(|x| x.starts_with("ipam ") && x.ends_with("kubernetes")),
        "{view}"
    );

    // apply: created, unchanged, configured; get configmaps.
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    let cmp = cm.to_str().unwrap();
    assert!(ok(&["apply", "-f", cmp, l[0], l[1]]).contains("configmap/demo created"));
    assert!(ok(&["apply", "-f", cmp, l[0], l[1]]).contains("configmap/demo unchanged"));
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  a: \"2\"\n  b: x\n",
    )
    .unwrap();
    assert!(ok(&["apply", "-f", cmp, l[0], l[1]]).contains("configmap/demo configured"));
    let cms = ok(&["get", "configmaps", l[0], l[1]]);
    let line = cms
        .lines()
        .find(|x| x.starts_with("demo"))
        .unwrap_or_default();
    assert!(line.split_whitespace().nth(1) == Some("2"), "{cms}");
    let y = ok(&["get", "cm", "demo", "-o", "yaml", l[0], l[1]]);
    assert!(y.contains("b: x"), "{y}");
    assert!(ok(&["delete", "configmap", "demo", l[0], l[1]]).contains("configmap \"demo\" deleted"));
    let gone = fibril(&["get", "cm", "demo", l[0], l[1]]);
    assert!(
        !gone.status.success() && text(&gone).contains("NotFound"),
        "{}",
        text(&gone)
    );

    // Pods end-to-end, when the controller and kubelet are in this build.
    if kubelet && pids.iter().any(|(c, _)| c == "controller") {
        let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lab/manifests");
        let a = ok(&[
            "apply",
            "-f",
            &format!("{manifests}/webpod.yaml"),
            "-f",
            &format!("{manifests}/curl-pod.yaml"),
            l[0],
            l[1],
        ]);
        assert!(a.contains("deployment.apps/webpod created"), "{a}");
        assert!(a.contains("pod/curl-pod created"), "{a}");
        eventually(90, || {
            let p = ok(&["get", "pods", "-o", "wide", l[0], l[1]]);
            let running = p.lines().filter(|x| x.contains("Running")).count();
            if running >= 3 {
                Ok(())
            } else {
                Err(p)
            }
        });
        eprintln!("{}", ok(&["get", "pods", "-o", "wide", l[0], l[1]]));
        let d = ok(&["describe", "pod", "curl-pod", l[0], l[1]]);
        assert!(d.contains("Node:") && d.contains("k8s-ctr"), "{d}");
        assert!(d.contains("Events:") && d.contains("Started"), "{d}");

        // curl-pod reaches a webpod replica on the other node.
        let w1_ip = ok(&[
            "get",
            "pods",
            "-l",
            "app=webpod",
            "--field-selector",
            "spec.nodeName=k8s-w1",
            "-o",
            "jsonpath={.items[0].status.podIP}",
            l[0],
            l[1],
        ]);
        assert!(w1_ip.starts_with("10.244."), "{w1_ip:?}");
        let hello = ok(&[
            "exec",
            "curl-pod",
            l[0],
            l[1],
            "--",
            "curl",
            "-s",
            "--max-time",
            "5",
            &w1_ip,
        ]);
        assert!(hello.contains("Hostname: webpod-"), "{hello}");

        // scale, rollout restart, delete (the kubelet removes the pod).
        assert!(ok(&[
            "scale",
            "deployment",
            "webpod",
            "--replicas",
            "3",
            l[0],
            l[1]
        ])
        .contains("deployment.apps/webpod scaled"));
        eventually(60, || {
            let p = ok(&["get", "pods", "-l", "app=webpod", l[0], l[1]]);
            let running = p.lines().filter(|x| x.contains("Running")).count();
            if running == 3 {
                Ok(())
            } else {
                Err(p)
            }
        });
        assert!(ok(&["rollout", "restart", "deployment/webpod", l[0], l[1]])
            .contains("deployment.apps/webpod restarted"));
        let ann = ok(&[
            "get",
            "deploy",
            "webpod",
            "-o",
            "jsonpath={.spec.template.metadata.annotations}",
            l[0],
            l[1],
        ]);
        assert!(ann.contains("kubectl.kubernetes.io/restartedAt"), "{ann}");
        let del = ok(&["delete", "pod", "curl-pod", "--timeout", "30", l[0], l[1]]);
        assert!(del.contains("pod \"curl-pod\" deleted"), "{del}");
        let gone = fibril(&["get", "pod", "curl-pod", l[0], l[1]]);
        assert!(!gone.status.success(), "{}", text(&gone));
    }

    // upgrade: new config stored, every agent restarted.
    let before = cluster_pids(&lab);
    let up2 = ok(&[
        "lab",
        "upgrade",
        "--name",
        &lab,
        "--set",
        "bpf.masquerade=true",
    ]);
    assert!(up2.contains("restarted"), "{up2}");
    let after = cluster_pids(&lab);
    for (c, p) in &before {
        if c.starts_with("agent-") || c == "operator" {
            let np = after.iter().find(|(c2, _)| c2 == c).unwrap().1;
            assert_ne!(*p, np, "{c} was not restarted");
            assert!(!pid_alive(*p), "old {c} (pid {p}) still runs");
            assert!(pid_alive(np), "new {c} (pid {np}) is not running");
        }
    }
    let view = ok(&["config", "view", l[0], l[1]]);
    assert!(
        view.lines()
            .any(|x| x.starts_with("enable-bpf-masquerade") && x.ends_with("true")),
        "{view}"
    );
    let bad = fibril(&["lab", "upgrade", "--name", &lab, "--set", "ipam.mode=bogus"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("ipam.mode"), "{}", text(&bad));

    // down: no namespaces, pins, processes.
    let all = cluster_pids(&lab);
    ok(&["lab", "down", "--name", &lab]);
    for (c, p) in &all {
        assert!(!pid_alive(*p), "{c} (pid {p}) survived lab down");
    }
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("fl-{lab}-")));
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/fibril/{lab}")).exists());
    assert!(!std::path::Path::new(&format!("/run/fibril/labs/{lab}")).exists());
}

/// A lab whose `up` died half-way (state not complete) is cleaned by the next
/// `up`: the old cluster processes are stopped, the new cluster comes up.
#[test]
fn lab_up_after_a_crash_cleans_the_old_cluster() {
    let lab = format!("cr{}", std::process::id());
    let _cleanup = Cleanup(lab.clone());
    ok(&["lab", "up", "--name", &lab, "--topology", "seed-3w"]);
    let old = cluster_pids(&lab);
    assert!(!old.is_empty());

    // What a crash during `up` leaves: processes running, state incomplete.
    let state = format!("/run/fibril/labs/{lab}/state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    v["complete"] = serde_json::Value::Bool(false);
    std::fs::write(&state, serde_json::to_string(&v).unwrap()).unwrap();

    let again = ok(&["lab", "up", "--name", &lab, "--topology", "seed-3w"]);
    assert!(
        again.contains("cleaning up an incomplete earlier lab"),
        "{again}"
    );
    for (c, p) in &old {
        assert!(!pid_alive(*p), "old {c} (pid {p}) survived");
    }
    let new = cluster_pids(&lab);
    for (c, p) in &new {
        assert!(pid_alive(*p), "new {c} (pid {p}) is not running");
    }
    let nodes = ok(&["get", "nodes", "--lab", &lab]);
    assert_eq!(nodes.matches(" Ready ").count(), 2, "{nodes}");
    ok(&["lab", "down", "--name", &lab]);
    for (c, p) in &new {
        assert!(!pid_alive(*p), "{c} (pid {p}) survived lab down");
    }
}
