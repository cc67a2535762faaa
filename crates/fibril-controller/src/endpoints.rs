//! EndpointSlices (discovery.k8s.io/v1) for Services with a selector (the
//! lab's endpointslice controller).
//!
//! One slice per Service, named `<svc>-<5 chars>` once and kept (renaming
//! would churn every watcher), labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by: fibril-controller`, owned by the
//! Service. Endpoints are the selected pods of the Service's namespace that
//! have a podIP and have not finished, sorted by pod name, with conditions
//! `ready` (pod Ready and not terminating), `serving` (pod Ready) and
//! `terminating` (deletionTimestamp set); with `publishNotReadyAddresses`
//! every endpoint is ready. Ports come from each Service
//! port's `targetPort`: a number, or a named container port looked up in the
//! pods (pods lacking the name are left out); unset means `port`. Slices are
//! written only when they change; slices of deleted or selector-less
//! Services are deleted.

use std::collections::BTreeMap;

use fibril_api::{EndpointSlice, ObjectMeta, Pod, Service};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::naming::suffixed_name;
use crate::select::{
    map_matches, namespace_of, pod_finished, pod_node, pod_ready, pod_terminating,
};
use crate::workload::TakenNames;

/// Label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming a slice's controller.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "fibril-controller";

/// Slice writes of one pass.
#[derive(Debug, Default, Clone)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    /// At the revision read.
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
}

/// The port a Service port's `targetPort` means on `pod`, or `None` when
/// it names a port the pod does not have.
pub fn resolve_target_port(
    port: &k8s_openapi::api::core::v1::ServicePort,
    pod: Option<&Pod>,
) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => {
            if let Ok(n) = s.parse::<i32>() {
                return Some(n);
            }
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            pod?.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| {
                    cp.name.as_deref() == Some(s.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|cp| cp.container_port)
        }
    }
}

fn slice_ports(svc: &Service, resolved: &[Option<i32>]) -> Vec<EndpointPort> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .zip(resolved)
        .filter_map(|(p, r)| {
            r.map(|port| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                port: Some(port),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoints and ports of `svc` from `pods` (all namespaces; filtered
/// here).
pub fn build_endpoints(svc: &Service, pods: &[Pod]) -> (Vec<Endpoint>, Vec<EndpointPort>) {
    let ns = namespace_of(&svc.metadata);
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return (Vec::new(), Vec::new());
    };
    let svc_ports: Vec<_> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .collect();
    let mut selected: Vec<&Pod> = pods
        .iter()
        .filter(|p| namespace_of(&p.metadata) == ns)
        .filter(|p| map_matches(selector, p.metadata.labels.as_ref()))
        .filter(|p| !pod_finished(p))
        .filter(|p| pod_ip(p).is_some())
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let resolve = |pod: Option<&Pod>| -> Vec<Option<i32>> {
        svc_ports
            .iter()
            .map(|p| resolve_target_port(p, pod))
            .collect()
    };
    // The first pod that resolves every port fixes the slice's ports; pods
    // that resolve them differently are left out (Kubernetes would make a
    // second slice).
    let reference = selected
        .iter()
        .map(|p| resolve(Some(p)))
        .find(|r| r.iter().all(Option::is_some));
    let Some(reference) = reference else {
        return (Vec::new(), slice_ports(svc, &resolve(None)));
    };
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let endpoints = selected
        .iter()
        .filter(|p| resolve(Some(p)) == reference)
        .map(|p| {
            let terminating = pod_terminating(p);
            // As Kubernetes: publishNotReadyAddresses makes every endpoint ready.
            let ready = pod_ready(p);
            Endpoint {
                addresses: vec![pod_ip(p).unwrap_or_default().to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(publish_not_ready || (ready && !terminating)),
                    serving: Some(ready),
                    terminating: Some(terminating),
                }),
                node_name: pod_node(p).map(str::to_string),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".to_string()),
                    name: p.metadata.name.clone(),
                    namespace: Some(ns.to_string()),
                    uid: p.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    (endpoints, slice_ports(svc, &reference))
}

fn pod_ip(p: &Pod) -> Option<&str> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

fn has_selector(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

fn managed_by_us(slice: &EndpointSlice) -> Option<&str> {
    let labels = slice.metadata.labels.as_ref()?;
    (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .then(|| labels.get(SERVICE_NAME_LABEL).map(String::as_str))
        .flatten()
}

/// Plans slice creates, updates and deletes for all Services.
pub fn reconcile_slices(
    services: &[Service],
    pods: &[Pod],
    slices: &[EndpointSlice],
    taken: &mut TakenNames,
    rng: &mut fastrand::Rng,
) -> SlicePlan {
    let mut plan = SlicePlan::default();
    // Our slices by (namespace, service), sorted by name: the first is kept.
    let mut ours: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for sl in slices {
        if let Some(svc) = managed_by_us(sl) {
            ours.entry((namespace_of(&sl.metadata).to_string(), svc.to_string()))
                .or_default()
                .push(sl);
        }
    }
    for v in ours.values_mut() {
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    for svc in services.iter().filter(|s| has_selector(s)) {
        let ns = namespace_of(&svc.metadata).to_string();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let existing = ours.remove(&(ns.clone(), name.clone())).unwrap_or_default();
        let (endpoints, ports) = build_endpoints(svc, pods);
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        labels.insert(SERVICE_NAME_LABEL.to_string(), name.clone());
        labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
        let owner = OwnerReference {
            api_version: "v1".to_string(),
            kind: "Service".to_string(),
            name: name.clone(),
            uid: svc.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let mut iter = existing.into_iter();
        match iter.next() {
            Some(current) => {
                let mut want = current.clone();
                want.address_type = "IPv4".to_string();
                want.endpoints = Some(endpoints);
                want.ports = Some(ports);
                want.metadata.labels = Some(labels);
                if want.metadata.owner_references.is_none() && !owner.uid.is_empty() {
                    want.metadata.owner_references = Some(vec![owner]);
                }
                if &want != current {
                    plan.update.push(want);
                }
            }
            None => {
                let slice_name = taken.fresh(&ns, rng, |s| suffixed_name(&name, s));
                plan.create.push(EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(slice_name),
                        generate_name: Some(format!("{name}-")),
                        namespace: Some(ns.clone()),
                        labels: Some(labels),
                        owner_references: Some(vec![owner]),
                        ..Default::default()
                    },
                    address_type: "IPv4".to_string(),
                    endpoints: Some(endpoints),
                    ports: Some(ports),
                });
            }
        }
        plan.delete.extend(iter.cloned());
    }
    // Whatever is left belongs to Services that are gone or lost their selector.
    plan.delete.extend(ours.into_values().flatten().cloned());
    plan
}
