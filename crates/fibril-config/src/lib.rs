//! Fibril's one config object, keyed by the Helm value names the seeds use, so
//! `helm upgrade --set k=v` maps to `fibril lab upgrade --set k=v`.
//!
//! Modules:
//! - [`model`]: [`Config`] with Cilium's defaults, the key table (Helm name <-> flat
//!   `cilium-config` name), [`Config::set`] / [`Config::get`], derived values
//!   ([`Config::effective_tunnel_port`], [`Config::non_masquerade_cidrs`], ...).
//! - [`set`]: Helm `--set` syntax ([`Config::apply_set`], [`Config::apply_sets`]).
//! - [`flat`]: the flat form `config view` prints ([`Config::to_flat`],
//!   [`Config::from_flat`]) and the `kube-system/fibril-config` ConfigMap.
//! - [`validate`]: cross-key checks ([`Config::validate`]): errors and warnings.
//! - [`store`]: [`store::load`] / [`store::save`] of the ConfigMap in the cluster store.
//! - [`error`]: [`ConfigError`] (always names the key and value), [`ConfigWarning`].
//!
//! Typical use (CLI, agent, operator):
//!
//! ```
//! use fibril_config::Config;
//! let mut c = Config::default();
//! c.apply_sets([
//!     "ipam.mode=cluster-pool",
//!     "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.42.0/28,172.20.84.0/28}",
//!     "ipam.operator.clusterPoolIPv4MaskSize=29",
//! ]).unwrap();
//! c.validate().unwrap();
//! assert!(c.to_flat().contains("cluster-pool-ipv4-cidr                            172.20.42.0/28 172.20.84.0/28\n"));
//! ```

pub mod error;
pub mod flat;
pub mod model;
pub mod set;
pub mod store;
pub mod validate;

pub use error::{ConfigError, ConfigWarning};
pub use flat::{format_flat_line, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};
pub use model::{
    AutoPool, BgpConfig, BgpPeer, Config, IpMasqAgentConfig, IpamConfig, IpamMode,
    PolicyEnforcementMode, RoutingMode, TunnelProtocol, DEFAULT_NON_MASQUERADE_CIDRS,
};
pub use set::parse_set_arg;

/// What [`fuzz_set_args`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuzzOutcome {
    /// The arguments applied and the config validated.
    pub accepted: bool,
    /// False if an accepted config did not survive flat -> parse -> flat, or JSON.
    pub roundtrip_ok: bool,
}

/// Never-panicking fuzz entry point: `data` (lossy UTF-8) is split into lines, each
/// applied as one `--set` argument to the default config; an accepted and valid config
/// must come back unchanged from its flat form, its ConfigMap and its JSON.
pub fn fuzz_set_args(data: &[u8]) -> FuzzOutcome {
    let text = String::from_utf8_lossy(data);
    let mut c = Config::default();
    let mut out = FuzzOutcome {
        accepted: false,
        roundtrip_ok: true,
    };
    if c.apply_sets(text.lines()).is_err() || c.validate().is_err() {
        return out;
    }
    out.accepted = true;
    let flat = c.to_flat();
    out.roundtrip_ok = Config::from_flat(&flat).as_ref() == Ok(&c)
        && Config::from_configmap(&c.to_configmap()).as_ref() == Ok(&c)
        && serde_json::to_string(&c)
            .ok()
            .and_then(|j| serde_json::from_str::<Config>(&j).ok())
            .as_ref()
            == Some(&c);
    out
}
