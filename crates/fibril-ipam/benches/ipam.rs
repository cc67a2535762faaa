//! IPAM benchmarks. Besides criterion's report, prints one `<name> <value> <unit>` line per
//! figure for scripts/bench.sh:
//! - `ipam_node_allocs_per_sec`: sequential allocations into a node allocator (a /12,
//!   1,000,000 allocations, each with an owner string).
//! - `ipam_node_alloc_release_per_sec`: allocate+release pairs on a half-full /16.
//! - `ipam_assign_5000_nodes_ms`: operator assigning one /24 of 10.0.0.0/8 to each of
//!   5,000 nodes (cluster-pool).

// Benchmark inputs are constants; a failure is a bug worth a panic.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion};
use fibril_ipam::{ClusterPool, NodeAllocator};
use ipnet::Ipv4Net;

const ALLOCS: u32 = 1_000_000;
const NODES: usize = 5_000;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn node_names() -> Vec<String> {
    (0..NODES).map(|i| format!("node-{i:05}")).collect()
}

fn fill(a: &mut NodeAllocator, n: u32) {
    for _ in 0..n {
        black_box(a.allocate("default/pod").unwrap());
    }
}

fn assign(names: &[String]) -> ClusterPool {
    let mut p = ClusterPool::new(&[net("10.0.0.0/8")], 24).unwrap();
    for n in names {
        black_box(p.allocate_node(n).unwrap());
    }
    p
}

fn best_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().unwrap_or_default()
}

fn figures() {
    let t = best_of(5, || {
        let mut a = NodeAllocator::with_cidrs([net("10.0.0.0/12")]).unwrap();
        let start = Instant::now();
        fill(&mut a, ALLOCS);
        start.elapsed()
    });
    println!(
        "ipam_node_allocs_per_sec {:.0} allocs/s",
        f64::from(ALLOCS) / t.as_secs_f64()
    );

    let mut a = NodeAllocator::with_cidrs([net("10.1.0.0/16")]).unwrap();
    fill(&mut a, 32_000);
    let pairs = 500_000u32;
    let t = best_of(5, || {
        let start = Instant::now();
        for _ in 0..pairs {
            let ip = a.allocate("default/pod").unwrap();
            black_box(a.release(ip).unwrap());
        }
        start.elapsed()
    });
    println!(
        "ipam_node_alloc_release_per_sec {:.0} pairs/s",
        f64::from(pairs) / t.as_secs_f64()
    );

    let names = node_names();
    let t = best_of(5, || {
        let start = Instant::now();
        black_box(assign(&names));
        start.elapsed()
    });
    println!("ipam_assign_5000_nodes_ms {:.2} ms", t.as_secs_f64() * 1e3);
}

fn benches(c: &mut Criterion) {
    c.bench_function("node_allocate_fill_slash16", |b| {
        b.iter_batched(
            || NodeAllocator::with_cidrs([net("10.1.0.0/16")]).unwrap(),
            |mut a| {
                fill(&mut a, 65_534);
                a
            },
            BatchSize::LargeInput,
        )
    });
    let names = node_names();
    c.bench_function("cluster_pool_assign_5000_nodes", |b| {
        b.iter(|| assign(&names))
    });
}

criterion_group! {
    name = group;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --all-targets` runs benches in test mode without `--bench`; keep it quick.
    if std::env::args().any(|a| a == "--bench") {
        figures();
    }
}
