//! Runs `fibril dns` on a Corefile with a small fixed cluster (webpod
//! 10.96.152.212, kube-dns 10.96.0.10, curl-pod 10.244.1.9) until Ctrl-C,
//! for poking at it with dig/curl:
//!
//! ```text
//! cargo run -p fibril-dns --example serve -- /path/to/Corefile
//! dig @127.0.0.1 -p 1053 webpod.default.svc.cluster.local
//! ```

use std::sync::Arc;

use fibril_dns::{ClusterIndex, PodRecord, PortRecord, ServiceKind, ServiceRecord};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: serve COREFILE"))?;
    let mut idx = ClusterIndex::new();
    for (ns, name, ip) in [
        ("default", "webpod", "10.96.152.212"),
        ("kube-system", "kube-dns", "10.96.0.10"),
    ] {
        idx.upsert_service(ServiceRecord {
            namespace: ns.into(),
            name: name.into(),
            kind: ServiceKind::ClusterIp,
            cluster_ips: vec![ip.parse()?],
            ports: vec![PortRecord {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 80,
            }],
        });
    }
    idx.upsert_pod(PodRecord {
        namespace: "default".into(),
        name: "curl-pod".into(),
        ips: vec!["10.244.1.9".parse()?],
    });
    let opts = fibril_dns::RunOptions {
        corefile: fibril_dns::CorefileSource::Path(path.into()),
        placeholders: Default::default(),
        substitutions: Vec::new(),
    };
    fibril_dns::run(opts, Arc::new(idx), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
