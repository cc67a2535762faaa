//! Full `kubectl get ... -o yaml` shapes of the Cilium kinds (with the fields
//! Fibril does not model: cloud IPAM sections, ownerReferences, ...) parse
//! into the Fibril kinds.

use fibril_api::{parse_manifests, FibrilEndpoint, FibrilNode, ObjectKey};

const CILIUMNODE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNode
metadata:
  creationTimestamp: "2025-07-27T07:32:14Z"
  generation: 3
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: k8s-w1
    kubernetes.io/os: linux
  name: k8s-w1
  ownerReferences:
  - apiVersion: v1
    kind: Node
    name: k8s-w1
    uid: 6d3e9d0f-6f21-4a4e-9a0e-2f1e8c1d9a11
  resourceVersion: "3320"
  uid: 2f4f0c1e-8a53-4c1a-9d4b-7d2f3b8b9c10
spec:
  addresses:
  - ip: 192.168.10.101
    type: InternalIP
  - ip: 172.20.1.163
    type: CiliumInternalIP
  alibaba-cloud: {}
  azure: {}
  bootid: 8b1f2a8e-1a4c-4f0e-9f5e-3b2c1d0e9f8a
  encryption: {}
  eni: {}
  health:
    ipv4: 172.20.1.191
  ingress: {}
  ipam:
    podCIDRs:
    - 172.20.1.0/24
    pools: {}
status:
  alibaba-cloud: {}
  azure: {}
  eni: {}
  ipam:
    operator-status: {}
"#;

const CILIUMENDPOINT: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumEndpoint
metadata:
  name: curl-pod
  namespace: default
  ownerReferences:
  - apiVersion: v1
    kind: Pod
    name: curl-pod
    uid: 0b4f2f4e-3a2b-4c5d-8e9f-0a1b2c3d4e5f
status:
  encryption: {}
  external-identifiers:
    cni-attachment-id: 1b2c3d:eth0
    container-id: 1b2c3d
    k8s-namespace: default
    k8s-pod-name: curl-pod
    pod-name: default/curl-pod
  id: 1423
  identity:
    id: 12091
    labels:
    - k8s:app=curl
    - k8s:io.kubernetes.pod.namespace=default
  named-ports: []
  networking:
    addressing:
    - ipv4: 10.244.0.22
    node: 192.168.10.100
  state: ready
"#;

#[test]
fn full_ciliumnode_output_parses() {
    let objs = parse_manifests(CILIUMNODE).unwrap();
    assert_eq!(objs[0].key(), ObjectKey::new("FibrilNode", None, "k8s-w1"));
    let node: &FibrilNode = objs[0].downcast_ref().unwrap();
    assert_eq!(node.router_ip(), Some("172.20.1.163".parse().unwrap()));
    assert_eq!(node.internal_ip(), Some("192.168.10.101".parse().unwrap()));
    assert_eq!(node.health_ipv4(), Some("172.20.1.191".parse().unwrap()));
    assert_eq!(node.pod_cidrs(), &["172.20.1.0/24".parse().unwrap()]);
    let yaml = objs[0].to_yaml().unwrap();
    assert!(
        yaml.starts_with("apiVersion: fibril.io/v1\nkind: FibrilNode\n"),
        "{yaml}"
    );
}

#[test]
fn full_ciliumendpoint_output_parses() {
    let objs = parse_manifests(CILIUMENDPOINT).unwrap();
    let ep: &FibrilEndpoint = objs[0].downcast_ref().unwrap();
    assert_eq!(ep.identity_id(), Some(12091));
    assert_eq!(ep.ipv4(), Some("10.244.0.22".parse().unwrap()));
    let st = ep.status.as_ref().unwrap();
    assert_eq!(
        st.networking.as_ref().unwrap().node.as_deref(),
        Some("192.168.10.100")
    );
    assert_eq!(
        st.external_identifiers
            .as_ref()
            .unwrap()
            .pod_name
            .as_deref(),
        Some("default/curl-pod")
    );
}
