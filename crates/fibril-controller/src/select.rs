//! Predicates shared by the reconcilers: label selectors (`matchLabels` and
//! `matchExpressions`), pod readiness/phase, node readiness, ownership.

use std::collections::BTreeMap;

use fibril_api::{LabelSelector, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

type Labels = BTreeMap<String, String>;

/// Whether `labels` match a `LabelSelector`. An empty selector matches
/// everything (as in Kubernetes); an unknown operator matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: Option<&Labels>) -> bool {
    let empty = Labels::new();
    let labels = labels.unwrap_or(&empty);
    if let Some(ml) = &selector.match_labels {
        if !ml.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    for expr in selector.match_expressions.iter().flatten() {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        let ok = match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `labels` contain every pair of a map selector (Service
/// `spec.selector`, pod `spec.nodeSelector`).
pub fn map_matches(selector: &Labels, labels: Option<&Labels>) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's phase (`Pending` when unset).
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The pod has finished (`Succeeded`/`Failed`): it no longer uses its node.
pub fn pod_finished(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// `metadata.deletionTimestamp` is set: the kubelet is tearing it down.
pub fn pod_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Neither terminating nor finished: counts towards replicas and node load.
pub fn pod_active(pod: &Pod) -> bool {
    !pod_terminating(pod) && !pod_finished(pod)
}

/// `spec.nodeName`, when bound.
pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The pod's namespace (`default` when unset).
pub fn namespace_of(meta: &fibril_api::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// The node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The owner reference of `kind` on `meta`, if any.
pub fn owner_of<'a>(meta: &'a fibril_api::ObjectMeta, kind: &str) -> Option<&'a OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == kind)
}

/// Whether `owner` points at the object `owned_by` (same name; same uid when
/// both are known, so a re-created owner does not adopt the old pods).
pub fn owner_is(owner: &OwnerReference, owned_by: &fibril_api::ObjectMeta) -> bool {
    owned_by.name.as_deref() == Some(owner.name.as_str())
        && match owned_by.uid.as_deref() {
            Some(uid) if !owner.uid.is_empty() => uid == owner.uid,
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "x", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert!(selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "a")]))
        ));
        assert!(!selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "c")]))
        ));
        assert!(!selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "a"), ("x", "1")]))
        ));
        assert!(!selector_matches(&sel, None));
        assert!(selector_matches(&LabelSelector::default(), None));
        assert!(map_matches(
            &labels(&[("a", "1")]),
            Some(&labels(&[("a", "1"), ("b", "2")]))
        ));
        assert!(!map_matches(&labels(&[("a", "1")]), None));
    }
}
