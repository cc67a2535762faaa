//! Replays the checked-in fuzz corpus (fuzz/corpus/set_args) and random inputs through
//! the fuzz entry point on stable Rust: none of it may panic or break the round trip.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use fibril_config::fuzz_set_args;
use proptest::prelude::*;

#[test]
fn corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/set_args");
    let (mut n, mut accepted) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let out = fuzz_set_args(&std::fs::read(&path).unwrap());
            assert!(out.roundtrip_ok, "{}: {out:?}", path.display());
            accepted += usize::from(out.accepted);
            n += 1;
        }
    }
    assert!(n >= 10, "corpus at {} has only {n} files", dir.display());
    assert!(
        accepted >= 5,
        "only {accepted} corpus entries are valid configs"
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(fuzz_set_args(&data).roundtrip_ok);
    }

    #[test]
    fn set_shaped_strings_round_trip(
        s in r"(ipam\.mode|routingMode|tunnelPort|bpf\.masquerade|ipam\.operator\.clusterPoolIPv4(PodCIDRList|MaskSize)|ipMasqAgent\.config\.nonMasqueradeCIDRs|ipam\.operator\.autoCreateCiliumPodIPPools\.[a-z]{1,3}\.ipv4\.(cidrs|maskSize))=(\{?(([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2},?){0,3}\}?|[0-9]{1,5}|true|false|native|tunnel|kubernetes|multi-pool)"
    ) {
        prop_assert!(fuzz_set_args(s.as_bytes()).roundtrip_ok);
    }
}
