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
    /// is given or the lab (--lab, default `fibril`) runs a cluster, otherwise
    /// starts from the defaults; --set values apply on top.
    View(ViewArgs),
}

#[derive(clap::Args, Debug)]
pub struct ViewArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Lab whose stored config to show (when --etcd is not given).
    #[arg(long, env = "FIBRIL_LAB", default_value = fibril_lab::DEFAULT_LAB)]
    lab: String,
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
    let lab_cluster = if args.store.etcd.is_empty() {
        fibril_lab::cluster::ClusterRecord::load(&args.lab)
            .ok()
            .flatten()
    } else {
        None
    };
    let mut config = if let Some(rec) = lab_cluster {
        lab_config(&args.lab, &rec)?
    } else if args.store.etcd.is_empty() {
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

/// The lab's stored config: from its etcd (as root), else from the copy in
/// `cluster.json` that `lab up`/`lab upgrade` keep.
fn lab_config(lab: &str, rec: &fibril_lab::cluster::ClusterRecord) -> anyhow::Result<Config> {
    if nix::unistd::geteuid().is_root() {
        let (rt, rec) = fibril_lab::cluster::enter_and_runtime(lab)?;
        return rt.block_on(async {
            let store = fibril_lab::cluster::connect(&rec).await?;
            let loaded = fibril_config::store::load(store.as_ref())
                .await
                .with_context(|| format!("load the stored config of lab {lab}"))?;
            anyhow::Ok(loaded.map(|(c, _)| c).unwrap_or_default())
        });
    }
    Config::from_flat_map(rec.config.clone())
        .with_context(|| format!("config of lab {lab} in cluster.json"))
}
