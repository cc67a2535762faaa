//! ip-masq-agent configuration: which destination prefixes keep the pod IP
//! (the `fibril_ipmasq` LPM map read by `bpf/lib/nat.h`).
//!
//! Owns the pure part (no I/O): parsing the `ip-masq-agent` ConfigMap's
//! `config` key (YAML or JSON: `nonMasqueradeCIDRs`, `masqLinkLocal`), the
//! default list used when no `nonMasqueradeCIDRs` are given, the link-local
//! rule (169.254.0.0/16 added unless `masqLinkLocal`), and the listing in the
//! `cilium-dbg bpf ipmasq list` format. [`sync`] reconciles any
//! [`PrefixStore`] (the pinned map, or a set in tests) with a desired set.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use fibril_abi::IpmasqValue;
use serde::Deserialize;

use crate::maps::{Ipmasq, Prefix4};

pub use fibril_ipam::config::DEFAULT_NON_MASQUERADE_CIDRS;

/// Link-local prefix, not masqueraded unless `masqLinkLocal`.
pub const LINK_LOCAL: Prefix4 = Prefix4 {
    addr: Ipv4Addr::new(169, 254, 0, 0),
    len: 16,
};

/// Errors of the ip-masq-agent configuration and map sync.
#[derive(Debug, thiserror::Error)]
pub enum IpMasqError {
    /// The config text is not valid YAML/JSON of the expected shape.
    #[error("ip-masq-agent config: {0}")]
    Parse(String),
    /// A `nonMasqueradeCIDRs` entry is not a CIDR.
    #[error("ip-masq-agent config: nonMasqueradeCIDRs entry {cidr:?} is not a valid CIDR")]
    BadCidr {
        /// The offending entry.
        cidr: String,
    },
    /// The ConfigMap has no `config` key.
    #[error("ip-masq-agent ConfigMap has no data key \"config\"")]
    NoConfigKey,
    /// More prefixes than `fibril_ipmasq` holds.
    #[error("{count} non-masquerade prefixes, fibril_ipmasq holds at most {max}")]
    TooMany {
        /// Prefixes wanted.
        count: usize,
        /// Map capacity.
        max: u32,
    },
    /// The map refused an operation.
    #[error("fibril_ipmasq {op} {prefix}: {reason}")]
    Map {
        /// insert / remove / list.
        op: &'static str,
        /// Prefix concerned ("" for list).
        prefix: String,
        /// Underlying error.
        reason: String,
    },
}

/// Parsed ip-masq-agent configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpMasqConfig {
    /// `nonMasqueradeCIDRs` (IPv4 ones; IPv6 entries are validated and
    /// counted in `ipv6_ignored`, Fibril's datapath is IPv4-only). `None`
    /// when the key is absent.
    pub non_masquerade_cidrs: Option<Vec<Prefix4>>,
    /// `masqLinkLocal`.
    pub masq_link_local: bool,
    /// IPv6 entries skipped.
    pub ipv6_ignored: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(rename = "nonMasqueradeCIDRs", default)]
    non_masquerade_cidrs: Option<Vec<String>>,
    #[serde(default)]
    masq_link_local: Option<bool>,
    // Upstream keys Fibril accepts and does not use.
    #[serde(default, rename = "masqLinkLocalIPv6")]
    _masq_link_local_ipv6: Option<bool>,
    #[serde(default, rename = "resyncInterval")]
    _resync_interval: Option<serde_yaml::Value>,
}

/// Parses a CIDR of `nonMasqueradeCIDRs`: `Ok(Some)` for IPv4, `Ok(None)`
/// for a valid IPv6 CIDR. Host bits are cleared, as Go's `ParseCIDR` does.
pub fn parse_cidr(s: &str) -> Result<Option<Prefix4>, IpMasqError> {
    let bad = || IpMasqError::BadCidr {
        cidr: s.to_string(),
    };
    match s.trim().parse::<ipnet::IpNet>().map_err(|_| bad())? {
        ipnet::IpNet::V4(n) => Prefix4::new(n.addr(), n.prefix_len())
            .map(Some)
            .map_err(|_| bad()),
        ipnet::IpNet::V6(_) => Ok(None),
    }
}

impl IpMasqConfig {
    /// Parses the `config` value (YAML or JSON; empty text = all defaults).
    pub fn parse(text: &str) -> Result<Self, IpMasqError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let raw: RawConfig =
            serde_yaml::from_str(text).map_err(|e| IpMasqError::Parse(e.to_string()))?;
        let mut cfg = IpMasqConfig {
            masq_link_local: raw.masq_link_local.unwrap_or(false),
            ..Default::default()
        };
        if let Some(list) = raw.non_masquerade_cidrs {
            let mut v = Vec::with_capacity(list.len());
            for s in &list {
                match parse_cidr(s)? {
                    Some(p) => v.push(p),
                    None => cfg.ipv6_ignored += 1,
                }
            }
            cfg.non_masquerade_cidrs = Some(v);
        }
        Ok(cfg)
    }

    /// Parses a whole `ip-masq-agent` ConfigMap document (YAML or JSON, as
    /// `kubectl get cm ip-masq-agent -o yaml|json` prints it).
    pub fn parse_configmap(doc: &str) -> Result<Self, IpMasqError> {
        let v: serde_yaml::Value =
            serde_yaml::from_str(doc).map_err(|e| IpMasqError::Parse(e.to_string()))?;
        let cfg = v
            .get("data")
            .and_then(|d| d.get("config"))
            .ok_or(IpMasqError::NoConfigKey)?;
        let text = cfg.as_str().ok_or_else(|| {
            IpMasqError::Parse("data.config of the ConfigMap is not a string".into())
        })?;
        Self::parse(text)
    }

    /// Config from the Helm values `ipMasqAgent.config.nonMasqueradeCIDRs`
    /// (None = unset) and `ipMasqAgent.config.masqLinkLocal`.
    pub fn from_values(
        cidrs: Option<&[String]>,
        masq_link_local: bool,
    ) -> Result<Self, IpMasqError> {
        let mut cfg = IpMasqConfig {
            masq_link_local,
            ..Default::default()
        };
        if let Some(list) = cidrs {
            let mut v = Vec::new();
            for s in list {
                match parse_cidr(s)? {
                    Some(p) => v.push(p),
                    None => cfg.ipv6_ignored += 1,
                }
            }
            cfg.non_masquerade_cidrs = Some(v);
        }
        Ok(cfg)
    }

    /// Config from already-parsed values (e.g. fibril-config's
    /// `IpMasqAgentConfig { non_masquerade_cidrs: Option<Vec<Ipv4Net>>, .. }`).
    pub fn from_ipv4nets(cidrs: Option<&[ipnet::Ipv4Net]>, masq_link_local: bool) -> Self {
        IpMasqConfig {
            non_masquerade_cidrs: cidrs.map(|v| {
                v.iter()
                    .map(|n| Prefix4 {
                        addr: n.network(),
                        len: n.prefix_len(),
                    })
                    .collect()
            }),
            masq_link_local,
            ipv6_ignored: 0,
        }
    }

    /// The prefixes `fibril_ipmasq` must hold: the configured list (the
    /// default list when none or an empty one is given), plus 169.254.0.0/16
    /// unless `masqLinkLocal`.
    pub fn desired(&self) -> BTreeSet<Prefix4> {
        let mut set: BTreeSet<Prefix4> = match &self.non_masquerade_cidrs {
            Some(v) if !v.is_empty() => v.iter().copied().collect(),
            _ => default_prefixes(),
        };
        if !self.masq_link_local {
            set.insert(LINK_LOCAL);
        }
        set
    }
}

/// [`DEFAULT_NON_MASQUERADE_CIDRS`] as prefixes.
pub fn default_prefixes() -> BTreeSet<Prefix4> {
    DEFAULT_NON_MASQUERADE_CIDRS
        .iter()
        .filter_map(|s| parse_cidr(s).ok().flatten())
        .collect()
}

/// What `fibril_ipmasq` must hold: empty when ip-masq-agent is disabled.
pub fn desired_prefixes(enabled: bool, config: &IpMasqConfig) -> BTreeSet<Prefix4> {
    if enabled {
        config.desired()
    } else {
        BTreeSet::new()
    }
}

/// A set of prefixes [`sync`] can reconcile.
pub trait PrefixStore {
    /// Current prefixes.
    fn prefixes(&self) -> Result<BTreeSet<Prefix4>, IpMasqError>;
    /// Adds one.
    fn add(&mut self, p: Prefix4) -> Result<(), IpMasqError>;
    /// Removes one.
    fn remove(&mut self, p: Prefix4) -> Result<(), IpMasqError>;
}

impl PrefixStore for BTreeSet<Prefix4> {
    fn prefixes(&self) -> Result<BTreeSet<Prefix4>, IpMasqError> {
        Ok(self.clone())
    }
    fn add(&mut self, p: Prefix4) -> Result<(), IpMasqError> {
        self.insert(p);
        Ok(())
    }
    fn remove(&mut self, p: Prefix4) -> Result<(), IpMasqError> {
        BTreeSet::remove(self, &p);
        Ok(())
    }
}

fn map_err(op: &'static str, prefix: String, e: impl std::fmt::Display) -> IpMasqError {
    IpMasqError::Map {
        op,
        prefix,
        reason: e.to_string(),
    }
}

impl PrefixStore for Ipmasq {
    fn prefixes(&self) -> Result<BTreeSet<Prefix4>, IpMasqError> {
        Ok(self
            .entries()
            .map_err(|e| map_err("list", String::new(), e))?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }
    fn add(&mut self, p: Prefix4) -> Result<(), IpMasqError> {
        self.insert(p, &IpmasqValue::default())
            .map_err(|e| map_err("insert", p.to_string(), e))
    }
    fn remove(&mut self, p: Prefix4) -> Result<(), IpMasqError> {
        crate::maps::LpmTable::remove(self, p)
            .map(|_| ())
            .map_err(|e| map_err("remove", p.to_string(), e))
    }
}

/// Outcome of a [`sync`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Prefixes added.
    pub added: Vec<Prefix4>,
    /// Stale prefixes removed.
    pub removed: Vec<Prefix4>,
}

/// Makes `store` hold exactly `desired`: adds what is missing first (so a
/// destination never becomes masqueraded in between), then removes stale
/// prefixes. Refuses sets larger than the map.
pub fn sync<S: PrefixStore>(
    store: &mut S,
    desired: &BTreeSet<Prefix4>,
) -> Result<SyncStats, IpMasqError> {
    let max = fibril_abi::map_sizes::IPMASQ;
    if desired.len() > max as usize {
        return Err(IpMasqError::TooMany {
            count: desired.len(),
            max,
        });
    }
    let current = store.prefixes()?;
    let mut st = SyncStats::default();
    for p in desired.difference(&current) {
        store.add(*p)?;
        st.added.push(*p);
    }
    for p in current.difference(desired) {
        store.remove(*p)?;
        st.removed.push(*p);
    }
    if !st.added.is_empty() || !st.removed.is_empty() {
        tracing::info!(added = ?st.added, removed = ?st.removed, "fibril_ipmasq synced");
    }
    Ok(st)
}

/// What the agent calls when the config changes (and at start): makes the
/// node's `fibril_ipmasq` match `enabled` + `config`.
pub fn apply(
    maps: &crate::Maps,
    enabled: bool,
    config: &IpMasqConfig,
) -> Result<SyncStats, IpMasqError> {
    let mut map = maps
        .ipmasq()
        .map_err(|e| map_err("open", String::new(), e))?;
    sync(&mut map, &desired_prefixes(enabled, config))
}

/// `bpf ipmasq list` of a node's pinned map.
pub fn list(maps: &crate::Maps) -> Result<String, IpMasqError> {
    let map = maps
        .ipmasq()
        .map_err(|e| map_err("open", String::new(), e))?;
    Ok(format_list(&map.prefixes()?))
}

/// `cilium-dbg bpf ipmasq list` format: a header, then one prefix a line.
pub fn format_list<'a>(prefixes: impl IntoIterator<Item = &'a Prefix4>) -> String {
    let mut out = String::from("IP PREFIX/ADDRESS\n");
    for p in prefixes {
        out.push_str(&p.to_string());
        out.push('\n');
    }
    out
}

/// Outcome of [`fuzz_parse`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuzzOutcome {
    /// Some form (config text or ConfigMap) was accepted.
    pub accepted: bool,
    /// Accepted configs list prefixes that parse back to the same set.
    pub roundtrip_ok: bool,
}

/// Fuzz entry point (never panics): parses `data` as config text and as a
/// ConfigMap; for accepted input, the desired set is non-empty, within
/// bounds, and its listing parses back to the same set.
pub fn fuzz_parse(data: &[u8]) -> FuzzOutcome {
    let text = String::from_utf8_lossy(data);
    let mut out = FuzzOutcome {
        accepted: false,
        roundtrip_ok: true,
    };
    for cfg in [
        IpMasqConfig::parse(&text),
        IpMasqConfig::parse_configmap(&text),
    ]
    .into_iter()
    .flatten()
    {
        out.accepted = true;
        let want = cfg.desired();
        let listing = format_list(&want);
        let back: Option<BTreeSet<Prefix4>> = listing
            .lines()
            .skip(1)
            .map(|l| parse_cidr(l).ok().flatten())
            .collect();
        let link_local_ok = cfg.masq_link_local || want.contains(&LINK_LOCAL);
        if want.is_empty() || back.as_ref() != Some(&want) || !link_local_ok {
            out.roundtrip_ok = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<Prefix4> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn seed_configmap_json() {
        // The seeds' `kubectl get cm ip-masq-agent -o yaml | yq` output.
        let doc = r#"{
  "apiVersion": "v1",
  "data": {
    "config": "{\"nonMasqueradeCIDRs\":[\"10.10.1.0/24\",\"10.10.2.0/24\"]}"
  },
  "kind": "ConfigMap",
  "metadata": { "name": "ip-masq-agent", "namespace": "kube-system" }
}"#;
        let cfg = IpMasqConfig::parse_configmap(doc).unwrap();
        assert!(!cfg.masq_link_local);
        assert_eq!(
            cfg.desired(),
            set(&["10.10.1.0/24", "10.10.2.0/24", "169.254.0.0/16"])
        );
        assert_eq!(
            format_list(&cfg.desired()),
            "IP PREFIX/ADDRESS\n10.10.1.0/24\n10.10.2.0/24\n169.254.0.0/16\n"
        );
    }

    #[test]
    fn yaml_config_and_configmap() {
        let cfg = IpMasqConfig::parse(
            "nonMasqueradeCIDRs:\n  - 10.10.1.0/24\n  - fd00::/8\nmasqLinkLocal: true\nresyncInterval: 60s\n",
        )
        .unwrap();
        assert!(cfg.masq_link_local);
        assert_eq!(cfg.ipv6_ignored, 1);
        assert_eq!(cfg.desired(), set(&["10.10.1.0/24"]));
        let cm = "apiVersion: v1\nkind: ConfigMap\ndata:\n  config: |\n    nonMasqueradeCIDRs: [192.0.2.0/24]\n";
        let cfg = IpMasqConfig::parse_configmap(cm).unwrap();
        assert_eq!(cfg.desired(), set(&["192.0.2.0/24", "169.254.0.0/16"]));
        assert!(matches!(
            IpMasqConfig::parse_configmap("data: {}"),
            Err(IpMasqError::NoConfigKey)
        ));
    }

    #[test]
    fn defaults_when_no_cidrs() {
        for text in ["", "{}", "masqLinkLocal: false", "nonMasqueradeCIDRs: []"] {
            let d = IpMasqConfig::parse(text).unwrap().desired();
            assert_eq!(d.len(), 12, "{text:?}: defaults + link-local");
            assert!(d.contains(&"240.0.0.0/4".parse().unwrap()));
            assert!(d.contains(&LINK_LOCAL));
        }
        let d = IpMasqConfig::parse("masqLinkLocal: true")
            .unwrap()
            .desired();
        assert_eq!(d, default_prefixes());
        assert_eq!(
            default_prefixes()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            {
                let mut v: Vec<Prefix4> = DEFAULT_NON_MASQUERADE_CIDRS
                    .iter()
                    .map(|s| s.parse().unwrap())
                    .collect();
                v.sort();
                v.iter().map(|p| p.to_string()).collect::<Vec<_>>()
            }
        );
        assert!(desired_prefixes(false, &IpMasqConfig::default()).is_empty());
    }

    #[test]
    fn values_and_errors_name_the_input() {
        let cfg = IpMasqConfig::from_values(
            Some(&["10.10.1.0/24".to_string(), "10.10.2.7/24".to_string()]),
            false,
        )
        .unwrap();
        assert_eq!(
            cfg.desired(),
            set(&["10.10.1.0/24", "10.10.2.0/24", "169.254.0.0/16"]),
            "host bits cleared"
        );
        let e = IpMasqConfig::parse(r#"{"nonMasqueradeCIDRs":["10.10.1.0/33"]}"#).unwrap_err();
        assert!(e.to_string().contains("10.10.1.0/33"), "{e}");
        let e = IpMasqConfig::parse("nonMasqueradeCIDRs: [banana]").unwrap_err();
        assert!(e.to_string().contains("banana"), "{e}");
        let e = IpMasqConfig::parse("nonMasqueradeCidrs: [10.0.0.0/8]").unwrap_err();
        assert!(e.to_string().contains("nonMasqueradeCidrs"), "{e}");
        let e = IpMasqConfig::parse("masqLinkLocal: maybe").unwrap_err();
        assert!(e.to_string().contains("masqLinkLocal"), "{e}");
        assert!(IpMasqConfig::from_values(Some(&["x".into()]), false).is_err());
        let nets: Vec<ipnet::Ipv4Net> = vec!["10.10.1.0/24".parse().unwrap()];
        assert_eq!(
            IpMasqConfig::from_ipv4nets(Some(&nets), true).desired(),
            set(&["10.10.1.0/24"])
        );
        assert_eq!(
            IpMasqConfig::from_ipv4nets(None, true).desired(),
            default_prefixes()
        );
    }

    #[test]
    fn sync_adds_missing_and_removes_stale() {
        let mut store = set(&["10.0.0.0/8", "10.10.1.0/24"]);
        let want = set(&["10.10.1.0/24", "10.10.2.0/24", "169.254.0.0/16"]);
        let st = sync(&mut store, &want).unwrap();
        assert_eq!(store, want);
        assert_eq!(
            st.added,
            vec![
                "10.10.2.0/24".parse().unwrap(),
                "169.254.0.0/16".parse().unwrap()
            ]
        );
        assert_eq!(st.removed, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(sync(&mut store, &want).unwrap(), SyncStats::default());
        let huge: BTreeSet<Prefix4> = (0..100u8)
            .map(|i| Prefix4::new(Ipv4Addr::new(10, i, 0, 0), 16).unwrap())
            .collect();
        assert!(matches!(
            sync(&mut store, &huge),
            Err(IpMasqError::TooMany { count: 100, .. })
        ));
        assert_eq!(store, want, "nothing changed on refusal");
    }
}
