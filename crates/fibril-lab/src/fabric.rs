//! The netns fabric: builds a topology out of network namespaces and tears
//! it down again.
//!
//! Layout for lab `L`: one namespace per host (`fl-L-<host>`: nodes and the
//! router) and one fabric namespace (`fl-L-fabric`) holding a Linux bridge
//! per subnet (`br-<network>`). Each host interface is a veth created inside
//! the host namespace with its peer created directly inside the fabric
//! namespace and enslaved to the subnet's bridge. The root namespace is never
//! touched; nothing gets a default route.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fibril_netlink::{list_netns, netns_exists, NetNs, Netlink, NetlinkError, Route};
use ipnet::{IpNet, Ipv4Net};

use crate::error::{LabError, LabResult};
use crate::state::{
    lab_dir, lab_names_on_disk, netns_prefix, remove_lab_dir, validate_lab_name, LabLock, LabState,
    NsRecord, LABS_DIR,
};
use crate::topology::{HostKind, Topology, FABRIC_HOST};

/// Default lab name.
pub const DEFAULT_LAB: &str = "fibril";

/// Bridge name of network `net` in the fabric namespace.
pub fn bridge_name(net: &str) -> String {
    format!("br-{net}")
}

/// Namespace name of `host` in lab `lab`.
pub fn netns_name(lab: &str, host: &str) -> String {
    format!("{}{host}", netns_prefix(lab))
}

/// A running lab. Dropping it leaves the lab running (the CLI relies on
/// that); use [`Fabric::down`] or a [`FabricGuard`] to remove it.
#[derive(Debug, Clone)]
pub struct Fabric {
    state: LabState,
}

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DownReport {
    pub lab: String,
    pub namespaces: Vec<String>,
    pub killed_pids: Vec<i32>,
    pub state_removed: bool,
}

/// One host (or the fabric) in [`LabStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostStatus {
    pub host: String,
    /// `None` for the fabric namespace and extra namespaces.
    pub kind: Option<HostKind>,
    /// Made after `up` by [`Fabric::create_netns`].
    pub extra: bool,
    pub netns: String,
    pub present: bool,
    /// Live IPv4 addresses (interface, address), `lo` excluded.
    pub addresses: Vec<(String, Ipv4Net)>,
    /// Live links (name), `lo` excluded.
    pub links: Vec<String>,
}

/// What `status` reports per lab.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabStatus {
    pub lab: String,
    /// Topology name, if the state file is readable.
    pub topology: Option<String>,
    pub created_at: Option<u64>,
    /// True when `up` finished and every namespace exists.
    pub healthy: bool,
    pub hosts: Vec<HostStatus>,
    /// Namespaces with the lab's prefix that the state does not list.
    pub stray_namespaces: Vec<String>,
    /// The lab cluster (`cluster.json`), when `up` started one.
    pub cluster: Option<crate::cluster::ClusterRecord>,
}

fn nl_err(lab: &str, step: impl Into<String>) -> impl FnOnce(NetlinkError) -> LabError {
    let lab = lab.to_string();
    let step = step.into();
    move |source| LabError::Netlink {
        lab,
        step,
        source: Box::new(source),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Namespaces under `/run/netns` carrying the lab's prefix.
fn prefixed_namespaces(lab: &str) -> LabResult<Vec<String>> {
    let prefix = netns_prefix(lab);
    Ok(list_netns()
        .map_err(nl_err(lab, "list namespaces"))?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect())
}

impl Fabric {
    /// Builds `topology` as lab `lab`. Fails with [`LabError::AlreadyRunning`]
    /// if that lab is up; a half-built or crashed lab of that name is removed
    /// first. On failure everything created so far is removed again.
    pub fn up(topology: &Topology, lab: &str) -> LabResult<Fabric> {
        Self::up_with_progress(topology, lab, &mut |_| {})
    }

    /// [`Fabric::up`] returning a guard that tears the lab down on drop (tests).
    pub fn up_guarded(topology: &Topology, lab: &str) -> LabResult<FabricGuard> {
        Self::up(topology, lab).map(Fabric::into_guard)
    }

    /// [`Fabric::up`], calling `progress` with one human-readable line per step.
    pub fn up_with_progress(
        topology: &Topology,
        lab: &str,
        progress: &mut dyn FnMut(&str),
    ) -> LabResult<Fabric> {
        validate_lab_name(lab)?;
        topology.validate()?;
        let _lock = LabLock::acquire(lab)?;

        let previous = LabState::load(lab);
        let leftovers = prefixed_namespaces(lab)?;
        if let Ok(Some(st)) = &previous {
            let all_present = st.namespaces.iter().all(|r| netns_exists(&r.netns));
            if st.complete && all_present {
                return Err(LabError::AlreadyRunning {
                    lab: lab.to_string(),
                    topology: st.topology.name.clone(),
                    namespaces: st.namespaces.len(),
                });
            }
        }
        let has_state_dir = lab_dir(lab).exists();
        if has_state_dir || !leftovers.is_empty() {
            progress(&format!(
                "cleaning up an incomplete earlier lab {lab} ({} namespaces left)",
                leftovers.len()
            ));
            teardown_locked(lab, false)?;
        }

        let started = Instant::now();
        let mut namespaces = vec![NsRecord {
            host: FABRIC_HOST.to_string(),
            kind: None,
            netns: netns_name(lab, FABRIC_HOST),
        }];
        for h in topology.hosts() {
            namespaces.push(NsRecord {
                host: h.name.to_string(),
                kind: Some(h.kind),
                netns: netns_name(lab, h.name),
            });
        }
        let mut state = LabState {
            lab: lab.to_string(),
            topology: topology.clone(),
            namespaces,
            created_at: now_unix(),
            complete: false,
            pid: std::process::id(),
            extra_namespaces: Vec::new(),
            processes: Vec::new(),
        };
        state.save()?;

        let built = build(&state, progress).and_then(|()| {
            state.complete = true;
            state.save()
        });
        match built {
            Ok(()) => {
                let plural =
                    |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                progress(&format!(
                    "lab {lab} is up: topology {}, {}, {} ({} ms)",
                    topology.name,
                    plural(topology.hosts().len(), "host"),
                    plural(topology.networks.len(), "network"),
                    started.elapsed().as_millis()
                ));
                tracing::info!(lab, topology = %topology.name, "lab up");
                Ok(Fabric { state })
            }
            Err(e) => {
                tracing::warn!(lab, error = %e, "lab up failed; removing what was built");
                if let Err(e2) = teardown_locked(lab, true) {
                    tracing::error!(lab, error = %e2, "cleanup after failed lab up");
                }
                Err(e)
            }
        }
    }

    /// The running lab `lab` (from its state file).
    pub fn attach(lab: &str) -> LabResult<Fabric> {
        validate_lab_name(lab)?;
        match LabState::load(lab)? {
            Some(state) => Ok(Fabric { state }),
            None => Err(LabError::NotRunning {
                lab: lab.to_string(),
                dir: lab_dir(lab),
            }),
        }
    }

    /// Tears this lab down (see [`down`]).
    pub fn down(self) -> LabResult<DownReport> {
        down(&self.state.lab)
    }

    /// Wraps the lab in a guard that tears it down when dropped.
    pub fn into_guard(self) -> FabricGuard {
        FabricGuard { fabric: Some(self) }
    }

    /// Lab name.
    pub fn lab(&self) -> &str {
        &self.state.lab
    }

    /// The topology the lab was built from.
    pub fn topology(&self) -> &Topology {
        &self.state.topology
    }

    /// The recorded state.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Host names: nodes in topology order, then the router.
    pub fn hosts(&self) -> Vec<String> {
        self.state
            .topology
            .hosts()
            .iter()
            .map(|h| h.name.to_string())
            .collect()
    }

    /// Names of the nodes (router excluded).
    pub fn nodes(&self) -> Vec<String> {
        self.state
            .topology
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// Namespace name of `host` (a node, the router, or `fabric`).
    pub fn netns_name(&self, host: &str) -> LabResult<&str> {
        self.state
            .netns_of(host)
            .ok_or_else(|| LabError::UnknownHost {
                lab: self.state.lab.clone(),
                host: host.to_string(),
                known: self.hosts().join(", "),
            })
    }

    /// Namespace of `host` (a node, the router, or `fabric`).
    pub fn netns_of(&self, host: &str) -> LabResult<NetNs> {
        let name = self.netns_name(host)?;
        NetNs::open(name).map_err(nl_err(&self.state.lab, format!("open netns of {host}")))
    }

    /// Node IP of `host` (address of its first interface).
    pub fn node_ip(&self, host: &str) -> Option<Ipv4Addr> {
        self.state.topology.node_ip(host)
    }

    /// rtnetlink session inside `host`'s namespace.
    pub fn netlink(&self, host: &str) -> LabResult<Netlink> {
        self.netns_of(host)?
            .netlink()
            .map_err(nl_err(&self.state.lab, format!("netlink in {host}")))
    }

    /// A [`Command`] that runs inside `host`'s namespace (entered with setns).
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> LabResult<Command> {
        self.netns_of(host)?.command(program).map_err(nl_err(
            &self.state.lab,
            format!("prepare command in {host}"),
        ))
    }

    /// Runs `argv` inside `host`'s namespace and collects its output.
    pub fn exec<S: AsRef<OsStr>>(&self, host: &str, argv: &[S]) -> LabResult<Output> {
        let cmdline = argv
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let (program, args) = argv.split_first().ok_or_else(|| LabError::Exec {
            lab: self.state.lab.clone(),
            host: host.to_string(),
            command: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let mut cmd = self.command(host, program)?;
        cmd.args(args);
        cmd.output().map_err(|source| LabError::Exec {
            lab: self.state.lab.clone(),
            host: host.to_string(),
            command: cmdline,
            source,
        })
    }
}

impl Fabric {
    /// Prefix of every namespace of this lab (`fl-<lab>-`).
    pub fn netns_prefix(&self) -> String {
        netns_prefix(&self.state.lab)
    }

    /// Creates an extra namespace `fl-<lab>-<suffix>` (e.g. a pod's), recorded
    /// in the lab state so `status` lists it and `down` removes it.
    pub fn create_netns(&mut self, suffix: &str) -> LabResult<NetNs> {
        let lab = self.state.lab.clone();
        let name = netns_name(&lab, suffix);
        if self.state.namespaces.iter().any(|r| r.netns == name) {
            return Err(LabError::from(
                crate::topology::TopologyError::InvalidName {
                    at: "create_netns".into(),
                    kind: "namespace",
                    name,
                    reason: "collides with a lab host namespace".into(),
                },
            ));
        }
        let _lock = LabLock::acquire(&lab)?;
        let ns = NetNs::create(&name).map_err(nl_err(&lab, format!("create netns {name}")))?;
        self.update_state(|st| {
            if !st.extra_namespaces.contains(&name) {
                st.extra_namespaces.push(name.clone());
            }
        })?;
        Ok(ns)
    }

    /// Deletes an extra namespace made by [`Fabric::create_netns`], stopping
    /// processes inside it first.
    pub fn delete_netns(&mut self, suffix: &str) -> LabResult<()> {
        let lab = self.state.lab.clone();
        let name = netns_name(&lab, suffix);
        let _lock = LabLock::acquire(&lab)?;
        if let Ok(ns) = NetNs::open(&name) {
            kill_processes_in(&ns).map_err(nl_err(&lab, format!("stop processes in {name}")))?;
        }
        NetNs::delete_by_name(&name).map_err(nl_err(&lab, format!("delete netns {name}")))?;
        self.update_state(|st| st.extra_namespaces.retain(|n| *n != name))
    }

    /// Records a process (running anywhere) that `down` must stop.
    pub fn track_process(&mut self, name: &str, pid: i32) -> LabResult<()> {
        let start_time = crate::state::proc_start_time(pid).ok_or_else(|| LabError::Exec {
            lab: self.state.lab.clone(),
            host: "-".into(),
            command: format!("track process {name} (pid {pid})"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such process"),
        })?;
        let _lock = LabLock::acquire(&self.state.lab)?;
        self.update_state(|st| {
            st.processes.retain(|p| p.pid != pid);
            st.processes.push(crate::state::ProcRecord {
                name: name.to_string(),
                pid,
                start_time,
            });
        })
    }

    /// Re-reads the state file, applies `f`, saves it (lock held by caller).
    fn update_state(&mut self, f: impl FnOnce(&mut LabState)) -> LabResult<()> {
        let mut st = LabState::load(&self.state.lab)?.unwrap_or_else(|| self.state.clone());
        f(&mut st);
        st.save()?;
        self.state = st;
        Ok(())
    }
}

/// Owns a lab and removes it on drop (never panics; failures are logged).
#[derive(Debug)]
pub struct FabricGuard {
    fabric: Option<Fabric>,
}

impl FabricGuard {
    /// Tears down now and reports errors (instead of logging them on drop).
    pub fn down(mut self) -> LabResult<DownReport> {
        match self.fabric.take() {
            Some(f) => f.down(),
            None => Ok(DownReport::default()),
        }
    }

    /// Gives up ownership: the lab keeps running after the guard is gone.
    pub fn release(mut self) -> Option<Fabric> {
        self.fabric.take()
    }
}

impl std::ops::Deref for FabricGuard {
    type Target = Fabric;
    fn deref(&self) -> &Fabric {
        // `fabric` is only None after `down`/`release`, which consume self.
        match &self.fabric {
            Some(f) => f,
            None => unreachable!("FabricGuard used after down/release"),
        }
    }
}

impl std::ops::DerefMut for FabricGuard {
    fn deref_mut(&mut self) -> &mut Fabric {
        match &mut self.fabric {
            Some(f) => f,
            None => unreachable!("FabricGuard used after down/release"),
        }
    }
}

impl Drop for FabricGuard {
    fn drop(&mut self) {
        if let Some(f) = self.fabric.take() {
            let lab = f.lab().to_string();
            if let Err(e) = f.down() {
                tracing::error!(lab, error = %e, "FabricGuard: lab teardown failed");
                eprintln!("FabricGuard: teardown of lab {lab} failed: {e}");
            }
        }
    }
}

/// Removes lab `lab`: kills processes inside its namespaces, deletes every
/// namespace with its prefix (so interfaces, bridges and routes go too) and
/// its state directory. Works for half-built and crashed labs; a lab that
/// does not exist at all is [`LabError::NotRunning`].
pub fn down(lab: &str) -> LabResult<DownReport> {
    validate_lab_name(lab)?;
    let lock = LabLock::acquire(lab)?;
    if !lab_dir(lab).exists() && prefixed_namespaces(lab)?.is_empty() {
        drop(lock);
        remove_lock_file(lab);
        return Err(LabError::NotRunning {
            lab: lab.to_string(),
            dir: lab_dir(lab),
        });
    }
    let report = teardown_locked(lab, true);
    drop(lock);
    report
}

fn remove_lock_file(lab: &str) {
    let _ = std::fs::remove_file(std::path::Path::new(LABS_DIR).join(format!("{lab}.lock")));
}

/// Teardown with the lab lock held.
fn teardown_locked(lab: &str, remove_lock: bool) -> LabResult<DownReport> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut tracked = Vec::new();
    if let Ok(Some(st)) = LabState::load(lab) {
        names.extend(st.namespaces.into_iter().map(|r| r.netns));
        names.extend(st.extra_namespaces);
        tracked = st.processes;
    }
    names.extend(prefixed_namespaces(lab)?);
    let mut report = DownReport {
        lab: lab.to_string(),
        ..Default::default()
    };
    let mut failures = Vec::new();
    // Cluster processes first (agents and kubelets, then the control plane,
    // etcd last), so nothing recreates what the steps below remove.
    report.killed_pids.extend(crate::cluster::stop(lab));
    report.killed_pids.extend(kill_tracked(&tracked));
    // Hosts before the fabric: kill workloads first, bridges go last.
    let fabric_ns = netns_name(lab, FABRIC_HOST);
    let mut ordered: Vec<String> = names.iter().filter(|n| **n != fabric_ns).cloned().collect();
    if names.contains(&fabric_ns) {
        ordered.push(fabric_ns);
    }
    for name in &ordered {
        if !netns_exists(name) {
            continue;
        }
        if let Ok(ns) = NetNs::open(name) {
            match kill_processes_in(&ns) {
                Ok(pids) => report.killed_pids.extend(pids),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        match NetNs::delete_by_name(name) {
            Ok(()) => report.namespaces.push(name.clone()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if let Err(e) = remove_pins(lab) {
        failures.push(e);
    }
    if let Err(e) = remove_lab_dir(lab) {
        failures.push(e.to_string());
    } else {
        report.state_removed = true;
    }
    if remove_lock {
        remove_lock_file(lab);
    }
    let left = prefixed_namespaces(lab)?;
    if !left.is_empty() {
        failures.push(format!("namespaces still present: {}", left.join(", ")));
    }
    if failures.is_empty() {
        tracing::info!(lab, namespaces = report.namespaces.len(), "lab down");
        Ok(report)
    } else {
        Err(LabError::Teardown {
            lab: lab.to_string(),
            details: failures.join("; "),
        })
    }
}

/// Removes the lab's bpffs pins (`/sys/fs/bpf/fibril/<lab>`), and the
/// shared root when no other lab uses it.
fn remove_pins(lab: &str) -> Result<(), String> {
    let dir = crate::paths::lab_pin_root(lab);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove {}: {e}", dir.display())),
    }
    // Fails (harmlessly) while another lab still has pins there.
    let _ = std::fs::remove_dir(crate::paths::BPFFS_ROOT);
    Ok(())
}

/// Stops tracked processes that are still the same process (start time matches).
fn kill_tracked(procs: &[crate::state::ProcRecord]) -> Vec<i32> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let me = std::process::id() as i32;
    let same = |p: &crate::state::ProcRecord| {
        p.pid != me && crate::state::proc_start_time(p.pid) == Some(p.start_time)
    };
    let live: Vec<&crate::state::ProcRecord> = procs.iter().filter(|p| same(p)).collect();
    for p in &live {
        tracing::info!(name = %p.name, pid = p.pid, "stopping tracked lab process");
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while live.iter().any(|p| same(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in live.iter().filter(|p| same(p)) {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    live.iter().map(|p| p.pid).collect()
}

/// SIGTERM, then SIGKILL, every process living in `ns` (never ourselves).
fn kill_processes_in(ns: &NetNs) -> Result<Vec<i32>, NetlinkError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let me = std::process::id() as i32;
    let pids: Vec<i32> = ns.pids()?.into_iter().filter(|p| *p != me).collect();
    if pids.is_empty() {
        return Ok(pids);
    }
    tracing::info!(
        netns = ns.name(),
        ?pids,
        "stopping processes inside lab namespace"
    );
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let alive = |pids: &[i32]| -> Vec<i32> {
        let target = ns.inode().ok();
        pids.iter()
            .copied()
            .filter(|p| {
                std::fs::metadata(format!("/proc/{p}/ns/net"))
                    .map(|md| {
                        use std::os::unix::fs::MetadataExt;
                        Some((md.dev(), md.ino())) == target
                    })
                    .unwrap_or(false)
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut remaining = alive(&pids);
    while !remaining.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        remaining = alive(&remaining);
    }
    for &pid in &remaining {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    Ok(pids)
}

/// Creates every namespace, link, address, route and sysctl of the lab.
fn build(state: &LabState, progress: &mut dyn FnMut(&str)) -> LabResult<()> {
    let lab = state.lab.as_str();
    let topo = &state.topology;
    let mtu = Some(topo.mtu);

    // Fabric namespace with one bridge per subnet.
    let fabric_name = netns_name(lab, FABRIC_HOST);
    let fabric = create_ns(lab, &fabric_name)?;
    let fnl = fabric
        .netlink()
        .map_err(nl_err(lab, "netlink in fabric namespace"))?;
    fnl.set_up("lo").map_err(nl_err(lab, "fabric lo up"))?;
    for net in &topo.networks {
        let br = bridge_name(&net.name);
        fnl.add_bridge(&br, mtu)
            .map_err(nl_err(lab, format!("network {}", net.name)))?;
        fnl.set_up(&br)
            .map_err(nl_err(lab, format!("network {}", net.name)))?;
    }
    progress(&format!(
        "fabric   netns {fabric_name}: bridges {}",
        topo.networks
            .iter()
            .map(|n| format!("{} ({})", bridge_name(&n.name), n.cidr))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let mut used_ports: BTreeSet<String> =
        topo.networks.iter().map(|n| bridge_name(&n.name)).collect();
    for (hidx, host) in topo.hosts().iter().enumerate() {
        let ns_name = netns_name(lab, host.name);
        let step = |what: &str| format!("host {}: {what}", host.name);
        let ns = create_ns(lab, &ns_name)?;
        let nl = ns.netlink().map_err(nl_err(lab, step("netlink session")))?;
        nl.set_up("lo").map_err(nl_err(lab, step("lo up")))?;
        ns.set_sysctl("net.ipv4.ip_forward", "1")
            .map_err(nl_err(lab, step("enable ip_forward")))?;

        let mut summary = Vec::new();
        for (iidx, iface) in host.interfaces.iter().enumerate() {
            let mut port = format!("{}-{}", host.name, iface.name);
            if port.len() > 15 || used_ports.contains(&port) {
                port = format!("p{hidx}-{iidx}-{}", iface.name);
                port.truncate(15);
            }
            used_ports.insert(port.clone());
            let net = topo.network(&iface.network).ok_or_else(|| {
                LabError::from(crate::topology::TopologyError::UnknownNetwork {
                    at: format!("{}.interfaces[{iidx}].network", host.at),
                    network: iface.network.clone(),
                    known: String::new(),
                })
            })?;
            let addr = Ipv4Net::new(iface.address, net.cidr.prefix_len()).map_err(|_| {
                LabError::from(crate::topology::TopologyError::Invalid {
                    at: format!("{}.interfaces[{iidx}].address", host.at),
                    message: format!("bad prefix for {}", iface.address),
                })
            })?;
            let istep = format!("host {}: interface {} ({addr})", host.name, iface.name);
            nl.add_veth(&iface.name, &port, Some(&fabric), mtu)
                .map_err(nl_err(lab, &istep))?;
            nl.add_address(&iface.name, IpNet::V4(addr))
                .map_err(nl_err(lab, &istep))?;
            nl.set_up(&iface.name).map_err(nl_err(lab, &istep))?;
            let br = bridge_name(&net.name);
            fnl.set_controller(&port, &br)
                .map_err(nl_err(lab, &istep))?;
            fnl.set_up(&port).map_err(nl_err(lab, &istep))?;
            summary.push(format!("{} {addr} [{}]", iface.name, net.name));
        }
        for lo in host.loopbacks {
            let lstep = format!("host {}: loopback {} ({})", host.name, lo.name, lo.address);
            nl.add_bridge(&lo.name, mtu).map_err(nl_err(lab, &lstep))?;
            nl.add_address(&lo.name, IpNet::V4(lo.address))
                .map_err(nl_err(lab, &lstep))?;
            nl.set_up(&lo.name).map_err(nl_err(lab, &lstep))?;
            summary.push(format!("{} {}", lo.name, lo.address));
        }
        let mut route_lines = Vec::new();
        for r in host.routes {
            let route = Route {
                dst: r.to,
                via: r.via,
                dev: r.dev.clone(),
                onlink: r.onlink,
                src: None,
                table: None,
            };
            nl.add_route(&route)
                .map_err(nl_err(lab, step(&format!("route {route}"))))?;
            route_lines.push(route.to_string());
        }
        progress(&format!(
            "{:<8} netns {ns_name}: {}{}",
            host.name,
            summary.join(", "),
            if route_lines.is_empty() {
                String::new()
            } else {
                format!("; routes {}", route_lines.join(", "))
            }
        ));
    }
    Ok(())
}

fn create_ns(lab: &str, name: &str) -> LabResult<NetNs> {
    let ns = NetNs::create(name).map_err(nl_err(lab, format!("create netns {name}")))?;
    // No IPv6 on the lab underlay: keeps captures free of DAD/MLD/RS noise.
    for key in [
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.disable_ipv6",
    ] {
        if let Err(e) = ns.set_sysctl(key, "1") {
            tracing::debug!(netns = name, error = %e, "could not disable IPv6");
        }
    }
    Ok(ns)
}

/// Status of lab `lab`, or of every lab found (state directories and
/// namespaces with an `fl-<lab>-` prefix) when `None`.
pub fn status(lab: Option<&str>) -> LabResult<Vec<LabStatus>> {
    let mut labs: BTreeSet<String> = BTreeSet::new();
    match lab {
        Some(l) => {
            validate_lab_name(l)?;
            labs.insert(l.to_string());
        }
        None => {
            labs.extend(lab_names_on_disk());
            for ns in list_netns().map_err(nl_err("-", "list namespaces"))? {
                if let Some(rest) = ns.strip_prefix("fl-") {
                    if let Some((l, _)) = rest.split_once('-') {
                        if validate_lab_name(l).is_ok() {
                            labs.insert(l.to_string());
                        }
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for l in labs {
        let st = LabState::load(&l).ok().flatten();
        let present_ns = prefixed_namespaces(&l)?;
        if st.is_none() && present_ns.is_empty() {
            if lab.is_some() {
                return Err(LabError::NotRunning {
                    lab: l.clone(),
                    dir: lab_dir(&l),
                });
            }
            continue;
        }
        let mut hosts = Vec::new();
        let mut listed: BTreeSet<String> = BTreeSet::new();
        if let Some(st) = &st {
            for r in &st.namespaces {
                listed.insert(r.netns.clone());
                let present = netns_exists(&r.netns);
                let (addresses, links) = if present {
                    live_view(&r.netns)
                } else {
                    (Vec::new(), Vec::new())
                };
                hosts.push(HostStatus {
                    host: r.host.clone(),
                    kind: r.kind,
                    extra: false,
                    netns: r.netns.clone(),
                    present,
                    addresses,
                    links,
                });
            }
        }
        let healthy = st
            .as_ref()
            .map(|s| s.complete && hosts.iter().all(|h| h.present))
            .unwrap_or(false);
        if let Some(st) = &st {
            for n in &st.extra_namespaces {
                listed.insert(n.clone());
                let present = netns_exists(n);
                let (addresses, links) = if present {
                    live_view(n)
                } else {
                    (Vec::new(), Vec::new())
                };
                let host = n.strip_prefix(&netns_prefix(&l)).unwrap_or(n).to_string();
                hosts.push(HostStatus {
                    host,
                    kind: None,
                    extra: true,
                    netns: n.clone(),
                    present,
                    addresses,
                    links,
                });
            }
        }
        out.push(LabStatus {
            lab: l.clone(),
            topology: st.as_ref().map(|s| s.topology.name.clone()),
            created_at: st.as_ref().map(|s| s.created_at),
            healthy,
            hosts,
            stray_namespaces: present_ns
                .into_iter()
                .filter(|n| !listed.contains(n))
                .collect(),
            cluster: crate::cluster::ClusterRecord::load(&l).ok().flatten(),
        });
    }
    Ok(out)
}

type LiveView = (Vec<(String, Ipv4Net)>, Vec<String>);

fn live_view(netns: &str) -> LiveView {
    let Ok(nl) = NetNs::open(netns).and_then(|ns| ns.netlink()) else {
        return (Vec::new(), Vec::new());
    };
    let addrs = nl
        .addresses()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.ifname != "lo")
        .filter_map(|a| match a.addr {
            IpNet::V4(v4) => Some((a.ifname, v4)),
            IpNet::V6(_) => None,
        })
        .collect();
    let links = nl
        .links()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.name != "lo")
        .map(|l| l.name)
        .collect();
    (addrs, links)
}
