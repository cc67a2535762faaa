//! The Fibril CNI plugin (`fibril-cni`, the `fibril` binary invoked by that
//! name): CNI spec 1.1 `ADD`, `DEL`, `CHECK`, `STATUS`, `GC`, `VERSION`.
//!
//! The plugin asks the node's agent (HTTP/JSON on its unix socket, see
//! `fibril_agent::api`) for an address, creates the veth pair (host side
//! `lxc<hash of the container id>` in the node's netns, which the agent names
//! in its IPAM answer; pod side `CNI_IFNAME` created directly inside
//! `CNI_NETNS`), gives the pod its `/32` and a default route via the router IP
//! (on-link), then registers the endpoint with the agent (which attaches
//! `bpf_lxc` and installs the `/32` route). Any failure after the address was
//! allocated undoes everything (veth deleted, endpoint and address released).
//!
//! Network config keys: `cniVersion`, `name`, `type`, `agentSocket` (default
//! [`DEFAULT_AGENT_SOCKET`], overridden by the `FIBRIL_AGENT_SOCKET`
//! environment variable), `dns`, `prevResult`, `args.cni.labels`
//! (`[{key, value}]`, the pod's labels for its identity),
//! `cni.dev/valid-attachments` (GC).
//!
//! Error codes (spec): 1 incompatible version, 4 invalid/missing environment
//! variable (the message names it), 6 undecodable config, 7 invalid config,
//! 11 agent not ready (try again later), 50 STATUS: agent not available,
//! 51 STATUS: no free address. Plugin codes: 100 the interface already exists
//! in the pod, 101 IPAM failure (`range is full`), 102 netlink failure,
//! 103 CHECK mismatch, 104 agent error.
//!
//! `CNI_NETNS` may be a namespace under `/run/netns` or any other namespace
//! path (`/proc/PID/ns/net`), which is bind-mounted under `/run/netns` for
//! the duration of the call.

pub mod testing;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use fibril_agent::api::{self, Client, ClientError, EndpointRequest, GcRequest, IpamRequest};
use fibril_netlink::{NetNs, Route};
use ipnet::{IpNet, Ipv4Net};
use serde_json::{json, Value};

/// Agent socket used when the config names none.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/fibril/agent.sock";
/// Versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version answered when the config gives none (VERSION).
pub const CURRENT_VERSION: &str = "1.1.0";

/// A CNI error as the spec prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer details.
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    /// The spec's error JSON.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)
    }
}

impl std::error::Error for CniError {}

type CniResult<T> = Result<T, CniError>;

/// Entry point of the `fibril-cni` binary: process environment, stdin,
/// stdout; returns the exit code.
pub fn main_from_process() -> i32 {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut input = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut input);
    let mut out = std::io::stdout();
    run_cni(&env, &input, &mut out)
}

/// Runs one CNI invocation: `env` (the `CNI_*` variables), `stdin` (network
/// config JSON); the result or error JSON goes to `stdout`. Returns the exit
/// code (0 success, 1 error). Call it from a thread without a tokio runtime.
pub fn run_cni(env: &BTreeMap<String, String>, stdin: &[u8], stdout: &mut dyn Write) -> i32 {
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string());
    match dispatch(env, stdin) {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            1
        }
    }
}

fn env_var<'a>(env: &'a BTreeMap<String, String>, key: &str) -> CniResult<&'a str> {
    env.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(4, format!("required environment variable {key} is missing")))
}

/// The parsed network config.
#[derive(Debug, Clone)]
struct NetConf {
    version: String,
    raw: Value,
    socket: String,
}

fn parse_conf(env: &BTreeMap<String, String>, stdin: &[u8]) -> CniResult<NetConf> {
    let raw: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(6, "failed to decode network config").details(e.to_string()))?;
    if !raw.is_object() {
        return Err(CniError::new(7, "network config is not a JSON object"));
    }
    let version = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| CniError::new(7, "network config: cniVersion missing"))?
        .to_string();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::new(
            1,
            format!(
                "incompatible CNI version {version:?} (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    for key in ["name", "type"] {
        match raw.get(key).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => {}
            _ => return Err(CniError::new(7, format!("network config: {key} missing"))),
        }
    }
    if let Some(d) = raw.get("dns") {
        if !d.is_object() {
            return Err(CniError::new(7, "network config: dns must be an object"));
        }
    }
    let socket = match env.get("FIBRIL_AGENT_SOCKET").filter(|s| !s.is_empty()) {
        Some(s) => s.clone(),
        None => match raw.get("agentSocket") {
            None => DEFAULT_AGENT_SOCKET.to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(CniError::new(
                    7,
                    format!("network config: agentSocket {other} is not a path"),
                ))
            }
        },
    };
    Ok(NetConf {
        version,
        raw,
        socket,
    })
}

fn dispatch(env: &BTreeMap<String, String>, stdin: &[u8]) -> CniResult<Option<Value>> {
    let command = env_var(env, "CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": CURRENT_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = parse_conf(env, stdin)?;
    match command {
        "ADD" => {
            for k in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
                env_var(env, k)?;
            }
            cmd_add(env, &conf).map(Some)
        }
        "DEL" => {
            for k in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"] {
                env_var(env, k)?;
            }
            cmd_del(env, &conf).map(|()| None)
        }
        "CHECK" => {
            for k in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
                env_var(env, k)?;
            }
            cmd_check(env, &conf).map(|()| None)
        }
        "STATUS" => cmd_status(&conf).map(|()| None),
        "GC" => cmd_gc(&conf).map(|()| None),
        other => Err(CniError::new(
            4,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )),
    }
}

fn agent_error(what: &str, e: ClientError) -> CniError {
    if e.not_ready() {
        return CniError::new(11, format!("{what}: agent not ready: {e}"))
            .details("the fibril agent is not running or not ready; try again later");
    }
    match &e {
        ClientError::Api { error, .. } if error.kind == "range-full" => {
            CniError::new(101, format!("{what}: {}", error.message))
        }
        _ => CniError::new(104, format!("{what}: {e}")),
    }
}

/// Namespace name of a `/run/netns/NAME` path, `None` for other paths.
fn netns_name(path: &str) -> Option<String> {
    let p = Path::new(path);
    let name = p.file_name()?.to_str()?;
    let parent = std::fs::canonicalize(p.parent()?).ok()?;
    (parent == Path::new(fibril_netlink::NETNS_DIR)).then(|| name.to_string())
}

/// The pod's namespace as a named [`NetNs`]. A path outside `/run/netns`
/// (e.g. `/proc/PID/ns/net` from a runtime) is bind-mounted on a temporary
/// `/run/netns/fibril-cni-<hash>` for the duration of the call, as
/// `ip netns attach` does.
struct PodNetns {
    ns: NetNs,
    temp: Option<std::path::PathBuf>,
}

impl PodNetns {
    fn open(path: &str, container_id: &str) -> CniResult<Self> {
        let fail = |e: String| CniError::new(4, format!("CNI_NETNS {path}: {e}"));
        if let Some(name) = netns_name(path) {
            let ns = NetNs::open(&name).map_err(|e| fail(e.to_string()))?;
            return Ok(Self { ns, temp: None });
        }
        std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        let name = format!(
            "fibril-cni-{}",
            &api::host_ifname(&format!("{container_id}@{path}"))[3..]
        );
        let dir = Path::new(fibril_netlink::NETNS_DIR);
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("create {}: {e}", dir.display())))?;
        let target = dir.join(&name);
        std::fs::File::create(&target)
            .map_err(|e| fail(format!("create {}: {e}", target.display())))?;
        if let Err(e) = nix::mount::mount(
            Some(Path::new(path)),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = std::fs::remove_file(&target);
            return Err(fail(format!("bind-mount on {}: {e}", target.display())));
        }
        let guard = Self {
            ns: NetNs::open(&name).map_err(|e| fail(e.to_string()))?,
            temp: Some(target),
        };
        Ok(guard)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = nix::mount::umount2(&t, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&t);
        }
    }
}

fn cni_args(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.get("CNI_ARGS")
        .map(|a| {
            a.split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn labels_of(conf: &NetConf) -> BTreeMap<String, String> {
    conf.raw
        .pointer("/args/cni/labels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|l| {
                    Some((
                        l.get("key")?.as_str()?.to_string(),
                        l.get("value")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn nl_fail(what: String) -> impl Fn(fibril_netlink::NetlinkError) -> CniError {
    move |e| CniError::new(102, format!("{what}: {e}"))
}

fn cmd_add(env: &BTreeMap<String, String>, conf: &NetConf) -> CniResult<Value> {
    let cid = env_var(env, "CNI_CONTAINERID")?;
    let netns_path = env_var(env, "CNI_NETNS")?;
    let ifname = env_var(env, "CNI_IFNAME")?;
    let pod_netns = PodNetns::open(netns_path, cid)?;
    let pod_ns = &pod_netns.ns;
    let pod_nl = pod_ns
        .netlink()
        .map_err(nl_fail(format!("netlink in {netns_path}")))?;
    if pod_nl
        .link(ifname)
        .map_err(nl_fail(format!("look up {ifname} in {netns_path}")))?
        .is_some()
    {
        return Err(CniError::new(
            100,
            format!("interface {ifname} already exists in {netns_path}"),
        ));
    }

    let args = cni_args(env);
    let pod_namespace = args.get("K8S_POD_NAMESPACE").cloned().unwrap_or_default();
    let pod_name = args.get("K8S_POD_NAME").cloned().unwrap_or_default();
    let owner = if pod_name.is_empty() {
        cid.to_string()
    } else {
        format!(
            "{}/{pod_name}",
            if pod_namespace.is_empty() {
                "default"
            } else {
                &pod_namespace
            }
        )
    };
    let client = Client::new(&conf.socket);
    let ipam = client
        .allocate(&IpamRequest {
            container_id: cid.to_string(),
            owner,
            pool: None,
        })
        .map_err(|e| agent_error("unable to allocate IP via local agent", e))?;

    let host_if = api::host_ifname(cid);
    let attempt = (|| -> CniResult<Value> {
        let node_ns = NetNs::open(&ipam.node_netns)
            .map_err(nl_fail(format!("node netns {}", ipam.node_netns)))?;
        let node_nl = node_ns
            .netlink()
            .map_err(nl_fail(format!("netlink in {}", ipam.node_netns)))?;
        if node_nl.link(&host_if).ok().flatten().is_some() {
            // Left over from an interrupted ADD of the same container.
            node_nl
                .delete_link(&host_if)
                .map_err(nl_fail(format!("delete stale {host_if}")))?;
        }
        node_nl
            .add_veth(&host_if, ifname, Some(pod_ns), Some(ipam.mtu))
            .map_err(nl_fail(format!("create veth {host_if}/{ifname}")))?;
        let addr = IpNet::V4(Ipv4Net::from(ipam.ip));
        pod_nl
            .add_address(ifname, addr)
            .map_err(nl_fail(format!("add {addr} to {ifname}")))?;
        pod_nl
            .set_up(ifname)
            .map_err(nl_fail(format!("set {ifname} up")))?;
        let _ = pod_nl.set_up("lo");
        let default = Route::via(Ipv4Net::default(), ipam.gateway)
            .with_dev(ifname)
            .onlink();
        pod_nl
            .add_route(&default)
            .map_err(nl_fail(format!("route {default}")))?;
        node_nl
            .set_up(&host_if)
            .map_err(nl_fail(format!("set {host_if} up")))?;
        let host_link = node_nl
            .link(&host_if)
            .map_err(nl_fail(format!("look up {host_if}")))?
            .ok_or_else(|| CniError::new(102, format!("{host_if} vanished")))?;
        let pod_link = pod_nl
            .link(ifname)
            .map_err(nl_fail(format!("look up {ifname}")))?
            .ok_or_else(|| CniError::new(102, format!("{ifname} vanished")))?;
        let host_mac = api::format_mac(host_link.mac.unwrap_or_default());
        let pod_mac = api::format_mac(pod_link.mac.unwrap_or_default());
        client
            .put_endpoint(
                cid,
                &EndpointRequest {
                    ip: Some(ipam.ip),
                    host_ifname: host_if.clone(),
                    host_ifindex: host_link.index,
                    host_mac: host_mac.clone(),
                    pod_mac: pod_mac.clone(),
                    pod_ifname: ifname.to_string(),
                    netns_path: netns_path.to_string(),
                    pod_namespace: pod_namespace.clone(),
                    pod_name: pod_name.clone(),
                    labels: labels_of(conf),
                },
            )
            .map_err(|e| agent_error("unable to create endpoint", e))?;
        Ok(result_json(
            conf,
            &host_if,
            &host_mac,
            ifname,
            &pod_mac,
            netns_path,
            ipam.ip,
            ipam.gateway,
        ))
    })();
    if attempt.is_err() {
        // Undo: the agent's DELETE detaches, deletes the host veth (and with
        // it the pod side), the /32 route and the map entry, and releases the IP.
        let _ = client.delete_endpoint(cid);
        if let Ok(ns) = NetNs::open(&ipam.node_netns) {
            if let Ok(nl) = ns.netlink() {
                if nl.link(&host_if).ok().flatten().is_some() {
                    let _ = nl.delete_link(&host_if);
                }
            }
        }
    }
    attempt
}

#[allow(clippy::too_many_arguments)]
fn result_json(
    conf: &NetConf,
    host_if: &str,
    host_mac: &str,
    ifname: &str,
    pod_mac: &str,
    netns_path: &str,
    ip: Ipv4Addr,
    gw: Ipv4Addr,
) -> Value {
    let prev = conf.raw.get("prevResult");
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut routes: Vec<Value> = prev
        .and_then(|p| p.get("routes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    interfaces.push(json!({"name": host_if, "mac": host_mac}));
    interfaces.push(json!({"name": ifname, "mac": pod_mac, "sandbox": netns_path}));
    let pod_index = interfaces.len() - 1;
    let mut ipc = json!({
        "address": format!("{ip}/32"),
        "gateway": gw.to_string(),
        "interface": pod_index,
    });
    if conf.version.starts_with("0.") {
        ipc["version"] = json!("4");
    }
    ips.push(ipc);
    routes.push(json!({"dst": "0.0.0.0/0", "gw": gw.to_string()}));
    let mut out = json!({
        "cniVersion": conf.version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
    });
    if let Some(dns) = conf.raw.get("dns") {
        out["dns"] = dns.clone();
    } else if let Some(dns) = prev.and_then(|p| p.get("dns")) {
        out["dns"] = dns.clone();
    }
    out
}

fn cmd_del(env: &BTreeMap<String, String>, conf: &NetConf) -> CniResult<()> {
    let cid = env_var(env, "CNI_CONTAINERID")?;
    let client = Client::new(&conf.socket);
    client
        .delete_endpoint(cid)
        .map_err(|e| agent_error("unable to delete endpoint via local agent", e))?;
    Ok(())
}

fn cmd_check(env: &BTreeMap<String, String>, conf: &NetConf) -> CniResult<()> {
    let cid = env_var(env, "CNI_CONTAINERID")?;
    let netns_path = env_var(env, "CNI_NETNS")?;
    let ifname = env_var(env, "CNI_IFNAME")?;
    let prev = conf
        .raw
        .get("prevResult")
        .ok_or_else(|| CniError::new(7, "CHECK needs prevResult in the network config"))?;
    let want: Vec<IpNet> = prev
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("address")?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let pod_netns = PodNetns::open(netns_path, cid)?;
    let nl = pod_netns
        .ns
        .netlink()
        .map_err(nl_fail(format!("netlink in {netns_path}")))?;
    if nl
        .link(ifname)
        .map_err(nl_fail(format!("look up {ifname}")))?
        .is_none()
    {
        return Err(CniError::new(
            103,
            format!("interface {ifname} missing in {netns_path}"),
        ));
    }
    let have: Vec<IpNet> = nl
        .addresses()
        .map_err(nl_fail(format!("addresses in {netns_path}")))?
        .into_iter()
        .filter(|a| a.ifname == ifname)
        .map(|a| a.addr)
        .collect();
    for w in &want {
        if !have.contains(w) {
            return Err(CniError::new(
                103,
                format!("address {w} missing on {ifname} in {netns_path}"),
            ));
        }
    }
    let client = Client::new(&conf.socket);
    let eps = client
        .endpoints()
        .map_err(|e| agent_error("unable to list endpoints via local agent", e))?;
    if !eps.iter().any(|e| e.container_id == cid) {
        return Err(CniError::new(
            103,
            format!("container {cid} has no endpoint in the agent"),
        ));
    }
    Ok(())
}

fn cmd_status(conf: &NetConf) -> CniResult<()> {
    let client = Client::new(&conf.socket);
    if let Err(e) = client.healthz() {
        return Err(CniError::new(50, format!("plugin not available: {e}")));
    }
    match client.status() {
        Ok(s) if s.free == 0 => Err(CniError::new(
            51,
            format!("plugin not available: no free address ({})", s.ipam),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(CniError::new(50, format!("plugin not available: {e}"))),
    }
}

fn cmd_gc(conf: &NetConf) -> CniResult<()> {
    let valid: Vec<String> = conf
        .raw
        .get("cni.dev/valid-attachments")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.get("containerID")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let client = Client::new(&conf.socket);
    client
        .gc(&GcRequest { valid })
        .map_err(|e| agent_error("unable to garbage-collect via local agent", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        let code = run_cni(&env, stdin.as_bytes(), &mut out);
        (code, serde_json::from_slice(&out).unwrap_or(Value::Null))
    }

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"fibril","type":"fibril-cni","agentSocket":"/nonexistent/agent.sock"}"#;

    #[test]
    fn version() {
        let (c, v) = run(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(c, 0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(v["supportedVersions"].as_array().unwrap().len() >= 4);
    }

    #[test]
    fn missing_env_names_the_variable() {
        let (c, v) = run(&[], CONF);
        assert_eq!(c, 1);
        assert_eq!(v["code"], 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_COMMAND"));
        let (_, v) = run(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "x")], CONF);
        assert_eq!(v["code"], 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"));
    }

    #[test]
    fn bad_config() {
        let (_, v) = run(&[("CNI_COMMAND", "STATUS")], "{not json");
        assert_eq!(v["code"], 6);
        let (_, v) = run(&[("CNI_COMMAND", "STATUS")], r#"{"cniVersion":"1.1.0"}"#);
        assert_eq!(v["code"], 7);
        let (_, v) = run(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"9.9.9","name":"a","type":"b"}"#,
        );
        assert_eq!(v["code"], 1);
    }

    #[test]
    fn agent_down() {
        let (_, v) = run(&[("CNI_COMMAND", "STATUS")], CONF);
        assert_eq!(v["code"], 50);
        let (c, v) = run(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/opt/cni/bin"),
            ],
            CONF,
        );
        assert_eq!(c, 1);
        assert_eq!(v["code"], 11);
    }

    #[test]
    fn args_parse() {
        let mut env = BTreeMap::new();
        env.insert(
            "CNI_ARGS".to_string(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".to_string(),
        );
        let a = cni_args(&env);
        assert_eq!(a["K8S_POD_NAME"], "web");
    }
}
