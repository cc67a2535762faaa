//! Manifests: multi-document YAML (or JSON) into typed objects
//! ([`AnyObject`]), the store's JSON form, and the `get -o yaml|json` output.
//!
//! Every error names the document (1-based), the object's kind/name when
//! known, and the field path (`spec.template.spec.containers[0].image`).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::{
    ConfigMap, DaemonSet, Deployment, EndpointSlice, Event, Namespace, NetworkPolicy, Node, Pod,
    Service,
};
use crate::fibril::{
    FibrilEndpoint, FibrilIdentity, FibrilLocalRedirectPolicy, FibrilNetworkPolicy, FibrilNode,
    FibrilPodIPPool, Invalid,
};
use crate::kind::{Kind, ResolveError};
use crate::{ObjectKey, Resource};

/// A well-formed Kubernetes object of a kind Fibril does not model
/// (ServiceAccount, ClusterRole, ...): kept verbatim so a caller can decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicObject {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Every other top-level field (`spec`, `data`, `rules`, ...).
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// Why a manifest was rejected; see [`ManifestError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestErrorReason {
    /// Not valid YAML.
    Syntax,
    /// The document is not a mapping.
    NotAnObject,
    MissingApiVersion,
    MissingKind,
    MissingName,
    /// A known kind under an `apiVersion` it does not have.
    UnknownApiVersion,
    /// An unknown kind in the `fibril.io` group.
    UnknownKind,
    /// A field has the wrong type or an invalid value.
    InvalidField,
}

/// A manifest error: document index (1-based), kind/name when known, field
/// path when known, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub field: Option<String>,
    pub reason: ManifestErrorReason,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} \"{n}\")")?,
            (Some(k), None) => write!(f, " ({k})")?,
            (None, Some(n)) => write!(f, " (\"{n}\")")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Errors of the output / store conversions.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("encoding {key}: {message}")]
    Encode { key: ObjectKey, message: String },
    #[error("store key {key} holds an object of kind {found}")]
    KindMismatch { key: ObjectKey, found: String },
}

/// Implemented by every modeled kind: moves between the typed struct and
/// [`AnyObject`].
pub trait ModeledKind: Resource {
    const MODEL: Kind;
    fn into_any(self) -> AnyObject;
    /// Gives the object back unchanged when it is another kind.
    #[allow(clippy::result_large_err)]
    fn from_any(any: AnyObject) -> Result<Self, AnyObject>;
    fn from_any_ref(any: &AnyObject) -> Option<&Self>;
}

macro_rules! any_object {
    ($($variant:ident),* $(,)?) => {
        /// One parsed object: a variant per modeled kind, or [`DynamicObject`].
        #[derive(Debug, Clone, PartialEq)]
        pub enum AnyObject {
            $($variant($variant),)*
            Other(DynamicObject),
        }

        $(
            impl ModeledKind for $variant {
                const MODEL: Kind = Kind::$variant;
                fn into_any(self) -> AnyObject {
                    AnyObject::$variant(self)
                }
                fn from_any(any: AnyObject) -> Result<Self, AnyObject> {
                    match any {
                        AnyObject::$variant(o) => Ok(o),
                        other => Err(other),
                    }
                }
                fn from_any_ref(any: &AnyObject) -> Option<&Self> {
                    match any {
                        AnyObject::$variant(o) => Some(o),
                        _ => None,
                    }
                }
            }

            impl From<$variant> for AnyObject {
                fn from(o: $variant) -> Self {
                    AnyObject::$variant(o)
                }
            }
        )*

        impl AnyObject {
            /// The modeled kind, `None` for [`AnyObject::Other`].
            pub fn model(&self) -> Option<Kind> {
                match self {
                    $(AnyObject::$variant(_) => Some(Kind::$variant),)*
                    AnyObject::Other(_) => None,
                }
            }

            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(AnyObject::$variant(o) => &o.metadata,)*
                    AnyObject::Other(o) => &o.metadata,
                }
            }

            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(AnyObject::$variant(o) => &mut o.metadata,)*
                    AnyObject::Other(o) => &mut o.metadata,
                }
            }

            /// The store key. Objects of unmodeled kinds keep the namespace
            /// as written (their scope is unknown here).
            pub fn key(&self) -> ObjectKey {
                match self {
                    $(AnyObject::$variant(o) => o.key(),)*
                    AnyObject::Other(o) => ObjectKey::new(
                        &o.kind,
                        o.metadata.namespace.as_deref(),
                        o.metadata.name.as_deref().unwrap_or_default(),
                    ),
                }
            }

            /// The object as JSON, with `apiVersion` and canonical `kind`.
            pub fn to_json_value(&self) -> Result<Value, ApiError> {
                let r = match self {
                    $(AnyObject::$variant(o) => serde_json::to_value(o),)*
                    AnyObject::Other(o) => serde_json::to_value(o),
                };
                r.map_err(|e| ApiError::Encode { key: self.key(), message: e.to_string() })
            }

            fn from_typed_value(kind: Kind, value: Value) -> Result<AnyObject, serde_path_to_error::Error<serde_json::Error>> {
                Ok(match kind {
                    $(Kind::$variant => AnyObject::$variant(serde_path_to_error::deserialize(value)?),)*
                })
            }
        }

        impl Serialize for AnyObject {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(AnyObject::$variant(o) => o.serialize(s),)*
                    AnyObject::Other(o) => o.serialize(s),
                }
            }
        }
    };
}

any_object!(
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
);

impl AnyObject {
    /// Canonical kind (`FibrilNode` for a parsed `CiliumNode`), or the
    /// manifest's kind for [`AnyObject::Other`].
    pub fn kind(&self) -> &str {
        match self {
            AnyObject::Other(o) => &o.kind,
            _ => self.model().map(Kind::as_str).unwrap_or_default(),
        }
    }

    /// Canonical `apiVersion`, or the manifest's for [`AnyObject::Other`].
    pub fn api_version(&self) -> &str {
        match self {
            AnyObject::Other(o) => &o.api_version,
            _ => self.model().map(Kind::api_version).unwrap_or_default(),
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// The typed object, if it is a `T`; otherwise `self` back.
    #[allow(clippy::result_large_err)]
    pub fn downcast<T: ModeledKind>(self) -> Result<T, AnyObject> {
        T::from_any(self)
    }

    pub fn downcast_ref<T: ModeledKind>(&self) -> Option<&T> {
        T::from_any_ref(self)
    }

    /// The object as the store keeps it.
    pub fn to_store(&self) -> Result<(ObjectKey, Value), ApiError> {
        Ok((self.key(), self.to_json_value()?))
    }

    /// Reads an object back from its JSON form (as written by
    /// [`AnyObject::to_json_value`], or any manifest as JSON).
    pub fn from_json_value(value: Value) -> Result<AnyObject, ManifestError> {
        object_from_value(1, value)
    }

    /// Reads a stored object and checks it belongs under `key`.
    pub fn from_store(key: &ObjectKey, value: Value) -> Result<AnyObject, ApiError> {
        let obj = Self::from_json_value(value)?;
        if obj.kind() != key.kind {
            return Err(ApiError::KindMismatch {
                key: key.clone(),
                found: obj.kind().to_string(),
            });
        }
        Ok(obj)
    }

    /// `-o yaml` form.
    pub fn to_yaml(&self) -> Result<String, ApiError> {
        serde_yaml::to_string(self).map_err(|e| ApiError::Encode {
            key: self.key(),
            message: e.to_string(),
        })
    }

    /// `-o json` form (pretty, as kubectl prints it).
    pub fn to_json_pretty(&self) -> Result<String, ApiError> {
        serde_json::to_string_pretty(self).map_err(|e| ApiError::Encode {
            key: self.key(),
            message: e.to_string(),
        })
    }
}

impl TryFrom<(ObjectKey, Value)> for AnyObject {
    type Error = ApiError;
    fn try_from((key, value): (ObjectKey, Value)) -> Result<Self, Self::Error> {
        AnyObject::from_store(&key, value)
    }
}

/// A kubectl-style `List` (`apiVersion: v1`, `kind: List`, `items`), what
/// `get -o yaml|json` prints for more than one object.
pub fn list_value(objects: &[AnyObject]) -> Result<Value, ApiError> {
    let items = objects
        .iter()
        .map(AnyObject::to_json_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": { "resourceVersion": "" },
    }))
}

/// Encodes a typed object for the store.
pub fn to_store<T: Resource>(obj: &T) -> Result<(ObjectKey, Value), ApiError> {
    let key = obj.key();
    let value = serde_json::to_value(obj).map_err(|e| ApiError::Encode {
        key: key.clone(),
        message: e.to_string(),
    })?;
    Ok((key, value))
}

/// Decodes a typed object from the store's JSON.
pub fn from_store<T: Resource>(value: Value) -> Result<T, ManifestError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| Some(T::KIND.to_string()));
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    serde_path_to_error::deserialize(value).map_err(|e| field_error(1, kind, name, e))
}

/// Parses a stream of YAML documents (`---` separated; JSON works too).
/// Empty documents are skipped; a `v1` `List` yields its items; the first
/// bad document stops the parse.
pub fn parse_manifests(text: &str) -> Result<Vec<AnyObject>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| ManifestError {
            document,
            kind: None,
            name: None,
            field: None,
            reason: ManifestErrorReason::Syntax,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let json = yaml_to_json(document, value)?;
        push_objects(document, json, &mut out)?;
    }
    Ok(out)
}

/// Never panics, whatever the bytes: the fuzz entry point. Non-UTF-8 input is
/// an error like any other.
pub fn parse_manifests_bytes(bytes: &[u8]) -> Result<Vec<AnyObject>, ManifestError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_manifests(text),
        Err(e) => Err(ManifestError {
            document: 1,
            kind: None,
            name: None,
            field: None,
            reason: ManifestErrorReason::Syntax,
            message: format!("input is not UTF-8: {e}"),
        }),
    }
}

/// A `v1` `List` (what `get -o yaml` prints for several objects) stands for
/// its items; anything else is one object.
fn push_objects(
    document: usize,
    value: Value,
    out: &mut Vec<AnyObject>,
) -> Result<(), ManifestError> {
    let is_list = value.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && value.get("kind").and_then(Value::as_str) == Some("List");
    if !is_list {
        out.push(object_from_value(document, value)?);
        return Ok(());
    }
    let items = match value.get("items") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            return Err(ManifestError {
                document,
                kind: Some("List".to_string()),
                name: None,
                field: Some("items".to_string()),
                reason: ManifestErrorReason::InvalidField,
                message: "items must be a sequence of objects".to_string(),
            })
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let obj = object_from_value(document, item).map_err(|mut e| {
            e.field = Some(match e.field.take() {
                Some(f) => format!("items[{i}].{f}"),
                None => format!("items[{i}]"),
            });
            e
        })?;
        out.push(obj);
    }
    Ok(())
}

fn yaml_to_json(document: usize, value: serde_yaml::Value) -> Result<Value, ManifestError> {
    let (kind, name) = peek_kind_name_yaml(&value);
    let base = |reason, field: Option<String>, message: String| ManifestError {
        document,
        kind: kind.clone(),
        name: name.clone(),
        field,
        reason,
        message,
    };
    if !value.is_mapping() {
        return Err(base(
            ManifestErrorReason::NotAnObject,
            None,
            format!(
                "expected a Kubernetes object (a mapping), found {}",
                yaml_type(&value)
            ),
        ));
    }
    // The typed path works on JSON so YAML input and stored objects go
    // through one code path; keys that JSON cannot hold are reported here.
    serde_json::to_value(&value).map_err(|e| {
        base(
            ManifestErrorReason::InvalidField,
            None,
            format!("not representable as a Kubernetes object: {e}"),
        )
    })
}

fn peek_kind_name_yaml(value: &serde_yaml::Value) -> (Option<String>, Option<String>) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_string);
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    (kind, name)
}

fn yaml_type(v: &serde_yaml::Value) -> &'static str {
    match v {
        serde_yaml::Value::Null => "null",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a sequence",
        serde_yaml::Value::Mapping(_) => "a mapping",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

fn field_error(
    document: usize,
    kind: Option<String>,
    name: Option<String>,
    e: serde_path_to_error::Error<serde_json::Error>,
) -> ManifestError {
    let path = e.path().to_string();
    ManifestError {
        document,
        kind,
        name,
        field: (path != ".").then_some(path),
        reason: ManifestErrorReason::InvalidField,
        message: e.into_inner().to_string(),
    }
}

fn object_from_value(document: usize, mut value: Value) -> Result<AnyObject, ManifestError> {
    let kind_str = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let err = |reason, field: Option<&str>, message: String| ManifestError {
        document,
        kind: kind_str.clone(),
        name: name.clone(),
        field: field.map(str::to_string),
        reason,
        message,
    };
    let Some(map) = value.as_object_mut() else {
        return Err(err(
            ManifestErrorReason::NotAnObject,
            None,
            "expected a Kubernetes object (a mapping)".to_string(),
        ));
    };
    let api_version = match map.get("apiVersion") {
        None | Some(Value::Null) => {
            return Err(err(
                ManifestErrorReason::MissingApiVersion,
                Some("apiVersion"),
                "missing apiVersion".to_string(),
            ))
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => {
            return Err(err(
                ManifestErrorReason::InvalidField,
                Some("apiVersion"),
                format!("apiVersion must be a non-empty string, found {other}"),
            ))
        }
    };
    let kind = match map.get("kind") {
        None | Some(Value::Null) => {
            return Err(err(
                ManifestErrorReason::MissingKind,
                Some("kind"),
                "missing kind".to_string(),
            ))
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => {
            return Err(err(
                ManifestErrorReason::InvalidField,
                Some("kind"),
                format!("kind must be a non-empty string, found {other}"),
            ))
        }
    };
    if api_version == "v1" && kind == "List" {
        return Err(err(
            ManifestErrorReason::InvalidField,
            Some("kind"),
            "a List is not an object (Lists only appear at the top of a document)".to_string(),
        ));
    }
    let model = Kind::resolve(&api_version, &kind).map_err(|e| {
        let reason = match e {
            ResolveError::UnknownApiVersion { .. } => ManifestErrorReason::UnknownApiVersion,
            ResolveError::UnknownKind { .. } => ManifestErrorReason::UnknownKind,
        };
        let field = match e {
            ResolveError::UnknownApiVersion { .. } => "apiVersion",
            ResolveError::UnknownKind { .. } => "kind",
        };
        err(reason, Some(field), e.to_string())
    })?;
    match name.as_deref() {
        Some(n) if !n.is_empty() => {}
        _ => {
            return Err(err(
                ManifestErrorReason::MissingName,
                Some("metadata.name"),
                "missing metadata.name".to_string(),
            ))
        }
    }
    let obj = match model {
        Some(model) => {
            // Aliases (`cilium.io/v2` `CiliumNode`) become the canonical kind;
            // k8s-openapi checks apiVersion/kind of the core types.
            map.insert(
                "apiVersion".to_string(),
                Value::String(model.api_version().to_string()),
            );
            map.insert(
                "kind".to_string(),
                Value::String(model.as_str().to_string()),
            );
            let obj = AnyObject::from_typed_value(model, value)
                .map_err(|e| field_error(document, Some(kind.clone()), name.clone(), e))?;
            validate(&obj).map_err(|inv| {
                err(
                    ManifestErrorReason::InvalidField,
                    Some(&inv.path),
                    inv.message,
                )
            })?;
            obj
        }
        None => AnyObject::Other(
            serde_path_to_error::deserialize(value)
                .map_err(|e| field_error(document, Some(kind.clone()), name.clone(), e))?,
        ),
    };
    Ok(obj)
}

/// Checks serde cannot express (one-of fields, port ranges).
fn validate(obj: &AnyObject) -> Result<(), Invalid> {
    match obj {
        AnyObject::FibrilPodIPPool(o) => o.validate(),
        AnyObject::FibrilLocalRedirectPolicy(o) => o.validate(),
        AnyObject::FibrilIdentity(o) => o.validate(),
        AnyObject::FibrilNetworkPolicy(o) => o.validate(),
        _ => Ok(()),
    }
}
