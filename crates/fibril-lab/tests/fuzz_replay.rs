//! Replays the checked-in fuzz corpus (fuzz/corpus/topology_parse) and random
//! inputs through the topology fuzz entry point on stable Rust: none of it
//! may panic, and every valid topology must round-trip through YAML.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::path::Path;

use fibril_lab::topology::{fuzz_topology, BUILTIN_TOPOLOGIES};
use proptest::prelude::*;

#[test]
fn corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/topology_parse");
    let mut n = 0;
    let mut valid = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            if fuzz_topology(&std::fs::read(&path).unwrap()) {
                valid += 1;
            }
            n += 1;
        }
    }
    assert!(n >= 10, "corpus at {} has only {n} files", dir.display());
    assert!(
        valid >= 4,
        "the shipped topologies in the corpus must be valid"
    );
}

#[test]
fn builtin_topologies_round_trip() {
    for (name, text) in BUILTIN_TOPOLOGIES {
        assert!(fuzz_topology(text.as_bytes()), "{name}");
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_topology(&data);
    }

    #[test]
    fn mutated_seed_never_panics(
        cut in 0usize..2000,
        len in 0usize..64,
        insert in "[a-z0-9:./ \\-\\[\\]{}\n]{0,16}",
    ) {
        let seed = BUILTIN_TOPOLOGIES[1].1;
        let mut bytes = seed.as_bytes().to_vec();
        let cut = cut.min(bytes.len());
        let end = (cut + len).min(bytes.len());
        bytes.splice(cut..end, insert.bytes());
        fuzz_topology(&bytes);
    }
}
