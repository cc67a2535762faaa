//! Per-lab state on disk (`/run/fibril/labs/<lab>/state.json`): what a lab
//! created, so `down`, `status` and `exec` work from any process, and a lock
//! file so two `up`/`down` of one lab never interleave.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, LabResult};
use crate::topology::{HostKind, Topology};

/// Root of all lab state directories (on tmpfs: gone after a reboot, like the namespaces).
pub const LABS_DIR: &str = "/run/fibril/labs";

/// Prefix of every namespace of lab `lab`: `fl-<lab>-`.
pub fn netns_prefix(lab: &str) -> String {
    format!("fl-{lab}-")
}

/// Lab names: 1-24 of `[a-z0-9_]`. No `-`, so `fl-<lab>-` prefixes of two
/// labs never match each other's namespaces.
pub fn validate_lab_name(lab: &str) -> LabResult<()> {
    let ok = !lab.is_empty()
        && lab.len() <= 24
        && lab
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidLabName {
            name: lab.to_string(),
        })
    }
}

/// Writes `value` as pretty JSON to `path` through a temporary file and a
/// rename, so a reader never sees half a file.
pub(crate) fn write_json_atomic(path: &Path, value: &impl Serialize) -> LabResult<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value).map_err(|e| LabError::CorruptState {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    fs::write(&tmp, text).map_err(|source| LabError::State {
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, path).map_err(|source| LabError::State {
        path: path.to_path_buf(),
        source,
    })
}

/// State directory of lab `lab`.
pub fn lab_dir(lab: &str) -> PathBuf {
    Path::new(LABS_DIR).join(lab)
}

/// One namespace the lab owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsRecord {
    /// Host name in the topology, or `fabric`.
    pub host: String,
    /// `None` for the fabric namespace.
    pub kind: Option<HostKind>,
    pub netns: String,
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub lab: String,
    pub topology: Topology,
    pub namespaces: Vec<NsRecord>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// False while `up` is still building (or if it crashed half-way).
    pub complete: bool,
    /// PID of the process that ran `up`.
    pub pid: u32,
    /// Namespaces added after `up` (e.g. pods) with [`crate::Fabric::create_netns`].
    #[serde(default)]
    pub extra_namespaces: Vec<String>,
    /// Processes outside the lab namespaces that `down` must stop
    /// ([`crate::Fabric::track_process`]).
    #[serde(default)]
    pub processes: Vec<ProcRecord>,
}

/// A process `down` stops. `start_time` (field 22 of `/proc/PID/stat`)
/// guards against killing an unrelated process that reused the PID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub name: String,
    pub pid: i32,
    pub start_time: u64,
}

/// Start time of `pid` in clock ticks since boot, if it is alive (zombies
/// count as gone: they only wait for their parent to reap them).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')': skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z") | Some("X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl LabState {
    /// Reads `state.json` of `lab`; `Ok(None)` if there is none.
    pub fn load(lab: &str) -> LabResult<Option<LabState>> {
        let path = lab_dir(lab).join("state.json");
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

    /// Writes `state.json` atomically (write + rename).
    pub fn save(&self) -> LabResult<()> {
        let dir = lab_dir(&self.lab);
        fs::create_dir_all(&dir).map_err(|source| LabError::State {
            path: dir.clone(),
            source,
        })?;
        write_json_atomic(&dir.join("state.json"), self)
    }

    /// Namespace of host `host`.
    pub fn netns_of(&self, host: &str) -> Option<&str> {
        self.namespaces
            .iter()
            .find(|r| r.host == host)
            .map(|r| r.netns.as_str())
    }
}

/// Labs that have a state directory, sorted.
pub fn lab_names_on_disk() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(LABS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| validate_lab_name(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Removes the state directory of `lab` (missing is fine).
pub fn remove_lab_dir(lab: &str) -> LabResult<()> {
    let dir = lab_dir(lab);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::State { path: dir, source }),
    }
}

/// Exclusive lock on `/run/fibril/labs/<lab>.lock`, released on drop.
pub struct LabLock {
    _lock: Flock<File>,
}

impl LabLock {
    /// Blocks until the lock of `lab` is ours.
    pub fn acquire(lab: &str) -> LabResult<LabLock> {
        fs::create_dir_all(LABS_DIR).map_err(|source| LabError::State {
            path: PathBuf::from(LABS_DIR),
            source,
        })?;
        let path = Path::new(LABS_DIR).join(format!("{lab}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LabError::State {
                path: path.clone(),
                source,
            })?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| LabError::State {
                path,
                source: io::Error::from(errno),
            })?;
        Ok(LabLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable() {
        let me = std::process::id() as i32;
        let t = proc_start_time(me).unwrap();
        assert_eq!(proc_start_time(me), Some(t));
        assert_eq!(proc_start_time(i32::MAX), None);
    }

    #[test]
    fn lab_names() {
        assert!(validate_lab_name("fibril").is_ok());
        assert!(validate_lab_name("t_1234").is_ok());
        assert!(validate_lab_name("a-b").is_err());
        assert!(validate_lab_name("").is_err());
        assert!(validate_lab_name("UPPER").is_err());
        assert!(validate_lab_name(&"x".repeat(25)).is_err());
        assert_eq!(netns_prefix("fibril"), "fl-fibril-");
    }
}
