//! Test support: the plugin called in-process the way a container runtime
//! calls it (`CNI_*` environment, network config on stdin), for the agent's
//! and the CLI's privileged tests. Panics on bad answers (test use only).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{json, Value};

/// The answer of one plugin call: exit code and the JSON it printed
/// (`Null` when it printed none).
#[derive(Debug, Clone)]
pub struct CniCall {
    pub code: i32,
    pub out: Value,
}

impl CniCall {
    /// The pod's IPv4 address of a successful `ADD`; panics otherwise.
    pub fn ip(&self) -> Ipv4Addr {
        assert_eq!(self.code, 0, "CNI ADD failed: {}", self.out);
        let a = self.out["ips"][0]["address"].as_str().unwrap_or_default();
        a.trim_end_matches("/32")
            .parse()
            .unwrap_or_else(|e| panic!("CNI ADD address {a:?}: {e} in {}", self.out))
    }
}

/// A minimal network config for the agent at `socket`.
pub fn conf(socket: &Path) -> Value {
    json!({"cniVersion": "1.1.0", "name": "fibril", "type": "fibril-cni",
        "agentSocket": socket})
}

/// Runs `command` (`ADD`, `DEL`, `CHECK`, ...) for pod `default/<pod>` with
/// container id `cid`, `CNI_NETNS=netns` (a path) and `eth0`.
pub fn call(command: &str, conf: &Value, cid: &str, netns: &str, pod: &str) -> CniCall {
    let mut env = BTreeMap::new();
    for (k, v) in [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    env.insert(
        "CNI_ARGS".into(),
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
    );
    let mut out = Vec::new();
    let code = crate::run_cni(&env, conf.to_string().as_bytes(), &mut out);
    let out = serde_json::from_slice(&out).unwrap_or(Value::Null);
    CniCall { code, out }
}

/// `ADD` of pod `default/<pod>` in the named namespace (under `/run/netns`)
/// through the agent at `socket`; the pod's address (panics on failure).
pub fn add(socket: &Path, cid: &str, netns: &str, pod: &str) -> Ipv4Addr {
    let netns = format!("/run/netns/{netns}");
    let r = call("ADD", &conf(socket), cid, &netns, pod);
    assert_eq!(r.code, 0, "CNI ADD {pod}: {}", r.out);
    r.ip()
}
