//! The binary invoked as `fibril-cni` speaks the CNI protocol.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn cni(command: &str, stdin: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("fibril-cni");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fibril"), &link).unwrap();
    let mut child = Command::new(&link)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn version_lists_supported_versions() {
    let (code, out) = cni(
        "VERSION",
        r#"{"cniVersion":"1.0.0","name":"n","type":"fibril-cni"}"#,
    );
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "1.1.0"));
}

#[test]
fn add_with_invalid_config_is_a_cni_error() {
    let (code, out) = cni("ADD", "{}");
    assert_ne!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 7, "{out}");
}
