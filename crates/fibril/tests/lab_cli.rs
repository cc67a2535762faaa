//! Privileged CLI test (root): `fibril lab up/status/exec/down` through the
//! built binary, with a unique lab name.

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

    let up = fibril(&["lab", "up", "--topology", "seed-4w", "--name", &lab]);
    let out = text(&up);
    assert!(up.status.success(), "{out}");
    assert!(out.contains("How to explore"), "{out}");
    assert!(
        out.contains(&format!("fibril lab down --name {lab}")),
        "{out}"
    );

    // A second up is refused, non-zero, and says so.
    let again = fibril(&["lab", "up", "--topology", "seed-4w", "--name", &lab]);
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
    ] {
        let o = fibril(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("Usage"), "{args:?}");
    }
    let o = fibril(&["lab", "up", "--topology", "no-such-topology", "--name", "x"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no-such-topology"), "{}", text(&o));
}
