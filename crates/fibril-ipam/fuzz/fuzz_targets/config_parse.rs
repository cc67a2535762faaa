//! Fuzzes IPAM config/CIDR parsing and pool validation (`fibril_ipam::config::fuzz_config`).
//! The entry point never panics; the target fails only if a parsed value does not survive
//! format-then-parse.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = fibril_ipam::config::fuzz_config(data);
    assert!(out.roundtrip_ok, "round trip failed for {data:?}");
});
