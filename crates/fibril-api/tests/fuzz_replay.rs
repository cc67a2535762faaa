//! Stable stand-in for the `parse_manifests` fuzz target (fuzz/): replays the
//! checked-in corpus, random bytes and random mutations of the corpus through
//! `parse_manifests_bytes`, which must never panic; whatever it accepts must
//! survive the store and YAML round trips unchanged.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use fibril_api::{parse_manifests, parse_manifests_bytes, AnyObject};
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse_manifests");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().map(|p| fs::read(p).unwrap()).collect()
}

/// The fuzz target's body, with the round-trip checks made assertions.
fn exercise(data: &[u8]) {
    let Ok(objects) = parse_manifests_bytes(data) else {
        return;
    };
    for obj in objects {
        let (key, value) = obj.to_store().unwrap();
        let back = AnyObject::from_store(&key, value).unwrap();
        assert_eq!(back, obj);
        let yaml = obj.to_yaml().unwrap();
        assert_eq!(parse_manifests(&yaml).unwrap(), vec![obj]);
    }
}

#[test]
fn corpus_replays_without_panic() {
    let corpus = corpus();
    assert!(corpus.len() >= 30, "corpus has {} files", corpus.len());
    let mut parsed = 0;
    for data in &corpus {
        exercise(data);
        parsed += usize::from(parse_manifests_bytes(data).is_ok());
    }
    // The seed fixtures in the corpus all parse.
    assert!(parsed >= 28, "only {parsed} corpus files parsed");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&data);
    }

    #[test]
    fn random_text_never_panics(text in "[a-zA-Z0-9:\\-\\[\\]{}\"'&*!|>#., \n]{0,300}") {
        exercise(text.as_bytes());
    }

    #[test]
    fn mutated_corpus_never_panics(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let corpus = corpus();
        let mut data = corpus[pick.index(corpus.len())].clone();
        for (at, byte) in edits {
            if data.is_empty() {
                break;
            }
            let i = at.index(data.len());
            data[i] = byte;
        }
        if !data.is_empty() {
            data.truncate(cut.index(data.len() + 1));
        }
        exercise(&data);
    }
}
