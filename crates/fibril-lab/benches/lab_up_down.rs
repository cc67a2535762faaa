//! Times `Fabric::up` + `down` of the seed-4w topology (needs root) and
//! prints the medians:
//!
//! ```text
//! lab_up_seed4w_ms <median> ms
//! lab_down_seed4w_ms <median> ms
//! ```
//!
//! Run with `cargo bench -p fibril-lab --bench lab_up_down`. `ITERATIONS`
//! (env `FIBRIL_BENCH_ITERATIONS`, default 7) rounds; nothing is asserted.

use std::time::Instant;

use fibril_lab::{Fabric, Topology};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // special either, so a quick single round keeps test runs cheap.
    let quick = std::env::args().all(|a| a != "--bench");
    let iterations: usize = if quick {
        1
    } else {
        std::env::var("FIBRIL_BENCH_ITERATIONS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7)
    };
    let topo = match Topology::builtin("seed-4w") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lab_up_down: {e}");
            std::process::exit(1);
        }
    };
    let lab = format!("bench{}", std::process::id());
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    for round in 0..iterations {
        if round > 0 {
            // The kernel frees deleted namespaces asynchronously; let that
            // settle (untimed) so each `up` is measured as a user sees it.
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let t0 = Instant::now();
        let fabric = match Fabric::up(&topo, &lab) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("lab_up_down: lab up failed (root needed): {e}");
                std::process::exit(1);
            }
        };
        ups.push(t0.elapsed().as_secs_f64() * 1e3);
        let t1 = Instant::now();
        if let Err(e) = fabric.down() {
            eprintln!("lab_up_down: lab down failed: {e}");
            std::process::exit(1);
        }
        downs.push(t1.elapsed().as_secs_f64() * 1e3);
    }
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("(up ms per round: {})", show(&ups));
    println!("(down ms per round: {})", show(&downs));
    println!("lab_up_seed4w_ms {:.1} ms", median(&mut ups));
    println!("lab_down_seed4w_ms {:.1} ms", median(&mut downs));
    println!("(iterations: {iterations})");
}
