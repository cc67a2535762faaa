//! How documents are written and read back, shared by every backend: checks
//! the document against its key, fills identity fields on create, strips and
//! re-adds `metadata.resourceVersion` (the mod revision is the only truth, so a
//! stale copy is never persisted).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fibril_api::ObjectKey;
use serde_json::{Map, Value};

use crate::{Revision, StoreError, StoredObject};

/// The revision in an object's `metadata.resourceVersion`, if set and numeric.
pub fn resource_version(value: &Value) -> Option<Revision> {
    value
        .get("metadata")?
        .get("resourceVersion")?
        .as_str()?
        .parse()
        .ok()
}

/// Validates `value` for `key` and serialises it for storage. `fill_identity`
/// adds `uid` and `creationTimestamp` when missing (create and put).
pub(crate) fn encode_for_write(
    key: &ObjectKey,
    mut value: Value,
    fill_identity: bool,
) -> Result<Vec<u8>, StoreError> {
    let invalid = |reason: String| StoreError::InvalidObject {
        key: key.to_string(),
        reason,
    };
    let obj = value
        .as_object_mut()
        .ok_or_else(|| invalid("document is not a JSON object".into()))?;
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| invalid("metadata is not a JSON object".into()))?;

    match meta.get("name").and_then(Value::as_str) {
        Some(n) if n != key.name => {
            return Err(invalid(format!(
                "metadata.name {n:?} does not match the key's name {:?}",
                key.name
            )))
        }
        Some(_) => {}
        None => {
            meta.insert("name".into(), Value::String(key.name.clone()));
        }
    }
    match (
        &key.namespace,
        meta.get("namespace").and_then(Value::as_str),
    ) {
        (Some(kns), Some(ns)) if ns != kns => {
            return Err(invalid(format!(
                "metadata.namespace {ns:?} does not match the key's namespace {kns:?}"
            )))
        }
        (Some(kns), None) => {
            meta.insert("namespace".into(), Value::String(kns.clone()));
        }
        // Cluster-scoped kinds carry no namespace; drop a stray one so the
        // stored document agrees with its key.
        (None, _) => {
            meta.remove("namespace");
        }
        _ => {}
    }
    meta.remove("resourceVersion");
    if fill_identity {
        if !meta.get("uid").is_some_and(Value::is_string) {
            meta.insert("uid".into(), Value::String(new_uid()));
        }
        if !meta.get("creationTimestamp").is_some_and(Value::is_string) {
            meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        }
    }
    serde_json::to_vec(&value).map_err(|source| StoreError::Encode {
        key: key.to_string(),
        source,
    })
}

/// Adds `metadata.resourceVersion` to a stored document.
pub(crate) fn with_resource_version(mut value: Value, rev: Revision) -> Value {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    value
}

/// Parses stored bytes into a [`StoredObject`].
pub(crate) fn decode_stored(
    key: ObjectKey,
    bytes: &[u8],
    mod_revision: Revision,
    create_revision: Revision,
) -> Result<StoredObject, StoreError> {
    let value = decode_value(&key, bytes, mod_revision)?;
    Ok(StoredObject {
        key,
        value,
        mod_revision,
        create_revision,
    })
}

pub(crate) fn decode_value(
    key: &ObjectKey,
    bytes: &[u8],
    mod_revision: Revision,
) -> Result<Value, StoreError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: key.to_string(),
        kind: "JSON".into(),
        source,
    })?;
    Ok(with_resource_version(value, mod_revision))
}

/// A random RFC 4122 version-4 UUID. Falls back to time, pid and a counter
/// if `/dev/urandom` is unreadable; uniqueness, not secrecy, is what matters.
fn new_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !random {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default() as u64;
        let c = COUNTER.fetch_add(1, Ordering::Relaxed);
        b[..8].copy_from_slice(&nanos.to_le_bytes());
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        b[12..].copy_from_slice(&(c as u32).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Now as Kubernetes writes timestamps (`2006-01-02T15:04:05Z`).
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    rfc3339(secs as i64)
}

/// Unix seconds as RFC 3339 UTC (`2006-01-02T15:04:05Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_317_087), "2026-11-22T03:11:27Z");
    }

    #[test]
    fn uid_shape() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid());
    }

    #[test]
    fn encode_fills_and_checks() {
        let key = ObjectKey::new("Pod", Some("default"), "a");
        let bytes = encode_for_write(
            &key,
            json!({"metadata": {"resourceVersion": "7"}, "spec": {}}),
            true,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["metadata"]["name"], "a");
        assert_eq!(v["metadata"]["namespace"], "default");
        assert!(v["metadata"].get("resourceVersion").is_none());
        assert!(v["metadata"]["uid"].is_string());
        assert!(v["metadata"]["creationTimestamp"].is_string());

        let e = encode_for_write(&key, json!({"metadata": {"name": "b"}}), false).unwrap_err();
        assert!(e.to_string().contains("Pod/default/a"), "{e}");
        assert!(e.to_string().contains("\"b\""), "{e}");
        let e = encode_for_write(&key, json!([1]), false).unwrap_err();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
    }

    #[test]
    fn resource_version_round_trip() {
        let v = with_resource_version(json!({"metadata": {}}), 42);
        assert_eq!(resource_version(&v), Some(42));
        assert_eq!(resource_version(&json!({})), None);
    }
}
