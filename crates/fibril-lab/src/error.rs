//! Errors of the lab crate; each names the lab, host, namespace or file at fault.

use std::path::PathBuf;

use crate::topology::TopologyError;

/// Result alias for lab operations.
pub type LabResult<T> = Result<T, LabError>;

/// Errors building, inspecting or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Topology(Box<TopologyError>),

    #[error("invalid lab name {name:?}: use 1-24 characters of a-z, 0-9 and _")]
    InvalidLabName { name: String },

    #[error("lab {lab} is already running (topology {topology}, {namespaces} namespaces); run `fibril lab down --name {lab}` first")]
    AlreadyRunning {
        lab: String,
        topology: String,
        namespaces: usize,
    },

    #[error(
        "lab {lab} is not running (no state in {dir}); start it with `fibril lab up --name {lab}`"
    )]
    NotRunning { lab: String, dir: PathBuf },

    #[error("lab {lab}: unknown host {host:?} (hosts: {known})")]
    UnknownHost {
        lab: String,
        host: String,
        known: String,
    },

    #[error("lab {lab}: {step}: {source}")]
    Netlink {
        lab: String,
        step: String,
        #[source]
        source: Box<fibril_netlink::NetlinkError>,
    },

    #[error("lab state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("lab state {path} is unreadable: {message}")]
    CorruptState { path: PathBuf, message: String },

    #[error("lab {lab}: running {command:?} in {host}: {source}")]
    Exec {
        lab: String,
        host: String,
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("lab {lab}: cluster: {step}: {detail}")]
    Cluster {
        lab: String,
        step: String,
        detail: String,
    },

    #[error("lab {lab}: teardown left things behind: {details}")]
    Teardown { lab: String, details: String },
}

impl From<TopologyError> for LabError {
    fn from(e: TopologyError) -> Self {
        LabError::Topology(Box::new(e))
    }
}
