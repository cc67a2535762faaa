//! The pod record: what the pod runner knows about a running sandbox,
//! persisted as `paths::pods_dir(lab, node)/<ns>_<pod>.json` so a restarted
//! pod runner adopts running pods and `fibril exec` finds a pod's process
//! without the store. Files of one pod sit next to the record:
//! `<ns>_<pod>.{log,resolv.conf,hostname,hosts}`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{KubeletError, Result};

/// One pod sandbox on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    /// `metadata.uid` of the Pod object this sandbox belongs to.
    pub uid: String,
    /// `CNI_CONTAINERID` of the sandbox (stable per pod instance).
    pub container_id: String,
    /// Named network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// PID of the workload process (0: not running).
    pub pid: i32,
    /// Start time of `pid` (field 22 of `/proc/PID/stat`), guards against PID reuse.
    pub pid_start_time: u64,
    /// The pod's IPv4 address from the CNI result.
    pub ip: String,
    /// Hostname inside the pod (the pod name).
    pub hostname: String,
    /// The per-pod resolv.conf bind-mounted over `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// The per-pod hostname file bind-mounted over `/etc/hostname`.
    pub hostname_file: PathBuf,
    /// The per-pod hosts file bind-mounted over `/etc/hosts`.
    #[serde(default)]
    pub hosts_file: PathBuf,
    /// stdout/stderr of the workload.
    pub log: PathBuf,
    /// The node the pod runs on.
    #[serde(default)]
    pub node: String,
    /// Container image the workload was chosen from.
    #[serde(default)]
    pub image: String,
    /// Times the workload was restarted.
    #[serde(default)]
    pub restart_count: i32,
    /// RFC 3339 time the current workload process started.
    #[serde(default)]
    pub started_at: String,
    /// `hostNetwork: true`: the node's namespace, no CNI, nothing to delete.
    #[serde(default)]
    pub host_network: bool,
}

/// `<ns>_<pod>`: the base name of every file of a pod.
pub fn base_name(namespace: &str, pod: &str) -> String {
    format!("{namespace}_{pod}")
}

/// Paths of a pod's files under `dir` (the node's pods dir).
#[derive(Debug, Clone)]
pub struct PodFiles {
    pub record: PathBuf,
    pub log: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
    pub hosts: PathBuf,
}

impl PodFiles {
    pub fn new(dir: &Path, namespace: &str, pod: &str) -> Self {
        let b = base_name(namespace, pod);
        PodFiles {
            record: dir.join(format!("{b}.json")),
            log: dir.join(format!("{b}.log")),
            resolv_conf: dir.join(format!("{b}.resolv.conf")),
            hostname: dir.join(format!("{b}.hostname")),
            hosts: dir.join(format!("{b}.hosts")),
        }
    }

    /// Removes every file of the pod (missing files are fine).
    pub fn remove_all(&self) {
        for p in [
            &self.record,
            &self.log,
            &self.resolv_conf,
            &self.hostname,
            &self.hosts,
        ] {
            let _ = fs::remove_file(p);
        }
    }
}

impl PodRecord {
    /// `true` if the recorded workload process is alive (same start time).
    pub fn is_running(&self) -> bool {
        self.pid > 0 && fibril_lab::state::proc_start_time(self.pid) == Some(self.pid_start_time)
    }

    /// Writes the record atomically (write + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| KubeletError::Record {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text).map_err(|e| KubeletError::io(&tmp, "write", e))?;
        fs::rename(&tmp, path).map_err(|e| KubeletError::io(path, "rename", e))
    }

    /// Reads a record.
    pub fn load(path: &Path) -> Result<PodRecord> {
        let text = fs::read_to_string(path).map_err(|e| KubeletError::io(path, "read", e))?;
        serde_json::from_str(&text).map_err(|e| KubeletError::Record {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// Every record in a node's pods dir (unreadable ones are logged and skipped).
pub fn load_all(dir: &Path) -> Vec<PodRecord> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match PodRecord::load(&p) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "skipping pod record"),
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Finds the record of `namespace/pod` in any node of `lab` (scans
/// `nodes/*/pods/<ns>_<pod>.json`). `Ok(None)` if no node has it.
pub fn find(lab: &str, namespace: &str, pod: &str) -> Result<Option<PodRecord>> {
    let nodes = fibril_lab::state::lab_dir(lab).join("nodes");
    let entries = match fs::read_dir(&nodes) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KubeletError::io(&nodes, "read", e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for node in names {
        let path = PodFiles::new(&fibril_lab::paths::pods_dir(lab, &node), namespace, pod).record;
        if path.exists() {
            return PodRecord::load(&path).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn record_round_trips() {
        let dir = std::env::temp_dir().join(format!("fibril-rec-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let files = PodFiles::new(&dir, "default", "web");
        let r = PodRecord {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            container_id: "c1".into(),
            netns: "fl-x-p-1".into(),
            pid: 1,
            pid_start_time: 2,
            ip: "10.244.0.5".into(),
            hostname: "web".into(),
            resolv_conf: files.resolv_conf.clone(),
            hostname_file: files.hostname.clone(),
            hosts_file: files.hosts.clone(),
            log: files.log.clone(),
            node: "k8s-w1".into(),
            image: "nginx".into(),
            restart_count: 0,
            started_at: String::new(),
            host_network: false,
        };
        r.save(&files.record).unwrap();
        assert_eq!(PodRecord::load(&files.record).unwrap(), r);
        assert_eq!(load_all(&dir), vec![r]);
        files.remove_all();
        let _ = fs::remove_dir(&dir);
    }
}
