//! Replays the checked-in fuzz corpus (fuzz/corpus/config_parse) and random inputs through
//! the fuzz entry point on stable Rust: none of it may panic.

// Test helpers unwrap constant inputs.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use fibril_ipam::config::fuzz_config;
use proptest::prelude::*;

#[test]
fn corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config_parse");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let data = std::fs::read(&path).unwrap();
            let out = fuzz_config(&data);
            assert!(out.roundtrip_ok, "{}: {out:?}", path.display());
            n += 1;
        }
    }
    assert!(n >= 10, "corpus at {} has only {n} files", dir.display());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(fuzz_config(&data).roundtrip_ok);
    }

    #[test]
    fn config_shaped_strings_never_panic(
        s in r"[\{\[]?(([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}[, ]?){0,4}[\}\]]?(\|/?[0-9]{1,2})?"
    ) {
        prop_assert!(fuzz_config(s.as_bytes()).roundtrip_ok);
    }

    #[test]
    fn pool_strings_never_panic(
        s in r"[a-z\-]{0,6}=(ipv4-cidrs:(([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2},?){0,3};?)?(ipv4-mask-size:[0-9]{0,2})?"
    ) {
        prop_assert!(fuzz_config(s.as_bytes()).roundtrip_ok);
    }
}
