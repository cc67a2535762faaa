//! The config in the cluster store: the `kube-system/fibril-config` ConfigMap with the
//! flat keys in `data` (as Cilium's `cilium-config`).

use fibril_api::ConfigMap;
use fibril_store::{resource_version_of, Revision, Store, StoreError, StoreExt};

use crate::error::ConfigError;
use crate::flat::{CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};
use crate::model::Config;

/// Reading the stored config failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error("reading ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: {0}")]
    Store(#[from] StoreError),
    /// The stored keys are not a valid config.
    #[error("ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: {0}")]
    Config(#[from] ConfigError),
}

/// The stored config and the ConfigMap's revision, or `None` when there is none.
/// The config is parsed and validated (warnings are dropped).
pub async fn load(store: &dyn Store) -> Result<Option<(Config, Revision)>, LoadError> {
    let Some(cm) = store
        .get_as::<ConfigMap>(Some(CONFIGMAP_NAMESPACE), CONFIGMAP_NAME)
        .await?
    else {
        return Ok(None);
    };
    let rev = resource_version_of(&cm).unwrap_or_default();
    let c = Config::from_configmap(&cm)?;
    c.validate()?;
    Ok(Some((c, rev)))
}

/// Stores `config` (last writer wins); returns the ConfigMap's new revision.
pub async fn save(store: &dyn Store, config: &Config) -> Result<Revision, StoreError> {
    let cm = store.put_as(&config.to_configmap()).await?;
    Ok(resource_version_of(&cm).unwrap_or_default())
}
