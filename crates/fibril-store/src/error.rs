//! The store's error type, shared by every backend.

use fibril_api::ObjectKey;

use crate::Revision;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a [`crate::Store`] operation can fail with. Messages name the
/// key (or key prefix) involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} already exists")]
    AlreadyExists { key: ObjectKey },

    #[error("{key} not found")]
    NotFound { key: ObjectKey },

    #[error(
        "conflict on {key}: expected revision {expected} but it is at revision {actual} \
         (re-read the object and retry)"
    )]
    Conflict {
        key: ObjectKey,
        expected: Revision,
        actual: Revision,
    },

    #[error(
        "watch of {prefix} cannot resume after revision {after}: history before revision \
         {available_from} was compacted; relist and watch again"
    )]
    Compacted {
        prefix: String,
        after: Revision,
        /// The oldest revision still watchable.
        available_from: Revision,
    },

    #[error("invalid store key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },

    #[error("invalid object for {key}: {reason}")]
    InvalidObject { key: String, reason: String },

    #[error("cannot decode {key} as {kind}: {source}")]
    Decode {
        key: String,
        kind: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot encode {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("store unavailable: {op} {target} still failing after retrying for {retried_for:?}: {source}")]
    Unavailable {
        op: &'static str,
        target: String,
        retried_for: std::time::Duration,
        #[source]
        source: BoxError,
    },

    #[error("store backend error: {op} {target}: {source}")]
    Backend {
        op: &'static str,
        target: String,
        #[source]
        source: BoxError,
    },
}
