//! Fuzzes topology YAML parsing and validation (`fibril_lab::topology::fuzz_topology`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fibril_lab::topology::fuzz_topology(data);
});
