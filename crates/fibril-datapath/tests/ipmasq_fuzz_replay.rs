//! Replays the checked-in fuzz corpus (fuzz/corpus/ipmasq_config) and random
//! inputs through the ip-masq-agent fuzz entry point on stable Rust.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use fibril_datapath::ipmasq::fuzz_parse;
use proptest::prelude::*;

#[test]
fn corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ipmasq_config");
    let (mut n, mut accepted) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let out = fuzz_parse(&std::fs::read(&path).unwrap());
            assert!(out.roundtrip_ok, "{}: {out:?}", path.display());
            accepted += usize::from(out.accepted);
            n += 1;
        }
    }
    assert!(n >= 10, "corpus at {} has only {n} files", dir.display());
    assert!(accepted >= 8, "only {accepted} corpus entries are accepted");
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(fuzz_parse(&data).roundtrip_ok);
    }

    #[test]
    fn config_shaped_text_round_trips(
        s in r#"\{"nonMasqueradeCIDRs":\[("([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}",?){0,4}\](,"masqLinkLocal":(true|false))?\}"#
    ) {
        prop_assert!(fuzz_parse(s.as_bytes()).roundtrip_ok);
    }
}
