//! Errors of the pod runner; each names the object or file concerned.

use std::path::{Path, PathBuf};

/// What can go wrong in the pod runner.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("{op} {path}: {source}")]
    Io {
        path: PathBuf,
        op: String,
        source: std::io::Error,
    },
    #[error("pod record {path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error("lab {lab}: {message}")]
    Lab { lab: String, message: String },
    #[error("store: {0}")]
    Store(#[from] Box<fibril_store::StoreError>),
    #[error("network namespace {netns}: {source}")]
    Netns {
        netns: String,
        source: Box<fibril_netlink::NetlinkError>,
    },
    #[error("pod {namespace}/{pod}: {message}")]
    Pod {
        namespace: String,
        pod: String,
        message: String,
    },
}

impl KubeletError {
    pub fn io(path: &Path, op: &str, source: std::io::Error) -> Self {
        KubeletError::Io {
            path: path.to_path_buf(),
            op: op.to_string(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, KubeletError>;
