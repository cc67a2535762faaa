#![no_main]
//! Decoding VXLAN / Geneve frames (fibril_datapath::tunnel::decode) must
//! never panic and decoded frames must be consistent.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fibril_datapath::tunnel::fuzz_decode(data);
});
