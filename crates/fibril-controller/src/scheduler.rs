//! The lab's kube-scheduler: picks a node for each pod without
//! `spec.nodeName`.
//!
//! Filters: the node's `Ready` condition is `True`; `spec.nodeSelector` and
//! required node affinity (`nodeSelectorTerms`);
//! required pod anti-affinity (both the incoming pod's terms and those of
//! pods already on a node, as Kubernetes' InterPodAffinity does) by the
//! term's `topologyKey` (`kubernetes.io/hostname` falls back to the node
//! name). Taints are ignored (the seeds schedule onto the control plane).
//! Score: fewest active pods of the same owner (Deployment/DaemonSet: the
//! default scheduler's selector spreading), then fewest active pods, then
//! node name. Placements made earlier in the same pass count, so a
//! Deployment's new pods spread one per node while nodes remain.

use std::collections::BTreeMap;

use fibril_api::{Node, Pod};
use k8s_openapi::api::core::v1::PodAffinityTerm;

use crate::select::{
    map_matches, namespace_of, node_ready, pod_active, pod_finished, pod_node, selector_matches,
};

/// The well-known per-node topology label.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Where a pod goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this node.
    Bind(String),
    /// No node fits; the message is the PodScheduled condition's (as
    /// kube-scheduler words it).
    Unschedulable(String),
}

/// What the scheduler knows about a pod placed on a node.
#[derive(Debug, Clone)]
struct Placed {
    namespace: String,
    labels: BTreeMap<String, String>,
    anti_affinity: Vec<PodAffinityTerm>,
    active: bool,
    /// `namespace/kind/name` of the controlling owner.
    owner: Option<String>,
}

impl Placed {
    fn of(pod: &Pod) -> Self {
        Self {
            namespace: namespace_of(&pod.metadata).to_string(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            anti_affinity: anti_affinity_terms(pod),
            active: pod_active(pod),
            owner: owner_id(pod),
        }
    }
}

fn owner_id(pod: &Pod) -> Option<String> {
    let o = pod.metadata.owner_references.as_ref()?.first()?;
    Some(format!(
        "{}/{}/{}",
        namespace_of(&pod.metadata),
        o.kind,
        o.name
    ))
}

#[derive(Debug)]
struct NodeInfo {
    name: String,
    labels: BTreeMap<String, String>,
    ready: bool,
    pods: Vec<Placed>,
}

impl NodeInfo {
    fn topology_value(&self, key: &str) -> Option<&str> {
        match self.labels.get(key) {
            Some(v) => Some(v),
            None if key == HOSTNAME_LABEL => Some(&self.name),
            None => None,
        }
    }

    fn load(&self) -> usize {
        self.pods.iter().filter(|p| p.active).count()
    }

    fn siblings(&self, owner: Option<&String>) -> usize {
        owner.map_or(0, |o| {
            self.pods
                .iter()
                .filter(|p| p.active && p.owner.as_ref() == Some(o))
                .count()
        })
    }
}

fn anti_affinity_terms(pod: &Pod) -> Vec<PodAffinityTerm> {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default()
}

/// Whether `term` (of a pod in `term_ns`) selects a pod in `ns` with `labels`.
fn term_selects(
    term: &PodAffinityTerm,
    term_ns: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let in_ns = match term.namespaces.as_deref() {
        Some(list) if !list.is_empty() => list.iter().any(|n| n == ns),
        _ => term_ns == ns,
    };
    // A term without a labelSelector selects no pods (Kubernetes semantics).
    in_ns
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, Some(labels)))
}

/// One `NodeSelectorRequirement` against a node's labels (or, for
/// `matchFields`, `metadata.name`).
fn requirement_matches(
    req: &k8s_openapi::api::core::v1::NodeSelectorRequirement,
    value: Option<&str>,
) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let num = |v: &str| v.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(num), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(num), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Required node affinity: any term matches (a term: all its expressions
/// and fields match); no terms means no constraint.
fn node_affinity_matches(pod: &Pod, info: &NodeInfo) -> bool {
    let Some(sel) = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    sel.node_selector_terms.iter().any(|term| {
        term.match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, info.labels.get(&r.key).map(String::as_str)))
            && term.match_fields.iter().flatten().all(|r| {
                requirement_matches(r, (r.key == "metadata.name").then_some(info.name.as_str()))
            })
    })
}

/// Whether this scheduler is the pod's (`spec.schedulerName` unset or
/// `default-scheduler`); pods for another scheduler are left alone.
pub fn ours(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n.is_empty() || n == "default-scheduler")
}

/// The cluster as the scheduler sees it; [`Scheduler::place`] records its
/// decisions so later pods of the same pass see them.
#[derive(Debug)]
pub struct Scheduler {
    nodes: Vec<NodeInfo>,
}

impl Scheduler {
    /// Nodes (sorted by name) and every pod already bound to one of them.
    pub fn new(nodes: &[Node], pods: &[Pod]) -> Self {
        let mut infos: Vec<NodeInfo> = nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.metadata.name.clone().unwrap_or_default(),
                labels: n.metadata.labels.clone().unwrap_or_default(),
                ready: node_ready(n),
                pods: Vec::new(),
            })
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let mut s = Self { nodes: infos };
        for p in pods.iter().filter(|p| !pod_finished(p)) {
            if let Some(n) = pod_node(p) {
                s.record(n, p);
            }
        }
        s
    }

    /// Counts `pod` on `node` (a binding decided elsewhere, e.g. a
    /// DaemonSet pod created bound).
    pub fn record(&mut self, node: &str, pod: &Pod) {
        if let Some(info) = self.nodes.iter_mut().find(|n| n.name == node) {
            info.pods.push(Placed::of(pod));
        }
    }

    /// Whether node `info` violates required anti-affinity for `pod`.
    fn anti_affinity_conflict(&self, info: &NodeInfo, pod: &Pod) -> bool {
        let ns = namespace_of(&pod.metadata);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let own = anti_affinity_terms(pod);
        for term in &own {
            let Some(domain) = info.topology_value(&term.topology_key) else {
                continue;
            };
            let same_domain = self
                .nodes
                .iter()
                .filter(|n| n.topology_value(&term.topology_key) == Some(domain));
            for n in same_domain {
                if n.pods
                    .iter()
                    .any(|p| term_selects(term, ns, &p.namespace, &p.labels))
                {
                    return true;
                }
            }
        }
        // Symmetry: pods already in the domain that refuse this pod.
        for n in &self.nodes {
            for p in &n.pods {
                for term in &p.anti_affinity {
                    let Some(domain) = info.topology_value(&term.topology_key) else {
                        continue;
                    };
                    if n.topology_value(&term.topology_key) == Some(domain)
                        && term_selects(term, &p.namespace, ns, &labels)
                    {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Picks a node for `pod` and records the placement.
    pub fn place(&mut self, pod: &Pod) -> Decision {
        let selector = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        let mut not_ready = 0;
        let mut selector_miss = 0;
        let mut anti = 0;
        let owner = owner_id(pod);
        let mut best: Option<((usize, usize), usize)> = None; // ((siblings, load), index)
        for (i, info) in self.nodes.iter().enumerate() {
            if !info.ready {
                not_ready += 1;
            } else if !map_matches(&selector, Some(&info.labels))
                || !node_affinity_matches(pod, info)
            {
                selector_miss += 1;
            } else if self.anti_affinity_conflict(info, pod) {
                anti += 1;
            } else {
                let score = (info.siblings(owner.as_ref()), info.load());
                if best.is_none_or(|(b, _)| score < b) {
                    best = Some((score, i));
                }
            }
        }
        if let Some((_, i)) = best {
            let name = self.nodes[i].name.clone();
            self.nodes[i].pods.push(Placed::of(pod));
            return Decision::Bind(name);
        }
        if self.nodes.is_empty() {
            return Decision::Unschedulable("no nodes available to schedule pods".to_string());
        }
        let mut reasons = Vec::new();
        if selector_miss > 0 {
            reasons.push(format!(
                "{selector_miss} node(s) didn't match Pod's node affinity/selector"
            ));
        }
        if anti > 0 {
            reasons.push(format!(
                "{anti} node(s) didn't match pod anti-affinity rules"
            ));
        }
        if not_ready > 0 {
            reasons.push(format!("{not_ready} node(s) were not ready"));
        }
        reasons.sort();
        Decision::Unschedulable(format!(
            "0/{} nodes are available: {}.",
            self.nodes.len(),
            reasons.join(", ")
        ))
    }
}
