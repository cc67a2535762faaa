#![no_main]
//! ip-masq-agent config / ConfigMap parsing must never panic, and accepted
//! configs must list prefixes that parse back to the same set.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = fibril_datapath::ipmasq::fuzz_parse(data);
    assert!(out.roundtrip_ok, "{out:?}");
});
