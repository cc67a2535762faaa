//! `fibril dns`: the cluster DNS server (what CoreDNS's `kubernetes`,
//! `forward`, `cache`, `loadbalance`, `health`, `ready`, `prometheus`,
//! `reload`, `loop`, `bind`, `log`, `errors` plugins do), configured by a
//! Corefile.
//!
//! - [`corefile`]: the Corefile parser ([`corefile::parse`] never panics).
//! - [`cluster`]: [`ClusterView`] (what the `kubernetes` plugin reads),
//!   [`ClusterIndex`]/[`SharedIndex`] (in-memory), [`StoreClusterView`]
//!   (follows a `fibril_store::SharedStore`).
//! - [`kubernetes`], [`forward`], [`cache`]: the plugins.
//! - [`file`]: the `file` plugin (zones from zone files).
//! - [`lab_upstream`]: the lab router's resolver configuration, built in.
//! - [`server`]: listeners, the plugin chain, HTTP endpoints.
//! - [`metrics`]: CoreDNS-named Prometheus metrics.
//!
//! Entry points: [`run`] (Corefile + any [`ClusterView`], until `shutdown`
//! resolves, reloading the Corefile file or ConfigMap when it has
//! `reload`), and
//! [`run_with_store`] (the same, fed from the cluster store). Node-local
//! mode is a Corefile (bind 169.254.20.10 + kube-dns IP, forward cluster
//! zones with `force_tcp` to `__PILLAR__CLUSTER__DNS__`) plus
//! [`RunOptions::placeholders`].

pub mod cache;
pub mod cluster;
pub mod corefile;
pub mod file;
pub mod forward;
pub mod kubernetes;
pub mod lab_upstream;
pub mod metrics;
pub mod server;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use cluster::{
    ClusterIndex, ClusterView, EndpointRecord, PodRecord, PortRecord, ServiceKind, ServiceRecord,
    SharedIndex, StoreClusterView,
};
pub use corefile::{parse as parse_corefile, Corefile, CorefileError};
pub use metrics::Metrics;
pub use server::{start, Placeholders, Running, ServerError};

/// Where the Corefile comes from. A file or a ConfigMap can be reloaded
/// (with the `reload` directive).
#[derive(Clone)]
pub enum CorefileSource {
    Text(String),
    Path(PathBuf),
    /// `data[key]` of a ConfigMap in the cluster store (the lab's
    /// `kube-system/coredns`, key `Corefile`).
    ConfigMap {
        store: fibril_store::SharedStore,
        namespace: String,
        name: String,
        key: String,
    },
}

impl std::fmt::Debug for CorefileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(t) => f.debug_tuple("Text").field(&t.len()).finish(),
            Self::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Self::ConfigMap {
                namespace,
                name,
                key,
                ..
            } => write!(f, "ConfigMap({namespace}/{name}[{key}])"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub corefile: CorefileSource,
    /// Values for template placeholders in forward targets, e.g.
    /// `__PILLAR__CLUSTER__DNS__` -> `[10.96.0.10:53]`.
    pub placeholders: Placeholders,
    /// Text replaced in the Corefile before it is parsed (every load and
    /// reload), e.g. `__PILLAR__LOCAL__DNS__` -> `169.254.20.10` in `bind`
    /// lines, as node-local-dns's installer `sed`s its template.
    pub substitutions: Vec<(String, String)>,
}

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("read Corefile {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Corefile(#[from] CorefileError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("read Corefile from {0}: {1}")]
    ConfigMap(String, String),
}

async fn load(
    src: &CorefileSource,
    substitutions: &[(String, String)],
) -> Result<(String, Corefile), DnsError> {
    let mut text = match src {
        CorefileSource::Text(t) => t.clone(),
        CorefileSource::Path(p) => std::fs::read_to_string(p).map_err(|source| DnsError::Read {
            path: p.clone(),
            source,
        })?,
        CorefileSource::ConfigMap {
            store,
            namespace,
            name,
            key,
        } => {
            let what = format!("ConfigMap {namespace}/{name} key {key}");
            let obj = store
                .get(&fibril_store::ObjectKey::new(
                    "ConfigMap",
                    Some(namespace),
                    name,
                ))
                .await
                .map_err(|e| DnsError::ConfigMap(what.clone(), e.to_string()))?
                .ok_or_else(|| DnsError::ConfigMap(what.clone(), "not found".into()))?;
            obj.value
                .get("data")
                .and_then(|d| d.get(key.as_str()))
                .and_then(|v| v.as_str())
                .ok_or_else(|| DnsError::ConfigMap(what, "no such data key".into()))?
                .to_string()
        }
    };
    for (from, to) in substitutions {
        if !from.is_empty() {
            text = text.replace(from.as_str(), to);
        }
    }
    let mut cf = corefile::parse(&text)?;
    // Zone files named relative to a Corefile file live next to it.
    if let CorefileSource::Path(p) = src {
        if let Some(dir) = p.parent() {
            for f in cf.servers.iter_mut().flat_map(|b| b.files.iter_mut()) {
                if std::path::Path::new(&f.path).is_relative() {
                    f.path = dir.join(&f.path).to_string_lossy().into_owned();
                }
            }
        }
    }
    Ok((text, cf))
}

/// Binds with retries: after a reload the old sockets may linger briefly.
async fn start_retry(
    cf: &Corefile,
    cluster: &Arc<dyn ClusterView>,
    metrics: &Arc<Metrics>,
    placeholders: &Placeholders,
    tries: u32,
) -> Result<Running, ServerError> {
    let mut n = 0;
    loop {
        match server::start(cf, cluster.clone(), metrics.clone(), placeholders).await {
            Ok(r) => return Ok(r),
            Err(ServerError::Bind { .. }) if n + 1 < tries => {
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Serves DNS as the Corefile says until `shutdown` resolves (then lameduck
/// and stop). With `reload` and a file source, a changed file is re-parsed
/// and the listeners restarted; a broken new file keeps the old config
/// (counted in `coredns_reload_failed_total`).
pub async fn run(
    opts: RunOptions,
    cluster: Arc<dyn ClusterView>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DnsError> {
    let metrics = Arc::new(Metrics::new());
    let (mut text, mut cf) = load(&opts.corefile, &opts.substitutions).await?;
    let mut running = start_retry(&cf, &cluster, &metrics, &opts.placeholders, 1).await?;
    tracing::info!(addrs = ?running.dns_addrs, http = ?running.http_addrs, "dns: serving");
    tokio::pin!(shutdown);
    loop {
        let reload = cf
            .servers
            .iter()
            .filter_map(|b| b.reload.as_ref())
            .map(|r| r.interval)
            .filter(|d| !d.is_zero())
            .min();
        let wait = match (&opts.corefile, reload) {
            (CorefileSource::Path(_) | CorefileSource::ConfigMap { .. }, Some(d)) => d,
            _ => Duration::from_secs(3600 * 24 * 365),
        };
        tokio::select! {
            _ = &mut shutdown => {
                running.shutdown().await;
                return Ok(());
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let (new_text, new_cf) = match load(&opts.corefile, &opts.substitutions).await {
            Ok(x) => x,
            Err(e) => {
                metrics.reload_failures.inc();
                tracing::error!(error = %e, "dns: reload: keeping the running config");
                continue;
            }
        };
        if new_text == text {
            continue;
        }
        tracing::info!("dns: Corefile changed; reloading");
        running.stop().await;
        match start_retry(&new_cf, &cluster, &metrics, &opts.placeholders, 30).await {
            Ok(r) => {
                running = r;
                text = new_text;
                cf = new_cf;
            }
            Err(e) => {
                metrics.reload_failures.inc();
                tracing::error!(error = %e, "dns: reload failed; restoring the previous config");
                running = start_retry(&cf, &cluster, &metrics, &opts.placeholders, 30).await?;
            }
        }
    }
}

/// [`run`] with the `kubernetes` plugin fed from the cluster store
/// (Service, EndpointSlice, Pod followed by list+watch).
pub async fn run_with_store(
    opts: RunOptions,
    store: fibril_store::SharedStore,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DnsError> {
    let view = Arc::new(StoreClusterView::start(store));
    run(opts, view, shutdown).await
}

/// The node-local DNS cache Corefile (the seeds' node-local-dns ConfigMap):
/// cluster zones forwarded to `__PILLAR__CLUSTER__DNS__` over TCP, other
/// names to `__PILLAR__UPSTREAM__SERVERS__`, all bound to `local_ips`
/// (169.254.20.10 and the kube-dns ClusterIP), health on the first.
/// Run it with [`node_local_placeholders`].
pub fn node_local_corefile(local_ips: &[std::net::IpAddr], cluster_domain: &str) -> String {
    let bind = local_ips
        .iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let health = local_ips
        .first()
        .map(|ip| format!("    health {}\n", std::net::SocketAddr::new(*ip, 8080)))
        .unwrap_or_default();
    let block = |zone: &str, cache: &str, upstream: &str, tcp: bool, extra: &str| {
        let fwd = if tcp {
            format!("    forward . {upstream} {{\n            force_tcp\n    }}\n")
        } else {
            format!("    forward . {upstream}\n")
        };
        format!(
            "{zone}:53 {{\n    errors\n{cache}    reload\n    loop\n    bind {bind}\n{fwd}    prometheus :9253\n{extra}    }}\n"
        )
    };
    let big = "    cache {\n            success 9984 30\n            denial 9984 5\n    }\n";
    let small = "    cache 30\n";
    [
        block(
            cluster_domain,
            big,
            "__PILLAR__CLUSTER__DNS__",
            true,
            &health,
        ),
        block("in-addr.arpa", small, "__PILLAR__CLUSTER__DNS__", true, ""),
        block("ip6.arpa", small, "__PILLAR__CLUSTER__DNS__", true, ""),
        block(".", small, "__PILLAR__UPSTREAM__SERVERS__", false, ""),
    ]
    .concat()
}

/// Placeholder values for the node-local-dns Corefile templates:
/// `__PILLAR__CLUSTER__DNS__` (the cluster DNS, reached with `force_tcp`)
/// and `__PILLAR__UPSTREAM__SERVERS__` (the node's resolv.conf nameservers).
pub fn node_local_placeholders(
    cluster_dns: &[std::net::SocketAddr],
    resolv_conf: &str,
) -> Placeholders {
    let mut p = Placeholders::new();
    p.insert("__PILLAR__CLUSTER__DNS__".into(), cluster_dns.to_vec());
    p.insert(
        "__PILLAR__UPSTREAM__SERVERS__".into(),
        forward::parse_resolv_conf(resolv_conf),
    );
    p
}

/// Fuzz entry point: the Corefile parser on arbitrary bytes. Never panics.
pub fn fuzz_corefile(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = corefile::parse(text);
    }
}

/// Fuzz entry point: one raw DNS message through the query path (decode,
/// validation, kubernetes answers, cache, encoding with size limits) of a
/// fixed Corefile, no network. Never panics; a response, if any, never
/// exceeds the UDP limit.
pub fn fuzz_message(data: &[u8]) {
    use std::sync::OnceLock;
    static STATE: OnceLock<(Vec<Arc<server::Block>>, server::Shared)> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let cf = corefile::parse(FUZZ_COREFILE).unwrap_or_default();
        let view: Arc<dyn ClusterView> = Arc::new(fuzz_index());
        (server::offline_blocks(&cf), server::offline_shared(view))
    });
    if let Some(resp) = server::handle_sync(data, &state.0, &state.1) {
        assert!(
            resp.len() <= usize::from(server::EDNS_PAYLOAD),
            "oversized UDP response"
        );
    }
}

const FUZZ_COREFILE: &str = ".:53 {\n kubernetes cluster.local in-addr.arpa ip6.arpa {\n  pods insecure\n  ttl 30\n }\n cache 30\n loadbalance\n}\n";

fn fuzz_index() -> ClusterIndex {
    let mut i = ClusterIndex::new();
    i.upsert_service(ServiceRecord {
        namespace: "default".into(),
        name: "webpod".into(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec![std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            10, 96, 0, 100,
        ))],
        ports: vec![PortRecord {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
        }],
    });
    i.upsert_service(ServiceRecord {
        namespace: "default".into(),
        name: "big".into(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec![],
        ports: vec![],
    });
    let eps = (0..200u8)
        .map(|n| EndpointRecord {
            addresses: vec![std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, n))],
            hostname: None,
            ready: true,
            ports: vec![],
        })
        .collect();
    i.upsert_slice("default", "big-1", "big", eps);
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_local_corefile_matches_the_seed_shape() {
        let ips = [
            "169.254.20.10".parse().unwrap(),
            "10.96.0.10".parse().unwrap(),
        ];
        let text = node_local_corefile(&ips, "cluster.local");
        let cf = parse_corefile(&text).unwrap();
        assert_eq!(cf.servers.len(), 4);
        let b = &cf.servers[0];
        assert_eq!(b.zones, vec!["cluster.local."]);
        assert_eq!(b.bind, ips.to_vec());
        assert!(b.forward.as_ref().unwrap().force_tcp);
        assert_eq!(b.cache.as_ref().unwrap().denial_ttl, 5);
        assert_eq!(b.health.as_ref().unwrap().addr.port, 8080);
        let last = &cf.servers[3];
        assert_eq!(last.zones, vec!["."]);
        assert!(!last.forward.as_ref().unwrap().force_tcp);
        let p =
            node_local_placeholders(&["10.96.0.10:53".parse().unwrap()], "nameserver 10.0.2.3\n");
        assert_eq!(
            p["__PILLAR__UPSTREAM__SERVERS__"],
            vec!["10.0.2.3:53".parse().unwrap()]
        );
    }
}
