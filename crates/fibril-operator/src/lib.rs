//! The Fibril operator (`fibril operator`, one per cluster): reconcilers over the
//! cluster store, in the kube-runtime style (a work queue of object keys; an idempotent
//! reconcile per key that reads the current object and writes it back at the revision
//! it read; conflicts and failures requeue with backoff; a periodic full resync).
//!
//! Reconcilers:
//! - **cluster-pool** (`ipam.mode=cluster-pool`): per-node blocks of
//!   `clusterPoolIPv4PodCIDRList` in FibrilNode `spec.ipam.podCIDRs`; extra blocks for
//!   exhausted nodes; blocks of deleted FibrilNodes released; list growth applied live.
//! - **multi-pool** (`ipam.mode=multi-pool`): FibrilPodIPPools (the auto-created ones
//!   from `autoCreateCiliumPodIPPools` are created as objects, like Cilium) and node
//!   requests `spec.ipam.pools.requested` answered in `spec.ipam.pools.allocated`.
//! - **node podCIDRs** (the lab's kube-controller-manager, any IPAM mode, on by
//!   default: [`OperatorOptions::manage_node_cidrs`]): every Node without a podCIDR gets
//!   the next `/k8sNodeCIDRMaskSize` of `k8sClusterCIDR` in `spec.podCIDR(s)`.
//! - **identities** ([`identity`]): one FibrilIdentity per distinct pod label set,
//!   stable ids, GC after [`OperatorOptions::identity_gc_grace`].
//! - **ip-masq-agent ConfigMap** ([`sync_ip_masq_agent`]): `kube-system/ip-masq-agent`
//!   written from `ipMasqAgent.config.*` as Helm would.
//!
//! Restart safety: all allocator state is rebuilt from the objects in the store
//! (FibrilNodes, Nodes, FibrilPodIPPools, FibrilIdentities) before anything is
//! allocated, so a restarted operator never moves an existing assignment.
//!
//! # FibrilNode contract between agent and operator
//!
//! Agent-side helpers: [`contract`].
//!
//! | field | written by | meaning |
//! |---|---|---|
//! | `spec.ipam.podCIDRs` | operator (cluster-pool); agent (kubernetes mode: copy of the Node's podCIDRs) | the node's pod CIDRs, in assignment order; the first is the original block |
//! | `spec.ipam.pools.requested[]` `{pool, needed: {ipv4-addrs}}` | agent | addresses the node needs per pool (multi-pool: [`fibril_ipam::MultiPoolNode::request`]; cluster-pool: one entry with pool `cluster-pool` and `used + pending` once the node runs out — the operator then adds blocks until their usable addresses cover it) |
//! | `spec.ipam.pools.allocated[]` `{pool, cidrs}` | operator; agent only removes | blocks per pool; to give a block back the agent drops it from this list (with its `requested` lowered) and writes at the revision it read |
//! | `status.ipam.operator-status.error` | operator | why a request cannot be served (pool exhausted, unknown pool); cleared when served |
//!
//! The operator never deletes FibrilNodes; deleting one releases its blocks. In
//! cluster-pool mode a FibrilNode whose podCIDRs all lie outside the pool (left over
//! from another IPAM mode) is not touched until it is re-created.
//!
//! The config comes from the `kube-system/fibril-config` ConfigMap when it exists
//! (watched: a grown CIDR list or a new auto-created pool applies live; a mode change
//! rebuilds the allocators from the store), else from the `config` argument.

pub mod contract;
pub mod identity;
mod ipam;
mod queue;

use std::future::Future;
use std::time::Duration;

use fibril_api::{ConfigMap, FibrilNode, FibrilPodIPPool, Namespace, Node, Pod, Resource};
use fibril_config::{Config, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};
use fibril_store::{SharedStore, StoreError, StoreExt, WatchEvent};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub use identity::{
    allocate_identity, candidate_id, find_identity, security_labels, IdentityError,
};
pub use ipam::{allocated_pools, ensure_auto_pools, node_pod_cidr, pool_spec, requested_ipv4};

use crate::identity::IdentityState;
use crate::ipam::{IpamState, Outcome};
use crate::queue::{Queue, Work};

/// Operator failures that stop [`run`] (everything else is retried).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The store failed while restoring state at start.
    #[error("operator: {0}")]
    Store(#[from] StoreError),
    /// The config cannot be used (message names the key and value).
    #[error("operator config: {0}")]
    Config(String),
    /// Identity allocation failed.
    #[error("operator: {0}")]
    Identity(#[from] IdentityError),
}

/// Tuning knobs; [`Default`] suits the lab.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// How long an identity no pod uses is kept before it is deleted.
    pub identity_gc_grace: Duration,
    /// Full resync period (every object reconciled again).
    pub resync_interval: Duration,
    /// First retry delay after a failed or degraded reconcile (doubles per attempt).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Play kube-controller-manager: give Nodes without a podCIDR one from
    /// `k8sClusterCIDR` (the lab has no kube-controller-manager; turn off on a real
    /// cluster).
    pub manage_node_cidrs: bool,
    /// Use and watch the `kube-system/fibril-config` ConfigMap when it exists.
    pub use_stored_config: bool,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            identity_gc_grace: Duration::from_secs(60),
            resync_interval: Duration::from_secs(30),
            retry_base: Duration::from_millis(20),
            retry_max: Duration::from_secs(5),
            manage_node_cidrs: true,
            use_stored_config: true,
        }
    }
}

/// Runs the operator with [`OperatorOptions::default`] until `shutdown` completes.
pub async fn run(
    store: SharedStore,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), OperatorError> {
    run_with(store, config, OperatorOptions::default(), shutdown).await
}

struct Operator {
    store: SharedStore,
    config: Config,
    opts: OperatorOptions,
    ipam: IpamState,
    ids: IdentityState,
    queue: Queue,
}

/// Runs the operator until `shutdown` completes. Fails only if the start-up restore
/// cannot read the store or the config is unusable; later errors are logged and retried.
pub async fn run_with(
    store: SharedStore,
    config: Config,
    opts: OperatorOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), OperatorError> {
    tokio::pin!(shutdown);
    // The store may be down when the operator starts (etcd restarting): keep trying
    // until it answers or we are told to stop.
    let mut delay = Duration::from_millis(100);
    let (config, ipam) = loop {
        match start_state(&store, &config, &opts).await {
            Ok(v) => break v,
            Err(OperatorError::Store(e)) => {
                warn!(error = %e, ?delay, "store not ready; retrying the start-up restore");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    };
    info!(mode = %config.ipam.mode, "operator state restored from the store");
    let mut op = Operator {
        store: store.clone(),
        config,
        opts,
        ipam,
        ids: IdentityState::default(),
        queue: Queue::default(),
    };

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watchers = Vec::new();
    watchers.push(spawn_watch::<FibrilNode>(
        store.clone(),
        None,
        tx.clone(),
        |n| Some(Work::FibrilNode(n.to_owned())),
    ));
    watchers.push(spawn_watch::<FibrilPodIPPool>(
        store.clone(),
        None,
        tx.clone(),
        |_| Some(Work::Pools),
    ));
    watchers.push(spawn_watch::<Pod>(store.clone(), None, tx.clone(), |_| {
        Some(Work::Identities)
    }));
    watchers.push(spawn_watch::<Namespace>(
        store.clone(),
        None,
        tx.clone(),
        |_| Some(Work::Identities),
    ));
    if op.opts.manage_node_cidrs {
        watchers.push(spawn_watch::<Node>(store.clone(), None, tx.clone(), |n| {
            Some(Work::Node(n.to_owned()))
        }));
    }
    if op.opts.use_stored_config {
        watchers.push(spawn_watch::<ConfigMap>(
            store.clone(),
            Some(CONFIGMAP_NAMESPACE),
            tx.clone(),
            |n| (n == CONFIGMAP_NAME).then_some(Work::Config),
        ));
    }
    drop(tx);

    let now = Instant::now();
    op.queue.add(Work::Pools, now);
    op.queue.add(Work::ResyncAll, now);
    let mut resync =
        tokio::time::interval_at(now + op.opts.resync_interval, op.opts.resync_interval);
    loop {
        let next = op.queue.next_due();
        tokio::select! {
            () = &mut shutdown => break,
            w = rx.recv() => match w {
                Some(w) => op.queue.add(w, Instant::now()),
                None => {
                    error!("all watches ended");
                    break;
                }
            },
            _ = resync.tick() => op.queue.add(Work::ResyncAll, Instant::now()),
            () = sleep_until_opt(next) => {}
        }
        // Take in everything already sent before reconciling, so bursts coalesce.
        while let Ok(w) = rx.try_recv() {
            op.queue.add(w, Instant::now());
        }
        while let Some(w) = op.queue.pop_due(Instant::now()) {
            op.process(w).await;
        }
    }
    for w in watchers {
        w.abort();
    }
    info!("operator stopped");
    Ok(())
}

/// The config to run with (stored one first) and the allocators restored from the store.
async fn start_state(
    store: &SharedStore,
    config: &Config,
    opts: &OperatorOptions,
) -> Result<(Config, IpamState), OperatorError> {
    let config = if opts.use_stored_config {
        match fibril_config::store::load(store.as_ref()).await {
            Ok(Some((c, _))) => c,
            Ok(None) => config.clone(),
            Err(fibril_config::store::LoadError::Store(e)) => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, "stored config unusable; using the given config");
                config.clone()
            }
        }
    } else {
        config.clone()
    };
    config
        .validate()
        .map_err(|e| OperatorError::Config(e.to_string()))?;
    let ipam = IpamState::restore(store.as_ref(), &config, opts.manage_node_cidrs).await?;
    Ok((config, ipam))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Operator {
    async fn process(&mut self, w: Work) {
        let store = self.store.clone();
        let result: Result<Outcome, String> = match &w {
            Work::FibrilNode(name) => self
                .ipam
                .reconcile_fibril_node(store.as_ref(), name)
                .await
                .map_err(|e| e.to_string()),
            Work::Node(name) => self
                .ipam
                .reconcile_node(store.as_ref(), name)
                .await
                .map_err(|e| e.to_string()),
            Work::Pools => match self.ipam.sync_pools(store.as_ref()).await {
                Ok(()) => {
                    self.enqueue_all_nodes().await;
                    Ok(Outcome::Done)
                }
                Err(e) => Err(e.to_string()),
            },
            Work::Identities => {
                match self
                    .ids
                    .sync(
                        store.as_ref(),
                        self.opts.identity_gc_grace,
                        std::time::Instant::now(),
                    )
                    .await
                {
                    Ok(pass) => {
                        if !pass.created.is_empty() || !pass.deleted.is_empty() {
                            info!(created = ?pass.created, deleted = ?pass.deleted, "identities");
                        }
                        if let Some(at) = pass.next_gc {
                            let wait = at.saturating_duration_since(std::time::Instant::now());
                            self.queue.add(Work::Identities, Instant::now() + wait);
                        }
                        Ok(Outcome::Done)
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Work::Config => self.reload_config().await.map(|()| Outcome::Done),
            Work::ResyncAll => {
                if let Err(e) = sync_ip_masq_agent(store.as_ref(), &self.config).await {
                    warn!(error = %e, "ip-masq-agent ConfigMap not written");
                }
                self.enqueue_all_nodes().await;
                self.queue.add(Work::Identities, Instant::now());
                Ok(Outcome::Done)
            }
        };
        match result {
            Ok(Outcome::Done) => self.queue.succeeded(&w),
            Ok(Outcome::Degraded(why)) => {
                let delay = self.queue.failed(&w, &self.opts);
                debug!(work = ?w, %why, ?delay, "not fully served; will retry");
            }
            Err(why) => {
                let delay = self.queue.failed(&w, &self.opts);
                if why.contains("conflict on") {
                    debug!(work = ?w, %why, "conflict; retrying");
                } else {
                    warn!(work = ?w, %why, ?delay, "reconcile failed; will retry");
                }
            }
        }
    }

    async fn enqueue_all_nodes(&mut self) {
        let now = Instant::now();
        let mut names = self.ipam.known_nodes();
        match self.store.list_as::<FibrilNode>(None).await {
            Ok(l) => names.extend(l.items.into_iter().filter_map(|n| n.metadata.name)),
            Err(e) => warn!(error = %e, "listing FibrilNodes for resync"),
        }
        for n in names {
            self.queue.add(Work::FibrilNode(n), now);
        }
        if self.opts.manage_node_cidrs {
            let mut names = self.ipam.known_k8s_nodes();
            match self.store.list_as::<Node>(None).await {
                Ok(l) => names.extend(l.items.into_iter().filter_map(|n| n.metadata.name)),
                Err(e) => warn!(error = %e, "listing Nodes for resync"),
            }
            for n in names {
                self.queue.add(Work::Node(n), now);
            }
        }
    }

    async fn reload_config(&mut self) -> Result<(), String> {
        let new = match fibril_config::store::load(self.store.as_ref()).await {
            Ok(Some((c, _))) => c,
            Ok(None) => return Ok(()),
            Err(fibril_config::store::LoadError::Store(e)) => return Err(e.to_string()),
            Err(e) => {
                // A bad config is not retried: the next change of the ConfigMap is.
                error!(error = %e, "ignoring invalid stored config");
                return Ok(());
            }
        };
        if new == self.config {
            return Ok(());
        }
        if new.ipam.mode != self.config.ipam.mode {
            info!(from = %self.config.ipam.mode, to = %new.ipam.mode, "IPAM mode changed; rebuilding allocators from the store");
            self.ipam = IpamState::restore(self.store.as_ref(), &new, self.opts.manage_node_cidrs)
                .await
                .map_err(|e| e.to_string())?;
        } else if let Err(e) = self
            .ipam
            .reconfigure(self.store.as_ref(), &self.config, &new)
            .await
        {
            error!(error = %e, "config change cannot be applied; keeping the previous IPAM settings");
            return Ok(());
        }
        info!("config applied");
        self.config = new;
        self.queue.add(Work::Pools, Instant::now());
        self.queue.add(Work::ResyncAll, Instant::now());
        Ok(())
    }
}

/// Namespace of the ip-masq-agent ConfigMap.
pub const IP_MASQ_AGENT_NAMESPACE: &str = "kube-system";
/// Name of the ip-masq-agent ConfigMap (its `config` key holds the JSON the agents read).
pub const IP_MASQ_AGENT_CONFIGMAP: &str = "ip-masq-agent";

/// Writes `kube-system/ip-masq-agent` (`data.config`, JSON as in the seeds:
/// `{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"]}`) when the config sets
/// `ipMasqAgent.config.nonMasqueradeCIDRs`, as Helm does. Without that key an existing
/// ConfigMap (e.g. applied by hand) is left alone. Returns whether it wrote.
pub async fn sync_ip_masq_agent(
    store: &dyn fibril_store::Store,
    config: &Config,
) -> Result<bool, StoreError> {
    let Some(json) = config.ip_masq_agent_config_json() else {
        return Ok(false);
    };
    loop {
        let current = store
            .get_as::<ConfigMap>(Some(IP_MASQ_AGENT_NAMESPACE), IP_MASQ_AGENT_CONFIGMAP)
            .await?;
        let mut cm = current.clone().unwrap_or_else(|| ConfigMap {
            metadata: fibril_api::ObjectMeta {
                name: Some(IP_MASQ_AGENT_CONFIGMAP.into()),
                namespace: Some(IP_MASQ_AGENT_NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let data = cm.data.get_or_insert_with(Default::default);
        if data.get("config") == Some(&json) {
            return Ok(false);
        }
        data.insert("config".into(), json.clone());
        let res = match current {
            Some(_) => store.update_as(&cm).await,
            None => store.create_as(&cm).await,
        };
        match res {
            Ok(_) => {
                info!(config = %json, "ip-masq-agent ConfigMap written");
                return Ok(true);
            }
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Lists then watches `R` (in `namespace`), sending the work item of every object seen;
/// relists when the watch ends or history was compacted.
fn spawn_watch<R: Resource>(
    store: SharedStore,
    namespace: Option<&'static str>,
    tx: mpsc::UnboundedSender<Work>,
    to_work: fn(&str) -> Option<Work>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(50);
        loop {
            let list = match store.list(R::KIND, namespace).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(kind = R::KIND, error = %e, "list failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            for o in &list.items {
                if let Some(w) = to_work(&o.key.name) {
                    if tx.send(w).is_err() {
                        return;
                    }
                }
            }
            // Deletions missed between two watches are found by the resync.
            if tx.send(Work::ResyncAll).is_err() {
                return;
            }
            let mut stream = match store.watch(R::KIND, namespace, list.revision).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(kind = R::KIND, error = %e, "watch failed; relisting");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            delay = Duration::from_millis(50);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        let name = match &ev {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => &o.key.name,
                            WatchEvent::Deleted { key, .. } => &key.name,
                        };
                        if let Some(w) = to_work(name) {
                            if tx.send(w).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        debug!(kind = R::KIND, error = %e, "watch ended; relisting");
                        break;
                    }
                }
            }
        }
    })
}
