//! Optimistic-concurrency conflicts: a store that makes the first updates of every
//! FibrilNode and Node lose a race (another writer bumps the object just before). The
//! operator re-reads and retries until its write lands.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use fibril_api::ObjectKey;
use fibril_store::{
    MemoryStore, ObjectList, Revision, SharedStore, Store, StoreError, StoreExt, StoredObject,
    WatchStream,
};
use serde_json::Value;

struct Racy {
    inner: MemoryStore,
    conflicts_left: AtomicU32,
    conflicts_made: AtomicU32,
}

#[async_trait]
impl Store for Racy {
    async fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, kind: &str, namespace: Option<&str>) -> Result<ObjectList, StoreError> {
        self.inner.list(kind, namespace).await
    }
    async fn watch(
        &self,
        kind: &str,
        namespace: Option<&str>,
        after: Revision,
    ) -> Result<WatchStream, StoreError> {
        self.inner.watch(kind, namespace, after).await
    }
    async fn create(&self, key: &ObjectKey, value: Value) -> Result<StoredObject, StoreError> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &ObjectKey,
        value: Value,
        expected: Revision,
    ) -> Result<StoredObject, StoreError> {
        if (key.kind == "FibrilNode" || key.kind == "Node")
            && self
                .conflicts_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            // Another writer gets there first with an unchanged copy.
            if let Some(cur) = self.inner.get(key).await? {
                self.inner.put(key, cur.value).await?;
                self.conflicts_made.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.inner.update(key, value, expected).await
    }
    async fn put(&self, key: &ObjectKey, value: Value) -> Result<StoredObject, StoreError> {
        self.inner.put(key, value).await
    }
    async fn delete(
        &self,
        key: &ObjectKey,
        expected: Option<Revision>,
    ) -> Result<StoredObject, StoreError> {
        self.inner.delete(key, expected).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}

#[tokio::test]
async fn conflicting_writes_are_retried() {
    init_tracing();
    let racy = Arc::new(Racy {
        inner: MemoryStore::new(),
        conflicts_left: AtomicU32::new(10),
        conflicts_made: AtomicU32::new(0),
    });
    let store: SharedStore = racy.clone();
    let cfg = config(&["ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}"]);
    let op = start(&store, &cfg, fast_opts());
    for n in ["a", "b", "c"] {
        add_node(&store, n).await;
        store
            .create_as(&fibril_api::Node {
                metadata: fibril_api::ObjectMeta {
                    name: Some(n.into()),
                    ..Default::default()
                },
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for n in ["a", "b", "c"] {
        got.push(
            eventually(n, || async {
                let c = pod_cidrs(&store, n).await;
                c.first().copied()
            })
            .await,
        );
        eventually("node podCIDR", || async {
            let node = store.get_as::<fibril_api::Node>(None, n).await.unwrap()?;
            fibril_operator::node_pod_cidr(&node)
        })
        .await;
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 3, "distinct blocks despite conflicts: {got:?}");
    assert!(racy.conflicts_made.load(Ordering::SeqCst) >= 6);
    op.stop().await;
}
