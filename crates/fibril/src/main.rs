//! The `fibril` binary: every component behind one executable. Invoked as
//! `fibril-cni` (by name, through a symlink) it is the CNI plugin.
//!
//! This file only parses the command line and dispatches: each subcommand
//! lives in its own module under `cmd/`.

use std::process::ExitCode;

use clap::Parser;

mod cmd;

#[derive(Parser)]
#[command(
    name = "fibril",
    version,
    about = "Fibril: Kubernetes CNI with an eBPF datapath",
    after_help = "Logging: set RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=fibril_lab=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the version.
    Version,
    /// The lab: build, inspect, enter and remove the netns fabric.
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
    /// Configuration (Helm value names; `config view` prints the flat form).
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Run the agent of one node: datapath, node IPAM, endpoint API for the CNI plugin.
    Agent(cmd::agent::AgentArgs),
    /// Run the operator: node CIDRs, IP pools, identities (one per cluster).
    Operator(cmd::operator::OperatorArgs),
    /// Run the lab controller: Deployments/DaemonSets -> Pods, scheduling, Service IPs, EndpointSlices.
    Controller(cmd::controller::ControllerArgs),
    /// Run the cluster DNS server from a Corefile.
    Dns(cmd::dns::DnsArgs),
    /// Run the pod runner of one lab node (kubelet + runtime: sandboxes, CNI, workloads).
    Kubelet(cmd::kubelet::KubeletArgs),
    /// Run a built-in workload (what the pod runner starts for a container image).
    #[command(hide = true)]
    Workload(cmd::workload::WorkloadArgs),
    /// Run a command inside a pod's namespaces (`fibril exec POD [-n NS] -- CMD ARGS`).
    Exec(cmd::exec::ExecArgs),
    /// Create or update objects from manifests (multi-document YAML; `-f -` reads stdin).
    Apply(cmd::kube::ApplyArgs),
    /// List objects: pods, deployments, services, nodes, ciliumnodes, ciliumendpoints, ...
    Get(cmd::kube::GetArgs),
    /// Show one object in detail, with its events.
    Describe(cmd::kube::DescribeArgs),
    /// Delete objects by type and name or from manifests.
    Delete(cmd::kube::DeleteArgs),
    /// Set a Deployment's replica count.
    Scale(cmd::kube::ScaleArgs),
    /// Restart a Deployment's pods or the agents (ds/fibril).
    #[command(subcommand)]
    Rollout(cmd::kube::RolloutCommand),
    /// Debug a node (cilium-dbg): status, endpoint/service/ip/node/lrp lists, bpf maps.
    Dbg(cmd::dbg::DbgArgs),
    /// Observe flows of every node of the lab (hubble observe).
    Observe(cmd::observe::ObserveArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    // Invoked through a `fibril-cni` link, this binary is the CNI plugin: the
    // runtime passes everything in CNI_* variables and stdin, not argv.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("fibril-cni")) {
        let code = fibril_cni::main_from_process();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse_from(cmd::kube::hoist_namespace_flag(
        std::env::args_os().collect(),
    ));
    init_tracing();
    let result = match cli.command {
        Command::Version => {
            println!("fibril {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(c) => cmd::lab::run(c),
        Command::Config(c) => cmd::config::run(c),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Operator(a) => cmd::operator::run(a),
        Command::Controller(a) => cmd::controller::run(a),
        Command::Dns(a) => cmd::dns::run(a),
        Command::Kubelet(a) => cmd::kubelet::run(a),
        Command::Workload(a) => cmd::workload::run(a),
        Command::Exec(a) => cmd::exec::run(a),
        Command::Apply(a) => cmd::kube::apply(a),
        Command::Get(a) => cmd::kube::get(a),
        Command::Describe(a) => cmd::kube::describe(a),
        Command::Delete(a) => cmd::kube::delete(a),
        Command::Scale(a) => cmd::kube::scale(a),
        Command::Rollout(c) => cmd::kube::rollout(c),
        Command::Dbg(a) => cmd::dbg::run(a),
        Command::Observe(a) => cmd::observe::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
