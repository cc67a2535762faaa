//! Shared helpers: an operator task with a stop handle, FibrilNode/pool/pod builders,
//! and polling with a deadline.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fibril_api::fibril::{
    FibrilNodeSpec, IpamPoolDemand, IpamPoolRequest, IpamPoolSpec, NodeIpamSpec,
};
use fibril_api::{FibrilNode, ObjectMeta, Pod};
use fibril_config::Config;
use fibril_operator::{OperatorError, OperatorOptions};
use fibril_store::{SharedStore, StoreExt};
use ipnet::{IpNet, Ipv4Net};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fibril_operator=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), OperatorError>>>,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub fn fast_opts() -> OperatorOptions {
    OperatorOptions {
        identity_gc_grace: Duration::from_millis(300),
        resync_interval: Duration::from_secs(2),
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(200),
        ..OperatorOptions::default()
    }
}

pub fn start(store: &SharedStore, config: &Config, opts: OperatorOptions) -> Running {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fibril_operator::run_with(
        store.clone(),
        config.clone(),
        opts,
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        stop: Some(tx),
        task: Some(task),
    }
}

pub fn config(sets: &[&str]) -> Config {
    let mut c = Config::default();
    c.apply_sets(sets).unwrap();
    c.validate().unwrap();
    c
}

/// Polls `f` until it returns `Some` (10 s deadline).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

pub async fn add_node(store: &SharedStore, name: &str) {
    store
        .create_as(&FibrilNode::new(name, FibrilNodeSpec::default()))
        .await
        .unwrap();
}

pub async fn node(store: &SharedStore, name: &str) -> Option<FibrilNode> {
    store.get_as::<FibrilNode>(None, name).await.unwrap()
}

pub async fn pod_cidrs(store: &SharedStore, name: &str) -> Vec<Ipv4Net> {
    node(store, name)
        .await
        .map(|n| {
            n.pod_cidrs()
                .iter()
                .filter_map(|c| match c {
                    IpNet::V4(c) => Some(*c),
                    IpNet::V6(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn operator_error(store: &SharedStore, name: &str) -> Option<String> {
    node(store, name)
        .await?
        .status?
        .ipam?
        .operator_status?
        .error
}

/// Writes the node's `spec.ipam.pools.requested` (read-modify-write, retried).
pub async fn request(store: &SharedStore, name: &str, reqs: &[(&str, u32)]) {
    update_node(store, name, |n| {
        let ipam = n
            .spec
            .get_or_insert_with(Default::default)
            .ipam
            .get_or_insert_with(NodeIpamSpec::default);
        let pools = ipam.pools.get_or_insert_with(IpamPoolSpec::default);
        pools.requested = reqs
            .iter()
            .map(|(p, n)| IpamPoolRequest {
                pool: p.to_string(),
                needed: IpamPoolDemand {
                    ipv4_addrs: Some(*n),
                    ipv6_addrs: None,
                },
            })
            .collect();
    })
    .await;
}

/// Read-modify-write of a FibrilNode, retried on conflict.
pub async fn update_node(store: &SharedStore, name: &str, f: impl Fn(&mut FibrilNode)) {
    loop {
        let mut n = node(store, name).await.unwrap();
        f(&mut n);
        match store.update_as(&n).await {
            Ok(_) => return,
            Err(fibril_store::StoreError::Conflict { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

pub fn pools_allocated(n: &FibrilNode) -> BTreeMap<String, Vec<Ipv4Net>> {
    fibril_operator::allocated_pools(n)
}

pub fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn memory_store() -> SharedStore {
    Arc::new(fibril_store::MemoryStore::new())
}
