//! Scenario S6 (../shared/scenarios/README.md): flows from `fibril observe`
//! for a curl through the webpod Service: translation points, the TCP flag
//! sequence to the endpoint, `to-network` across nodes in native routing,
//! `to-overlay` in tunnel mode, a DROPPED flow with its reason, and DNS
//! queries translated to a DNS pod and back. Root only.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod e2e;

use std::time::Duration;

use e2e::{eventually, Lab};

const WEBPOD: &str = include_str!("../../../lab/manifests/webpod.yaml");
const CURL_POD: &str = include_str!("../../../lab/manifests/curl-pod.yaml");
const EMPTY_SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing-matches}
  ports: [{port: 80, targetPort: 80}]
"#;

/// curl from curl-pod with a fixed source port; the answering pod's name.
fn curl_from(lab: &Lab, port: u16, url: &str) -> Option<String> {
    let o = lab.exec_pod(
        "curl-pod",
        &[
            "curl",
            "-s",
            "--max-time",
            "2",
            "--local-port",
            &port.to_string(),
            url,
        ],
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Hostname: "))
        .map(|h| h.trim().to_string())
}

/// `fibril observe` lines of curl-pod's flows from/to `port`.
fn flows_of(lab: &Lab, port: u16) -> Vec<String> {
    let out = lab.ok(&[
        "observe",
        "--pod",
        "curl-pod",
        "--protocol",
        "tcp",
        "--last",
        "1000",
    ]);
    out.lines()
        .filter(|l| l.contains(&format!("curl-pod:{port} ")))
        .map(str::to_string)
        .collect()
}

/// Whether `lines` hold `wants` (substrings) in this order.
fn in_order(lines: &[String], wants: &[&str]) -> bool {
    let mut it = lines.iter();
    wants.iter().all(|w| it.any(|l| l.contains(w)))
}

#[test]
fn s6_flows() {
    let lab = Lab::up(
        "s6",
        "seed-3w",
        &[
            "routingMode=native",
            "autoDirectNodeRoutes=true",
            "ipv4NativeRoutingCIDR=10.0.0.0/8",
        ],
    );
    lab.apply(WEBPOD);
    lab.apply(CURL_POD);
    lab.apply(EMPTY_SVC);
    lab.wait_running(
        &["webpod-", "curl-pod", "coredns-"],
        5,
        Duration::from_secs(90),
    );
    let nodes: Vec<(String, String)> = lab
        .pods("webpod-")
        .into_iter()
        .map(|p| (p.0, p.1))
        .collect();
    let node_of = |pod: &str| nodes.iter().find(|n| n.0 == pod).map(|n| n.1.clone());

    // One connection to a local replica and one to the remote replica.
    let (mut local, mut remote) = (None, None);
    for port in 40100..40140 {
        if local.is_some() && remote.is_some() {
            break;
        }
        let Some(host) = curl_from(&lab, port, "http://webpod") else {
            continue;
        };
        match node_of(&host).as_deref() {
            Some("k8s-ctr") if local.is_none() => local = Some((port, host)),
            Some("k8s-w1") if remote.is_none() => remote = Some((port, host)),
            _ => {}
        }
    }
    let (lport, lhost) = local.expect("a local replica answered");
    let (rport, _) = remote.expect("the remote replica answered");

    let all = lab.ok(&["observe", "--pod", "curl-pod", "--last", "1000"]);
    assert!(
        all.lines()
            .any(|l| l.contains("default/webpod:80") && l.contains("pre-xlate-fwd TRACED")),
        "{all}"
    );
    assert!(
        all.lines().any(|l| l.contains("post-xlate-fwd TRANSLATED")),
        "{all}"
    );
    let lines = flows_of(&lab, lport);
    let seq = [
        "to-endpoint FORWARDED (TCP Flags: SYN)",
        "to-endpoint FORWARDED (TCP Flags: SYN, ACK)",
        "to-endpoint FORWARDED (TCP Flags: ACK)",
        "to-endpoint FORWARDED (TCP Flags: ACK, PSH)",
        "to-endpoint FORWARDED (TCP Flags: ACK, FIN)",
    ];
    assert!(
        in_order(&lines, &seq),
        "flag sequence:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().all(|l| l.contains(&lhost)),
        "{}",
        lines.join("\n")
    );
    let lines = flows_of(&lab, rport);
    assert!(
        in_order(
            &lines,
            &[
                "to-network FORWARDED (TCP Flags: SYN)",
                "to-endpoint FORWARDED (TCP Flags: SYN)"
            ]
        ),
        "cross-node native:\n{}",
        lines.join("\n")
    );

    // A drop names its reason.
    curl_from(&lab, 40150, "http://empty");
    let drops = lab.ok(&["observe", "--verdict", "DROPPED", "--last", "50"]);
    assert!(
        drops
            .lines()
            .any(|l| l.contains("default/curl-pod") && l.contains("DROPPED (")),
        "{drops}"
    );

    // DNS: translated to a DNS pod and back.
    lab.exec_pod(
        "curl-pod",
        &["dig", "+short", "webpod.default.svc.cluster.local"],
    );
    let dns = lab.ok(&[
        "observe",
        "--port",
        "53",
        "--protocol",
        "UDP",
        "--last",
        "200",
    ]);
    for want in [
        "pre-xlate-fwd TRACED",
        "post-xlate-fwd TRANSLATED",
        "pre-xlate-rev TRACED",
        "post-xlate-rev TRANSLATED",
    ] {
        assert!(dns.contains(want), "{want}:\n{dns}");
    }
    assert!(dns.contains("kube-system/coredns-"), "{dns}");

    // Tunnel mode: to-overlay.
    lab.ok(&[
        "lab",
        "upgrade",
        "--name",
        &lab.name,
        "--set",
        "routingMode=tunnel",
        "--set",
        "autoDirectNodeRoutes=false",
    ]);
    let overlay = eventually(Duration::from_secs(30), || {
        for port in 40200..40210 {
            curl_from(&lab, port, "http://webpod");
        }
        let out = lab.ok(&["observe", "--pod", "curl-pod", "--last", "500"]);
        out.lines()
            .find(|l| l.contains("to-overlay FORWARDED (TCP Flags: SYN)"))
            .map(str::to_string)
    });
    assert!(overlay.is_some(), "to-overlay in tunnel mode");
}
