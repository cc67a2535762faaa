//! Fuzzes `--set` parsing (`fibril_config::fuzz_set_args`). The entry point never panics;
//! the target fails only if an accepted config does not survive the flat round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = fibril_config::fuzz_set_args(data);
    assert!(out.roundtrip_ok, "round trip failed for {data:?}");
});
