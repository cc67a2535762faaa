//! Unit tests of the pure reconcilers, driven with the seed manifests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use fibril_api::{parse_manifests, DaemonSet, Deployment, Node, Pod, Resource, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use crate::endpoints::{MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};
use crate::select::{pod_active, pod_node, pod_ready, pod_terminating};
use crate::*;

const SEEDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fibril-api/tests/fixtures/seeds/"
);

fn seed(file: &str) -> Vec<fibril_api::AnyObject> {
    let text = std::fs::read_to_string(format!("{SEEDS}{file}")).unwrap();
    parse_manifests(&text).unwrap()
}

fn seed_of<T: fibril_api::ModeledKind>(file: &str) -> Vec<T> {
    seed(file)
        .into_iter()
        .filter_map(|o| o.downcast::<T>().ok())
        .collect()
}

fn now() -> Time {
    Time("2026-12-07T19:00:00Z".parse().unwrap())
}

fn node(name: &str, ready: bool, labels: &[(&str, &str)]) -> Node {
    let mut l: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("kubernetes.io/hostname".into(), name.into());
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": l, "uid": format!("uid-{name}"), "resourceVersion": "1"},
        "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    }))
    .unwrap()
}

fn nodes3() -> Vec<Node> {
    vec![
        node(
            "k8s-ctr",
            true,
            &[("node-role.kubernetes.io/control-plane", "")],
        ),
        node("k8s-w1", true, &[]),
        node("k8s-w2", true, &[]),
    ]
}

/// A tiny in-memory "store" over a Snapshot: applies a plan as the run loop
/// would (revisions, uids, timestamps), and plays the kubelet.
struct Sim {
    snap: Snapshot,
    rev: i64,
    rng: fastrand::Rng,
    ranges: ServiceRanges,
    clock: i64,
}

impl Sim {
    fn new(nodes: Vec<Node>) -> Self {
        Self {
            snap: Snapshot {
                nodes,
                ..Default::default()
            },
            rev: 10,
            rng: fastrand::Rng::with_seed(1),
            ranges: ServiceRanges::default(),
            clock: 0,
        }
    }

    fn stamp<R: Resource>(&mut self, o: &mut R, create: bool) {
        self.rev += 1;
        let m = o.metadata_mut();
        m.resource_version = Some(self.rev.to_string());
        if create {
            m.uid.get_or_insert_with(|| format!("uid-{}", self.rev));
            self.clock += 1;
            let ts: k8s_openapi::jiff::Timestamp = "2026-12-07T19:00:00Z".parse().unwrap();
            m.creation_timestamp.get_or_insert(Time(
                ts + k8s_openapi::jiff::SignedDuration::from_secs(self.clock),
            ));
        }
    }

    fn add<R: Resource>(&mut self, mut o: R) -> R {
        self.stamp(&mut o, true);
        o
    }

    fn put_list<R: Resource>(list: &mut Vec<R>, o: R) {
        match list.iter_mut().find(|x| x.key() == o.key()) {
            Some(x) => *x = o,
            None => list.push(o),
        }
    }

    fn apply(&mut self, plan: &Plan) {
        for w in &plan.writes {
            match w {
                Write::Create(o) | Write::Update(o) => {
                    let create = matches!(w, Write::Create(_));
                    match o.clone() {
                        Object::Namespace(mut x) => {
                            self.stamp(&mut x, create);
                            Self::put_list(&mut self.snap.namespaces, x)
                        }
                        Object::Pod(mut x) => {
                            self.stamp(&mut x, create);
                            Self::put_list(&mut self.snap.pods, x)
                        }
                        Object::Deployment(mut x) => {
                            self.stamp(&mut x, create);
                            Self::put_list(&mut self.snap.deployments, x)
                        }
                        Object::DaemonSet(mut x) => {
                            self.stamp(&mut x, create);
                            Self::put_list(&mut self.snap.daemonsets, x)
                        }
                        Object::Service(mut x) => {
                            self.stamp(&mut x, create);
                            Self::put_list(&mut self.snap.services, x)
                        }
                        Object::EndpointSlice(mut x) => {
                            self.stamp(&mut x, create);
                            Self::put_list(&mut self.snap.endpoint_slices, x)
                        }
                        Object::Event(..) => {}
                    }
                }
                Write::Delete { key, .. } => {
                    self.snap.pods.retain(|p| &p.key() != key);
                    self.snap.endpoint_slices.retain(|p| &p.key() != key);
                }
            }
        }
    }

    fn step(&mut self) -> Plan {
        let plan = reconcile(&self.snap, &self.ranges, &now(), &mut self.rng);
        self.apply(&plan);
        plan
    }

    /// The kubelet: bound pods run and become Ready; terminating pods go.
    fn kubelet(&mut self, ready: bool) {
        self.snap.pods.retain(|p| !pod_terminating(p));
        let mut n = 0;
        for p in &mut self.snap.pods {
            n += 1;
            if pod_node(p).is_some() {
                p.status = Some(
                    serde_json::from_value(json!({
                        "phase": "Running", "podIP": format!("10.0.0.{n}"),
                        "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]
                    }))
                    .unwrap(),
                );
            }
        }
    }

    fn active_pods(&self, prefix: &str) -> Vec<&Pod> {
        self.snap
            .pods
            .iter()
            .filter(|p| pod_active(p))
            .filter(|p| p.metadata.name.as_deref().unwrap().starts_with(prefix))
            .collect()
    }
}

#[test]
fn system_namespaces_created_once() {
    let mut sim = Sim::new(vec![]);
    let plan = sim.step();
    let created: Vec<_> = plan.writes.iter().map(|w| w.key().name).collect();
    assert_eq!(created, ["default", "kube-system"]);
    assert!(sim.step().writes.is_empty());
}

#[test]
fn webpod_seed_spreads_over_workers_and_names_pods_like_k8s() {
    let mut sim = Sim::new(nodes3());
    for d in seed_of::<Deployment>("000-webpod-service-curl-pod.yaml") {
        let d = sim.add(d);
        sim.snap.deployments.push(d);
    }
    // curl-pod is pinned to the control plane with nodeName.
    for p in seed_of::<Pod>("000-webpod-service-curl-pod.yaml") {
        let p = sim.add(p);
        sim.snap.pods.push(p);
    }
    sim.step();
    let pods = sim.active_pods("webpod-");
    assert_eq!(pods.len(), 2);
    let hash = naming::template_hash(&sim.snap.deployments[0].spec.template);
    let mut nodes: Vec<_> = pods.iter().map(|p| pod_node(p).unwrap()).collect();
    nodes.sort();
    // Fewest pods first: the control plane already runs curl-pod.
    assert_eq!(nodes, ["k8s-w1", "k8s-w2"]);
    for p in &pods {
        let name = p.metadata.name.as_deref().unwrap();
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[1], hash);
        assert_eq!(parts[2].len(), 5);
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "webpod");
        assert_eq!(labels["pod-template-hash"], hash);
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Deployment", "webpod")
        );
        assert!(!owner.uid.is_empty());
    }
    // curl-pod untouched (pinned, no owner).
    assert_eq!(
        sim.snap
            .pods
            .iter()
            .filter(|p| p.metadata.name.as_deref() == Some("curl-pod"))
            .count(),
        1
    );
    // Status after the kubelet made them Ready.
    sim.kubelet(true);
    sim.step();
    let st = sim.snap.deployments[0].status.clone().unwrap();
    assert_eq!(
        (
            st.replicas,
            st.ready_replicas,
            st.available_replicas,
            st.updated_replicas
        ),
        (Some(2), Some(2), Some(2), Some(2))
    );
    // Converged: nothing more to write.
    assert!(sim.step().writes.is_empty());
}

fn anti_affinity_deploy(replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "spread", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "spread"}},
          "template": {"metadata": {"labels": {"app": "spread"}}, "spec": {
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
              {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["spread"]}]},
               "topologyKey": "kubernetes.io/hostname"}]}},
            "containers": [{"name": "c", "image": "traefik/whoami"}]}}}
    }))
    .unwrap()
}

#[test]
fn required_anti_affinity_leaves_extra_pod_unschedulable() {
    let mut sim = Sim::new(vec![node("a", true, &[]), node("b", true, &[])]);
    let d = sim.add(anti_affinity_deploy(3));
    sim.snap.deployments.push(d);
    let plan = sim.step();
    let pods = sim.active_pods("spread-");
    assert_eq!(pods.len(), 3);
    let bound: Vec<_> = pods.iter().filter_map(|p| pod_node(p)).collect();
    assert_eq!(bound.len(), 2);
    assert_ne!(bound[0], bound[1]);
    let pending = pods.iter().find(|p| pod_node(p).is_none()).unwrap();
    let cond = pending
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        cond.message.as_deref(),
        Some("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.")
    );
    assert!(plan.writes.iter().any(
        |w| matches!(w, Write::Create(Object::Event(_, v)) if v["reason"] == "FailedScheduling")
    ));
    // No repeated condition write or event while nothing changes.
    sim.kubelet(true);
    sim.step();
    assert!(sim.step().writes.is_empty());
    // A third node arrives: the pending pod is bound there.
    sim.snap.nodes.push(node("c", true, &[]));
    sim.step();
    let pods = sim.active_pods("spread-");
    let mut bound: Vec<_> = pods.iter().filter_map(|p| pod_node(p)).collect();
    bound.sort();
    assert_eq!(bound, ["a", "b", "c"]);
}

#[test]
fn scheduler_filters_selector_and_not_ready_nodes() {
    let nodes = vec![
        node("a", true, &[("disk", "ssd")]),
        node("b", false, &[("disk", "ssd")]),
        node("c", true, &[]),
    ];
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"nodeSelector": {"disk": "ssd"}, "containers": []}
    }))
    .unwrap();
    let mut s = Scheduler::new(&nodes, &[]);
    assert_eq!(s.place(&pod), Decision::Bind("a".into()));
    let mut pod2 = pod.clone();
    pod2.spec.as_mut().unwrap().node_selector =
        Some([("disk".to_string(), "nvme".to_string())].into());
    assert_eq!(
        s.place(&pod2),
        Decision::Unschedulable(
            "0/3 nodes are available: 1 node(s) were not ready, 2 node(s) didn't match Pod's node affinity/selector.".into()
        )
    );
    assert_eq!(
        Scheduler::new(&[], &[]).place(&pod),
        Decision::Unschedulable("no nodes available to schedule pods".into())
    );
}

#[test]
fn scheduler_scores_by_load_then_name_and_respects_existing_pods_anti_affinity() {
    let nodes = vec![node("b", true, &[]), node("a", true, &[])];
    let guard: Pod = serde_json::from_value(json!({
        "metadata": {"name": "guard", "namespace": "default", "labels": {"app": "guard"}},
        "spec": {"nodeName": "a", "containers": [], "affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}},
             "topologyKey": "kubernetes.io/hostname"}]}}}
    }))
    .unwrap();
    let web: Pod = serde_json::from_value(json!({
        "metadata": {"name": "w", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": []}
    }))
    .unwrap();
    let other: Pod = serde_json::from_value(json!({
        "metadata": {"name": "o", "namespace": "default"}, "spec": {"containers": []}
    }))
    .unwrap();
    // Empty cluster: ties go to the name order.
    assert_eq!(
        Scheduler::new(&nodes, &[]).place(&other),
        Decision::Bind("a".into())
    );
    let mut s = Scheduler::new(&nodes, std::slice::from_ref(&guard));
    // "a" has a pod that refuses app=web.
    assert_eq!(s.place(&web), Decision::Bind("b".into()));
    let mut web_other_ns = web.clone();
    web_other_ns.metadata.namespace = Some("other".into());
    // Loads are 1/1 now; "a" wins by name, the guard only refuses its namespace.
    assert_eq!(s.place(&web_other_ns), Decision::Bind("a".into()));
}

#[test]
fn scale_up_and_down_prefers_not_running_then_newest() {
    let mut sim = Sim::new(nodes3());
    let mut d = seed_of::<Deployment>("112-deploy-nginx-vac-no.yaml").remove(0);
    d.spec.replicas = Some(3);
    let d = sim.add(d);
    sim.snap.deployments.push(d);
    sim.step();
    assert_eq!(sim.active_pods("nginx-vac-").len(), 3);
    // Pool annotation copied from the template.
    let p = sim.active_pods("nginx-vac-")[0];
    assert_eq!(
        p.metadata.annotations.as_ref().unwrap()["ipam.cilium.io/ip-pool"],
        "vac"
    );
    sim.kubelet(true);
    // One pod is not running (its kubelet reports ContainerCreating).
    let lagging = sim.snap.pods[1].metadata.name.clone().unwrap();
    sim.snap.pods[1].status = Some(serde_json::from_value(json!({"phase": "Pending"})).unwrap());
    sim.snap.deployments[0].spec.replicas = Some(1);
    let plan = sim.step();
    let deleted: Vec<_> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some() => {
                p.metadata.name.clone()
            }
            _ => None,
        })
        .collect();
    assert_eq!(deleted.len(), 2);
    assert!(
        deleted.contains(&lagging),
        "{deleted:?} should include the not-running {lagging}"
    );
    // The survivor is the oldest Running one.
    let left = sim.active_pods("nginx-vac-");
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].metadata.name,
        sim.snap
            .pods
            .iter()
            .filter(|p| p.metadata.name != Some(lagging.clone()))
            .map(|p| p.metadata.name.clone())
            .next()
            .unwrap()
    );
    // Deletion contract: bound pods get a deletionTimestamp, stay until the kubelet acts.
    assert_eq!(sim.snap.pods.len(), 3);
    sim.kubelet(true);
    assert_eq!(sim.snap.pods.len(), 1);
}

#[test]
fn delete_pod_follows_the_contract() {
    let bound: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "resourceVersion": "7"},
        "spec": {"nodeName": "a", "containers": [], "terminationGracePeriodSeconds": 0}
    }))
    .unwrap();
    match delete_pod(&bound, &now()) {
        Write::Update(Object::Pod(p)) => {
            assert_eq!(p.metadata.deletion_timestamp, Some(now()));
            assert_eq!(p.metadata.deletion_grace_period_seconds, Some(0));
            assert_eq!(p.metadata.resource_version.as_deref(), Some("7"));
        }
        w => panic!("{w:?}"),
    }
    let mut unbound = bound.clone();
    unbound.spec.as_mut().unwrap().node_name = None;
    assert_eq!(
        delete_pod(&unbound, &now()),
        Write::Delete {
            key: unbound.key(),
            revision: Some(7)
        }
    );
}

#[test]
fn rollout_restart_replaces_pods_with_surge_one_and_no_unavailability() {
    let mut sim = Sim::new(nodes3());
    let d = sim.add(seed_of::<Deployment>("000-webpod-service-curl-pod.yaml").remove(0));
    sim.snap.deployments.push(d);
    sim.step();
    sim.kubelet(true);
    sim.step();
    let old: Vec<String> = sim
        .active_pods("webpod-")
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(old.len(), 2);
    // `fibril rollout restart`.
    sim.snap.deployments[0]
        .spec
        .template
        .metadata
        .as_mut()
        .unwrap()
        .annotations = Some(
        [(
            "kubectl.kubernetes.io/restartedAt".to_string(),
            "2026-12-07T19:01:00Z".to_string(),
        )]
        .into(),
    );
    let mut rounds = 0;
    loop {
        sim.step();
        let active = sim.active_pods("webpod-");
        assert!(active.len() <= 3, "maxSurge 1 exceeded: {}", active.len());
        let ready = active.iter().filter(|p| pod_ready(p)).count();
        assert!(ready >= 2, "maxUnavailable 0 violated");
        // The kubelet: new pods start not ready, become ready next round.
        let terminating_before = sim.snap.pods.iter().filter(|p| pod_terminating(p)).count();
        sim.kubelet(true);
        let _ = terminating_before;
        rounds += 1;
        let names: Vec<String> = sim
            .active_pods("webpod-")
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        if names.len() == 2
            && names.iter().all(|n| !old.contains(n))
            && sim
                .step()
                .writes
                .iter()
                .all(|w| matches!(w, Write::Update(Object::Deployment(_))))
        {
            break;
        }
        assert!(rounds < 10, "rollout did not converge");
    }
    let st = sim.snap.deployments[0].status.clone().unwrap();
    assert_eq!(st.updated_replicas, Some(2));
}

#[test]
fn pods_of_a_deleted_deployment_are_deleted() {
    let mut sim = Sim::new(nodes3());
    let d = sim.add(anti_affinity_deploy(2));
    sim.snap.deployments.push(d);
    sim.step();
    // An unbound extra pod too (directly deleted).
    let mut extra = sim.snap.pods[0].clone();
    extra.metadata.name = Some("spread-x-aaaaa".into());
    extra.spec.as_mut().unwrap().node_name = None;
    sim.snap.pods.push(extra);
    sim.snap.deployments.clear();
    let plan = sim.step();
    assert!(plan
        .writes
        .iter()
        .any(|w| matches!(w, Write::Delete { key, .. } if key.name == "spread-x-aaaaa")));
    assert_eq!(plan.writes.iter().filter(|w| matches!(w, Write::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some())).count(), 2);
    // A re-created Deployment with the same name (new uid) does not adopt old pods.
    let mut sim = Sim::new(nodes3());
    let d = sim.add(anti_affinity_deploy(1));
    sim.snap.deployments.push(d);
    sim.step();
    sim.snap.deployments[0].metadata.uid = Some("another".into());
    sim.step();
    assert_eq!(
        sim.snap.pods.iter().filter(|p| pod_terminating(p)).count(),
        1
    );
    assert_eq!(sim.active_pods("spread-").len(), 1);
}

#[test]
fn daemonset_one_pod_per_matching_node_and_rolling_one_at_a_time() {
    let mut sim = Sim::new(nodes3());
    let ds = seed_of::<DaemonSet>("003-nodelocaldns.yaml").remove(0);
    let ds = sim.add(ds);
    sim.snap.daemonsets.push(ds);
    sim.step();
    let pods = sim.active_pods("node-local-dns-");
    assert_eq!(pods.len(), 3);
    let mut on: Vec<_> = pods.iter().map(|p| pod_node(p).unwrap()).collect();
    on.sort();
    assert_eq!(on, ["k8s-ctr", "k8s-w1", "k8s-w2"]);
    assert!(pods
        .iter()
        .all(|p| p.metadata.name.as_deref().unwrap().len() == "node-local-dns-".len() + 5));
    sim.kubelet(true);
    sim.step();
    let st = sim.snap.daemonsets[0].status.clone().unwrap();
    assert_eq!(
        (
            st.desired_number_scheduled,
            st.current_number_scheduled,
            st.number_ready
        ),
        (3, 3, 3)
    );
    assert!(sim.step().writes.is_empty());
    // Restart: one pod at a time.
    sim.snap.daemonsets[0]
        .spec
        .template
        .metadata
        .as_mut()
        .unwrap()
        .annotations = Some(
        [(
            "kubectl.kubernetes.io/restartedAt".to_string(),
            "x".to_string(),
        )]
        .into(),
    );
    for _ in 0..12 {
        sim.step();
        assert!(sim.snap.pods.iter().filter(|p| pod_terminating(p)).count() <= 1);
        sim.kubelet(true);
    }
    let hash = naming::template_hash(&sim.snap.daemonsets[0].spec.template);
    let pods = sim.active_pods("node-local-dns-");
    assert_eq!(pods.len(), 3);
    assert!(pods
        .iter()
        .all(|p| p.metadata.labels.as_ref().unwrap()["controller-revision-hash"] == hash));
    // nodeSelector: only matching nodes.
    sim.snap.daemonsets[0]
        .spec
        .template
        .spec
        .as_mut()
        .unwrap()
        .node_selector = Some(
        [(
            "node-role.kubernetes.io/control-plane".to_string(),
            String::new(),
        )]
        .into(),
    );
    for _ in 0..4 {
        sim.step();
        sim.kubelet(true);
    }
    let pods = sim.active_pods("node-local-dns-");
    assert_eq!(
        pods.iter()
            .map(|p| pod_node(p).unwrap())
            .collect::<Vec<_>>(),
        ["k8s-ctr"]
    );
}

fn svc(name: &str, v: serde_json::Value) -> Service {
    let mut s: Service = serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": v}),
    )
    .unwrap();
    s.metadata.resource_version = Some("5".into());
    s
}

#[test]
fn cluster_ips_requested_dynamic_headless_and_stable() {
    let dns = svc(
        "kube-dns",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}),
    );
    let web = seed_of::<Service>("000-webpod-service-curl-pod.yaml").remove(0);
    let headless = svc(
        "h",
        json!({"clusterIP": "None", "selector": {"a": "b"}, "ports": [{"port": 80}]}),
    );
    let kubernetes = svc("kubernetes", json!({"ports": [{"port": 443}]}));
    let plan = allocate_services(&[dns, web, headless, kubernetes], &ServiceRanges::default());
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let ip = |n: &str| {
        plan.updates
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(n))
            .map(|s| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap())
    };
    assert_eq!(ip("kube-dns").as_deref(), Some("10.96.0.10"));
    // Dynamic: above the static band (256 addresses of a /16).
    assert_eq!(ip("webpod").as_deref(), Some("10.96.1.0"));
    assert_eq!(ip("kubernetes").as_deref(), Some("10.96.0.1"));
    assert_eq!(ip("h").as_deref(), Some("None"));
    let web2 = plan
        .updates
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("webpod"))
        .unwrap();
    assert_eq!(
        web2.spec.as_ref().unwrap().cluster_ips.as_deref(),
        Some(&["10.96.1.0".to_string()][..])
    );
    // Re-running on the result writes nothing (restart safe, no reshuffle).
    let again = allocate_services(&plan.updates, &ServiceRanges::default());
    assert!(again.updates.is_empty(), "{:?}", again.updates);
    // A duplicate request is refused and named.
    let mut dup = svc(
        "dup",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 1}]}),
    );
    dup.metadata.creation_timestamp = Some(now());
    let mut all = plan.updates.clone();
    all.push(dup);
    let p = allocate_services(&all, &ServiceRanges::default());
    assert!(
        p.warnings.iter().any(|w| w.contains("default/dup")
            && w.contains("10.96.0.10")
            && w.contains("default/kube-dns")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn cluster_ip_exhaustion_in_a_small_cidr() {
    let ranges = ServiceRanges {
        service_cidr: "10.1.0.0/29".parse().unwrap(),
        lb_pool: vec![],
    };
    // /29: 8 addresses; network, .1 and broadcast skipped: 5 usable.
    let svcs: Vec<Service> = (0..6)
        .map(|i| svc(&format!("s{i}"), json!({"ports": [{"port": 80}]})))
        .collect();
    let plan = allocate_services(&svcs, &ranges);
    let mut ips: Vec<_> = plan
        .updates
        .iter()
        .map(|s| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap())
        .collect();
    ips.sort();
    assert_eq!(
        ips,
        ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    );
    assert_eq!(
        plan.warnings,
        ["service default/s5: no free clusterIP in 10.1.0.0/29"]
    );
}

#[test]
fn node_ports_requested_dynamic_duplicate_and_type_change() {
    let seed = seed_of::<Service>("403-nginx-nodeport-test.yaml").remove(0);
    let mut dyn_svc = svc(
        "dyn",
        json!({"type": "NodePort", "selector": {"a": "b"}, "ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}),
    );
    dyn_svc.metadata.creation_timestamp = Some(now());
    let plan = allocate_services(&[seed.clone(), dyn_svc], &ServiceRanges::default());
    let np = |n: &str| {
        plan.updates
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(n))
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.node_port.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(np("nginx-nodeport-test"), [31000]);
    assert_eq!(np("dyn"), [30000, 30001]);
    // Duplicate: the younger Service is left unallocated with a warning naming it and the port.
    let mut dup = svc(
        "dup",
        json!({"type": "NodePort", "ports": [{"port": 8080, "nodePort": 31000}]}),
    );
    dup.metadata.creation_timestamp = Some(Time("2030-01-01T00:00:00Z".parse().unwrap()));
    let mut all = plan.updates.clone();
    all.push(dup);
    let p = allocate_services(&all, &ServiceRanges::default());
    assert!(p.updates.is_empty(), "{:?}", p.updates);
    assert_eq!(p.warnings, ["service default/dup port 8080: nodePort 31000 is already allocated to default/nginx-nodeport-test"]);
    // Back to ClusterIP: nodePorts released.
    let mut s = plan
        .updates
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("dyn"))
        .unwrap()
        .clone();
    s.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let p = allocate_services(&[s], &ServiceRanges::default());
    assert!(p.updates[0]
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .all(|p| p.node_port.is_none()));
}

#[test]
fn load_balancer_ips_from_the_pool() {
    let ranges = ServiceRanges {
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        lb_pool: vec!["192.168.10.208/30".parse().unwrap()],
    };
    let mk = |n: &str, lbip: Option<&str>, t: i64| {
        let mut s = svc(
            n,
            json!({"type": "LoadBalancer", "loadBalancerIP": lbip, "ports": [{"port": 80}]}),
        );
        s.metadata.creation_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::from_second(t).unwrap()));
        s
    };
    let plan = allocate_services(
        &[
            mk("a", None, 1),
            mk("b", Some("192.168.10.209"), 2),
            mk("c", None, 3),
            mk("d", Some("10.0.0.1"), 4),
        ],
        &ranges,
    );
    let lb = |n: &str| {
        plan.updates
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(n))
            .and_then(|s| {
                s.status
                    .as_ref()?
                    .load_balancer
                    .as_ref()?
                    .ingress
                    .as_ref()?
                    .first()?
                    .ip
                    .clone()
            })
    };
    // /30 hosts: .209 and .210; b asked for .209 but a came first and got it.
    assert_eq!(lb("a").as_deref(), Some("192.168.10.209"));
    assert_eq!(lb("b"), None);
    assert_eq!(lb("c").as_deref(), Some("192.168.10.210"));
    assert_eq!(lb("d"), None);
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(plan
        .warnings
        .iter()
        .any(|w| w.contains("default/b") && w.contains("192.168.10.209")));
    // Stable on the next pass; no pool -> pending with a warning.
    let again = allocate_services(&plan.updates, &ranges);
    assert!(again.updates.iter().all(
        |s| s.metadata.name.as_deref() != Some("a") && s.metadata.name.as_deref() != Some("c")
    ));
    let p = allocate_services(&[mk("e", None, 5)], &ServiceRanges::default());
    assert_eq!(
        p.warnings,
        ["service default/e: loadBalancerIPPool is empty (set loadBalancer.ipPool); EXTERNAL-IP stays pending"]
    );
    // Exhausted pool.
    let p = allocate_services(
        &[mk("a", None, 1), mk("c", None, 2), mk("f", None, 3)],
        &ranges,
    );
    assert_eq!(
        p.warnings,
        ["service default/f: no free address in loadBalancerIPPool [\"192.168.10.208/30\"]; EXTERNAL-IP stays pending"]
    );
}

fn running_pod(
    name: &str,
    labels: serde_json::Value,
    ip: &str,
    ready: bool,
    ports: serde_json::Value,
) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels, "uid": format!("u-{name}")},
        "spec": {"nodeName": "k8s-w1", "containers": [{"name": "c", "image": "nginx", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    }))
    .unwrap()
}

#[test]
fn endpoint_slices_with_named_ports_conditions_and_stable_names() {
    let service = svc(
        "web",
        json!({"selector": {"app": "web"}, "ports": [
        {"name": "http", "port": 80, "targetPort": "web-port"},
        {"name": "metrics", "port": 9000, "protocol": "TCP"}]}),
    );
    let ports = json!([{"name": "web-port", "containerPort": 8080}]);
    let mut terminating = running_pod(
        "web-c",
        json!({"app": "web"}),
        "10.0.1.3",
        true,
        ports.clone(),
    );
    terminating.metadata.deletion_timestamp = Some(now());
    let pods = vec![
        running_pod(
            "web-b",
            json!({"app": "web"}),
            "10.0.1.2",
            false,
            ports.clone(),
        ),
        running_pod(
            "web-a",
            json!({"app": "web"}),
            "10.0.1.1",
            true,
            ports.clone(),
        ),
        terminating,
        // No such named port: left out.
        running_pod("web-d", json!({"app": "web"}), "10.0.1.4", true, json!([])),
        running_pod(
            "other",
            json!({"app": "x"}),
            "10.0.1.5",
            true,
            ports.clone(),
        ),
    ];
    let mut rng = fastrand::Rng::with_seed(3);
    let plan = endpoints::reconcile_slices(
        std::slice::from_ref(&service),
        &pods,
        &[],
        &mut workload::TakenNames::default(),
        &mut rng,
    );
    assert_eq!(plan.create.len(), 1);
    let slice = &plan.create[0];
    let name = slice.metadata.name.clone().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    let labels = slice.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[SERVICE_NAME_LABEL], "web");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(slice.address_type, "IPv4");
    let v = serde_json::to_value(slice).unwrap();
    assert_eq!(
        v["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "port": 9000, "protocol": "TCP"}])
    );
    assert_eq!(
        v["endpoints"],
        json!([
            {"addresses": ["10.0.1.1"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "k8s-w1",
             "targetRef": {"kind": "Pod", "name": "web-a", "namespace": "default", "uid": "u-web-a"}},
            {"addresses": ["10.0.1.2"], "conditions": {"ready": false, "serving": false, "terminating": false}, "nodeName": "k8s-w1",
             "targetRef": {"kind": "Pod", "name": "web-b", "namespace": "default", "uid": "u-web-b"}},
            {"addresses": ["10.0.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "k8s-w1",
             "targetRef": {"kind": "Pod", "name": "web-c", "namespace": "default", "uid": "u-web-c"}},
        ])
    );
    // Unchanged -> no write; changed -> update of the same slice; service gone -> delete.
    let mut stored = slice.clone();
    stored.metadata.resource_version = Some("9".into());
    let same = endpoints::reconcile_slices(
        std::slice::from_ref(&service),
        &pods,
        &[stored.clone()],
        &mut workload::TakenNames::default(),
        &mut rng,
    );
    assert!(same.create.is_empty() && same.update.is_empty() && same.delete.is_empty());
    let changed = endpoints::reconcile_slices(
        std::slice::from_ref(&service),
        &pods[..2],
        &[stored.clone()],
        &mut workload::TakenNames::default(),
        &mut rng,
    );
    assert_eq!(changed.update.len(), 1);
    assert_eq!(
        changed.update[0].metadata.name.as_deref(),
        Some(name.as_str())
    );
    assert_eq!(changed.update[0].endpoints.as_ref().unwrap().len(), 2);
    let gone = endpoints::reconcile_slices(
        &[],
        &pods,
        &[stored],
        &mut workload::TakenNames::default(),
        &mut rng,
    );
    assert_eq!(gone.delete.len(), 1);
}

#[test]
fn services_without_selector_get_no_slice_and_default_target_port() {
    let seeds = seed_of::<Service>("003-nodelocaldns.yaml");
    let upstream = seeds
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("kube-dns-upstream"))
        .unwrap();
    let pod: Pod = running_pod(
        "coredns-1",
        json!({"k8s-app": "kube-dns"}),
        "10.0.0.9",
        true,
        json!([]),
    );
    let mut pod = pod;
    pod.metadata.namespace = Some("kube-system".into());
    let (eps, ports) = endpoints::build_endpoints(upstream, &[pod]);
    assert_eq!(eps.len(), 1);
    assert_eq!(
        ports
            .iter()
            .map(|p| (
                p.name.clone().unwrap(),
                p.protocol.clone().unwrap(),
                p.port.unwrap()
            ))
            .collect::<Vec<_>>(),
        [
            ("dns".to_string(), "UDP".to_string(), 53),
            ("dns-tcp".to_string(), "TCP".to_string(), 53)
        ]
    );
    let no_sel = svc("manual", json!({"ports": [{"port": 80}]}));
    let mut rng = fastrand::Rng::with_seed(3);
    let plan = endpoints::reconcile_slices(
        &[no_sel],
        &[],
        &[],
        &mut workload::TakenNames::default(),
        &mut rng,
    );
    assert!(plan.create.is_empty());
}

#[test]
fn all_seed_manifests_reconcile_without_panics() {
    let mut sim = Sim::new(nodes3());
    for entry in std::fs::read_dir(SEEDS).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        for o in seed(&file) {
            if let Some(d) = o.downcast_ref::<Deployment>() {
                let d = sim.add(d.clone());
                if !sim.snap.deployments.iter().any(|x| x.key() == d.key()) {
                    sim.snap.deployments.push(d);
                }
            } else if let Some(d) = o.downcast_ref::<DaemonSet>() {
                let d = sim.add(d.clone());
                if !sim.snap.daemonsets.iter().any(|x| x.key() == d.key()) {
                    sim.snap.daemonsets.push(d);
                }
            } else if let Some(s) = o.downcast_ref::<Service>() {
                let s = sim.add(s.clone());
                if !sim.snap.services.iter().any(|x| x.key() == s.key()) {
                    sim.snap.services.push(s);
                }
            } else if let Some(p) = o.downcast_ref::<Pod>() {
                let p = sim.add(p.clone());
                if !sim.snap.pods.iter().any(|x| x.key() == p.key()) {
                    sim.snap.pods.push(p);
                }
            }
        }
    }
    for _ in 0..4 {
        sim.step();
        sim.kubelet(true);
    }
    let plan = sim.step();
    assert!(
        plan.writes
            .iter()
            .all(|w| !matches!(w, Write::Create(Object::Pod(_)))),
        "not converged: {plan:?}"
    );
    assert!(sim.snap.pods.iter().all(|p| pod_node(p).is_some()));
    assert!(sim
        .snap
        .services
        .iter()
        .all(|s| s.spec.as_ref().unwrap().cluster_ip.is_some()));
}

#[test]
fn replicas_spread_one_per_node_before_load() {
    // k8s-ctr is the least loaded node but already runs a webpod: the second
    // replica goes to a worker even though workers run more pods.
    let nodes = nodes3();
    let pod = |name: &str, node: Option<&str>, owner: Option<&str>| -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": []}
        }))
        .unwrap();
        if let Some(o) = owner {
            p.metadata.owner_references = Some(vec![serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "name": o, "uid": "u"
            }))
            .unwrap()]);
        }
        p
    };
    let existing = vec![
        pod("web-1", Some("k8s-ctr"), Some("web")),
        pod("a", Some("k8s-w1"), None),
        pod("b", Some("k8s-w1"), None),
        pod("c", Some("k8s-w2"), None),
    ];
    let mut s = Scheduler::new(&nodes, &existing);
    assert_eq!(
        s.place(&pod("web-2", None, Some("web"))),
        Decision::Bind("k8s-w2".into())
    );
    assert_eq!(
        s.place(&pod("web-3", None, Some("web"))),
        Decision::Bind("k8s-w1".into())
    );
    // Unowned pods: plain load.
    assert_eq!(
        s.place(&pod("x", None, None)),
        Decision::Bind("k8s-ctr".into())
    );
}

#[test]
fn seed_4w_webpod_three_replicas_one_per_node() {
    let mut sim = Sim::new(vec![
        node("k8s-ctr", true, &[]),
        node("k8s-w0", true, &[]),
        node("k8s-w1", true, &[]),
    ]);
    for p in seed_of::<Pod>("000-webpod-service-curl-pod.yaml") {
        let p = sim.add(p);
        sim.snap.pods.push(p);
    }
    let mut d = seed_of::<Deployment>("000-webpod-service-curl-pod.yaml").remove(0);
    d.spec.replicas = Some(3);
    let d = sim.add(d);
    sim.snap.deployments.push(d);
    sim.step();
    let mut on: Vec<_> = sim
        .active_pods("webpod-")
        .iter()
        .map(|p| pod_node(p).unwrap())
        .collect();
    on.sort();
    assert_eq!(on, ["k8s-ctr", "k8s-w0", "k8s-w1"]);
}

#[test]
fn recreate_strategy_deletes_old_pods_first_and_conditions_follow() {
    let mut sim = Sim::new(nodes3());
    let mut d = anti_affinity_deploy(2);
    d.spec.strategy = Some(serde_json::from_value(json!({"type": "Recreate"})).unwrap());
    let d = sim.add(d);
    sim.snap.deployments.push(d);
    sim.step();
    let cond = |sim: &Sim, t: &str| {
        sim.snap.deployments[0]
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_.as_deref() == Some(t))
            .cloned()
            .unwrap()
    };
    assert_eq!(cond(&sim, "Available").status.as_deref(), Some("False"));
    sim.kubelet(true);
    sim.step();
    assert_eq!(
        cond(&sim, "Available").reason.as_deref(),
        Some("MinimumReplicasAvailable")
    );
    assert_eq!(
        cond(&sim, "Progressing").reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    assert!(
        sim.step().writes.is_empty(),
        "converged deployment rewritten"
    );
    sim.snap.deployments[0]
        .spec
        .template
        .metadata
        .as_mut()
        .unwrap()
        .annotations = Some(
        [(
            "kubectl.kubernetes.io/restartedAt".to_string(),
            "now".to_string(),
        )]
        .into(),
    );
    let plan = sim.step();
    // Both old pods are deleted, nothing is created while they terminate.
    assert_eq!(plan.writes.iter().filter(|w| matches!(w, Write::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some())).count(), 2);
    assert!(!plan
        .writes
        .iter()
        .any(|w| matches!(w, Write::Create(Object::Pod(_)))));
    assert!(!sim
        .step()
        .writes
        .iter()
        .any(|w| matches!(w, Write::Create(Object::Pod(_)))));
    sim.kubelet(true);
    sim.step();
    assert_eq!(sim.active_pods("spread-").len(), 2);
    assert_eq!(
        cond(&sim, "Progressing").reason.as_deref(),
        Some("ReplicaSetUpdated")
    );
    assert_ne!(cond(&sim, "Available").status.as_deref(), Some("True"));
}

#[test]
fn events_decode_as_core_v1_events() {
    let mut sim = Sim::new(vec![node("a", true, &[])]);
    let d = sim.add(anti_affinity_deploy(2));
    sim.snap.deployments.push(d);
    let plan = sim.step();
    let events: Vec<_> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Create(Object::Event(key, v)) => Some((key.clone(), v.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 2);
    for (key, v) in events {
        let ev: k8s_openapi::api::core::v1::Event = serde_json::from_value(v).unwrap();
        assert_eq!(key.kind, "Event");
        assert_eq!(key.namespace.as_deref(), Some("default"));
        assert_eq!(ev.involved_object.kind.as_deref(), Some("Pod"));
        assert!(ev.metadata.name.unwrap().starts_with("spread-"));
        match ev.reason.as_deref() {
            Some("Scheduled") => assert!(ev
                .message
                .unwrap()
                .starts_with("Successfully assigned default/spread-")),
            Some("FailedScheduling") => assert_eq!(ev.type_.as_deref(), Some("Warning")),
            r => panic!("{r:?}"),
        }
    }
}

#[test]
fn cluster_ip_outside_the_cidr_is_kept_and_lb_without_node_ports() {
    let moved = svc(
        "old",
        json!({"type": "NodePort", "clusterIP": "10.50.0.7", "ports": [{"port": 80}]}),
    );
    let p = allocate_services(&[moved], &ServiceRanges::default());
    assert_eq!(p.updates.len(), 1);
    let s = &p.updates[0];
    assert_eq!(
        s.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("10.50.0.7")
    );
    assert_eq!(
        s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
        Some(30000)
    );
    assert!(p.warnings[0].contains("default/old") && p.warnings[0].contains("kept as is"));

    let ranges = ServiceRanges {
        lb_pool: vec!["192.168.10.208/29".parse().unwrap()],
        ..Default::default()
    };
    let lb = svc(
        "lb",
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}),
    );
    let p = allocate_services(&[lb], &ranges);
    let s = &p.updates[0];
    assert_eq!(
        s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
        None
    );
    assert_eq!(
        s.status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("192.168.10.209")
    );
}

#[test]
fn node_affinity_and_other_schedulers() {
    let nodes = vec![
        node("a", true, &[("zone", "z1"), ("gen", "3")]),
        node("b", true, &[("zone", "z2"), ("gen", "5")]),
    ];
    let pod = |affinity: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": affinity}}}}
        }))
        .unwrap()
    };
    let place = |p: &Pod| Scheduler::new(&nodes, &[]).place(p);
    assert_eq!(
        place(&pod(
            json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}])
        )),
        Decision::Bind("b".into())
    );
    assert_eq!(
        place(&pod(
            json!([{"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["4"]}]}])
        )),
        Decision::Bind("a".into())
    );
    // Terms are ORed; matchFields on metadata.name.
    assert_eq!(
        place(&pod(json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["nowhere"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]))),
        Decision::Bind("b".into())
    );
    assert_eq!(
        place(&pod(
            json!([{"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}])
        )),
        Decision::Unschedulable(
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.".into()
        )
    );
    // A pod for another scheduler is not bound.
    let mut sim = Sim::new(nodes.clone());
    let mut other: Pod = serde_json::from_value(json!({
        "metadata": {"name": "o", "namespace": "default"},
        "spec": {"schedulerName": "my-scheduler", "containers": []}
    }))
    .unwrap();
    other = sim.add(other);
    sim.snap.pods.push(other);
    sim.step();
    assert!(pod_node(&sim.snap.pods[0]).is_none());
}
