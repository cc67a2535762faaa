//! The lab controller (`fibril controller`): plays kube-controller-manager,
//! kube-scheduler and kube-apiserver's allocators over the cluster store,
//! since the lab has none of them.
//!
//! Shape: [`reconcile`] is pure — it takes a [`Snapshot`] of every object it
//! cares about and returns the [`Write`]s to do (plus warnings), so every rule
//! is unit-tested without I/O. [`run`] is the thin loop: relist every
//! [`ControllerOptions::interval`] and soon after any watched change (objects
//! are few), reconcile, apply the writes; an update is done at the revision read, so a conflict only means
//! "someone wrote first" and the next pass retries with fresh state. A failed
//! write is logged and retried by the next pass; it never stops the loop,
//! and neither does a stored object that does not decode (it is skipped with
//! a warning). State (allocations, names) lives only in the store, so a
//! restarted controller writes nothing until something changes.
//!
//! What it owns:
//! 1. Namespaces `default` and `kube-system` exist.
//! 2. Deployments -> Pods ([`workload`]): scale, rolling replace on template
//!    change, status; pods of deleted Deployments deleted.
//! 3. DaemonSets -> one Pod per matching Node ([`workload`]).
//! 4. Scheduling of unbound Pods ([`scheduler`]).
//! 5. Service ClusterIP / NodePort / LoadBalancer IP allocation ([`services`]).
//! 6. EndpointSlices per Service with a selector ([`endpoints`]).
//!
//! Pods are deleted per the lab's deletion contract ([`delete_pod`]): a pod
//! bound to a node gets `metadata.deletionTimestamp` and its kubelet tears it
//! down and deletes the object; an unbound pod is deleted directly.
//!
//! Events (core/v1 `Event`, namespace of the pod) are written for
//! `Scheduled` and `FailedScheduling`.

pub mod endpoints;
pub mod naming;
mod runner;
pub mod scheduler;
pub mod select;
pub mod services;
pub mod workload;

use std::collections::HashSet;

use fibril_api::{
    DaemonSet, Deployment, EndpointSlice, Namespace, Node, ObjectKey, ObjectMeta, Pod, Resource,
    Service,
};
use fibril_store::{resource_version_of, Revision};
use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};

pub use runner::{run, run_with, ControllerError, ControllerOptions};
pub use scheduler::{Decision, Scheduler};
pub use services::{allocate_services, ServicePlan, ServiceRanges};

use crate::select::{pod_node, pod_terminating};
use crate::workload::{TakenNames, Workload};

/// Namespaces that always exist.
pub const SYSTEM_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// Everything one pass reads.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub deployments: Vec<Deployment>,
    pub daemonsets: Vec<DaemonSet>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Stored objects of these kinds that do not decode, and why. Pods owned
    /// by an undecodable Deployment/DaemonSet are not treated as orphans and
    /// slices of an undecodable Service are kept.
    pub undecodable: Vec<(ObjectKey, String)>,
}

/// An object to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Deployment(Deployment),
    DaemonSet(DaemonSet),
    Service(Service),
    EndpointSlice(EndpointSlice),
    /// A core/v1 Event (not a modelled kind): its key and document.
    Event(ObjectKey, Value),
}

impl Object {
    /// The store key.
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(o) => o.key(),
            Object::Pod(o) => o.key(),
            Object::Deployment(o) => o.key(),
            Object::DaemonSet(o) => o.key(),
            Object::Service(o) => o.key(),
            Object::EndpointSlice(o) => o.key(),
            Object::Event(k, _) => k.clone(),
        }
    }
}

/// One store write.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create (fails if it exists; the next pass sees it).
    Create(Object),
    /// Replace at the object's `metadata.resourceVersion`.
    Update(Object),
    /// Delete, at `revision` when given.
    Delete {
        key: ObjectKey,
        revision: Option<Revision>,
    },
}

impl Write {
    /// The key written.
    pub fn key(&self) -> ObjectKey {
        match self {
            Write::Create(o) | Write::Update(o) => o.key(),
            Write::Delete { key, .. } => key.clone(),
        }
    }
}

/// The result of [`reconcile`].
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Objects that cannot be reconciled as asked (duplicate nodePort,
    /// exhausted range...), one sentence naming the object each.
    pub warnings: Vec<String>,
}

/// The write that deletes `pod` per the deletion contract: bound pods get
/// `deletionTimestamp = now` (at the revision read; the kubelet finishes),
/// unbound pods are deleted directly.
pub fn delete_pod(pod: &Pod, now: &Time) -> Write {
    if pod_node(pod).is_some() {
        let mut p = pod.clone();
        p.metadata.deletion_timestamp = Some(now.clone());
        if p.metadata.deletion_grace_period_seconds.is_none() {
            p.metadata.deletion_grace_period_seconds = Some(
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30),
            );
        }
        Write::Update(Object::Pod(p))
    } else {
        Write::Delete {
            key: pod.key(),
            revision: resource_version_of(pod),
        }
    }
}

fn event(
    pod: &Pod,
    type_: &str,
    reason: &str,
    message: &str,
    now: &Time,
    rng: &mut fastrand::Rng,
) -> Object {
    let ns = select::namespace_of(&pod.metadata).to_string();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let name = format!("{pod_name}.{:016x}", rng.u64(..));
    let ts = serde_json::to_value(now).unwrap_or(Value::Null);
    let value = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "name": pod_name, "namespace": ns,
            "uid": pod.metadata.uid,
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": "default-scheduler"},
        "reportingComponent": "default-scheduler",
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    });
    Object::Event(ObjectKey::new("Event", Some(&ns), &name), value)
}

fn set_condition(pod: &mut Pod, cond: PodCondition) -> bool {
    let status = pod.status.get_or_insert_with(Default::default);
    let conds = status.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(c)
            if c.status == cond.status && c.reason == cond.reason && c.message == cond.message =>
        {
            false
        }
        Some(c) => {
            *c = cond;
            true
        }
        None => {
            conds.push(cond);
            true
        }
    }
}

fn scheduled_condition(ok: bool, message: Option<String>, now: &Time) -> PodCondition {
    PodCondition {
        type_: "PodScheduled".to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: (!ok).then(|| "Unschedulable".to_string()),
        message,
        last_transition_time: Some(now.clone()),
        ..Default::default()
    }
}

/// Applies a scheduling decision to `pod`; returns the events to write and
/// whether the pod changed.
fn apply_decision(
    pod: &mut Pod,
    decision: &Decision,
    now: &Time,
    rng: &mut fastrand::Rng,
) -> (bool, Vec<Object>) {
    match decision {
        Decision::Bind(node) => {
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some(node.clone());
            }
            set_condition(pod, scheduled_condition(true, None, now));
            let msg = format!(
                "Successfully assigned {}/{} to {node}",
                select::namespace_of(&pod.metadata),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            let ev = event(pod, "Normal", "Scheduled", &msg, now, rng);
            (true, vec![ev])
        }
        Decision::Unschedulable(msg) => {
            let changed = set_condition(pod, scheduled_condition(false, Some(msg.clone()), now));
            let evs = if changed {
                vec![event(pod, "Warning", "FailedScheduling", msg, now, rng)]
            } else {
                Vec::new()
            };
            (changed, evs)
        }
    }
}

/// Computes every write one pass needs. `now` stamps deletions and
/// conditions; `rng` makes generated names (seed it in tests).
pub fn reconcile(
    snap: &Snapshot,
    ranges: &ServiceRanges,
    now: &Time,
    rng: &mut fastrand::Rng,
) -> Plan {
    let mut plan = Plan::default();
    for (key, why) in &snap.undecodable {
        plan.warnings
            .push(format!("{key} cannot be decoded ({why}); it is ignored"));
    }
    let unknown = |kind: &str, ns: &str, name: &str| {
        snap.undecodable
            .iter()
            .any(|(k, _)| k.kind == kind && k.namespace.as_deref() == Some(ns) && k.name == name)
    };

    // 1. Namespaces.
    for ns in SYSTEM_NAMESPACES {
        if !snap
            .namespaces
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(ns))
        {
            plan.writes.push(Write::Create(Object::Namespace(Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            })));
        }
    }

    // 2-3. Workloads.
    let mut taken = TakenNames::from_meta(snap.pods.iter().map(|p| &p.metadata));
    let mut creates: Vec<Pod> = Vec::new();
    let mut deletes: Vec<Pod> = Vec::new();
    let mut statuses: Vec<Workload> = Vec::new();
    for d in &snap.deployments {
        let wp = workload::reconcile_deployment(d, &snap.pods, &mut taken, rng, now);
        creates.extend(wp.create);
        deletes.extend(wp.delete);
        statuses.extend(wp.status);
    }
    for ds in &snap.daemonsets {
        let wp = workload::reconcile_daemonset(ds, &snap.nodes, &snap.pods, &mut taken, rng);
        creates.extend(wp.create);
        deletes.extend(wp.delete);
        statuses.extend(wp.status);
    }
    deletes.extend(
        workload::orphaned_pods(&snap.pods, &snap.deployments, &snap.daemonsets)
            .into_iter()
            .filter(|p| {
                let ns = select::namespace_of(&p.metadata);
                !p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| unknown(&o.kind, ns, &o.name))
            })
            .cloned(),
    );
    let mut deleted: HashSet<ObjectKey> = HashSet::new();
    for p in &deletes {
        if !pod_terminating(p) && deleted.insert(p.key()) {
            plan.writes.push(delete_pod(p, now));
        }
    }

    // 4. Scheduling: stored unbound pods first (older), then the new ones,
    // so a new pod is created already bound.
    let mut sched = Scheduler::new(&snap.nodes, &snap.pods);
    for p in creates.iter().filter(|p| pod_node(p).is_some()) {
        if let Some(n) = pod_node(p) {
            sched.record(n, p);
        }
    }
    let mut unbound: Vec<&Pod> = snap
        .pods
        .iter()
        .filter(|p| pod_node(p).is_none() && !pod_terminating(p) && !select::pod_finished(p))
        .filter(|p| scheduler::ours(p))
        .filter(|p| !deleted.contains(&p.key()))
        .collect();
    unbound.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone(),
            p.metadata.name.clone(),
        )
    });
    for p in unbound {
        let decision = sched.place(p);
        let mut p2 = p.clone();
        let (changed, events) = apply_decision(&mut p2, &decision, now, rng);
        if changed {
            plan.writes.push(Write::Update(Object::Pod(p2)));
        }
        plan.writes.extend(events.into_iter().map(Write::Create));
    }
    for mut p in creates {
        let mut events = Vec::new();
        if pod_node(&p).is_none() && scheduler::ours(&p) {
            let decision = sched.place(&p);
            events = apply_decision(&mut p, &decision, now, rng).1;
        }
        plan.writes.push(Write::Create(Object::Pod(p)));
        plan.writes.extend(events.into_iter().map(Write::Create));
    }
    for s in statuses {
        plan.writes.push(Write::Update(match s {
            Workload::Deployment(d) => Object::Deployment(d),
            Workload::DaemonSet(d) => Object::DaemonSet(d),
        }));
    }

    // 5. Services.
    let sp = allocate_services(&snap.services, ranges);
    plan.warnings.extend(sp.warnings);
    // Slices see the allocated view (ports do not depend on it, but keep one truth).
    let mut services = snap.services.clone();
    for u in sp.updates {
        if let Some(s) = services.iter_mut().find(|s| s.key() == u.key()) {
            *s = u.clone();
        }
        plan.writes.push(Write::Update(Object::Service(u)));
    }

    // 6. EndpointSlices.
    let mut slice_names = TakenNames::from_meta(snap.endpoint_slices.iter().map(|s| &s.metadata));
    let sl = endpoints::reconcile_slices(
        &services,
        &snap.pods,
        &snap.endpoint_slices,
        &mut slice_names,
        rng,
    );
    plan.writes.extend(
        sl.create
            .into_iter()
            .map(|s| Write::Create(Object::EndpointSlice(s))),
    );
    plan.writes.extend(
        sl.update
            .into_iter()
            .map(|s| Write::Update(Object::EndpointSlice(s))),
    );
    plan.writes
        .extend(sl.delete.into_iter().map(|s| Write::Delete {
            revision: resource_version_of(&s),
            key: s.key(),
        }));
    plan
}

#[cfg(test)]
mod tests;
