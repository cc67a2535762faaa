//! Any bytes through the manifest parser: it must return, never panic, and
//! whatever it accepts must survive the store/output round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(objects) = fibril_api::parse_manifests_bytes(data) {
        for obj in objects {
            let _ = obj.to_yaml();
            if let Ok((key, value)) = obj.to_store() {
                let _ = fibril_api::AnyObject::from_store(&key, value);
            }
        }
    }
});
