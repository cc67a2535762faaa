//! The flat form: `cilium-config`-style keys (`ipam`, `cluster-pool-ipv4-cidr`,
//! `routing-mode`, ...) with string values. `config view` prints it sorted with the value
//! column at 51 as Cilium does; the `kube-system/fibril-config` ConfigMap holds the same
//! map in `data`.

use std::collections::BTreeMap;

use fibril_api::{ConfigMap, ObjectMeta};
use fibril_ipam::config::{format_auto_create_pools, parse_auto_create_pools};

use crate::error::ConfigError;
use crate::model::{unknown_key, AutoPool, Config, KEYS};

/// Flat key of the auto-created pools.
pub const FLAT_AUTO_CREATE_POOLS: &str = "auto-create-cilium-pod-ip-pools";
/// Namespace of the config ConfigMap.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Name of the config ConfigMap.
pub const CONFIGMAP_NAME: &str = "fibril-config";
/// Width of the key column in `config view` (values start at column 51, as Cilium's).
pub const KEY_COLUMN_WIDTH: usize = 50;

impl Config {
    /// Flat key -> value (unset optional keys left out), sorted by key.
    pub fn to_flat_map(&self) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = KEYS
            .iter()
            .filter_map(|d| Some((d.flat.to_owned(), (d.get)(self)?)))
            .collect();
        if !self.ipam.auto_create_pools.is_empty() {
            let specs: Vec<fibril_ipam::PoolSpec> = self
                .ipam
                .auto_create_pools
                .iter()
                .map(|(name, p)| fibril_ipam::PoolSpec {
                    name: name.clone(),
                    cidrs: p.cidrs.clone(),
                    mask_size: p.mask_size.unwrap_or(0),
                })
                .collect();
            m.insert(
                FLAT_AUTO_CREATE_POOLS.to_owned(),
                format_auto_create_pools(&specs),
            );
        }
        m
    }

    /// The `config view` text: one `key<padding>value` line per key, sorted.
    pub fn to_flat(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.to_flat_map() {
            out.push_str(&format_flat_line(&k, &v));
            out.push('\n');
        }
        out
    }

    /// A config from flat keys: defaults, overridden by every key present. Unknown keys
    /// and bad values are errors naming the flat key. Does not run [`Config::validate`].
    pub fn from_flat_map<K, V>(map: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut c = Config::default();
        for (k, v) in map {
            c.set_flat(k.as_ref(), v.as_ref())?;
        }
        Ok(c)
    }

    /// Sets one key by its flat name.
    pub fn set_flat(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if key == FLAT_AUTO_CREATE_POOLS {
            let pools = parse_auto_create_pools(value)?;
            self.ipam.auto_create_pools = pools
                .into_iter()
                .map(|p| {
                    (
                        p.name,
                        AutoPool {
                            cidrs: p.cidrs,
                            mask_size: Some(p.mask_size),
                        },
                    )
                })
                .collect();
            return Ok(());
        }
        match KEYS.iter().find(|d| d.flat == key) {
            Some(def) => {
                let mut next = self.clone();
                (def.set)(&mut next, key, value)?;
                *self = next;
                Ok(())
            }
            None => Err(unknown_key(
                key,
                KEYS.iter().map(|d| d.flat).chain([FLAT_AUTO_CREATE_POOLS]),
            )),
        }
    }

    /// Parses the `config view` text (`key  value` per line; blank lines and `#`
    /// comments skipped; a key listed twice is an error).
    pub fn from_flat(text: &str) -> Result<Self, ConfigError> {
        let mut seen = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let (k, v) = match t.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (t, ""),
            };
            if seen.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(ConfigError::FlatSyntax {
                    line: i + 1,
                    text: line.to_owned(),
                    reason: format!("key {k:?} listed twice"),
                });
            }
        }
        Self::from_flat_map(seen)
    }

    /// The `kube-system/fibril-config` ConfigMap holding this config's flat keys.
    pub fn to_configmap(&self) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP_NAME.to_owned()),
                namespace: Some(CONFIGMAP_NAMESPACE.to_owned()),
                ..Default::default()
            },
            data: Some(self.to_flat_map()),
            ..Default::default()
        }
    }

    /// The config stored in a ConfigMap's `data` (see [`Config::to_configmap`]).
    pub fn from_configmap(cm: &ConfigMap) -> Result<Self, ConfigError> {
        match &cm.data {
            Some(d) => Self::from_flat_map(d.iter()),
            None => Ok(Self::default()),
        }
    }
}

/// One `config view` line (no newline): the key padded to [`KEY_COLUMN_WIDTH`], at
/// least one space, the value.
pub fn format_flat_line(key: &str, value: &str) -> String {
    if key.len() >= KEY_COLUMN_WIDTH {
        format!("{key} {value}")
    } else {
        format!("{key:<width$}{value}", width = KEY_COLUMN_WIDTH)
    }
}
