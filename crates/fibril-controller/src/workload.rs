//! Deployments and DaemonSets -> Pods (the lab's deployment and daemonset
//! controllers). Pure: each function takes the objects read in one pass and
//! says which pods to create and delete and which status to write.
//!
//! Deployments own their pods directly (no ReplicaSets in the lab): name
//! `<deploy>-<pod-template-hash>-<5 chars>`, label `pod-template-hash`,
//! ownerReference kind `Deployment`. A template change (e.g. `rollout
//! restart`'s `kubectl.kubernetes.io/restartedAt` annotation) rolls with
//! maxSurge 1 / maxUnavailable 0: a new pod is created while old ones run,
//! and an old pod goes when a new one is Ready (`strategy.type: Recreate`:
//! all old pods go first). Status carries the replica counts and the
//! `Available`/`Progressing` conditions. DaemonSet pods are
//! `<ds>-<5 chars>`, bound at creation (`spec.nodeName`), label
//! `controller-revision-hash`; a template change replaces one pod at a time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};

use fibril_api::{DaemonSet, Deployment, Node, ObjectMeta, Pod};
use k8s_openapi::api::apps::v1::{DaemonSetStatus, DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::{PodStatus, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::naming::{
    deployment_pod_name, random_suffix, suffixed_name, template_hash, CONTROLLER_REVISION_HASH,
    POD_TEMPLATE_HASH,
};
use crate::select::{
    map_matches, namespace_of, owner_is, owner_of, pod_active, pod_node, pod_phase, pod_ready,
    pod_terminating,
};

/// What one workload needs done to its pods and status.
#[derive(Debug, Default, Clone)]
pub struct WorkloadPlan {
    /// New pods (names chosen, not yet stored).
    pub create: Vec<Pod>,
    /// Pods to delete (per the deletion contract; see [`crate::delete_pod`]).
    pub delete: Vec<Pod>,
    /// The workload with its new status, when it changed (written at the
    /// revision read).
    pub status: Option<Workload>,
}

/// A workload whose status is to be written.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Deployment(Deployment),
    DaemonSet(DaemonSet),
}

/// Names already used in a namespace, so generated names never collide
/// with a stored pod or one created earlier in the same pass.
#[derive(Debug, Default)]
pub struct TakenNames(HashSet<(String, String)>);

impl TakenNames {
    /// The names of `objects` (pods, slices), per namespace.
    pub fn from_meta<'a>(objects: impl IntoIterator<Item = &'a ObjectMeta>) -> Self {
        Self(
            objects
                .into_iter()
                .map(|m| {
                    (
                        namespace_of(m).to_string(),
                        m.name.clone().unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }

    /// A fresh name `make(suffix)` in `ns`, recorded as taken.
    pub fn fresh(
        &mut self,
        ns: &str,
        rng: &mut fastrand::Rng,
        make: impl Fn(&str) -> String,
    ) -> String {
        loop {
            let name = make(&random_suffix(rng));
            if self.0.insert((ns.to_string(), name.clone())) {
                return name;
            }
        }
    }
}

fn owner_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A Pending pod from `template` (labels + `hash_label`, annotations, spec).
fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    name: String,
    generate_name: String,
    hash_label: (&str, &str),
    owner: OwnerReference,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(hash_label.0.to_string(), hash_label.1.to_string());
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            generate_name: Some(generate_name),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: Some(PodStatus {
            phase: Some("Pending".to_string()),
            ..Default::default()
        }),
    }
}

/// Deletion order for scale-down (first = deleted first), as Kubernetes'
/// `ActivePods` ranking: unbound before bound, not running before running,
/// not ready before ready, newer before older.
fn deletion_order(pods: &mut [&Pod]) {
    pods.sort_by_key(|p| {
        (
            pod_node(p).is_some(),
            pod_phase(p) == "Running",
            pod_ready(p),
            Reverse(p.metadata.creation_timestamp.clone()),
            Reverse(p.metadata.name.clone()),
        )
    });
}

/// `spec.replicas`, default 1, never negative.
pub fn desired_replicas(d: &Deployment) -> usize {
    let r = d.spec.replicas.unwrap_or(1);
    usize::try_from(r).unwrap_or(0)
}

/// Pods owned by the Deployment (ownerReference kind Deployment, same name
/// and uid, same namespace).
pub fn owned_pods<'a>(meta: &ObjectMeta, kind: &str, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let ns = namespace_of(meta);
    pods.iter()
        .filter(|p| namespace_of(&p.metadata) == ns)
        .filter(|p| owner_of(&p.metadata, kind).is_some_and(|o| owner_is(o, meta)))
        .collect()
}

/// Reconciles one Deployment against all pods: scaling and rolling replace.
pub fn reconcile_deployment(
    d: &Deployment,
    pods: &[Pod],
    taken: &mut TakenNames,
    rng: &mut fastrand::Rng,
    now: &Time,
) -> WorkloadPlan {
    let mut plan = WorkloadPlan::default();
    let template = &d.spec.template;
    let ns = namespace_of(&d.metadata).to_string();
    let dname = d.metadata.name.clone().unwrap_or_default();
    let hash = template_hash(template);
    let replicas = desired_replicas(d);
    let owned = owned_pods(&d.metadata, "Deployment", pods);
    let active: Vec<&Pod> = owned.iter().copied().filter(|p| pod_active(p)).collect();
    let is_new = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH))
            == Some(&hash)
    };
    let mut new: Vec<&Pod> = active.iter().copied().filter(|p| is_new(p)).collect();
    let mut old: Vec<&Pod> = active.iter().copied().filter(|p| !is_new(p)).collect();

    let recreate = d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let old_terminating = owned.iter().any(|p| pod_terminating(p) && !is_new(p));
    let mut create = 0usize;
    if recreate && (!old.is_empty() || old_terminating) {
        // Recreate: every old pod goes first; new ones once they are gone.
        plan.delete.extend(old.iter().map(|p| (*p).clone()));
    } else if old.is_empty() {
        if new.len() < replicas {
            create = replicas - new.len();
        } else if new.len() > replicas {
            deletion_order(&mut new);
            plan.delete
                .extend(new.iter().take(new.len() - replicas).map(|p| (*p).clone()));
        }
    } else {
        // Old pods that are not Ready serve nothing: replace them at once.
        let (old_ready, old_unready): (Vec<&Pod>, Vec<&Pod>) =
            old.drain(..).partition(|p| pod_ready(p));
        plan.delete.extend(old_unready.iter().map(|p| (*p).clone()));
        let new_ready = new.iter().filter(|p| pod_ready(p)).count();
        // maxUnavailable 0: keep enough old Ready pods to cover the new
        // pods that are not Ready yet.
        let keep_old = replicas.saturating_sub(new_ready).min(old_ready.len());
        let mut old_ready = old_ready;
        deletion_order(&mut old_ready);
        let drop = old_ready.len() - keep_old;
        plan.delete
            .extend(old_ready.iter().take(drop).map(|p| (*p).clone()));
        if new.len() > replicas {
            deletion_order(&mut new);
            plan.delete
                .extend(new.iter().take(new.len() - replicas).map(|p| (*p).clone()));
        } else {
            // maxSurge 1: at most replicas + 1 active pods.
            let total_after = new.len() + keep_old;
            let room = (replicas + 1).saturating_sub(total_after);
            create = room.min(replicas - new.len());
        }
    }
    for _ in 0..create {
        let name = taken.fresh(&ns, rng, |s| deployment_pod_name(&dname, &hash, s));
        plan.create.push(pod_from_template(
            template,
            &ns,
            name,
            format!("{dname}-{hash}-"),
            (POD_TEMPLATE_HASH, &hash),
            owner_ref("apps/v1", "Deployment", &d.metadata),
        ));
    }

    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let old_status = d.status.clone().unwrap_or_default();
    let ready = count(&|p| pod_ready(p));
    let total = count(&|_| true);
    let updated = count(&|p| is_new(p));
    let want = i32::try_from(replicas).unwrap_or(i32::MAX);
    let rs = format!("{dname}-{hash}");
    let mut conditions = old_status.conditions.clone().unwrap_or_default();
    set_deployment_condition(
        &mut conditions,
        if ready >= want {
            (
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_string(),
            )
        } else {
            (
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_string(),
            )
        },
        now,
    );
    set_deployment_condition(
        &mut conditions,
        if updated == want && total == want && ready == want {
            (
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs}\" has successfully progressed."),
            )
        } else {
            (
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs}\" is progressing."),
            )
        },
        now,
    );
    let status = DeploymentStatus {
        conditions: Some(conditions),
        replicas: Some(total),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        updated_replicas: Some(updated),
        unavailable_replicas: Some(
            i32::try_from(replicas)
                .unwrap_or(i32::MAX)
                .saturating_sub(ready)
                .max(0),
        ),
        observed_generation: d.metadata.generation.or(old_status.observed_generation),
        ..old_status.clone()
    };
    if d.status.as_ref() != Some(&status) {
        let mut d2 = d.clone();
        d2.status = Some(status);
        plan.status = Some(Workload::Deployment(d2));
    }
    plan
}

/// Sets a Deployment condition `(type, status, reason, message)`, keeping
/// the times when nothing changed (so a converged Deployment is not
/// rewritten every pass).
fn set_deployment_condition(
    conditions: &mut Vec<DeploymentCondition>,
    (type_, status, reason, message): (&str, &str, &str, String),
    now: &Time,
) {
    let existing = conditions
        .iter_mut()
        .find(|c| c.type_.as_deref() == Some(type_));
    match existing {
        Some(c)
            if c.status.as_deref() == Some(status)
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message.as_str()) => {}
        Some(c) => {
            if c.status.as_deref() != Some(status) {
                c.last_transition_time = Some(now.clone());
            }
            c.status = Some(status.to_string());
            c.reason = Some(reason.to_string());
            c.message = Some(message);
            c.last_update_time = Some(now.clone());
        }
        None => conditions.push(DeploymentCondition {
            type_: Some(type_.to_string()),
            status: Some(status.to_string()),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(now.clone()),
            last_update_time: Some(now.clone()),
        }),
    }
}

/// Nodes a DaemonSet's pods go to: the template's `nodeSelector` matches.
pub fn daemonset_nodes<'a>(ds: &DaemonSet, nodes: &'a [Node]) -> Vec<&'a Node> {
    let sel = ds
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    nodes
        .iter()
        .filter(|n| map_matches(&sel, n.metadata.labels.as_ref()))
        .collect()
}

/// Reconciles one DaemonSet: one pod per eligible node, one-at-a-time
/// replacement on a template change, status numbers.
pub fn reconcile_daemonset(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
    taken: &mut TakenNames,
    rng: &mut fastrand::Rng,
) -> WorkloadPlan {
    let mut plan = WorkloadPlan::default();
    let template = &ds.spec.template;
    let ns = namespace_of(&ds.metadata).to_string();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let hash = template_hash(template);
    let eligible: BTreeMap<&str, &Node> = daemonset_nodes(ds, nodes)
        .into_iter()
        .filter_map(|n| n.metadata.name.as_deref().map(|nm| (nm, n)))
        .collect();
    let owned = owned_pods(&ds.metadata, "DaemonSet", pods);
    let is_new = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CONTROLLER_REVISION_HASH))
            == Some(&hash)
    };
    let mut per_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in owned.iter().copied().filter(|p| pod_active(p)) {
        match pod_node(p) {
            Some(n) if eligible.contains_key(n) => per_node.entry(n).or_default().push(p),
            // Misscheduled (node gone or no longer matching) or unbound.
            _ => plan.delete.push(p.clone()),
        }
    }
    let terminating: HashSet<&str> = owned
        .iter()
        .filter(|p| pod_terminating(p))
        .filter_map(|p| pod_node(p))
        .collect();
    let mut busy = !terminating.is_empty();
    let mut old_on: Vec<&Pod> = Vec::new();
    for node in eligible.keys() {
        let mut here = per_node.remove(node).unwrap_or_default();
        if here.is_empty() {
            // Wait for a terminating pod on this node to go (the kubelet
            // would otherwise run two copies, e.g. both binding a port).
            if terminating.contains(node) {
                continue;
            }
            busy = true;
            let pod_name = taken.fresh(&ns, rng, |s| suffixed_name(&name, s));
            let mut pod = pod_from_template(
                template,
                &ns,
                pod_name,
                format!("{name}-"),
                (CONTROLLER_REVISION_HASH, &hash),
                owner_ref("apps/v1", "DaemonSet", &ds.metadata),
            );
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some((*node).to_string());
            }
            plan.create.push(pod);
            continue;
        }
        deletion_order(&mut here);
        // Keep the best one (the last in deletion order).
        let keep = here.pop();
        plan.delete.extend(here.into_iter().cloned());
        if let Some(p) = keep {
            if is_new(p) {
                busy |= !pod_ready(p);
            } else {
                old_on.push(p);
            }
        }
    }
    // Rolling replace: unready old pods go at once; Ready ones one at a time,
    // only when nothing else of this DaemonSet is in flight.
    let (unready, ready): (Vec<&Pod>, Vec<&Pod>) = old_on.into_iter().partition(|p| !pod_ready(p));
    busy |= !unready.is_empty();
    plan.delete.extend(unready.into_iter().cloned());
    if !busy {
        if let Some(p) = ready.first() {
            plan.delete.push((*p).clone());
        }
    }

    let active: Vec<&Pod> = owned.iter().copied().filter(|p| pod_active(p)).collect();
    let on_eligible = |p: &&&Pod| pod_node(p).is_some_and(|n| eligible.contains_key(n));
    let n = |c: usize| i32::try_from(c).unwrap_or(i32::MAX);
    let scheduled = active.iter().filter(on_eligible).count();
    let ready_n = active
        .iter()
        .filter(on_eligible)
        .filter(|p| pod_ready(p))
        .count();
    let old_status = ds.status.clone().unwrap_or_default();
    let status = DaemonSetStatus {
        desired_number_scheduled: n(eligible.len()),
        current_number_scheduled: n(scheduled),
        number_misscheduled: n(active.len() - scheduled),
        number_ready: n(ready_n),
        number_available: Some(n(ready_n)),
        number_unavailable: Some(n(eligible.len().saturating_sub(ready_n))),
        updated_number_scheduled: Some(n(active
            .iter()
            .filter(on_eligible)
            .filter(|p| is_new(p))
            .count())),
        observed_generation: ds.metadata.generation.or(old_status.observed_generation),
        ..old_status
    };
    if ds.status.as_ref() != Some(&status) {
        let mut d2 = ds.clone();
        d2.status = Some(status);
        plan.status = Some(Workload::DaemonSet(d2));
    }
    plan
}

/// Pods whose owning Deployment or DaemonSet no longer exists (or was
/// re-created with another uid): they are deleted.
pub fn orphaned_pods<'a>(
    pods: &'a [Pod],
    deployments: &[Deployment],
    daemonsets: &[DaemonSet],
) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| !pod_terminating(p))
        .filter(|p| {
            let ns = namespace_of(&p.metadata);
            if let Some(o) = owner_of(&p.metadata, "Deployment") {
                return !deployments
                    .iter()
                    .any(|d| namespace_of(&d.metadata) == ns && owner_is(o, &d.metadata));
            }
            if let Some(o) = owner_of(&p.metadata, "DaemonSet") {
                return !daemonsets
                    .iter()
                    .any(|d| namespace_of(&d.metadata) == ns && owner_is(o, &d.metadata));
            }
            false
        })
        .collect()
}
