//! Restart safety on a real etcd (Debian's `etcd`, loopback, temp dir): assignments and
//! identities survive an operator restart and an etcd restart; deleted nodes' blocks
//! are reused; an exhausted node gets an extra block.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use fibril_api::FibrilIdentity;
use fibril_store::{EtcdServer, EtcdStore, EtcdStoreOptions, SharedStore, StoreExt};

async fn connect(server: &EtcdServer) -> SharedStore {
    Arc::new(
        EtcdStore::connect(
            vec![server.client_url().to_string()],
            EtcdStoreOptions::default(),
        )
        .await
        .unwrap(),
    )
}

async fn snapshot(store: &SharedStore, names: &[&str]) -> BTreeMap<String, Vec<ipnet::Ipv4Net>> {
    let mut m = BTreeMap::new();
    for n in names {
        m.insert(n.to_string(), pod_cidrs(store, n).await);
    }
    m
}

async fn identity_map(store: &SharedStore) -> BTreeMap<u32, BTreeMap<String, String>> {
    store
        .list_as::<FibrilIdentity>(None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| (i.id().unwrap(), i.security_labels))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_safety_on_etcd() {
    init_tracing();
    let dir = tempfile::Builder::new()
        .prefix(&format!("fibril-operator-etcd-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let mut server = EtcdServer::start_local(dir.path().join("data")).unwrap();
    let store = connect(&server).await;
    let cfg = config(&[
        "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.42.0/28,172.20.84.0/28}",
        "ipam.operator.clusterPoolIPv4MaskSize=29",
    ]);
    fibril_config::store::save(store.as_ref(), &cfg)
        .await
        .unwrap();
    let op = start(&store, &cfg, fast_opts());
    let names = ["cilium-ctr", "cilium-w1", "cilium-w2"];
    for n in names {
        add_node(&store, n).await;
        store
            .create_as(&pod("default", &format!("{n}-pod"), &[("app", n)]))
            .await
            .unwrap();
    }
    for n in names {
        eventually(n, || async {
            (!pod_cidrs(&store, n).await.is_empty()).then_some(())
        })
        .await;
    }
    let ids = eventually("identities", || async {
        let m = identity_map(&store).await;
        (m.len() == 3).then_some(m)
    })
    .await;
    let before = snapshot(&store, &names).await;
    op.stop().await;

    // Operator restart: nothing moves, identities keep their numbers.
    let op = start(&store, &cfg, fast_opts());
    add_node(&store, "cilium-w3").await;
    let w3 = eventually("w3", || async {
        let c = pod_cidrs(&store, "cilium-w3").await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(w3, vec![net("172.20.84.8/29")], "the only block left");
    assert_eq!(snapshot(&store, &names).await, before);
    assert_eq!(identity_map(&store).await, ids);
    op.stop().await;

    // etcd restart (same data dir) and operator restart.
    server.restart().unwrap();
    let store = connect(&server).await;
    let op = start(&store, &cfg, fast_opts());
    assert_eq!(snapshot(&store, &names).await, before);
    // Exhausted node, no free block: error; then a deleted node frees one and the
    // exhausted node gets it as its extra block.
    request(&store, "cilium-w1", &[("cluster-pool", 7)]).await;
    let err = eventually("w1 error", || async {
        operator_error(&store, "cilium-w1").await
    })
    .await;
    assert!(err.contains("172.20.42.0/28"), "{err}");
    store
        .delete_as::<fibril_api::FibrilNode>(None, "cilium-w3", None)
        .await
        .unwrap();
    let w1 = eventually("w1 extra block", || async {
        let c = pod_cidrs(&store, "cilium-w1").await;
        (c.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(w1[0], before["cilium-w1"][0]);
    assert_eq!(
        w1[1],
        net("172.20.84.8/29"),
        "the deleted node's block is reused"
    );
    assert_eq!(identity_map(&store).await, ids);
    op.stop().await;

    // And once more: the extra block survives a restart too.
    let op = start(&store, &cfg, fast_opts());
    add_node(&store, "cilium-w4").await;
    eventually("w4 exhausted", || async {
        operator_error(&store, "cilium-w4").await
    })
    .await;
    assert_eq!(pod_cidrs(&store, "cilium-w1").await, w1);
    op.stop().await;

    // Operator started while etcd is down: it waits for the store, then carries on.
    server.stop();
    let op = start(&store, &cfg, fast_opts());
    // Give it time to hit the dead store first (no assertion on timing).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.start_again().unwrap();
    store
        .delete_as::<fibril_api::FibrilNode>(None, "cilium-w2", None)
        .await
        .unwrap();
    let w4 = eventually("w4 gets w2's block", || async {
        let c = pod_cidrs(&store, "cilium-w4").await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(w4, before["cilium-w2"]);
    assert_eq!(pod_cidrs(&store, "cilium-w1").await, w1);
    op.stop().await;
    drop(server);
}
