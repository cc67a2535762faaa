//! `fibril dns`: the cluster DNS server (and, with a node-local Corefile, the
//! node-local DNS cache), configured by a Corefile from a file or from a
//! ConfigMap in the cluster store. This is what the lab's kubelet runs for
//! the CoreDNS and k8s-dns-node-cache images; the container's own args
//! (CoreDNS's `-conf`, node-cache's `-localip`/`-upstreamsvc`/...) may be
//! passed after `--`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fibril_dns::{ClusterIndex, CorefileSource, Placeholders, RunOptions, SharedIndex};
use fibril_store::{ObjectKey, SharedStore};

use super::store::{runtime, shutdown_signal, StoreArgs};

const LOCAL_DNS: &str = "__PILLAR__LOCAL__DNS__";
const DNS_SERVER: &str = "__PILLAR__DNS__SERVER__";
const DNS_DOMAIN: &str = "__PILLAR__DNS__DOMAIN__";
const CLUSTER_DNS: &str = "__PILLAR__CLUSTER__DNS__";
const UPSTREAM_SERVERS: &str = "__PILLAR__UPSTREAM__SERVERS__";

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Placeholders (node-local-dns Corefile templates):
  __PILLAR__LOCAL__DNS__         first --local-ip           (replaced in the Corefile text)
  __PILLAR__DNS__SERVER__        second --local-ip          (replaced in the Corefile text)
  __PILLAR__DNS__DOMAIN__        --cluster-domain           (replaced in the Corefile text)
  __PILLAR__CLUSTER__DNS__       --cluster-dns-service      (a forward target)
  __PILLAR__UPSTREAM__SERVERS__  --upstream, default the nameservers of /etc/resolv.conf

Examples:
  fibril dns --configmap kube-system/coredns --etcd http://192.168.10.100:2379
  fibril dns --configmap kube-system/node-local-dns --etcd $FIBRIL_ETCD \\
      -- -localip 169.254.20.10,10.96.0.10 -conf /etc/Corefile -upstreamsvc kube-dns-upstream
  fibril dns -c lab/manifests/upstream-dns/Corefile
  fibril dns --lab-upstream /run/fibril/labs/LAB/upstream-dns   (the same, built in)")]
pub struct DnsArgs {
    /// The Corefile to serve (reloaded on change when it has `reload`).
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with_all = ["configmap", "lab_upstream"])]
    corefile: Option<PathBuf>,
    /// Serve the lab's upstream resolver (the router's: zone example.test,
    /// 10.10.0.0/16 reverse names, NXDOMAIN for anything else, port 53):
    /// writes the built-in lab/manifests/upstream-dns files into DIR and
    /// serves its Corefile.
    #[arg(long, value_name = "DIR", conflicts_with = "configmap")]
    lab_upstream: Option<PathBuf>,
    /// Serve the Corefile in a ConfigMap of the cluster store: NS/NAME, with
    /// `:KEY` for a data key other than `Corefile`. Re-read every `reload`
    /// interval when the Corefile has `reload`. Needs --etcd.
    #[arg(long, value_name = "NS/NAME[:KEY]")]
    configmap: Option<String>,
    /// Node-local addresses, comma-separated: the first replaces
    /// __PILLAR__LOCAL__DNS__, the second __PILLAR__DNS__SERVER__ (as
    /// node-cache's -localip).
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    local_ip: Vec<IpAddr>,
    /// The cluster DNS behind the node-local cache (__PILLAR__CLUSTER__DNS__):
    /// a Service NS/NAME (or NAME in kube-system) whose ClusterIP is read
    /// from the store, waiting until it has one, or IP[:PORT].
    #[arg(long, value_name = "NS/NAME|IP[:PORT]")]
    cluster_dns_service: Option<String>,
    /// Upstream resolvers for __PILLAR__UPSTREAM__SERVERS__: IP[:PORT] list
    /// or a resolv.conf path. Default: the nameservers of /etc/resolv.conf.
    #[arg(long, value_name = "IP[:PORT],...|FILE", value_delimiter = ',')]
    upstream: Vec<String>,
    /// The cluster domain for __PILLAR__DNS__DOMAIN__.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Keep answering this long after SIGTERM before the Corefile's own
    /// lameduck and exit (e.g. `2s` for a node-local cache, so queries
    /// already redirected to it are answered while its Local Redirect Policy
    /// backend is withdrawn).
    #[arg(long, value_name = "DURATION", value_parser = parse_lameduck)]
    lameduck: Option<Duration>,
    /// Answer the `kubernetes` zones from this cluster store; without it the
    /// cluster view is empty and only forwarding, caching and files work.
    #[command(flatten)]
    store: StoreArgs,
    /// The container's args for CoreDNS or k8s-dns-node-cache images
    /// (Go-style single-dash flags): -localip, -upstreamsvc and -conf (used
    /// only without -c/--configmap) are honoured; others are ignored.
    #[arg(last = true, value_name = "IMAGE_ARGS")]
    image_args: Vec<String>,
}

/// What the image's own flags said.
#[derive(Debug, Default, PartialEq)]
struct ImageArgs {
    conf: Option<PathBuf>,
    local_ip: Vec<IpAddr>,
    upstream_svc: Option<String>,
}

/// Go `flag` package syntax: `-name value`, `-name=value`, `--name`.
fn parse_image_args(args: &[String]) -> anyhow::Result<ImageArgs> {
    const WITH_VALUE: &[&str] = &[
        "conf",
        "localip",
        "upstreamsvc",
        "health-port",
        "syncinterval",
        "interfacename",
        "pidfile",
        "basecorefile",
        "kubednscm",
        "metrics-listen-address",
        "dns.port",
    ];
    let mut out = ImageArgs::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            tracing::warn!(arg = %a, "dns: ignoring image argument");
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let value = if WITH_VALUE.contains(&name) {
            match inline {
                Some(v) => Some(v),
                None => Some(
                    it.next()
                        .with_context(|| format!("image argument -{name} needs a value"))?
                        .clone(),
                ),
            }
        } else {
            inline
        };
        match (name, value) {
            ("conf", Some(v)) => out.conf = Some(PathBuf::from(v)),
            ("localip", Some(v)) => {
                for ip in v.split(',').filter(|s| !s.is_empty()) {
                    out.local_ip.push(
                        ip.trim()
                            .parse()
                            .with_context(|| format!("image argument -localip: `{ip}`"))?,
                    );
                }
            }
            ("upstreamsvc", Some(v)) => out.upstream_svc = Some(v),
            (n, v) => tracing::debug!(flag = n, value = ?v, "dns: image flag not used"),
        }
    }
    Ok(out)
}

fn parse_lameduck(s: &str) -> Result<Duration, String> {
    fibril_dns::corefile::parse_duration(s)
        .ok_or_else(|| format!("invalid duration `{s}` (e.g. 2s, 500ms)"))
}

/// `NS/NAME[:KEY]`.
fn parse_configmap(s: &str) -> anyhow::Result<(String, String, String)> {
    let (nsname, key) = match s.split_once(':') {
        Some((a, k)) if !k.is_empty() => (a, k),
        Some(_) => bail!("--configmap {s}: empty key after `:`"),
        None => (s, "Corefile"),
    };
    match nsname.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string(), key.to_string()))
        }
        _ => bail!("--configmap {s}: want NAMESPACE/NAME[:KEY]"),
    }
}

/// `IP`, `IP:PORT`, `[v6]:PORT`.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

fn upstreams(list: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    if list.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        return Ok(fibril_dns::forward::parse_resolv_conf(&text));
    }
    let mut out = Vec::new();
    for s in list {
        if let Some(a) = parse_addr(s) {
            out.push(a);
        } else {
            let text = std::fs::read_to_string(s)
                .with_context(|| format!("--upstream {s}: not an address; read as resolv.conf"))?;
            let ns = fibril_dns::forward::parse_resolv_conf(&text);
            if ns.is_empty() {
                bail!("--upstream {s}: no nameserver lines");
            }
            out.extend(ns);
        }
    }
    Ok(out)
}

/// The ClusterIP of Service `ns/name`, waiting (and saying so) until the
/// Service exists and has one.
async fn service_ip(store: &SharedStore, ns: &str, name: &str) -> anyhow::Result<IpAddr> {
    let key = ObjectKey::new("Service", Some(ns), name);
    let start = Instant::now();
    let mut said: Option<Instant> = None;
    loop {
        let obj = store
            .get(&key)
            .await
            .with_context(|| format!("read Service {ns}/{name}"))?;
        let ip = obj.as_ref().and_then(|o| {
            o.value
                .pointer("/spec/clusterIP")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<IpAddr>().ok())
        });
        if let Some(ip) = ip {
            return Ok(ip);
        }
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(
                service = %format!("{ns}/{name}"),
                waited = ?start.elapsed(),
                exists = obj.is_some(),
                "dns: waiting for the cluster DNS Service's ClusterIP"
            );
            said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (saying so every 10 s) until ConfigMap `ns/name` exists: a pod may
/// start before its ConfigMap is applied, as a real pod waits for its volume.
async fn wait_for_configmap(store: &SharedStore, ns: &str, name: &str) -> anyhow::Result<()> {
    let key = ObjectKey::new("ConfigMap", Some(ns), name);
    let start = Instant::now();
    let mut said: Option<Instant> = None;
    while store
        .get(&key)
        .await
        .with_context(|| format!("read ConfigMap {ns}/{name}"))?
        .is_none()
    {
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(configmap = %format!("{ns}/{name}"), waited = ?start.elapsed(), "dns: waiting for the Corefile ConfigMap");
            said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

pub fn run(args: DnsArgs) -> anyhow::Result<ExitCode> {
    let image = parse_image_args(&args.image_args)?;
    let local_ips = if args.local_ip.is_empty() {
        image.local_ip.clone()
    } else {
        args.local_ip.clone()
    };
    let cluster_dns = args
        .cluster_dns_service
        .clone()
        .or_else(|| image.upstream_svc.clone());
    let corefile_path = match &args.lab_upstream {
        Some(dir) => Some(fibril_dns::lab_upstream::write_to(dir).with_context(|| {
            format!("write the lab upstream resolver files to {}", dir.display())
        })?),
        None => args.corefile.clone(),
    };
    let what = match (&corefile_path, &args.configmap, &image.conf) {
        (Some(p), _, _) => p.display().to_string(),
        (None, Some(cm), _) => format!("ConfigMap {cm}"),
        (None, None, Some(p)) => p.display().to_string(),
        (None, None, None) => {
            bail!("fibril dns: give a Corefile with -c FILE or --configmap NS/NAME")
        }
    };
    let mut substitutions = vec![(DNS_DOMAIN.to_string(), args.cluster_domain.clone())];
    if let Some(ip) = local_ips.first() {
        substitutions.push((LOCAL_DNS.to_string(), ip.to_string()));
    }
    if let Some(ip) = local_ips.get(1) {
        substitutions.push((DNS_SERVER.to_string(), ip.to_string()));
    }
    let upstream = upstreams(&args.upstream)?;
    runtime()?.block_on(async {
        let store = args.store.connect().await?;
        let corefile = match (&corefile_path, &args.configmap, &image.conf) {
            (Some(p), _, _) => CorefileSource::Path(p.clone()),
            (None, Some(cm), _) => {
                let (namespace, name, key) = parse_configmap(cm)?;
                let store = store
                    .clone()
                    .context("--configmap needs the cluster store: pass --etcd URL or set FIBRIL_ETCD")?;
                wait_for_configmap(&store, &namespace, &name).await?;
                CorefileSource::ConfigMap {
                    store,
                    namespace,
                    name,
                    key,
                }
            }
            (None, None, Some(p)) => CorefileSource::Path(p.clone()),
            (None, None, None) => unreachable!("checked above"),
        };
        let mut placeholders = Placeholders::new();
        if !upstream.is_empty() {
            placeholders.insert(UPSTREAM_SERVERS.to_string(), upstream);
        }
        if let Some(c) = &cluster_dns {
            let addr = match parse_addr(c) {
                Some(a) => a,
                None => {
                    let (ns, name) = c.split_once('/').unwrap_or(("kube-system", c.as_str()));
                    let store = store.as_ref().with_context(|| {
                        format!("--cluster-dns-service {c}: a Service name needs --etcd (or give an IP)")
                    })?;
                    let ip = service_ip(store, ns, name).await?;
                    tracing::info!(service = %format!("{ns}/{name}"), %ip, "dns: cluster DNS for {CLUSTER_DNS}");
                    SocketAddr::new(ip, 53)
                }
            };
            placeholders.insert(CLUSTER_DNS.to_string(), vec![addr]);
        }
        let opts = RunOptions {
            corefile,
            placeholders,
            substitutions,
        };
        let lameduck = args.lameduck;
        let shutdown = async move {
            shutdown_signal().await;
            if let Some(d) = lameduck.filter(|d| !d.is_zero()) {
                tracing::info!(duration = ?d, "dns: stopping; still answering for --lameduck");
                tokio::time::sleep(d).await;
            }
        };
        match store {
            Some(store) => fibril_dns::run_with_store(opts, store, shutdown).await,
            None => {
                let empty: Arc<dyn fibril_dns::ClusterView> =
                    Arc::new(SharedIndex::new(ClusterIndex::default()));
                fibril_dns::run(opts, empty, shutdown).await
            }
        }
        .with_context(|| format!("dns server ({what})"))
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn node_cache_args_from_the_seeds() {
        let a = parse_image_args(&s(&[
            "-localip",
            "169.254.20.10,10.96.0.10",
            "-conf",
            "/etc/Corefile",
            "-upstreamsvc",
            "kube-dns-upstream",
            "-skipteardown=true",
            "-setupinterface=false",
            "-setupiptables=false",
        ]))
        .unwrap();
        assert_eq!(
            a.local_ip,
            vec![
                "169.254.20.10".parse::<IpAddr>().unwrap(),
                "10.96.0.10".parse().unwrap()
            ]
        );
        assert_eq!(a.conf, Some(PathBuf::from("/etc/Corefile")));
        assert_eq!(a.upstream_svc.as_deref(), Some("kube-dns-upstream"));
        let c = parse_image_args(&s(&["-conf=/etc/coredns/Corefile", "-dns.port", "53"])).unwrap();
        assert_eq!(c.conf, Some(PathBuf::from("/etc/coredns/Corefile")));
        assert!(parse_image_args(&s(&["-localip"])).is_err());
    }

    #[test]
    fn configmap_and_addresses() {
        assert_eq!(
            parse_configmap("kube-system/coredns").unwrap(),
            ("kube-system".into(), "coredns".into(), "Corefile".into())
        );
        assert_eq!(
            parse_configmap("kube-system/node-local-dns:Corefile.base")
                .unwrap()
                .2,
            "Corefile.base"
        );
        assert!(parse_configmap("coredns").is_err());
        assert!(parse_configmap("a/b:").is_err());
        assert_eq!(
            parse_addr("10.96.0.10"),
            Some("10.96.0.10:53".parse().unwrap())
        );
        assert_eq!(
            parse_addr("10.0.0.1:5353"),
            Some("10.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_addr("kube-dns-upstream"), None);
    }
}
