//! `fibril operator`: the cluster-wide reconcilers (node CIDRs, pools, identities).

use std::process::ExitCode;

use anyhow::Context;
use fibril_config::Config;

use super::store::{runtime, shutdown_signal, StoreArgs};

#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Helm-style settings used until the stored config (kube-system/fibril-config) exists.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::default();
    config.apply_sets(&args.set).context("--set")?;
    config.validate().context("invalid configuration")?;
    runtime()?.block_on(async {
        let store = args.store.require("the operator").await?;
        tracing::info!("operator starting");
        fibril_operator::run(store, config, shutdown_signal())
            .await
            .context("operator")?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
