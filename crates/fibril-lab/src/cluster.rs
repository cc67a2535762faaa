//! The lab cluster: the processes `fibril lab up` starts on top of the
//! fabric (etcd, operator, controller, and per node an agent and a kubelet),
//! their record (`cluster.json`), rolling restarts, and store access from the
//! root network namespace.
//!
//! Every process is the `fibril` binary (etcd excepted), started inside a
//! lab namespace (setns before exec), in its own session (so it outlives the
//! CLI), with stdout/stderr appended to `logs/<component>.log`.
//! `cluster.json` lists them with PID and start time; [`stop`] (called by
//! `lab down` and by crash recovery in `lab up`) stops exactly those.
//!
//! # Store access
//!
//! etcd listens on the control-plane node's IP inside that node's namespace,
//! unreachable from the root namespace. A CLI command that needs the store
//! calls [`enter_and_runtime`] on its main thread before anything else
//! starts threads: it enters the control-plane namespace (`setns`), then
//! builds the tokio runtime, whose threads inherit the namespace; then
//! [`connect`] inside `block_on`. Library code that must not move the
//! calling thread uses [`with_store`] (a helper thread does the same).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_config::Config;
use fibril_netlink::NetNs;
use fibril_store::{EtcdStore, EtcdStoreOptions, SharedStore};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, LabResult};
use crate::fabric::Fabric;
use crate::paths;
use crate::state::{lab_dir, proc_start_time};
use crate::topology::Role;

/// etcd client port on the control-plane node.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// Debian's etcd.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";
/// etcd (3.4 and 3.5) logs this once it serves clients.
const ETCD_READY: &str = "ready to serve client requests";

/// `cluster.json` of `lab`.
pub fn cluster_file(lab: &str) -> PathBuf {
    lab_dir(lab).join("cluster.json")
}

/// One process of the lab cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterProcess {
    /// `etcd`, `operator`, `controller`, `agent-<node>`, `kubelet-<node>`.
    pub component: String,
    /// Node the process belongs to (agents, kubelets).
    #[serde(default)]
    pub node: Option<String>,
    /// Namespace it runs in.
    pub netns: String,
    /// Program and arguments (respawned as is by a rollout).
    pub argv: Vec<String>,
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: guards against PID reuse.
    pub start_time: u64,
    pub log: PathBuf,
}

impl ClusterProcess {
    /// Whether this very process still runs.
    pub fn alive(&self) -> bool {
        self.pid > 0 && proc_start_time(self.pid) == Some(self.start_time)
    }
}

/// What `cluster.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub lab: String,
    /// etcd client URL (reachable inside the lab namespaces).
    pub etcd_url: String,
    /// Control-plane node name.
    pub control_plane: String,
    /// Namespace of the control-plane node (etcd, operator, controller).
    pub control_plane_netns: String,
    /// The `--set` values given to `lab up` and `lab upgrade`, in order.
    pub sets: Vec<String>,
    /// The stored config in flat form (as `config view`).
    pub config: BTreeMap<String, String>,
    pub processes: Vec<ClusterProcess>,
}

impl ClusterRecord {
    /// Reads `cluster.json` of `lab`; `Ok(None)` if the lab has no cluster.
    pub fn load(lab: &str) -> LabResult<Option<ClusterRecord>> {
        let path = cluster_file(lab);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LabError::State { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LabError::CorruptState {
                path,
                message: e.to_string(),
            })
    }

    /// The record of a running lab cluster, or a [`LabError::Cluster`] that
    /// says how to start one.
    pub fn require(lab: &str) -> LabResult<ClusterRecord> {
        Self::load(lab)?.ok_or_else(|| LabError::Cluster {
            lab: lab.to_string(),
            step: "find the cluster".into(),
            detail: format!(
                "no {} (start the lab with `fibril lab up{}`)",
                cluster_file(lab).display(),
                if lab == crate::DEFAULT_LAB {
                    String::new()
                } else {
                    format!(" --name {lab}")
                }
            ),
        })
    }

    /// Writes `cluster.json` atomically.
    pub fn save(&self) -> LabResult<()> {
        crate::state::write_json_atomic(&cluster_file(&self.lab), self)
    }

    /// The process of `component`.
    pub fn process(&self, component: &str) -> Option<&ClusterProcess> {
        self.processes.iter().find(|p| p.component == component)
    }

    fn replace(&mut self, p: ClusterProcess) {
        match self
            .processes
            .iter_mut()
            .find(|q| q.component == p.component)
        {
            Some(q) => *q = p,
            None => self.processes.push(p),
        }
    }
}

/// How to start the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `fibril` binary the components run from.
    pub exe: PathBuf,
    /// Helm-style `--set` values applied over the defaults.
    pub sets: Vec<String>,
    /// How long each readiness wait may take.
    pub timeout: Duration,
}

impl ClusterOptions {
    /// Defaults: this process's executable, no sets, 90 s per wait.
    pub fn new(sets: Vec<String>) -> LabResult<Self> {
        let exe = std::env::current_exe().map_err(|source| LabError::State {
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        Ok(Self {
            exe,
            sets,
            timeout: Duration::from_secs(90),
        })
    }
}

fn cerr(lab: &str, step: impl Into<String>, detail: impl Into<String>) -> LabError {
    LabError::Cluster {
        lab: lab.to_string(),
        step: step.into(),
        detail: detail.into(),
    }
}

/// The config `lab up` stores: `Config::default()` (Cilium's defaults:
/// cluster-pool 10.0.0.0/8 /24, tunnel/VXLAN), the topology's `cluster`
/// ranges as `k8sClusterCIDR`/`k8sNodeCIDRMaskSize`/`k8sServiceCIDR` and
/// `loadBalancerIPPool`, `kubeProxyReplacement=true` (the lab has no
/// kube-proxy: services work only through Fibril) and `bpf.masquerade=true`
/// (no iptables masquerading either: pods reach the router's resolver), as
/// the seeds install Cilium, then `sets` (which win over all of these).
pub fn initial_config(fabric: &Fabric, sets: &[String]) -> LabResult<Config> {
    let lab = fabric.lab();
    let mut config = Config::default();
    let c = &fabric.topology().cluster;
    config.k8s_cluster_cidr = c.cluster_cidr;
    config.k8s_node_cidr_mask_size = c.node_cidr_mask_size;
    config.k8s_service_cidr = c.service_cidr;
    config.load_balancer_ip_pool = c.load_balancer_cidrs.clone();
    config.kube_proxy_replacement = true;
    config.bpf_masquerade = true;
    config
        .apply_sets(sets)
        .map_err(|e| cerr(lab, "--set", e.to_string()))?;
    config
        .validate()
        .map_err(|e| cerr(lab, "validate the configuration", e.to_string()))?;
    Ok(config)
}

/// Starts the cluster on a freshly built fabric and records it. On error
/// the processes started so far keep running: the caller tears the whole
/// lab down (`fibril_lab::down`), which stops them.
pub fn start(
    fabric: &Fabric,
    opts: &ClusterOptions,
    progress: &mut dyn FnMut(&str),
) -> LabResult<ClusterRecord> {
    let lab = fabric.lab().to_string();
    let topo = fabric.topology();
    let cp = topo
        .nodes
        .iter()
        .find(|n| n.role == Role::ControlPlane)
        .or_else(|| topo.nodes.first())
        .ok_or_else(|| cerr(&lab, "pick the control plane", "the topology has no nodes"))?
        .name
        .clone();
    let cp_ip = fabric
        .node_ip(&cp)
        .ok_or_else(|| cerr(&lab, "pick the control plane", format!("{cp} has no IP")))?;
    let config = initial_config(fabric, &opts.sets)?;

    for dir in [
        paths::bin_dir(&lab),
        lab_dir(&lab).join("logs"),
        paths::etcd_dir(&lab),
    ] {
        fs::create_dir_all(&dir).map_err(|source| LabError::State {
            path: dir.clone(),
            source,
        })?;
    }
    let cni = paths::bin_dir(&lab).join("fibril-cni");
    let _ = fs::remove_file(&cni);
    std::os::unix::fs::symlink(&opts.exe, &cni).map_err(|source| LabError::State {
        path: cni.clone(),
        source,
    })?;
    for n in fabric.nodes() {
        let d = paths::pods_dir(&lab, &n);
        fs::create_dir_all(&d).map_err(|source| LabError::State { path: d, source })?;
    }

    let etcd_url = format!("http://{cp_ip}:{ETCD_CLIENT_PORT}");
    let mut rec = ClusterRecord {
        lab: lab.clone(),
        etcd_url: etcd_url.clone(),
        control_plane: cp.clone(),
        control_plane_netns: fabric.netns_name(&cp)?.to_string(),
        sets: opts.sets.clone(),
        config: config.to_flat_map(),
        processes: Vec::new(),
    };
    rec.save()?;

    // etcd.
    let peer = "http://127.0.0.1:2380";
    let etcd_argv: Vec<String> = [
        ETCD_BINARY,
        "--name",
        &lab,
        "--data-dir",
        &paths::etcd_dir(&lab).to_string_lossy(),
        "--listen-client-urls",
        &format!("{etcd_url},http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        "--advertise-client-urls",
        &etcd_url,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        &format!("{lab}={peer}"),
        "--initial-cluster-state",
        "new",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let etcd = spawn(&lab, "etcd", None, &rec.control_plane_netns, &etcd_argv)?;
    rec.replace(etcd.clone());
    rec.save()?;
    wait_for(&lab, &etcd, opts.timeout, || {
        Ok(read_log(&etcd.log).contains(ETCD_READY))
    })?;
    progress(&format!("✓ etcd        {etcd_url} (pid {})", etcd.pid));

    // The stored config, before any component reads it.
    let cfg = config.clone();
    with_store(&rec, move |store| async move {
        fibril_config::store::save(store.as_ref(), &cfg)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?
    .map_err(|e| cerr(&lab, "store the config", e))?;
    progress("✓ config      ConfigMap kube-system/fibril-config");

    let exe = opts.exe.to_string_lossy().into_owned();
    let cp_ns = rec.control_plane_netns.clone();
    for name in ["operator", "controller"] {
        let mut argv = vec![exe.clone(), name.to_string()];
        argv.extend(["--etcd".to_string(), etcd_url.clone()]);
        let p = spawn(&lab, name, None, &cp_ns, &argv)?;
        rec.replace(p.clone());
        rec.save()?;
        // No health endpoint: it counts as started when it survives a moment.
        std::thread::sleep(Duration::from_millis(300));
        if !p.alive() {
            return Err(died(&lab, &p));
        }
        progress(&format!("✓ {name:<11} pid {}", p.pid));
    }

    let nodes = fabric.nodes();
    for node in &nodes {
        let argv = agent_argv(&exe, &lab, fabric.netns_name(node)?, node, &etcd_url);
        let p = spawn(
            &lab,
            &format!("agent-{node}"),
            Some(node),
            fabric.netns_name(node)?,
            &argv,
        )?;
        rec.replace(p);
        {
            let argv = vec![
                exe.clone(),
                "kubelet".into(),
                "--lab".into(),
                lab.clone(),
                "--node".into(),
                node.clone(),
                "--etcd".into(),
                etcd_url.clone(),
            ];
            let p = spawn(
                &lab,
                &format!("kubelet-{node}"),
                Some(node),
                fabric.netns_name(node)?,
                &argv,
            )?;
            rec.replace(p);
        }
        rec.save()?;
    }
    for node in &nodes {
        let p = rec
            .process(&format!("agent-{node}"))
            .cloned()
            .ok_or_else(|| cerr(&lab, "agents", format!("no agent record for {node}")))?;
        wait_agent(&lab, &p, opts.timeout)?;
        progress(&format!("✓ agent       {node} (pid {})", p.pid));
    }
    wait_nodes_ready(&rec, &nodes, opts.timeout, progress)?;
    start_lab_resolver(fabric, &mut rec, &exe, progress)?;
    // A component that crashed after its readiness check fails `up` too.
    std::thread::sleep(Duration::from_millis(500));
    if let Some(p) = rec.processes.iter().find(|p| !p.alive()) {
        return Err(died(&lab, p));
    }
    Ok(rec)
}

/// The lab's "internet" resolver: `fibril dns --lab-upstream` on the router
/// (a test zone, NXDOMAIN for everything else, so nothing leaves the lab),
/// and per node a `resolv.conf` naming the router's address on that node's
/// subnet, which the kubelet gives `dnsPolicy: Default` pods (CoreDNS
/// forwards there).
fn start_lab_resolver(
    fabric: &Fabric,
    rec: &mut ClusterRecord,
    exe: &str,
    progress: &mut dyn FnMut(&str),
) -> LabResult<()> {
    let lab = fabric.lab().to_string();
    let Some(router) = fabric.topology().router.clone() else {
        return Ok(());
    };
    for node in &fabric.topology().nodes {
        let Some(ns_ip) = node.interfaces.iter().find_map(|i| {
            router
                .interfaces
                .iter()
                .find(|r| r.network == i.network)
                .map(|r| r.address)
        }) else {
            continue;
        };
        let dir = paths::node_dir(&lab, &node.name);
        fs::create_dir_all(&dir)
            .and_then(|_| fs::write(dir.join("resolv.conf"), format!("nameserver {ns_ip}\n")))
            .map_err(|e| cerr(&lab, "node resolv.conf", format!("{}: {e}", dir.display())))?;
    }
    let zone_dir = crate::state::lab_dir(&lab).join("upstream-dns");
    let argv = vec![
        exe.to_string(),
        "dns".into(),
        "--lab-upstream".into(),
        zone_dir.to_string_lossy().into_owned(),
    ];
    let p = spawn(
        &lab,
        "router-dns",
        None,
        fabric.netns_name(&router.name)?,
        &argv,
    )?;
    rec.replace(p.clone());
    rec.save()?;
    progress(&format!(
        "✓ router-dns  {} port 53 (pid {})",
        router.name, p.pid
    ));
    Ok(())
}

/// The cluster DNS add-on `lab up` applies (CoreDNS Deployment, its
/// Corefile, the `kube-dns` Service), with the topology's DNS service IP.
pub fn cluster_dns_manifest(topology: &crate::Topology) -> String {
    include_str!("../../../lab/manifests/coredns.yaml")
        .replace("10.96.0.10", &topology.cluster.dns_service_ip.to_string())
}

fn agent_argv(exe: &str, lab: &str, netns: &str, node: &str, etcd_url: &str) -> Vec<String> {
    vec![
        exe.to_string(),
        "agent".into(),
        "--node".into(),
        node.to_string(),
        "--netns".into(),
        netns.to_string(),
        "--run-dir".into(),
        paths::node_dir(lab, node).to_string_lossy().into_owned(),
        "--pin-dir".into(),
        paths::node_pin_dir(lab, node)
            .to_string_lossy()
            .into_owned(),
        "--etcd".into(),
        etcd_url.to_string(),
    ]
}

/// Starts `argv` inside `netns`, in its own session, output appended to
/// the component's log.
fn spawn(
    lab: &str,
    component: &str,
    node: Option<&str>,
    netns: &str,
    argv: &[String],
) -> LabResult<ClusterProcess> {
    let log = paths::log_file(lab, component);
    let open_log = || {
        File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| LabError::State {
                path: log.clone(),
                source,
            })
    };
    let (out, errf) = (open_log()?, open_log()?);
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| cerr(lab, format!("start {component}"), "empty command"))?;
    let ns =
        NetNs::open(netns).map_err(|e| cerr(lab, format!("start {component}"), e.to_string()))?;
    let mut cmd = ns
        .command(program)
        .map_err(|e| cerr(lab, format!("start {component}"), e.to_string()))?;
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(errf);
    // Inherited ETCD_* variables would override etcd's flags.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(k);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // Plain log files, no terminal colour codes.
    cmd.env("NO_COLOR", "1");
    // SAFETY: runs in the forked child before exec; setsid(2) is
    // async-signal-safe. A new session keeps Ctrl-C of the CLI's terminal
    // away from the lab processes.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LabError::Exec {
        lab: lab.to_string(),
        host: netns.to_string(),
        command: argv.join(" "),
        source,
    })?;
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    // The child is not waited for: it outlives this process (init reaps it).
    drop(child);
    let start_time = proc_start_time(pid).unwrap_or_default();
    tracing::info!(lab, component, pid, netns, "started lab process");
    Ok(ClusterProcess {
        component: component.to_string(),
        node: node.map(str::to_string),
        netns: netns.to_string(),
        argv: argv.to_vec(),
        pid,
        start_time,
        log,
    })
}

/// Last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = read_log(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        // Only the last 256 KiB matter for readiness markers and tails.
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    s
}

fn died(lab: &str, p: &ClusterProcess) -> LabError {
    cerr(
        lab,
        format!("start {}", p.component),
        format!(
            "exited; last lines of {}:\n{}",
            p.log.display(),
            log_tail(&p.log, 20)
        ),
    )
}

/// Polls `ready` until true; fails when the process dies or time runs out.
fn wait_for(
    lab: &str,
    p: &ClusterProcess,
    timeout: Duration,
    mut ready: impl FnMut() -> LabResult<bool>,
) -> LabResult<()> {
    let start = Instant::now();
    loop {
        if ready()? {
            return Ok(());
        }
        if !p.alive() {
            return Err(died(lab, p));
        }
        if start.elapsed() > timeout {
            return Err(cerr(
                lab,
                format!("start {}", p.component),
                format!(
                    "not ready after {:?}; last lines of {}:\n{}",
                    timeout,
                    p.log.display(),
                    log_tail(&p.log, 20)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /v1/healthz` on an agent socket: true on 200.
pub fn agent_healthy(socket: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v1/healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1) == Some("200")
}

fn wait_agent(lab: &str, p: &ClusterProcess, timeout: Duration) -> LabResult<()> {
    let node = p.node.clone().unwrap_or_default();
    let sock = paths::agent_socket(lab, &node);
    wait_for(lab, p, timeout, || Ok(agent_healthy(&sock)))
}

fn wait_nodes_ready(
    rec: &ClusterRecord,
    nodes: &[String],
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> LabResult<()> {
    let start = Instant::now();
    let mut reported: Vec<String> = Vec::new();
    loop {
        let ready = with_store(rec, |store| async move {
            use fibril_store::StoreExt;
            let list = store
                .list_as::<fibril_api::Node>(None)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<Vec<String>, String>(
                list.items
                    .iter()
                    .filter(|n| node_ready(n))
                    .filter_map(|n| n.metadata.name.clone())
                    .collect(),
            )
        })?
        .unwrap_or_default();
        for n in nodes {
            if ready.contains(n) && !reported.contains(n) {
                progress(&format!("✓ node        {n} Ready"));
                reported.push(n.clone());
            }
        }
        if nodes.iter().all(|n| ready.contains(n)) {
            return Ok(());
        }
        for p in &rec.processes {
            if p.component.starts_with("kubelet-") && !p.alive() {
                return Err(died(&rec.lab, p));
            }
        }
        if start.elapsed() > timeout {
            let missing: Vec<&String> = nodes.iter().filter(|n| !ready.contains(n)).collect();
            let mut detail = format!("nodes not Ready after {timeout:?}: {missing:?}");
            for n in missing {
                let log = paths::log_file(&rec.lab, &format!("kubelet-{n}"));
                detail.push_str(&format!(
                    "\nlast lines of {}:\n{}",
                    log.display(),
                    log_tail(&log, 10)
                ));
            }
            return Err(cerr(&rec.lab, "wait for nodes", detail));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Whether a Node has condition Ready=True.
pub fn node_ready(n: &fibril_api::Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Stops every recorded process of `lab`'s cluster (agents and kubelets
/// first, etcd last): SIGTERM, then SIGKILL after 5 s. Returns their PIDs.
pub fn stop(lab: &str) -> Vec<i32> {
    let Ok(Some(rec)) = ClusterRecord::load(lab) else {
        return Vec::new();
    };
    let order = |p: &ClusterProcess| match p.component.as_str() {
        "etcd" => 2,
        "operator" | "controller" => 1,
        _ => 0,
    };
    let mut killed = Vec::new();
    for stage in 0..3 {
        let procs: Vec<&ClusterProcess> = rec
            .processes
            .iter()
            .filter(|p| order(p) == stage && p.alive())
            .collect();
        for p in &procs {
            signal(p, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while procs.iter().any(|p| p.alive()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in procs.iter().filter(|p| p.alive()) {
            tracing::warn!(lab, component = %p.component, pid = p.pid, "ignored SIGTERM, killing it");
            signal(p, nix::sys::signal::Signal::SIGKILL);
        }
        killed.extend(procs.iter().map(|p| p.pid));
    }
    killed
}

fn signal(p: &ClusterProcess, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig);
}

/// Stops one process and waits until it is gone (SIGKILL after 5 s).
fn stop_one(p: &ClusterProcess) {
    if !p.alive() {
        return;
    }
    signal(p, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if p.alive() {
        signal(p, nix::sys::signal::Signal::SIGKILL);
        while p.alive() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Restarts `component` with the same argv and waits until it is ready
/// (agents: healthz). Updates `cluster.json`.
pub fn restart_component(
    lab: &str,
    component: &str,
    timeout: Duration,
) -> LabResult<ClusterProcess> {
    let _lock = crate::state::LabLock::acquire(lab)?;
    let mut rec = ClusterRecord::require(lab)?;
    let old = rec
        .process(component)
        .cloned()
        .ok_or_else(|| cerr(lab, format!("restart {component}"), "no such lab process"))?;
    stop_one(&old);
    let new = spawn(lab, component, old.node.as_deref(), &old.netns, &old.argv)?;
    rec.replace(new.clone());
    rec.save()?;
    if component.starts_with("agent-") {
        wait_agent(lab, &new, timeout)?;
    } else {
        std::thread::sleep(Duration::from_millis(300));
        if !new.alive() {
            return Err(died(lab, &new));
        }
    }
    Ok(new)
}

/// Restarts every agent, one at a time (`rollout restart ds/fibril`).
pub fn rollout_agents(
    lab: &str,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> LabResult<()> {
    let rec = ClusterRecord::require(lab)?;
    let agents: Vec<String> = rec
        .processes
        .iter()
        .filter(|p| p.component.starts_with("agent-"))
        .map(|p| p.component.clone())
        .collect();
    for a in agents {
        let p = restart_component(lab, &a, timeout)?;
        progress(&format!("✓ {a} restarted (pid {}), healthy", p.pid));
    }
    Ok(())
}

/// `lab upgrade --set ...`: validates the stored config with `sets` applied,
/// stores it, restarts the operator and the controller, then the agents one
/// at a time.
pub fn upgrade(
    lab: &str,
    sets: &[String],
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> LabResult<Config> {
    let mut rec = ClusterRecord::require(lab)?;
    let sets_owned = sets.to_vec();
    let config = with_store(&rec, move |store| async move {
        let mut config = match fibril_config::store::load(store.as_ref()).await {
            Ok(Some((c, _))) => c,
            Ok(None) => Config::default(),
            Err(e) => return Err(e.to_string()),
        };
        config.apply_sets(&sets_owned).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        fibril_config::store::save(store.as_ref(), &config)
            .await
            .map_err(|e| e.to_string())?;
        Ok(config)
    })?
    .map_err(|e| cerr(lab, "upgrade the configuration", e))?;
    rec.sets.extend(sets.iter().cloned());
    rec.config = config.to_flat_map();
    rec.save()?;
    progress("✓ config      stored");
    // The control plane reads the config at start (the controller: service
    // CIDR, LB pool), so it restarts too.
    for c in ["operator", "controller"] {
        if rec.process(c).is_some() {
            let p = restart_component(lab, c, timeout)?;
            progress(&format!("✓ {c} restarted (pid {})", p.pid));
        }
    }
    rollout_agents(lab, timeout, progress)?;
    Ok(config)
}

/// Enters the network namespace `netns` on the calling thread.
pub fn enter_netns(netns: &str) -> io::Result<()> {
    let f = File::open(fibril_netlink::netns_path(netns))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// For CLI commands: moves the calling thread into `lab`'s control-plane
/// namespace and builds a multi-threaded tokio runtime there (its threads
/// inherit the namespace). Call it on the main thread before any other
/// thread or runtime exists; then `rt.block_on(connect(&rec))`.
pub fn enter_and_runtime(lab: &str) -> LabResult<(tokio::runtime::Runtime, ClusterRecord)> {
    let rec = ClusterRecord::require(lab)?;
    enter_netns(&rec.control_plane_netns).map_err(|e| {
        cerr(
            lab,
            format!("enter netns {}", rec.control_plane_netns),
            e.to_string(),
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| cerr(lab, "start the async runtime", e.to_string()))?;
    Ok((rt, rec))
}

/// Connects to the lab's etcd (call inside the control-plane namespace:
/// see [`enter_and_runtime`]).
pub async fn connect(rec: &ClusterRecord) -> LabResult<SharedStore> {
    let opts = EtcdStoreOptions {
        retry_for: Duration::from_secs(10),
        ..EtcdStoreOptions::default()
    };
    let store = EtcdStore::connect(vec![rec.etcd_url.clone()], opts)
        .await
        .map_err(|e| {
            cerr(
                &rec.lab,
                format!("connect to etcd {}", rec.etcd_url),
                e.to_string(),
            )
        })?;
    Ok(Arc::new(store))
}

/// Runs `f` with a store connection on a helper thread inside the
/// control-plane namespace (the calling thread stays where it is).
pub fn with_store<T, F, Fut>(rec: &ClusterRecord, f: F) -> LabResult<T>
where
    T: Send + 'static,
    F: FnOnce(SharedStore) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let rec = rec.clone();
    let lab = rec.lab.clone();
    std::thread::spawn(move || -> LabResult<T> {
        enter_netns(&rec.control_plane_netns).map_err(|e| {
            cerr(
                &rec.lab,
                format!("enter netns {}", rec.control_plane_netns),
                e.to_string(),
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| cerr(&rec.lab, "start the async runtime", e.to_string()))?;
        rt.block_on(async {
            let store = connect(&rec).await?;
            Ok(f(store).await)
        })
    })
    .join()
    .map_err(|_| cerr(&lab, "store access", "helper thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_lookup() {
        let rec = ClusterRecord {
            lab: "t".into(),
            etcd_url: "http://192.168.10.100:2379".into(),
            control_plane: "k8s-ctr".into(),
            control_plane_netns: "fl-t-k8s-ctr".into(),
            sets: vec!["ipam.mode=kubernetes".into()],
            config: BTreeMap::from([("ipam".to_string(), "kubernetes".to_string())]),
            processes: vec![ClusterProcess {
                component: "etcd".into(),
                node: None,
                netns: "fl-t-k8s-ctr".into(),
                argv: vec!["/usr/bin/etcd".into()],
                pid: i32::MAX,
                start_time: 1,
                log: PathBuf::from("/x.log"),
            }],
        };
        let text = serde_json::to_string(&rec).unwrap();
        let back: ClusterRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rec);
        assert!(back.process("etcd").is_some());
        assert!(!back.process("etcd").unwrap().alive());
    }

    #[test]
    fn tails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        fs::write(&p, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&p, 2), "3\n4");
        assert_eq!(log_tail(&dir.path().join("none"), 2), "");
    }
}
