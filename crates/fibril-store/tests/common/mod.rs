//! The backend conformance suite: every case is a generic async fn over
//! `&dyn Store`, run against the in-memory store (tests/memory.rs) and a real
//! etcd (tests/etcd.rs). Each case uses its own kinds, so cases can share
//! one store.
#![allow(dead_code)]

use std::time::Duration;

use fibril_api::{ObjectKey, Resource};
use fibril_store::{Revision, Store, StoreError, StoreExt, TypedEvent, WatchEvent, WatchStream};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Generous deadline for an expected event to arrive (not a timing assertion).
pub const EVENT_DEADLINE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Widget {
    pub metadata: ObjectMeta,
    pub spec: WidgetSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WidgetSpec {
    pub size: u32,
}

impl Resource for Widget {
    const API_VERSION: &'static str = "test.fibril.io/v1";
    const KIND: &'static str = "Widget";
    const NAMESPACED: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

pub fn widget(ns: &str, name: &str, size: u32) -> Widget {
    Widget {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: WidgetSpec { size },
    }
}

pub fn key(kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey::new(kind, ns, name)
}

pub fn doc(n: u64) -> Value {
    json!({"apiVersion": "v1", "metadata": {}, "data": {"n": n}})
}

pub async fn next_event(w: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_DEADLINE, w.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_DEADLINE:?}"),
    }
}

/// A compact description of an event for comparisons.
pub fn describe(ev: &WatchEvent) -> (String, String, Revision) {
    let t = match ev {
        WatchEvent::Added(_) => "Added",
        WatchEvent::Modified(_) => "Modified",
        WatchEvent::Deleted { .. } => "Deleted",
    };
    (t.to_string(), ev.key().to_string(), ev.revision())
}

/// Writes a sentinel and checks that the next event is that sentinel: proves
/// no extra (duplicate) event was queued before it.
pub async fn expect_only_sentinel(
    store: &dyn Store,
    w: &mut WatchStream,
    kind: &str,
    ns: Option<&str>,
) {
    let k = key(kind, ns, "zz-sentinel");
    let o = store.create(&k, doc(0)).await.unwrap();
    let ev = next_event(w).await;
    assert_eq!(
        describe(&ev),
        ("Added".into(), k.to_string(), o.mod_revision),
        "expected only the sentinel, got an extra event"
    );
}

pub async fn crud(store: &dyn Store) {
    let k = key("CrudThing", Some("default"), "a");
    assert!(store.get(&k).await.unwrap().is_none());

    let created = store.create(&k, doc(1)).await.unwrap();
    assert!(created.mod_revision > 0);
    assert_eq!(created.create_revision, created.mod_revision);
    let meta = &created.value["metadata"];
    assert_eq!(meta["name"], "a");
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["resourceVersion"], created.mod_revision.to_string());
    assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(meta["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let got = store.get(&k).await.unwrap().unwrap();
    assert_eq!(got, created);

    let e = store.create(&k, doc(2)).await.unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
    assert!(e.to_string().contains("CrudThing/default/a"), "{e}");

    // Update at the right revision, then a stale update conflicts.
    let mut v = got.value.clone();
    v["data"]["n"] = json!(2);
    let updated = store.update(&k, v.clone(), got.mod_revision).await.unwrap();
    assert!(updated.mod_revision > got.mod_revision);
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.value["data"]["n"], 2);
    assert_eq!(updated.value["metadata"]["uid"], meta["uid"]);
    let e = store.update(&k, v, got.mod_revision).await.unwrap_err();
    match &e {
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => {
            assert_eq!(key, &k);
            assert_eq!(*expected, got.mod_revision);
            assert_eq!(*actual, updated.mod_revision);
        }
        other => panic!("expected conflict, got {other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("CrudThing/default/a"), "{msg}");
    assert!(msg.contains(&got.mod_revision.to_string()), "{msg}");
    assert!(msg.contains(&updated.mod_revision.to_string()), "{msg}");

    // Name mismatch is rejected before writing.
    let e = store
        .update(&k, json!({"metadata": {"name": "b"}}), updated.mod_revision)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidObject { .. }), "{e}");

    // Update of a missing object.
    let missing = key("CrudThing", Some("default"), "missing");
    let e = store.update(&missing, doc(1), 1).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("CrudThing/default/missing"), "{e}");
    assert!(
        store.get(&missing).await.unwrap().is_none(),
        "update must not create"
    );

    // Delete at a stale revision conflicts; at the right one succeeds.
    let e = store.delete(&k, Some(got.mod_revision)).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let deleted = store.delete(&k, Some(updated.mod_revision)).await.unwrap();
    assert_eq!(deleted.value["data"]["n"], 2);
    assert!(store.get(&k).await.unwrap().is_none());
    let e = store.delete(&k, None).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("CrudThing/default/a"), "{e}");

    // Put creates then replaces; unconditional delete.
    let p1 = store.put(&k, doc(5)).await.unwrap();
    let p2 = store.put(&k, doc(6)).await.unwrap();
    assert!(p2.mod_revision > p1.mod_revision);
    assert_eq!(p2.create_revision, p1.mod_revision);
    assert_eq!(store.delete(&k, None).await.unwrap().value["data"]["n"], 6);

    // Cluster-scoped keys have no namespace.
    let ck = key("CrudCluster", None, "node-1");
    let c = store
        .create(&ck, json!({"metadata": {"namespace": "stray"}}))
        .await
        .unwrap();
    assert!(c.value["metadata"].get("namespace").is_none());
    assert_eq!(
        store.list("CrudCluster", None).await.unwrap().items.len(),
        1
    );
}

pub async fn list_then_watch(store: &dyn Store) {
    let kind = "ListWatch";
    let ns = Some("default");
    for i in 0..3 {
        store
            .create(&key(kind, ns, &format!("pre-{i}")), doc(i))
            .await
            .unwrap();
    }
    let list = store.list(kind, None).await.unwrap();
    assert_eq!(list.items.len(), 3);
    let names: Vec<_> = list.items.iter().map(|o| o.key.name.clone()).collect();
    assert_eq!(names, ["pre-0", "pre-1", "pre-2"]);
    assert!(list.items.iter().all(|o| o.mod_revision <= list.revision));

    // Writes between the list and the watch must not be lost.
    let gap = store.create(&key(kind, ns, "gap"), doc(9)).await.unwrap();
    let mut w = store.watch(kind, None, list.revision).await.unwrap();
    let mut expected = vec![(
        "Added".to_string(),
        key(kind, ns, "gap").to_string(),
        gap.mod_revision,
    )];
    let u = store
        .update(&key(kind, ns, "pre-0"), doc(10), list.items[0].mod_revision)
        .await
        .unwrap();
    expected.push((
        "Modified".into(),
        key(kind, ns, "pre-0").to_string(),
        u.mod_revision,
    ));
    let d = store.delete(&key(kind, ns, "pre-1"), None).await.unwrap();
    let _ = d;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_event(&mut w).await);
    }
    let del_rev = got[2].revision();
    expected.push((
        "Deleted".into(),
        key(kind, ns, "pre-1").to_string(),
        del_rev,
    ));
    assert_eq!(got.iter().map(describe).collect::<Vec<_>>(), expected);
    assert!(del_rev > u.mod_revision);
    match &got[2] {
        WatchEvent::Deleted { last, .. } => {
            let last = last.as_ref().expect("deleted event carries the last state");
            assert_eq!(last["data"]["n"], 1);
        }
        other => panic!("expected Deleted, got {other:?}"),
    }
    expect_only_sentinel(store, &mut w, kind, ns).await;

    // Watching from the list revision again replays the same events.
    let mut again = store.watch(kind, None, list.revision).await.unwrap();
    for want in &expected {
        assert_eq!(&describe(&next_event(&mut again).await), want);
    }
}

pub async fn ordered_events(store: &dyn Store) {
    let kind = "Ordered";
    let ns = Some("ns1");
    let start = store.list(kind, None).await.unwrap().revision;
    let mut w = store.watch(kind, None, start).await.unwrap();
    let n = 50;
    let mut expected = Vec::new();
    let writer = async {
        for i in 0..n {
            let k = key(kind, ns, &format!("o-{}", i % 5));
            let ev = match store.get(&k).await.unwrap() {
                None => {
                    let o = store.create(&k, doc(i)).await.unwrap();
                    ("Added".to_string(), k.to_string(), o.mod_revision)
                }
                Some(cur) if i % 7 == 0 => {
                    store.delete(&k, Some(cur.mod_revision)).await.unwrap();
                    // Revision of the delete is learned from the event.
                    ("Deleted".to_string(), k.to_string(), -1)
                }
                Some(cur) => {
                    let o = store.update(&k, doc(i), cur.mod_revision).await.unwrap();
                    ("Modified".to_string(), k.to_string(), o.mod_revision)
                }
            };
            expected.push(ev);
        }
    };
    writer.await;
    let mut last = start;
    for want in &expected {
        let ev = describe(&next_event(&mut w).await);
        assert!(ev.2 > last, "revisions must increase: {ev:?} after {last}");
        last = ev.2;
        if want.2 == -1 {
            assert_eq!((&ev.0, &ev.1), (&want.0, &want.1));
        } else {
            assert_eq!(&ev, want);
        }
    }
    expect_only_sentinel(store, &mut w, kind, ns).await;
}

pub async fn namespace_filtering(store: &dyn Store) {
    let kind = "NsFilter";
    let start = store.list(kind, None).await.unwrap().revision;
    let mut wa = store.watch(kind, Some("a"), start).await.unwrap();
    let mut wall = store.watch(kind, None, start).await.unwrap();
    let a1 = store
        .create(&key(kind, Some("a"), "x"), doc(1))
        .await
        .unwrap();
    let b1 = store
        .create(&key(kind, Some("b"), "x"), doc(2))
        .await
        .unwrap();
    // Same name prefix in a longer namespace and a longer kind must not leak in.
    store
        .create(&key(kind, Some("ab"), "x"), doc(3))
        .await
        .unwrap();
    store
        .create(&key("NsFilterX", Some("a"), "x"), doc(4))
        .await
        .unwrap();
    let a2 = store
        .create(&key(kind, Some("a"), "y"), doc(5))
        .await
        .unwrap();

    let la = store.list(kind, Some("a")).await.unwrap();
    let names: Vec<_> = la.items.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(names, ["NsFilter/a/x", "NsFilter/a/y"]);
    assert_eq!(store.list(kind, None).await.unwrap().items.len(), 4);
    assert_eq!(store.list(kind, Some("b")).await.unwrap().items.len(), 1);
    assert!(store
        .list(kind, Some("zzz"))
        .await
        .unwrap()
        .items
        .is_empty());

    assert_eq!(describe(&next_event(&mut wa).await).2, a1.mod_revision);
    assert_eq!(describe(&next_event(&mut wa).await).2, a2.mod_revision);
    expect_only_sentinel(store, &mut wa, kind, Some("a")).await;

    let revs: Vec<_> = [
        next_event(&mut wall).await,
        next_event(&mut wall).await,
        next_event(&mut wall).await,
        next_event(&mut wall).await,
    ]
    .iter()
    .map(|e| e.key().to_string())
    .collect();
    assert_eq!(
        revs,
        [
            "NsFilter/a/x",
            "NsFilter/b/x",
            "NsFilter/ab/x",
            "NsFilter/a/y"
        ]
    );
    let _ = b1;

    // Invalid keys name the culprit.
    let e = store.get(&key(kind, Some("a/b"), "x")).await.unwrap_err();
    assert!(e.to_string().contains("a/b"), "{e}");
}

pub async fn compaction(store: &dyn Store) {
    let kind = "Compacted";
    let k = key(kind, Some("default"), "c");
    let first = store.create(&k, doc(1)).await.unwrap();
    let mut cur = first.clone();
    for i in 0..3 {
        cur = store.update(&k, doc(i), cur.mod_revision).await.unwrap();
    }
    store.compact(cur.mod_revision).await.unwrap();
    // Watching from before the compaction point fails distinctly.
    let err = match store.watch(kind, None, first.mod_revision).await {
        Err(e) => e,
        Ok(mut w) => match tokio::time::timeout(EVENT_DEADLINE, w.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("expected a Compacted error, got {other:?}"),
        },
    };
    match &err {
        StoreError::Compacted { available_from, .. } => {
            assert_eq!(*available_from, cur.mod_revision)
        }
        other => panic!("expected Compacted, got {other}"),
    }
    assert!(err.to_string().contains("relist"), "{err}");
    // The list revision is still watchable.
    let list = store.list(kind, None).await.unwrap();
    let mut w = store.watch(kind, None, list.revision).await.unwrap();
    let u = store.update(&k, doc(9), cur.mod_revision).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), u.mod_revision);
}

pub async fn typed(store: &dyn Store) {
    let list = store.list_as::<Widget>(None).await.unwrap();
    assert!(list.items.is_empty());
    let mut w = store
        .watch_as::<Widget>(Some("team"), list.revision)
        .await
        .unwrap();

    let created = store.create_as(&widget("team", "w1", 1)).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let got = store
        .get_as::<Widget>(Some("team"), "w1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, created);
    // The stored document is a manifest: apiVersion and kind are filled.
    let raw = store
        .get(&key("Widget", Some("team"), "w1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.value["apiVersion"], "test.fibril.io/v1");
    assert_eq!(raw.value["kind"], "Widget");

    let mut bigger = got.clone();
    bigger.spec.size = 2;
    let updated = store.update_as(&bigger).await.unwrap();
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    // A second update from the stale copy conflicts.
    let e = store.update_as(&bigger).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    // Update without resourceVersion is refused.
    let e = store.update_as(&widget("team", "w1", 3)).await.unwrap_err();
    assert!(e.to_string().contains("resourceVersion"), "{e}");

    let l = store.list_as::<Widget>(Some("team")).await.unwrap();
    assert_eq!(l.items, vec![updated.clone()]);

    let deleted = store
        .delete_as::<Widget>(Some("team"), "w1", None)
        .await
        .unwrap();
    assert_eq!(deleted.spec.size, 2);

    let evs: Vec<TypedEvent<Widget>> = vec![
        w.next().await.unwrap().unwrap(),
        w.next().await.unwrap().unwrap(),
        w.next().await.unwrap().unwrap(),
    ];
    assert!(matches!(&evs[0], TypedEvent::Added(x) if x.spec.size == 1));
    assert!(matches!(&evs[1], TypedEvent::Modified(x) if x.spec.size == 2));
    assert!(
        matches!(&evs[2], TypedEvent::Deleted { key, last: Some(x), .. } if key.name == "w1" && x.spec.size == 2)
    );
    assert!(evs[0].revision() < evs[1].revision() && evs[1].revision() < evs[2].revision());

    // A document that does not fit the type: the error names key and kind.
    store
        .create(
            &key("Widget", Some("team"), "bad"),
            json!({"spec": {"size": "huge"}}),
        )
        .await
        .unwrap();
    let e = store
        .get_as::<Widget>(Some("team"), "bad")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Decode { .. }), "{e}");
    assert!(e.to_string().contains("Widget/team/bad"), "{e}");
}

/// Two writers increment one counter with read-modify-write and retry on
/// conflict: no increment is lost.
pub async fn concurrent_updates(store: &dyn Store) {
    let k = key("Counter", Some("default"), "c");
    store
        .create(&k, json!({"metadata": {}, "n": 0}))
        .await
        .unwrap();
    let per_writer = 25;
    let writer = || async {
        let mut conflicts = 0u32;
        for _ in 0..per_writer {
            loop {
                let cur = store.get(&k).await.unwrap().unwrap();
                // Let the other writer interleave between read and write.
                tokio::task::yield_now().await;
                let mut v = cur.value.clone();
                v["n"] = json!(v["n"].as_u64().unwrap() + 1);
                match store.update(&k, v, cur.mod_revision).await {
                    Ok(_) => break,
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        conflicts
    };
    let (c1, c2) = tokio::join!(writer(), writer());
    let end = store.get(&k).await.unwrap().unwrap();
    assert_eq!(end.value["n"], 2 * per_writer);
    println!("concurrent updates: {} conflicts retried", c1 + c2);
}

/// Every case, on one store.
pub async fn run_all(store: &dyn Store) {
    crud(store).await;
    concurrent_updates(store).await;
    list_then_watch(store).await;
    ordered_events(store).await;
    namespace_filtering(store).await;
    typed(store).await;
    compaction(store).await;
}
