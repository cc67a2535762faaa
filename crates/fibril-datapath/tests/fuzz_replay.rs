//! Stable stand-in for the fuzz targets (fuzz/): replays the checked-in
//! corpus and proptest-random bytes through `Flow::decode` and
//! `btf::structs`, which must never panic.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use fibril_datapath::{btf, Flow};
use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().map(|p| fs::read(p).unwrap()).collect()
}

fn decode_flow(data: &[u8]) {
    if let Some(f) = Flow::decode(data) {
        let _ = f.to_string();
    }
}

#[test]
fn decode_flow_corpus() {
    let c = corpus("decode_flow");
    assert!(c.len() >= 5);
    let decoded = c.iter().filter(|d| Flow::decode(d).is_some()).count();
    assert_eq!(decoded, 3, "three valid records in the corpus");
    c.iter().for_each(|d| decode_flow(d));
}

#[test]
fn btf_structs_corpus() {
    let c = corpus("btf_structs");
    let parsed: Vec<_> = c.iter().filter_map(|d| btf::structs(d)).collect();
    assert!(
        parsed.iter().any(|s| s.contains_key("ct4_value")),
        "the BTF-only objects parse"
    );
    // Every prefix of a real object.
    let obj = &c[0];
    for n in (0..obj.len()).step_by(97) {
        let _ = btf::structs(&obj[..n]);
        let _ = btf::map_names(&obj[..n]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_records_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
        decode_flow(&data);
    }

    #[test]
    fn random_objects_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = btf::structs(&data);
        let _ = btf::map_names(&data);
    }

    #[test]
    fn mutated_objects_never_panic(idx in 0usize..4096, byte in any::<u8>(), cut in 0usize..8192) {
        let c = corpus("btf_structs");
        let mut obj = c[0].clone();
        let i = idx % obj.len();
        obj[i] = byte;
        let cut = cut.min(obj.len());
        let _ = btf::structs(&obj[..obj.len() - cut]);
        let _ = btf::map_names(&obj[..obj.len() - cut]);
    }
}
