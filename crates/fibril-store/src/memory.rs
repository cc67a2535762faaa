//! In-memory [`Store`] for unit tests: the same revision, optimistic
//! concurrency and watch semantics as etcd, with a bounded event history
//! (watching from before the oldest retained event yields
//! [`StoreError::Compacted`], as with a compacted etcd).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use fibril_api::ObjectKey;
use serde_json::Value;
use tokio::sync::watch;

use crate::keys::{key_path, prefix_path};
use crate::object::{decode_stored, decode_value, encode_for_write};
use crate::{ObjectList, Revision, Store, StoreError, StoredObject, WatchEvent, WatchStream};

/// Events kept for watches by default.
pub const DEFAULT_HISTORY: usize = 10_000;

#[derive(Clone)]
struct Entry {
    bytes: Arc<Vec<u8>>,
    mod_revision: Revision,
    create_revision: Revision,
}

#[derive(Clone)]
enum Change {
    Put { entry: Entry },
    Delete { last: Entry, revision: Revision },
}

#[derive(Clone)]
struct HistoryEvent {
    path: String,
    key: ObjectKey,
    change: Change,
}

impl HistoryEvent {
    fn revision(&self) -> Revision {
        match &self.change {
            Change::Put { entry } => entry.mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }

    fn to_event(&self) -> Result<WatchEvent, StoreError> {
        Ok(match &self.change {
            Change::Put { entry } => {
                let obj = decode_stored(
                    self.key.clone(),
                    &entry.bytes,
                    entry.mod_revision,
                    entry.create_revision,
                )?;
                if entry.create_revision == entry.mod_revision {
                    WatchEvent::Added(obj)
                } else {
                    WatchEvent::Modified(obj)
                }
            }
            Change::Delete { last, revision } => WatchEvent::Deleted {
                key: self.key.clone(),
                revision: *revision,
                last: Some(decode_value(&self.key, &last.bytes, last.mod_revision)?),
            },
        })
    }
}

struct Inner {
    objects: BTreeMap<String, (ObjectKey, Entry)>,
    revision: Revision,
    history: VecDeque<HistoryEvent>,
    /// Events at or below this revision are gone from `history`.
    compacted: Revision,
}

struct Shared {
    inner: Mutex<Inner>,
    head: watch::Sender<Revision>,
    history_limit: usize,
}

/// The in-memory backend. Cloning shares the same state.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store keeping [`DEFAULT_HISTORY`] events.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store keeping the last `history_limit` events (at least 1).
    pub fn with_history(history_limit: usize) -> Self {
        let (head, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    objects: BTreeMap::new(),
                    revision: 0,
                    history: VecDeque::new(),
                    compacted: 0,
                }),
                head,
                history_limit: history_limit.max(1),
            }),
        }
    }

    /// The current store revision.
    pub fn revision(&self) -> Revision {
        lock(&self.shared.inner).revision
    }

    fn stored(key: &ObjectKey, e: &Entry) -> Result<StoredObject, StoreError> {
        decode_stored(key.clone(), &e.bytes, e.mod_revision, e.create_revision)
    }

    /// Applies one write under the lock and publishes the new head.
    fn commit(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        path: String,
        key: ObjectKey,
        change: Change,
    ) {
        let rev = inner.revision;
        match &change {
            Change::Put { entry } => {
                inner
                    .objects
                    .insert(path.clone(), (key.clone(), entry.clone()));
            }
            Change::Delete { .. } => {
                inner.objects.remove(&path);
            }
        }
        inner.history.push_back(HistoryEvent { path, key, change });
        while inner.history.len() > self.shared.history_limit {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.revision();
            }
        }
        drop(inner);
        self.shared.head.send_replace(rev);
    }

    fn put_entry(
        &self,
        key: &ObjectKey,
        bytes: Vec<u8>,
        check: impl FnOnce(Option<&Entry>) -> Result<(), StoreError>,
    ) -> Result<StoredObject, StoreError> {
        let path = key_path(key)?;
        let mut inner = lock(&self.shared.inner);
        let existing = inner.objects.get(&path).map(|(_, e)| e.clone());
        check(existing.as_ref())?;
        inner.revision += 1;
        let rev = inner.revision;
        let entry = Entry {
            bytes: Arc::new(bytes),
            mod_revision: rev,
            create_revision: existing.map_or(rev, |e| e.create_revision),
        };
        let out = Self::stored(key, &entry)?;
        self.commit(inner, path, key.clone(), Change::Put { entry });
        Ok(out)
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves consistent data (every mutation
    // completes before anything can panic), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, StoreError> {
        let path = key_path(key)?;
        let inner = lock(&self.shared.inner);
        inner
            .objects
            .get(&path)
            .map(|(k, e)| Self::stored(k, e))
            .transpose()
    }

    async fn list(&self, kind: &str, namespace: Option<&str>) -> Result<ObjectList, StoreError> {
        let prefix = prefix_path(kind, namespace)?;
        let inner = lock(&self.shared.inner);
        let items = inner
            .objects
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(_, (k, e))| Self::stored(k, e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ObjectList {
            items,
            revision: inner.revision,
        })
    }

    async fn watch(
        &self,
        kind: &str,
        namespace: Option<&str>,
        after: Revision,
    ) -> Result<WatchStream, StoreError> {
        let prefix = prefix_path(kind, namespace)?;
        {
            let inner = lock(&self.shared.inner);
            if after < inner.compacted {
                return Err(StoreError::Compacted {
                    prefix,
                    after,
                    available_from: inner.compacted + 1,
                });
            }
        }
        let state = WatchState {
            shared: self.shared.clone(),
            rx: self.shared.head.subscribe(),
            prefix,
            last: after,
            buf: VecDeque::new(),
            done: false,
            failure: None,
        };
        Ok(Box::pin(futures::stream::unfold(state, WatchState::next)))
    }

    async fn create(&self, key: &ObjectKey, value: Value) -> Result<StoredObject, StoreError> {
        let bytes = encode_for_write(key, value, true)?;
        self.put_entry(key, bytes, |e| match e {
            Some(_) => Err(StoreError::AlreadyExists { key: key.clone() }),
            None => Ok(()),
        })
    }

    async fn update(
        &self,
        key: &ObjectKey,
        value: Value,
        expected: Revision,
    ) -> Result<StoredObject, StoreError> {
        let bytes = encode_for_write(key, value, false)?;
        self.put_entry(key, bytes, |e| match e {
            None => Err(StoreError::NotFound { key: key.clone() }),
            Some(e) if e.mod_revision != expected => Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                actual: e.mod_revision,
            }),
            Some(_) => Ok(()),
        })
    }

    async fn put(&self, key: &ObjectKey, value: Value) -> Result<StoredObject, StoreError> {
        let bytes = encode_for_write(key, value, true)?;
        self.put_entry(key, bytes, |_| Ok(()))
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        expected: Option<Revision>,
    ) -> Result<StoredObject, StoreError> {
        let path = key_path(key)?;
        let mut inner = lock(&self.shared.inner);
        let Some((_, last)) = inner.objects.get(&path).cloned() else {
            return Err(StoreError::NotFound { key: key.clone() });
        };
        if let Some(expected) = expected {
            if last.mod_revision != expected {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected,
                    actual: last.mod_revision,
                });
            }
        }
        let out = Self::stored(key, &last)?;
        inner.revision += 1;
        let revision = inner.revision;
        self.commit(inner, path, key.clone(), Change::Delete { last, revision });
        Ok(out)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut inner = lock(&self.shared.inner);
        if revision > inner.revision {
            return Err(StoreError::Backend {
                op: "compact",
                target: format!("revision {revision}"),
                source: format!(
                    "revision {revision} is in the future (head {})",
                    inner.revision
                )
                .into(),
            });
        }
        // Like etcd: history before `revision` goes, `revision` stays watchable.
        while inner
            .history
            .front()
            .is_some_and(|e| e.revision() < revision)
        {
            inner.history.pop_front();
        }
        inner.compacted = inner.compacted.max(revision - 1);
        Ok(())
    }
}

struct WatchState {
    shared: Arc<Shared>,
    rx: watch::Receiver<Revision>,
    prefix: String,
    /// Every matching event up to here has been queued in `buf`.
    last: Revision,
    buf: VecDeque<WatchEvent>,
    /// Set once the stream has failed; `failure` is yielded after `buf`.
    done: bool,
    failure: Option<StoreError>,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                return Some((Ok(ev), self));
            }
            if self.done {
                return self.failure.take().map(|e| (Err(e), self));
            }
            // Mark the head seen before scanning so a write after the scan
            // wakes `changed()` below.
            self.rx.borrow_and_update();
            let shared = self.shared.clone();
            let failure = {
                let inner = lock(&shared.inner);
                if self.last < inner.compacted {
                    Some(StoreError::Compacted {
                        prefix: self.prefix.clone(),
                        after: self.last,
                        available_from: inner.compacted + 1,
                    })
                } else {
                    let start = inner.history.partition_point(|h| h.revision() <= self.last);
                    let mut failure = None;
                    for h in inner.history.range(start..) {
                        if h.path.starts_with(&self.prefix) {
                            match h.to_event() {
                                Ok(ev) => self.buf.push_back(ev),
                                Err(e) => {
                                    failure = Some(e);
                                    break;
                                }
                            }
                        }
                    }
                    self.last = self.last.max(inner.revision);
                    failure
                }
            };
            if failure.is_some() {
                self.done = true;
                self.failure = failure;
                continue;
            }
            if self.buf.is_empty() && self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}
