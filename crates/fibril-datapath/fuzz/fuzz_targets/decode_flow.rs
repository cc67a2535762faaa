//! Any bytes as a ring-buffer record: decoding must never panic, and a
//! decoded flow must print.
#![no_main]

use fibril_datapath::Flow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(f) = Flow::decode(data) {
        let _ = f.to_string();
    }
});
