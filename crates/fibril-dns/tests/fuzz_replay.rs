//! Stable stand-in for the fuzz targets (fuzz/): replays the checked-in
//! corpora, random bytes and random mutations of the corpora through
//! `fuzz_corefile` and `fuzz_message`, which must never panic (and never
//! produce a UDP response above the advertised size).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

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

#[test]
fn corefile_corpus_replays() {
    let c = corpus("corefile");
    assert!(c.len() >= 10);
    let mut ok = 0;
    for data in &c {
        fibril_dns::fuzz_corefile(data);
        ok += usize::from(fibril_dns::parse_corefile(std::str::from_utf8(data).unwrap()).is_ok());
    }
    // The five seed Corefiles parse unchanged (plus the valid hand-written ones).
    assert!(ok >= 5, "only {ok} corpus Corefiles parsed");
}

#[test]
fn seed_corefiles_parse() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/corefile");
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("seed") {
            let text = fs::read_to_string(&p).unwrap();
            if let Err(e) = fibril_dns::parse_corefile(&text) {
                panic!("{}: {e}", p.display());
            }
        }
    }
}

#[test]
fn message_corpus_replays() {
    let c = corpus("message");
    assert!(c.len() >= 15);
    for data in &c {
        fibril_dns::fuzz_message(data);
    }
}

fn mutate(mut data: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    if data.is_empty() {
        return data;
    }
    for (i, b) in edits {
        let n = data.len();
        data[i % n] = *b;
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_messages_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fibril_dns::fuzz_message(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        pick in 0usize..64,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let c = corpus("message");
        let data = mutate(c[pick % c.len()].clone(), &edits);
        fibril_dns::fuzz_message(&data);
    }

    #[test]
    fn random_corefiles_never_panic(text in "[a-z0-9_.:/ \\-{}\"#\n]{0,300}") {
        fibril_dns::fuzz_corefile(text.as_bytes());
    }

    #[test]
    fn mutated_corefiles_never_panic(
        pick in 0usize..64,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let c = corpus("corefile");
        let data = mutate(c[pick % c.len()].clone(), &edits);
        fibril_dns::fuzz_corefile(&data);
    }
}
