//! `fibril kubelet`: the pod runner of one lab node (started by `lab up`
//! inside the node's network namespace).

use std::process::ExitCode;

use anyhow::Context;
use fibril_kubelet::KubeletOptions;

use super::store::{runtime, shutdown_signal, StoreArgs};

#[derive(clap::Args, Debug)]
pub struct KubeletArgs {
    /// Lab whose node this is (topology, run dirs, CNI plugin link).
    #[arg(long, env = "FIBRIL_LAB", default_value = fibril_lab::DEFAULT_LAB)]
    lab: String,
    /// Node name (as in the topology and the Node object).
    #[arg(long)]
    node: String,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(args: KubeletArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let store = args.store.require("the pod runner").await?;
        tracing::info!(lab = %args.lab, node = %args.node, "pod runner starting");
        let mut opts = KubeletOptions::new(&args.lab, &args.node, store);
        // DNS pods (`fibril dns`) read their Corefile and the cluster from the same store.
        opts.etcd = args.store.etcd.clone();
        fibril_kubelet::run(opts, shutdown_signal())
            .await
            .with_context(|| format!("pod runner of node {} in lab {}", args.node, args.lab))
    })?;
    Ok(ExitCode::SUCCESS)
}
