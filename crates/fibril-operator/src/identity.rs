//! Security identities: the label set that stands for a pod (Cilium's
//! `k8s:`-prefixed identity labels), a stable numeric id per distinct set stored as a
//! FibrilIdentity named after the id, and the garbage collection of identities no pod
//! uses any more.
//!
//! Numbering: the first candidate id is a hash of the label set mapped into
//! [`IDENTITY_MIN`]..=[`IDENTITY_MAX`] (Cilium's cluster-local range, ids such as 12091),
//! probing upwards on collision. The same labels therefore get the same id across
//! operator restarts (ids are read back from the store), and usually even after their
//! identity was garbage-collected and is created again. Creation uses the store's
//! create-if-absent, so the operator and agents may allocate concurrently: the loser of
//! a race reads the winner's object and uses it when the labels match.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use fibril_api::{FibrilIdentity, Namespace, Pod, Resource};
use fibril_store::{Store, StoreError, StoreExt};

/// Lowest id handed out (ids below are Cilium's reserved identities: host 1, world 2,
/// health 4, init 5, remote-node 6, ...).
pub const IDENTITY_MIN: u32 = 1000;
/// Highest id handed out (Cilium's cluster-local identities end at 65535).
pub const IDENTITY_MAX: u32 = 65535;

/// Cilium's reserved identities (numbers as in Cilium, so flows and `identity list`
/// read the same).
pub mod reserved {
    /// The local host.
    pub const HOST: u32 = 1;
    /// Anything outside the cluster.
    pub const WORLD: u32 = 2;
    /// Endpoints not managed by Fibril.
    pub const UNMANAGED: u32 = 3;
    /// The health endpoints.
    pub const HEALTH: u32 = 4;
    /// Endpoints whose identity is not resolved yet.
    pub const INIT: u32 = 5;
    /// Other nodes of the cluster.
    pub const REMOTE_NODE: u32 = 6;
    /// The Kubernetes API server.
    pub const KUBE_APISERVER: u32 = 7;
    /// Ingress proxy.
    pub const INGRESS: u32 = 8;

    /// The reserved identity's label (`reserved:host`, ...), for `identity list`.
    pub fn label(id: u32) -> Option<&'static str> {
        Some(match id {
            HOST => "reserved:host",
            WORLD => "reserved:world",
            UNMANAGED => "reserved:unmanaged",
            HEALTH => "reserved:health",
            INIT => "reserved:init",
            REMOTE_NODE => "reserved:remote-node",
            KUBE_APISERVER => "reserved:kube-apiserver",
            INGRESS => "reserved:ingress",
            _ => return None,
        })
    }
}

/// Label prefix of Kubernetes-sourced identity labels.
pub const K8S_PREFIX: &str = "k8s:";
/// Namespace label key.
pub const LABEL_NAMESPACE: &str = "k8s:io.kubernetes.pod.namespace";
/// Service account label key.
pub const LABEL_SERVICE_ACCOUNT: &str = "k8s:io.cilium.k8s.policy.serviceaccount";
/// Cluster name label key.
pub const LABEL_CLUSTER: &str = "k8s:io.cilium.k8s.policy.cluster";
/// Prefix of namespace labels copied into the identity.
pub const LABEL_NAMESPACE_LABELS: &str = "k8s:io.cilium.k8s.namespace.labels.";
/// The cluster name Fibril reports (Cilium's default).
pub const CLUSTER_NAME: &str = "default";

/// Pod labels that say nothing about security and change on every rollout.
pub const IGNORED_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
];

/// The identity labels of a pod: its labels (minus [`IGNORED_POD_LABELS`]), namespace,
/// service account, cluster, and the namespace's labels (always including
/// `kubernetes.io/metadata.name`), each prefixed `k8s:` as Cilium prints them.
/// `None` for host-network pods (they have the host's identity).
pub fn security_labels(
    pod: &Pod,
    namespace: Option<&Namespace>,
) -> Option<BTreeMap<String, String>> {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeMap::new();
    for (k, v) in pod.metadata.labels.iter().flatten() {
        if !IGNORED_POD_LABELS.contains(&k.as_str()) {
            out.insert(format!("{K8S_PREFIX}{k}"), v.clone());
        }
    }
    out.insert(LABEL_NAMESPACE.into(), ns.to_owned());
    let sa = spec
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    out.insert(LABEL_SERVICE_ACCOUNT.into(), sa.to_owned());
    out.insert(LABEL_CLUSTER.into(), CLUSTER_NAME.into());
    out.insert(
        format!("{LABEL_NAMESPACE_LABELS}kubernetes.io/metadata.name"),
        ns.to_owned(),
    );
    if let Some(n) = namespace {
        for (k, v) in n.metadata.labels.iter().flatten() {
            out.insert(format!("{LABEL_NAMESPACE_LABELS}{k}"), v.clone());
        }
    }
    Some(out)
}

/// The first id tried for a label set (FNV-1a over `k=v;` pairs, in key order).
pub fn candidate_id(labels: &BTreeMap<String, String>) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([b'=']).chain(v.bytes()).chain([b';']) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let span = u64::from(IDENTITY_MAX - IDENTITY_MIN + 1);
    IDENTITY_MIN + (h % span) as u32
}

fn next_id(id: u32) -> u32 {
    if id >= IDENTITY_MAX {
        IDENTITY_MIN
    } else {
        id + 1
    }
}

/// Identity allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The store failed.
    #[error("identity allocation: {0}")]
    Store(#[from] StoreError),
    /// Every id in the range is taken.
    #[error("no free identity in {IDENTITY_MIN}..={IDENTITY_MAX} for labels {labels}")]
    Exhausted {
        /// The label set, `k=v` joined by commas.
        labels: String,
    },
}

/// The id of `labels` among `existing` identities.
pub fn find_identity<'a>(
    existing: impl IntoIterator<Item = &'a FibrilIdentity>,
    labels: &BTreeMap<String, String>,
) -> Option<u32> {
    existing
        .into_iter()
        .find(|i| &i.security_labels == labels)
        .and_then(FibrilIdentity::id)
}

/// The id of `labels`: the existing FibrilIdentity with exactly these labels, else a new
/// one. Safe to call concurrently from several processes (see the module docs).
/// `cache` holds identities known to the caller (id -> labels); it is consulted first
/// and updated.
pub async fn allocate_identity(
    store: &dyn Store,
    labels: &BTreeMap<String, String>,
    cache: &mut BTreeMap<u32, BTreeMap<String, String>>,
) -> Result<u32, IdentityError> {
    if let Some((id, _)) = cache.iter().find(|(_, l)| *l == labels) {
        return Ok(*id);
    }
    let mut id = candidate_id(labels);
    for _ in 0..=(IDENTITY_MAX - IDENTITY_MIN) {
        let known = match cache.get(&id) {
            Some(l) => Some(l.clone()),
            None => store
                .get_as::<FibrilIdentity>(None, &id.to_string())
                .await?
                .map(|i| i.security_labels),
        };
        match known {
            Some(l) if &l == labels => {
                cache.insert(id, l);
                return Ok(id);
            }
            Some(l) => {
                cache.insert(id, l);
                id = next_id(id);
                continue;
            }
            None => {}
        }
        match store
            .create_as(&FibrilIdentity::new(id, labels.clone()))
            .await
        {
            Ok(_) => {
                cache.insert(id, labels.clone());
                return Ok(id);
            }
            // Lost a race for this id: look again at what is there now.
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(IdentityError::Exhausted {
        labels: labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    })
}

/// Operator-side identity state: known identities and when each became unused.
#[derive(Debug, Default)]
pub(crate) struct IdentityState {
    pub known: BTreeMap<u32, BTreeMap<String, String>>,
    unused_since: HashMap<u32, Instant>,
}

/// What one identity pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct IdentityPass {
    pub created: Vec<u32>,
    pub deleted: Vec<u32>,
    /// When the next identity becomes eligible for GC.
    pub next_gc: Option<Instant>,
}

impl IdentityState {
    /// One level-triggered pass: every pod's label set has an identity; identities no
    /// pod uses for `grace` are deleted (only if unchanged since read).
    pub async fn sync(
        &mut self,
        store: &dyn Store,
        grace: Duration,
        now: Instant,
    ) -> Result<IdentityPass, IdentityError> {
        let mut pass = IdentityPass::default();
        let idents = store.list_as::<FibrilIdentity>(None).await?;
        let mut revisions = BTreeMap::new();
        self.known.clear();
        for i in &idents.items {
            if let Some(id) = i.id() {
                self.known.insert(id, i.security_labels.clone());
                revisions.insert(id, i.metadata().resource_version.clone());
            }
        }
        let namespaces: BTreeMap<String, Namespace> = store
            .list_as::<Namespace>(None)
            .await?
            .items
            .into_iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, n)))
            .collect();
        let pods = store.list_as::<Pod>(None).await?;
        let mut used = std::collections::BTreeSet::new();
        for pod in &pods.items {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let Some(labels) = security_labels(pod, namespaces.get(ns)) else {
                continue;
            };
            let before = self.known.len();
            let id = allocate_identity(store, &labels, &mut self.known).await?;
            if self.known.len() > before && !revisions.contains_key(&id) {
                pass.created.push(id);
            }
            used.insert(id);
        }
        self.unused_since.retain(|id, _| !used.contains(id));
        for id in self.known.keys() {
            if !used.contains(id) {
                self.unused_since.entry(*id).or_insert(now);
            }
        }
        let mut gone = Vec::new();
        for (id, since) in &self.unused_since {
            let due = *since + grace;
            if due <= now {
                let rev = revisions
                    .get(id)
                    .and_then(|r| r.as_deref())
                    .and_then(|r| r.parse().ok());
                match store
                    .delete_as::<FibrilIdentity>(None, &id.to_string(), rev)
                    .await
                {
                    Ok(_) | Err(StoreError::NotFound { .. }) => gone.push(*id),
                    // Changed since read (re-created or relabelled): look again next pass.
                    Err(StoreError::Conflict { .. }) => gone.push(*id),
                    Err(e) => return Err(e.into()),
                }
            } else {
                pass.next_gc = Some(pass.next_gc.map_or(due, |d: Instant| d.min(due)));
            }
        }
        for id in gone {
            self.unused_since.remove(&id);
            if self.known.remove(&id).is_some() {
                pass.deleted.push(id);
            }
        }
        Ok(pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_api::ObjectMeta;

    fn pod(ns: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some(ns.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn labels_ignore_template_hash_and_include_namespace() {
        let a = security_labels(
            &pod(
                "default",
                &[("app", "webpod"), ("pod-template-hash", "697b545f57")],
            ),
            None,
        )
        .unwrap();
        let b = security_labels(
            &pod("default", &[("app", "webpod"), ("pod-template-hash", "x")]),
            None,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a["k8s:app"], "webpod");
        assert_eq!(a[LABEL_NAMESPACE], "default");
        assert_eq!(a[LABEL_SERVICE_ACCOUNT], "default");
        assert_eq!(
            a["k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"],
            "default"
        );
        let other_ns = security_labels(&pod("prod", &[("app", "webpod")]), None).unwrap();
        assert_ne!(a, other_ns);
        assert_ne!(candidate_id(&a), candidate_id(&other_ns));
        assert!((IDENTITY_MIN..=IDENTITY_MAX).contains(&candidate_id(&a)));
    }
}
