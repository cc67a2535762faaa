//! Built-in workloads: container images mapped to programs of the `fibril`
//! binary (`fibril workload <kind> -- ARGS`), and those programs. The pod
//! runner starts them inside the pod's namespaces; they only serve and wait
//! for SIGTERM.
//!
//! | image (registry, tag and digest ignored)                   | kind     |
//! |------------------------------------------------------------|----------|
//! | `traefik/whoami`                                           | whoami   |
//! | `nginx`                                                    | nginx    |
//! | `nicolaka/netshoot`, `curlimages/curl`, `busybox`, `alpine` | idle     |
//! | `coredns/coredns`, `dns/k8s-dns-node-cache`                 | `fibril dns` (not `workload`) |

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which built-in program a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// traefik/whoami: echoes hostname, IPs and the request.
    Whoami,
    /// nginx: the welcome page on port 80.
    Nginx,
    /// Tool images: sleep until SIGTERM (tools run through `fibril exec`).
    Idle,
    /// CoreDNS / node-local DNS: runs `fibril dns` (see the pod runner).
    Dns,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Whoami => "whoami",
            WorkloadKind::Nginx => "nginx",
            WorkloadKind::Idle => "idle",
            WorkloadKind::Dns => "dns",
        }
    }

    pub fn parse(s: &str) -> Option<WorkloadKind> {
        match s {
            "whoami" => Some(WorkloadKind::Whoami),
            "nginx" => Some(WorkloadKind::Nginx),
            "idle" => Some(WorkloadKind::Idle),
            _ => None,
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The repository part of an image reference: no registry host, no
/// `library/`, no tag or digest (`docker.io/library/nginx:1.27` -> `nginx`).
pub fn image_repository(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' is a tag; before it, a registry port.
    let no_tag = match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    };
    let mut parts: Vec<&str> = no_tag.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            parts.remove(0);
        }
    }
    if parts.len() > 1 && parts[0] == "library" {
        parts.remove(0);
    }
    parts.join("/")
}

/// The built-in program for `image`, `None` for an image Fibril cannot run.
pub fn workload_for_image(image: &str) -> Option<WorkloadKind> {
    let repo = image_repository(image);
    match repo.as_str() {
        "traefik/whoami" => Some(WorkloadKind::Whoami),
        "nginx" | "nginxinc/nginx-unprivileged" => Some(WorkloadKind::Nginx),
        "nicolaka/netshoot" | "curlimages/curl" | "busybox" | "alpine" => Some(WorkloadKind::Idle),
        r if r == "coredns" || r.ends_with("/coredns") || r.ends_with("k8s-dns-node-cache") => {
            Some(WorkloadKind::Dns)
        }
        _ => None,
    }
}

/// `--port N`, `--port=N`, `-port N` (Go flag syntax, as whoami takes it).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let bare = a.trim_start_matches('-');
        if !a.starts_with('-') {
            continue;
        }
        if bare == flag {
            return it.next().cloned();
        }
        if let Some(v) = bare.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
    }
    None
}

/// Port of a whoami workload: `--port`, else `WHOAMI_PORT`, else 80.
pub fn whoami_port(args: &[String], env: &BTreeMap<String, String>) -> u16 {
    flag_value(args, "port")
        .or_else(|| env.get("WHOAMI_PORT").cloned())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(80)
}

/// Runs workload `kind` with the container's `args` until SIGTERM/SIGINT.
/// Builds its own runtime: call from `main` of `fibril workload`.
pub fn run(kind: WorkloadKind, args: &[String]) -> std::io::Result<()> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let serve = async {
            match kind {
                WorkloadKind::Whoami => {
                    let port = whoami_port(args, &env);
                    let name = flag_value(args, "name").or_else(|| env.get("WHOAMI_NAME").cloned());
                    serve_http(port, Responder::Whoami { name }).await
                }
                WorkloadKind::Nginx => serve_http(80, Responder::Nginx).await,
                WorkloadKind::Idle => std::future::pending().await,
                WorkloadKind::Dns => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "DNS images run `fibril dns`, not `fibril workload`",
                )),
            }
        };
        tokio::select! {
            r = serve => r,
            _ = terminated() => Ok(()),
        }
    })
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// What an HTTP workload answers.
#[derive(Debug, Clone)]
pub enum Responder {
    Whoami { name: Option<String> },
    Nginx,
}

async fn serve_http(port: u16, responder: Responder) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await?;
    eprintln!("listening on :{port}");
    loop {
        let (stream, peer) = listener.accept().await?;
        let r = responder.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_conn(stream, peer, r).await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

/// One parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Headers in the order received, names as written.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a request head (everything before the blank line).
pub fn parse_request(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let version = first.next().unwrap_or("HTTP/1.0").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Request {
        method,
        target,
        version,
        headers,
    })
}

/// The whoami body, as traefik/whoami prints it.
pub fn whoami_body(
    name: Option<&str>,
    hostname: &str,
    ips: &[IpAddr],
    remote: SocketAddr,
    req: &Request,
) -> String {
    let mut b = String::new();
    if let Some(n) = name {
        b.push_str(&format!("Name: {n}\n"));
    }
    b.push_str(&format!("Hostname: {hostname}\n"));
    for ip in ips {
        b.push_str(&format!("IP: {ip}\n"));
    }
    b.push_str(&format!("RemoteAddr: {remote}\n"));
    b.push_str(&format!("{} {} {}\n", req.method, req.target, req.version));
    if let Some(h) = req.header("host") {
        b.push_str(&format!("Host: {h}\n"));
    }
    for (k, v) in &req.headers {
        if !k.eq_ignore_ascii_case("host") {
            b.push_str(&format!("{}: {v}\n", canonical_header(k)));
        }
    }
    b.push('\n');
    b
}

/// `user-agent` -> `User-Agent` (Go's canonical form, which whoami prints).
fn canonical_header(k: &str) -> String {
    k.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// nginx's default index.html.
pub const NGINX_WELCOME: &str = "<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href=\"http://nginx.org/\">nginx.org</a>.<br/>
Commercial support is available at
<a href=\"http://nginx.com/\">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
";

/// IPv4 addresses of this network namespace, loopback first (whoami lists them).
fn local_ips() -> Vec<IpAddr> {
    let mut lo = Vec::new();
    let mut other = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
                continue;
            };
            let ip = IpAddr::V4(sin.ip());
            if ip.is_loopback() {
                lo.push(ip);
            } else {
                other.push(ip);
            }
        }
    }
    lo.extend(other);
    lo.dedup();
    lo
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

async fn handle_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    responder: Responder,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end + 4);
        let Some(req) = parse_request(&head) else {
            stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                )
                .await?;
            return Ok(());
        };
        // Skip a request body.
        let body_len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < body_len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..body_len);
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || req.version == "HTTP/1.0";
        let (status, ctype, body, server) = match &responder {
            Responder::Whoami { name } => (
                "200 OK",
                "text/plain; charset=utf-8",
                whoami_body(name.as_deref(), &hostname(), &local_ips(), peer, &req),
                None,
            ),
            Responder::Nginx => {
                let path = req.target.split('?').next().unwrap_or("/");
                if path == "/" || path == "/index.html" {
                    (
                        "200 OK",
                        "text/html",
                        NGINX_WELCOME.to_string(),
                        Some("nginx/1.29.1"),
                    )
                } else {
                    (
                        "404 Not Found",
                        "text/html",
                        "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx/1.29.1</center>\r\n</body>\r\n</html>\r\n".to_string(),
                        Some("nginx/1.29.1"),
                    )
                }
            }
        };
        let mut resp = format!("HTTP/1.1 {status}\r\n");
        if let Some(s) = server {
            resp.push_str(&format!("Server: {s}\r\n"));
        }
        resp.push_str(&format!("Date: {}\r\n", crate::time::http_date_now()));
        resp.push_str(&format!("Content-Type: {ctype}\r\n"));
        resp.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if close {
            resp.push_str("Connection: close\r\n");
        }
        resp.push_str("\r\n");
        if req.method != "HEAD" {
            resp.push_str(&body);
        }
        stream.write_all(resp.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn images_map_to_workloads() {
        for (img, kind) in [
            ("traefik/whoami", Some(WorkloadKind::Whoami)),
            ("traefik/whoami:v1.10", Some(WorkloadKind::Whoami)),
            (
                "docker.io/traefik/whoami:latest",
                Some(WorkloadKind::Whoami),
            ),
            ("nginx", Some(WorkloadKind::Nginx)),
            (
                "docker.io/library/nginx:1.27@sha256:abc",
                Some(WorkloadKind::Nginx),
            ),
            ("nicolaka/netshoot", Some(WorkloadKind::Idle)),
            ("curlimages/curl:8.1.0", Some(WorkloadKind::Idle)),
            ("localhost:5000/busybox:1.36", Some(WorkloadKind::Idle)),
            ("alpine:3", Some(WorkloadKind::Idle)),
            (
                "registry.k8s.io/coredns/coredns:v1.12.0",
                Some(WorkloadKind::Dns),
            ),
            (
                "registry.k8s.io/dns/k8s-dns-node-cache:1.26.4",
                Some(WorkloadKind::Dns),
            ),
            ("example/unknown:1", None),
        ] {
            assert_eq!(workload_for_image(img), kind, "{img}");
        }
    }

    #[test]
    fn whoami_port_from_flag_env_default() {
        let env: BTreeMap<String, String> = [("WHOAMI_PORT".to_string(), "81".to_string())].into();
        let none = BTreeMap::new();
        assert_eq!(whoami_port(&["--port".into(), "8080".into()], &env), 8080);
        assert_eq!(whoami_port(&["--port=9090".into()], &none), 9090);
        assert_eq!(whoami_port(&[], &env), 81);
        assert_eq!(whoami_port(&[], &none), 80);
    }

    #[test]
    fn whoami_body_shape() {
        let req =
            parse_request("GET / HTTP/1.1\r\nHost: webpod\r\nuser-agent: curl/8\r\nAccept: */*")
                .unwrap();
        let b = whoami_body(
            None,
            "webpod-1",
            &["127.0.0.1".parse().unwrap(), "10.244.1.5".parse().unwrap()],
            "10.244.0.3:5000".parse().unwrap(),
            &req,
        );
        assert_eq!(
            b,
            "Hostname: webpod-1\nIP: 127.0.0.1\nIP: 10.244.1.5\nRemoteAddr: 10.244.0.3:5000\n\
             GET / HTTP/1.1\nHost: webpod\nUser-Agent: curl/8\nAccept: */*\n\n"
        );
    }
}
