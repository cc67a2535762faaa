//! The run loop against the in-memory store: a Deployment + Service on three
//! fake Ready nodes, with a simulated kubelet (runs bound pods, finishes
//! deletions), checking pods, bindings, service IPs, endpoint slices and the
//! deletion contract.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fibril_api::{parse_manifests, Deployment, EndpointSlice, Namespace, Node, Pod, Service};
use fibril_controller::ControllerOptions;
use fibril_store::{MemoryStore, SharedStore, StoreExt};
use serde_json::json;
use tokio::time::Instant;

const SEED: &str =
    include_str!("../../fibril-api/tests/fixtures/seeds/000-webpod-service-curl-pod.yaml");

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "192.168.10.100"}]}
    }))
    .unwrap()
}

/// The kubelet of every node: bound pods become Running/Ready with a podIP;
/// pods with a deletionTimestamp are noted, then deleted.
fn spawn_kubelet(
    store: SharedStore,
    seen_terminating: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next_ip = 10;
        loop {
            for mut p in store.list_as::<Pod>(None).await.unwrap().items {
                let name = p.metadata.name.clone().unwrap();
                if p.metadata.deletion_timestamp.is_some() {
                    seen_terminating.lock().unwrap().push(name.clone());
                    let _ = store
                        .delete_as::<Pod>(p.metadata.namespace.as_deref(), &name, None)
                        .await;
                    continue;
                }
                let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                let has_ip = p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some();
                if bound && !has_ip {
                    next_ip += 1;
                    p.status = Some(
                        serde_json::from_value(json!({
                            "phase": "Running", "podIP": format!("10.244.0.{next_ip}"),
                            "conditions": [{"type": "Ready", "status": "True"}]
                        }))
                        .unwrap(),
                    );
                    let _ = store.update_as(&p).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    })
}

async fn webpods(store: &SharedStore) -> Vec<Pod> {
    store
        .list_as::<Pod>(Some("default"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.name.as_deref().unwrap().starts_with("webpod-"))
        .collect()
}

async fn slice_ips(store: &SharedStore) -> Option<Vec<(String, bool)>> {
    let slices = store
        .list_as::<EndpointSlice>(Some("default"))
        .await
        .unwrap()
        .items;
    let s = slices.iter().find(|s| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .map(String::as_str)
            == Some("webpod")
    })?;
    let mut v: Vec<(String, bool)> = s
        .endpoints
        .iter()
        .flatten()
        .map(|e| {
            (
                e.addresses[0].clone(),
                e.conditions.as_ref().unwrap().ready.unwrap(),
            )
        })
        .collect();
    v.sort();
    Some(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_service_and_slices_end_to_end_polling() {
    scenario(ControllerOptions {
        interval: Duration::from_millis(20),
        watch: false,
        ..Default::default()
    })
    .await;
}

/// Watch-driven: with a one-minute period, only the watches can make the
/// passes happen in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_service_and_slices_end_to_end_watch_driven() {
    scenario(ControllerOptions {
        interval: Duration::from_secs(60),
        watch: true,
        ..Default::default()
    })
    .await;
}

async fn scenario(opts: ControllerOptions) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("fibril_controller=debug")
        .with_test_writer()
        .try_init();
    let store: SharedStore = Arc::new(MemoryStore::new());
    // A stored config with another service CIDR: the controller must use it.
    let config = fibril_config::Config {
        k8s_service_cidr: "10.100.0.0/16".parse().unwrap(),
        ..Default::default()
    };
    fibril_config::store::save(store.as_ref(), &config)
        .await
        .unwrap();
    for n in ["k8s-ctr", "k8s-w1", "k8s-w2"] {
        store.create_as(&node(n)).await.unwrap();
    }
    for o in parse_manifests(SEED).unwrap() {
        let (key, value) = o.to_store().unwrap();
        store.create(&key, value).await.unwrap();
    }

    // An object that does not decode must not stop the loop, nor make the
    // pods it owns look orphaned.
    let bad = fibril_api::ObjectKey::new("Deployment", Some("default"), "broken");
    store
        .create(
            &bad,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "broken", "namespace": "default", "uid": "b-1"},
            "spec": {"replicas": "two"}}),
        )
        .await
        .unwrap();
    let owned: Pod = serde_json::from_value(json!({
        "metadata": {"name": "broken-1234567890-abcde", "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "broken", "uid": "b-1"}]},
        "spec": {"nodeName": "k8s-ctr", "containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap();
    store.create_as(&owned).await.unwrap();

    let seen_terminating = Arc::new(Mutex::new(Vec::new()));
    let kubelet = spawn_kubelet(store.clone(), seen_terminating.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ctl = tokio::spawn(fibril_controller::run_with(store.clone(), opts, async {
        let _ = stop_rx.await;
    }));

    // Namespaces.
    eventually("namespaces", || async {
        let ns = store.list_as::<Namespace>(None).await.unwrap().items;
        let names: Vec<_> = ns.iter().filter_map(|n| n.metadata.name.clone()).collect();
        (names.contains(&"default".into()) && names.contains(&"kube-system".into())).then_some(())
    })
    .await;

    // Two webpods, bound to the two workers (curl-pod sits on k8s-ctr), Ready.
    let pods = eventually("2 ready webpods", || async {
        let pods = webpods(&store).await;
        (pods.len() == 2
            && pods
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()))
        .then_some(pods)
    })
    .await;
    let mut nodes: Vec<_> = pods
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["k8s-w1", "k8s-w2"]);

    // Service IP from the stored CIDR's dynamic band.
    let svc = eventually("webpod clusterIP", || async {
        let s = store
            .get_as::<Service>(Some("default"), "webpod")
            .await
            .unwrap()?;
        s.spec.as_ref()?.cluster_ip.is_some().then_some(s)
    })
    .await;
    assert_eq!(
        svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("10.100.1.0")
    );

    // EndpointSlice with both pods ready.
    let pod_ips: Vec<String> = {
        let mut v: Vec<String> = pods
            .iter()
            .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
            .collect();
        v.sort();
        v
    };
    eventually("slice with 2 ready endpoints", || async {
        let v = slice_ips(&store).await?;
        (v == pod_ips
            .iter()
            .map(|ip| (ip.clone(), true))
            .collect::<Vec<_>>())
        .then_some(())
    })
    .await;
    let st = eventually("deployment status", || async {
        let d: Deployment = store.get_as(Some("default"), "webpod").await.unwrap()?;
        d.status.filter(|s| s.ready_replicas == Some(2))
    })
    .await;
    assert_eq!(st.replicas, Some(2));

    // Scale to 1: one pod goes through deletionTimestamp (the kubelet deletes it).
    eventually("scale update", || async {
        let mut d: Deployment = store.get_as(Some("default"), "webpod").await.unwrap()?;
        d.spec.replicas = Some(1);
        store.update_as(&d).await.ok()
    })
    .await;
    eventually("1 webpod left", || async {
        (webpods(&store).await.len() == 1).then_some(())
    })
    .await;
    let gone: Vec<String> = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .filter(|n| seen_terminating.lock().unwrap().contains(n))
        .collect();
    assert_eq!(
        gone.len(),
        1,
        "the removed pod was not deleted via deletionTimestamp"
    );
    eventually("slice with 1 endpoint", || async {
        (slice_ips(&store).await?.len() == 1).then_some(())
    })
    .await;

    // Deleting the Deployment deletes its pod; deleting the Service its slice.
    store
        .delete_as::<Deployment>(Some("default"), "webpod", None)
        .await
        .unwrap();
    eventually("no webpods", || async {
        webpods(&store).await.is_empty().then_some(())
    })
    .await;
    store
        .delete_as::<Service>(Some("default"), "webpod", None)
        .await
        .unwrap();
    eventually("slice deleted", || async {
        slice_ips(&store).await.is_none().then_some(())
    })
    .await;
    // curl-pod (pinned, no owner) is still there.
    assert!(store
        .get_as::<Pod>(Some("default"), "curl-pod")
        .await
        .unwrap()
        .is_some());

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), ctl)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    kubelet.abort();
}
