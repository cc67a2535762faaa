//! `fibril dbg [--lab L] [--node N] <cmd>`: cilium-dbg for a node. Talks to
//! the node's agent over its unix socket (`fibril_lab::paths::agent_socket`)
//! and reads the node's pinned maps (`fibril_lab::paths::node_pin_dir`)
//! directly where the agent is not needed (the `bpf ...` and `map ...`
//! commands work while the agent is down). `--socket` / `--pin-dir` override
//! the lab paths for non-lab use.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use fibril_agent::api::Client;
use fibril_agent::fibril_datapath::{self, ipmasq, nat, LbDump, Maps};
use fibril_agent::format;

#[derive(clap::Args, Debug)]
pub struct DbgArgs {
    /// Lab name.
    #[arg(long, env = "FIBRIL_LAB", default_value = fibril_lab::DEFAULT_LAB)]
    lab: String,
    /// Node (default: the lab's control-plane node).
    #[arg(long)]
    node: Option<String>,
    /// Agent socket (instead of the lab's).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// bpffs directory of the node's pins (instead of the lab's).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: DbgCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DbgCommand {
    /// Agent and datapath status.
    Status {
        /// Allocated addresses, map fill levels, datapath summary.
        #[arg(long)]
        verbose: bool,
        /// Allocated addresses.
        #[arg(long)]
        all_addresses: bool,
    },
    /// Local endpoints.
    #[command(subcommand)]
    Endpoint(ListOnly),
    /// Services (frontends and backends).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// IP -> identity (ipcache and local endpoints).
    #[command(subcommand)]
    Ip(ListOnly),
    /// Security identities.
    #[command(subcommand)]
    Identity(ListOnly),
    /// Cluster nodes.
    #[command(subcommand)]
    Node(ListOnly),
    /// Local Redirect Policies.
    #[command(subcommand)]
    Lrp(ListOnly),
    /// BPF map listings.
    #[command(subcommand)]
    Bpf(BpfCmd),
    /// Pinned maps.
    #[command(subcommand)]
    Map(MapCmd),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The agent's Prometheus metrics.
    Metrics,
}

#[derive(clap::Subcommand, Debug)]
pub enum ListOnly {
    /// List.
    List {
        /// JSON output.
        #[arg(short, long)]
        output: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ServiceCmd {
    /// `ID  Frontend  Service Type  Backend`.
    List {
        /// Also print the owning Service / LRP of each frontend.
        #[arg(long)]
        owners: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum BpfCmd {
    /// Load-balancing maps.
    #[command(subcommand)]
    Lb(LbCmd),
    /// Conntrack.
    #[command(subcommand)]
    Ct(CtCmd),
    /// Masquerading NAT table.
    #[command(subcommand)]
    Nat(ListOnly),
    /// Ipcache.
    #[command(subcommand)]
    Ipcache(ListOnly),
    /// ip-masq-agent prefixes.
    #[command(subcommand)]
    Ipmasq(ListOnly),
    /// Local endpoints map.
    #[command(subcommand)]
    Endpoint(ListOnly),
}

#[derive(clap::Subcommand, Debug)]
pub enum LbCmd {
    /// Service entries (`--revnat`: rev-NAT entries).
    List {
        #[arg(long)]
        revnat: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CtCmd {
    /// `bpf ct list global`.
    List {
        /// Table (`global`).
        #[arg(default_value = "global")]
        table: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum MapCmd {
    /// `Name  Num entries  Num errors  Cache enabled`.
    List,
    /// Entries of one map.
    Get {
        /// Map name (`fibril_lb4_services`, ...).
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCmd {
    /// The agent's configuration, flat form.
    View,
}

struct Target {
    client: Client,
    pin_dir: PathBuf,
}

fn target(args: &DbgArgs) -> anyhow::Result<Target> {
    let node = match &args.node {
        Some(n) => n.clone(),
        None if args.socket.is_some() && args.pin_dir.is_some() => String::new(),
        None => {
            fibril_lab::cluster::ClusterRecord::require(&args.lab)
                .with_context(|| {
                    format!(
                        "lab {}: find the control-plane node (or pass --node)",
                        args.lab
                    )
                })?
                .control_plane
        }
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| fibril_lab::paths::agent_socket(&args.lab, &node));
    let pin_dir = args
        .pin_dir
        .clone()
        .unwrap_or_else(|| fibril_lab::paths::node_pin_dir(&args.lab, &node));
    Ok(Target {
        client: Client::new(socket),
        pin_dir,
    })
}

fn json(o: &Option<String>) -> anyhow::Result<bool> {
    match o.as_deref() {
        None => Ok(false),
        Some("json") => Ok(true),
        Some(other) => anyhow::bail!("-o {other}: only json is supported"),
    }
}

macro_rules! print_json {
    ($v:expr) => {
        println!("{}", serde_json::to_string_pretty($v)?)
    };
}

pub fn run(args: DbgArgs) -> anyhow::Result<ExitCode> {
    let t = target(&args)?;
    let c = &t.client;
    let agent = || format!("agent at {}", c.path().display());
    let maps = Maps::new(&t.pin_dir);
    let pins = || format!("pinned maps in {}", t.pin_dir.display());
    match &args.cmd {
        DbgCommand::Status {
            verbose,
            all_addresses,
        } => {
            let s = c.status().with_context(agent)?;
            print!("{}", format::format_status(&s, *verbose, *all_addresses));
        }
        DbgCommand::Endpoint(ListOnly::List { output }) => {
            let eps = c.endpoint_list().with_context(agent)?;
            if json(output)? {
                print_json!(&eps);
            } else {
                print!("{}", format::format_endpoint_list(&eps));
            }
        }
        DbgCommand::Service(ServiceCmd::List { owners }) => {
            let dump = LbDump::read(&maps).with_context(pins)?;
            print!("{}", dump.format_service_list());
            if *owners {
                let svcs = c.services().with_context(agent)?;
                println!();
                for s in svcs {
                    println!(
                        "{:<6}{:<28}{:<15}{}",
                        s.id, s.frontend, s.service_type, s.owner
                    );
                }
            }
        }
        DbgCommand::Ip(ListOnly::List { output }) => {
            let ips = c.ip_list().with_context(agent)?;
            if json(output)? {
                print_json!(&ips);
            } else {
                print!("{}", format::format_ip_list(&ips));
            }
        }
        DbgCommand::Identity(ListOnly::List { output }) => {
            let ids = c.identities().with_context(agent)?;
            if json(output)? {
                print_json!(&ids);
            } else {
                print!("{}", format::format_identity_list(&ids));
            }
        }
        DbgCommand::Node(ListOnly::List { output }) => {
            let nodes = c.nodes().with_context(agent)?;
            if json(output)? {
                print_json!(&nodes);
            } else {
                print!("{}", format::format_node_list(&nodes));
            }
        }
        DbgCommand::Lrp(ListOnly::List { output }) => {
            let l = c.lrps().with_context(agent)?;
            if json(output)? {
                print_json!(&l);
            } else {
                print!("{}", fibril_agent::services::format_lrp_list(&l));
            }
        }
        DbgCommand::Bpf(b) => match b {
            BpfCmd::Lb(LbCmd::List { revnat }) => {
                let dump = LbDump::read(&maps).with_context(pins)?;
                if *revnat {
                    print!("{}", dump.format_revnat_list());
                } else {
                    print!("{}", dump.format_lb_list());
                }
            }
            BpfCmd::Ct(CtCmd::List { table }) => {
                if table != "global" {
                    anyhow::bail!("bpf ct list {table}: only the global table exists");
                }
                let e = maps
                    .conntrack()
                    .and_then(|c| c.entries())
                    .with_context(pins)?;
                print!("{}", format::format_ct_list(&e));
            }
            BpfCmd::Nat(ListOnly::List { .. }) => {
                let n = nat::Nat::open(&t.pin_dir).with_context(pins)?;
                print!(
                    "{}",
                    n.list(fibril_datapath::monotonic_ns()).with_context(pins)?
                );
            }
            BpfCmd::Ipcache(ListOnly::List { .. }) => {
                let e = maps
                    .ipcache()
                    .and_then(|m| m.entries())
                    .with_context(pins)?;
                print!("{}", format::format_ipcache_list(&e));
            }
            BpfCmd::Ipmasq(ListOnly::List { .. }) => {
                print!("{}", ipmasq::list(&maps).with_context(pins)?);
            }
            BpfCmd::Endpoint(ListOnly::List { .. }) => {
                let e = maps.endpoints().and_then(|m| m.list()).with_context(pins)?;
                // The node's own addresses, when the agent answers.
                let host: Vec<std::net::Ipv4Addr> = match c.status() {
                    Ok(s) => [s.node_ip, s.router_ip].into_iter().flatten().collect(),
                    Err(_) => Vec::new(),
                };
                print!("{}", format::format_bpf_endpoint_list(&e, &host));
            }
        },
        DbgCommand::Map(MapCmd::List) => {
            if !t.pin_dir.is_dir() {
                anyhow::bail!(
                    "{}: no such directory (is the node's agent running?)",
                    t.pin_dir.display()
                );
            }
            print!(
                "{}",
                fibril_agent::metrics::format_map_list(&fibril_agent::metrics::map_fill(
                    &t.pin_dir
                ))
            );
        }
        DbgCommand::Map(MapCmd::Get { name }) => {
            print!(
                "{}",
                format::map_get(&t.pin_dir, name).with_context(|| format!("map {name}"))?
            );
        }
        DbgCommand::Config(ConfigCmd::View) => {
            print!("{}", c.text("/v1/config").with_context(agent)?);
        }
        DbgCommand::Metrics => {
            print!("{}", c.text("/metrics").with_context(agent)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
