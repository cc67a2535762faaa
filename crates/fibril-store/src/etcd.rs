//! The etcd v3 backend. Owns connection handling: every request has a
//! timeout and is retried with capped exponential backoff for a bounded time
//! ([`EtcdStoreOptions::retry_for`]) while etcd is unreachable, replacing the
//! client connection after failures; watches run in a task that re-watches
//! from the last delivered revision + 1 whenever the stream breaks, for as
//! long as the caller holds the stream.
//!
//! Conditional writes are etcd transactions comparing `create_revision`
//! (existence) and `mod_revision` (optimistic concurrency). A retried write
//! whose first attempt committed but whose reply was lost is recognised by
//! finding exactly the bytes it wrote, so it succeeds instead of reporting a
//! spurious conflict. (A retried delete whose first attempt committed reports
//! `NotFound`.)

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use fibril_api::ObjectKey;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::keys::{key_path, parse_key_path, prefix_path};
use crate::object::{decode_stored, decode_value, encode_for_write};
use crate::{ObjectList, Revision, Store, StoreError, StoredObject, WatchEvent, WatchStream};

const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Connection and retry settings for [`EtcdStore`].
#[derive(Debug, Clone)]
pub struct EtcdStoreOptions {
    /// How long one operation keeps retrying while etcd is unreachable
    /// before failing with [`StoreError::Unavailable`]. Watches retry for as
    /// long as they are held.
    pub retry_for: Duration,
    /// Timeout of one request attempt.
    pub request_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for EtcdStoreOptions {
    fn default() -> Self {
        Self {
            retry_for: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// The current client and a generation number, so that concurrent failures
/// replace the connection once.
struct Conn {
    endpoints: Vec<String>,
    options: EtcdStoreOptions,
    current: Mutex<(u64, Client)>,
}

impl Conn {
    async fn dial(
        endpoints: &[String],
        options: &EtcdStoreOptions,
    ) -> Result<Client, etcd_client::Error> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            // HTTP/2 pings notice a vanished peer under an idle watch.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        Client::connect(endpoints, Some(opts)).await
    }

    fn current(&self) -> (u64, Client) {
        let g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// Replaces the client that failed (generation `failed`) unless someone
    /// already did.
    async fn reconnect(&self, failed: u64) {
        if self.current().0 != failed {
            return;
        }
        match Self::dial(&self.endpoints, &self.options).await {
            Ok(client) => {
                let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
                if g.0 == failed {
                    *g = (failed + 1, client);
                }
            }
            Err(e) => debug!(error = %e, "etcd reconnect failed"),
        }
    }
}

/// [`Store`] on etcd v3. Cheap to clone (shares the connection).
#[derive(Clone)]
pub struct EtcdStore {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.conn.endpoints)
            .finish()
    }
}

fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        // gRPC codes Cancelled(1), Unknown(2, tonic's code for a broken
        // HTTP/2 connection), DeadlineExceeded(4), Aborted(10), Unavailable(14).
        E::GRpcStatus(s) => matches!(i32::from(s.code()), 1 | 2 | 4 | 10 | 14),
        _ => false,
    }
}

fn backend(op: &'static str, target: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Backend {
        op,
        target: target.to_string(),
        source: Box::new(e),
    }
}

fn first_get_kv(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
        _ => None,
    })
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map(|h| h.revision()).unwrap_or_default()
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`). The
    /// connection is lazy: this succeeds while etcd is still down, and
    /// operations retry until it is up (within `retry_for`).
    pub async fn connect(
        endpoints: Vec<String>,
        options: EtcdStoreOptions,
    ) -> Result<Self, StoreError> {
        let client = Conn::dial(&endpoints, &options)
            .await
            .map_err(|e| StoreError::Backend {
                op: "connect",
                target: endpoints.join(","),
                source: Box::new(e),
            })?;
        Ok(Self {
            conn: Arc::new(Conn {
                endpoints,
                options,
                current: Mutex::new((0, client)),
            }),
        })
    }

    /// The endpoints this store talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.conn.endpoints
    }

    /// Runs `f` with retries: transient failures (unreachable, timeouts)
    /// are retried with backoff for `retry_for`; `f` gets the attempt number.
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        target: &str,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client, u32) -> Fut + Send,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
        T: Send,
    {
        let opts = &self.conn.options;
        let start = Instant::now();
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 0u32;
        loop {
            let (generation, client) = self.conn.current();
            let err: Box<dyn std::error::Error + Send + Sync> =
                match tokio::time::timeout(opts.request_timeout, f(client, attempt)).await {
                    Ok(Ok(v)) => {
                        if attempt > 0 {
                            debug!(op, target, attempt, "etcd request succeeded after retries");
                        }
                        return Ok(v);
                    }
                    Ok(Err(e)) if !is_transient(&e) => return Err(backend(op, target, e)),
                    Ok(Err(e)) => Box::new(e),
                    Err(_) => format!("request timed out after {:?}", opts.request_timeout).into(),
                };
            if start.elapsed() >= opts.retry_for {
                return Err(StoreError::Unavailable {
                    op,
                    target: target.to_string(),
                    retried_for: start.elapsed(),
                    source: err,
                });
            }
            if attempt == 0 {
                warn!(op, target, error = %err, "etcd unreachable, retrying");
            }
            self.conn.reconnect(generation).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(opts.max_backoff);
            attempt += 1;
        }
    }

    /// Conditional put: `compares` must hold, else the current kv (if any)
    /// is returned for the caller to classify. A retry that finds its own
    /// bytes already stored counts as success.
    async fn put_if(
        &self,
        op: &'static str,
        key: &ObjectKey,
        path: String,
        bytes: Vec<u8>,
        compares: Vec<Compare>,
    ) -> Result<Result<StoredObject, Option<KeyValue>>, StoreError> {
        let target = key.to_string();
        let outcome = self
            .call(op, &target, |mut c, attempt| {
                let txn = Txn::new()
                    .when(compares.clone())
                    // The get after the put reports the create revision.
                    .and_then([
                        TxnOp::put(path.clone(), bytes.clone(), None),
                        TxnOp::get(path.clone(), None),
                    ])
                    .or_else([TxnOp::get(path.clone(), None)]);
                async move { c.txn(txn).await.map(|r| (r, attempt)) }
            })
            .await?;
        let (resp, attempt) = outcome;
        let kv = first_get_kv(&resp);
        if resp.succeeded() {
            let rev = revision_of(resp.header());
            let create = kv.as_ref().map_or(rev, |kv| kv.create_revision());
            return decode_stored(key.clone(), &bytes, rev, create).map(Ok);
        }
        if let Some(kv) = &kv {
            if attempt > 0 && kv.value() == bytes.as_slice() {
                return decode_stored(key.clone(), &bytes, kv.mod_revision(), kv.create_revision())
                    .map(Ok);
            }
        }
        Ok(Err(kv))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, StoreError> {
        let path = key_path(key)?;
        let mut resp = self
            .call("get", &path, |mut c, _| {
                let path = path.clone();
                async move { c.get(path, None).await }
            })
            .await?;
        resp.take_kvs()
            .into_iter()
            .next()
            .map(|kv| {
                decode_stored(
                    key.clone(),
                    kv.value(),
                    kv.mod_revision(),
                    kv.create_revision(),
                )
            })
            .transpose()
    }

    async fn list(&self, kind: &str, namespace: Option<&str>) -> Result<ObjectList, StoreError> {
        let prefix = prefix_path(kind, namespace)?;
        let mut resp = self
            .call("list", &prefix, |mut c, _| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = revision_of(resp.header());
        let items = resp
            .take_kvs()
            .into_iter()
            .map(|kv| {
                let path = String::from_utf8_lossy(kv.key()).into_owned();
                let key = parse_key_path(&path)?;
                decode_stored(key, kv.value(), kv.mod_revision(), kv.create_revision())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ObjectList { items, revision })
    }

    async fn watch(
        &self,
        kind: &str,
        namespace: Option<&str>,
        after: Revision,
    ) -> Result<WatchStream, StoreError> {
        let prefix = prefix_path(kind, namespace)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run_watch(self.conn.clone(), prefix, after.max(0) + 1, tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn create(&self, key: &ObjectKey, value: Value) -> Result<StoredObject, StoreError> {
        let path = key_path(key)?;
        let bytes = encode_for_write(key, value, true)?;
        let compares = vec![Compare::create_revision(path.clone(), CompareOp::Equal, 0)];
        match self.put_if("create", key, path, bytes, compares).await? {
            Ok(obj) => Ok(obj),
            Err(_) => Err(StoreError::AlreadyExists { key: key.clone() }),
        }
    }

    async fn update(
        &self,
        key: &ObjectKey,
        value: Value,
        expected: Revision,
    ) -> Result<StoredObject, StoreError> {
        let path = key_path(key)?;
        let bytes = encode_for_write(key, value, false)?;
        let compares = vec![
            Compare::create_revision(path.clone(), CompareOp::Greater, 0),
            Compare::mod_revision(path.clone(), CompareOp::Equal, expected),
        ];
        match self.put_if("update", key, path, bytes, compares).await? {
            Ok(obj) => Ok(obj),
            Err(None) => Err(StoreError::NotFound { key: key.clone() }),
            Err(Some(kv)) => Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                actual: kv.mod_revision(),
            }),
        }
    }

    async fn put(&self, key: &ObjectKey, value: Value) -> Result<StoredObject, StoreError> {
        let path = key_path(key)?;
        let bytes = encode_for_write(key, value, true)?;
        let resp = self
            .call("put", &path, |mut c, _| {
                let (path, bytes) = (path.clone(), bytes.clone());
                async move {
                    c.put(path, bytes, Some(PutOptions::new().with_prev_key()))
                        .await
                }
            })
            .await?;
        let rev = revision_of(resp.header());
        let create = resp.prev_key().map_or(rev, |kv| kv.create_revision());
        decode_stored(key.clone(), &bytes, rev, create)
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        expected: Option<Revision>,
    ) -> Result<StoredObject, StoreError> {
        let path = key_path(key)?;
        let target = key.to_string();
        let Some(expected) = expected else {
            let mut resp = self
                .call("delete", &target, |mut c, _| {
                    let path = path.clone();
                    async move {
                        c.delete(path, Some(DeleteOptions::new().with_prev_key()))
                            .await
                    }
                })
                .await?;
            let Some(kv) = resp.take_prev_kvs().into_iter().next() else {
                return Err(StoreError::NotFound { key: key.clone() });
            };
            return decode_stored(
                key.clone(),
                kv.value(),
                kv.mod_revision(),
                kv.create_revision(),
            );
        };
        let resp = self
            .call("delete", &target, |mut c, _| {
                let txn = Txn::new()
                    .when([
                        Compare::create_revision(path.clone(), CompareOp::Greater, 0),
                        Compare::mod_revision(path.clone(), CompareOp::Equal, expected),
                    ])
                    .and_then([TxnOp::delete(
                        path.clone(),
                        Some(DeleteOptions::new().with_prev_key()),
                    )])
                    .or_else([TxnOp::get(path.clone(), None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            let prev = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Delete(mut d) => d.take_prev_kvs().into_iter().next(),
                _ => None,
            });
            return match prev {
                Some(kv) => decode_stored(
                    key.clone(),
                    kv.value(),
                    kv.mod_revision(),
                    kv.create_revision(),
                ),
                None => Err(StoreError::NotFound { key: key.clone() }),
            };
        }
        match first_get_kv(&resp) {
            None => Err(StoreError::NotFound { key: key.clone() }),
            Some(kv) => Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                actual: kv.mod_revision(),
            }),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let target = format!("revision {revision}");
        self.call("compact", &target, |mut c, _| async move {
            c.compact(revision, Some(CompactionOptions::new().with_physical()))
                .await
        })
        .await?;
        Ok(())
    }
}

fn convert_event(ev: &etcd_client::Event) -> Result<Option<WatchEvent>, StoreError> {
    let Some(kv) = ev.kv() else { return Ok(None) };
    let path = String::from_utf8_lossy(kv.key()).into_owned();
    let key = parse_key_path(&path)?;
    Ok(Some(match ev.event_type() {
        EventType::Put => {
            let obj = decode_stored(key, kv.value(), kv.mod_revision(), kv.create_revision())?;
            if kv.create_revision() == kv.mod_revision() {
                WatchEvent::Added(obj)
            } else {
                WatchEvent::Modified(obj)
            }
        }
        EventType::Delete => {
            let last = ev
                .prev_kv()
                .filter(|p| !p.value().is_empty())
                .map(|p| decode_value(&key, p.value(), p.mod_revision()))
                .transpose()?;
            WatchEvent::Deleted {
                key,
                revision: kv.mod_revision(),
                last,
            }
        }
    }))
}

/// Sleeps `d` unless the receiver goes away first; false if it did.
async fn pause(tx: &mpsc::Sender<Result<WatchEvent, StoreError>>, d: Duration) -> bool {
    tokio::select! {
        _ = tx.closed() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Feeds `tx` with events from revision `next` on, re-watching from the last
/// delivered revision + 1 after any break, until the receiver is dropped or
/// the history is compacted.
async fn run_watch(
    conn: Arc<Conn>,
    prefix: String,
    mut next: Revision,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
) {
    let opts = conn.options.clone();
    let mut backoff = BACKOFF_MIN;
    let mut broken_since: Option<Instant> = None;
    loop {
        let (generation, mut client) = conn.current();
        let wopts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next)
            .with_prev_key();
        let established = tokio::select! {
            _ = tx.closed() => return,
            r = tokio::time::timeout(opts.request_timeout, client.watch(prefix.clone(), Some(wopts))) => r,
        };
        let mut stream = match established {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if !is_transient(&e) => {
                let _ = tx.send(Err(backend("watch", &prefix, e))).await;
                return;
            }
            other => {
                let err = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                debug!(prefix, next, error = %err, "etcd watch not established, retrying");
                broken_since.get_or_insert_with(Instant::now);
                conn.reconnect(generation).await;
                if !pause(&tx, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(opts.max_backoff);
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = tx.closed() => return,
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    warn!(prefix, next, "etcd watch stream ended, re-watching");
                    break;
                }
                Err(e) => {
                    warn!(prefix, next, error = %e, "etcd watch stream broke, re-watching");
                    break;
                }
            };
            if let Some(since) = broken_since.take() {
                debug!(prefix, next, down_for = ?since.elapsed(), "etcd watch resumed");
            }
            backoff = BACKOFF_MIN;
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            prefix: prefix.clone(),
                            after: next - 1,
                            available_from: resp.compact_revision(),
                        }))
                        .await;
                    return;
                }
                warn!(
                    prefix,
                    reason = resp.cancel_reason(),
                    "etcd cancelled the watch, re-watching"
                );
                break;
            }
            let mut resp_next = next;
            for ev in resp.events() {
                let converted = match convert_event(ev) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                // Events below `next` were delivered before a reconnect.
                if converted.revision() < next {
                    continue;
                }
                resp_next = resp_next.max(converted.revision() + 1);
                if tx.send(Ok(converted)).await.is_err() {
                    return;
                }
            }
            // etcd never splits one revision across responses (fragmenting
            // is off), so resuming after the last revision seen is exact.
            next = resp_next;
        }
        broken_since.get_or_insert_with(Instant::now);
        if !pause(&tx, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}
