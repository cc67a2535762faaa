//! Any bytes through the manifest parser: it must return, never panic, and
//! whatever it accepts must survive the store and YAML round trips unchanged
//! (the same checks as tests/fuzz_replay.rs).
#![no_main]

use fibril_api::{parse_manifests, parse_manifests_bytes, AnyObject};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(objects) = parse_manifests_bytes(data) else {
        return;
    };
    for obj in objects {
        let (key, value) = obj.to_store().expect("encode for store");
        let back = AnyObject::from_store(&key, value).expect("decode from store");
        assert_eq!(back, obj);
        let yaml = obj.to_yaml().expect("to yaml");
        assert_eq!(parse_manifests(&yaml).expect("reparse yaml"), vec![obj]);
    }
});
