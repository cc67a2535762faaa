//! Manifest errors name the document (1-based), the kind/name and the field.

use fibril_api::{
    parse_manifests, AnyObject, FibrilIdentity, FibrilNode, Kind, ManifestError,
    ManifestErrorReason, ObjectKey, Resource,
};

fn err(text: &str) -> ManifestError {
    match parse_manifests(text) {
        Ok(objs) => panic!("expected an error, parsed {objs:?}"),
        Err(e) => e,
    }
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ok\n";

#[test]
fn bad_field_names_document_kind_name_and_path() {
    let text = format!(
        "{POD}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: webpod\n\
         spec:\n  replicas: two\n  selector: {{}}\n  template: {{}}\n"
    );
    let e = err(&text);
    assert_eq!(e.document, 2);
    assert_eq!(e.kind.as_deref(), Some("Deployment"));
    assert_eq!(e.name.as_deref(), Some("webpod"));
    assert_eq!(e.field.as_deref(), Some("spec.replicas"));
    assert_eq!(e.reason, ManifestErrorReason::InvalidField);
    let msg = e.to_string();
    assert!(
        msg.starts_with("document 2 (Deployment \"webpod\"), field spec.replicas: invalid type"),
        "{msg}"
    );
}

#[test]
fn nested_field_path_in_containers() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  \
                - name: c\n    ports:\n    - containerPort: http\n";
    let e = err(text);
    assert_eq!(
        e.field.as_deref(),
        Some("spec.containers[0].ports[0].containerPort")
    );
    assert_eq!(e.document, 1);
}

#[test]
fn alias_kind_errors_keep_the_written_kind() {
    let text = format!(
        "{POD}---\n{POD}---\napiVersion: cilium.io/v2alpha1\nkind: CiliumPodIPPool\n\
         metadata:\n  name: vac\nspec:\n  ipv4:\n    cidrs:\n      - 10.100.0.0/33\n    maskSize: 29\n"
    );
    let e = err(&text);
    assert_eq!(e.document, 3);
    assert_eq!(e.kind.as_deref(), Some("CiliumPodIPPool"));
    assert_eq!(e.field.as_deref(), Some("spec.ipv4.cidrs[0]"));
    assert!(e.to_string().contains("CiliumPodIPPool \"vac\""), "{e}");
}

#[test]
fn missing_api_version_and_kind() {
    let e = err("kind: Pod\nmetadata:\n  name: x\n");
    assert_eq!(e.reason, ManifestErrorReason::MissingApiVersion);
    assert_eq!(
        e.to_string(),
        "document 1 (Pod \"x\"), field apiVersion: missing apiVersion"
    );

    let e = err(&format!("{POD}---\napiVersion: v1\nmetadata:\n  name: x\n"));
    assert_eq!(e.reason, ManifestErrorReason::MissingKind);
    assert_eq!(e.document, 2);
    assert!(e.to_string().contains("missing kind"), "{e}");

    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {}\n");
    assert_eq!(e.reason, ManifestErrorReason::MissingName);
    assert_eq!(e.field.as_deref(), Some("metadata.name"));

    let e = err("apiVersion: 1\nkind: Pod\nmetadata:\n  name: x\n");
    assert_eq!(e.field.as_deref(), Some("apiVersion"));
}

#[test]
fn unknown_api_version_for_known_kind() {
    let e = err("apiVersion: v1\nkind: Deployment\nmetadata:\n  name: web\n");
    assert_eq!(e.reason, ManifestErrorReason::UnknownApiVersion);
    assert_eq!(
        e.to_string(),
        "document 1 (Deployment \"web\"), field apiVersion: unknown apiVersion \"v1\" for kind \
         Deployment (expected apps/v1)"
    );
    let e = err("apiVersion: cilium.io/v1\nkind: CiliumNode\nmetadata:\n  name: n\n");
    assert_eq!(e.reason, ManifestErrorReason::UnknownApiVersion);
    assert!(
        e.to_string().contains("cilium.io/v2 or cilium.io/v2alpha1"),
        "{e}"
    );
    let e = err("apiVersion: fibril.io/v1\nkind: FibrilWidget\nmetadata:\n  name: n\n");
    assert_eq!(e.reason, ManifestErrorReason::UnknownKind);
    assert!(e.to_string().contains("FibrilWidget"), "{e}");
}

#[test]
fn syntax_errors_and_non_objects_name_the_document() {
    let e = err(&format!("{POD}---\nkey: [unclosed\n"));
    assert_eq!(e.reason, ManifestErrorReason::Syntax);
    assert_eq!(e.document, 2);
    let e = err(&format!("{POD}---\n- a\n- b\n"));
    assert_eq!(e.reason, ManifestErrorReason::NotAnObject);
    assert_eq!(e.document, 2);
    assert!(e.to_string().contains("found a sequence"), "{e}");
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let text = format!("---\n# only a comment\n---\n{POD}---\n---\n{POD}");
    let objs = parse_manifests(&text).unwrap();
    assert_eq!(objs.len(), 2);
    assert!(parse_manifests("").unwrap().is_empty());
    assert!(parse_manifests("---\n---\n").unwrap().is_empty());
    let e = err(&format!(
        "---\n{POD}---\n\n---\napiVersion: v1\nkind: Pod\n"
    ));
    assert_eq!(e.document, 3, "{e}");
}

#[test]
fn local_redirect_policy_needs_exactly_one_frontend() {
    let text = "apiVersion: cilium.io/v2\nkind: CiliumLocalRedirectPolicy\nmetadata:\n  name: l\n\
                spec:\n  redirectFrontend: {}\n  redirectBackend:\n    localEndpointSelector: {}\n    \
                toPorts:\n    - port: \"53\"\n";
    let e = err(text);
    assert_eq!(e.field.as_deref(), Some("spec.redirectFrontend"));
    assert!(
        e.to_string()
            .contains("exactly one of serviceMatcher or addressMatcher"),
        "{e}"
    );

    let text = text.replace("redirectFrontend: {}", "redirectFrontend:\n    addressMatcher:\n      ip: 169.254.169.254\n      toPorts:\n      - port: \"80\"").replace("\"53\"", "\"99999\"");
    let e = err(&text);
    assert_eq!(
        e.field.as_deref(),
        Some("spec.redirectBackend.toPorts[0].port")
    );
}

#[test]
fn identity_name_must_be_numeric() {
    let e = err("apiVersion: cilium.io/v2\nkind: CiliumIdentity\nmetadata:\n  name: abc\n");
    assert_eq!(e.field.as_deref(), Some("metadata.name"));
    let objs = parse_manifests(
        "apiVersion: cilium.io/v2\nkind: CiliumIdentity\nmetadata:\n  name: \"12091\"\n\
         security-labels:\n  k8s:app: curl\n  k8s:io.kubernetes.pod.namespace: default\n",
    )
    .unwrap();
    let id: &FibrilIdentity = objs[0].downcast_ref().unwrap();
    assert_eq!(id.id(), Some(12091));
    assert_eq!(id.security_labels["k8s:app"], "curl");
    assert_eq!(id.key(), ObjectKey::new("FibrilIdentity", None, "12091"));
    let yaml = objs[0].to_yaml().unwrap();
    assert!(yaml.contains("security-labels:"), "{yaml}");
}

#[test]
fn network_policy_parses_and_validates() {
    let cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: allow-curl\n\
               spec:\n  endpointSelector:\n    matchLabels:\n      app: webpod\n  ingress:\n  \
               - fromEndpoints:\n    - matchLabels:\n        app: curl\n    toPorts:\n    - ports:\n      \
               - port: \"80\"\n        protocol: TCP\n  egress:\n  - toEndpoints:\n    - {}\n    toCIDR:\n    - 10.10.0.0/16\n";
    let objs = parse_manifests(cnp).unwrap();
    assert_eq!(objs[0].model(), Some(Kind::FibrilNetworkPolicy));
    assert_eq!(
        objs[0].key(),
        ObjectKey::new("FibrilNetworkPolicy", Some("default"), "allow-curl")
    );
    let e = err(&cnp.replace("\"80\"", "\"http\""));
    assert_eq!(
        e.field.as_deref(),
        Some("spec.ingress[0].toPorts[0].ports[0].port")
    );
    let e = err(&cnp.replace("endpointSelector", "selector"));
    assert_eq!(e.field.as_deref(), Some("spec"));

    let netpol = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\n  namespace: prod\nspec:\n  podSelector: {}\n";
    let objs = parse_manifests(netpol).unwrap();
    assert_eq!(
        objs[0].key(),
        ObjectKey::new("NetworkPolicy", Some("prod"), "deny")
    );
}

#[test]
fn fibril_kinds_serialize_with_api_version_and_kind() {
    let node = FibrilNode::new("k8s-w1", Default::default());
    let v = serde_json::to_value(&node).unwrap();
    assert_eq!(v["apiVersion"], "fibril.io/v1");
    assert_eq!(v["kind"], "FibrilNode");
    assert_eq!(v["metadata"]["name"], "k8s-w1");
    let back = AnyObject::from_json_value(v).unwrap();
    assert_eq!(back, AnyObject::FibrilNode(node));
}

#[test]
fn ciliumnode_status_fields_round_trip() {
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNode\nmetadata:\n  name: k8s-w1\nspec:\n  \
                ipam:\n    pools:\n      requested:\n      - pool: default\n        needed:\n          \
                ipv4-addrs: 16\n    pre-allocate: 8\nstatus:\n  ipam:\n    operator-status:\n      \
                error: \"pool default: range is full\"\n    used:\n      172.20.0.5:\n        owner: default/curl-pod\n";
    let objs = parse_manifests(text).unwrap();
    let node: &FibrilNode = objs[0].downcast_ref().unwrap();
    let ipam = node.spec.as_ref().unwrap().ipam.as_ref().unwrap();
    assert_eq!(
        ipam.pools.as_ref().unwrap().requested[0].needed.ipv4_addrs,
        Some(16)
    );
    assert_eq!(ipam.pre_allocate, Some(8));
    let st = node.status.as_ref().unwrap().ipam.as_ref().unwrap();
    assert!(st
        .operator_status
        .as_ref()
        .unwrap()
        .error
        .as_ref()
        .unwrap()
        .contains("range is full"));
    let yaml = objs[0].to_yaml().unwrap();
    for needle in [
        "ipv4-addrs: 16",
        "pre-allocate: 8",
        "operator-status:",
        "172.20.0.5:",
    ] {
        assert!(yaml.contains(needle), "{needle} missing in\n{yaml}");
    }
    assert_eq!(parse_manifests(&yaml).unwrap(), objs);
}

#[test]
fn list_output_wraps_items() {
    let objs = parse_manifests(&format!("{POD}---\n{POD}")).unwrap();
    let v = fibril_api::list_value(&objs).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert_eq!(v["items"][0]["kind"], "Pod");
}

#[test]
fn store_kind_mismatch_is_reported() {
    let objs = parse_manifests(POD).unwrap();
    let (_, value) = objs[0].to_store().unwrap();
    let wrong = ObjectKey::new("Service", Some("default"), "ok");
    let e = AnyObject::from_store(&wrong, value).unwrap_err();
    assert!(e.to_string().contains("Pod"), "{e}");
}

#[test]
fn lists_yield_their_items() {
    let objs = parse_manifests(&format!("{POD}---\n{POD}")).unwrap();
    let listed = serde_json::to_string(&fibril_api::list_value(&objs).unwrap()).unwrap();
    assert_eq!(parse_manifests(&listed).unwrap(), objs);

    let e = err("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: a\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: b\n  spec:\n    containers: 3\n");
    assert_eq!(e.field.as_deref(), Some("items[1].spec.containers"));
    assert_eq!(e.name.as_deref(), Some("b"));
    assert!(parse_manifests("apiVersion: v1\nkind: List\nitems: []\n")
        .unwrap()
        .is_empty());
}

#[test]
fn nested_lists_are_rejected() {
    let e = err("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  metadata:\n    name: x\n  items: []\n");
    assert_eq!(e.field.as_deref(), Some("items[0].kind"));
}
