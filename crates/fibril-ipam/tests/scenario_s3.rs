//! Scenario S3 (seed 001) at library level: cluster-pool with two /28s and /29 blocks,
//! exhaustion, growth of the list, extra blocks for exhausted nodes; then multi-pool.

// Test helpers unwrap constant inputs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use fibril_ipam::config::{
    default_pool_from_values, parse_cidr_list, parse_pool_config, KEY_CLUSTER_POOL_CIDRS,
    KEY_CLUSTER_POOL_MASK,
};
use fibril_ipam::{
    select_pool, ClusterPool, MultiPool, MultiPoolNode, NodeAllocator, PoolSpec,
    POOL_ANNOTATION_ALIAS,
};

#[test]
fn s3_cluster_pool_exhaustion_and_growth() {
    let (cidrs, mask) = parse_pool_config(
        KEY_CLUSTER_POOL_CIDRS,
        "{172.20.42.0/28,172.20.84.0/28}",
        KEY_CLUSTER_POOL_MASK,
        "29",
    )
    .unwrap();
    let mut op = ClusterPool::new(&cidrs, mask).unwrap();
    let names = ["ctr", "w1", "w2"];
    let mut agents: BTreeMap<&str, NodeAllocator> = BTreeMap::new();
    for n in names {
        let blocks = op.allocate_node(n).unwrap().to_vec();
        let mut a = NodeAllocator::with_cidrs(blocks).unwrap();
        a.allocate("router").unwrap();
        a.allocate("health").unwrap();
        agents.insert(n, a);
    }
    let mut got: Vec<String> = names
        .iter()
        .map(|n| op.node_blocks(n)[0].to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["172.20.42.0/29", "172.20.42.8/29", "172.20.84.0/29"]);
    let w1_block = op.node_blocks("w1")[0];
    assert_eq!(
        agents["w1"].status_line(),
        format!("IPv4: 2/6 allocated from {w1_block}")
    );

    // 10 replicas over w1 and w2: each fills its /29, 2 pods each stay pending.
    let mut pending: BTreeMap<&str, u64> = BTreeMap::new();
    for i in 0..10 {
        let node = if i % 2 == 0 { "w1" } else { "w2" };
        let a = agents.get_mut(node).unwrap();
        if let Err(e) = a.allocate(&format!("default/netshoot-{i}")) {
            assert!(e.to_string().contains("range is full"), "{e}");
            *pending.entry(node).or_default() += 1;
        }
    }
    assert_eq!(pending["w1"], 1);
    assert_eq!(pending["w2"], 1);
    assert!(agents["w1"]
        .status_line()
        .starts_with("IPv4: 6/6 allocated from"));

    // Deleting the deployment returns every address (nothing leaked).
    let mut probe = agents["w1"].clone();
    for i in (0..10).step_by(2) {
        probe.release_owner(&format!("default/netshoot-{i}"));
    }
    assert_eq!(probe.used(), 2);

    // The operator hands exhausted nodes another block while free ones remain:
    // one /29 (172.20.84.8/29) is left for w1, w2 has to wait for the list to grow.
    for node in ["w1", "w2"] {
        let a = &agents[node];
        let r = op.ensure_capacity(node, u64::from(a.used()) + pending[node]);
        if node == "w1" {
            assert_eq!(r.unwrap().len(), 2);
        } else {
            assert!(r.is_err());
        }
    }
    // The list grows by 10.0.0.0/28: accepted, existing blocks untouched.
    let before = op.assignments();
    let grown = parse_cidr_list(
        KEY_CLUSTER_POOL_CIDRS,
        "{172.20.42.0/28,172.20.84.0/28,10.0.0.0/28}",
    )
    .unwrap();
    op.update_cidrs(&grown).unwrap();
    for n in names {
        assert_eq!(op.node_blocks(n)[0], before.nodes[n][0]);
    }
    op.ensure_capacity("w2", u64::from(agents["w2"].used()) + pending["w2"])
        .unwrap();
    assert_eq!(op.node_blocks("w2")[1].to_string(), "10.0.0.0/29");
    // Agents add their new blocks; pending pods get addresses.
    for node in ["w1", "w2"] {
        let a = agents.get_mut(node).unwrap();
        for b in op.node_blocks(node) {
            a.add_cidr(*b).unwrap();
        }
        a.allocate("default/netshoot-late").unwrap();
        assert_eq!(a.cidrs().len(), 2);
    }
}

#[test]
fn s3_multi_pool_annotations() {
    let default = default_pool_from_values("172.20.0.0/16", "28").unwrap();
    let mut op = MultiPool::with_default(&default.cidrs, default.mask_size).unwrap();
    for (name, cidr) in [("vac", "10.100.0.0/16"), ("no-engine", "10.200.0.0/16")] {
        op.add_pool(&PoolSpec {
            name: name.into(),
            cidrs: vec![cidr.parse().unwrap()],
            mask_size: 29,
        })
        .unwrap();
    }
    let now = Instant::now();
    let mut agent = MultiPoolNode::default();
    agent.set_known_pools(op.specs().iter().map(|s| s.name.clone()));
    let r = op.reconcile_node("w1", &agent.request(now));
    agent.sync(&r.allocated).unwrap();
    agent.allocate("default", "router").unwrap();

    let pod: BTreeMap<String, String> =
        [(POOL_ANNOTATION_ALIAS.to_owned(), "vac".to_owned())].into();
    let pool = select_pool(Some(&pod), None);
    assert_eq!(pool, "vac");
    assert!(agent.allocate(pool, "default/nginx-vac-0").is_err());
    agent.set_pending(pool, 1);
    let r = op.reconcile_node("w1", &agent.request(now));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    agent.sync(&r.allocated).unwrap();
    let ip = agent.allocate(pool, "default/nginx-vac-0").unwrap();
    assert!(ip.to_string().starts_with("10.100.0."), "{ip}");
    let allocated = op.node_allocations("w1");
    assert_eq!(allocated["vac"].len(), 1);
    assert!(!allocated.contains_key("no-engine"));
    assert!(allocated["default"][0].to_string().starts_with("172.20.0."));
}
