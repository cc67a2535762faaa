//! Fuzzes IPAM config/CIDR parsing and pool validation (`fibril_ipam::config::fuzz_config`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fibril_ipam::config::fuzz_config(data);
});
