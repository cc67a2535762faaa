//! `fibril observe`: Hubble's `observe` through a relay. Queries the flow API
//! (`GET /v1/flows`) of every node's agent of the lab
//! (`fibril_lab::paths::agent_socket`), filters on the agents, and merges
//! the nodes' flows by time: stored flows sorted as a whole, followed flows
//! through a short reorder window. Prints the seeds' line format
//! (`fibril_agent::flows::format_line`) or, with `-o json`, one JSON object
//! per line (`fibril_agent::flows::FlowLine`).

use std::collections::BinaryHeap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use fibril_agent::api::Client;
use fibril_agent::flows::{format_line, now_ns, FlowFilter, FlowLine, FlowQuery};

/// How long followed flows wait to be ordered with other nodes' flows.
const REORDER_WINDOW: Duration = Duration::from_millis(300);

#[derive(clap::Args, Debug)]
pub struct ObserveArgs {
    /// Lab name.
    #[arg(long, env = "FIBRIL_LAB", default_value = fibril_lab::DEFAULT_LAB)]
    lab: String,
    /// Only this node (repeatable; default: every node of the lab).
    #[arg(long)]
    node: Vec<String>,
    /// Agent sockets to query instead of the lab's (repeatable).
    #[arg(long, value_name = "PATH")]
    socket: Vec<PathBuf>,
    /// Follow: keep printing new flows.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Flows of this pod (`[namespace/]name` prefix) on either side.
    #[arg(long)]
    pod: Option<String>,
    /// Flows with a pod of this namespace on either side (and the namespace
    /// of `--pod`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// tcp, udp or icmp.
    #[arg(long)]
    protocol: Option<String>,
    /// Source or destination port.
    #[arg(long)]
    port: Option<u16>,
    /// FORWARDED, DROPPED, TRACED or TRANSLATED.
    #[arg(long)]
    verdict: Option<String>,
    /// trace or drop.
    #[arg(short = 't', long = "type")]
    event_type: Option<String>,
    /// The last N stored flows (default 20 without --follow, 0 with it).
    #[arg(long)]
    last: Option<usize>,
    /// Output: `json` for one JSON object per line.
    #[arg(short = 'o', long)]
    output: Option<String>,
}

impl ObserveArgs {
    fn query(&self) -> anyhow::Result<FlowQuery> {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        add("pod", self.pod.clone());
        add("namespace", self.namespace.clone());
        add("protocol", self.protocol.clone());
        add("port", self.port.map(|p| p.to_string()));
        add("verdict", self.verdict.clone());
        add("type", self.event_type.clone());
        // Validation only (values are encoded again by to_query_string).
        let mut q = FlowQuery::default();
        for p in &parts {
            let one = FlowQuery::parse(p).map_err(|e| anyhow::anyhow!("{e}"))?;
            merge(&mut q.filter, one.filter);
        }
        q.last = self.last.unwrap_or(if self.follow { 0 } else { 20 });
        Ok(q)
    }
}

fn merge(into: &mut FlowFilter, f: FlowFilter) {
    into.pod = into.pod.take().or(f.pod);
    into.namespace = into.namespace.take().or(f.namespace);
    into.protocol = into.protocol.take().or(f.protocol);
    into.port = into.port.or(f.port);
    into.verdict = into.verdict.take().or(f.verdict);
    into.event_type = into.event_type.take().or(f.event_type);
}

/// (label, client) of every agent to query.
fn targets(args: &ObserveArgs) -> anyhow::Result<Vec<(String, Client)>> {
    if !args.socket.is_empty() {
        return Ok(args
            .socket
            .iter()
            .map(|p| (p.display().to_string(), Client::new(p)))
            .collect());
    }
    let nodes = if args.node.is_empty() {
        let dir = fibril_lab::paths::node_dir(&args.lab, "x");
        let dir = dir.parent().map(PathBuf::from).unwrap_or(dir);
        let mut nodes: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("lab {}: list nodes in {}", args.lab, dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("agent.sock").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        nodes.sort();
        if nodes.is_empty() {
            bail!(
                "lab {}: no node has an agent socket under {}",
                args.lab,
                dir.display()
            );
        }
        nodes
    } else {
        args.node.clone()
    };
    Ok(nodes
        .into_iter()
        .map(|n| {
            let c = Client::new(fibril_lab::paths::agent_socket(&args.lab, &n));
            (n, c)
        })
        .collect())
}

struct Printer {
    json: bool,
    out: std::io::Stdout,
}

impl Printer {
    /// False when stdout is gone (e.g. `| head`).
    fn print(&mut self, l: &FlowLine) -> bool {
        let text = if self.json {
            serde_json::to_string(l).unwrap_or_default()
        } else {
            format_line(l)
        };
        let mut o = self.out.lock();
        writeln!(o, "{text}").and_then(|_| o.flush()).is_ok()
    }
}

/// Stored flows of all agents, merged by time, the last `q.last`.
fn history(targets: &[(String, Client)], q: &FlowQuery) -> anyhow::Result<Vec<FlowLine>> {
    let mut q = q.clone();
    q.follow = false;
    let results: Vec<(String, Result<Vec<FlowLine>, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|(name, c)| {
                let q = q.clone();
                let h = s.spawn(move || {
                    let mut v = Vec::new();
                    c.flows(&q, |l| {
                        v.push(l);
                        true
                    })
                    .map(|_| v)
                    .map_err(|e| e.to_string())
                });
                (name.clone(), h)
            })
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| {
                (
                    n,
                    h.join()
                        .unwrap_or_else(|_| Err("reader thread panicked".into())),
                )
            })
            .collect()
    });
    let mut all = Vec::new();
    let mut ok = 0;
    let mut errors = Vec::new();
    for (n, r) in results {
        match r {
            Ok(v) => {
                ok += 1;
                all.extend(v);
            }
            Err(e) => {
                eprintln!("warning: node {n}: {e}");
                errors.push(format!("node {n}: {e}"));
            }
        }
    }
    if ok == 0 {
        bail!("no agent answered: {}", errors.join("; "));
    }
    all.sort_by_key(|l| l.time_ns);
    let skip = all.len().saturating_sub(q.last);
    Ok(all.split_off(skip))
}

#[derive(PartialEq, Eq)]
struct ByTime(FlowLine, u64);

impl Ord for ByTime {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Min-heap on (time, arrival).
        (other.0.time_ns, other.1).cmp(&(self.0.time_ns, self.1))
    }
}

impl PartialOrd for ByTime {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

pub fn run(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let json = match args.output.as_deref() {
        None | Some("compact") => false,
        Some("json" | "jsonpb") => true,
        Some(o) => bail!("unknown output format {o:?} (expected json)"),
    };
    let q = args.query()?;
    let targets = targets(&args)?;
    let mut printer = Printer {
        json,
        out: std::io::stdout(),
    };
    if !args.follow {
        for l in history(&targets, &q)? {
            if !printer.print(&l) {
                break;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (tx, rx) = mpsc::channel::<Result<FlowLine, String>>();
    let mut fq = q.clone();
    fq.follow = true;
    fq.last = 0;
    for (name, c) in targets.clone() {
        let tx = tx.clone();
        let fq = fq.clone();
        std::thread::spawn(move || {
            let r = c.flows(&fq, |l| tx.send(Ok(l)).is_ok());
            let msg = match r {
                Ok(()) => format!("node {name}: the agent ended the stream"),
                Err(e) => format!("node {name}: {e}"),
            };
            let _ = tx.send(Err(msg));
        });
    }
    drop(tx);
    // The stored flows after the live streams are open: nothing falls in
    // between; live lines already printed as stored ones are skipped.
    let mut printed_until = 0u64;
    if q.last > 0 {
        for l in history(&targets, &q)? {
            printed_until = printed_until.max(l.time_ns);
            if !printer.print(&l) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let mut heap: BinaryHeap<ByTime> = BinaryHeap::new();
    let mut seq = 0u64;
    let window = u64::try_from(REORDER_WINDOW.as_nanos()).unwrap_or(u64::MAX);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(l)) if l.time_ns <= printed_until => {}
            Ok(Ok(l)) => {
                seq += 1;
                heap.push(ByTime(l, seq));
            }
            Ok(Err(msg)) => eprintln!("warning: {msg}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                while let Some(ByTime(l, _)) = heap.pop() {
                    if !printer.print(&l) {
                        break;
                    }
                }
                bail!("every agent stream ended");
            }
        }
        let horizon = now_ns().saturating_sub(window);
        while heap.peek().is_some_and(|t| t.0.time_ns <= horizon) {
            if let Some(ByTime(l, _)) = heap.pop() {
                if !printer.print(&l) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}
