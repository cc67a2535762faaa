//! The conformance suite on a real etcd (Debian's `etcd` binary started on
//! loopback with a temporary data dir and free ports), plus restarts of etcd
//! under an active watch and during writes.
#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_store::{
    EtcdServer, EtcdServerConfig, EtcdStore, EtcdStoreOptions, Store, StoreError, WatchEvent,
};
use tempfile::TempDir;

/// One etcd member in a temp dir; `EtcdServer`'s Drop stops it (also on
/// panic), then the temp dir is removed.
struct Etcd {
    server: EtcdServer,
    _dir: TempDir,
}

fn start_etcd() -> Etcd {
    common::init_tracing();
    let dir = tempfile::Builder::new()
        .prefix(&format!("fibril-store-etcd-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let server = EtcdServer::start_local(dir.path().join("data")).unwrap();
    Etcd { server, _dir: dir }
}

async fn connect(etcd: &Etcd) -> Arc<dyn Store> {
    let store = EtcdStore::connect(
        vec![etcd.server.client_url().to_string()],
        EtcdStoreOptions::default(),
    )
    .await
    .unwrap();
    Arc::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let etcd = start_etcd();
    let store = connect(&etcd).await;
    let t = Instant::now();
    common::run_all(&*store).await;
    println!("etcd conformance suite took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_and_pid() {
    let mut etcd = start_etcd();
    let pid = etcd.server.pid().unwrap();
    assert!(etcd.server.is_running());
    etcd.server.restart().unwrap();
    assert_ne!(etcd.server.pid().unwrap(), pid);
    etcd.server.stop();
    assert!(!etcd.server.is_running());
    assert!(etcd.server.pid().is_none());
    // Stopped and reaped: the PID no longer exists.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// The store can be created before etcd runs; operations wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_before_etcd_is_up() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = EtcdServerConfig::local(dir.path().join("data")).unwrap();
    let store = EtcdStore::connect(vec![cfg.client_url.clone()], EtcdStoreOptions::default())
        .await
        .unwrap();
    let op = tokio::spawn(async move {
        store
            .create(&common::key("Early", None, "e"), common::doc(1))
            .await
    });
    let server = EtcdServer::start(cfg).unwrap();
    let created = op.await.unwrap().unwrap();
    assert!(created.mod_revision > 0);
    drop(server);
}

#[test]
fn start_failure_names_the_data_dir_and_shows_the_log() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    // Same client URL as a running member: etcd cannot bind and exits.
    let cfg = EtcdServerConfig::new(
        dir.path().join("data"),
        etcd.server.client_url().to_string(),
        format!(
            "http://127.0.0.1:{}",
            fibril_store::etcd_server::free_port("127.0.0.1").unwrap()
        ),
    );
    let e = EtcdServer::start(cfg).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&dir.path().join("data").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("address already in use"), "{msg}");
}

/// Prints figures (no assertions on time): sequential creates per second
/// and how long the watch takes to deliver them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures() {
    let etcd = start_etcd();
    let store = connect(&etcd).await;
    let start = store.list("Bench", None).await.unwrap().revision;
    let mut w = store.watch("Bench", None, start).await.unwrap();
    let n = 300;
    let t = Instant::now();
    for i in 0..n {
        store
            .create(
                &common::key("Bench", Some("default"), &format!("b-{i}")),
                common::doc(i),
            )
            .await
            .unwrap();
    }
    let writes = t.elapsed();
    for _ in 0..n {
        common::next_event(&mut w).await;
    }
    let all = t.elapsed();
    println!(
        "etcd: {n} sequential creates in {writes:?} ({:.0}/s); all {n} watch events by {all:?}",
        n as f64 / writes.as_secs_f64()
    );
}

/// Restart etcd (same data dir, same port) under an active watch while a
/// writer keeps writing: every write made before, during and after the
/// downtime arrives exactly once and in order.
async fn restart_under_watch(crash: bool) {
    let mut etcd = start_etcd();
    let store = connect(&etcd).await;
    let kind = "Restart";
    let ns = Some("default");
    let k = |n: &str| common::key(kind, ns, n);

    store.create(&k("before"), common::doc(0)).await.unwrap();
    let list = store.list(kind, None).await.unwrap();
    let mut w = store.watch(kind, None, list.revision).await.unwrap();

    let b1 = store.create(&k("b1"), common::doc(1)).await.unwrap();
    let ev = common::next_event(&mut w).await;
    assert_eq!(ev.revision(), b1.mod_revision);

    // Down: the writer's operations retry until etcd is back.
    if crash {
        etcd.server.kill();
    } else {
        etcd.server.stop();
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..3 {
                let o = store
                    .create(
                        &common::key(kind, Some("default"), &format!("during-{i}")),
                        common::doc(i),
                    )
                    .await
                    .unwrap();
                revs.push((o.key.name.clone(), o.mod_revision));
            }
            revs
        })
    };
    // Keep etcd down a moment so the writes really meet the outage.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = Instant::now();
    etcd.server.start_again().unwrap();
    let during = writer.await.unwrap();
    println!(
        "etcd back after {:?}; writes during outage completed",
        t.elapsed()
    );

    let mut expected: Vec<(String, i64)> = during;
    for i in 0..3 {
        let o = store
            .create(&k(&format!("after-{i}")), common::doc(i))
            .await
            .unwrap();
        expected.push((o.key.name.clone(), o.mod_revision));
    }
    let got: Vec<(String, i64)> = {
        let mut v = Vec::new();
        for _ in 0..expected.len() {
            match common::next_event(&mut w).await {
                WatchEvent::Added(o) => v.push((o.key.name.clone(), o.mod_revision)),
                other => panic!("unexpected {other:?}"),
            }
        }
        v
    };
    assert_eq!(
        got, expected,
        "events across the restart: exactly once, in order"
    );
    common::expect_only_sentinel(&*store, &mut w, kind, ns).await;

    // Updates with optimistic concurrency still work on the restarted server.
    let cur = store.get(&k("after-0")).await.unwrap().unwrap();
    store
        .update(&k("after-0"), common::doc(9), cur.mod_revision)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_etcd_under_active_watch() {
    restart_under_watch(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_etcd_under_active_watch() {
    restart_under_watch(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_after_bounded_retry() {
    let mut etcd = start_etcd();
    let store = EtcdStore::connect(
        vec![etcd.server.client_url().to_string()],
        EtcdStoreOptions {
            retry_for: Duration::from_millis(800),
            request_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    store
        .put(&common::key("Gone", None, "x"), common::doc(1))
        .await
        .unwrap();
    etcd.server.stop();
    let e = store
        .get(&common::key("Gone", None, "x"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("/fibril/Gone/_cluster/x"), "{e}");
}
