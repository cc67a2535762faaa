//! Any bytes as an ELF object: the BTF struct reader must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fibril_datapath::btf::structs(data);
    let _ = fibril_datapath::btf::map_names(data);
});
