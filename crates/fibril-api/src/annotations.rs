//! Annotation keys Fibril reads, with their `cilium.io` aliases.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Pod/namespace annotation selecting the multi-pool IPAM pool.
pub const IP_POOL: &str = "ipam.fibril.io/ip-pool";
/// Cilium's name for [`IP_POOL`], accepted so the seeds' manifests apply unchanged.
pub const IP_POOL_CILIUM: &str = "ipam.cilium.io/ip-pool";

/// The pool named by an object's annotations: [`IP_POOL`] first, then the
/// Cilium alias. Empty values count as unset.
pub fn ip_pool(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations.as_ref().and_then(ip_pool_in)
}

/// As [`ip_pool`], over a bare annotation map.
pub fn ip_pool_in(annotations: &BTreeMap<String, String>) -> Option<&str> {
    [IP_POOL, IP_POOL_CILIUM]
        .into_iter()
        .filter_map(|k| annotations.get(k))
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn fibril_key_wins_over_cilium_alias() {
        assert_eq!(ip_pool(&meta(&[(IP_POOL_CILIUM, "vac")])), Some("vac"));
        assert_eq!(
            ip_pool(&meta(&[(IP_POOL, "a"), (IP_POOL_CILIUM, "b")])),
            Some("a")
        );
        assert_eq!(
            ip_pool(&meta(&[(IP_POOL, ""), (IP_POOL_CILIUM, "b")])),
            Some("b")
        );
        assert_eq!(ip_pool(&meta(&[])), None);
        assert_eq!(ip_pool(&ObjectMeta::default()), None);
    }
}
