//! Running code inside a network namespace.
//!
//! setns(2) on a dedicated thread: the calling thread and the process keep
//! their namespaces, and bpffs stays visible (unlike `ip netns exec`, which
//! remounts /sys).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{DatapathError, Result};

/// Where to run: the caller's namespace or a netns file
/// (`/run/netns/NAME`, `/proc/PID/ns/net`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Netns {
    /// The namespace of the calling thread.
    #[default]
    Current,
    /// A namespace file.
    Path(PathBuf),
}

impl Netns {
    /// `/run/netns/<name>` as created by `ip netns add`.
    pub fn named(name: &str) -> Self {
        Self::Path(Path::new("/run/netns").join(name))
    }

    /// Runs `f` inside the namespace, on a dedicated thread when needed.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        match self {
            Netns::Current => Ok(f()),
            Netns::Path(path) => {
                let file = File::open(path).map_err(|source| DatapathError::Netns {
                    path: path.clone(),
                    source,
                })?;
                std::thread::scope(|s| {
                    s.spawn(|| {
                        // SAFETY: setns on the current (fresh, scoped) thread
                        // with a valid namespace fd; it only changes this
                        // thread's network namespace, and the thread ends
                        // after `f`.
                        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                        if rc != 0 {
                            return Err(DatapathError::Netns {
                                path: path.clone(),
                                source: std::io::Error::last_os_error(),
                            });
                        }
                        Ok(f())
                    })
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
                })
            }
        }
    }
}

/// ifindex of `ifname` in `netns`.
pub fn ifindex(netns: &Netns, ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname).map_err(|_| DatapathError::Config {
        field: "ifname",
        reason: format!("{ifname:?} contains a NUL byte"),
    })?;
    let idx = netns.run(|| {
        // SAFETY: `name` is a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })?;
    if idx == 0 {
        return Err(DatapathError::io(
            format!("interface {ifname} in {netns:?}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(idx)
}
