//! Operator reconcilers against the in-memory store: cluster-pool (seed 001's S3 lists),
//! restart without reshuffling, node deletion, exhaustion and list growth; multi-pool
//! request/allocate/release with the seed's pools; kubernetes-mode node podCIDRs;
//! identities and their GC.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use fibril_api::{FibrilIdentity, FibrilPodIPPool, Node, ObjectMeta};
use fibril_store::StoreExt;

const S3_CLUSTER_POOL: &[&str] = &[
    "ipam.mode=cluster-pool",
    "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.42.0/28,172.20.84.0/28}",
    "ipam.operator.clusterPoolIPv4MaskSize=29",
];

#[tokio::test]
async fn cluster_pool_exhaustion_extra_block_and_list_growth() {
    init_tracing();
    let store = memory_store();
    let cfg = config(S3_CLUSTER_POOL);
    fibril_config::store::save(store.as_ref(), &cfg)
        .await
        .unwrap();
    let op = start(&store, &cfg, fast_opts());
    for n in ["cilium-ctr", "cilium-w1", "cilium-w2"] {
        add_node(&store, n).await;
    }
    let mut all = Vec::new();
    for n in ["cilium-ctr", "cilium-w1", "cilium-w2"] {
        let c = eventually(n, || async {
            let c = pod_cidrs(&store, n).await;
            (!c.is_empty()).then_some(c)
        })
        .await;
        assert_eq!(c.len(), 1, "{n}: {c:?}");
        all.push(c[0]);
    }
    all.sort();
    assert_eq!(
        all,
        vec![
            net("172.20.42.0/29"),
            net("172.20.42.8/29"),
            net("172.20.84.0/29")
        ]
    );
    // The last free block goes to a node that runs out (6 usable per /29).
    request(&store, "cilium-w1", &[("cluster-pool", 7)]).await;
    let w1 = eventually("w1 second block", || async {
        let c = pod_cidrs(&store, "cilium-w1").await;
        (c.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(w1[1], net("172.20.84.8/29"));
    // Now the pool is empty: w2 asking for more gets an operator-status error.
    request(&store, "cilium-w2", &[("cluster-pool", 8)]).await;
    let err = eventually("w2 error", || async {
        operator_error(&store, "cilium-w2").await
    })
    .await;
    assert!(err.contains("172.20.42.0/28, 172.20.84.0/28"), "{err}");
    assert_eq!(pod_cidrs(&store, "cilium-w2").await.len(), 1);
    // Growing the list (fibril lab upgrade --set ...) serves it.
    let mut grown = cfg.clone();
    grown
        .apply_set(
            "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.42.0/28,172.20.84.0/28,10.0.0.0/28}",
        )
        .unwrap();
    fibril_config::store::save(store.as_ref(), &grown)
        .await
        .unwrap();
    let w2 = eventually("w2 extra block after growth", || async {
        let c = pod_cidrs(&store, "cilium-w2").await;
        (c.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(w2[1], net("10.0.0.0/29"));
    eventually("w2 error cleared", || async {
        operator_error(&store, "cilium-w2")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn restart_keeps_assignments_and_deleted_nodes_free_blocks() {
    init_tracing();
    let store = memory_store();
    let cfg = config(&["ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}"]);
    let op = start(&store, &cfg, fast_opts());
    let names: Vec<String> = (0..6).map(|i| format!("node-{i}")).collect();
    for n in &names {
        add_node(&store, n).await;
    }
    let mut before = BTreeMap::new();
    for n in &names {
        let c = eventually(n, || async {
            let c = pod_cidrs(&store, n).await;
            (!c.is_empty()).then_some(c)
        })
        .await;
        before.insert(n.clone(), c);
    }
    // Deleted while the operator runs: the block is freed and reused by the next node.
    let freed = before.remove("node-2").unwrap();
    store
        .delete_as::<fibril_api::FibrilNode>(None, "node-2", None)
        .await
        .unwrap();
    // "node-2" sorts before "node-new": the queue handles the deletion first.
    add_node(&store, "node-new").await;
    let got = eventually("node-new", || async {
        let c = pod_cidrs(&store, "node-new").await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(got, freed);
    before.insert("node-new".into(), got);
    op.stop().await;

    // While stopped: a node goes away, another arrives.
    let gone = before.remove("node-4").unwrap();
    store
        .delete_as::<fibril_api::FibrilNode>(None, "node-4", None)
        .await
        .unwrap();
    add_node(&store, "late").await;
    let op = start(&store, &cfg, fast_opts());
    let late = eventually("late", || async {
        let c = pod_cidrs(&store, "late").await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(
        late, gone,
        "the restarted operator reuses the block of the node deleted while it was down"
    );
    for (n, c) in &before {
        assert_eq!(&pod_cidrs(&store, n).await, c, "{n} moved after restart");
    }
    op.stop().await;
}

#[tokio::test]
async fn multi_pool_request_allocate_release_with_seed_pools() {
    init_tracing();
    let store = memory_store();
    let cfg = config(&[
        "ipam.mode=multi-pool",
        "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs=172.20.0.0/16",
        "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.maskSize=28",
    ]);
    let op = start(&store, &cfg, fast_opts());
    // The auto-created pool is an object, like Cilium's.
    let default = eventually("default pool object", || async {
        store
            .get_as::<FibrilPodIPPool>(None, "default")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(fibril_operator::pool_spec(&default).unwrap().mask_size, 28);
    store
        .create_as(&FibrilPodIPPool::new("vac", vec![net("10.100.0.0/16")], 29))
        .await
        .unwrap();
    store
        .create_as(&FibrilPodIPPool::new(
            "no-engine",
            vec![net("10.200.0.0/16")],
            29,
        ))
        .await
        .unwrap();
    for n in ["cilium-ctr", "cilium-w1", "cilium-w2"] {
        add_node(&store, n).await;
        request(&store, n, &[("default", 16)]).await;
    }
    for n in ["cilium-ctr", "cilium-w1", "cilium-w2"] {
        let a = eventually(n, || async {
            let a = pools_allocated(&node(&store, n).await?);
            (a.get("default").map(Vec::len) == Some(2)).then_some(a)
        })
        .await;
        assert!(a["default"]
            .iter()
            .all(|c| c.prefix_len() == 28 && net("172.20.0.0/16").contains(c)));
    }
    request(
        &store,
        "cilium-w1",
        &[("default", 16), ("vac", 2), ("no-engine", 1)],
    )
    .await;
    request(
        &store,
        "cilium-w2",
        &[("default", 16), ("vac", 2), ("no-engine", 1)],
    )
    .await;
    let w1 = eventually("w1 vac", || async {
        let a = pools_allocated(&node(&store, "cilium-w1").await?);
        (a.contains_key("vac") && a.contains_key("no-engine")).then_some(a)
    })
    .await;
    let w2 = eventually("w2 vac", || async {
        let a = pools_allocated(&node(&store, "cilium-w2").await?);
        (a.contains_key("vac") && a.contains_key("no-engine")).then_some(a)
    })
    .await;
    let mut vac: Vec<_> = [w1["vac"][0], w2["vac"][0]].into();
    vac.sort();
    assert_eq!(vac, vec![net("10.100.0.0/29"), net("10.100.0.8/29")]);
    // Pools come out sorted by name, as in the seed's yq output.
    let n = node(&store, "cilium-w1").await.unwrap();
    let order: Vec<String> = n
        .spec
        .unwrap()
        .ipam
        .unwrap()
        .pools
        .unwrap()
        .allocated
        .into_iter()
        .map(|a| a.pool)
        .collect();
    assert_eq!(order, ["default", "no-engine", "vac"]);

    // Scaling nginx-vac: w1 needs 10 addresses in vac -> a second /29.
    request(
        &store,
        "cilium-w1",
        &[("default", 16), ("vac", 10), ("no-engine", 1)],
    )
    .await;
    let w1 = eventually("w1 second vac block", || async {
        let a = pools_allocated(&node(&store, "cilium-w1").await?);
        (a["vac"].len() == 2).then_some(a)
    })
    .await;
    let extra = w1["vac"][1];
    assert_eq!(extra, net("10.100.0.16/29"));
    // Scaling down: the agent gives the block back by dropping it with a lower request.
    update_node(&store, "cilium-w1", |n| {
        let pools = n
            .spec
            .as_mut()
            .unwrap()
            .ipam
            .as_mut()
            .unwrap()
            .pools
            .as_mut()
            .unwrap();
        for r in &mut pools.requested {
            if r.pool == "vac" {
                r.needed.ipv4_addrs = Some(2);
            }
        }
        for a in &mut pools.allocated {
            if a.pool == "vac" {
                a.cidrs.retain(|c| *c != ipnet::IpNet::V4(extra));
            }
        }
    })
    .await;
    // The released block goes to the next node that needs one. (The operator handles
    // queued nodes in name order, so w1's release is seen before w2's request.)
    request(
        &store,
        "cilium-w2",
        &[("default", 16), ("vac", 7), ("no-engine", 1)],
    )
    .await;
    let w2 = eventually("w2 gets the released block", || async {
        let a = pools_allocated(&node(&store, "cilium-w2").await?);
        (a["vac"].len() == 2).then_some(a)
    })
    .await;
    assert_eq!(w2["vac"][1], extra);
    assert_eq!(
        pools_allocated(&node(&store, "cilium-w1").await.unwrap())["vac"].len(),
        1
    );

    // Unknown pool: reported on the node, other pools still served.
    request(
        &store,
        "cilium-w2",
        &[("default", 16), ("vac", 7), ("no-engine", 1), ("nope", 1)],
    )
    .await;
    let err = eventually("unknown pool error", || async {
        operator_error(&store, "cilium-w2").await
    })
    .await;
    assert!(err.contains("nope"), "{err}");

    // Restart: identical allocations.
    let snapshot: Vec<_> = {
        let mut v = Vec::new();
        for n in ["cilium-ctr", "cilium-w1", "cilium-w2"] {
            v.push(pools_allocated(&node(&store, n).await.unwrap()));
        }
        v
    };
    op.stop().await;
    let op = start(&store, &cfg, fast_opts());
    // A new node after the restart gets fresh blocks, none of the existing ones.
    add_node(&store, "cilium-w3").await;
    request(&store, "cilium-w3", &[("default", 16), ("vac", 1)]).await;
    let w3 = eventually("w3", || async {
        let a = pools_allocated(&node(&store, "cilium-w3").await?);
        (a.contains_key("vac") && a.get("default").map(Vec::len) == Some(2)).then_some(a)
    })
    .await;
    for (i, n) in ["cilium-ctr", "cilium-w1", "cilium-w2"].iter().enumerate() {
        let now = pools_allocated(&node(&store, n).await.unwrap());
        assert_eq!(now, snapshot[i], "{n} changed across restart");
        for (pool, blocks) in &now {
            for b in blocks {
                assert!(
                    !w3.get(pool).is_some_and(|x| x.contains(b)),
                    "{b} handed out twice"
                );
            }
        }
    }
    // Node deleted: its blocks return to the pools.
    store
        .delete_as::<fibril_api::FibrilNode>(None, "cilium-w3", None)
        .await
        .unwrap();
    add_node(&store, "cilium-w4").await;
    request(&store, "cilium-w4", &[("vac", 1)]).await;
    let w4 = eventually("w4", || async {
        pools_allocated(&node(&store, "cilium-w4").await?)
            .get("vac")
            .cloned()
    })
    .await;
    assert_eq!(w4, w3["vac"]);
    op.stop().await;
}

#[tokio::test]
async fn kubernetes_mode_node_pod_cidrs() {
    init_tracing();
    let store = memory_store();
    let cfg = config(&["ipam.mode=kubernetes"]);
    let op = start(&store, &cfg, fast_opts());
    for n in ["k8s-ctr", "k8s-w1"] {
        store
            .create_as(&Node {
                metadata: ObjectMeta {
                    name: Some(n.into()),
                    ..Default::default()
                },
                ..Default::default()
            })
            .await
            .unwrap();
        // Serialise so the order is the seed's (ctr first).
        eventually(n, || async {
            let node = store.get_as::<Node>(None, n).await.unwrap()?;
            fibril_operator::node_pod_cidr(&node)
        })
        .await;
    }
    let cidr = |n: &'static str| {
        let store = store.clone();
        async move {
            let node = store.get_as::<Node>(None, n).await.unwrap().unwrap();
            let spec = node.spec.unwrap();
            assert_eq!(
                spec.pod_cidrs.unwrap(),
                vec![spec.pod_cidr.clone().unwrap()]
            );
            spec.pod_cidr.unwrap()
        }
    };
    assert_eq!(cidr("k8s-ctr").await, "10.244.0.0/24");
    assert_eq!(cidr("k8s-w1").await, "10.244.1.0/24");
    op.stop().await;
    let op = start(&store, &cfg, fast_opts());
    store
        .create_as(&Node {
            metadata: ObjectMeta {
                name: Some("k8s-w2".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("w2", || async {
        let node = store.get_as::<Node>(None, "k8s-w2").await.unwrap()?;
        fibril_operator::node_pod_cidr(&node)
    })
    .await;
    assert_eq!(cidr("k8s-w2").await, "10.244.2.0/24");
    assert_eq!(cidr("k8s-ctr").await, "10.244.0.0/24");
    // FibrilNodes are the agents' business in kubernetes mode: untouched.
    add_node(&store, "k8s-ctr").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(pod_cidrs(&store, "k8s-ctr").await.is_empty());
    op.stop().await;
}

async fn identities(store: &fibril_store::SharedStore) -> BTreeMap<u32, BTreeMap<String, String>> {
    store
        .list_as::<FibrilIdentity>(None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| (i.id().unwrap(), i.security_labels))
        .collect()
}

#[tokio::test]
async fn identities_stable_shared_and_collected() {
    init_tracing();
    let store = memory_store();
    let cfg = config(&[]);
    let op = start(&store, &cfg, fast_opts());
    for (name, hash) in [
        ("webpod-697b545f57-f68x8", "697b545f57"),
        ("webpod-697b545f57-hzcjx", "697b545f57"),
        ("webpod-5d8f-abcde", "5d8f"),
    ] {
        store
            .create_as(&pod(
                "default",
                name,
                &[("app", "webpod"), ("pod-template-hash", hash)],
            ))
            .await
            .unwrap();
    }
    store
        .create_as(&pod("default", "curl-pod", &[("app", "curl")]))
        .await
        .unwrap();
    let ids = eventually("two identities", || async {
        let ids = identities(&store).await;
        (ids.len() == 2).then_some(ids)
    })
    .await;
    let web = fibril_operator::find_identity(
        &store.list_as::<FibrilIdentity>(None).await.unwrap().items,
        &fibril_operator::security_labels(&pod("default", "x", &[("app", "webpod")]), None)
            .unwrap(),
    )
    .unwrap();
    assert!(ids.keys().all(|id| *id >= 1000));
    assert_eq!(ids[&web]["k8s:app"], "webpod");
    // An agent allocating the same labels gets the same id.
    let mut cache = BTreeMap::new();
    let labels = fibril_operator::security_labels(
        &pod(
            "default",
            "y",
            &[("app", "curl"), ("pod-template-hash", "zz")],
        ),
        None,
    )
    .unwrap();
    let curl = fibril_operator::allocate_identity(store.as_ref(), &labels, &mut cache)
        .await
        .unwrap();
    assert_eq!(ids[&curl]["k8s:app"], "curl");

    op.stop().await;
    let op = start(&store, &cfg, fast_opts());
    store
        .create_as(&pod("default", "curl-2", &[("app", "curl")]))
        .await
        .unwrap();
    // A pod with new labels after curl-2: once its identity exists, curl-2 was seen too.
    store
        .create_as(&pod("default", "probe", &[("app", "probe")]))
        .await
        .unwrap();
    let mut after = eventually("probe identity", || async {
        let ids = identities(&store).await;
        (ids.len() == 3).then_some(ids)
    })
    .await;
    after.retain(|_, l| l["k8s:app"] != "probe");
    assert_eq!(after, ids, "identities changed across restart");

    // GC: once no pod has the curl labels, the identity goes after the grace period.
    store
        .delete_as::<fibril_api::Pod>(Some("default"), "curl-pod", None)
        .await
        .unwrap();
    store
        .delete_as::<fibril_api::Pod>(Some("default"), "curl-2", None)
        .await
        .unwrap();
    eventually("curl identity collected", || async {
        let ids = identities(&store).await;
        (!ids.contains_key(&curl)).then_some(())
    })
    .await;
    assert!(identities(&store).await.contains_key(&web));
    // Recreated later: same number again (hash-based first choice).
    store
        .create_as(&pod("default", "curl-3", &[("app", "curl")]))
        .await
        .unwrap();
    eventually("curl identity back", || async {
        identities(&store).await.contains_key(&curl).then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn concurrent_identity_allocation_agrees() {
    let store = memory_store();
    let labels =
        fibril_operator::security_labels(&pod("default", "p", &[("app", "race")]), None).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let labels = labels.clone();
        tasks.push(tokio::spawn(async move {
            fibril_operator::allocate_identity(store.as_ref(), &labels, &mut BTreeMap::new())
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(identities(&store).await.len(), 1);
}

#[tokio::test]
async fn mode_switch_keeps_old_cidrs_until_node_recreated_and_pool_growth_applies() {
    init_tracing();
    let store = memory_store();
    let k8s = config(&["ipam.mode=kubernetes"]);
    fibril_config::store::save(store.as_ref(), &k8s)
        .await
        .unwrap();
    let op = start(&store, &k8s, fast_opts());
    // The agent (kubernetes mode) copied its Node's podCIDR into the FibrilNode.
    add_node(&store, "k8s-ctr").await;
    update_node(&store, "k8s-ctr", |n| {
        n.spec.get_or_insert_with(Default::default).ipam = Some(fibril_api::fibril::NodeIpamSpec {
            pod_cidrs: vec!["10.244.0.0/24".parse().unwrap()],
            ..Default::default()
        });
    })
    .await;
    // S1 step 3: switch to cluster-pool.
    let mut cp = k8s.clone();
    cp.apply_sets([
        "ipam.mode=cluster-pool",
        "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}",
    ])
    .unwrap();
    fibril_config::store::save(store.as_ref(), &cp)
        .await
        .unwrap();
    // A new node gets a cluster-pool block; once it has one the switch was applied.
    add_node(&store, "k8s-w1").await;
    let w1 = eventually("w1 cluster-pool block", || async {
        let c = pod_cidrs(&store, "k8s-w1").await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(w1, vec![net("172.20.0.0/24")]);
    assert_eq!(
        pod_cidrs(&store, "k8s-ctr").await,
        vec![net("10.244.0.0/24")]
    );
    // Deleting the FibrilNode (the agent re-creates it on restart) moves it over.
    store
        .delete_as::<fibril_api::FibrilNode>(None, "k8s-ctr", None)
        .await
        .unwrap();
    add_node(&store, "k8s-ctr").await;
    let ctr = eventually("ctr moved to cluster-pool", || async {
        let c = pod_cidrs(&store, "k8s-ctr").await;
        (c.first()?.prefix_len() == 24 && net("172.20.0.0/16").contains(&c[0])).then_some(c)
    })
    .await;
    assert_eq!(ctr, vec![net("172.20.1.0/24")]);

    // Multi-pool: growing the auto-created pool's list through the config applies live.
    let mut mp = cp.clone();
    mp.apply_sets([
        "ipam.mode=multi-pool",
        "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs={10.50.0.0/28}",
        "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.maskSize=28",
    ])
    .unwrap();
    fibril_config::store::save(store.as_ref(), &mp)
        .await
        .unwrap();
    eventually("default pool", || async {
        store
            .get_as::<FibrilPodIPPool>(None, "default")
            .await
            .unwrap()
    })
    .await;
    request(&store, "k8s-w1", &[("default", 10)]).await;
    request(&store, "k8s-ctr", &[("default", 10)]).await;
    // One /28 for two nodes needing 10 each: one of them is left waiting.
    let starved = eventually("one node exhausted", || async {
        for n in ["k8s-ctr", "k8s-w1"] {
            if operator_error(&store, n).await.is_some() {
                return Some(n);
            }
        }
        None
    })
    .await;
    let mut grown = mp.clone();
    grown
        .apply_set("ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs={10.50.0.0/28,10.60.0.0/28}")
        .unwrap();
    fibril_config::store::save(store.as_ref(), &grown)
        .await
        .unwrap();
    let a = eventually("starved node served after growth", || async {
        pools_allocated(&node(&store, starved).await?)
            .get("default")
            .cloned()
    })
    .await;
    assert_eq!(a, vec![net("10.60.0.0/28")]);
    op.stop().await;
}

#[tokio::test]
async fn ip_masq_agent_configmap_follows_config() {
    init_tracing();
    let store = memory_store();
    let cfg = config(&[]);
    assert!(!fibril_operator::sync_ip_masq_agent(store.as_ref(), &cfg)
        .await
        .unwrap());
    let op = start(&store, &cfg, fast_opts());
    let mut up = cfg.clone();
    up.apply_sets([
        "ipMasqAgent.enabled=true",
        "ipMasqAgent.config.nonMasqueradeCIDRs={10.10.1.0/24,10.10.2.0/24}",
    ])
    .unwrap();
    fibril_config::store::save(store.as_ref(), &up)
        .await
        .unwrap();
    let data = eventually("ip-masq-agent ConfigMap", || async {
        store
            .get_as::<fibril_api::ConfigMap>(Some("kube-system"), "ip-masq-agent")
            .await
            .unwrap()?
            .data
    })
    .await;
    assert_eq!(
        data["config"],
        r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"]}"#
    );
    op.stop().await;
}
