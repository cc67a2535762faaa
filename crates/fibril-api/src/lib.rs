//! Kubernetes-shaped resource types, Fibril kinds and their cilium.io aliases,
//! manifest parsing.
//!
//! Every resource the cluster store holds implements [`Resource`]; the store
//! keys objects by [`ObjectKey`] (kind, namespace, name) and stores them as
//! JSON, so one store serves core kinds (k8s-openapi types) and Fibril kinds alike.
//!
//! - [`core`]: the core kinds (k8s-openapi types: Pod, Deployment, ...).
//! - [`fibril`]: the `fibril.io/v1` kinds (FibrilNode, FibrilPodIPPool, ...).
//! - [`kind`]: [`Kind`], the closed set of modeled kinds, `cilium.io` aliases
//!   and CLI resource names (`pods`/`po`, `ciliumnodes`/`cn`, ...).
//! - [`manifest`]: [`parse_manifests`] into [`AnyObject`]s, store and output
//!   conversions.
//! - [`annotations`]: annotation keys (`ipam.fibril.io/ip-pool` and alias).

use serde::{de::DeserializeOwned, Serialize};

pub mod annotations;
pub mod core;
pub mod fibril;
pub mod kind;
pub mod manifest;

pub use k8s_openapi;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

pub use crate::core::{
    ConfigMap, DaemonSet, Deployment, EndpointSlice, Event, Namespace, NetworkPolicy, Node, Pod,
    Service,
};
pub use crate::fibril::{
    FibrilEndpoint, FibrilIdentity, FibrilLocalRedirectPolicy, FibrilNetworkPolicy, FibrilNode,
    FibrilPodIPPool,
};
pub use crate::kind::{Kind, ResolveError, UnknownResourceType, FIBRIL_API_VERSION};
pub use crate::manifest::{
    from_store, list_value, parse_manifests, parse_manifests_bytes, to_store, AnyObject, ApiError,
    DynamicObject, ManifestError, ManifestErrorReason, ModeledKind,
};

/// A typed, Kubernetes-shaped object kept in the cluster store.
pub trait Resource: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// `apiVersion` as written in manifests, e.g. `v1`, `apps/v1`, `fibril.io/v1`.
    const API_VERSION: &'static str;
    /// Canonical kind, e.g. `Pod`, `FibrilNode`.
    const KIND: &'static str;
    /// Whether objects of this kind live in a namespace.
    const NAMESPACED: bool;

    fn metadata(&self) -> &ObjectMeta;
    fn metadata_mut(&mut self) -> &mut ObjectMeta;

    /// The store key of this object (namespace defaults to `default` for
    /// namespaced kinds, and is ignored for cluster-scoped kinds).
    fn key(&self) -> ObjectKey {
        let m = self.metadata();
        ObjectKey::new(
            Self::KIND,
            if Self::NAMESPACED {
                Some(m.namespace.as_deref().unwrap_or("default"))
            } else {
                None
            },
            m.name.as_deref().unwrap_or_default(),
        )
    }
}

/// Where an object lives in the store: its canonical kind, namespace (None for
/// cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        Self {
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_constants_match_kinds() {
        fn check<T: ModeledKind>() {
            assert_eq!(T::KIND, T::MODEL.as_str());
            assert_eq!(T::API_VERSION, T::MODEL.api_version());
            assert_eq!(T::NAMESPACED, T::MODEL.namespaced());
        }
        check::<Namespace>();
        check::<Node>();
        check::<Pod>();
        check::<Deployment>();
        check::<DaemonSet>();
        check::<Service>();
        check::<EndpointSlice>();
        check::<ConfigMap>();
        check::<NetworkPolicy>();
        check::<FibrilNode>();
        check::<FibrilPodIPPool>();
        check::<FibrilLocalRedirectPolicy>();
        check::<FibrilEndpoint>();
        check::<FibrilIdentity>();
        check::<FibrilNetworkPolicy>();
    }

    #[test]
    fn keys_default_namespace_only_for_namespaced_kinds() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        assert_eq!(pod.key(), ObjectKey::new("Pod", Some("default"), "p"));
        let mut node = FibrilNode::new("n1", Default::default());
        node.metadata.namespace = Some("ignored".into());
        assert_eq!(node.key(), ObjectKey::new("FibrilNode", None, "n1"));
        assert_eq!(node.key().to_string(), "FibrilNode/n1");
    }
}
