//! `fibril config view` as a user runs it: flat output, --set, errors naming the key.

use std::process::Command;

fn fibril(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fibril"))
        .args(args)
        .output()
        .expect("run fibril")
}

#[test]
fn config_view_prints_flat_form_with_overrides() {
    let out = fibril(&[
        "config",
        "view",
        "--set",
        "ipam.mode=cluster-pool",
        "--set",
        "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let ipam = text.lines().find(|l| l.starts_with("ipam ")).unwrap();
    assert_eq!(
        ipam.split_whitespace().collect::<Vec<_>>(),
        ["ipam", "cluster-pool"]
    );
    assert!(text
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["cluster-pool-ipv4-cidr", "172.20.0.0/16"]));
}

#[test]
fn config_view_rejects_bad_values_naming_the_key() {
    let out = fibril(&[
        "config",
        "view",
        "--set",
        "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}",
        "--set",
        "ipam.operator.clusterPoolIPv4MaskSize=8",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ipam.operator.clusterPoolIPv4MaskSize"),
        "{err}"
    );

    let out = fibril(&["config", "view", "--set", "no.such.key=1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no.such.key"));
}

#[test]
fn store_backed_commands_say_what_they_need() {
    let out = Command::new(env!("CARGO_BIN_EXE_fibril"))
        .arg("operator")
        .env_remove("FIBRIL_ETCD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--etcd"));
}
