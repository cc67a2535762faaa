//! Every manifest of the seed documents (tests/fixtures/seeds) parses into
//! the expected kinds and names, and survives the store and output round trips.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use fibril_api::annotations;
use fibril_api::fibril::{NodeAddressType, Protocol};
use fibril_api::{
    parse_manifests, AnyObject, Deployment, FibrilEndpoint, FibrilLocalRedirectPolicy, FibrilNode,
    FibrilPodIPPool, Kind, ObjectKey, Pod, Resource,
};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seeds")
}

fn load(name: &str) -> Vec<AnyObject> {
    let path = fixtures_dir().join(name);
    let text = fs::read_to_string(&path).unwrap();
    parse_manifests(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (canonical kind, namespace as keyed, name)
type Key = (&'static str, Option<&'static str>, &'static str);

/// (file, objects in order)
const EXPECTED: &[(&str, &[Key])] = &[
    (
        "000-webpod-service-curl-pod.yaml",
        &[
            ("Deployment", Some("default"), "webpod"),
            ("Service", Some("default"), "webpod"),
            ("Pod", Some("default"), "curl-pod"),
        ],
    ),
    (
        "001-ip-masq-agent-configmap.yaml",
        &[("ConfigMap", Some("kube-system"), "ip-masq-agent")],
    ),
    ("002-curl-pod.yaml", &[("Pod", Some("default"), "curl-pod")]),
    (
        "003-nodelocaldns.yaml",
        &[
            ("ServiceAccount", Some("kube-system"), "node-local-dns"),
            ("Service", Some("kube-system"), "kube-dns-upstream"),
            ("ConfigMap", Some("kube-system"), "node-local-dns"),
            ("DaemonSet", Some("kube-system"), "node-local-dns"),
            ("Service", Some("kube-system"), "node-local-dns"),
        ],
    ),
    (
        "004-node-local-dns-cilium.yaml",
        &[
            ("ServiceAccount", Some("kube-system"), "node-local-dns"),
            ("Service", Some("kube-system"), "kube-dns-upstream"),
            ("ConfigMap", Some("kube-system"), "node-local-dns"),
            ("DaemonSet", Some("kube-system"), "node-local-dns"),
        ],
    ),
    (
        "005-node-local-dns-lrp.yaml",
        &[(
            "FibrilLocalRedirectPolicy",
            Some("kube-system"),
            "nodelocaldns",
        )],
    ),
    (
        "006-ciliumendpoints.yaml",
        &[
            ("FibrilEndpoint", Some("default"), "curl-pod"),
            ("FibrilEndpoint", Some("default"), "webpod-697b545f57-f68x8"),
            ("FibrilEndpoint", Some("default"), "webpod-697b545f57-hzcjx"),
        ],
    ),
    (
        "110-cilium-ip-pool-vac.yaml",
        &[("FibrilPodIPPool", None, "vac")],
    ),
    (
        "111-cilium-ip-pool-no-engine.yaml",
        &[("FibrilPodIPPool", None, "no-engine")],
    ),
    (
        "112-deploy-nginx-vac-no.yaml",
        &[
            ("Deployment", Some("default"), "nginx-vac"),
            ("Deployment", Some("default"), "nginx-no"),
        ],
    ),
    (
        "113-ciliumnodes-pools-allocated.yaml",
        &[
            ("FibrilNode", None, "cilium-ctr"),
            ("FibrilNode", None, "cilium-w1"),
            ("FibrilNode", None, "cilium-w2"),
        ],
    ),
    (
        "114-ciliumnodes-addresses.yaml",
        &[
            ("FibrilNode", None, "control"),
            ("FibrilNode", None, "node01"),
            ("FibrilNode", None, "node02"),
        ],
    ),
    (
        "120-curl-pod-cilium-ctr.yaml",
        &[("Pod", Some("default"), "curl-pod")],
    ),
    (
        "121-webpod-service.yaml",
        &[
            ("Deployment", Some("default"), "webpod"),
            ("Service", Some("default"), "webpod"),
        ],
    ),
    (
        "200-webpod-service.yaml",
        &[
            ("Deployment", Some("default"), "webpod"),
            ("Service", Some("default"), "webpod"),
        ],
    ),
    ("201-curl-pod.yaml", &[("Pod", Some("default"), "curl-pod")]),
    ("202-curl-pod.yaml", &[("Pod", Some("default"), "curl-pod")]),
    (
        "203-ip-masq-agent-configmap.yaml",
        &[("ConfigMap", Some("kube-system"), "ip-masq-agent")],
    ),
    ("204-curl-pod.yaml", &[("Pod", Some("default"), "curl-pod")]),
    (
        "205-node-local-dns-lrp.yaml",
        &[(
            "FibrilLocalRedirectPolicy",
            Some("kube-system"),
            "nodelocaldns",
        )],
    ),
    (
        "300-webpod-service.yaml",
        &[
            ("Deployment", Some("default"), "webpod"),
            ("Service", Some("default"), "webpod"),
        ],
    ),
    ("301-curl-pod.yaml", &[("Pod", Some("default"), "curl-pod")]),
    (
        "400-ipip-server-client-pods.yaml",
        &[
            ("Pod", Some("default"), "server"),
            ("Pod", Some("default"), "client"),
        ],
    ),
    (
        "401-nginx-test-clusterip.yaml",
        &[
            ("Deployment", Some("default"), "nginx-test"),
            ("Service", Some("default"), "nginx-test"),
        ],
    ),
    (
        "402-clusterip-dnat.yaml",
        &[
            ("Pod", Some("default"), "clusterip-dnat"),
            ("Service", Some("default"), "clusterip-dnat"),
        ],
    ),
    (
        "403-nginx-nodeport-test.yaml",
        &[
            ("Deployment", Some("default"), "nginx-nodeport-test"),
            ("Service", Some("default"), "nginx-nodeport-test"),
        ],
    ),
    (
        "404-nodeport-dnat.yaml",
        &[
            ("Pod", Some("default"), "nodeport-dnat"),
            ("Service", Some("default"), "nodeport-dnat"),
        ],
    ),
    (
        "405-coredns-example.yaml",
        &[
            ("Pod", Some("default"), "coredns-example"),
            ("Service", Some("default"), "coredns-example"),
        ],
    ),
];

#[test]
fn every_fixture_is_listed_and_parses_to_expected_objects() {
    let mut files: Vec<String> = fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let listed: Vec<&str> = EXPECTED.iter().map(|(f, _)| *f).collect();
    assert_eq!(files, listed, "fixture files and EXPECTED differ");

    for (file, want) in EXPECTED {
        let objs = load(file);
        let got: Vec<ObjectKey> = objs.iter().map(AnyObject::key).collect();
        let want: Vec<ObjectKey> = want
            .iter()
            .map(|(k, ns, n)| {
                // ServiceAccount is unmodeled: its key keeps the namespace as written.
                ObjectKey::new(k, *ns, n)
            })
            .collect();
        assert_eq!(got, want, "{file}");
    }
}

#[test]
fn every_fixture_round_trips_through_store_json_and_yaml() {
    for (file, _) in EXPECTED {
        for obj in load(file) {
            let (key, value) = obj.to_store().unwrap();
            assert_eq!(key, obj.key());
            assert_eq!(value["kind"], obj.kind(), "{file}");
            assert_eq!(value["apiVersion"], obj.api_version(), "{file}");
            let back = AnyObject::from_store(&key, value).unwrap();
            assert_eq!(back, obj, "{file}: store round trip");

            let yaml = obj.to_yaml().unwrap();
            assert!(yaml.contains(&format!("kind: {}", obj.kind())), "{yaml}");
            assert!(yaml.contains("apiVersion:"), "{yaml}");
            let reparsed = parse_manifests(&yaml).unwrap();
            assert_eq!(reparsed, vec![obj.clone()], "{file}: yaml round trip");

            let json = obj.to_json_pretty().unwrap();
            let reparsed = parse_manifests(&json).unwrap();
            assert_eq!(reparsed, vec![obj], "{file}: json round trip");
        }
    }
}

#[test]
fn webpod_curl_pod_and_service_fields() {
    let objs = load("000-webpod-service-curl-pod.yaml");
    let deploy: &Deployment = objs[0].downcast_ref().unwrap();
    let spec = &deploy.spec;
    assert_eq!(spec.replicas, Some(2));
    let containers = &spec.template.spec.as_ref().unwrap().containers;
    assert_eq!(containers[0].image.as_deref(), Some("traefik/whoami"));

    let AnyObject::Service(svc) = &objs[1] else {
        panic!("not a service: {:?}", objs[1]);
    };
    let s = svc.spec.as_ref().unwrap();
    assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(s.ports.as_ref().unwrap()[0].port, 80);

    let pod: Pod = objs[2].clone().downcast().unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("k8s-ctr"));
}

#[test]
fn cilium_pod_ip_pools_become_fibril_pools() {
    let vac: FibrilPodIPPool = load("110-cilium-ip-pool-vac.yaml")
        .remove(0)
        .downcast()
        .unwrap();
    let v4 = vac.spec.unwrap().ipv4.unwrap();
    assert_eq!(v4.cidrs, vec!["10.100.0.0/16".parse().unwrap()]);
    assert_eq!(v4.mask_size, 29);

    let objs = load("111-cilium-ip-pool-no-engine.yaml");
    let yaml = objs[0].to_yaml().unwrap();
    assert!(
        yaml.starts_with("apiVersion: fibril.io/v1\nkind: FibrilPodIPPool\n"),
        "{yaml}"
    );
}

#[test]
fn annotated_deployments_select_pools() {
    let objs = load("112-deploy-nginx-vac-no.yaml");
    let pools: Vec<&str> = objs
        .iter()
        .map(|o| {
            let d: &Deployment = o.downcast_ref().unwrap();
            let meta = d.spec.template.metadata.as_ref().unwrap();
            annotations::ip_pool(meta).unwrap()
        })
        .collect();
    assert_eq!(pools, ["vac", "no-engine"]);
}

#[test]
fn local_redirect_policy_fields() {
    let lrp: FibrilLocalRedirectPolicy = load("005-node-local-dns-lrp.yaml")
        .remove(0)
        .downcast()
        .unwrap();
    assert_eq!(
        lrp.key(),
        ObjectKey::new(
            "FibrilLocalRedirectPolicy",
            Some("kube-system"),
            "nodelocaldns"
        )
    );
    let spec = lrp.spec.unwrap();
    let sm = spec.redirect_frontend.service_matcher.unwrap();
    assert_eq!(
        (sm.service_name.as_str(), sm.namespace.as_str()),
        ("kube-dns", "kube-system")
    );
    let be = spec.redirect_backend;
    assert_eq!(
        be.local_endpoint_selector.match_labels.unwrap()["k8s-app"],
        "node-local-dns"
    );
    let ports: Vec<_> = be
        .to_ports
        .iter()
        .map(|p| {
            (
                p.number().unwrap(),
                p.protocol.unwrap(),
                p.name.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (53, Protocol::Udp, "dns".to_string()),
            (53, Protocol::Tcp, "dns-tcp".to_string())
        ]
    );
}

#[test]
fn nodelocaldns_keeps_unmodeled_kinds_as_other() {
    let objs = load("003-nodelocaldns.yaml");
    let AnyObject::Other(sa) = &objs[0] else {
        panic!("{:?}", objs[0]);
    };
    assert_eq!(
        (sa.api_version.as_str(), sa.kind.as_str()),
        ("v1", "ServiceAccount")
    );
    assert_eq!(objs[3].model(), Some(Kind::DaemonSet));
    let AnyObject::ConfigMap(cm) = &objs[2] else {
        panic!("{:?}", objs[2]);
    };
    assert!(cm.data.as_ref().unwrap()["Corefile"].contains("bind 169.254.20.10 10.96.0.10"));
}

#[test]
fn ciliumnodes_carry_pools_addresses_and_health() {
    let nodes: Vec<FibrilNode> = load("113-ciliumnodes-pools-allocated.yaml")
        .into_iter()
        .map(|o| o.downcast().unwrap())
        .collect();
    let w1 = &nodes[1];
    let pools = w1
        .spec
        .as_ref()
        .unwrap()
        .ipam
        .as_ref()
        .unwrap()
        .pools
        .as_ref()
        .unwrap();
    let vac = pools.allocated.iter().find(|a| a.pool == "vac").unwrap();
    assert_eq!(
        vac.cidrs,
        vec![
            "10.100.0.0/29".parse().unwrap(),
            "10.100.0.16/29".parse().unwrap()
        ]
    );

    let nodes: Vec<FibrilNode> = load("114-ciliumnodes-addresses.yaml")
        .into_iter()
        .map(|o| o.downcast().unwrap())
        .collect();
    let node01 = &nodes[1];
    assert_eq!(node01.internal_ip(), Some("10.0.0.11".parse().unwrap()));
    assert_eq!(node01.router_ip(), Some("10.100.1.118".parse().unwrap()));
    assert_eq!(node01.health_ipv4(), Some("10.100.1.119".parse().unwrap()));
    assert_eq!(node01.pod_cidrs(), &["10.100.1.0/24".parse().unwrap()]);
    let addrs = &node01.spec.as_ref().unwrap().addresses;
    assert_eq!(addrs[1].address_type, NodeAddressType::CiliumInternalIP);
}

#[test]
fn ciliumendpoints_carry_identity_and_ip() {
    let eps: Vec<FibrilEndpoint> = load("006-ciliumendpoints.yaml")
        .into_iter()
        .map(|o| o.downcast().unwrap())
        .collect();
    assert_eq!(eps[0].identity_id(), Some(12091));
    assert_eq!(eps[0].ipv4(), Some("10.244.0.22".parse().unwrap()));
    assert_eq!(
        eps[0].status.as_ref().unwrap().state.as_deref(),
        Some("ready")
    );
}

#[test]
fn ip_masq_agent_config_is_readable() {
    let objs = load("001-ip-masq-agent-configmap.yaml");
    let AnyObject::ConfigMap(cm) = &objs[0] else {
        panic!("{:?}", objs[0]);
    };
    let config: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().unwrap()["config"]).unwrap();
    assert_eq!(
        config["nonMasqueradeCIDRs"],
        serde_json::json!(["10.10.1.0/24", "10.10.2.0/24"])
    );
    assert_eq!(cm.metadata.resource_version.as_deref(), Some("30748"));
}
