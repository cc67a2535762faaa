//! Shared `--etcd` option: how commands reach the cluster store.

use std::sync::Arc;

use anyhow::Context;
use fibril_store::{EtcdStore, EtcdStoreOptions, SharedStore};

#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// etcd endpoints of the cluster store (comma-separated), e.g. http://192.168.10.100:2379.
    #[arg(long = "etcd", env = "FIBRIL_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
}

impl StoreArgs {
    /// Connects to the store, or returns `None` when no endpoint was given.
    pub async fn connect(&self) -> anyhow::Result<Option<SharedStore>> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let store = EtcdStore::connect(self.etcd.clone(), EtcdStoreOptions::default())
            .await
            .with_context(|| format!("connect to etcd at {}", self.etcd.join(",")))?;
        Ok(Some(Arc::new(store)))
    }

    /// Like [`Self::connect`] for commands that cannot work without a store.
    pub async fn require(&self, what: &str) -> anyhow::Result<SharedStore> {
        self.connect().await?.with_context(|| {
            format!("{what} needs the cluster store: pass --etcd URL or set FIBRIL_ETCD")
        })
    }
}

/// A multi-threaded runtime for the async commands, and a future that resolves
/// on SIGINT/SIGTERM for graceful shutdown.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
