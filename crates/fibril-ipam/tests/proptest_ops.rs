//! Property tests over random operation sequences: no address or block is owned twice,
//! every allocation lies inside its CIDR, release-then-allocate never loses capacity, and
//! restoring saved state reproduces it.

// Test helpers unwrap constant inputs.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use fibril_ipam::{
    BlockAssignments, ClusterPool, IpamError, MultiPool, MultiPoolNode, NodeAllocator, PoolSpec,
    PreAllocation,
};
use ipnet::Ipv4Net;
use proptest::prelude::*;

const NODE_CIDRS: &[&str] = &[
    "10.0.0.0/29",
    "10.0.0.8/30",
    "10.0.1.0/28",
    "10.0.2.0/31",
    "10.0.3.7/32",
    "10.0.0.0/27",
];

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[derive(Debug, Clone)]
enum NodeOp {
    Allocate(u8),
    AllocateIp(u8, u8),
    Release(u8),
    AddCidr(u8),
    RemoveCidr(u8),
}

fn node_op() -> impl Strategy<Value = NodeOp> {
    prop_oneof![
        4 => any::<u8>().prop_map(NodeOp::Allocate),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| NodeOp::AllocateIp(a, b)),
        3 => any::<u8>().prop_map(NodeOp::Release),
        1 => any::<u8>().prop_map(NodeOp::AddCidr),
        1 => any::<u8>().prop_map(NodeOp::RemoveCidr),
    ]
}

fn usable(c: &Ipv4Net, ip: Ipv4Addr) -> bool {
    c.contains(&ip) && (c.prefix_len() > 30 || (ip != c.network() && ip != c.broadcast()))
}

fn check_node(a: &NodeAllocator, model: &BTreeMap<Ipv4Addr, String>) {
    let allocs = a.allocations();
    let ips: BTreeSet<Ipv4Addr> = allocs.iter().map(|x| x.ip).collect();
    assert_eq!(ips.len(), allocs.len(), "address owned twice");
    let cidrs = a.cidrs();
    for al in &allocs {
        assert_eq!(
            cidrs.iter().filter(|c| usable(c, al.ip)).count(),
            1,
            "{} outside",
            al.ip
        );
        assert_eq!(model.get(&al.ip), Some(&al.owner));
    }
    assert_eq!(allocs.len(), model.len());
    assert_eq!(a.used() as usize, model.len());
    let per: u32 = a.status().iter().map(|s| s.used).sum();
    assert_eq!(per, a.used());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn node_allocator_sequences(ops in proptest::collection::vec(node_op(), 1..120)) {
        let mut a = NodeAllocator::with_cidrs([net(NODE_CIDRS[0])]).unwrap();
        let mut model: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for op in ops {
            match op {
                NodeOp::Allocate(o) => {
                    let owner = format!("ns/p{o}");
                    let free = a.total() - a.used();
                    match a.allocate(&owner) {
                        Ok(ip) => {
                            prop_assert!(free > 0);
                            prop_assert!(model.insert(ip, owner).is_none(), "{ip} handed out twice");
                        }
                        Err(e) => {
                            // Never loses capacity: full only when nothing is free.
                            prop_assert_eq!(free, 0);
                            prop_assert!(e.to_string().contains("range is full"));
                        }
                    }
                }
                NodeOp::AllocateIp(c, off) => {
                    let cidrs = a.cidrs();
                    if cidrs.is_empty() {
                        continue;
                    }
                    let base = cidrs[c as usize % cidrs.len()].network();
                    let ip = Ipv4Addr::from(u32::from(base) + u32::from(off % 40));
                    let owner = format!("ns/s{off}");
                    let ok_expected = !model.contains_key(&ip)
                        && cidrs.iter().any(|c| usable(c, ip));
                    let r = a.allocate_ip(ip, &owner);
                    prop_assert_eq!(r.is_ok(), ok_expected, "{:?}", r);
                    if r.is_ok() {
                        model.insert(ip, owner);
                    }
                }
                NodeOp::Release(i) => {
                    if model.is_empty() {
                        continue;
                    }
                    let ip = *model.keys().nth(i as usize % model.len()).unwrap();
                    let rel = a.release(ip).unwrap();
                    prop_assert_eq!(Some(rel.owner), model.remove(&ip));
                    prop_assert!(a.release(ip).is_err());
                }
                NodeOp::AddCidr(i) => {
                    let c = net(NODE_CIDRS[i as usize % NODE_CIDRS.len()]);
                    let before = a.cidrs();
                    let overlaps = before.iter().any(|b| *b != c && (b.contains(&c) || c.contains(b)));
                    let r = a.add_cidr(c);
                    prop_assert_eq!(r.is_err(), overlaps);
                }
                NodeOp::RemoveCidr(i) => {
                    let cidrs = a.cidrs();
                    if cidrs.is_empty() {
                        continue;
                    }
                    let c = cidrs[i as usize % cidrs.len()];
                    let live = model.keys().any(|ip| c.contains(ip));
                    let r = a.remove_cidr(c);
                    prop_assert_eq!(r.is_err(), live);
                }
            }
            check_node(&a, &model);
        }
        // Restore reproduces state: from persisted state, and via restore() on a fresh one.
        let st = a.state();
        let b = NodeAllocator::from_state(&st).unwrap();
        prop_assert_eq!(b.state(), st.clone());
        let mut c = NodeAllocator::with_cidrs(st.cidrs.iter().copied()).unwrap();
        let out = c.restore(st.allocations.iter().map(|x| (x.ip, x.owner.as_str())));
        prop_assert!(out.skipped.is_empty());
        let got: Vec<_> = c.allocations().into_iter().map(|x| (x.ip, x.owner, x.restored)).collect();
        let want: Vec<_> = st.allocations.iter().map(|x| (x.ip, x.owner.clone(), true)).collect();
        prop_assert_eq!(got, want);
        // Release everything then allocate: full capacity comes back.
        for ip in model.keys() {
            c.release(*ip).unwrap();
        }
        let total = c.total();
        for _ in 0..total {
            c.allocate("x").unwrap();
        }
        prop_assert!(c.allocate("x").is_err());
    }
}

#[derive(Debug, Clone)]
enum PoolOp {
    Node(u8),
    Additional(u8),
    ReleaseNode(u8),
    ReleaseBlock(u8, u8),
    Grow(u8),
}

const POOL_GROWTH: &[&str] = &["10.0.0.0/28", "192.168.0.0/27", "172.16.5.0/29"];

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        4 => (0u8..12).prop_map(PoolOp::Node),
        2 => (0u8..12).prop_map(PoolOp::Additional),
        2 => (0u8..12).prop_map(PoolOp::ReleaseNode),
        2 => ((0u8..12), any::<u8>()).prop_map(|(a, b)| PoolOp::ReleaseBlock(a, b)),
        1 => any::<u8>().prop_map(PoolOp::Grow),
    ]
}

fn check_pool(p: &ClusterPool) {
    let mut seen = BTreeSet::new();
    let cidrs = p.cidrs();
    let mut count = 0u64;
    for n in p.nodes() {
        for b in p.node_blocks(n) {
            assert!(seen.insert(*b), "block {b} owned twice");
            assert_eq!(b.prefix_len(), p.mask_size());
            assert!(cidrs.iter().any(|c| c.contains(b)), "{b} outside pool");
            assert_eq!(p.owner_of(*b), Some(n));
            count += 1;
        }
    }
    assert_eq!(count + p.free_blocks(), p.total_blocks());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn cluster_pool_sequences(ops in proptest::collection::vec(pool_op(), 1..80)) {
        let mut cidrs = vec![net("172.20.42.0/28"), net("172.20.84.0/28")];
        let mut p = ClusterPool::new(&cidrs, 29).unwrap();
        for op in ops {
            match op {
                PoolOp::Node(n) => {
                    let name = format!("n{n}");
                    let had = p.node_blocks(&name).to_vec();
                    let free = p.free_blocks();
                    match p.allocate_node(&name) {
                        Ok(b) if had.is_empty() => prop_assert_eq!(b.len(), 1),
                        Ok(b) => prop_assert_eq!(b, had.as_slice()),
                        Err(_) => prop_assert!(had.is_empty() && free == 0),
                    }
                }
                PoolOp::Additional(n) => {
                    let free = p.free_blocks();
                    let r = p.allocate_additional(&format!("n{n}"));
                    prop_assert_eq!(r.is_ok(), free > 0);
                }
                PoolOp::ReleaseNode(n) => {
                    let name = format!("n{n}");
                    let had = p.node_blocks(&name).to_vec();
                    prop_assert_eq!(p.release_node(&name), had);
                }
                PoolOp::ReleaseBlock(n, i) => {
                    let name = format!("n{n}");
                    let had = p.node_blocks(&name).to_vec();
                    if let Some(b) = had.get(i as usize % had.len().max(1)) {
                        p.release_block(&name, *b).unwrap();
                        prop_assert!(p.owner_of(*b).is_none());
                    }
                }
                PoolOp::Grow(i) => {
                    let c = net(POOL_GROWTH[i as usize % POOL_GROWTH.len()]);
                    if !cidrs.contains(&c) {
                        cidrs.push(c);
                        let before = p.assignments();
                        p.update_cidrs(&cidrs).unwrap();
                        prop_assert_eq!(p.assignments(), before);
                    }
                }
            }
            check_pool(&p);
        }
        // Restart: same assignments, same future choices.
        let saved = p.assignments();
        let mut q = ClusterPool::from_assignments(&cidrs, 29, &saved).unwrap();
        prop_assert_eq!(q.assignments(), saved.clone());
        prop_assert_eq!(q.free_blocks(), p.free_blocks());
        for i in 0..3 {
            let name = format!("new{i}");
            prop_assert_eq!(q.allocate_node(&name).ok().map(<[_]>::to_vec), p.allocate_node(&name).ok().map(<[_]>::to_vec));
        }
        // A conflicting restore changes nothing.
        if let Some((node, blocks)) = saved.nodes.iter().next() {
            let mut bad = BlockAssignments::default();
            bad.nodes.insert(format!("{node}-other"), blocks.clone());
            let before = q.assignments();
            let conflict = matches!(q.restore(&bad), Err(IpamError::BlockTaken { .. }));
            prop_assert!(conflict, "conflicting restore accepted");
            prop_assert_eq!(q.assignments(), before);
        }
    }
}

#[derive(Debug, Clone)]
enum MpOp {
    Alloc(u8, u8),
    Release(u8, u8),
    Round(u8, u8),
}

fn mp_op() -> impl Strategy<Value = MpOp> {
    prop_oneof![
        4 => ((0u8..3), (0u8..3)).prop_map(|(n, p)| MpOp::Alloc(n, p)),
        3 => ((0u8..3), any::<u8>()).prop_map(|(n, i)| MpOp::Release(n, i)),
        2 => ((0u8..3), (0u8..40)).prop_map(|(n, s)| MpOp::Round(n, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn multi_pool_sequences(ops in proptest::collection::vec(mp_op(), 1..100)) {
        let pools = ["default", "vac", "no-engine"];
        let mut m = MultiPool::with_default(&[net("172.20.0.0/24")], 28).unwrap();
        m.add_pool(&PoolSpec { name: "vac".into(), cidrs: vec![net("10.100.0.0/26")], mask_size: 29 }).unwrap();
        m.add_pool(&PoolSpec { name: "no-engine".into(), cidrs: vec![net("10.200.0.0/27")], mask_size: 30 }).unwrap();
        let t0 = Instant::now();
        let mut now = t0;
        let mut nodes: Vec<MultiPoolNode> = (0..3)
            .map(|_| MultiPoolNode::new(PreAllocation::default(), Duration::from_secs(10)))
            .collect();
        let mut held: Vec<Vec<Ipv4Addr>> = vec![Vec::new(); 3];
        for op in ops {
            match op {
                MpOp::Alloc(n, p) => {
                    let node = &mut nodes[n as usize];
                    let pool = pools[p as usize];
                    let free = node.pool(pool).map_or(0, |a| a.free());
                    match node.allocate(pool, "ns/p") {
                        Ok(ip) => held[n as usize].push(ip),
                        Err(e) => {
                            prop_assert_eq!(free, 0);
                            prop_assert!(e.to_string().contains("range is full"));
                            node.set_pending(pool, 1);
                        }
                    }
                }
                MpOp::Release(n, i) => {
                    let h = &mut held[n as usize];
                    if !h.is_empty() {
                        let ip = h.remove(i as usize % h.len());
                        nodes[n as usize].release(ip).unwrap();
                    }
                }
                MpOp::Round(n, secs) => {
                    now += Duration::from_secs(u64::from(secs));
                    let node = &mut nodes[n as usize];
                    let name = format!("w{n}");
                    let req = node.request(now);
                    let r = m.reconcile_node(&name, &req);
                    node.sync(&r.allocated).unwrap();
                    for p in pools {
                        node.set_pending(p, 0);
                    }
                }
            }
            // No block owned twice across nodes; node addresses inside operator-assigned blocks.
            let mut seen = BTreeSet::new();
            for (i, node) in nodes.iter().enumerate() {
                let assigned = m.node_allocations(&format!("w{i}"));
                for b in assigned.values().flatten() {
                    prop_assert!(seen.insert(*b), "block {} twice", b);
                }
                for (pool, al) in node.allocations() {
                    let blocks = assigned.get(&pool).cloned().unwrap_or_default();
                    prop_assert!(blocks.iter().any(|b| b.contains(&al.ip)), "{} outside {:?}", al.ip, blocks);
                }
            }
        }
    }
}
