//! The agent's endpoint API (HTTP/JSON on a unix socket): request and
//! response bodies shared by the agent, the CNI plugin and the debug CLI, the
//! host-side interface naming rule, and a small blocking client.
//!
//! Routes:
//!
//! | method | path | body -> answer |
//! |---|---|---|
//! | POST | `/v1/ipam` | [`IpamRequest`] -> [`IpamResponse`] |
//! | PUT | `/v1/endpoints/{containerID}` | [`EndpointRequest`] -> [`EndpointResponse`] |
//! | DELETE | `/v1/endpoints/{containerID}` | -> [`DeleteResponse`] (idempotent) |
//! | GET | `/v1/endpoints` | -> `Vec<`[`EndpointRecord`]`>` |
//! | POST | `/v1/gc` | [`GcRequest`] -> [`GcResponse`] |
//! | GET | `/v1/healthz` | 200 when ready, 503 otherwise |
//! | GET | `/v1/status` | -> [`StatusResponse`] |
//! | GET | `/v1/endpoint` | -> `Vec<`[`EndpointListEntry`]`>` (`endpoint list`) |
//! | GET | `/v1/services` | -> `Vec<`[`ServiceEntry`]`>` (frontends with their owner) |
//! | GET | `/v1/ip` | -> `Vec<`[`IpEntry`]`>` (ipcache + local endpoints, `ip list`) |
//! | GET | `/v1/identities` | -> `Vec<`[`IdentityEntry`]`>` (`identity list`) |
//! | GET | `/v1/nodes` | -> `Vec<`[`NodeEntry`]`>` (`node list`) |
//! | GET | `/v1/lrp` | -> `Vec<`[`crate::services::LrpStatus`]`>` (`lrp list`) |
//! | GET | `/v1/config` | -> the agent's config, flat form (text) |
//! | GET | `/v1/flows?last=N&follow=1&...` | JSON lines of [`crate::flows::FlowLine`] (filters: [`crate::flows::FlowQuery`]) |
//! | GET | `/metrics` | Prometheus text ([`crate::metrics`]) |
//!
//! Errors are [`ApiError`] bodies; `kind` is `range-full` when the node's
//! pod CIDRs are exhausted (its `message` then contains `range is full`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Host-side veth name of a container: `lxc` + 12 hex digits of the FNV-1a
/// hash of the container id (15 characters, the kernel's limit). The agent
/// and the plugin both derive it, so DEL works from the container id alone.
pub fn host_ifname(container_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("lxc{:012x}", h & 0xffff_ffff_ffff)
}

/// `POST /v1/ipam`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpamRequest {
    /// Container id (the allocation is keyed by it: a retried ADD gets the same IP).
    pub container_id: String,
    /// `namespace/pod`, or the container id when the runtime gave no pod.
    pub owner: String,
    /// Multi-pool: the pool; default: from the Pod's / Namespace's
    /// `ipam.cilium.io/ip-pool` annotation in the store, else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Answer to [`IpamRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpamResponse {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The pod's gateway: the node's router IP.
    pub gateway: Ipv4Addr,
    /// Pod MTU.
    pub mtu: u32,
    /// The node CIDR the address came from.
    pub pod_cidr: String,
    /// Name of the node's network namespace (`/run/netns/<name>`), where the
    /// host-side veth goes.
    pub node_netns: String,
}

/// `PUT /v1/endpoints/{containerID}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRequest {
    /// The pod IP (from [`IpamResponse`]).
    pub ip: Option<Ipv4Addr>,
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side veth ifindex.
    pub host_ifindex: u32,
    /// Host-side veth MAC (`aa:bb:..`).
    pub host_mac: String,
    /// Pod `eth0` MAC.
    pub pod_mac: String,
    /// Interface name inside the pod.
    pub pod_ifname: String,
    /// `CNI_NETNS`.
    pub netns_path: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod labels (security labels for the identity).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Answer to [`EndpointRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointResponse {
    /// Endpoint id (node-local).
    pub id: u16,
    /// Security identity.
    pub identity: u32,
}

/// What the agent knows about one endpoint (persisted in its state dir).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    /// Container id.
    pub container_id: String,
    /// Endpoint id.
    pub id: u16,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Security identity.
    pub identity: u32,
    /// The request that created it.
    pub spec: EndpointRequest,
    /// Came back from the state dir after an agent restart.
    #[serde(default)]
    pub restored: bool,
}

/// Answer to `DELETE /v1/endpoints/{containerID}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeleteResponse {
    /// Whether an endpoint or allocation existed.
    pub existed: bool,
    /// Address released, if any.
    pub released: Option<Ipv4Addr>,
}

/// `POST /v1/gc`: container ids still in use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GcRequest {
    /// Container ids to keep.
    pub valid: Vec<String>,
}

/// Answer to [`GcRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GcResponse {
    /// Container ids whose endpoint/allocation was removed.
    pub removed: Vec<String>,
}

/// `GET /v1/status`: the data of `fibril dbg status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusResponse {
    /// Node name.
    pub node: String,
    /// `IPv4: 2/6 allocated from 172.20.42.0/29`.
    pub ipam: String,
    /// `172.20.42.1 (router)`, `172.20.42.5 (default/web [restored])`, ...
    pub allocations: Vec<String>,
    /// Free addresses left.
    pub free: u32,
    /// `Network: Tunnel [vxlan]` or `Network: Native   Host: BPF`.
    pub routing: String,
    /// `BPF   [eth1]   10.244.0.0/16 [IPv4: Enabled, IPv6: Disabled]` or `Disabled`.
    pub masquerading: String,
    /// `True   [eth1 192.168.10.100 (Direct Routing)]` or `False`.
    pub kube_proxy_replacement: String,
    /// Router IP.
    pub router_ip: Option<Ipv4Addr>,
    /// Health IP.
    pub health_ip: Option<Ipv4Addr>,
    /// Node IP.
    pub node_ip: Option<Ipv4Addr>,
    /// Number of endpoints.
    pub endpoints: usize,
    /// Service frontends programmed (kube-proxy replacement).
    #[serde(default)]
    pub services: usize,
    /// LoadBalancer IPs announced on L2 by this node.
    #[serde(default)]
    pub announced: Vec<Ipv4Addr>,
    /// Sync/GC counters.
    #[serde(default)]
    pub stats: crate::metrics::AgentStats,
    /// Map fill levels.
    #[serde(default)]
    pub maps: Vec<crate::metrics::MapFill>,
    /// Datapath summary (programs, conntrack, drops), as text.
    #[serde(default)]
    pub datapath: String,
    /// Routing mode (`native` / `tunnel`).
    #[serde(default)]
    pub routing_mode: String,
    /// Cluster store reachability: `Ok` or `Disconnected: <error>`.
    #[serde(default)]
    pub store: String,
}

/// One line of `endpoint list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointListEntry {
    /// Endpoint id.
    pub id: u32,
    /// Security identity.
    pub identity: u32,
    /// `k8s:key=value` / `reserved:health` labels.
    pub labels: Vec<String>,
    /// IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// `ready`.
    pub status: String,
    /// `ns/pod` (empty for reserved endpoints).
    pub pod: String,
    /// Policy enforcement (ingress, egress): `Disabled` / `Enabled`.
    #[serde(default)]
    pub policy: (String, String),
}

/// A programmed frontend (`/v1/services`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Service ID (rev-NAT index).
    pub id: u16,
    /// `10.96.0.10:53/UDP`.
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, `LocalRedirect`.
    pub service_type: String,
    /// `ns/name` of the Service (or of the LRP).
    pub owner: String,
    /// `addr:port/PROTO` of the backends (`local` marked).
    pub backends: Vec<String>,
}

/// One `ip list` row.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpEntry {
    /// Prefix (`10.244.0.5/32`).
    pub prefix: String,
    /// Numeric identity.
    pub identity: u32,
    /// Identity labels (`reserved:host`, `k8s:app=web`, ...).
    pub labels: Vec<String>,
    /// `custom-resource`, `local`, `generated`.
    pub source: String,
}

/// One `identity list` row.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityEntry {
    /// Identity.
    pub id: u32,
    /// Labels.
    pub labels: Vec<String>,
}

/// One `node list` row.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeEntry {
    /// Node name.
    pub name: String,
    /// Internal IP.
    pub ipv4: Option<Ipv4Addr>,
    /// Pod CIDRs.
    pub cidrs: Vec<String>,
    /// `local` for this node, else `custom-resource`.
    pub source: String,
}

/// Error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// `range-full`, `not-ready`, `bad-request`, `not-found`, `internal`.
    pub kind: String,
    /// Human-readable reason (names the object at fault).
    pub message: String,
}

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket is missing or refuses connections: the agent is not running.
    #[error("agent not reachable at {path}: {source}")]
    Unreachable {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// I/O error after connecting.
    #[error("agent at {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("{}", .error.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// Body.
        error: ApiError,
    },
    /// The answer could not be parsed.
    #[error("agent at {path}: bad response: {reason}")]
    BadResponse {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// True when the agent is not running or not ready (CNI code 11).
    pub fn not_ready(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { error, status } => error.kind == "not-ready" || *status == 503,
            _ => false,
        }
    }
}

/// Blocking HTTP/1.1 client for the agent's unix socket (the CNI plugin is a
/// short-lived synchronous process; no async runtime needed).
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the socket at `path` (30 s timeout per request).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request; returns (status, body).
    pub fn raw(
        &self,
        method: &str,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.path).map_err(|source| ClientError::Unreachable {
            path: self.path.clone(),
            source,
        })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {uri} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(body).map_err(io)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).map_err(io)?;
        self.parse_response(&resp)
    }

    fn parse_response(&self, resp: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
        let bad = |reason: &str| ClientError::BadResponse {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no header end"))?;
        let head = String::from_utf8_lossy(&resp[..split]);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let mut body = resp[split + 4..].to_vec();
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        if chunked {
            body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
        }
        Ok((status, body))
    }

    /// Sends a JSON request and decodes the JSON answer.
    pub fn call<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        uri: &str,
        req: Option<&Req>,
    ) -> Result<Resp, ClientError> {
        let body =
            req.map(serde_json::to_vec)
                .transpose()
                .map_err(|e| ClientError::BadResponse {
                    path: self.path.clone(),
                    reason: format!("encode request: {e}"),
                })?;
        let (status, body) = self.raw(method, uri, body.as_deref())?;
        if !(200..300).contains(&status) {
            let error = serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| ApiError {
                kind: if status == 503 {
                    "not-ready"
                } else {
                    "internal"
                }
                .into(),
                message: format!(
                    "agent answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
            });
            return Err(ClientError::Api { status, error });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse {
            path: self.path.clone(),
            reason: format!("decode answer to {method} {uri}: {e}"),
        })
    }

    /// `POST /v1/ipam`.
    pub fn allocate(&self, req: &IpamRequest) -> Result<IpamResponse, ClientError> {
        self.call("POST", "/v1/ipam", Some(req))
    }

    /// `PUT /v1/endpoints/{id}`.
    pub fn put_endpoint(
        &self,
        container_id: &str,
        req: &EndpointRequest,
    ) -> Result<EndpointResponse, ClientError> {
        self.call("PUT", &format!("/v1/endpoints/{container_id}"), Some(req))
    }

    /// `DELETE /v1/endpoints/{id}`.
    pub fn delete_endpoint(&self, container_id: &str) -> Result<DeleteResponse, ClientError> {
        self.call::<(), _>("DELETE", &format!("/v1/endpoints/{container_id}"), None)
    }

    /// `GET /v1/endpoints`.
    pub fn endpoints(&self) -> Result<Vec<EndpointRecord>, ClientError> {
        self.call::<(), _>("GET", "/v1/endpoints", None)
    }

    /// `POST /v1/gc`.
    pub fn gc(&self, req: &GcRequest) -> Result<GcResponse, ClientError> {
        self.call("POST", "/v1/gc", Some(req))
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call::<(), _>("GET", "/v1/status", None)
    }

    /// `GET /v1/endpoint`.
    pub fn endpoint_list(&self) -> Result<Vec<EndpointListEntry>, ClientError> {
        self.call::<(), _>("GET", "/v1/endpoint", None)
    }

    /// `GET /v1/services`.
    pub fn services(&self) -> Result<Vec<ServiceEntry>, ClientError> {
        self.call::<(), _>("GET", "/v1/services", None)
    }

    /// `GET /v1/ip`.
    pub fn ip_list(&self) -> Result<Vec<IpEntry>, ClientError> {
        self.call::<(), _>("GET", "/v1/ip", None)
    }

    /// `GET /v1/identities`.
    pub fn identities(&self) -> Result<Vec<IdentityEntry>, ClientError> {
        self.call::<(), _>("GET", "/v1/identities", None)
    }

    /// `GET /v1/nodes`.
    pub fn nodes(&self) -> Result<Vec<NodeEntry>, ClientError> {
        self.call::<(), _>("GET", "/v1/nodes", None)
    }

    /// `GET /v1/lrp`.
    pub fn lrps(&self) -> Result<Vec<crate::services::LrpStatus>, ClientError> {
        self.call::<(), _>("GET", "/v1/lrp", None)
    }

    /// A text route (`/metrics`, `/v1/config`).
    pub fn text(&self, uri: &str) -> Result<String, ClientError> {
        let (status, body) = self.raw("GET", uri, None)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(ClientError::Api {
                status,
                error: ApiError {
                    kind: "internal".into(),
                    message: format!("agent answered {status} to GET {uri}: {body}"),
                },
            })
        }
    }

    /// `GET /v1/flows?<query>` (see [`crate::flows::FlowQuery`]): calls
    /// `on_line` for each line as it arrives until it returns false or the
    /// agent ends the stream (without `follow`, after the stored flows).
    pub fn flows(
        &self,
        query: &crate::flows::FlowQuery,
        mut on_line: impl FnMut(crate::flows::FlowLine) -> bool,
    ) -> Result<(), ClientError> {
        use std::io::BufRead;
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let bad = |reason: String| ClientError::BadResponse {
            path: self.path.clone(),
            reason,
        };
        let mut s = UnixStream::connect(&self.path).map_err(|source| ClientError::Unreachable {
            path: self.path.clone(),
            source,
        })?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        // Following: lines may be minutes apart.
        s.set_read_timeout(if query.follow {
            None
        } else {
            Some(self.timeout)
        })
        .map_err(io)?;
        let uri = format!("/v1/flows?{}", query.to_query_string());
        let head = format!("GET {uri} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).map_err(io)?;
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(io)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut chunked = false;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(io)? == 0 || line.trim().is_empty() {
                break;
            }
            let l = line.to_ascii_lowercase();
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
        }
        let mut body: Vec<u8> = Vec::new();
        let emit = |body: &mut Vec<u8>, f: &mut dyn FnMut(crate::flows::FlowLine) -> bool| {
            while let Some(nl) = body.iter().position(|b| *b == b'\n') {
                let text: Vec<u8> = body.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&text);
                if text.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str(text.trim()) {
                    Ok(l) => {
                        if !f(l) {
                            return false;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, line = %text.trim(), "undecodable flow line");
                    }
                }
            }
            true
        };
        if !(200..300).contains(&status) {
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
            let rest = if chunked {
                dechunk(&rest).unwrap_or(rest)
            } else {
                rest
            };
            let error = serde_json::from_slice::<ApiError>(&rest).unwrap_or_else(|_| ApiError {
                kind: "internal".into(),
                message: format!(
                    "agent answered {status}: {}",
                    String::from_utf8_lossy(&rest)
                ),
            });
            return Err(ClientError::Api { status, error });
        }
        if !chunked {
            let mut buf = [0u8; 8192];
            loop {
                let n = r.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
                if !emit(&mut body, &mut on_line) {
                    return Ok(());
                }
            }
            body.push(b'\n');
            emit(&mut body, &mut on_line);
            return Ok(());
        }
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(io)? == 0 {
                break;
            }
            let size_str = line
                .trim()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if size_str.is_empty() {
                continue;
            }
            let size = usize::from_str_radix(&size_str, 16)
                .map_err(|_| bad(format!("bad chunk size {size_str:?}")))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).map_err(io)?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).map_err(io)?;
            if !emit(&mut body, &mut on_line) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `GET /v1/healthz`: Ok when ready.
    pub fn healthz(&self) -> Result<(), ClientError> {
        let (status, body) = self.raw("GET", "/v1/healthz", None)?;
        if status == 200 {
            Ok(())
        } else {
            Err(ClientError::Api {
                status,
                error: ApiError {
                    kind: "not-ready".into(),
                    message: String::from_utf8_lossy(&body).into_owned(),
                },
            })
        }
    }
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..nl]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_is_stable_and_short() {
        let a = host_ifname("abc");
        assert_eq!(a, host_ifname("abc"));
        assert_ne!(a, host_ifname("abd"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("lxc"));
    }

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0xab, 0, 1, 2, 0xff];
        assert_eq!(parse_mac(&format_mac(m)), Some(m));
        assert_eq!(parse_mac("zz"), None);
    }

    #[test]
    fn chunked() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
    }
}
