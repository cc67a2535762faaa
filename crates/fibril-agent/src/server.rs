//! The endpoint API server (axum over a unix socket); routes in [`crate::api`].

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fibril_api::fibril::{
    AddressPair, EndpointIdentity, EndpointNetworking, EndpointStatus, ExternalIdentifiers,
};
use fibril_api::{FibrilEndpoint, FibrilIdentity, ObjectMeta, Pod};
use fibril_store::StoreExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{ApiError, EndpointRequest, GcRequest, GcResponse, IpamRequest};
use crate::node::NodeState;
use crate::{AgentError, AgentOptions, Shared};

#[derive(Clone)]
struct Ctx {
    opts: AgentOptions,
    state: Shared,
    flows: std::sync::Arc<crate::flows::FlowHub>,
}

struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let code = match e.kind.as_str() {
            "range-full" => StatusCode::INSUFFICIENT_STORAGE,
            "not-ready" => StatusCode::SERVICE_UNAVAILABLE,
            "bad-request" => StatusCode::BAD_REQUEST,
            "not-found" => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, e)
    }
}

fn internal(message: String) -> Failure {
    Failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        ApiError {
            kind: "internal".into(),
            message,
        },
    )
}

/// Runs `f` on the node state in a blocking thread.
async fn with_state<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&mut NodeState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Failure> {
    let state = ctx.state.clone();
    tokio::task::spawn_blocking(move || {
        let mut st = state
            .lock()
            .map_err(|_| internal("node state lock poisoned".into()))?;
        f(&mut st).map_err(Failure::from)
    })
    .await
    .map_err(|e| internal(format!("task: {e}")))?
}

/// Runs `f` (which locks the node state itself, briefly) in a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("task: {e}")))?
        .map_err(Failure::from)
}

/// Serves until `stop` is true. Removes a stale socket file first.
pub async fn serve(
    opts: AgentOptions,
    state: Shared,
    stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let flows = std::sync::Arc::new(crate::flows::FlowHub::new(
        &opts.node_name,
        crate::flows::RING_CAPACITY,
        crate::flows::FOLLOW_BUFFER,
    ));
    let (hub, mut st) = (flows.clone(), stop.clone());
    tokio::spawn(async move {
        let _ = st.wait_for(|s| *s).await;
        hub.close();
    });
    serve_with_flows(opts, state, flows, stop).await
}

/// [`serve`] with the node's flow hub (`GET /v1/flows`, flow metrics).
pub async fn serve_with_flows(
    opts: AgentOptions,
    state: Shared,
    flows: std::sync::Arc<crate::flows::FlowHub>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let path = opts.socket_path.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::io(format!("create {}", dir.display()), e))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::io(format!("remove {}", path.display()), e)),
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| AgentError::io(format!("bind {}", path.display()), e))?;
    info!(socket = %path.display(), "endpoint API listening");
    let app = Router::new()
        .route("/v1/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/v1/ipam", post(ipam))
        .route("/v1/endpoints", get(list_endpoints))
        .route(
            "/v1/endpoints/{id}",
            put(put_endpoint).delete(delete_endpoint),
        )
        .route("/v1/gc", post(gc))
        .route("/v1/endpoint", get(endpoint_list))
        .route("/v1/services", get(services))
        .route("/v1/ip", get(ip_list))
        .route("/v1/identities", get(identities))
        .route("/v1/nodes", get(nodes))
        .route("/v1/lrp", get(lrps))
        .route("/v1/config", get(config))
        .route("/v1/flows", get(crate::flows::serve_flows::<Ctx>))
        .route("/metrics", get(metrics))
        .with_state(Ctx { opts, state, flows });
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .into_future();
    let res = server
        .await
        .map_err(|e| AgentError::io(format!("serve {}", path.display()), e));
    let _ = std::fs::remove_file(&path);
    res
}

async fn healthz(State(ctx): State<Ctx>) -> Response {
    // Ready = datapath loaded (state exists) and the store answers.
    match ctx.opts.store.list("FibrilNode", None).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
    }
}

async fn status(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let mut s = with_state(&ctx, |st| Ok(st.status())).await?;
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        ctx.opts.store.list("FibrilNode", None),
    )
    .await;
    s.store = match probe {
        Ok(Ok(_)) => "Ok".into(),
        Ok(Err(e)) => format!("Disconnected: {e}"),
        Err(_) => "Disconnected: no answer within 2s".into(),
    };
    Ok(Json(s).into_response())
}

async fn ipam(State(ctx): State<Ctx>, Json(req): Json<IpamRequest>) -> Result<Response, Failure> {
    let pool = match &req.pool {
        Some(p) => p.clone(),
        None if ctx.opts.config.ipam.mode == fibril_config::IpamMode::MultiPool => {
            pool_for(&ctx, &req.owner).await
        }
        None => fibril_ipam::DEFAULT_POOL.to_string(),
    };
    // Multi-pool: a pool without room on this node gets a block on demand;
    // wait for the operator (the sync loop publishes the request) a while.
    let multi = ctx.opts.config.ipam.mode == fibril_config::IpamMode::MultiPool;
    let deadline = tokio::time::Instant::now() + ctx.opts.pool_wait;
    let r = loop {
        let (cid, owner, p) = (req.container_id.clone(), req.owner.clone(), pool.clone());
        let state = ctx.state.clone();
        match blocking(move || crate::node::allocate_shared(&state, &cid, &owner, &p)).await {
            Err(Failure(_, e))
                if multi && e.kind == "range-full" && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    };
    Ok(Json(r).into_response())
}

async fn list_endpoints(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let r = with_state(&ctx, |st| Ok(st.endpoint_list())).await?;
    Ok(Json(r).into_response())
}

async fn put_endpoint(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Json(req): Json<EndpointRequest>,
) -> Result<Response, Failure> {
    let (identity, labels) = identity_for(&ctx, &req).await;
    let (ns, name) = (req.pod_namespace.clone(), req.pod_name.clone());
    let cid = id.clone();
    let state = ctx.state.clone();
    let (r, ip, node_ip) =
        blocking(move || crate::node::put_endpoint_shared(&state, &id, req, identity)).await?;
    let ip = Some(ip);
    if !name.is_empty() {
        let ns = if ns.is_empty() {
            "default".to_string()
        } else {
            ns
        };
        let ep = FibrilEndpoint {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            status: Some(EndpointStatus {
                id: Some(i64::from(r.id)),
                identity: Some(EndpointIdentity {
                    id: i64::from(identity),
                    labels,
                }),
                networking: Some(EndpointNetworking {
                    addressing: vec![AddressPair {
                        ipv4: ip,
                        ipv6: None,
                    }],
                    node: Some(node_ip.to_string()),
                }),
                state: Some("ready".into()),
                external_identifiers: Some(ExternalIdentifiers {
                    container_id: Some(cid),
                    k8s_namespace: Some(ns.clone()),
                    k8s_pod_name: Some(name.clone()),
                    pod_name: Some(format!("{ns}/{name}")),
                }),
                named_ports: Vec::new(),
            }),
        };
        if let Err(e) = ctx.opts.store.put_as(&ep).await {
            warn!(pod = %format!("{ns}/{name}"), error = %e, "writing FibrilEndpoint");
        }
    }
    Ok(Json(r).into_response())
}

async fn delete_endpoint(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let cid = id.clone();
    let state = ctx.state.clone();
    let (r, pod) = blocking(move || crate::node::delete_endpoint_shared(&state, &id)).await?;
    if let Some((ns, name)) = pod.filter(|(_, n)| !n.is_empty()) {
        let ns = if ns.is_empty() {
            "default".to_string()
        } else {
            ns
        };
        // Only our own object: a re-created pod elsewhere may already own the name.
        let store = &ctx.opts.store;
        if let Ok(Some(ep)) = store.get_as::<FibrilEndpoint>(Some(&ns), &name).await {
            let ours = ep
                .status
                .as_ref()
                .and_then(|s| s.external_identifiers.as_ref())
                .and_then(|x| x.container_id.as_deref())
                == Some(cid.as_str());
            if ours {
                let rv = fibril_store::resource_version_of(&ep);
                if let Err(e) = store
                    .delete_as::<FibrilEndpoint>(Some(&ns), &name, rv)
                    .await
                {
                    warn!(pod = %format!("{ns}/{name}"), error = %e, "deleting FibrilEndpoint");
                }
            }
        }
    }
    Ok(Json(r).into_response())
}

async fn gc(State(ctx): State<Ctx>, Json(req): Json<GcRequest>) -> Result<Response, Failure> {
    let removed = with_state(&ctx, move |st| st.gc(&req.valid)).await?;
    Ok(Json(GcResponse { removed }).into_response())
}

/// Multi-pool: the pool of the pod `owner` (`ns/name`) by annotation.
async fn pool_for(ctx: &Ctx, owner: &str) -> String {
    let store = &ctx.opts.store;
    let Some((ns, name)) = owner.split_once('/') else {
        return fibril_ipam::DEFAULT_POOL.to_string();
    };
    let pod = store.get_as::<Pod>(Some(ns), name).await.ok().flatten();
    let namespace = store
        .get_as::<fibril_api::Namespace>(None, ns)
        .await
        .ok()
        .flatten();
    let pod_ann = pod.and_then(|p| p.metadata.annotations);
    let ns_ann = namespace.and_then(|n| n.metadata.annotations);
    fibril_ipam::select_pool(pod_ann.as_ref(), ns_ann.as_ref()).to_string()
}

/// The pod's security identity: the operator's FibrilIdentity for the pod's
/// security labels (the Pod from the store when it exists, else the labels
/// of the request), or the operator's first candidate id when none exists yet.
async fn identity_for(ctx: &Ctx, req: &EndpointRequest) -> (u32, Vec<String>) {
    let store = &ctx.opts.store;
    let ns = if req.pod_namespace.is_empty() {
        "default"
    } else {
        &req.pod_namespace
    };
    let pod = match store.get_as::<Pod>(Some(ns), &req.pod_name).await {
        Ok(Some(p)) if !req.pod_name.is_empty() => p,
        _ => Pod {
            metadata: ObjectMeta {
                name: Some(req.pod_name.clone()),
                namespace: Some(ns.to_string()),
                labels: Some(req.labels.clone().into_iter().collect::<BTreeMap<_, _>>()),
                ..Default::default()
            },
            ..Default::default()
        },
    };
    let namespace = store
        .get_as::<fibril_api::Namespace>(None, ns)
        .await
        .ok()
        .flatten();
    let Some(labels) = fibril_operator::security_labels(&pod, namespace.as_ref()) else {
        return (fibril_abi::identity::HOST, vec!["reserved:host".into()]);
    };
    let printed = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let id = match store.list_as::<FibrilIdentity>(None).await {
        Ok(list) => fibril_operator::find_identity(list.items.iter(), &labels)
            .unwrap_or_else(|| fibril_operator::candidate_id(&labels)),
        Err(e) => {
            warn!(error = %e, "listing identities; using the fallback id");
            fibril_operator::candidate_id(&labels)
        }
    };
    (id, printed)
}

/// Name of a reserved identity (`reserved:<name>`).
pub fn reserved_identity(id: u32) -> Option<&'static str> {
    use fibril_abi::identity as i;
    Some(match id {
        i::HOST => "host",
        i::WORLD => "world",
        i::UNMANAGED => "unmanaged",
        i::HEALTH => "health",
        i::INIT => "init",
        i::REMOTE_NODE => "remote-node",
        _ => return None,
    })
}

/// Identity -> printed labels (reserved ones and the store's FibrilIdentities).
async fn identity_labels(ctx: &Ctx) -> BTreeMap<u32, Vec<String>> {
    let mut out: BTreeMap<u32, Vec<String>> = (1..=6)
        .filter_map(|id| Some((id, vec![format!("reserved:{}", reserved_identity(id)?)])))
        .collect();
    match ctx.opts.store.list_as::<FibrilIdentity>(None).await {
        Ok(list) => {
            for ident in list.items {
                if let Some(id) = ident.id() {
                    let labels = ident
                        .security_labels
                        .iter()
                        .map(|(k, v)| {
                            if k.contains(':') {
                                format!("{k}={v}")
                            } else {
                                format!("k8s:{k}={v}")
                            }
                        })
                        .collect();
                    out.insert(id, labels);
                }
            }
        }
        Err(e) => warn!(error = %e, "listing identities"),
    }
    out
}

async fn endpoint_list(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let mut eps = with_state(&ctx, |st| Ok(st.endpoint_entries())).await?;
    let labels = identity_labels(&ctx).await;
    for e in &mut eps {
        if e.labels.is_empty() {
            e.labels = labels.get(&e.identity).cloned().unwrap_or_default();
        }
    }
    Ok(Json(eps).into_response())
}

async fn services(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let r = with_state(&ctx, |st| Ok(st.service_entries())).await?;
    Ok(Json(r).into_response())
}

async fn ip_list(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let raw = with_state(&ctx, |st| Ok(st.ip_entries())).await?;
    let labels = identity_labels(&ctx).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut out: Vec<crate::api::IpEntry> = Vec::new();
    for (prefix, id, source) in raw {
        if !seen.insert(prefix.clone()) {
            continue;
        }
        out.push(crate::api::IpEntry {
            prefix,
            identity: id,
            labels: labels.get(&id).cloned().unwrap_or_default(),
            source,
        });
    }
    out.sort_by_key(|e| {
        let (ip, len) = e.prefix.split_once('/').unwrap_or((&e.prefix, "32"));
        (
            ip.parse::<std::net::Ipv4Addr>().map(u32::from).unwrap_or(0),
            len.parse::<u8>().unwrap_or(32),
        )
    });
    Ok(Json(out).into_response())
}

async fn identities(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let labels = identity_labels(&ctx).await;
    let out: Vec<crate::api::IdentityEntry> = labels
        .into_iter()
        .map(|(id, labels)| crate::api::IdentityEntry { id, labels })
        .collect();
    Ok(Json(out).into_response())
}

async fn nodes(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let list = ctx
        .opts
        .store
        .list_as::<fibril_api::FibrilNode>(None)
        .await
        .map_err(|e| internal(format!("listing FibrilNodes: {e}")))?;
    let mut out: Vec<crate::api::NodeEntry> = list
        .items
        .iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            let mut cidrs: Vec<String> = crate::fibril_node_cidrs(n)
                .iter()
                .map(|c| c.to_string())
                .collect();
            for blocks in fibril_operator::allocated_pools(n).into_values() {
                for b in blocks {
                    let b = b.to_string();
                    if !cidrs.contains(&b) {
                        cidrs.push(b);
                    }
                }
            }
            crate::api::NodeEntry {
                source: if name == ctx.opts.node_name {
                    "local".into()
                } else {
                    "custom-resource".into()
                },
                name,
                ipv4: crate::sync::internal_ip(n),
                cidrs,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out).into_response())
}

async fn lrps(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let r = with_state(&ctx, |st| Ok(st.lrp_list())).await?;
    Ok(Json(r).into_response())
}

async fn config(State(ctx): State<Ctx>) -> Response {
    ctx.opts.config.to_flat().into_response()
}

async fn metrics(State(ctx): State<Ctx>) -> Result<Response, Failure> {
    let snap = with_state(&ctx, |st| {
        let mut snap = crate::metrics::Snapshot {
            stats: st.stats,
            endpoints: st.endpoints.len(),
            services: st.services.as_ref().map_or(0, |s| s.len()),
            maps: crate::metrics::map_fill(st.maps.dir()),
            ..Default::default()
        };
        if let Ok(d) = fibril_datapath::DatapathStatus::read(st.maps.dir()) {
            snap.forwarded = d.forwarded;
            snap.drops = d
                .drops
                .iter()
                .map(|d| (d.reason.as_str().to_string(), d.packets))
                .collect();
        }
        Ok(snap)
    })
    .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        with_flow_metrics(
            crate::metrics::render(&snap),
            &ctx.flows.counters().render(),
        ),
    )
        .into_response())
}

/// Inserts the flow metrics before the OpenMetrics `# EOF`.
fn with_flow_metrics(text: String, flows: &str) -> String {
    match text.strip_suffix("# EOF\n") {
        Some(head) => format!("{head}{flows}# EOF\n"),
        None => format!("{text}{flows}"),
    }
}

impl crate::flows::HasFlows for Ctx {
    fn flow_hub(&self) -> std::sync::Arc<crate::flows::FlowHub> {
        self.flows.clone()
    }
}
