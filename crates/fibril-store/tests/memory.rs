//! The conformance suite on the in-memory backend, plus its bounded history.
#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod common;

use std::sync::Arc;

use fibril_store::{MemoryStore, Store, StoreError};
use futures::StreamExt;

fn store() -> Arc<dyn Store> {
    common::init_tracing();
    Arc::new(MemoryStore::new())
}

#[tokio::test]
async fn crud() {
    common::crud(&*store()).await;
}

#[tokio::test]
async fn concurrent_updates() {
    common::concurrent_updates(&*store()).await;
}

#[tokio::test]
async fn list_then_watch() {
    common::list_then_watch(&*store()).await;
}

#[tokio::test]
async fn ordered_events() {
    common::ordered_events(&*store()).await;
}

#[tokio::test]
async fn namespace_filtering() {
    common::namespace_filtering(&*store()).await;
}

#[tokio::test]
async fn typed() {
    common::typed(&*store()).await;
}

#[tokio::test]
async fn compaction() {
    common::compaction(&*store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_cases_on_one_store() {
    common::run_all(&*store()).await;
}

#[tokio::test]
async fn bounded_history_reports_compaction() {
    let s = MemoryStore::with_history(5);
    let k = common::key("Hist", Some("default"), "h");
    let mut cur = s.create(&k, common::doc(0)).await.unwrap();
    for i in 1..10 {
        cur = s
            .update(&k, common::doc(i), cur.mod_revision)
            .await
            .unwrap();
    }
    assert_eq!(s.revision(), 10);
    // The last 5 events (revisions 6..=10) are kept: after 5 works, after 4 does not.
    let mut w = s.watch("Hist", None, 5).await.unwrap();
    assert_eq!(common::next_event(&mut w).await.revision(), 6);
    let e = s.watch("Hist", None, 4).await.err().unwrap();
    assert!(
        matches!(
            e,
            StoreError::Compacted {
                after: 4,
                available_from: 6,
                ..
            }
        ),
        "{e}"
    );

    // A watcher that falls behind the history gets Compacted, after the
    // events it could still read.
    let mut slow = s.watch("Hist", None, 9).await.unwrap();
    for i in 10..20 {
        cur = s
            .update(&k, common::doc(i), cur.mod_revision)
            .await
            .unwrap();
    }
    match slow.next().await {
        Some(Err(StoreError::Compacted { .. })) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        slow.next().await.is_none(),
        "the stream ends after Compacted"
    );
}

/// Typed helpers on `Arc<dyn Store>` produce `Send` futures usable in tasks.
#[tokio::test]
async fn typed_helpers_work_in_spawned_tasks() {
    use fibril_store::StoreExt;
    let s = store();
    let s2 = s.clone();
    let created = tokio::spawn(async move { s2.create_as(&common::widget("ns", "w", 1)).await })
        .await
        .unwrap()
        .unwrap();
    let got = tokio::spawn(async move { s.get_as::<common::Widget>(Some("ns"), "w").await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Some(created));
}
