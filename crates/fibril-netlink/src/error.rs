//! Errors of this crate: every variant names the namespace and the object at fault.

use std::io;

/// Result alias for this crate.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// Errors from namespace and rtnetlink operations.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The namespace name cannot be used as a file name under `/run/netns`.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// `create` found `/run/netns/NAME` already present.
    #[error("network namespace {name} already exists (/run/netns/{name})")]
    NetnsExists { name: String },

    /// The named namespace has no `/run/netns/NAME` entry.
    #[error("network namespace {name} does not exist (no /run/netns/{name})")]
    NetnsNotFound { name: String },

    /// A system call or file operation failed.
    #[error("netns {ns}: {op}: {source}")]
    Io {
        ns: String,
        op: String,
        #[source]
        source: io::Error,
    },

    /// The kernel rejected an rtnetlink request.
    #[error("netns {ns}: {op}: {source}")]
    Netlink {
        ns: String,
        op: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// An interface looked up by name does not exist in the namespace.
    #[error("netns {ns}: interface {ifname} not found")]
    LinkNotFound { ns: String, ifname: String },

    /// The helper thread running inside the namespace panicked.
    #[error("netns {ns}: thread running {op} panicked")]
    ThreadPanicked { ns: String, op: String },
}

impl NetlinkError {
    pub(crate) fn io(ns: &str, op: impl Into<String>, source: io::Error) -> Self {
        NetlinkError::Io {
            ns: ns.to_string(),
            op: op.into(),
            source,
        }
    }

    pub(crate) fn nix(ns: &str, op: impl Into<String>, errno: nix::Error) -> Self {
        Self::io(ns, op, io::Error::from(errno))
    }

    pub(crate) fn nl(ns: &str, op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetlinkError::Netlink {
            ns: ns.to_string(),
            op: op.into(),
            source,
        }
    }

    /// True when the kernel answered with the given errno (e.g. `libc::EEXIST`).
    pub fn is_errno(&self, errno: i32) -> bool {
        match self {
            NetlinkError::Io { source, .. } => source.raw_os_error() == Some(errno),
            NetlinkError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.raw_code() == -errno,
            _ => false,
        }
    }
}
