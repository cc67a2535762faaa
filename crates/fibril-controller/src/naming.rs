//! Object names and hashes, the way Kubernetes makes them: the
//! `pod-template-hash` (FNV-1a of the template, "safe-encoded" like
//! `rand.SafeEncodeString`) and 5-character random suffixes from the same
//! vowel-free alphabet (so generated names never spell words).

use k8s_openapi::api::core::v1::PodTemplateSpec;

/// The alphabet of Kubernetes' `rand.String` / `SafeEncodeString`: no vowels,
/// no confusable characters.
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Label carrying the template hash on Deployment pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Label carrying the template hash on DaemonSet pods.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// 32-bit FNV-1a (what Kubernetes' `ComputeHash` uses).
fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Maps every byte of `s` into [`ALPHABET`] (Kubernetes' `SafeEncodeString`).
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// The `pod-template-hash` of a pod template: stable across processes
/// (serde_json of the k8s-openapi struct is deterministic: struct fields in
/// declaration order, maps are `BTreeMap`s), 8-10 characters in practice
/// (the decimal form of a u32, encoded), e.g. `5d59d67564`: always 8-10
/// characters (Kubernetes does not pad; the 0.2% of hashes below 10^7 are
/// zero-padded here so names keep their shape).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    // Serialising a k8s-openapi struct cannot fail (no non-string map keys).
    let text = serde_json::to_string(template).unwrap_or_default();
    safe_encode(&format!("{:08}", fnv1a32(text.as_bytes())))
}

/// A random 5-character suffix (`rand.String(5)`).
pub fn random_suffix(rng: &mut fastrand::Rng) -> String {
    (0..5)
        .map(|_| char::from(ALPHABET[rng.usize(..ALPHABET.len())]))
        .collect()
}

/// A Deployment pod's name: `<deploy>-<hash>-<suffix>`.
pub fn deployment_pod_name(deploy: &str, hash: &str, suffix: &str) -> String {
    format!("{deploy}-{hash}-{suffix}")
}

/// A DaemonSet pod's (or an EndpointSlice's) name: `<owner>-<suffix>`.
pub fn suffixed_name(owner: &str, suffix: &str) -> String {
    format!("{owner}-{suffix}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn template(label: &str) -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": label}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        }))
        .unwrap()
    }

    #[test]
    fn hash_is_stable_and_k8s_shaped() {
        let a = template_hash(&template("web"));
        assert_eq!(a, template_hash(&template("web")));
        assert!((8..=10).contains(&a.len()), "{a}");
        assert!(a.bytes().all(|b| ALPHABET.contains(&b)), "{a}");
        assert_ne!(a, template_hash(&template("other")));
        // Pinned: a change here renames every pod of every running lab.
        assert_eq!(fnv1a32(b"hello"), 0x4f9f_2cab);
    }

    #[test]
    fn hash_changes_with_restart_annotation() {
        let a = template("web");
        let mut b = a.clone();
        b.metadata.get_or_insert_with(Default::default).annotations = Some(
            [(
                "kubectl.kubernetes.io/restartedAt".to_string(),
                "2026-12-07T18:00:00Z".to_string(),
            )]
            .into(),
        );
        assert_ne!(template_hash(&a), template_hash(&b));
    }

    #[test]
    fn names() {
        let mut rng = fastrand::Rng::with_seed(7);
        let s = random_suffix(&mut rng);
        assert_eq!(s.len(), 5);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(
            deployment_pod_name("webpod", "697b545f57", "abcde"),
            "webpod-697b545f57-abcde"
        );
        assert_eq!(
            suffixed_name("node-local-dns", "x2b4c"),
            "node-local-dns-x2b4c"
        );
    }
}
