//! Checks across keys: pool CIDRs against their mask sizes, overlapping pools, routing
//! versus masquerading. Errors block the config; warnings are printed and accepted.

use fibril_ipam::IpamError;
use ipnet::Ipv4Net;

use crate::error::{ConfigError, ConfigWarning};
use crate::model::{Config, IpamMode, RoutingMode, AUTO_POOL_PREFIX};

// Pod ranges overlapping k8sServiceCIDR are not checked: Cilium's defaults do it
// (10.0.0.0/8 and 10.96.0.0/12) and service addresses are translated before routing.

fn list(cidrs: &[Ipv4Net]) -> String {
    format!(
        "{{{}}}",
        cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Validates a CIDR list with its mask size, blaming the mask key when the mask is
/// shorter than a prefix and the list key otherwise.
fn check_pool(
    cidrs_key: &str,
    cidrs: &[Ipv4Net],
    mask_key: &str,
    mask: u8,
) -> Result<(), ConfigError> {
    if cidrs.is_empty() {
        return Err(ConfigError::invalid(
            cidrs_key,
            "{}",
            "at least one CIDR is required",
        ));
    }
    match fibril_ipam::validate_pool_cidrs(cidrs, mask) {
        Ok(()) => Ok(()),
        Err(e @ (IpamError::MaskShorterThanPrefix { .. } | IpamError::InvalidMaskSize { .. })) => {
            Err(ConfigError::invalid(mask_key, &mask.to_string(), e))
        }
        Err(e) => Err(ConfigError::invalid(cidrs_key, &list(cidrs), e)),
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
}

impl Config {
    /// Checks the whole config. Returns warnings for settings that work but are probably
    /// not meant (e.g. `autoDirectNodeRoutes` in tunnel mode), an error naming the key
    /// and value otherwise.
    pub fn validate(&self) -> Result<Vec<ConfigWarning>, ConfigError> {
        let mut warnings = Vec::new();
        let warn = |w: &mut Vec<ConfigWarning>, key: &str, msg: String| {
            w.push(ConfigWarning {
                key: key.to_owned(),
                message: msg,
            })
        };

        check_pool(
            "ipam.operator.clusterPoolIPv4PodCIDRList",
            &self.ipam.cluster_pool_ipv4_pod_cidr_list,
            "ipam.operator.clusterPoolIPv4MaskSize",
            self.ipam.cluster_pool_ipv4_mask_size,
        )?;

        let mut pool_cidrs: Vec<(String, Ipv4Net)> = Vec::new();
        for (name, p) in &self.ipam.auto_create_pools {
            let base = format!("{AUTO_POOL_PREFIX}{name}.ipv4");
            let Some(mask) = p.mask_size else {
                return Err(ConfigError::invalid(
                    &format!("{base}.maskSize"),
                    "",
                    format!("pool {name:?} has cidrs but no maskSize"),
                ));
            };
            check_pool(
                &format!("{base}.cidrs"),
                &p.cidrs,
                &format!("{base}.maskSize"),
                mask,
            )?;
            for c in &p.cidrs {
                if let Some((other, oc)) = pool_cidrs.iter().find(|(_, o)| overlaps(o, c)) {
                    return Err(ConfigError::invalid(
                        &format!("{base}.cidrs"),
                        &c.to_string(),
                        format!("overlaps {oc} of auto-created pool {other:?}"),
                    ));
                }
            }
            pool_cidrs.extend(p.cidrs.iter().map(|c| (name.clone(), *c)));
        }
        if self.ipam.mode == IpamMode::MultiPool
            && !self.ipam.auto_create_pools.contains_key("default")
        {
            warn(
                &mut warnings,
                "ipam.operator.autoCreateCiliumPodIPPools",
                "multi-pool mode without an auto-created \"default\" pool: pods without a \
                 pool annotation get no address until a pool named \"default\" is applied"
                    .into(),
            );
        }

        check_pool(
            "k8sClusterCIDR",
            &[self.k8s_cluster_cidr],
            "k8sNodeCIDRMaskSize",
            self.k8s_node_cidr_mask_size,
        )?;

        if self.routing_mode == RoutingMode::Native
            && self.masquerading()
            && self.ipv4_native_routing_cidr.is_none()
        {
            return Err(ConfigError::Inconsistent {
                key: "ipv4NativeRoutingCIDR".into(),
                value: String::new(),
                reason: "routingMode=native with masquerading (bpf.masquerade=true, \
                         enableIPv4Masquerade=true) needs ipv4NativeRoutingCIDR: the CIDR \
                         pod traffic is routed to without masquerading"
                    .into(),
            });
        }
        if self.routing_mode == RoutingMode::Tunnel && self.auto_direct_node_routes {
            warn(
                &mut warnings,
                "autoDirectNodeRoutes",
                "has no effect with routingMode=tunnel (routes to other nodes' pod CIDRs go \
                 through the tunnel)"
                    .into(),
            );
        }
        if self.tunnel_port != 0 && self.routing_mode == RoutingMode::Native {
            warn(
                &mut warnings,
                "tunnelPort",
                format!("{} is unused with routingMode=native", self.tunnel_port),
            );
        }
        if self.ip_masq_agent.enabled && !self.masquerading() {
            warn(
                &mut warnings,
                "ipMasqAgent.enabled",
                "has no effect without bpf.masquerade=true".into(),
            );
        }

        for (i, c) in self.load_balancer_ip_pool.iter().enumerate() {
            if let Some(o) = self.load_balancer_ip_pool[..i]
                .iter()
                .find(|o| overlaps(o, c))
            {
                return Err(ConfigError::invalid(
                    "loadBalancer.ipPool",
                    &c.to_string(),
                    format!("overlaps {o}"),
                ));
            }
            if overlaps(c, &self.k8s_service_cidr) {
                return Err(ConfigError::invalid(
                    "loadBalancer.ipPool",
                    &c.to_string(),
                    format!("overlaps k8sServiceCIDR {}", self.k8s_service_cidr),
                ));
            }
        }
        if self.install_no_conntrack_iptables_rules {
            warn(
                &mut warnings,
                "installNoConntrackIptablesRules",
                "has no effect: Fibril installs no iptables rules".into(),
            );
        }
        if self.bgp.enabled && self.bgp.peers.is_empty() {
            warn(
                &mut warnings,
                "bgp.enabled",
                "no bgp.peers configured: nothing will be advertised".into(),
            );
        }
        if self.local_redirect_policy && !self.kube_proxy_replacement {
            warn(
                &mut warnings,
                "localRedirectPolicy",
                "Cilium requires kubeProxyReplacement=true for Local Redirect Policy".into(),
            );
        }
        Ok(warnings)
    }
}
