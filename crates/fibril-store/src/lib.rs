//! The cluster store: one [`Store`] trait over the cluster state, typed helpers
//! ([`StoreExt`]), and two backends: [`EtcdStore`] (etcd v3 via `etcd-client`,
//! reconnecting) and [`MemoryStore`] (unit tests). [`EtcdServer`] runs Debian's
//! `etcd` binary as a child process for tests and the lab.
//!
//! # Data model
//!
//! Objects are Kubernetes-shaped JSON documents addressed by
//! [`ObjectKey`] (kind, namespace, name). Every write bumps a store-wide,
//! monotonically increasing [`Revision`] (etcd's revision); each object carries
//! the revision of its last write (its *mod revision*), which reads expose as
//! `metadata.resourceVersion` (decimal string) and which updates and deletes
//! use for optimistic concurrency.
//!
//! # Key layout
//!
//! ```text
//! /fibril/<kind>/<namespace>/<name>     namespaced kinds, e.g. /fibril/Pod/default/web-0
//! /fibril/<kind>/_cluster/<name>        cluster-scoped kinds, e.g. /fibril/Node/_cluster/k8s-w1
//! ```
//!
//! `<kind>` is the canonical kind (`fibril_api::Resource::KIND`). `_cluster`
//! cannot clash with a namespace because Kubernetes namespaces are DNS labels
//! (no `_`). Listing or watching a kind uses the prefix `/fibril/<kind>/`, a
//! namespace `/fibril/<kind>/<namespace>/`; the trailing `/` keeps `Pod` from
//! matching `PodTemplate`. No component may contain `/`.
//!
//! # Watch semantics
//!
//! [`Store::watch`] takes the revision *after* which events are wanted
//! (exclusive), so the usual pattern is: `list` (which returns the list
//! revision `R`), then `watch(kind, ns, R)`; this sees every change after the
//! list exactly once, in revision order. If the history before `R` has been
//! compacted the stream yields [`StoreError::Compacted`] and ends: relist.
//! The etcd backend re-establishes a broken watch (etcd restart, lost
//! connection) from the last delivered revision + 1, so callers never see the
//! reconnect.

mod error;
pub mod etcd;
pub mod etcd_server;
mod keys;
pub mod memory;
mod object;
mod typed;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use serde_json::Value;

pub use error::StoreError;
pub use etcd::{EtcdStore, EtcdStoreOptions};
pub use etcd_server::{EtcdServer, EtcdServerConfig, EtcdServerError};
pub use fibril_api::ObjectKey;
pub use keys::{key_path, parse_key_path, prefix_path, CLUSTER_SCOPE, KEY_ROOT};
pub use memory::MemoryStore;
pub use object::{resource_version, rfc3339};
pub use typed::{resource_version_of, StoreExt, TypedEvent, TypedList, TypedWatchStream};

/// A store-wide write counter (etcd's revision). Starts at 1; 0 means "before
/// anything".
pub type Revision = i64;

/// One object as stored: its key, its JSON document (with
/// `metadata.resourceVersion` set to `mod_revision`), and revisions.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub key: ObjectKey,
    pub value: Value,
    /// Revision of the last write to this object.
    pub mod_revision: Revision,
    /// Revision at which this object was created.
    pub create_revision: Revision,
}

/// The result of [`Store::list`]: objects sorted by key, and the store
/// revision the list is consistent with (watch after it to follow changes).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectList {
    pub items: Vec<StoredObject>,
    pub revision: Revision,
}

/// A change seen by [`Store::watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The object was created at `object.mod_revision`.
    Added(StoredObject),
    /// The object was updated at `object.mod_revision`.
    Modified(StoredObject),
    /// The object was deleted at `revision`; `last` is its last stored state
    /// (with `metadata.resourceVersion`) when the backend still has it.
    Deleted {
        key: ObjectKey,
        revision: Revision,
        last: Option<Value>,
    },
}

impl WatchEvent {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => o.mod_revision,
            WatchEvent::Deleted { revision, .. } => *revision,
        }
    }

    /// The key of the object this event is about.
    pub fn key(&self) -> &ObjectKey {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => &o.key,
            WatchEvent::Deleted { key, .. } => key,
        }
    }
}

/// How agents and the operator hold a store.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// Ordered watch events. An `Err` item is terminal (the stream ends after it):
/// [`StoreError::Compacted`] means "relist and watch again".
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// The cluster state. Backends share these semantics; see the crate docs for
/// the key layout and revision model. Use as `Arc<dyn Store>`; typed helpers
/// live in [`StoreExt`].
#[async_trait]
pub trait Store: Send + Sync {
    /// The object at `key`, or `None`.
    async fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, StoreError>;

    /// All objects of `kind` (in `namespace` if given, else in every
    /// namespace), sorted by key, with the revision the list reflects.
    async fn list(&self, kind: &str, namespace: Option<&str>) -> Result<ObjectList, StoreError>;

    /// Changes to objects of `kind` (in `namespace` if given) with revision
    /// strictly greater than `after`, in revision order, then live changes.
    /// Fails (as the first stream item or here) with [`StoreError::Compacted`]
    /// when that history is gone.
    async fn watch(
        &self,
        kind: &str,
        namespace: Option<&str>,
        after: Revision,
    ) -> Result<WatchStream, StoreError>;

    /// Stores a new object. Fails with [`StoreError::AlreadyExists`] if `key`
    /// exists. Fills `metadata.name`/`namespace` from `key` when missing, and
    /// `metadata.uid`/`creationTimestamp` when missing.
    async fn create(&self, key: &ObjectKey, value: Value) -> Result<StoredObject, StoreError>;

    /// Replaces an existing object whose mod revision is `expected`; fails
    /// with [`StoreError::Conflict`] if it changed since, or
    /// [`StoreError::NotFound`].
    async fn update(
        &self,
        key: &ObjectKey,
        value: Value,
        expected: Revision,
    ) -> Result<StoredObject, StoreError>;

    /// Creates or replaces unconditionally (last writer wins). Fills
    /// `uid`/`creationTimestamp` when missing, like `create`.
    async fn put(&self, key: &ObjectKey, value: Value) -> Result<StoredObject, StoreError>;

    /// Deletes the object (only if its mod revision is `expected`, when
    /// given) and returns its last state. [`StoreError::NotFound`] if absent,
    /// [`StoreError::Conflict`] if the revision differs.
    async fn delete(
        &self,
        key: &ObjectKey,
        expected: Option<Revision>,
    ) -> Result<StoredObject, StoreError>;

    /// Discards history before `revision` (as etcd compaction: watches
    /// needing older events then fail with [`StoreError::Compacted`]).
    /// Maintenance and tests.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}
