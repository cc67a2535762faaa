//! The run loop: relist, [`crate::reconcile`], apply. Kept thin on purpose;
//! every decision is in the pure modules. A pass runs every
//! [`ControllerOptions::interval`], and shortly after any change to a watched
//! kind (so a pod turning Ready reaches its EndpointSlice within tens of
//! milliseconds); the watches only wake the loop, state always comes from a
//! fresh list.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use fibril_api::{ObjectKey, Resource};
use fibril_store::{SharedStore, StoreError, StoreExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::{debug, info, trace, warn};

use crate::{reconcile, Object, ServiceRanges, Snapshot, Write};

/// Failures that stop [`run`]; none today (everything is retried), kept so
/// the signature can grow without breaking callers.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("controller: {0}")]
    Store(#[from] StoreError),
}

/// Tuning knobs; [`Default`] suits the lab.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Time between passes.
    pub interval: Duration,
    /// Read `k8sServiceCIDR` / `loadBalancerIPPool` from the stored config
    /// (kube-system/fibril-config) when it exists.
    pub use_stored_config: bool,
    /// Ranges used when there is no stored config.
    pub ranges: ServiceRanges,
    /// Also run a pass soon after a change to a watched kind.
    pub watch: bool,
    /// Wait after a change before the pass, to batch a burst of writes.
    pub debounce: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(300),
            use_stored_config: true,
            ranges: ServiceRanges::default(),
            watch: true,
            debounce: Duration::from_millis(20),
        }
    }
}

/// Runs the controller with [`ControllerOptions::default`] until `shutdown`.
pub async fn run(
    store: SharedStore,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    run_with(store, ControllerOptions::default(), shutdown).await
}

/// All objects of `R`'s kind; objects that do not decode are left out and
/// named in `snap.undecodable` (one bad object must not stop the loop).
async fn list_kind<R: Resource>(
    store: &SharedStore,
    undecodable: &mut Vec<(ObjectKey, String)>,
) -> Result<Vec<R>, StoreError> {
    let list = store.list(R::KIND, None).await?;
    let mut out = Vec::with_capacity(list.items.len());
    for o in list.items {
        match serde_json::from_value::<R>(o.value) {
            Ok(v) => out.push(v),
            Err(e) => undecodable.push((o.key, e.to_string())),
        }
    }
    Ok(out)
}

async fn snapshot(store: &SharedStore) -> Result<Snapshot, StoreError> {
    // Owners before pods: a pod is only ever created for an owner already
    // seen, so no pod looks orphaned because its owner was listed later.
    let mut bad = Vec::new();
    let namespaces = list_kind(store, &mut bad).await?;
    let nodes = list_kind(store, &mut bad).await?;
    let deployments = list_kind(store, &mut bad).await?;
    let daemonsets = list_kind(store, &mut bad).await?;
    let services = list_kind(store, &mut bad).await?;
    let pods = list_kind(store, &mut bad).await?;
    let endpoint_slices = list_kind(store, &mut bad).await?;
    Ok(Snapshot {
        namespaces,
        nodes,
        deployments,
        daemonsets,
        pods,
        services,
        endpoint_slices,
        undecodable: bad,
    })
}

/// The ranges to allocate from, and a warning when the stored config cannot
/// be used.
async fn ranges(store: &SharedStore, opts: &ControllerOptions) -> (ServiceRanges, Option<String>) {
    if !opts.use_stored_config {
        return (opts.ranges.clone(), None);
    }
    match fibril_config::store::load(store.as_ref()).await {
        Ok(Some((c, _))) => (
            ServiceRanges {
                service_cidr: c.k8s_service_cidr,
                lb_pool: c.load_balancer_ip_pool,
            },
            None,
        ),
        Ok(None) => (opts.ranges.clone(), None),
        Err(e) => (
            opts.ranges.clone(),
            Some(format!(
                "cannot use the stored config ({e}); allocating from the defaults"
            )),
        ),
    }
}

async fn apply(store: &SharedStore, w: &Write) -> Result<(), StoreError> {
    match w {
        Write::Create(o) => match o {
            Object::Namespace(x) => store.create_as(x).await.map(drop),
            Object::Pod(x) => store.create_as(x).await.map(drop),
            Object::Deployment(x) => store.create_as(x).await.map(drop),
            Object::DaemonSet(x) => store.create_as(x).await.map(drop),
            Object::Service(x) => store.create_as(x).await.map(drop),
            Object::EndpointSlice(x) => store.create_as(x).await.map(drop),
            Object::Event(k, v) => store.create(k, v.clone()).await.map(drop),
        },
        Write::Update(o) => match o {
            Object::Namespace(x) => store.update_as(x).await.map(drop),
            Object::Pod(x) => store.update_as(x).await.map(drop),
            Object::Deployment(x) => store.update_as(x).await.map(drop),
            Object::DaemonSet(x) => store.update_as(x).await.map(drop),
            Object::Service(x) => store.update_as(x).await.map(drop),
            Object::EndpointSlice(x) => store.update_as(x).await.map(drop),
            Object::Event(k, v) => store.put(k, v.clone()).await.map(drop),
        },
        Write::Delete { key, revision } => store.delete(key, *revision).await.map(drop),
    }
}

fn describe(w: &Write) -> String {
    match w {
        Write::Create(o) => format!("create {}", o.key()),
        Write::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some() => {
            format!("delete (deletionTimestamp) {}", p.key())
        }
        Write::Update(o) => format!("update {}", o.key()),
        Write::Delete { key, .. } => format!("delete {key}"),
    }
}

/// The current time (jiff's `Timestamp::now` needs its `std` feature,
/// which k8s-openapi does not enable).
fn now() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or_default();
    Time(k8s_openapi::jiff::Timestamp::new(secs, 0).unwrap_or_default())
}

/// One pass: read, plan, write. Returns how many writes failed.
pub(crate) async fn pass(
    store: &SharedStore,
    opts: &ControllerOptions,
    rng: &mut fastrand::Rng,
    warned: &mut HashSet<String>,
) -> Result<usize, StoreError> {
    let snap = snapshot(store).await?;
    let (ranges, config_warning) = ranges(store, opts).await;
    let now = now();
    let mut plan = reconcile(&snap, &ranges, &now, rng);
    plan.warnings.extend(config_warning);
    // Warnings repeat every pass while the cause stays: log each once.
    warned.retain(|w| plan.warnings.contains(w));
    for w in &plan.warnings {
        if warned.insert(w.clone()) {
            warn!("{w}");
        }
    }
    trace!(writes = plan.writes.len(), "pass");
    let mut failed = 0;
    for w in &plan.writes {
        let what = describe(w);
        match apply(store, w).await {
            Ok(()) => {
                if matches!(w, Write::Create(Object::Event(..))) {
                    debug!("{what}");
                } else {
                    info!("{what}");
                }
            }
            // Someone wrote first (the kubelet, the CLI): the next pass
            // re-reads and decides again.
            Err(
                e @ (StoreError::Conflict { .. }
                | StoreError::NotFound { .. }
                | StoreError::AlreadyExists { .. }),
            ) => {
                debug!(error = %e, "{what}: retrying next pass");
                failed += 1;
            }
            Err(e) => {
                warn!(error = %e, "{what} failed; retrying next pass");
                failed += 1;
            }
        }
    }
    Ok(failed)
}

/// Kinds whose changes wake the loop.
const WATCHED: [&str; 8] = [
    "Pod",
    "Deployment",
    "DaemonSet",
    "Service",
    "EndpointSlice",
    "Node",
    "Namespace",
    "ConfigMap",
];

/// Follows one kind and pokes `wake` on every change; re-lists and
/// re-watches after an error (compaction, store restart).
async fn watch_kind(store: SharedStore, kind: &'static str, wake: Arc<Notify>) {
    loop {
        if let Ok(list) = store.list(kind, None).await {
            // Changes between two watches are covered by the periodic pass.
            wake.notify_one();
            if let Ok(mut stream) = store.watch(kind, None, list.revision).await {
                while let Some(ev) = stream.next().await {
                    if ev.is_err() {
                        break;
                    }
                    wake.notify_one();
                }
            }
        }
        debug!(kind, "watch ended; watching again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs passes every [`ControllerOptions::interval`] until `shutdown`.
/// Store failures are logged and retried; they never end the loop.
pub async fn run_with(
    store: SharedStore,
    opts: ControllerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    tokio::pin!(shutdown);
    let mut rng = fastrand::Rng::new();
    let mut warned = HashSet::new();
    let mut store_down = false;
    let wake = Arc::new(Notify::new());
    let watchers: Vec<_> = if opts.watch {
        WATCHED
            .iter()
            .map(|k| tokio::spawn(watch_kind(store.clone(), k, wake.clone())))
            .collect()
    } else {
        Vec::new()
    };
    info!(interval = ?opts.interval, watch = opts.watch, "controller started");
    loop {
        match pass(&store, &opts, &mut rng, &mut warned).await {
            Ok(_) => {
                if store_down {
                    info!("store reachable again");
                    store_down = false;
                }
            }
            Err(e) => {
                if !store_down {
                    warn!(error = %e, "cannot read the store; retrying");
                }
                store_down = true;
            }
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(opts.interval) => {}
            () = wake.notified() => {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(opts.debounce) => {}
                }
            }
        }
    }
    for w in watchers {
        w.abort();
    }
    info!("controller stopped");
    Ok(())
}
