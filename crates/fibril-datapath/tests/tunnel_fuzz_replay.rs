//! Replays the checked-in fuzz corpus (fuzz/corpus/tunnel_decode) and random
//! or mutated frames through the tunnel decoder's fuzz entry point on
//! stable Rust.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use fibril_datapath::tunnel::fuzz_decode;
use proptest::prelude::*;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/tunnel_decode");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn corpus_replays_without_panic() {
    let files = corpus();
    assert!(files.len() >= 10, "only {} corpus files", files.len());
    for (name, data) in &files {
        let n = fuzz_decode(data);
        // How many of (VXLAN, Geneve) decode it. The decoder describes the
        // wire like tshark: a Geneve frame with the C bit decodes (the
        // datapath drops it), and a first byte with bit 0x08 set reads as
        // a VXLAN I flag.
        let want = match name.as_str() {
            "vxlan-8472" | "vxlan-4789" | "geneve-6081" | "geneve-options" | "geneve-crit" => 1,
            "geneve-opt-overflow" => 1, // 0x3f: valid VXLAN, Geneve options overflow
            _ => 0,
        };
        assert_eq!(n, want, "{name}");
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = fuzz_decode(&data);
    }

    #[test]
    fn mutated_frames_never_panic(
        idx in 0usize..12,
        flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..6),
        cut in 0usize..200,
    ) {
        let files = corpus();
        let mut data = files[idx % files.len()].1.clone();
        for (i, b) in flips {
            if !data.is_empty() {
                let n = data.len();
                data[i % n] = b;
            }
        }
        data.truncate(cut.max(data.len() / 2));
        let _ = fuzz_decode(&data);
    }
}
