//! Helpers for the agent's side of the FibrilNode contract (see the crate docs): write a
//! [`NodePoolRequest`] into `spec.ipam.pools`, read what the operator allocated and
//! whether it reported a problem.

use std::collections::BTreeMap;

use fibril_api::fibril::{
    FibrilNodeSpec, IpamPoolDemand, IpamPoolRequest, IpamPoolSpec, NodeIpamSpec,
};
use fibril_api::FibrilNode;
use fibril_ipam::NodePoolRequest;
use ipnet::{IpNet, Ipv4Net};

pub use crate::ipam::{allocated_pools, requested_ipv4};

/// Pool name of the cluster-pool request entry (`spec.ipam.pools.requested`).
pub const CLUSTER_POOL_REQUEST: &str = fibril_ipam::CLUSTER_POOL_NAME;

/// Writes `req` into the node: `requested` replaced (pools sorted by name; counts above
/// `u32::MAX` saturate), `released` blocks dropped from `allocated`. Returns whether the
/// node changed (write it back at the revision read only then).
pub fn apply_pool_request(node: &mut FibrilNode, req: &NodePoolRequest) -> bool {
    let before = node.spec.clone();
    let pools = node
        .spec
        .get_or_insert_with(FibrilNodeSpec::default)
        .ipam
        .get_or_insert_with(NodeIpamSpec::default)
        .pools
        .get_or_insert_with(IpamPoolSpec::default);
    pools.requested = req
        .requested
        .iter()
        .map(|(pool, n)| IpamPoolRequest {
            pool: pool.clone(),
            needed: IpamPoolDemand {
                ipv4_addrs: Some(u32::try_from(*n).unwrap_or(u32::MAX)),
                ipv6_addrs: None,
            },
        })
        .collect();
    for (pool, blocks) in &req.released {
        for a in pools.allocated.iter_mut().filter(|a| &a.pool == pool) {
            a.cidrs.retain(|c| match c {
                IpNet::V4(c) => !blocks.contains(c),
                IpNet::V6(_) => true,
            });
        }
    }
    pools.allocated.retain(|a| !a.cidrs.is_empty());
    node.spec != before
}

/// Cluster-pool: asks for `needed` addresses in total (`used + pending` once the node
/// ran out), or withdraws the request with `None`. Returns whether the node changed.
pub fn request_cluster_pool(node: &mut FibrilNode, needed: Option<u64>) -> bool {
    let before = node.spec.clone();
    let pools = node
        .spec
        .get_or_insert_with(FibrilNodeSpec::default)
        .ipam
        .get_or_insert_with(NodeIpamSpec::default)
        .pools
        .get_or_insert_with(IpamPoolSpec::default);
    pools.requested.retain(|r| r.pool != CLUSTER_POOL_REQUEST);
    if let Some(n) = needed {
        pools.requested.push(IpamPoolRequest {
            pool: CLUSTER_POOL_REQUEST.into(),
            needed: IpamPoolDemand {
                ipv4_addrs: Some(u32::try_from(n).unwrap_or(u32::MAX)),
                ipv6_addrs: None,
            },
        });
    }
    node.spec != before
}

/// The operator's problem report (`status.ipam.operator-status.error`).
pub fn operator_error(node: &FibrilNode) -> Option<&str> {
    node.status
        .as_ref()?
        .ipam
        .as_ref()?
        .operator_status
        .as_ref()?
        .error
        .as_deref()
}

/// `spec.ipam.podCIDRs`, IPv4 only.
pub fn pod_cidrs_v4(node: &FibrilNode) -> Vec<Ipv4Net> {
    node.pod_cidrs()
        .iter()
        .filter_map(|c| match c {
            IpNet::V4(c) => Some(*c),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// The multi-pool `allocated` map in the form [`fibril_ipam::MultiPoolNode::sync`] takes.
pub fn allocated_for_sync(node: &FibrilNode) -> BTreeMap<String, Vec<Ipv4Net>> {
    allocated_pools(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_release_round_trip() {
        let mut n = FibrilNode::new("w1", FibrilNodeSpec::default());
        let mut req = NodePoolRequest::default();
        req.requested.insert("vac".into(), 10);
        req.requested.insert("default".into(), 16);
        assert!(apply_pool_request(&mut n, &req));
        assert!(!apply_pool_request(&mut n, &req));
        assert_eq!(requested_ipv4(&n, "vac"), Some(10));
        let pools = n
            .spec
            .as_mut()
            .unwrap()
            .ipam
            .as_mut()
            .unwrap()
            .pools
            .as_mut()
            .unwrap();
        pools
            .allocated
            .push(fibril_api::fibril::IpamPoolAllocation {
                pool: "vac".into(),
                cidrs: vec![
                    "10.100.0.0/29".parse().unwrap(),
                    "10.100.0.16/29".parse().unwrap(),
                ],
            });
        req.released
            .insert("vac".into(), vec!["10.100.0.16/29".parse().unwrap()]);
        assert!(apply_pool_request(&mut n, &req));
        assert_eq!(
            allocated_for_sync(&n)["vac"],
            vec!["10.100.0.0/29".parse::<Ipv4Net>().unwrap()]
        );
        assert!(request_cluster_pool(&mut n, Some(7)));
        assert_eq!(requested_ipv4(&n, CLUSTER_POOL_REQUEST), Some(7));
        assert!(request_cluster_pool(&mut n, None));
        assert_eq!(requested_ipv4(&n, CLUSTER_POOL_REQUEST), None);
        assert_eq!(requested_ipv4(&n, "vac"), Some(10));
        assert!(operator_error(&n).is_none());
        assert!(pod_cidrs_v4(&n).is_empty());
    }
}
