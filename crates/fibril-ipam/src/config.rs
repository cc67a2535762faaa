//! Parsing of IPAM configuration values as the CLI receives them (`--set key=value`,
//! Helm-style lists, `config view` flat form). Every error names the key and the value.
//! [`fuzz_config`] is the never-panicking entry point used by the fuzz target.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::Ipv4Net;

use crate::carver::BlockCarver;
use crate::multi_pool::{validate_pool_name, PoolSpec};

/// Helm key of the cluster-pool CIDR list.
pub const KEY_CLUSTER_POOL_CIDRS: &str = "ipam.operator.clusterPoolIPv4PodCIDRList";
/// Helm key of the cluster-pool mask size.
pub const KEY_CLUSTER_POOL_MASK: &str = "ipam.operator.clusterPoolIPv4MaskSize";
/// Helm key of the auto-created `default` multi-pool CIDRs.
pub const KEY_DEFAULT_POOL_CIDRS: &str =
    "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs";
/// Helm key of the auto-created `default` multi-pool mask size.
pub const KEY_DEFAULT_POOL_MASK: &str =
    "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.maskSize";
/// Flat (`config view`) key of the auto-created pools.
pub const KEY_AUTO_CREATE_POOLS: &str = "auto-create-cilium-pod-ip-pools";

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {key}: {reason}")]
pub struct ConfigError {
    /// The key, e.g. `ipam.operator.clusterPoolIPv4PodCIDRList`.
    pub key: String,
    /// The offending value (the whole value or the bad entry).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// A new error for `key` = `value`.
    pub fn new(key: &str, value: &str, reason: impl fmt::Display) -> Self {
        Self {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|x| x.strip_suffix(q)) {
            return inner.trim();
        }
    }
    s
}

/// Parses one IPv4 CIDR (`172.20.0.0/16`). Rejects a missing prefix length, IPv6, and
/// host bits (`172.20.0.1/16`), naming the value.
pub fn parse_cidr(key: &str, value: &str) -> Result<Ipv4Net, ConfigError> {
    let s = unquote(value);
    if s.is_empty() {
        return Err(ConfigError::new(key, value, "empty CIDR"));
    }
    let Some((addr, _)) = s.split_once('/') else {
        return Err(ConfigError::new(
            key,
            s,
            "missing prefix length (expected a.b.c.d/n)",
        ));
    };
    match s.parse::<Ipv4Net>() {
        Ok(net) if net.trunc() != net => Err(ConfigError::new(
            key,
            s,
            format!("host bits set; did you mean {}?", net.trunc()),
        )),
        Ok(net) => Ok(net),
        Err(_) if addr.contains(':') => Err(ConfigError::new(
            key,
            s,
            "IPv6 CIDRs are not supported (IPv4 only)",
        )),
        Err(_) => Err(ConfigError::new(
            key,
            s,
            "not an IPv4 CIDR (expected a.b.c.d/n, n <= 32)",
        )),
    }
}

/// Parses a list of CIDRs as Helm `--set` writes it (`{172.20.0.0/16,10.0.0.0/28}`),
/// a single CIDR, a YAML flow list (`["a", "b"]`) or the space-separated `config view`
/// form. Duplicates are rejected; `{}` gives an empty list.
pub fn parse_cidr_list(key: &str, value: &str) -> Result<Vec<Ipv4Net>, ConfigError> {
    let s = value.trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .or_else(|| s.strip_prefix('[').and_then(|x| x.strip_suffix(']')))
        .unwrap_or(s);
    if inner.contains(['{', '}', '[', ']']) {
        return Err(ConfigError::new(
            key,
            value,
            "unbalanced or nested brackets",
        ));
    }
    let inner = inner.trim();
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut seen = BTreeSet::new();
    for part in inner.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(ConfigError::new(key, value, "empty entry in list"));
        }
        for item in part.split_whitespace() {
            let net = parse_cidr(key, item)?;
            if !seen.insert(net) {
                return Err(ConfigError::new(key, item, "listed twice"));
            }
            out.push(net);
        }
    }
    Ok(out)
}

/// Parses a mask size (`29` or `/29`), 1..=32.
pub fn parse_mask_size(key: &str, value: &str) -> Result<u8, ConfigError> {
    let s = unquote(value);
    let digits = s.strip_prefix('/').unwrap_or(s);
    match digits.parse::<u8>() {
        Ok(m) if (1..=32).contains(&m) => Ok(m),
        _ => Err(ConfigError::new(
            key,
            s,
            "mask size must be an integer between 1 and 32",
        )),
    }
}

/// Parses and validates a pool's CIDR list and mask size together (cluster-pool, or one
/// multi-pool pool): non-empty, no overlaps, mask size not shorter than any prefix.
/// Errors name the key at fault.
pub fn parse_pool_config(
    cidrs_key: &str,
    cidrs_value: &str,
    mask_key: &str,
    mask_value: &str,
) -> Result<(Vec<Ipv4Net>, u8), ConfigError> {
    let cidrs = parse_cidr_list(cidrs_key, cidrs_value)?;
    if cidrs.is_empty() {
        return Err(ConfigError::new(
            cidrs_key,
            cidrs_value,
            "at least one CIDR is required",
        ));
    }
    let mask = parse_mask_size(mask_key, mask_value)?;
    if let Err(e) = BlockCarver::new(&cidrs, mask) {
        let key = match e {
            crate::IpamError::MaskShorterThanPrefix { .. } => mask_key,
            _ => cidrs_key,
        };
        let value = if key == mask_key {
            mask_value
        } else {
            cidrs_value
        };
        return Err(ConfigError::new(key, value, e));
    }
    Ok((cidrs, mask))
}

/// The auto-created `default` multi-pool from
/// `ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs` / `.maskSize`.
pub fn default_pool_from_values(
    cidrs_value: &str,
    mask_value: &str,
) -> Result<PoolSpec, ConfigError> {
    let (cidrs, mask_size) = parse_pool_config(
        KEY_DEFAULT_POOL_CIDRS,
        cidrs_value,
        KEY_DEFAULT_POOL_MASK,
        mask_value,
    )?;
    Ok(PoolSpec {
        name: crate::multi_pool::DEFAULT_POOL.to_owned(),
        cidrs,
        mask_size,
    })
}

/// Parses the flat form Cilium's `config view` prints for
/// `auto-create-cilium-pod-ip-pools`: `default=ipv4-cidrs:172.20.0.0/16;ipv4-mask-size:28`,
/// several pools separated by spaces, several CIDRs separated by commas.
pub fn parse_auto_create_pools(value: &str) -> Result<Vec<PoolSpec>, ConfigError> {
    let key = KEY_AUTO_CREATE_POOLS;
    let mut out: Vec<PoolSpec> = Vec::new();
    for entry in value.split_whitespace() {
        let Some((name, fields)) = entry.split_once('=') else {
            return Err(ConfigError::new(
                key,
                entry,
                "expected NAME=ipv4-cidrs:...;ipv4-mask-size:N",
            ));
        };
        validate_pool_name(name).map_err(|e| ConfigError::new(key, entry, e))?;
        if out.iter().any(|p| p.name == name) {
            return Err(ConfigError::new(
                key,
                entry,
                format!("pool {name:?} listed twice"),
            ));
        }
        let (mut cidrs, mut mask) = (None, None);
        for field in fields.split(';').filter(|f| !f.trim().is_empty()) {
            match field.split_once(':') {
                Some(("ipv4-cidrs", v)) => cidrs = Some(v),
                Some(("ipv4-mask-size", v)) => mask = Some(v),
                _ => {
                    return Err(ConfigError::new(
                        key,
                        field,
                        "unknown field (expected ipv4-cidrs or ipv4-mask-size)",
                    ))
                }
            }
        }
        let (Some(c), Some(m)) = (cidrs, mask) else {
            return Err(ConfigError::new(
                key,
                entry,
                "needs both ipv4-cidrs and ipv4-mask-size",
            ));
        };
        let (cidrs, mask_size) = parse_pool_config(key, c, key, m)?;
        out.push(PoolSpec {
            name: name.to_owned(),
            cidrs,
            mask_size,
        });
    }
    Ok(out)
}

/// Space-separated CIDRs, the `config view` form (`172.20.42.0/28 172.20.84.0/28`).
pub fn format_cidr_list(cidrs: &[Ipv4Net]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `config view` form of auto-created pools, the inverse of
/// [`parse_auto_create_pools`]: `default=ipv4-cidrs:172.20.0.0/16;ipv4-mask-size:28`.
pub fn format_auto_create_pools(pools: &[PoolSpec]) -> String {
    pools
        .iter()
        .map(|p| {
            let cidrs: Vec<String> = p.cidrs.iter().map(ToString::to_string).collect();
            format!(
                "{}=ipv4-cidrs:{};ipv4-mask-size:{}",
                p.name,
                cidrs.join(","),
                p.mask_size
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What [`fuzz_config`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuzzOutcome {
    /// Items that parsed (CIDRs, pools, blocks carved).
    pub parsed: usize,
    /// False if a value that parsed did not survive format-then-parse unchanged.
    pub roundtrip_ok: bool,
}

/// Never-panicking entry point for fuzzing: runs every parser over `data` (as lossy
/// UTF-8), checks that formatted output parses back to the same value, and, for
/// `CIDRS|MASK` input, validates the pool and carves a few blocks from it.
pub fn fuzz_config(data: &[u8]) -> FuzzOutcome {
    let text = String::from_utf8_lossy(data);
    let mut out = FuzzOutcome {
        parsed: 0,
        roundtrip_ok: true,
    };
    out.parsed += usize::from(parse_cidr("fuzz", &text).is_ok());
    out.parsed += usize::from(parse_mask_size("fuzz", &text).is_ok());
    if let Ok(list) = parse_cidr_list("fuzz", &text) {
        out.parsed += list.len();
        if parse_cidr_list("fuzz", &format_cidr_list(&list))
            .ok()
            .as_ref()
            != Some(&list)
        {
            out.roundtrip_ok = false;
        }
    }
    if let Ok(pools) = parse_auto_create_pools(&text) {
        out.parsed += pools.len();
        if parse_auto_create_pools(&format_auto_create_pools(&pools))
            .ok()
            .as_ref()
            != Some(&pools)
        {
            out.roundtrip_ok = false;
        }
    }
    if let Some((c, m)) = text.split_once('|') {
        if let Ok((cidrs, mask)) = parse_pool_config("cidrs", c, "mask", m) {
            if let Ok(mut pool) = crate::ClusterPool::new(&cidrs, mask) {
                for i in 0..4 {
                    if pool.allocate_node(&format!("n{i}")).is_ok() {
                        out.parsed += 1;
                    }
                }
            }
        }
    }
    out
}

/// The ip-masq-agent default non-masquerade list: used when ip-masq-agent is
/// enabled without `nonMasqueradeCIDRs` (the upstream ip-masq-agent and Cilium
/// defaults). The one definition; fibril-config and fibril-datapath re-export it.
pub const DEFAULT_NON_MASQUERADE_CIDRS: [&str; 11] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn helm_list_forms() {
        let k = KEY_CLUSTER_POOL_CIDRS;
        let want = vec![net("172.20.0.0/16"), net("10.0.0.0/28")];
        assert_eq!(
            parse_cidr_list(k, "{172.20.0.0/16,10.0.0.0/28}").unwrap(),
            want
        );
        assert_eq!(
            parse_cidr_list(k, "{172.20.0.0/16, 10.0.0.0/28}").unwrap(),
            want
        );
        assert_eq!(
            parse_cidr_list(k, "[\"172.20.0.0/16\", '10.0.0.0/28']").unwrap(),
            want
        );
        assert_eq!(
            parse_cidr_list(k, "172.20.0.0/16 10.0.0.0/28").unwrap(),
            want
        );
        assert_eq!(
            parse_cidr_list(k, "172.20.0.0/16").unwrap(),
            vec![net("172.20.0.0/16")]
        );
        assert_eq!(parse_cidr_list(k, "{}").unwrap(), vec![]);
        assert_eq!(format_cidr_list(&want), "172.20.0.0/16 10.0.0.0/28");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let k = KEY_CLUSTER_POOL_CIDRS;
        let e = parse_cidr_list(k, "{172.20.0.0/16,10.0.0.0/33}").unwrap_err();
        assert_eq!(e.key, k);
        assert_eq!(e.value, "10.0.0.0/33");
        assert!(
            e.to_string().contains(k) && e.to_string().contains("10.0.0.0/33"),
            "{e}"
        );
        let e = parse_cidr_list(k, "{172.20.0.0/16,,10.0.0.0/28}").unwrap_err();
        assert!(e.reason.contains("empty"), "{e}");
        let e = parse_cidr_list(k, "{172.20.0.1/16}").unwrap_err();
        assert!(e.reason.contains("172.20.0.0/16"), "{e}");
        let e = parse_cidr_list(k, "172.20.0.0").unwrap_err();
        assert!(e.reason.contains("prefix"), "{e}");
        let e = parse_cidr_list(k, "fd00::/64").unwrap_err();
        assert!(e.reason.contains("IPv6"), "{e}");
        let e = parse_cidr_list(k, "{a,{b}}").unwrap_err();
        assert!(e.reason.contains("bracket"), "{e}");
        let e = parse_cidr_list(k, "10.0.0.0/8,10.0.0.0/8").unwrap_err();
        assert!(e.reason.contains("twice"), "{e}");
        let e = parse_mask_size(KEY_CLUSTER_POOL_MASK, "33").unwrap_err();
        assert!(e.to_string().contains("clusterPoolIPv4MaskSize"), "{e}");
        assert_eq!(parse_mask_size(KEY_CLUSTER_POOL_MASK, "/29").unwrap(), 29);
    }

    #[test]
    fn pool_config_validation() {
        let (c, m) = parse_pool_config(
            KEY_CLUSTER_POOL_CIDRS,
            "{172.20.42.0/28,172.20.84.0/28}",
            KEY_CLUSTER_POOL_MASK,
            "29",
        )
        .unwrap();
        assert_eq!((c.len(), m), (2, 29));
        let e = parse_pool_config(
            KEY_CLUSTER_POOL_CIDRS,
            "{10.0.0.0/24}",
            KEY_CLUSTER_POOL_MASK,
            "16",
        )
        .unwrap_err();
        assert_eq!(e.key, KEY_CLUSTER_POOL_MASK);
        assert!(e.to_string().contains("10.0.0.0/24"), "{e}");
        let e = parse_pool_config(
            KEY_CLUSTER_POOL_CIDRS,
            "{10.0.0.0/16,10.0.1.0/24}",
            KEY_CLUSTER_POOL_MASK,
            "26",
        )
        .unwrap_err();
        assert_eq!(e.key, KEY_CLUSTER_POOL_CIDRS);
        assert!(
            e.to_string().contains("10.0.1.0/24 overlaps 10.0.0.0/16"),
            "{e}"
        );
        let e = parse_pool_config(KEY_CLUSTER_POOL_CIDRS, "{}", KEY_CLUSTER_POOL_MASK, "26")
            .unwrap_err();
        assert!(e.reason.contains("at least one"), "{e}");
    }

    #[test]
    fn default_pool_and_flat_form() {
        let p = default_pool_from_values("172.20.0.0/16", "28").unwrap();
        assert_eq!(p.name, "default");
        assert_eq!(p.cidrs, vec![net("172.20.0.0/16")]);
        assert_eq!(p.mask_size, 28);
        let e = default_pool_from_values("172.20.0.0/16", "8").unwrap_err();
        assert!(e.key.ends_with("default.ipv4.maskSize"), "{e}");
        let pools = parse_auto_create_pools(
            "default=ipv4-cidrs:172.20.0.0/16;ipv4-mask-size:28 vac=ipv4-cidrs:10.100.0.0/16,10.101.0.0/16;ipv4-mask-size:29",
        )
        .unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[1].cidrs.len(), 2);
        assert_eq!(
            format_auto_create_pools(&pools[..1]),
            "default=ipv4-cidrs:172.20.0.0/16;ipv4-mask-size:28"
        );
        assert_eq!(
            parse_auto_create_pools(&format_auto_create_pools(&pools)).unwrap(),
            pools
        );
        assert!(parse_auto_create_pools("default=ipv4-cidrs:172.20.0.0/16").is_err());
        assert!(parse_auto_create_pools("Bad_Name=ipv4-cidrs:1.0.0.0/8;ipv4-mask-size:9").is_err());
    }

    #[test]
    fn fuzz_entry_handles_odd_input() {
        for s in [
            &b""[..],
            b"\xff\xfe{",
            b"{0.0.0.0/0}|32",
            b"0.0.0.0/0|1",
            b"{10.0.0.0/8,10.0.0.0/9}|24",
            b"a=ipv4-cidrs:;ipv4-mask-size:",
            b"{172.20.42.0/28,172.20.84.0/28}|29",
        ] {
            fuzz_config(s);
        }
        let out = fuzz_config(b"{172.20.42.0/28,172.20.84.0/28}|29");
        assert!(out.parsed >= 3 && out.roundtrip_ok, "{out:?}");
    }
}
