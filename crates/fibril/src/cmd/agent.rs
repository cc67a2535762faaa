//! `fibril agent`: the per-node agent (datapath, node IPAM, endpoint API).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use fibril_agent::AgentOptions;
use fibril_config::Config;

use super::store::{runtime, shutdown_signal, StoreArgs};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Node name (the Node / FibrilNode this agent owns).
    #[arg(long)]
    node: String,
    /// Named network namespace of the node (/run/netns/NAME).
    #[arg(long)]
    netns: String,
    /// Underlay device of the node.
    #[arg(long, default_value = "eth1")]
    device: String,
    /// Directory for the endpoint API socket and persisted state.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// bpffs directory for this node's pinned maps and links.
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Helm-style settings used until the stored config (kube-system/fibril-config) exists.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let run_dir = args
        .run_dir
        .unwrap_or_else(|| PathBuf::from("/run/fibril").join(&args.node));
    let pin_dir = args
        .pin_dir
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/fibril").join(&args.node));
    runtime()?.block_on(async {
        let store = args.store.require("the agent").await?;
        let mut config = match fibril_config::store::load(store.as_ref())
            .await
            .context("load the stored config")?
        {
            Some((c, _)) => c,
            None => Config::default(),
        };
        config.apply_sets(&args.set).context("--set")?;
        config.validate().context("invalid configuration")?;
        let mut opts = AgentOptions::new(&args.node, &args.netns, run_dir, pin_dir, config, store);
        opts.underlay_device = args.device;
        tracing::info!(node = %args.node, "agent starting");
        fibril_agent::run(opts, shutdown_signal())
            .await
            .with_context(|| format!("agent of node {}", args.node))
    })?;
    Ok(ExitCode::SUCCESS)
}
