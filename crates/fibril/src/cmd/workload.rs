//! `fibril workload KIND -- ARGS`: the built-in program a pod's container
//! image maps to (started by the pod runner inside the pod's namespaces).

use std::process::ExitCode;

use anyhow::Context;
use fibril_kubelet::WorkloadKind;

#[derive(clap::Args, Debug)]
pub struct WorkloadArgs {
    /// whoami, nginx or idle.
    kind: String,
    /// The container's command and args (e.g. `--port 8080` for whoami).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: WorkloadArgs) -> anyhow::Result<ExitCode> {
    let kind = WorkloadKind::parse(&args.kind).with_context(|| {
        format!(
            "unknown workload {:?} (expected whoami, nginx or idle)",
            args.kind
        )
    })?;
    fibril_kubelet::workload::run(kind, &args.args).with_context(|| format!("workload {kind}"))?;
    Ok(ExitCode::SUCCESS)
}
