//! Config behaviour as the CLI and agents see it: `--set`, flat form, validation.

#![allow(clippy::unwrap_used)]

use fibril_config::{Config, ConfigError, IpamMode, RoutingMode, TunnelProtocol};

fn with(sets: &[&str]) -> Config {
    let mut c = Config::default();
    c.apply_sets(sets).unwrap();
    c
}

fn err(sets: &[&str]) -> ConfigError {
    let mut c = Config::default();
    match c.apply_sets(sets) {
        Err(e) => e,
        Ok(()) => c.validate().unwrap_err(),
    }
}

#[test]
fn defaults_are_ciliums() {
    let c = Config::default();
    assert_eq!(c.ipam.mode, IpamMode::ClusterPool);
    assert_eq!(
        c.get("ipam.operator.clusterPoolIPv4PodCIDRList")
            .unwrap()
            .unwrap(),
        "10.0.0.0/8"
    );
    assert_eq!(c.ipam.cluster_pool_ipv4_mask_size, 24);
    assert_eq!(c.routing_mode, RoutingMode::Tunnel);
    assert_eq!(c.effective_tunnel_port(), 8472);
    assert!(c.validate().unwrap().is_empty());
    let g = with(&["tunnelProtocol=geneve"]);
    assert_eq!(g.tunnel_protocol, TunnelProtocol::Geneve);
    assert_eq!(g.effective_tunnel_port(), 6081);
    assert_eq!(
        with(&["tunnelProtocol=geneve", "tunnelPort=7000"]).effective_tunnel_port(),
        7000
    );
}

#[test]
fn s1_step1_and_config_view() {
    let c = with(&[
        "ipam.mode=kubernetes",
        "routingMode=native",
        "autoDirectNodeRoutes=true",
        "ipv4NativeRoutingCIDR=10.244.0.0/16",
        "bpf.masquerade=true",
    ]);
    assert!(c.validate().unwrap().is_empty());
    let flat = c.to_flat();
    let ipam: Vec<&str> = flat.lines().filter(|l| l.starts_with("ipam")).collect();
    assert_eq!(ipam, vec![format!("{:<50}kubernetes", "ipam")]);
    assert!(
        flat.contains("\nrouting-mode                                      native\n"),
        "{flat}"
    );
    assert!(flat.contains("\nipv4-native-routing-cidr                          10.244.0.0/16\n"));
    assert!(flat.contains("\nenable-bpf-masquerade                             true\n"));
    assert!(
        flat.starts_with("auto-direct-node-routes                           true\n"),
        "{flat}"
    );
    // Sorted keys.
    let keys: Vec<&str> = flat
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(Config::from_flat(&flat).unwrap(), c);
}

#[test]
fn s1_step3_and_6() {
    let mut c = with(&[
        "ipam.mode=kubernetes",
        "routingMode=native",
        "ipv4NativeRoutingCIDR=10.244.0.0/16",
        "bpf.masquerade=true",
    ]);
    c.apply_sets([
        "ipam.mode=cluster-pool",
        "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}",
        "ipv4NativeRoutingCIDR=172.20.0.0/16",
    ])
    .unwrap();
    c.validate().unwrap();
    assert!(c
        .to_flat()
        .contains(&format!("{:<50}172.20.0.0/16\n", "cluster-pool-ipv4-cidr")));
    // Helm quoting as in the seed: '{10.10.1.0/24,10.10.2.0/24}' after the shell.
    c.apply_sets([
        "ipMasqAgent.enabled=true",
        "ipMasqAgent.config.nonMasqueradeCIDRs={10.10.1.0/24,10.10.2.0/24}",
    ])
    .unwrap();
    let got: Vec<String> = c
        .non_masquerade_cidrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["169.254.0.0/16", "10.10.1.0/24", "10.10.2.0/24"]);
    assert_eq!(
        c.ip_masq_agent_config_json().unwrap(),
        r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"]}"#
    );
    assert!(c
        .to_flat()
        .contains(&format!("{:<50}true\n", "enable-ip-masq-agent")));
    // Default list when unset; link-local kept when masqLinkLocal.
    let d = with(&[
        "ipMasqAgent.enabled=true",
        "ipMasqAgent.config.masqLinkLocal=true",
    ]);
    assert_eq!(d.non_masquerade_cidrs().len(), 11);
    assert_eq!(d.non_masquerade_cidrs()[10].to_string(), "240.0.0.0/4");
    assert!(d.ip_masq_agent_config_json().is_none());
}

#[test]
fn s3_cluster_pool_and_multi_pool_flat_forms() {
    let c = with(&[
        "ipam.mode=cluster-pool",
        "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.42.0/28,172.20.84.0/28}",
        "ipam.operator.clusterPoolIPv4MaskSize=29",
    ]);
    c.validate().unwrap();
    let lines: Vec<&str> = c
        .to_flat()
        .lines()
        .filter(|l| l.contains("cluster-pool"))
        .map(|l| l.to_string().leak() as &str)
        .collect();
    assert_eq!(
        lines,
        vec![
            "cluster-pool-ipv4-cidr                            172.20.42.0/28 172.20.84.0/28",
            "cluster-pool-ipv4-mask-size                       29",
            "ipam                                              cluster-pool",
        ]
    );
    let mut grown = c.clone();
    grown
        .apply_set(
            "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.42.0/28,172.20.84.0/28,10.0.0.0/28}",
        )
        .unwrap();
    grown.validate().unwrap();
    assert!(grown
        .to_flat()
        .contains("172.20.42.0/28 172.20.84.0/28 10.0.0.0/28\n"));

    let m = with(&[
        "ipam.mode=multi-pool",
        "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs=172.20.0.0/16",
        "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.maskSize=28",
    ]);
    assert!(m.validate().unwrap().is_empty());
    assert!(m.to_flat().contains(&format!(
        "{:<50}default=ipv4-cidrs:172.20.0.0/16;ipv4-mask-size:28\n",
        "auto-create-cilium-pod-ip-pools"
    )));
    assert_eq!(Config::from_flat(&m.to_flat()).unwrap(), m);
    let specs = m.auto_create_pool_specs();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].mask_size, 28);
    // multi-pool without default pool: warning only.
    let w = with(&["ipam.mode=multi-pool"]).validate().unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
}

#[test]
fn errors_name_key_and_value() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["ipam.mode=host"], "ipam.mode", "host"),
        (&["routingMode=vxlan"], "routingMode", "vxlan"),
        (&["tunnelProtocol=gre"], "tunnelProtocol", "gre"),
        (&["tunnelPort=70000"], "tunnelPort", "70000"),
        (&["tunnelPort=-1"], "tunnelPort", "-1"),
        (&["bpf.masquerade=yes"], "bpf.masquerade", "yes"),
        (
            &["ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/33}"],
            "ipam.operator.clusterPoolIPv4PodCIDRList",
            "172.20.0.0/33",
        ),
        (
            &["ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.1/16}"],
            "ipam.operator.clusterPoolIPv4PodCIDRList",
            "172.20.0.1/16",
        ),
        (
            &[
                "ipam.operator.clusterPoolIPv4PodCIDRList={172.20.0.0/16}",
                "ipam.operator.clusterPoolIPv4MaskSize=12",
            ],
            "ipam.operator.clusterPoolIPv4MaskSize",
            "12",
        ),
        (
            &["ipam.operator.clusterPoolIPv4PodCIDRList={10.0.0.0/16,10.0.1.0/24}"],
            "ipam.operator.clusterPoolIPv4PodCIDRList",
            "10.0.1.0/24",
        ),
        (
            &["ipv4NativeRoutingCIDR=banana"],
            "ipv4NativeRoutingCIDR",
            "banana",
        ),
        (
            &["ipam.operator.autoCreateCiliumPodIPPools.vac.ipv4.cidrs=10.100.0.0/16"],
            "ipam.operator.autoCreateCiliumPodIPPools.vac.ipv4.maskSize",
            "",
        ),
        (
            &["ipam.operator.autoCreateCiliumPodIPPools.Bad_Name.ipv4.cidrs=10.100.0.0/16"],
            "ipam.operator.autoCreateCiliumPodIPPools.Bad_Name.ipv4.cidrs",
            "Bad_Name",
        ),
        (
            &[
                "ipam.operator.autoCreateCiliumPodIPPools.a.ipv4.cidrs=10.1.0.0/16",
                "ipam.operator.autoCreateCiliumPodIPPools.a.ipv4.maskSize=8",
            ],
            "ipam.operator.autoCreateCiliumPodIPPools.a.ipv4.maskSize",
            "8",
        ),
        (
            &["policyEnforcementMode=sometimes"],
            "policyEnforcementMode",
            "sometimes",
        ),
        (
            &["bgp.peers={192.168.10.200}"],
            "bgp.peers",
            "192.168.10.200",
        ),
        (
            &["loadBalancer.ipPool={10.96.1.0/24}"],
            "loadBalancer.ipPool",
            "10.96.1.0/24",
        ),
    ];
    for (sets, key, value) in cases {
        let e = err(sets);
        let msg = e.to_string();
        assert_eq!(e.key(), Some(*key), "{sets:?}: {msg}");
        assert!(msg.contains(key) && msg.contains(value), "{sets:?}: {msg}");
    }
}

#[test]
fn unknown_keys_are_rejected_with_a_hint() {
    let e = err(&["routingmode=native"]);
    assert!(matches!(e, ConfigError::UnknownKey { .. }));
    assert!(
        e.to_string().contains("did you mean \"routingMode\""),
        "{e}"
    );
    let e = err(&["bpf.masqerade=true"]);
    assert!(
        e.to_string().contains("did you mean \"bpf.masquerade\""),
        "{e}"
    );
    let e = err(&["nothing.like.this=1"]);
    assert_eq!(e.to_string(), "unknown config key \"nothing.like.this\"");
    let e = Config::from_flat("ipam  cluster-pool\nrouting-mod native\n").unwrap_err();
    assert!(e.to_string().contains("\"routing-mode\""), "{e}");
    let e = Config::from_flat("ipam  cluster-pool\nipam kubernetes\n").unwrap_err();
    assert!(matches!(e, ConfigError::FlatSyntax { line: 2, .. }), "{e}");
    let e = Config::from_flat("tunnel-port 99999\n").unwrap_err();
    assert!(
        e.to_string().contains("tunnel-port") && e.to_string().contains("99999"),
        "{e}"
    );
}

#[test]
fn failed_sets_change_nothing() {
    let mut c = Config::default();
    let before = c.clone();
    assert!(c
        .apply_sets(["routingMode=native", "tunnelPort=x"])
        .is_err());
    assert!(c
        .apply_set("routingMode=native,bpf.masquerade=maybe")
        .is_err());
    assert_eq!(c, before);
}

#[test]
fn cross_field_checks() {
    let e = err(&["routingMode=native", "bpf.masquerade=true"]);
    assert!(matches!(e, ConfigError::Inconsistent { .. }), "{e}");
    assert!(e.to_string().contains("ipv4NativeRoutingCIDR"), "{e}");
    // Without masquerading native routing needs no CIDR.
    with(&["routingMode=native"]).validate().unwrap();
    with(&[
        "routingMode=native",
        "bpf.masquerade=true",
        "enableIPv4Masquerade=false",
    ])
    .validate()
    .unwrap();
    let w = with(&["autoDirectNodeRoutes=true"]).validate().unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].key, "autoDirectNodeRoutes");
}

#[test]
fn several_pairs_per_argument_and_bgp() {
    let c = with(&[
        "bgp.enabled=true,bgp.localASN=65010,bgp.peers={192.168.10.200:65000}",
        "routingMode=native",
    ]);
    assert!(c.bgp.enabled);
    assert_eq!(c.bgp.local_asn, 65010);
    assert_eq!(c.bgp.peers[0].to_string(), "192.168.10.200:65000");
    c.validate().unwrap();
    assert_eq!(Config::from_flat(&c.to_flat()).unwrap(), c);
}

#[test]
fn configmap_and_json_round_trip() {
    let c = with(&[
        "ipam.mode=multi-pool",
        "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidrs={172.20.0.0/16}",
        "ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.maskSize=28",
        "ipam.operator.autoCreateCiliumPodIPPools.other.ipv4.cidrs={10.50.0.0/16,10.51.0.0/16}",
        "ipam.operator.autoCreateCiliumPodIPPools.other.ipv4.maskSize=27",
        "loadBalancer.ipPool={192.168.10.240/28}",
        "kubeProxyReplacement=true",
        "localRedirectPolicy=true",
    ]);
    c.validate().unwrap();
    let cm = c.to_configmap();
    assert_eq!(cm.metadata.name.as_deref(), Some("fibril-config"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some("kube-system"));
    let data = cm.data.as_ref().unwrap();
    assert_eq!(data["ipam"], "multi-pool");
    assert_eq!(data["kube-proxy-replacement"], "true");
    assert_eq!(Config::from_configmap(&cm).unwrap(), c);
    let j = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&j).unwrap(), c);
    assert!(serde_json::from_str::<Config>(r#"{"bogus":1}"#).is_err());
}

#[tokio::test]
async fn store_load_save() {
    let store = fibril_store::MemoryStore::new();
    assert!(fibril_config::store::load(&store).await.unwrap().is_none());
    let c = with(&["ipam.mode=kubernetes"]);
    fibril_config::store::save(&store, &c).await.unwrap();
    let (got, rev) = fibril_config::store::load(&store).await.unwrap().unwrap();
    assert_eq!(got, c);
    assert!(rev > 0);
}

#[test]
fn seed_003_helm_sets_apply_unchanged() {
    // helm upgrade ... --set routingMode=tunnel --set tunnelProtocol=vxlan
    //   --set autoDirectNodeRoutes=false --set installNoConntrackIptablesRules=false
    let c = with(&[
        "routingMode=tunnel",
        "tunnelProtocol=vxlan",
        "autoDirectNodeRoutes=false",
        "installNoConntrackIptablesRules=false",
    ]);
    assert!(c.validate().unwrap().is_empty());
    // Values typed with quotes (no shell in between) lose them.
    let q = with(&[
        "ipam.mode=\"cluster-pool\"",
        "ipam.operator.clusterPoolIPv4PodCIDRList=\"{172.20.0.0/16}\"",
        "ipMasqAgent.config.nonMasqueradeCIDRs='{10.10.1.0/24,10.10.2.0/24}'",
    ]);
    assert_eq!(q.ipam.mode, IpamMode::ClusterPool);
    assert_eq!(q.ipam.cluster_pool_ipv4_pod_cidr_list.len(), 1);
    assert_eq!(
        q.ip_masq_agent.non_masquerade_cidrs.as_ref().unwrap().len(),
        2
    );
}

#[test]
fn print_default_config_view() {
    // Shows the flat form in test output (`cargo test -p fibril-config -- --nocapture`).
    let c = Config::default();
    print!("{}", c.to_flat());
    assert_eq!(c.to_flat().lines().count(), c.to_flat_map().len());
}
