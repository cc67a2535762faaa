//! Pod sandboxes: the pod's network namespace, the CNI plugin run as a real
//! process (CNI protocol: `CNI_*` environment, config on stdin, result on
//! stdout), and the workload process started inside the pod's network, UTS
//! and mount namespaces.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fibril_netlink::{NetNs, NetlinkError};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::error::{KubeletError, Result};

/// Name of the CNI network and plugin type the pod runner configures.
pub const CNI_NETWORK: &str = "fibril";
pub const CNI_TYPE: &str = "fibril-cni";

/// A failed CNI call, as the plugin reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniFailure {
    pub code: u64,
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for CniFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// Runs the `fibril-cni` plugin of a lab for one node.
#[derive(Debug, Clone)]
pub struct Cni {
    /// `CNI_PATH` (holds the `fibril-cni` link).
    pub bin_dir: PathBuf,
    /// The node agent's socket (`agentSocket` in the network config).
    pub agent_socket: PathBuf,
}

/// One pod as the CNI plugin needs it.
#[derive(Debug, Clone)]
pub struct CniPod<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// `/run/netns/<name>`; `None` for a DEL whose namespace is gone.
    pub netns_path: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
}

impl Cni {
    /// Makes sure `bin_dir/fibril-cni` is a link to `exe` (atomically
    /// replaced, since every node's pod runner of the lab shares it).
    pub fn ensure_plugin(&self, exe: &Path) -> Result<()> {
        std::fs::create_dir_all(&self.bin_dir)
            .map_err(|e| KubeletError::io(&self.bin_dir, "create", e))?;
        let link = self.bin_dir.join(CNI_TYPE);
        if std::fs::read_link(&link).ok().as_deref() == Some(exe) {
            return Ok(());
        }
        // Unique per call: pod runners of several nodes may share a process
        // (tests) as well as the directory.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .bin_dir
            .join(format!(".{CNI_TYPE}.{}.{seq}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(exe, &tmp).map_err(|e| KubeletError::io(&tmp, "symlink", e))?;
        std::fs::rename(&tmp, &link).map_err(|e| KubeletError::io(&link, "rename", e))
    }

    fn conf(&self, labels: &BTreeMap<String, String>) -> Value {
        let labels: Vec<Value> = labels
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        json!({
            "cniVersion": "1.1.0",
            "name": CNI_NETWORK,
            "type": CNI_TYPE,
            "agentSocket": self.agent_socket,
            "args": {"cni": {"labels": labels}},
        })
    }

    /// Runs the plugin with `command` (`ADD`, `DEL`); the parsed stdout on
    /// success (`Null` when it printed nothing).
    pub async fn call(
        &self,
        command: &str,
        pod: &CniPod<'_>,
    ) -> std::result::Result<Value, CniFailure> {
        let plugin = self.bin_dir.join(CNI_TYPE);
        let mut cmd = tokio::process::Command::new(&plugin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.container_id)
            .env("CNI_NETNS", pod.netns_path.unwrap_or(""))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.bin_dir)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.namespace, pod.name, pod.container_id
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let exec_fail = |e: String| CniFailure {
            code: 0,
            msg: format!("exec {}: {e}", plugin.display()),
            details: String::new(),
        };
        let mut child = cmd.spawn().map_err(|e| exec_fail(e.to_string()))?;
        let conf = self.conf(pod.labels).to_string();
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.as_bytes())
                .await
                .map_err(|e| exec_fail(format!("write config: {e}")))?;
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| exec_fail("timed out after 60s".into()))?
            .map_err(|e| exec_fail(e.to_string()))?;
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success() {
            return Ok(parsed);
        }
        Err(CniFailure {
            code: parsed.get("code").and_then(Value::as_u64).unwrap_or(0),
            msg: parsed
                .get("msg")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "{} exited with {}: {}",
                        CNI_TYPE,
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                }),
            details: parsed
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// The pod's IPv4 address in a CNI result (`ips[0].address`, prefix dropped).
pub fn result_ip(result: &Value) -> Option<String> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .next()
}

/// Creates the pod's network namespace (replacing a stale one of the same
/// name, left by a crash) with `lo` up.
pub fn create_netns(name: &str) -> Result<()> {
    let ns_err = |source: NetlinkError| KubeletError::Netns {
        netns: name.to_string(),
        source: Box::new(source),
    };
    let ns = match NetNs::create(name) {
        Ok(ns) => ns,
        Err(NetlinkError::NetnsExists { .. }) => {
            NetNs::delete_by_name(name).map_err(ns_err)?;
            NetNs::create(name).map_err(ns_err)?
        }
        Err(e) => return Err(ns_err(e)),
    };
    ns.netlink().and_then(|nl| nl.set_up("lo")).map_err(ns_err)
}

/// Deletes the pod's network namespace (missing is fine).
pub fn delete_netns(name: &str) -> Result<()> {
    NetNs::delete_by_name(name).map_err(|source| KubeletError::Netns {
        netns: name.to_string(),
        source: Box::new(source),
    })
}

/// The per-pod resolv.conf of a `ClusterFirst` pod.
pub fn resolv_conf(namespace: &str, dns_ip: std::net::Ipv4Addr) -> String {
    format!(
        "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {dns_ip}\noptions ndots:5\n"
    )
}

/// The per-pod /etc/hosts (as kubelet writes it).
pub fn hosts_file(ip: &str, hostname: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{ip}\t{hostname}\n"
    )
}

/// What to start inside a pod.
#[derive(Debug, Clone)]
pub struct WorkloadSpawn {
    /// The `fibril` binary.
    pub exe: PathBuf,
    /// Arguments of `exe` (`workload KIND -- ARGS` or `dns ...`).
    pub argv: Vec<String>,
    /// Container environment (on top of PATH/HOME/HOSTNAME).
    pub env: Vec<(String, String)>,
    /// Pod network namespace name.
    pub netns: String,
    pub hostname: String,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    pub hosts_file: PathBuf,
    pub log: PathBuf,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Starts `fibril <argv>` (e.g. `workload whoami -- ARGS`) in the pod: the child enters the
/// pod's network namespace, gets new UTS and mount namespaces (hostname =
/// pod name; `/` made recursively private before anything is mounted, so
/// nothing propagates back; resolv.conf, hostname and hosts bind-mounted
/// over `/etc`; the `/run/netns` mounts detached so this pod does not pin
/// other pods' namespaces) and its own session. The root namespaces are
/// never touched: all of it happens in the forked child.
pub fn spawn_workload(spec: &WorkloadSpawn) -> Result<Child> {
    let netns_path = fibril_netlink::netns_path(&spec.netns);
    let netns = File::open(&netns_path).map_err(|e| KubeletError::io(&netns_path, "open", e))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| KubeletError::io(&spec.log, "open", e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| KubeletError::io(&spec.log, "dup", e))?;
    let to_c = |p: &Path| cstr(p).map_err(|e| KubeletError::io(p, "path", e));
    let binds: Vec<(CString, CString, bool)> = vec![
        (
            to_c(&spec.resolv_conf)?,
            to_c(Path::new("/etc/resolv.conf"))?,
            true,
        ),
        (
            to_c(&spec.hostname_file)?,
            to_c(Path::new("/etc/hostname"))?,
            false,
        ),
        (
            to_c(&spec.hosts_file)?,
            to_c(Path::new("/etc/hosts"))?,
            false,
        ),
    ];
    let root = to_c(Path::new("/"))?;
    let run_netns = to_c(Path::new(fibril_netlink::NETNS_DIR))?;
    let hostname = spec.hostname.clone().into_bytes();

    let mut cmd = Command::new(&spec.exe);
    cmd.args(&spec.argv)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        )
        .env("HOME", "/root")
        .env("HOSTNAME", &spec.hostname)
        // Logs go to a file: no terminal colours (tracing honours NO_COLOR).
        .env("NO_COLOR", "1")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY: runs in the forked child before exec; only raw syscalls on
    // data prepared before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r != 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            // Only in this private copy: the pod must not keep other pods'
            // namespaces alive through its mount table.
            libc::umount2(run_netns.as_ptr(), libc::MNT_DETACH);
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            for (src, dst, required) in &binds {
                let r = libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                if r != 0 && *required {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| KubeletError::io(&spec.exe, "spawn workload", e))
}

/// Stops a workload process: SIGTERM, then SIGKILL after `grace`. `pid` is
/// only signalled while its start time is `start_time` (no PID reuse
/// accidents); `child` is reaped if this process is its parent.
pub async fn stop_process(
    pid: i32,
    start_time: u64,
    mut child: Option<&mut Child>,
    grace: Duration,
) {
    let alive = |c: &mut Option<&mut Child>| {
        if let Some(c) = c.as_mut() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return false;
            }
        }
        pid > 0 && fibril_lab::state::proc_start_time(pid) == Some(start_time)
    };
    if !alive(&mut child) {
        return;
    }
    let target = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if !alive(&mut child) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(&mut child) {
        tracing::info!(pid, "workload ignored SIGTERM; SIGKILL");
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        for _ in 0..40 {
            if !alive(&mut child) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
