//! `fibril config view`: the configuration in its flat form (as `cilium config view`).

use std::process::ExitCode;

use anyhow::Context;
use fibril_config::Config;

use super::store::{runtime, StoreArgs};

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the configuration, one `key  value` line per setting, sorted.
    ///
    /// Reads the stored config (ConfigMap kube-system/fibril-config) when --etcd
    /// is given, otherwise starts from the defaults; --set values apply on top.
    View(ViewArgs),
}

#[derive(clap::Args, Debug)]
pub struct ViewArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Helm-style overrides, e.g. --set ipam.mode=cluster-pool (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::View(args) => view(args),
    }
}

fn view(args: ViewArgs) -> anyhow::Result<ExitCode> {
    let mut config = if args.store.etcd.is_empty() {
        Config::default()
    } else {
        runtime()?.block_on(async {
            let store = args.store.require("config view").await?;
            let loaded = fibril_config::store::load(store.as_ref())
                .await
                .context("load the stored config")?;
            anyhow::Ok(loaded.map(|(c, _)| c).unwrap_or_default())
        })?
    };
    config.apply_sets(&args.set).context("--set")?;
    for warning in config.validate().context("invalid configuration")? {
        eprintln!("warning: {warning}");
    }
    print!("{}", config.to_flat());
    Ok(ExitCode::SUCCESS)
}
