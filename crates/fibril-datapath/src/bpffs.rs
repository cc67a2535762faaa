//! bpffs preparation: the node's pin directory must live on a bpf
//! filesystem. `/sys/fs/bpf` is mounted (as systemd would) when the
//! directory is below it and nothing is mounted there yet; any other
//! directory gets its own bpffs instance.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{DatapathError, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// True if `path` exists and is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed, properly sized struct; `c` is a valid
    // NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let err = |source| DatapathError::Bpffs {
        path: at.to_path_buf(),
        source,
    };
    let target = CString::new(at.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; no data arg.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    tracing::info!(path = %at.display(), "mounted bpffs");
    if private_mount_namespace() {
        // E.g. under `ip netns exec`, which unshares the mount namespace and
        // remounts /sys: this bpffs dies with the process, and with it the
        // pins that should let programs and maps survive a restart.
        tracing::warn!(
            path = %at.display(),
            "bpffs mounted in a private mount namespace: pins will not outlive this \
             process; enter network namespaces with setns/nsenter --net, not ip netns exec"
        );
    }
    Ok(())
}

/// True if this process runs in another mount namespace than PID 1.
pub fn private_mount_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a != b,
        _ => false,
    }
}

/// Makes sure `dir` exists on bpffs. Returns the mount point this call
/// created, if any (the caller unmounts it when tearing down, except for
/// `/sys/fs/bpf` which is left mounted like on any systemd machine).
pub fn ensure_bpffs(dir: &Path) -> Result<Option<PathBuf>> {
    let sys = Path::new(SYS_FS_BPF);
    let mut mounted = None;
    if dir.starts_with(sys) {
        if !is_bpffs(sys) {
            mount_bpffs(sys)?;
            mounted = Some(sys.to_path_buf());
        }
    } else {
        std::fs::create_dir_all(dir).map_err(|source| DatapathError::Bpffs {
            path: dir.to_path_buf(),
            source,
        })?;
        if !is_bpffs(dir) {
            mount_bpffs(dir)?;
            mounted = Some(dir.to_path_buf());
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| DatapathError::Bpffs {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(mounted)
}

/// Unmounts a bpffs mounted by [`ensure_bpffs`] (lazy, so open pins held by
/// running programs do not block it).
pub fn unmount(at: &Path) -> Result<()> {
    let c = CString::new(at.as_os_str().as_bytes()).map_err(|_| DatapathError::Bpffs {
        path: at.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(DatapathError::Bpffs {
            path: at.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
