//! The key layout (`/fibril/<kind>/<namespace or _cluster>/<name>`): building
//! and parsing store paths. See the crate docs.

use fibril_api::ObjectKey;

use crate::StoreError;

/// Every Fibril key starts with this.
pub const KEY_ROOT: &str = "/fibril/";
/// Namespace segment of cluster-scoped objects.
pub const CLUSTER_SCOPE: &str = "_cluster";

fn check_segment(full: &str, what: &str, seg: &str) -> Result<(), StoreError> {
    let reason = if seg.is_empty() {
        format!("{what} is empty")
    } else if seg.contains('/') {
        format!("{what} {seg:?} contains '/'")
    } else if seg.contains('\0') {
        format!("{what} {seg:?} contains NUL")
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidKey {
        key: full.to_string(),
        reason,
    })
}

/// The store path of `key`, e.g. `/fibril/Pod/default/web-0`.
pub fn key_path(key: &ObjectKey) -> Result<String, StoreError> {
    let full = key.to_string();
    check_segment(&full, "kind", &key.kind)?;
    check_segment(&full, "name", &key.name)?;
    let ns = match &key.namespace {
        Some(ns) => {
            check_segment(&full, "namespace", ns)?;
            if ns == CLUSTER_SCOPE {
                return Err(StoreError::InvalidKey {
                    key: full,
                    reason: format!("namespace {CLUSTER_SCOPE:?} is reserved"),
                });
            }
            ns.as_str()
        }
        None => CLUSTER_SCOPE,
    };
    Ok(format!("{KEY_ROOT}{}/{ns}/{}", key.kind, key.name))
}

/// The prefix covering `kind` (all namespaces) or `kind` in `namespace`;
/// always ends with `/`.
pub fn prefix_path(kind: &str, namespace: Option<&str>) -> Result<String, StoreError> {
    let full = match namespace {
        Some(ns) => format!("{kind}/{ns}"),
        None => kind.to_string(),
    };
    check_segment(&full, "kind", kind)?;
    match namespace {
        Some(ns) => {
            check_segment(&full, "namespace", ns)?;
            Ok(format!("{KEY_ROOT}{kind}/{ns}/"))
        }
        None => Ok(format!("{KEY_ROOT}{kind}/")),
    }
}

/// Parses a store path back into its [`ObjectKey`].
pub fn parse_key_path(path: &str) -> Result<ObjectKey, StoreError> {
    let bad = |reason: &str| StoreError::InvalidKey {
        key: path.to_string(),
        reason: reason.to_string(),
    };
    let rest = path
        .strip_prefix(KEY_ROOT)
        .ok_or_else(|| bad("does not start with /fibril/"))?;
    let mut parts = rest.split('/');
    let (Some(kind), Some(ns), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected /fibril/<kind>/<namespace>/<name>"));
    };
    if kind.is_empty() || ns.is_empty() || name.is_empty() {
        return Err(bad("empty segment"));
    }
    let namespace = (ns != CLUSTER_SCOPE).then_some(ns);
    Ok(ObjectKey::new(kind, namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = ObjectKey::new("Pod", Some("default"), "web-0");
        let p = key_path(&k).unwrap();
        assert_eq!(p, "/fibril/Pod/default/web-0");
        assert_eq!(parse_key_path(&p).unwrap(), k);
        let c = ObjectKey::new("Node", None, "k8s-w1");
        let p = key_path(&c).unwrap();
        assert_eq!(p, "/fibril/Node/_cluster/k8s-w1");
        assert_eq!(parse_key_path(&p).unwrap(), c);
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_path("Pod", None).unwrap(), "/fibril/Pod/");
        assert_eq!(
            prefix_path("Pod", Some("kube-system")).unwrap(),
            "/fibril/Pod/kube-system/"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = parse_key_path(&s);
        }

        #[test]
        fn valid_keys_round_trip(
            kind in "[A-Za-z][A-Za-z0-9]{0,20}",
            ns in proptest::option::of("[a-z0-9][a-z0-9-]{0,20}"),
            name in "[a-z0-9][a-z0-9.-]{0,40}",
        ) {
            let k = ObjectKey::new(&kind, ns.as_deref(), &name);
            let p = key_path(&k).unwrap();
            proptest::prop_assert!(p.starts_with(&prefix_path(&kind, ns.as_deref()).unwrap()));
            proptest::prop_assert_eq!(parse_key_path(&p).unwrap(), k);
        }
    }

    #[test]
    fn rejects_bad_segments() {
        let e = key_path(&ObjectKey::new("Pod", Some("a/b"), "x")).unwrap_err();
        assert!(e.to_string().contains("a/b"), "{e}");
        assert!(key_path(&ObjectKey::new("Pod", Some("_cluster"), "x")).is_err());
        assert!(key_path(&ObjectKey::new("Pod", None, "")).is_err());
        assert!(parse_key_path("/other/Pod/a/b").is_err());
        assert!(parse_key_path("/fibril/Pod/a").is_err());
        assert!(parse_key_path("/fibril/Pod/a/b/c").is_err());
    }
}
