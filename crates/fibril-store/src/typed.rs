//! Typed access: [`StoreExt`] encodes and decodes `fibril_api::Resource`
//! types over any [`Store`], so agents and the operator work with structs.
//! Decoding errors name the key and the expected kind.

use std::pin::Pin;

use async_trait::async_trait;
use fibril_api::{ObjectKey, Resource};
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::object::resource_version;
use crate::{Revision, Store, StoreError, StoredObject, WatchEvent};

/// A typed list and the revision to watch after.
#[derive(Debug, Clone)]
pub struct TypedList<R> {
    pub items: Vec<R>,
    pub revision: Revision,
}

/// A typed watch event; objects carry `metadata.resourceVersion`.
#[derive(Debug, Clone)]
pub enum TypedEvent<R> {
    Added(R),
    Modified(R),
    /// `last` is the last stored state when the backend still had it.
    Deleted {
        key: ObjectKey,
        revision: Revision,
        last: Option<R>,
    },
}

impl<R: Resource> TypedEvent<R> {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> Revision {
        match self {
            TypedEvent::Added(o) | TypedEvent::Modified(o) => {
                resource_version_of(o).unwrap_or_default()
            }
            TypedEvent::Deleted { revision, .. } => *revision,
        }
    }
}

/// Typed watch events; an `Err` item ends the stream (see [`crate::WatchStream`]).
pub type TypedWatchStream<R> =
    Pin<Box<dyn Stream<Item = Result<TypedEvent<R>, StoreError>> + Send>>;

/// The mod revision in an object's `metadata.resourceVersion`.
pub fn resource_version_of<R: Resource>(obj: &R) -> Option<Revision> {
    obj.metadata().resource_version.as_deref()?.parse().ok()
}

fn key_for<R: Resource>(namespace: Option<&str>, name: &str) -> ObjectKey {
    let ns = R::NAMESPACED.then(|| namespace.unwrap_or("default"));
    ObjectKey::new(R::KIND, ns, name)
}

fn decode<R: Resource>(key: &ObjectKey, value: Value) -> Result<R, StoreError> {
    serde_json::from_value(value).map_err(|source| StoreError::Decode {
        key: key.to_string(),
        kind: R::KIND.to_string(),
        source,
    })
}

fn encode<R: Resource>(obj: &R) -> Result<(ObjectKey, Value), StoreError> {
    let key = obj.key();
    let mut value = serde_json::to_value(obj).map_err(|source| StoreError::Encode {
        key: key.to_string(),
        source,
    })?;
    // Own structs may not serialise apiVersion/kind; the stored document
    // always has them so it reads back as a manifest.
    if let Some(map) = value.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(R::API_VERSION.to_string()));
        map.entry("kind")
            .or_insert_with(|| Value::String(R::KIND.to_string()));
    }
    Ok((key, value))
}

fn decode_stored<R: Resource>(o: StoredObject) -> Result<R, StoreError> {
    decode(&o.key, o.value)
}

fn decode_event<R: Resource>(ev: WatchEvent) -> Result<TypedEvent<R>, StoreError> {
    Ok(match ev {
        WatchEvent::Added(o) => TypedEvent::Added(decode_stored(o)?),
        WatchEvent::Modified(o) => TypedEvent::Modified(decode_stored(o)?),
        WatchEvent::Deleted {
            key,
            revision,
            last,
        } => {
            let last = last.map(|v| decode(&key, v)).transpose()?;
            TypedEvent::Deleted {
                key,
                revision,
                last,
            }
        }
    })
}

/// Typed helpers over any [`Store`] (including `dyn Store`). For
/// cluster-scoped kinds the namespace argument is ignored; for namespaced
/// kinds `None` means `default` for single objects and all namespaces for
/// `list_as`/`watch_as`.
#[async_trait]
pub trait StoreExt: Store {
    /// The object, decoded, with `metadata.resourceVersion` set.
    async fn get_as<R: Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<R>, StoreError> {
        let key = key_for::<R>(namespace, name);
        self.get(&key).await?.map(decode_stored).transpose()
    }

    /// All objects of `R`'s kind (in `namespace` if given and namespaced).
    async fn list_as<R: Resource>(
        &self,
        namespace: Option<&str>,
    ) -> Result<TypedList<R>, StoreError> {
        let ns = if R::NAMESPACED { namespace } else { None };
        let list = self.list(R::KIND, ns).await?;
        let items = list
            .items
            .into_iter()
            .map(decode_stored)
            .collect::<Result<Vec<R>, _>>()?;
        Ok(TypedList {
            items,
            revision: list.revision,
        })
    }

    /// Changes to `R`'s kind after `after` (see [`Store::watch`]).
    async fn watch_as<R: Resource>(
        &self,
        namespace: Option<&str>,
        after: Revision,
    ) -> Result<TypedWatchStream<R>, StoreError> {
        let ns = if R::NAMESPACED { namespace } else { None };
        let raw = self.watch(R::KIND, ns, after).await?;
        Ok(Box::pin(raw.map(|item| item.and_then(decode_event::<R>))))
    }

    /// Creates `obj` (key from its metadata); returns the stored object
    /// with `uid`, `creationTimestamp` and `resourceVersion`.
    async fn create_as<R: Resource>(&self, obj: &R) -> Result<R, StoreError> {
        let (key, value) = encode(obj)?;
        decode_stored(self.create(&key, value).await?)
    }

    /// Replaces `obj` if it is still at its `metadata.resourceVersion`
    /// (required); [`StoreError::Conflict`] otherwise.
    async fn update_as<R: Resource>(&self, obj: &R) -> Result<R, StoreError> {
        let (key, value) = encode(obj)?;
        let expected = resource_version(&value).ok_or_else(|| StoreError::InvalidObject {
            key: key.to_string(),
            reason: "update needs metadata.resourceVersion (the revision read)".into(),
        })?;
        decode_stored(self.update(&key, value, expected).await?)
    }

    /// Creates or replaces `obj` unconditionally.
    async fn put_as<R: Resource>(&self, obj: &R) -> Result<R, StoreError> {
        let (key, value) = encode(obj)?;
        decode_stored(self.put(&key, value).await?)
    }

    /// Deletes the object (at revision `expected` if given); returns its
    /// last state.
    async fn delete_as<R: Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        expected: Option<Revision>,
    ) -> Result<R, StoreError> {
        let key = key_for::<R>(namespace, name);
        decode_stored(self.delete(&key, expected).await?)
    }
}

impl<S: Store + ?Sized> StoreExt for S {}
