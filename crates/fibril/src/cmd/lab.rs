//! `fibril lab ...`: bring the lab up (fabric and cluster) and down, show it,
//! upgrade its configuration, and run commands inside its hosts.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use fibril_lab::{Fabric, LabStatus, Topology, DEFAULT_LAB};

/// `fibril lab` subcommands.
#[derive(Subcommand)]
pub enum LabCommand {
    /// Build a lab: one network namespace per node and for the router, a
    /// fabric namespace with one bridge per subnet, and the cluster in it
    /// (etcd, operator, controller, per node an agent and a kubelet).
    #[command(after_help = lab_up_help())]
    Up(UpArgs),
    /// Store new settings (--set, validated) and restart the operator and
    /// then the agents one at a time.
    Upgrade(UpgradeArgs),
    /// Remove a lab: every namespace, interface, mount, process and state file.
    Down(NameArg),
    /// List labs with their hosts, namespaces and addresses.
    Status(StatusArgs),
    /// Run a command inside a lab host's network namespace (entered with
    /// setns, so /sys and bpffs stay as they are) and return its exit code.
    #[command(after_help = "Example: fibril lab exec k8s-ctr -- ping -c1 192.168.10.101")]
    Exec(ExecArgs),
    /// Restart one cluster process (stopped by PID if it still runs, started
    /// again with the same arguments), as Kubernetes restarts a crashed pod.
    #[command(
        after_help = "Components: etcd, operator, controller, router-dns, agent-<node>, kubelet-<node> (see `fibril lab status`).\nExample: fibril lab restart agent-k8s-w1"
    )]
    Restart(RestartArgs),
}

/// `fibril lab restart` arguments.
#[derive(Args)]
pub struct RestartArgs {
    /// The component, as `fibril lab status` lists it.
    pub component: String,
    #[command(flatten)]
    pub name: NameArg,
    /// Seconds the restart may take (agents: until healthy).
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,
}

fn lab_up_help() -> String {
    format!(
        "Built-in topologies: {}. A path to a YAML file works too.",
        Topology::builtin_names().join(", ")
    )
}

/// `--name LAB`.
#[derive(Args)]
pub struct NameArg {
    /// Lab name (a-z, 0-9, _); namespaces are named fl-<LAB>-<host>.
    #[arg(long, short = 'n', env = "FIBRIL_LAB", default_value = DEFAULT_LAB)]
    pub name: String,
}

/// `fibril lab up` arguments.
#[derive(Args)]
pub struct UpArgs {
    /// Built-in topology name (seed-3w, seed-4w, 3nodes) or path to a YAML file.
    #[arg(long, short = 't', default_value = "seed-3w")]
    pub topology: String,
    #[command(flatten)]
    pub name: NameArg,
    /// Helm-style settings over the defaults, e.g. --set ipam.mode=kubernetes (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Only the network fabric: no etcd, no cluster processes.
    #[arg(long)]
    pub fabric_only: bool,
    /// Skip the cluster DNS add-on (CoreDNS pods behind the kube-dns Service).
    #[arg(long)]
    pub no_dns: bool,
    /// Seconds each start-up step may take.
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,
}

/// `fibril lab upgrade` arguments.
#[derive(Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Helm-style settings, e.g. --set routingMode=tunnel (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
    pub set: Vec<String>,
    /// Seconds each restart may take.
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,
}

/// `fibril lab status` arguments.
#[derive(Args)]
pub struct StatusArgs {
    /// Only this lab (default: every lab found).
    #[arg(long, short = 'n', env = "FIBRIL_LAB")]
    pub name: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: StatusFormat,
}

/// `fibril lab status -o`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
}

/// `fibril lab exec` arguments.
#[derive(Args)]
pub struct ExecArgs {
    /// Node name, `router`, or `fabric`.
    pub host: String,
    #[command(flatten)]
    pub name: NameArg,
    /// Command and arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs a `fibril lab` subcommand.
pub fn run(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Up(a) => up(a),
        LabCommand::Upgrade(a) => upgrade(a),
        LabCommand::Down(a) => down(a),
        LabCommand::Status(a) => status(a),
        LabCommand::Exec(a) => exec(a),
        LabCommand::Restart(a) => restart(a),
    }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("`fibril lab {what}` needs root (it creates network namespaces)");
    }
    Ok(())
}

fn name_flag(lab: &str) -> String {
    if lab == DEFAULT_LAB {
        String::new()
    } else {
        format!(" --name {lab}")
    }
}

fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    require_root("up")?;
    let lab = a.name.name;
    let topo =
        Topology::load(&a.topology).with_context(|| format!("loading topology {}", a.topology))?;
    // Settings are checked before anything is built.
    if !a.set.is_empty() {
        let mut c = fibril_config::Config::default();
        c.apply_sets(&a.set).context("--set")?;
        c.validate().context("--set: invalid configuration")?;
    }
    println!(
        "lab {lab}: building topology {} ({})",
        topo.name, topo.description
    );
    let fabric = Fabric::up_with_progress(&topo, &lab, &mut |line| println!("  {line}"))
        .with_context(|| format!("lab up --name {lab}"))?;
    if !a.fabric_only {
        println!("lab {lab}: starting the cluster");
        let mut opts = fibril_lab::cluster::ClusterOptions::new(a.set.clone())?;
        opts.timeout = std::time::Duration::from_secs(a.timeout);
        let started = std::time::Instant::now();
        if let Err(e) = fibril_lab::cluster::start(&fabric, &opts, &mut |line| println!("  {line}"))
        {
            eprintln!("error: {e}");
            eprintln!("lab {lab}: removing everything that was started");
            if let Err(e2) = fibril_lab::down(&lab) {
                eprintln!("error: teardown: {e2}");
            }
            bail!("lab up --name {lab} failed (see above)");
        }
        if !a.no_dns {
            let text = fibril_lab::cluster::cluster_dns_manifest(&topo);
            let objects = fibril_api::parse_manifests(&text).context("the cluster DNS add-on")?;
            super::kube::apply_objects(&lab, objects, None, "  ✓ dns         ")
                .context("apply the cluster DNS add-on")?;
        }
        println!(
            "lab {lab}: cluster is up ({:.1} s); logs in {}",
            started.elapsed().as_secs_f64(),
            fibril_lab::state::lab_dir(&lab).join("logs").display()
        );
    }

    let n = name_flag(&lab);
    // Show the binary as it was invoked (e.g. target/release/fibril from `make lab`).
    let bin = std::env::args()
        .next()
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "fibril".to_string());
    let nodes = fabric.nodes();
    let first = nodes.first().cloned().unwrap_or_default();
    let peer_ip = nodes
        .iter()
        .rev()
        .find(|h| **h != first)
        .and_then(|h| fabric.node_ip(h))
        .or_else(|| fabric.node_ip("router"))
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    println!();
    println!("How to explore:");
    println!("  {bin} lab exec {first}{n} -- ping -c1 {peer_ip}");
    if let Some(r) = &fabric.topology().router {
        if let Some(lo) = r.loopbacks.first() {
            println!(
                "  {bin} lab exec {first}{n} -- ping -c1 {}    # {} {}",
                lo.address.addr(),
                r.name,
                lo.name
            );
        }
        println!("  {bin} lab exec {}{n} -- ip -br addr", r.name);
    }
    println!("  {bin} lab exec {first}{n} -- ip route");
    if !a.fabric_only {
        let l = if n.is_empty() {
            String::new()
        } else {
            format!(" --lab {lab}")
        };
        println!("  {bin} get nodes -o wide{l}");
        println!("  {bin} get ciliumnodes{l}");
        println!("  {bin} config view{l}");
        println!("  {bin} apply{l} -f lab/manifests/webpod.yaml");
        println!("  {bin} get pods -o wide{l}");
    }
    println!("  {bin} lab exec {first}{n} -- tcpdump -i eth1 -nn");
    println!("  {bin} lab status{n}");
    println!("  {bin} lab down{n}");
    Ok(ExitCode::SUCCESS)
}

fn upgrade(a: UpgradeArgs) -> anyhow::Result<ExitCode> {
    require_root("upgrade")?;
    let lab = a.name.name;
    let config = fibril_lab::cluster::upgrade(
        &lab,
        &a.set,
        std::time::Duration::from_secs(a.timeout),
        &mut |line| println!("  {line}"),
    )
    .with_context(|| format!("lab upgrade --name {lab}"))?;
    let flat = config.to_flat_map();
    for s in &a.set {
        println!("  set {s}");
    }
    println!("lab {lab}: upgraded ({} settings stored)", flat.len());
    Ok(ExitCode::SUCCESS)
}

fn restart(a: RestartArgs) -> anyhow::Result<ExitCode> {
    require_root("restart")?;
    let lab = a.name.name;
    let p = fibril_lab::cluster::restart_component(
        &lab,
        &a.component,
        std::time::Duration::from_secs(a.timeout),
    )
    .with_context(|| format!("lab restart {} --name {lab}", a.component))?;
    println!("lab {lab}: {} restarted (pid {})", a.component, p.pid);
    Ok(ExitCode::SUCCESS)
}

fn down(a: NameArg) -> anyhow::Result<ExitCode> {
    require_root("down")?;
    let lab = a.name;
    let report = match fibril_lab::down(&lab) {
        Ok(r) => r,
        Err(fibril_lab::LabError::NotRunning { .. }) => {
            println!("lab {lab} is not running; nothing to remove");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e).with_context(|| format!("lab down --name {lab}")),
    };
    for ns in &report.namespaces {
        println!("  removed netns {ns}");
    }
    if !report.killed_pids.is_empty() {
        println!("  stopped processes {:?}", report.killed_pids);
    }
    println!("lab {lab} is down");
    Ok(ExitCode::SUCCESS)
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let labs = fibril_lab::status(a.name.as_deref()).context("lab status")?;
    if let StatusFormat::Json = a.output {
        println!("{}", serde_json::to_string_pretty(&labs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if labs.is_empty() {
        println!("no labs (start one with `fibril lab up`)");
        return Ok(ExitCode::SUCCESS);
    }
    for (i, l) in labs.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_lab(l);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_lab(l: &LabStatus) {
    let state = if l.healthy {
        "running"
    } else {
        "incomplete (run `fibril lab down` or `up` to clean up)"
    };
    let created = l
        .created_at
        .map(|t| format!(", created {} ({})", format_utc(t), ago(t)))
        .unwrap_or_default();
    println!(
        "lab {}: topology {}, {state}{created}",
        l.lab,
        l.topology.as_deref().unwrap_or("?")
    );
    let rows: Vec<[String; 4]> = l
        .hosts
        .iter()
        .map(|h| {
            let role = h
                .kind
                .map(|k| k.to_string())
                .unwrap_or_else(|| "fabric".into());
            let detail = if !h.present {
                "MISSING".to_string()
            } else if h.kind.is_none() {
                format!("bridges/ports: {}", h.links.join(" "))
            } else {
                h.addresses
                    .iter()
                    .map(|(dev, a)| format!("{dev} {a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            [h.host.clone(), role, h.netns.clone(), detail]
        })
        .collect();
    let header = [
        "HOST".to_string(),
        "ROLE".to_string(),
        "NETNS".to_string(),
        "ADDRESSES".to_string(),
    ];
    let mut widths = [0usize; 3];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(rows.iter()) {
        println!(
            "  {:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    // Pods' and agents' health namespaces are the cluster's, not strays.
    let pod_prefix = format!("fl-{}-p-", l.lab);
    let (made, stray): (Vec<&String>, Vec<&String>) = l
        .stray_namespaces
        .iter()
        .partition(|n| n.starts_with(&pod_prefix) || n.ends_with("-health"));
    if !made.is_empty() {
        let pods = made.iter().filter(|n| n.starts_with(&pod_prefix)).count();
        println!(
            "  cluster namespaces: {pods} pod sandbox(es), {} agent health endpoint(s)",
            made.len() - pods
        );
    }
    for s in stray {
        println!("  stray namespace {s} (removed by the next up/down)");
    }
    if let Some(rec) = &l.cluster {
        println!("  cluster: etcd {}", rec.etcd_url);
        let rows: Vec<[String; 4]> = rec
            .processes
            .iter()
            .map(|p| {
                [
                    p.component.clone(),
                    p.pid.to_string(),
                    if p.alive() { "running" } else { "EXITED" }.to_string(),
                    p.log.display().to_string(),
                ]
            })
            .collect();
        let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
        for r in rows {
            println!("  {:<w0$}  pid {:<w1$}  {:<7}  {}", r[0], r[1], r[2], r[3]);
        }
    }
}

fn exec(a: ExecArgs) -> anyhow::Result<ExitCode> {
    require_root("exec")?;
    let lab = a.name.name;
    let fabric = Fabric::attach(&lab)?;
    let (program, args) = a
        .command
        .split_first()
        .context("no command given after --")?;
    let mut cmd = fabric.command(&a.host, program)?;
    cmd.args(args);
    // Replace this process (setns happens in the pre-exec hook): the exit
    // code, signals and the terminal belong to CMD directly.
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    Err(err).with_context(|| format!("running {program:?} in {} of lab {lab}", a.host))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ago(t: u64) -> String {
    let s = now_unix().saturating_sub(t);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h{}m ago", s / 3600, (s % 3600) / 60),
        _ => format!("{}d ago", s / 86400),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix seconds.
fn format_utc(t: u64) -> String {
    let stamp = fibril_store::rfc3339(i64::try_from(t).unwrap_or(i64::MAX));
    format!("{} UTC", stamp.replace('T', " ").trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
