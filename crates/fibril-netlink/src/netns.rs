//! Named network namespaces, compatible with `ip netns`: a namespace is kept
//! alive by a bind mount of its nsfs file on `/run/netns/NAME`.
//!
//! Namespaces are created from a dedicated thread (`unshare(CLONE_NEWNET)` only
//! moves that thread), and code runs inside a namespace on a dedicated thread
//! that `setns()`es: the calling thread and the root namespace never change.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{NetlinkError, Result};

/// Directory holding the bind mounts of named namespaces (as `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// Serialises the one-time set-up of `/run/netns` as a shared mount point
/// inside this process (iproute2 does the same dance, unsynchronised).
static NETNS_DIR_SETUP: Mutex<()> = Mutex::new(());

/// A named network namespace (`/run/netns/NAME`). Cheap to clone; holds no fd.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetNs {
    name: String,
}

/// Checks that `name` can be a file name under `/run/netns`.
pub fn validate_netns_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 200 {
        Some("longer than 200 characters")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetlinkError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Path of the bind mount for namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// True when `/run/netns/NAME` exists.
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Names of all namespaces under `/run/netns`, sorted.
pub fn list_netns() -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetlinkError::io("-", format!("read {NETNS_DIR}"), e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Makes `/run/netns` exist and be a shared mount point, as `ip netns add`
/// does, so the namespace mounts propagate to other mount namespaces.
fn ensure_netns_dir() -> Result<()> {
    let _guard = NETNS_DIR_SETUP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    fs::create_dir_all(NETNS_DIR)
        .map_err(|e| NetlinkError::io("-", format!("create {NETNS_DIR}"), e))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, NETNS_DIR, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then make it shared.
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| NetlinkError::nix("-", format!("bind-mount {NETNS_DIR}"), e))?;
            mount(None::<&str>, NETNS_DIR, None::<&str>, shared, None::<&str>)
                .map_err(|e| NetlinkError::nix("-", format!("make {NETNS_DIR} shared"), e))
        }
        Err(e) => Err(NetlinkError::nix(
            "-",
            format!("make {NETNS_DIR} shared"),
            e,
        )),
    }
}

impl NetNs {
    /// Creates a new, empty network namespace named `name` (like `ip netns add`).
    /// Fails with [`NetlinkError::NetnsExists`] if the name is taken.
    pub fn create(name: &str) -> Result<NetNs> {
        validate_netns_name(name)?;
        ensure_netns_dir()?;
        let path = netns_path(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetlinkError::NetnsExists {
                    name: name.to_string(),
                })
            }
            Err(e) => {
                return Err(NetlinkError::io(
                    name,
                    format!("create {}", path.display()),
                    e,
                ))
            }
        }
        let thread_path = path.clone();
        let thread_name = name.to_string();
        // A fresh thread that unshares and then exits: the namespace survives
        // through the bind mount, and no other thread ever changes namespace.
        let outcome = std::thread::Builder::new()
            .name(format!("netns-create-{name}"))
            .spawn(move || -> Result<()> {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetlinkError::nix(&thread_name, "unshare(CLONE_NEWNET)", e))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &thread_path,
                    Some("none"),
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| {
                    NetlinkError::nix(
                        &thread_name,
                        format!("bind-mount namespace on {}", thread_path.display()),
                        e,
                    )
                })
            })
            .map_err(|e| NetlinkError::io(name, "spawn namespace thread", e))?
            .join()
            .unwrap_or_else(|_| {
                Err(NetlinkError::ThreadPanicked {
                    ns: name.to_string(),
                    op: "create".into(),
                })
            });
        if let Err(e) = outcome {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        tracing::debug!(netns = name, "created network namespace");
        Ok(NetNs {
            name: name.to_string(),
        })
    }

    /// Refers to an existing namespace; fails if `/run/netns/NAME` is missing.
    pub fn open(name: &str) -> Result<NetNs> {
        validate_netns_name(name)?;
        if !netns_exists(name) {
            return Err(NetlinkError::NetnsNotFound {
                name: name.to_string(),
            });
        }
        Ok(NetNs {
            name: name.to_string(),
        })
    }

    /// Deletes the namespace `name` (like `ip netns del`): unmounts and removes
    /// `/run/netns/NAME`. The kernel frees the namespace and its interfaces once
    /// no process or fd refers to it any more. A missing namespace is not an error.
    pub fn delete_by_name(name: &str) -> Result<()> {
        validate_netns_name(name)?;
        let path = netns_path(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(NetlinkError::nix(
                    name,
                    format!("unmount {}", path.display()),
                    e,
                ))
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NetlinkError::io(
                    name,
                    format!("remove {}", path.display()),
                    e,
                ))
            }
        }
        tracing::debug!(netns = name, "deleted network namespace");
        Ok(())
    }

    /// Deletes this namespace; see [`NetNs::delete_by_name`].
    pub fn delete(self) -> Result<()> {
        Self::delete_by_name(&self.name)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Opens the namespace file (usable with `setns` or `IFLA_NET_NS_FD`).
    pub fn open_file(&self) -> Result<File> {
        let path = self.path();
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                NetlinkError::NetnsNotFound {
                    name: self.name.clone(),
                }
            } else {
                NetlinkError::io(&self.name, format!("open {}", path.display()), e)
            }
        })
    }

    /// (device, inode) of the namespace, to compare with `/proc/PID/ns/net`.
    pub fn inode(&self) -> Result<(u64, u64)> {
        let path = self.path();
        let md = fs::metadata(&path)
            .map_err(|e| NetlinkError::io(&self.name, format!("stat {}", path.display()), e))?;
        Ok((md.dev(), md.ino()))
    }

    /// Runs `f` on a dedicated thread that has entered this namespace, and
    /// returns its result. The calling thread is never moved. Sockets opened
    /// and `/proc/sys/net` files written inside `f` belong to this namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open_file()?;
        let name = self.name.as_str();
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(scope, move || -> Result<R> {
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetlinkError::nix(name, "setns(CLONE_NEWNET)", e))?;
                    Ok(f())
                })
                .map_err(|e| NetlinkError::io(name, "spawn namespace thread", e))?;
            handle.join().unwrap_or_else(|_| {
                Err(NetlinkError::ThreadPanicked {
                    ns: name.to_string(),
                    op: "closure".into(),
                })
            })
        })
    }

    /// A [`Command`] whose child process enters this namespace (`setns`)
    /// before exec. Unlike `ip netns exec` it does not remount `/sys`, so
    /// bpffs and cgroup mounts stay visible.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let file = self.open_file()?;
        let mut cmd = Command::new(program);
        // SAFETY: the pre_exec hook runs in the forked child before exec and
        // only calls setns(2), which is async-signal-safe; `file` is owned by
        // the closure so the fd stays open until the command is dropped.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Writes a sysctl of this namespace, e.g. `set_sysctl("net.ipv4.ip_forward", "1")`
    /// (dots or slashes). Only per-namespace (`net.*`) keys make sense here.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        let ns = self.name.clone();
        let value = value.to_string();
        self.run(move || {
            fs::write(&path, value.as_bytes()).map_err(|e| {
                NetlinkError::io(&ns, format!("write {value:?} to {}", path.display()), e)
            })
        })?
    }

    /// Reads a sysctl of this namespace (trimmed).
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let ns = self.name.clone();
        self.run(move || {
            fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|e| NetlinkError::io(&ns, format!("read {}", path.display()), e))
        })?
    }

    /// PIDs of processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let target = self.inode()?;
        let mut pids = Vec::new();
        let entries =
            fs::read_dir("/proc").map_err(|e| NetlinkError::io(&self.name, "read /proc", e))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // Processes can exit while we scan; ignore them.
            if let Ok(md) = fs::metadata(entry.path().join("ns/net")) {
                if (md.dev(), md.ino()) == target {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = key.trim_start_matches('/').replace('.', "/");
    Path::new("/proc/sys").join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_netns_name("fl-lab-k8s-ctr").is_ok());
        assert!(validate_netns_name("").is_err());
        assert!(validate_netns_name("a/b").is_err());
        assert!(validate_netns_name("..").is_err());
    }

    #[test]
    fn sysctl_keys_map_to_proc() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/all/rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
    }
}
