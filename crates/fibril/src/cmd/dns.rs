//! `fibril dns`: the cluster DNS server (and, with a node-local Corefile, the
//! node-local DNS cache), configured by a Corefile.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use fibril_dns::{ClusterIndex, CorefileSource, RunOptions, SharedIndex};

use super::store::{runtime, shutdown_signal, StoreArgs};

#[derive(clap::Args, Debug)]
pub struct DnsArgs {
    /// The Corefile to serve (reloaded on change when it has `reload`).
    #[arg(long, short = 'c', value_name = "FILE")]
    corefile: PathBuf,
    /// Answer the `kubernetes` zones from this cluster store; without it the
    /// cluster view is empty and only forwarding and caching work.
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(args: DnsArgs) -> anyhow::Result<ExitCode> {
    let opts = RunOptions {
        corefile: CorefileSource::Path(args.corefile.clone()),
        placeholders: Default::default(),
    };
    runtime()?.block_on(async {
        match args.store.connect().await? {
            Some(store) => fibril_dns::run_with_store(opts, store, shutdown_signal()).await,
            None => {
                let empty: Arc<dyn fibril_dns::ClusterView> =
                    Arc::new(SharedIndex::new(ClusterIndex::default()));
                fibril_dns::run(opts, empty, shutdown_signal()).await
            }
        }
        .with_context(|| format!("dns server ({})", args.corefile.display()))
    })?;
    Ok(ExitCode::SUCCESS)
}
