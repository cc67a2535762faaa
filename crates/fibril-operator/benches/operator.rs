//! Operator throughput on the in-memory store (prints figures; no assertions):
//! time until N new FibrilNodes all hold a cluster-pool block, N multi-pool requests
//! are served, and identities exist for P pods over L label sets.
//! Run: `cargo bench -p fibril-operator` (FIBRIL_BENCH_NODES, FIBRIL_BENCH_PODS).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_api::fibril::{
    FibrilNodeSpec, IpamPoolDemand, IpamPoolRequest, IpamPoolSpec, NodeIpamSpec,
};
use fibril_api::{FibrilIdentity, FibrilNode, ObjectMeta, Pod};
use fibril_config::Config;
use fibril_operator::OperatorOptions;
use fibril_store::{MemoryStore, SharedStore, StoreExt};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn wait_until<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run(cfg: &[&str], body: impl AsyncFnOnce(&SharedStore)) {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let mut c = Config::default();
    c.apply_sets(cfg).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = OperatorOptions {
        identity_gc_grace: Duration::from_secs(3600),
        ..OperatorOptions::default()
    };
    let task = tokio::spawn(fibril_operator::run_with(
        store.clone(),
        c,
        opts,
        async move {
            let _ = rx.await;
        },
    ));
    body(&store).await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nodes = env("FIBRIL_BENCH_NODES", 500);
    let pods = env("FIBRIL_BENCH_PODS", 1000);

    run(
        &["ipam.operator.clusterPoolIPv4PodCIDRList={10.0.0.0/8}"],
        async |store| {
            let t = Instant::now();
            for i in 0..nodes {
                store
                    .create_as(&FibrilNode::new(
                        &format!("n{i}"),
                        FibrilNodeSpec::default(),
                    ))
                    .await
                    .unwrap();
            }
            wait_until(|| async {
                let l = store.list_as::<FibrilNode>(None).await.unwrap();
                l.items.iter().filter(|n| !n.pod_cidrs().is_empty()).count() == nodes
            })
            .await;
            let el = t.elapsed();
            println!(
                "cluster-pool: {nodes} nodes assigned in {el:.2?} ({:.0} nodes/s)",
                nodes as f64 / el.as_secs_f64()
            );
        },
    )
    .await;

    run(
        &[
            "ipam.mode=multi-pool",
            "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs={10.0.0.0/8}",
            "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.maskSize=28",
        ],
        async |store| {
            let t = Instant::now();
            for i in 0..nodes {
                let spec = FibrilNodeSpec {
                    ipam: Some(NodeIpamSpec {
                        pools: Some(IpamPoolSpec {
                            requested: vec![IpamPoolRequest {
                                pool: "default".into(),
                                needed: IpamPoolDemand { ipv4_addrs: Some(16), ipv6_addrs: None },
                            }],
                            allocated: vec![],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                store.create_as(&FibrilNode::new(&format!("n{i}"), spec)).await.unwrap();
            }
            wait_until(|| async {
                let l = store.list_as::<FibrilNode>(None).await.unwrap();
                l.items.iter().filter(|n| fibril_operator::allocated_pools(n).get("default").map(Vec::len) == Some(2)).count() == nodes
            })
            .await;
            let el = t.elapsed();
            println!("multi-pool: {nodes} node requests (2 x /28 each) served in {el:.2?} ({:.0} nodes/s)", nodes as f64 / el.as_secs_f64());
        },
    )
    .await;

    run(&[], async |store| {
        let sets = 50;
        let t = Instant::now();
        for i in 0..pods {
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(format!("p{i}")),
                    namespace: Some("default".into()),
                    labels: Some(
                        [
                            ("app".to_string(), format!("app{}", i % sets)),
                            ("pod-template-hash".to_string(), format!("h{i}")),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            };
            store.create_as(&pod).await.unwrap();
        }
        wait_until(|| async {
            store
                .list_as::<FibrilIdentity>(None)
                .await
                .unwrap()
                .items
                .len()
                == sets
        })
        .await;
        let el = t.elapsed();
        println!("identities: {pods} pods over {sets} label sets -> {sets} identities in {el:.2?}");
    })
    .await;
}
