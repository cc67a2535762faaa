//! The closed set of kinds Fibril models: canonical names, `apiVersion`s,
//! scope, the `cilium.io` aliases, and the resource names the CLI accepts
//! (`pods`, `po`, `ciliumnodes`, `cn`, `ciliumendpoints.cilium.io`, ...).

use std::fmt;
use std::str::FromStr;

/// `apiVersion` of every Fibril kind.
pub const FIBRIL_API_VERSION: &str = "fibril.io/v1";
/// API group of the Fibril kinds.
pub const FIBRIL_GROUP: &str = "fibril.io";
/// API group of the Cilium kinds accepted as aliases.
pub const CILIUM_GROUP: &str = "cilium.io";
/// `apiVersion`s under which the Cilium alias kinds are accepted.
pub const CILIUM_API_VERSIONS: [&str; 2] = ["cilium.io/v2", "cilium.io/v2alpha1"];

/// A kind Fibril models with a typed struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Deployment,
    DaemonSet,
    Service,
    EndpointSlice,
    ConfigMap,
    NetworkPolicy,
    Event,
    FibrilNode,
    FibrilPodIPPool,
    FibrilLocalRedirectPolicy,
    FibrilEndpoint,
    FibrilIdentity,
    FibrilNetworkPolicy,
}

/// Static facts about one kind.
struct KindInfo {
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
    /// Lower-case plural, as in `kubectl get pods`.
    plural: &'static str,
    short: &'static [&'static str],
    /// The `cilium.io` kind accepted as an alias, if any.
    cilium_kind: Option<&'static str>,
    cilium_plural: Option<&'static str>,
    cilium_short: &'static [&'static str],
}

const fn core(
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
    plural: &'static str,
    short: &'static [&'static str],
) -> KindInfo {
    KindInfo {
        kind,
        api_version,
        namespaced,
        plural,
        short,
        cilium_kind: None,
        cilium_plural: None,
        cilium_short: &[],
    }
}

const fn fibril(
    kind: &'static str,
    namespaced: bool,
    plural: &'static str,
    cilium_kind: &'static str,
    cilium_plural: &'static str,
    cilium_short: &'static [&'static str],
) -> KindInfo {
    KindInfo {
        kind,
        api_version: FIBRIL_API_VERSION,
        namespaced,
        plural,
        short: &[],
        cilium_kind: Some(cilium_kind),
        cilium_plural: Some(cilium_plural),
        cilium_short,
    }
}

impl Kind {
    /// Every modeled kind, core kinds first.
    pub const ALL: [Kind; 16] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Deployment,
        Kind::DaemonSet,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ConfigMap,
        Kind::NetworkPolicy,
        Kind::Event,
        Kind::FibrilNode,
        Kind::FibrilPodIPPool,
        Kind::FibrilLocalRedirectPolicy,
        Kind::FibrilEndpoint,
        Kind::FibrilIdentity,
        Kind::FibrilNetworkPolicy,
    ];

    fn info(self) -> KindInfo {
        match self {
            Kind::Namespace => core("Namespace", "v1", false, "namespaces", &["ns"]),
            Kind::Node => core("Node", "v1", false, "nodes", &["no"]),
            Kind::Pod => core("Pod", "v1", true, "pods", &["po"]),
            Kind::Deployment => core("Deployment", "apps/v1", true, "deployments", &["deploy"]),
            Kind::DaemonSet => core("DaemonSet", "apps/v1", true, "daemonsets", &["ds"]),
            Kind::Service => core("Service", "v1", true, "services", &["svc"]),
            Kind::EndpointSlice => core(
                "EndpointSlice",
                "discovery.k8s.io/v1",
                true,
                "endpointslices",
                &[],
            ),
            Kind::ConfigMap => core("ConfigMap", "v1", true, "configmaps", &["cm"]),
            Kind::NetworkPolicy => core(
                "NetworkPolicy",
                "networking.k8s.io/v1",
                true,
                "networkpolicies",
                &["netpol"],
            ),
            Kind::Event => core("Event", "v1", true, "events", &["ev"]),
            Kind::FibrilNode => fibril(
                "FibrilNode",
                false,
                "fibrilnodes",
                "CiliumNode",
                "ciliumnodes",
                &["cn", "ciliumn"],
            ),
            Kind::FibrilPodIPPool => fibril(
                "FibrilPodIPPool",
                false,
                "fibrilpodippools",
                "CiliumPodIPPool",
                "ciliumpodippools",
                &["cpip"],
            ),
            Kind::FibrilLocalRedirectPolicy => fibril(
                "FibrilLocalRedirectPolicy",
                true,
                "fibrillocalredirectpolicies",
                "CiliumLocalRedirectPolicy",
                "ciliumlocalredirectpolicies",
                &["clrp"],
            ),
            Kind::FibrilEndpoint => fibril(
                "FibrilEndpoint",
                true,
                "fibrilendpoints",
                "CiliumEndpoint",
                "ciliumendpoints",
                &["cep", "ciliumep"],
            ),
            Kind::FibrilIdentity => fibril(
                "FibrilIdentity",
                false,
                "fibrilidentities",
                "CiliumIdentity",
                "ciliumidentities",
                &["ciliumid"],
            ),
            Kind::FibrilNetworkPolicy => fibril(
                "FibrilNetworkPolicy",
                true,
                "fibrilnetworkpolicies",
                "CiliumNetworkPolicy",
                "ciliumnetworkpolicies",
                &["cnp", "ciliumnp"],
            ),
        }
    }

    /// Canonical kind name (`Pod`, `FibrilNode`); the store keys objects by it.
    pub fn as_str(self) -> &'static str {
        self.info().kind
    }

    /// Canonical `apiVersion` (`v1`, `apps/v1`, `fibril.io/v1`).
    pub fn api_version(self) -> &'static str {
        self.info().api_version
    }

    /// API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        group_of(self.api_version())
    }

    pub fn namespaced(self) -> bool {
        self.info().namespaced
    }

    /// Lower-case plural resource name (`pods`, `fibrilnodes`).
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// The `cilium.io` kind accepted as an alias of this kind (`CiliumNode`).
    pub fn cilium_alias(self) -> Option<&'static str> {
        self.info().cilium_kind
    }

    pub fn is_fibril(self) -> bool {
        self.info().cilium_kind.is_some()
    }

    /// Every `apiVersion` under which a manifest may name this kind.
    pub fn accepted_api_versions(self, kind_name: &str) -> Vec<&'static str> {
        let info = self.info();
        if info.cilium_kind == Some(kind_name) {
            CILIUM_API_VERSIONS.to_vec()
        } else {
            vec![info.api_version]
        }
    }

    /// Every name the CLI accepts for this kind, lower-case: singular,
    /// plural, short names, and the same for the Cilium alias.
    pub fn cli_names(self) -> Vec<String> {
        let info = self.info();
        let mut names = vec![info.kind.to_ascii_lowercase(), info.plural.to_string()];
        names.extend(info.short.iter().map(|s| s.to_string()));
        if let Some(ck) = info.cilium_kind {
            names.push(ck.to_ascii_lowercase());
        }
        if let Some(cp) = info.cilium_plural {
            names.push(cp.to_string());
        }
        names.extend(info.cilium_short.iter().map(|s| s.to_string()));
        names
    }

    /// Looks a kind up by the `kind:` string of a manifest, canonical or
    /// Cilium alias (exact, case-sensitive as in manifests).
    pub fn from_kind_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| {
            let info = k.info();
            info.kind == kind || info.cilium_kind == Some(kind)
        })
    }

    /// Resolves a manifest's `apiVersion` and `kind`. `Ok(None)` means a kind
    /// Fibril does not model (e.g. `ServiceAccount`); kinds of the
    /// `fibril.io` group must be known.
    pub fn resolve(api_version: &str, kind: &str) -> Result<Option<Kind>, ResolveError> {
        match Kind::from_kind_name(kind) {
            Some(k) => {
                let accepted = k.accepted_api_versions(kind);
                if accepted.contains(&api_version) {
                    Ok(Some(k))
                } else {
                    Err(ResolveError::UnknownApiVersion {
                        kind: kind.to_string(),
                        api_version: api_version.to_string(),
                        expected: accepted.join(" or "),
                    })
                }
            }
            None if group_of(api_version) == FIBRIL_GROUP => Err(ResolveError::UnknownKind {
                kind: kind.to_string(),
                api_version: api_version.to_string(),
            }),
            None => Ok(None),
        }
    }

    /// Maps a resource name as typed on the command line (`pods`, `po`,
    /// `Pod`, `ciliumnodes`, `cn`, `ciliumendpoints.cilium.io`,
    /// `deployments.v1.apps`) to its kind.
    pub fn from_cli_name(name: &str) -> Result<Kind, UnknownResourceType> {
        let unknown = || UnknownResourceType {
            name: name.to_string(),
        };
        let lower = name.trim().to_ascii_lowercase();
        let (resource, qualifier) = match lower.split_once('.') {
            Some((r, q)) => (r, Some(q)),
            None => (lower.as_str(), None),
        };
        if resource.is_empty() {
            return Err(unknown());
        }
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.cli_names().iter().any(|n| n == resource))
            .ok_or_else(unknown)?;
        if let Some(q) = qualifier {
            // `resource.group` or `resource.version.group`; the core group
            // has no name, so `pods.v1` is valid too.
            let info = kind.info();
            let is_cilium_name = info.cilium_kind.is_some_and(|ck| {
                ck.eq_ignore_ascii_case(resource)
                    || info.cilium_plural == Some(resource)
                    || info.cilium_short.contains(&resource)
            });
            let candidates: Vec<&str> = if is_cilium_name {
                CILIUM_API_VERSIONS.to_vec()
            } else {
                vec![info.api_version]
            };
            let ok = candidates.iter().any(|av| {
                let group = group_of(av);
                let version = av.rsplit('/').next().unwrap_or(av);
                let full = if group.is_empty() {
                    version.to_string()
                } else {
                    format!("{version}.{group}")
                };
                q == group || q == full
            });
            if !ok {
                return Err(unknown());
            }
        }
        Ok(kind)
    }
}

/// The group part of an `apiVersion` (`apps/v1` -> `apps`, `v1` -> ``).
pub fn group_of(api_version: &str) -> &str {
    match api_version.rsplit_once('/') {
        Some((g, _)) => g,
        None => "",
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownResourceType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::from_cli_name(s)
    }
}

/// A resource name on the command line that names no known kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server doesn't have a resource type \"{name}\"")]
pub struct UnknownResourceType {
    pub name: String,
}

/// Why an `apiVersion`/`kind` pair was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown apiVersion \"{api_version}\" for kind {kind} (expected {expected})")]
    UnknownApiVersion {
        kind: String,
        api_version: String,
        expected: String,
    },
    #[error("unknown kind \"{kind}\" in apiVersion {api_version}")]
    UnknownKind { kind: String, api_version: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names_map_to_kinds() {
        let cases = [
            ("pods", Kind::Pod),
            ("po", Kind::Pod),
            ("pod", Kind::Pod),
            ("Pod", Kind::Pod),
            ("deployments", Kind::Deployment),
            ("deploy", Kind::Deployment),
            ("deployments.apps", Kind::Deployment),
            ("deployments.v1.apps", Kind::Deployment),
            ("daemonsets", Kind::DaemonSet),
            ("ds", Kind::DaemonSet),
            ("services", Kind::Service),
            ("svc", Kind::Service),
            ("endpointslices", Kind::EndpointSlice),
            ("endpointslices.discovery.k8s.io", Kind::EndpointSlice),
            ("nodes", Kind::Node),
            ("no", Kind::Node),
            ("configmaps", Kind::ConfigMap),
            ("cm", Kind::ConfigMap),
            ("namespaces", Kind::Namespace),
            ("ns", Kind::Namespace),
            ("networkpolicies", Kind::NetworkPolicy),
            ("netpol", Kind::NetworkPolicy),
            ("ciliumnodes", Kind::FibrilNode),
            ("ciliumnode", Kind::FibrilNode),
            ("cn", Kind::FibrilNode),
            ("fibrilnodes", Kind::FibrilNode),
            ("FibrilNode", Kind::FibrilNode),
            ("ciliumendpoints", Kind::FibrilEndpoint),
            ("ciliumendpoints.cilium.io", Kind::FibrilEndpoint),
            ("cep", Kind::FibrilEndpoint),
            ("fibrilendpoints.fibril.io", Kind::FibrilEndpoint),
            ("ciliumidentities", Kind::FibrilIdentity),
            ("ciliumpodippools", Kind::FibrilPodIPPool),
            ("cpip", Kind::FibrilPodIPPool),
            (
                "ciliumlocalredirectpolicies",
                Kind::FibrilLocalRedirectPolicy,
            ),
            ("CiliumLocalRedirectPolicy", Kind::FibrilLocalRedirectPolicy),
            ("clrp", Kind::FibrilLocalRedirectPolicy),
            ("ciliumnetworkpolicies", Kind::FibrilNetworkPolicy),
            ("cnp", Kind::FibrilNetworkPolicy),
            ("fibrilnetworkpolicies", Kind::FibrilNetworkPolicy),
        ];
        for (name, kind) in cases {
            assert_eq!(Kind::from_cli_name(name), Ok(kind), "{name}");
            assert_eq!(name.parse::<Kind>(), Ok(kind), "{name}");
        }
    }

    #[test]
    fn unknown_cli_name_is_named_in_error() {
        for name in [
            "foo",
            "",
            "pods.cilium.io",
            "ciliumnodes.apps",
            "fibrilnodes.cilium.io",
            ".",
        ] {
            let err = Kind::from_cli_name(name).unwrap_err();
            assert!(err.to_string().contains(&format!("\"{name}\"")), "{err}");
        }
    }

    #[test]
    fn cli_names_are_unique_across_kinds() {
        let mut seen = std::collections::HashMap::new();
        for k in Kind::ALL {
            for n in k.cli_names() {
                if let Some(prev) = seen.insert(n.clone(), k) {
                    assert_eq!(prev, k, "{n} names two kinds");
                }
            }
        }
    }

    #[test]
    fn aliases_resolve_to_fibril_kinds() {
        for (av, kind, want) in [
            ("cilium.io/v2", "CiliumNode", Kind::FibrilNode),
            (
                "cilium.io/v2alpha1",
                "CiliumPodIPPool",
                Kind::FibrilPodIPPool,
            ),
            ("cilium.io/v2", "CiliumPodIPPool", Kind::FibrilPodIPPool),
            (
                "cilium.io/v2",
                "CiliumLocalRedirectPolicy",
                Kind::FibrilLocalRedirectPolicy,
            ),
            ("cilium.io/v2", "CiliumEndpoint", Kind::FibrilEndpoint),
            ("cilium.io/v2", "CiliumIdentity", Kind::FibrilIdentity),
            (
                "cilium.io/v2",
                "CiliumNetworkPolicy",
                Kind::FibrilNetworkPolicy,
            ),
            ("fibril.io/v1", "FibrilNode", Kind::FibrilNode),
            ("apps/v1", "Deployment", Kind::Deployment),
            ("v1", "Pod", Kind::Pod),
        ] {
            assert_eq!(Kind::resolve(av, kind), Ok(Some(want)), "{av} {kind}");
            assert!(!want.api_version().starts_with("cilium"));
        }
        assert_eq!(Kind::FibrilNode.as_str(), "FibrilNode");
        assert_eq!(Kind::FibrilNode.cilium_alias(), Some("CiliumNode"));
    }

    #[test]
    fn resolve_rejects_wrong_versions_and_unknown_fibril_kinds() {
        let err = Kind::resolve("v1", "Deployment").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown apiVersion \"v1\" for kind Deployment (expected apps/v1)"
        );
        let err = Kind::resolve("cilium.io/v1", "CiliumNode").unwrap_err();
        assert!(
            err.to_string()
                .contains("cilium.io/v2 or cilium.io/v2alpha1"),
            "{err}"
        );
        let err = Kind::resolve("cilium.io/v2", "FibrilNode").unwrap_err();
        assert!(err.to_string().contains("fibril.io/v1"), "{err}");
        let err = Kind::resolve("fibril.io/v1", "FibrilWidget").unwrap_err();
        assert!(err.to_string().contains("FibrilWidget"), "{err}");
        assert_eq!(Kind::resolve("v1", "ServiceAccount"), Ok(None));
        assert_eq!(
            Kind::resolve("cilium.io/v2", "CiliumBGPPeeringPolicy"),
            Ok(None)
        );
    }
}
