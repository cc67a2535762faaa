//! The cluster state the `kubernetes` plugin answers from: the [`ClusterView`]
//! trait, [`ClusterIndex`] (a plain in-memory index, also what tests feed),
//! [`SharedIndex`] (an index behind a lock, swapped on updates) and
//! [`StoreClusterView`], which fills a [`SharedIndex`] from a
//! `fibril_store::SharedStore` by list+watch of Service, EndpointSlice and Pod
//! and keeps following changes (relisting when the watch ends).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fibril_api::{EndpointSlice, Pod, Resource, Service};
use fibril_store::{SharedStore, WatchEvent};
use futures::StreamExt;
use serde_json::Value;

/// A service port (name may be empty for single-port services).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRecord {
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    /// `spec.externalName`, answered as a CNAME.
    ExternalName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    /// ClusterIPs; empty for headless services (`clusterIP: None`).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortRecord>,
}

impl ServiceRecord {
    pub fn headless(&self) -> bool {
        self.cluster_ips.is_empty() && !matches!(self.kind, ServiceKind::ExternalName(_))
    }
}

/// One endpoint of a service (from an EndpointSlice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    pub ready: bool,
    pub ports: Vec<PortRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// Read access to services, endpoints and pods. Implementations must be
/// cheap to call per query (in-memory lookups).
pub trait ClusterView: Send + Sync {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord>;
    /// Every endpoint of the service (ready or not), over all its slices.
    fn endpoints(&self, namespace: &str, service: &str) -> Vec<EndpointRecord>;
    /// Services whose ClusterIPs include `ip`.
    fn services_by_ip(&self, ip: IpAddr) -> Vec<ServiceRecord>;
    /// (namespace, service, endpoint) for endpoints with address `ip`.
    fn endpoints_by_ip(&self, ip: IpAddr) -> Vec<(String, String, EndpointRecord)>;
    fn pods_by_ip(&self, ip: IpAddr) -> Vec<PodRecord>;
    /// Whether any service exists in the namespace (a known namespace).
    fn namespace_known(&self, namespace: &str) -> bool;
    /// True once the initial state has been loaded (readiness).
    fn synced(&self) -> bool {
        true
    }
    /// Changes on every update; the SOA serial. Defaults to the process
    /// start time in Unix seconds (CoreDNS uses a Unix time too).
    fn serial(&self) -> u32 {
        start_serial()
    }
}

fn start_serial() -> u32 {
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1)
    })
}

/// An in-memory index. Build it directly in tests or let [`StoreClusterView`]
/// maintain one.
#[derive(Debug, Clone, Default)]
pub struct ClusterIndex {
    services: BTreeMap<(String, String), ServiceRecord>,
    /// (namespace, service) -> slice name -> endpoints.
    slices: HashMap<(String, String), BTreeMap<String, Vec<EndpointRecord>>>,
    /// slice (namespace, name) -> service name, so a slice relabel moves it.
    slice_owner: HashMap<(String, String), String>,
    pods: BTreeMap<(String, String), PodRecord>,
}

impl ClusterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn upsert_service(&mut self, s: ServiceRecord) {
        self.services
            .insert((s.namespace.clone(), s.name.clone()), s);
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        self.services
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Sets the endpoints of one slice of `service`.
    pub fn upsert_slice(
        &mut self,
        namespace: &str,
        slice: &str,
        service: &str,
        endpoints: Vec<EndpointRecord>,
    ) {
        self.remove_slice(namespace, slice);
        self.slice_owner.insert(
            (namespace.to_string(), slice.to_string()),
            service.to_string(),
        );
        self.slices
            .entry((namespace.to_string(), service.to_string()))
            .or_default()
            .insert(slice.to_string(), endpoints);
    }

    pub fn remove_slice(&mut self, namespace: &str, slice: &str) {
        if let Some(svc) = self
            .slice_owner
            .remove(&(namespace.to_string(), slice.to_string()))
        {
            let k = (namespace.to_string(), svc);
            if let Some(m) = self.slices.get_mut(&k) {
                m.remove(slice);
                if m.is_empty() {
                    self.slices.remove(&k);
                }
            }
        }
    }

    pub fn upsert_pod(&mut self, p: PodRecord) {
        self.pods.insert((p.namespace.clone(), p.name.clone()), p);
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.pods.remove(&(namespace.to_string(), name.to_string()));
    }
}

impl ClusterView for ClusterIndex {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
    fn endpoints(&self, namespace: &str, service: &str) -> Vec<EndpointRecord> {
        self.slices
            .get(&(namespace.to_string(), service.to_string()))
            .map(|m| m.values().flatten().cloned().collect())
            .unwrap_or_default()
    }
    fn services_by_ip(&self, ip: IpAddr) -> Vec<ServiceRecord> {
        self.services
            .values()
            .filter(|s| s.cluster_ips.contains(&ip))
            .cloned()
            .collect()
    }
    fn endpoints_by_ip(&self, ip: IpAddr) -> Vec<(String, String, EndpointRecord)> {
        let mut out = Vec::new();
        for ((ns, svc), m) in &self.slices {
            for e in m.values().flatten() {
                if e.addresses.contains(&ip) {
                    out.push((ns.clone(), svc.clone(), e.clone()));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
    fn pods_by_ip(&self, ip: IpAddr) -> Vec<PodRecord> {
        self.pods
            .values()
            .filter(|p| p.ips.contains(&ip))
            .cloned()
            .collect()
    }
    fn namespace_known(&self, namespace: &str) -> bool {
        self.services.keys().any(|(ns, _)| ns == namespace)
            || self.pods.keys().any(|(ns, _)| ns == namespace)
    }
}

/// A [`ClusterIndex`] behind a lock, updated in place; readers see each
/// update atomically.
#[derive(Debug, Default)]
pub struct SharedIndex {
    index: RwLock<ClusterIndex>,
    synced: AtomicBool,
    serial: AtomicU32,
}

impl SharedIndex {
    pub fn new(index: ClusterIndex) -> Self {
        let serial = start_serial();
        Self {
            index: RwLock::new(index),
            synced: AtomicBool::new(true),
            serial: AtomicU32::new(serial),
        }
    }

    /// Applies `f` to the index and bumps the serial.
    pub fn update<R>(&self, f: impl FnOnce(&mut ClusterIndex) -> R) -> R {
        let r = {
            let mut g = self.index.write().unwrap_or_else(|e| e.into_inner());
            f(&mut g)
        };
        self.serial.fetch_add(1, Ordering::Relaxed);
        r
    }

    pub fn set_synced(&self, v: bool) {
        self.synced.store(v, Ordering::Relaxed);
    }

    fn read<R>(&self, f: impl FnOnce(&ClusterIndex) -> R) -> R {
        let g = self.index.read().unwrap_or_else(|e| e.into_inner());
        f(&g)
    }
}

impl ClusterView for SharedIndex {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        self.read(|i| i.service(namespace, name))
    }
    fn endpoints(&self, namespace: &str, service: &str) -> Vec<EndpointRecord> {
        self.read(|i| i.endpoints(namespace, service))
    }
    fn services_by_ip(&self, ip: IpAddr) -> Vec<ServiceRecord> {
        self.read(|i| i.services_by_ip(ip))
    }
    fn endpoints_by_ip(&self, ip: IpAddr) -> Vec<(String, String, EndpointRecord)> {
        self.read(|i| i.endpoints_by_ip(ip))
    }
    fn pods_by_ip(&self, ip: IpAddr) -> Vec<PodRecord> {
        self.read(|i| i.pods_by_ip(ip))
    }
    fn namespace_known(&self, namespace: &str) -> bool {
        self.read(|i| i.namespace_known(namespace))
    }
    fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
    fn serial(&self) -> u32 {
        self.serial.load(Ordering::Relaxed)
    }
}

// ------------------------------------------------------------ conversions

fn ns_of(meta: &fibril_api::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn ips(list: impl IntoIterator<Item = String>) -> Vec<IpAddr> {
    list.into_iter()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .collect()
}

/// A Service object as the DNS sees it.
pub fn service_record(s: &Service) -> Option<ServiceRecord> {
    let name = s.metadata.name.clone()?;
    let namespace = ns_of(&s.metadata);
    let spec = s.spec.clone().unwrap_or_default();
    let kind = match spec.type_.as_deref() {
        Some("ExternalName") => ServiceKind::ExternalName(spec.external_name.clone()?),
        Some("NodePort") => ServiceKind::NodePort,
        Some("LoadBalancer") => ServiceKind::LoadBalancer,
        _ => ServiceKind::ClusterIp,
    };
    let mut cluster_ips = ips(spec.cluster_ips.clone().unwrap_or_default());
    if cluster_ips.is_empty() {
        cluster_ips = ips(spec.cluster_ip.clone());
    }
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(PortRecord {
                name: p.name.unwrap_or_default(),
                protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    Some(ServiceRecord {
        namespace,
        name,
        kind,
        cluster_ips,
        ports,
    })
}

/// (namespace, slice name, service name, endpoints) of an EndpointSlice.
pub fn slice_records(s: &EndpointSlice) -> Option<(String, String, String, Vec<EndpointRecord>)> {
    let name = s.metadata.name.clone()?;
    let namespace = ns_of(&s.metadata);
    let service = s
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?
        .clone();
    let ports: Vec<PortRecord> = s
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(PortRecord {
                name: p.name.unwrap_or_default(),
                protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let eps = s
        .endpoints
        .iter()
        .flatten()
        .map(|e| EndpointRecord {
            addresses: ips(e.addresses.clone()),
            hostname: e.hostname.clone(),
            // Kubernetes: nil `ready` means ready.
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            ports: ports.clone(),
        })
        .collect();
    Some((namespace, name, service, eps))
}

pub fn pod_record(p: &Pod) -> Option<PodRecord> {
    let name = p.metadata.name.clone()?;
    let namespace = ns_of(&p.metadata);
    let status = p.status.clone().unwrap_or_default();
    let mut list = ips(status.pod_ips.unwrap_or_default().into_iter().map(|i| i.ip));
    if list.is_empty() {
        list = ips(status.pod_ip);
    }
    Some(PodRecord {
        namespace,
        name,
        ips: list,
    })
}

// ------------------------------------------------------------ store watch

/// A [`ClusterView`] fed from the cluster store. Dropping it stops the
/// watch tasks.
pub struct StoreClusterView {
    index: Arc<SharedIndex>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StoreClusterView {
    /// Starts list+watch of Service, EndpointSlice and Pod in the current
    /// tokio runtime. `synced()` turns true once all three were listed.
    pub fn start(store: SharedStore) -> Self {
        let index = Arc::new(SharedIndex::new(ClusterIndex::new()));
        index.set_synced(false);
        let pending = Arc::new(AtomicU32::new(3));
        let tasks = [Service::KIND, EndpointSlice::KIND, Pod::KIND]
            .into_iter()
            .map(|kind| {
                let store = store.clone();
                let index = index.clone();
                let pending = pending.clone();
                tokio::spawn(async move { follow(store, kind, index, pending).await })
            })
            .collect();
        Self { index, tasks }
    }

    /// The index the watchers maintain (a [`ClusterView`] itself).
    pub fn index(&self) -> Arc<SharedIndex> {
        self.index.clone()
    }
}

impl Drop for StoreClusterView {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ClusterView for StoreClusterView {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        self.index.service(namespace, name)
    }
    fn endpoints(&self, namespace: &str, service: &str) -> Vec<EndpointRecord> {
        self.index.endpoints(namespace, service)
    }
    fn services_by_ip(&self, ip: IpAddr) -> Vec<ServiceRecord> {
        self.index.services_by_ip(ip)
    }
    fn endpoints_by_ip(&self, ip: IpAddr) -> Vec<(String, String, EndpointRecord)> {
        self.index.endpoints_by_ip(ip)
    }
    fn pods_by_ip(&self, ip: IpAddr) -> Vec<PodRecord> {
        self.index.pods_by_ip(ip)
    }
    fn namespace_known(&self, namespace: &str) -> bool {
        self.index.namespace_known(namespace)
    }
    fn synced(&self) -> bool {
        self.index.synced()
    }
    fn serial(&self) -> u32 {
        self.index.serial()
    }
}

fn upsert(kind: &str, idx: &mut ClusterIndex, ns: &str, name: &str, value: Value) {
    match kind {
        "Service" => match serde_json::from_value::<Service>(value)
            .ok()
            .as_ref()
            .and_then(service_record)
        {
            Some(r) => idx.upsert_service(r),
            None => {
                tracing::warn!(namespace = ns, name, "dns: ignoring undecodable Service");
                idx.remove_service(ns, name);
            }
        },
        "EndpointSlice" => match serde_json::from_value::<EndpointSlice>(value)
            .ok()
            .as_ref()
            .and_then(slice_records)
        {
            Some((ns, slice, svc, eps)) => idx.upsert_slice(&ns, &slice, &svc, eps),
            None => idx.remove_slice(ns, name),
        },
        _ => match serde_json::from_value::<Pod>(value)
            .ok()
            .as_ref()
            .and_then(pod_record)
        {
            Some(r) => idx.upsert_pod(r),
            None => idx.remove_pod(ns, name),
        },
    }
}

fn remove(kind: &str, idx: &mut ClusterIndex, ns: &str, name: &str) {
    match kind {
        "Service" => idx.remove_service(ns, name),
        "EndpointSlice" => idx.remove_slice(ns, name),
        _ => idx.remove_pod(ns, name),
    }
}

async fn follow(
    store: SharedStore,
    kind: &'static str,
    index: Arc<SharedIndex>,
    pending: Arc<AtomicU32>,
) {
    let mut first = true;
    loop {
        let list = match store.list(kind, None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(kind, error = %e, "dns: list failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        index.update(|idx| {
            // Replace this kind's state wholesale: a relist after a compacted
            // watch must also forget objects deleted meanwhile.
            match kind {
                "Service" => idx.services.clear(),
                "EndpointSlice" => {
                    idx.slices.clear();
                    idx.slice_owner.clear();
                }
                _ => idx.pods.clear(),
            }
            for o in list.items {
                let ns = o.key.namespace.clone().unwrap_or_default();
                upsert(kind, idx, &ns, &o.key.name, o.value);
            }
        });
        if first {
            first = false;
            if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                index.set_synced(true);
            }
        }
        let mut stream = match store.watch(kind, None, list.revision).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(kind, error = %e, "dns: watch failed; relisting");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                    let ns = o.key.namespace.clone().unwrap_or_default();
                    index.update(|idx| upsert(kind, idx, &ns, &o.key.name, o.value));
                }
                Ok(WatchEvent::Deleted { key, .. }) => {
                    let ns = key.namespace.clone().unwrap_or_default();
                    index.update(|idx| remove(kind, idx, &ns, &key.name));
                }
                Err(e) => {
                    tracing::info!(kind, error = %e, "dns: watch ended; relisting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
