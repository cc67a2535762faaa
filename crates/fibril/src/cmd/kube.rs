//! kubectl-like commands against a lab cluster's store: `apply`, `get`,
//! `describe`, `delete`, `scale`, `rollout restart`.
//!
//! Each command enters the lab's control-plane namespace on the main thread
//! (`fibril_lab::cluster::enter_and_runtime`) before the tokio runtime
//! exists, then talks to etcd directly. Objects are handled as JSON values
//! so every stored kind (including `Event`) prints the same way.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use fibril_api::{Kind, ObjectKey};
use fibril_kubelet::time::rfc3339_now;
use fibril_lab::DEFAULT_LAB;
use fibril_store::{SharedStore, StoredObject};
use serde_json::{json, Value};

/// `--lab L`.
#[derive(clap::Args, Debug, Clone)]
pub struct LabArg {
    /// Lab whose cluster to talk to.
    #[arg(long, env = "FIBRIL_LAB", default_value = DEFAULT_LAB)]
    pub lab: String,
}

/// `fibril apply`.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    lab: LabArg,
    /// Manifest file (multi-document YAML or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    file: Vec<String>,
    /// Namespace for objects that name none.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// `fibril get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    lab: LabArg,
    /// Resource type (pods, deploy, svc, nodes, ciliumnodes, ...), or TYPE/NAME.
    resource: String,
    /// Object names.
    names: Vec<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// wide, yaml, json, name, jsonpath=TEMPLATE.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Label selector, e.g. app=webpod,tier!=db.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector: spec.nodeName=, metadata.name=, status.phase= (comma-separated).
    #[arg(long)]
    field_selector: Option<String>,
}

/// `fibril describe`.
#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    #[command(flatten)]
    lab: LabArg,
    /// Resource type, or TYPE/NAME.
    resource: String,
    names: Vec<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// `fibril delete`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    lab: LabArg,
    /// Resource type (or TYPE/NAME) and names; or use -f.
    args: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    file: Vec<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Wait until pods are gone (the kubelet removes them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wait: bool,
    /// Seconds to wait for pods to go.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// `fibril scale`.
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    lab: LabArg,
    /// `deployment NAME` or `deployment/NAME`.
    args: Vec<String>,
    #[arg(long)]
    replicas: i64,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// `fibril rollout`.
#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// Restart a Deployment's pods (`deployment/NAME`) or the agents (`ds/fibril`, `ds/cilium`).
    Restart(RolloutArgs),
}

#[derive(clap::Args, Debug)]
pub struct RolloutArgs {
    #[command(flatten)]
    lab: LabArg,
    /// `deployment/NAME`, `deployment NAME`, `ds/fibril`.
    args: Vec<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// kubectl accepts `-n NS` before the subcommand (`kubectl -n kube-system
/// rollout restart ds/cilium`); clap wants it after. Moves a leading
/// `-n NS` / `--namespace NS` / `--namespace=NS` to the end (before `--`).
pub fn hoist_namespace_flag(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(first) = args.get(1).and_then(|a| a.to_str()).map(str::to_string) else {
        return args;
    };
    let flag: Vec<std::ffi::OsString> = if first == "-n" || first == "--namespace" {
        if args.len() < 4 {
            return args;
        }
        args.drain(1..3).collect()
    } else if first.starts_with("--namespace=") {
        args.drain(1..2).collect()
    } else {
        return args;
    };
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    for (i, f) in flag.into_iter().enumerate() {
        args.insert(at + i, f);
    }
    args
}

/// A resource type the CLI accepts.
#[derive(Debug, Clone)]
struct Res {
    /// Stored kind (`Pod`, `FibrilNode`, `Event`, ...).
    kind: String,
    namespaced: bool,
    /// `pod`, `deployment.apps`, `ciliumnode.cilium.io` (as kubectl prints).
    display: String,
    /// What the user typed, lower-cased (decides cilium vs fibril wording).
    typed: String,
    /// `get endpoints`: derived from EndpointSlices.
    endpoints_view: bool,
}

fn resolve(name: &str) -> anyhow::Result<Res> {
    let typed = name.to_ascii_lowercase();
    let special = match typed.as_str() {
        "events" | "event" | "ev" => Some(("Event", true, "event", false)),
        "endpoints" | "endpoint" | "ep" => Some(("EndpointSlice", true, "endpoints", true)),
        _ => None,
    };
    if let Some((kind, namespaced, display, ev)) = special {
        return Ok(Res {
            kind: kind.into(),
            namespaced,
            display: display.into(),
            typed,
            endpoints_view: ev,
        });
    }
    let kind = Kind::from_cli_name(&typed).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cilium = typed.starts_with("cilium") || typed == "cn" || typed == "cep" || typed == "cpip";
    let display = match (kind.cilium_alias(), cilium) {
        (Some(alias), true) => format!("{}.cilium.io", alias.to_ascii_lowercase()),
        _ => {
            let g = kind.group();
            if g.is_empty() {
                kind.as_str().to_ascii_lowercase()
            } else {
                format!("{}.{g}", kind.as_str().to_ascii_lowercase())
            }
        }
    };
    Ok(Res {
        kind: kind.as_str().to_string(),
        namespaced: kind.namespaced(),
        display,
        typed,
        endpoints_view: false,
    })
}

/// kubectl's plural form for errors: `pods`, `deployments.apps`,
/// `ciliumidentities.cilium.io`.
fn plural_display(display: &str) -> String {
    let (kind, group) = match display.split_once('.') {
        Some((k, g)) => (k, format!(".{g}")),
        None => (display, String::new()),
    };
    let plural = if kind.ends_with('s') {
        kind.to_string()
    } else if let Some(stem) = kind.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{kind}s")
    };
    format!("{plural}{group}")
}

/// `TYPE NAME...` or `TYPE/NAME...` into (resource, names).
fn split_type_names(first: &str, rest: &[String]) -> anyhow::Result<(Res, Vec<String>)> {
    if let Some((t, n)) = first.split_once('/') {
        let res = resolve(t)?;
        let mut names = vec![n.to_string()];
        for r in rest {
            match r.split_once('/') {
                Some((_, n)) => names.push(n.to_string()),
                None => names.push(r.clone()),
            }
        }
        Ok((res, names))
    } else {
        Ok((resolve(first)?, rest.to_vec()))
    }
}

fn session(
    lab: &str,
) -> anyhow::Result<(tokio::runtime::Runtime, fibril_lab::cluster::ClusterRecord)> {
    // `fibril get ... | head` ends quietly, as kubectl does, instead of
    // panicking on EPIPE.
    // SAFETY: restoring the default disposition of one signal before any
    // thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("talking to the lab cluster needs root (it enters the lab's network namespace)");
    }
    Ok(fibril_lab::cluster::enter_and_runtime(lab)?)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)` into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut t = days * 86400 + hh * 3600 + mm * 60 + ss;
    // Offsets other than Z: `+hh:mm` / `-hh:mm` after optional fraction.
    if let Some(pos) = s[19..].find(['+', '-']) {
        let off = &s[19 + pos..];
        if off.len() >= 6 {
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let oh: i64 = off.get(1..3)?.parse().ok()?;
            let om: i64 = off.get(4..6)?.parse().ok()?;
            t -= sign * (oh * 3600 + om * 60);
        }
    }
    Some(t)
}

/// kubectl's human duration (`45s`, `5m12s`, `3h`, `3d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return two_units(m, "m", s % 60, "s");
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        return two_units(h, "h", m % 60, "m");
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return two_units(h / 24, "d", h % 24, "h");
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let y = h / (24 * 365);
        let d = (h % (24 * 365)) / 24;
        return two_units(y, "y", d, "d");
    }
    format!("{}y", h / (24 * 365))
}

/// `3h`, or `3h2m` when the second unit is not zero.
fn two_units(big: i64, big_unit: &str, small: i64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{small}{small_unit}")
    }
}

fn age_of(ts: Option<&str>) -> String {
    match ts.and_then(parse_rfc3339) {
        Some(t) => human_duration(now_unix() - t),
        None => "<unknown>".into(),
    }
}

/// The elements of the array at `ptr` (none when missing or not an array).
fn array_at<'a>(v: &'a Value, ptr: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn st<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn int(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

fn name_of(v: &Value) -> String {
    st(v, "/metadata/name").unwrap_or_default().to_string()
}

fn new_uid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{:x}", now_unix()))
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("read stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read {file}"))
    }
}

/// kubectl's object prefix from a manifest kind: `deployment.apps`, `pod`.
fn display_of(kind: &str, api_version: &str) -> String {
    let k = kind.to_ascii_lowercase();
    match api_version.split_once('/') {
        Some((g, _)) => format!("{k}.{g}"),
        None => k,
    }
}

// ---------------------------------------------------------------- apply

pub fn apply(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let mut objects = Vec::new();
    for f in &a.file {
        let text = read_input(f)?;
        let parsed = fibril_api::parse_manifests(&text).with_context(|| f.to_string())?;
        objects.extend(parsed);
    }
    apply_objects(&a.lab.lab, objects, a.namespace.as_deref(), "")?;
    Ok(ExitCode::SUCCESS)
}

/// Creates or updates `objects` in the lab's store, printing one
/// `kind/name created|configured|unchanged` line each (after `prefix`).
/// Enters the lab's control-plane netns (see [`session`]).
pub fn apply_objects(
    lab: &str,
    objects: Vec<fibril_api::AnyObject>,
    namespace: Option<&str>,
    prefix: &str,
) -> anyhow::Result<()> {
    let (rt, rec) = session(lab)?;
    rt.block_on(async {
        let store = fibril_lab::cluster::connect(&rec).await?;
        for mut obj in objects {
            if let Some(ns) = namespace {
                if obj.metadata().namespace.is_none() {
                    obj.metadata_mut().namespace = Some(ns.to_string());
                }
            }
            let display = display_of(obj.kind(), obj.api_version());
            let (key, value) = obj
                .to_store()
                .with_context(|| format!("{display}/{}", obj.name()))?;
            let verb = apply_one(&store, &key, value)
                .await
                .with_context(|| format!("{display}/{}", key.name))?;
            println!("{prefix}{display}/{} {verb}", key.name);
        }
        anyhow::Ok(())
    })
}

/// Metadata the server owns: not compared, kept from the stored object.
const SERVER_META: [&str; 5] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
];

async fn apply_one(
    store: &SharedStore,
    key: &ObjectKey,
    mut value: Value,
) -> anyhow::Result<&'static str> {
    // The store keeps the namespace in metadata: compare like with like.
    if let (Some(ns), Some(m)) = (
        &key.namespace,
        value.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        m.insert("namespace".into(), json!(ns));
    }
    for _ in 0..5 {
        match store.get(key).await? {
            None => {
                if let Some(m) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.entry("uid").or_insert_with(|| json!(new_uid()));
                    m.entry("creationTimestamp")
                        .or_insert_with(|| json!(rfc3339_now()));
                    m.insert("generation".into(), json!(1));
                    m.remove("resourceVersion");
                }
                match store.create(key, value.clone()).await {
                    Ok(_) => return Ok("created"),
                    Err(fibril_store::StoreError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(old) => {
                let mut merged = value.clone();
                // Keep the server's metadata and the status the components wrote.
                if let (Some(m), Some(om)) = (
                    merged.get_mut("metadata").and_then(Value::as_object_mut),
                    old.value.get("metadata").and_then(Value::as_object),
                ) {
                    for k in SERVER_META {
                        match om.get(k) {
                            Some(v) => {
                                m.insert(k.to_string(), v.clone());
                            }
                            None => {
                                m.remove(k);
                            }
                        }
                    }
                    // Fields other components own on the object.
                    for k in ["ownerReferences", "deletionTimestamp", "finalizers"] {
                        if !m.contains_key(k) {
                            if let Some(v) = om.get(k) {
                                m.insert(k.to_string(), v.clone());
                            }
                        }
                    }
                }
                if merged.get("status").is_none() {
                    if let (Some(s), Some(obj)) = (old.value.get("status"), merged.as_object_mut())
                    {
                        obj.insert("status".into(), s.clone());
                    }
                }
                // Fields allocated by the control plane (Service clusterIP, Pod nodeName).
                for ptr in ["/spec/clusterIP", "/spec/clusterIPs", "/spec/nodeName"] {
                    if merged.pointer(ptr).is_none() {
                        if let Some(v) = old.value.pointer(ptr).cloned() {
                            if let Some(spec) =
                                merged.get_mut("spec").and_then(Value::as_object_mut)
                            {
                                spec.insert(ptr.trim_start_matches("/spec/").to_string(), v);
                            }
                        }
                    }
                }
                if strip_rv(&merged) == strip_rv(&old.value) {
                    return Ok("unchanged");
                }
                if merged.get("spec") != old.value.get("spec") {
                    let g = int(&old.value, "/metadata/generation") + 1;
                    if let Some(m) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.insert("generation".into(), json!(g));
                    }
                }
                match store.update(key, merged, old.mod_revision).await {
                    Ok(_) => return Ok("configured"),
                    Err(fibril_store::StoreError::Conflict { .. }) => {
                        value = value.clone();
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    bail!("kept conflicting with concurrent writers")
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

// ---------------------------------------------------------------- get

fn label_matches(v: &Value, selector: &str) -> bool {
    let labels = v.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .all(|term| {
            let term = term.trim();
            if let Some((k, val)) = term.split_once("!=") {
                get(k.trim()) != Some(val.trim())
            } else if let Some((k, val)) = term.split_once("==").or_else(|| term.split_once('=')) {
                get(k.trim()) == Some(val.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                get(k.trim()).is_none()
            } else {
                get(term).is_some()
            }
        })
}

fn field_matches(v: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .all(|term| {
            let (k, want, neg) = match term.split_once("!=") {
                Some((k, w)) => (k, w, true),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((k, w)) => (k, w, false),
                    None => return true,
                },
            };
            let ptr = format!("/{}", k.trim().replace('.', "/"));
            let got = st(v, &ptr).unwrap_or("");
            (got == want.trim()) != neg
        })
}

async fn list_objects(
    store: &SharedStore,
    res: &Res,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<StoredObject>> {
    let ns = if res.namespaced { namespace } else { None };
    Ok(store.list(&res.kind, ns).await?.items)
}

pub fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    // `get deploy,svc`: one table per type, blank line between.
    if a.resource.contains(',') && !a.resource.contains('/') {
        let types: Vec<String> = a.resource.split(',').map(str::to_string).collect();
        for t in &types {
            resolve(t)?;
        }
        let (rt, rec) = session(&a.lab.lab)?;
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                println!();
            }
            let args = GetArgs {
                lab: a.lab.clone(),
                resource: t.clone(),
                names: a.names.clone(),
                namespace: a.namespace.clone(),
                all_namespaces: a.all_namespaces,
                output: a.output.clone(),
                selector: a.selector.clone(),
                field_selector: a.field_selector.clone(),
            };
            get_in(args, &rt, &rec, true)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (rt, rec) = session(&a.lab.lab)?;
    get_in(a, &rt, &rec, false)
}

fn get_in(
    a: GetArgs,
    rt: &tokio::runtime::Runtime,
    rec: &fibril_lab::cluster::ClusterRecord,
    prefix_names: bool,
) -> anyhow::Result<ExitCode> {
    let (res, names) = split_type_names(&a.resource, &a.names)?;
    let namespace = if a.all_namespaces {
        None
    } else {
        Some(a.namespace.clone().unwrap_or_else(|| "default".into()))
    };
    let all_ns = a.all_namespaces && res.namespaced;
    rt.block_on(async {
        let store = fibril_lab::cluster::connect(rec).await?;
        let mut items: Vec<Value> = list_objects(&store, &res, namespace.as_deref())
            .await?
            .into_iter()
            .map(|o| o.value)
            .collect();
        if !names.is_empty() {
            for n in &names {
                if !items.iter().any(|v| name_of(v) == *n) && !res.endpoints_view {
                    bail!(
                        "Error from server (NotFound): {} \"{n}\" not found",
                        plural_display(&res.display)
                    );
                }
            }
            if !res.endpoints_view {
                items.retain(|v| names.contains(&name_of(v)));
            }
        }
        if let Some(sel) = &a.selector {
            items.retain(|v| label_matches(v, sel));
        }
        if let Some(sel) = &a.field_selector {
            items.retain(|v| field_matches(v, sel));
        }
        let single = names.len() == 1 && !res.endpoints_view;
        let out = a.output.as_deref().unwrap_or("");
        match out {
            "yaml" | "json" => {
                let doc = if single {
                    items.into_iter().next().unwrap_or(Value::Null)
                } else {
                    list_doc(items)
                };
                if out == "yaml" {
                    print!("{}", serde_yaml::to_string(&doc)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
            }
            "name" => {
                for v in &items {
                    println!("{}/{}", res.display, name_of(v));
                }
            }
            o if o.starts_with("jsonpath=") || o.starts_with("jsonpath:") => {
                let tpl = o[9..].trim_matches('\'');
                let doc = if single {
                    items.into_iter().next().unwrap_or(Value::Null)
                } else {
                    list_doc(items)
                };
                print!("{}", jsonpath(tpl, &doc)?);
            }
            "" | "wide" => {
                if res.endpoints_view {
                    items = endpoints_view(items, &names);
                }
                if items.is_empty() {
                    match &namespace {
                        Some(ns) if res.namespaced => {
                            eprintln!("No resources found in {ns} namespace.")
                        }
                        _ => eprintln!("No resources found"),
                    }
                    return anyhow::Ok(());
                }
                print_table(&res, &items, out == "wide", all_ns, prefix_names);
            }
            other => {
                bail!("unknown output format {other:?} (wide, yaml, json, name, jsonpath=...)")
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn list_doc(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}})
}

/// `get endpoints`: one row per Service from its EndpointSlices.
fn endpoints_view(slices: Vec<Value>, names: &[String]) -> Vec<Value> {
    let mut by_svc: BTreeMap<(String, String), (Vec<String>, Option<String>)> = BTreeMap::new();
    for s in &slices {
        let svc = st(s, "/metadata/labels/kubernetes.io~1service-name")
            .map(str::to_string)
            .unwrap_or_else(|| name_of(s));
        if !names.is_empty() && !names.contains(&svc) {
            continue;
        }
        let ns = st(s, "/metadata/namespace")
            .unwrap_or("default")
            .to_string();
        let entry = by_svc.entry((ns, svc)).or_insert_with(|| {
            (
                Vec::new(),
                st(s, "/metadata/creationTimestamp").map(str::to_string),
            )
        });
        let ports: Vec<i64> = s
            .get("ports")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p.get("port").and_then(Value::as_i64))
                    .collect()
            })
            .unwrap_or_default();
        for e in s
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if e.pointer("/conditions/ready").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            for addr in e
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(ip) = addr.as_str() else { continue };
                if ports.is_empty() {
                    entry.0.push(ip.to_string());
                }
                for p in &ports {
                    entry.0.push(format!("{ip}:{p}"));
                }
            }
        }
    }
    by_svc
        .into_iter()
        .map(|((ns, name), (eps, ts))| {
            json!({"metadata": {"name": name, "namespace": ns, "creationTimestamp": ts}, "eps": eps})
        })
        .collect()
}

fn table_row(res: &Res, v: &Value, wide: bool) -> Vec<String> {
    let age = age_of(st(v, "/metadata/creationTimestamp"));
    let name = name_of(v);
    match res.kind.as_str() {
        "Pod" => {
            let containers = v
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            let statuses = v
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let ready = statuses
                .map(|s| {
                    s.iter()
                        .filter(|c| c.get("ready") == Some(&json!(true)))
                        .count()
                })
                .unwrap_or(0);
            let restarts: i64 = statuses
                .map(|s| s.iter().map(|c| int(c, "/restartCount")).sum())
                .unwrap_or(0);
            let mut row = vec![
                name,
                format!("{ready}/{containers}"),
                pod_status(v),
                restarts.to_string(),
                age,
            ];
            if wide {
                row.push(or_none(st(v, "/status/podIP").map(str::to_string)));
                row.push(or_none(st(v, "/spec/nodeName").map(str::to_string)));
                row.push("<none>".into());
                row.push("<none>".into());
            }
            row
        }
        "Deployment" => vec![
            name,
            format!(
                "{}/{}",
                int(v, "/status/readyReplicas"),
                v.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            ),
            int(v, "/status/updatedReplicas").to_string(),
            int(v, "/status/availableReplicas").to_string(),
            age,
        ],
        "DaemonSet" => vec![
            name,
            int(v, "/status/desiredNumberScheduled").to_string(),
            int(v, "/status/currentNumberScheduled").to_string(),
            int(v, "/status/numberReady").to_string(),
            int(v, "/status/updatedNumberScheduled").to_string(),
            int(v, "/status/numberAvailable").to_string(),
            or_none(kv_list(v.pointer("/spec/template/spec/nodeSelector"))),
            age,
        ],
        "Service" => {
            let ty = st(v, "/spec/type").unwrap_or("ClusterIP").to_string();
            let external = {
                let ing: Vec<String> = array_at(v, "/status/loadBalancer/ingress")
                    .filter_map(|i| st(i, "/ip").map(str::to_string))
                    .collect();
                let ext: Vec<String> = array_at(v, "/spec/externalIPs")
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect();
                let all: Vec<String> = ing.into_iter().chain(ext).collect();
                if !all.is_empty() {
                    all.join(",")
                } else if ty == "LoadBalancer" {
                    "<pending>".into()
                } else {
                    "<none>".into()
                }
            };
            let ports: Vec<String> = array_at(v, "/spec/ports")
                .map(|p| {
                    let proto = st(p, "/protocol").unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if ty != "ClusterIP" => {
                            format!("{}:{np}/{proto}", int(p, "/port"))
                        }
                        _ => format!("{}/{proto}", int(p, "/port")),
                    }
                })
                .collect();
            let mut row = vec![
                name,
                ty,
                or_none(st(v, "/spec/clusterIP").map(str::to_string)),
                external,
                or_none(Some(ports.join(","))),
                age,
            ];
            if wide {
                row.push(or_none(kv_list(v.pointer("/spec/selector"))));
            }
            row
        }
        "EndpointSlice" if res.endpoints_view => {
            let eps: Vec<String> = v
                .get("eps")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect();
            vec![name, or_none(Some(truncate_list(&eps))), age]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = v
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("port").and_then(Value::as_i64).map(|p| p.to_string()))
                .collect();
            let addrs: Vec<String> = v
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            vec![
                name,
                st(v, "/addressType").unwrap_or("IPv4").to_string(),
                or_none(Some(ports.join(","))),
                or_none(Some(truncate_list(&addrs))),
                age,
            ]
        }
        "Node" => {
            let ready = array_at(v, "/status/conditions")
                .find(|c| st(c, "/type") == Some("Ready"))
                .map(|c| st(c, "/status") == Some("True"));
            let mut status = match ready {
                Some(true) => "Ready".to_string(),
                Some(false) | None => "NotReady".to_string(),
            };
            if v.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let mut row = vec![
                name,
                status,
                node_roles(v),
                age,
                st(v, "/status/nodeInfo/kubeletVersion")
                    .unwrap_or("")
                    .to_string(),
            ];
            if wide {
                let addr = |t: &str| {
                    array_at(v, "/status/addresses")
                        .find(|a| st(a, "/type") == Some(t))
                        .and_then(|a| st(a, "/address"))
                        .map(str::to_string)
                };
                row.push(or_none(addr("InternalIP")));
                row.push(or_none(addr("ExternalIP")));
                row.push(or_none(
                    st(v, "/status/nodeInfo/osImage").map(str::to_string),
                ));
                row.push(or_none(
                    st(v, "/status/nodeInfo/kernelVersion").map(str::to_string),
                ));
                row.push(or_none(
                    st(v, "/status/nodeInfo/containerRuntimeVersion").map(str::to_string),
                ));
            }
            row
        }
        "FibrilNode" => {
            let addr = |t: &str| {
                array_at(v, "/spec/addresses")
                    .find(|a| st(a, "/type") == Some(t))
                    .and_then(|a| st(a, "/ip"))
                    .unwrap_or("")
                    .to_string()
            };
            vec![name, addr("CiliumInternalIP"), addr("InternalIP"), age]
        }
        "FibrilEndpoint" => {
            let ipv4 = st(v, "/status/networking/addressing/0/ipv4")
                .unwrap_or("")
                .to_string();
            let ipv6 = st(v, "/status/networking/addressing/0/ipv6")
                .unwrap_or("")
                .to_string();
            let id = v
                .pointer("/status/identity/id")
                .and_then(Value::as_i64)
                .map(|i| i.to_string())
                .unwrap_or_default();
            vec![
                name,
                id,
                st(v, "/status/state").unwrap_or("").to_string(),
                ipv4,
                ipv6,
            ]
        }
        "FibrilIdentity" => vec![
            name,
            v.pointer("/security-labels")
                .and_then(|l| l.get("k8s:io.kubernetes.pod.namespace"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            age,
        ],
        "ConfigMap" => vec![
            name,
            v.get("data")
                .and_then(Value::as_object)
                .map(|d| d.len())
                .unwrap_or(0)
                .to_string(),
            age,
        ],
        "Namespace" => vec![
            name,
            st(v, "/status/phase").unwrap_or("Active").to_string(),
            age,
        ],
        "Event" => {
            let last = st(v, "/lastTimestamp")
                .or_else(|| st(v, "/eventTime"))
                .or_else(|| st(v, "/metadata/creationTimestamp"));
            vec![
                age_of(last),
                st(v, "/type").unwrap_or("Normal").to_string(),
                st(v, "/reason").unwrap_or("").to_string(),
                format!(
                    "{}/{}",
                    st(v, "/involvedObject/kind")
                        .unwrap_or("")
                        .to_ascii_lowercase(),
                    st(v, "/involvedObject/name").unwrap_or("")
                ),
                st(v, "/message").unwrap_or("").to_string(),
            ]
        }
        "NetworkPolicy" => vec![
            name,
            or_none(kv_list(v.pointer("/spec/podSelector/matchLabels"))),
            age,
        ],
        _ => vec![name, age],
    }
}

fn headers(res: &Res, wide: bool) -> Vec<&'static str> {
    match res.kind.as_str() {
        "Pod" if wide => vec![
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES",
        ],
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "DaemonSet" => vec![
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE",
        ],
        "Service" if wide => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR",
        ],
        "Service" => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ],
        "EndpointSlice" if res.endpoints_view => vec!["NAME", "ENDPOINTS", "AGE"],
        "EndpointSlice" => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        "Node" if wide => vec![
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME",
        ],
        "Node" => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "FibrilNode" if res.typed.starts_with("fibril") => {
            vec!["NAME", "FIBRILINTERNALIP", "INTERNALIP", "AGE"]
        }
        "FibrilNode" => vec!["NAME", "CILIUMINTERNALIP", "INTERNALIP", "AGE"],
        "FibrilEndpoint" => vec![
            "NAME",
            "SECURITY IDENTITY",
            "ENDPOINT STATE",
            "IPV4",
            "IPV6",
        ],
        "FibrilIdentity" => vec!["NAME", "NAMESPACE", "AGE"],
        "ConfigMap" => vec!["NAME", "DATA", "AGE"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        "Event" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "NetworkPolicy" => vec!["NAME", "POD-SELECTOR", "AGE"],
        _ => vec!["NAME", "AGE"],
    }
}

/// `prefix_names`: `get deploy,svc` shows `deployment.apps/webpod` as kubectl does.
fn print_table(res: &Res, items: &[Value], wide: bool, all_ns: bool, prefix_names: bool) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head: Vec<String> = headers(res, wide).into_iter().map(str::to_string).collect();
    if all_ns {
        head.insert(0, "NAMESPACE".into());
    }
    rows.push(head);
    for v in items {
        let mut r = table_row(res, v, wide);
        if prefix_names && res.kind != "Event" {
            if let Some(first) = r.first_mut() {
                *first = format!("{}/{first}", res.display);
            }
        }
        if all_ns {
            r.insert(0, st(v, "/metadata/namespace").unwrap_or("").to_string());
        }
        rows.push(r);
    }
    print!("{}", format_table(&rows));
}

/// Columns separated by 3 spaces, as kubectl's tabwriter prints them.
pub fn format_table(rows: &[Vec<String>]) -> String {
    format_table_sep(rows, 3)
}

/// Columns separated by `gap` spaces (`describe` tables use 2).
pub fn format_table_sep(rows: &[Vec<String>], gap: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(widths[i] - c.chars().count() + gap));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn kv_list(v: Option<&Value>) -> Option<String> {
    let m = v?.as_object()?;
    Some(
        m.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn truncate_list(items: &[String]) -> String {
    if items.len() > 3 {
        format!("{} + {} more...", items[..3].join(","), items.len() - 3)
    } else {
        items.join(",")
    }
}

/// kubectl's STATUS column of a pod.
fn pod_status(v: &Value) -> String {
    if v.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    if let Some(r) = st(v, "/status/reason") {
        return r.to_string();
    }
    let phase = st(v, "/status/phase").unwrap_or("Pending").to_string();
    for c in array_at(v, "/status/containerStatuses") {
        if let Some(r) = st(c, "/state/waiting/reason") {
            return r.to_string();
        }
        if let Some(r) = st(c, "/state/terminated/reason") {
            return r.to_string();
        }
    }
    if phase == "Pending" && v.pointer("/spec/nodeName").is_some() {
        return "ContainerCreating".into();
    }
    phase
}

// ---------------------------------------------------------------- jsonpath

/// A small JSONPath template engine: `{.a.b}`, `{.items[*].x}`, `{.items[0]}`,
/// `{range .items[*]}...{end}`, quoted literals `{"\t"}`, plain text.
pub fn jsonpath(template: &str, doc: &Value) -> anyhow::Result<String> {
    #[derive(Debug)]
    enum Tok {
        Text(String),
        Path(String),
        Range(String),
        End,
    }
    let mut toks = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            toks.push(Tok::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .map(|c| c + open)
            .context("jsonpath: unclosed {")?;
        let inner = rest[open + 1..close].trim();
        if let Some(p) = inner.strip_prefix("range ") {
            toks.push(Tok::Range(p.trim().to_string()));
        } else if inner == "end" {
            toks.push(Tok::End);
        } else if inner.starts_with('"') && inner.ends_with('"') && inner.len() >= 2 {
            let lit = inner[1..inner.len() - 1]
                .replace("\\t", "\t")
                .replace("\\n", "\n")
                .replace("\\\"", "\"");
            toks.push(Tok::Text(lit));
        } else {
            toks.push(Tok::Path(inner.to_string()));
        }
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        toks.push(Tok::Text(rest.to_string()));
    }
    fn eval<'a>(path: &str, cur: &'a Value) -> Vec<&'a Value> {
        let mut vals = vec![cur];
        let path = path.trim_start_matches('$').trim_start_matches('@');
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            let (field, index) = match seg.find('[') {
                Some(i) => (&seg[..i], Some(seg[i + 1..].trim_end_matches(']'))),
                None => (seg, None),
            };
            let mut next = Vec::new();
            for v in vals {
                let v = if field.is_empty() {
                    Some(v)
                } else {
                    v.get(field)
                };
                let Some(v) = v else { continue };
                match index {
                    None => next.push(v),
                    Some("*") => {
                        if let Some(a) = v.as_array() {
                            next.extend(a.iter());
                        } else if let Some(o) = v.as_object() {
                            next.extend(o.values());
                        }
                    }
                    Some(i) => {
                        if let (Some(a), Ok(i)) = (v.as_array(), i.parse::<i64>()) {
                            let idx = if i < 0 { a.len() as i64 + i } else { i };
                            if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                                next.push(x);
                            }
                        }
                    }
                }
            }
            vals = next;
        }
        vals
    }
    fn show(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
    fn render(toks: &[Tok], cur: &Value, out: &mut String) -> usize {
        let mut i = 0;
        while i < toks.len() {
            match &toks[i] {
                Tok::Text(t) => out.push_str(t),
                Tok::Path(p) => {
                    let vals: Vec<String> = eval(p, cur).into_iter().map(show).collect();
                    out.push_str(&vals.join(" "));
                }
                Tok::Range(p) => {
                    // Find the matching end.
                    let body_start = i + 1;
                    let mut depth = 1;
                    let mut j = body_start;
                    while j < toks.len() {
                        match toks[j] {
                            Tok::Range(_) => depth += 1,
                            Tok::End => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    for item in eval(p, cur) {
                        render(&toks[body_start..j.min(toks.len())], item, out);
                    }
                    i = j;
                }
                Tok::End => return i,
            }
            i += 1;
        }
        i
    }
    let mut out = String::new();
    render(&toks, doc, &mut out);
    Ok(out)
}

// ---------------------------------------------------------------- describe

pub fn describe(a: DescribeArgs) -> anyhow::Result<ExitCode> {
    let (res, names) = split_type_names(&a.resource, &a.names)?;
    let (rt, rec) = session(&a.lab.lab)?;
    let ns = a.namespace.clone().unwrap_or_else(|| "default".into());
    rt.block_on(async {
        let store = fibril_lab::cluster::connect(&rec).await?;
        let mut items: Vec<Value> = list_objects(&store, &res, Some(&ns))
            .await?
            .into_iter()
            .map(|o| o.value)
            .collect();
        if !names.is_empty() {
            for n in &names {
                if !items.iter().any(|v| name_of(v) == *n) {
                    bail!(
                        "Error from server (NotFound): {} \"{n}\" not found",
                        plural_display(&res.display)
                    );
                }
            }
            items.retain(|v| names.contains(&name_of(v)));
        }
        let events: Vec<Value> = if res.namespaced || res.kind == "Node" {
            store
                .list("Event", if res.namespaced { Some(&ns) } else { None })
                .await
                .map(|l| l.items.into_iter().map(|o| o.value).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        for (i, v) in items.iter().enumerate() {
            if i > 0 {
                println!();
            }
            let text = match res.kind.as_str() {
                "Pod" => describe_pod(v),
                "ConfigMap" => describe_configmap(v),
                "Node" => describe_node(v),
                _ => describe_generic(v),
            };
            print!("{text}");
            print!("{}", events_table(v, &res.kind, &events));
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn field(out: &mut String, indent: usize, key: &str, value: &str) {
    let key = format!("{}{key}:", " ".repeat(indent));
    let width = 18.max(key.len() + 2);
    out.push_str(&format!("{key:<width$}{value}\n"));
}

/// `Name:` and `Namespace:` (`default` when unset).
fn name_and_namespace(o: &mut String, v: &Value) {
    field(o, 0, "Name", &name_of(v));
    field(
        o,
        0,
        "Namespace",
        st(v, "/metadata/namespace").unwrap_or("default"),
    );
}

/// `Labels:` and `Annotations:`, one `key=value` a line.
fn labels_and_annotations(o: &mut String, v: &Value) {
    for (key, ptr) in [
        ("Labels", "/metadata/labels"),
        ("Annotations", "/metadata/annotations"),
    ] {
        field(o, 0, key, &multi_kv(v.pointer(ptr), 18));
    }
}

/// A table indented by two spaces (Conditions, Events).
fn indented_table(o: &mut String, rows: &[Vec<String>]) {
    for line in format_table_sep(rows, 2).lines() {
        o.push_str(&format!("  {line}\n"));
    }
}

fn string_row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

fn describe_pod(v: &Value) -> String {
    let mut o = String::new();
    name_and_namespace(&mut o, v);
    field(&mut o, 0, "Priority", "0");
    field(
        &mut o,
        0,
        "Service Account",
        st(v, "/spec/serviceAccountName").unwrap_or("default"),
    );
    let node = match (st(v, "/spec/nodeName"), st(v, "/status/hostIP")) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.to_string(),
        _ => "<none>".into(),
    };
    field(&mut o, 0, "Node", &node);
    if let Some(t) = st(v, "/status/startTime") {
        field(&mut o, 0, "Start Time", t);
    }
    labels_and_annotations(&mut o, v);
    let status = if v.pointer("/metadata/deletionTimestamp").is_some() {
        format!(
            "Terminating (lasts {})",
            age_of(st(v, "/metadata/deletionTimestamp"))
        )
    } else {
        st(v, "/status/phase").unwrap_or("Pending").to_string()
    };
    field(&mut o, 0, "Status", &status);
    let ip = st(v, "/status/podIP").unwrap_or("");
    field(&mut o, 0, "IP", ip);
    o.push_str("IPs:\n");
    let ips: Vec<&str> = array_at(v, "/status/podIPs")
        .filter_map(|i| st(i, "/ip"))
        .collect();
    if ips.is_empty() {
        o.push_str("  <none>\n");
    }
    for i in ips {
        o.push_str(&format!("  IP:  {i}\n"));
    }
    if let Some(owner) = v.pointer("/metadata/ownerReferences/0").map(|r| {
        format!(
            "{}/{}",
            st(r, "/kind").unwrap_or(""),
            st(r, "/name").unwrap_or("")
        )
    }) {
        field(&mut o, 0, "Controlled By", &owner);
    }
    o.push_str("Containers:\n");
    let statuses: Vec<Value> = v
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in array_at(v, "/spec/containers") {
        let cname = st(c, "/name").unwrap_or("");
        o.push_str(&format!("  {cname}:\n"));
        let cs = statuses.iter().find(|s| st(s, "/name") == Some(cname));
        if let Some(id) = cs.and_then(|s| st(s, "/containerID")) {
            field(&mut o, 4, "Container ID", id);
        }
        field(&mut o, 4, "Image", st(c, "/image").unwrap_or(""));
        let ports: Vec<String> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}/{}",
                    int(p, "/containerPort"),
                    st(p, "/protocol").unwrap_or("TCP")
                )
            })
            .collect();
        field(&mut o, 4, "Port", &or_none(Some(ports.join(", "))));
        let (state, reason, started) = match cs.and_then(|s| s.get("state")) {
            Some(s) if s.get("running").is_some() => (
                "Running",
                None,
                st(s, "/running/startedAt").map(str::to_string),
            ),
            Some(s) if s.get("waiting").is_some() => (
                "Waiting",
                st(s, "/waiting/reason").map(str::to_string),
                None,
            ),
            Some(s) if s.get("terminated").is_some() => (
                "Terminated",
                st(s, "/terminated/reason").map(str::to_string),
                None,
            ),
            _ => ("Waiting", Some("ContainerCreating".to_string()), None),
        };
        field(&mut o, 4, "State", state);
        if let Some(r) = reason {
            field(&mut o, 6, "Reason", &r);
        }
        if let Some(s) = started {
            field(&mut o, 6, "Started", &s);
        }
        let ready = cs
            .and_then(|s| s.get("ready"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        field(&mut o, 4, "Ready", if ready { "True" } else { "False" });
        field(
            &mut o,
            4,
            "Restart Count",
            &cs.map(|s| int(s, "/restartCount")).unwrap_or(0).to_string(),
        );
    }
    o.push_str("Conditions:\n");
    let conds: Vec<(String, String)> = array_at(v, "/status/conditions")
        .map(|c| {
            (
                st(c, "/type").unwrap_or("").to_string(),
                st(c, "/status").unwrap_or("").to_string(),
            )
        })
        .collect();
    if conds.is_empty() {
        o.push_str("  <none>\n");
    } else {
        let mut rows = vec![vec!["Type".to_string(), "Status".to_string()]];
        rows.extend(conds.into_iter().map(|(t, s)| vec![t, s]));
        indented_table(&mut o, &rows);
    }
    field(
        &mut o,
        0,
        "Node-Selectors",
        &multi_kv(v.pointer("/spec/nodeSelector"), 18),
    );
    o
}

/// A Node's roles (`node-role.kubernetes.io/<role>` labels) joined by
/// commas, `<none>` without any.
fn node_roles(v: &Value) -> String {
    let roles: Vec<&str> = v
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    or_none(Some(roles.join(",")))
}

fn multi_kv(v: Option<&Value>, indent: usize) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(&format!("\n{}", " ".repeat(indent))),
        _ => "<none>".into(),
    }
}

fn describe_node(v: &Value) -> String {
    let mut o = String::new();
    field(&mut o, 0, "Name", &name_of(v));
    field(&mut o, 0, "Roles", &node_roles(v));
    labels_and_annotations(&mut o, v);
    if let Some(t) = st(v, "/metadata/creationTimestamp") {
        field(&mut o, 0, "CreationTimestamp", t);
    }
    let unsched = v.pointer("/spec/unschedulable") == Some(&json!(true));
    field(
        &mut o,
        0,
        "Unschedulable",
        if unsched { "true" } else { "false" },
    );
    o.push_str("Conditions:\n");
    let mut rows = vec![
        string_row(&["Type", "Status", "LastHeartbeatTime", "Reason", "Message"]),
        string_row(&["----", "------", "-----------------", "------", "-------"]),
    ];
    for c in array_at(v, "/status/conditions") {
        rows.push(
            [
                "/type",
                "/status",
                "/lastHeartbeatTime",
                "/reason",
                "/message",
            ]
            .iter()
            .map(|p| st(c, p).unwrap_or("").to_string())
            .collect(),
        );
    }
    indented_table(&mut o, &rows);
    o.push_str("Addresses:\n");
    for a in array_at(v, "/status/addresses") {
        o.push_str(&format!(
            "  {}:  {}\n",
            st(a, "/type").unwrap_or(""),
            st(a, "/address").unwrap_or("")
        ));
    }
    if let Some(info) = v.pointer("/status/nodeInfo").and_then(Value::as_object) {
        o.push_str("System Info:\n");
        for (k, label) in [
            ("kernelVersion", "Kernel Version"),
            ("osImage", "OS Image"),
            ("containerRuntimeVersion", "Container Runtime Version"),
            ("kubeletVersion", "Kubelet Version"),
        ] {
            if let Some(x) = info.get(k).and_then(Value::as_str) {
                field(&mut o, 2, label, x);
            }
        }
    }
    field(
        &mut o,
        0,
        "PodCIDR",
        st(v, "/spec/podCIDR").unwrap_or("<none>"),
    );
    let cidrs: Vec<&str> = array_at(v, "/spec/podCIDRs")
        .filter_map(Value::as_str)
        .collect();
    field(&mut o, 0, "PodCIDRs", &or_none(Some(cidrs.join(","))));
    o
}

fn describe_configmap(v: &Value) -> String {
    let mut o = String::new();
    name_and_namespace(&mut o, v);
    labels_and_annotations(&mut o, v);
    o.push_str("\nData\n====\n");
    for (k, val) in v
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        o.push_str(&format!(
            "{k}:\n----\n{}\n\n",
            val.as_str().unwrap_or_default()
        ));
    }
    o.push_str("\nBinaryData\n====\n\n");
    o
}

fn describe_generic(v: &Value) -> String {
    let mut o = String::new();
    field(&mut o, 0, "Name", &name_of(v));
    if let Some(ns) = st(v, "/metadata/namespace") {
        field(&mut o, 0, "Namespace", ns);
    }
    labels_and_annotations(&mut o, v);
    if let Some(t) = st(v, "/metadata/creationTimestamp") {
        field(&mut o, 0, "CreationTimestamp", t);
    }
    let mut body = v.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
    }
    if body.as_object().is_some_and(|m| !m.is_empty()) {
        if let Ok(y) = serde_yaml::to_string(&body) {
            o.push_str(&y);
        }
    }
    o
}

fn events_table(v: &Value, kind: &str, events: &[Value]) -> String {
    let name = name_of(v);
    let mut evs: Vec<&Value> = events
        .iter()
        .filter(|e| {
            st(e, "/involvedObject/name") == Some(name.as_str())
                && st(e, "/involvedObject/kind").is_none_or(|k| k == kind)
        })
        .collect();
    let when = |e: &Value| {
        st(e, "/lastTimestamp")
            .or_else(|| st(e, "/eventTime"))
            .or_else(|| st(e, "/metadata/creationTimestamp"))
            .and_then(parse_rfc3339)
            .unwrap_or(0)
    };
    evs.sort_by_key(|e| when(e));
    if evs.is_empty() {
        return "Events:            <none>\n".into();
    }
    let mut rows = vec![
        string_row(&["Type", "Reason", "Age", "From", "Message"]),
        string_row(&["----", "------", "----", "----", "-------"]),
    ];
    for e in evs {
        let count = int(e, "/count");
        let age = human_duration(now_unix() - when(e));
        let age = if count > 1 {
            let first = st(e, "/firstTimestamp").and_then(parse_rfc3339);
            match first {
                Some(f) => format!("{age} (x{count} over {})", human_duration(now_unix() - f)),
                None => format!("{age} (x{count})"),
            }
        } else {
            age
        };
        rows.push(vec![
            st(e, "/type").unwrap_or("Normal").to_string(),
            st(e, "/reason").unwrap_or("").to_string(),
            age,
            st(e, "/source/component")
                .or_else(|| st(e, "/reportingComponent"))
                .unwrap_or("")
                .to_string(),
            st(e, "/message").unwrap_or("").to_string(),
        ]);
    }
    let mut o = String::from("Events:\n");
    indented_table(&mut o, &rows);
    o
}

// ---------------------------------------------------------------- delete

pub fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut targets: Vec<(String, ObjectKey)> = Vec::new();
    let ns = a.namespace.clone().unwrap_or_else(|| "default".into());
    for f in &a.file {
        let text = read_input(f)?;
        for obj in fibril_api::parse_manifests(&text).with_context(|| f.to_string())? {
            let display = display_of(obj.kind(), obj.api_version());
            let mut key = obj.key();
            if key.namespace.is_some() && obj.metadata().namespace.is_none() {
                key.namespace = Some(ns.clone());
            }
            targets.push((display, key));
        }
    }
    if let Some((first, rest)) = a.args.split_first() {
        let (res, names) = split_type_names(first, rest)?;
        if names.is_empty() {
            bail!("delete {}: name the objects to delete", res.display);
        }
        for n in names {
            let key = ObjectKey::new(&res.kind, if res.namespaced { Some(&ns) } else { None }, &n);
            targets.push((res.display.clone(), key));
        }
    }
    if targets.is_empty() {
        bail!("delete: give TYPE NAME or -f FILE");
    }
    let (rt, rec) = session(&a.lab.lab)?;
    let mut failed = false;
    rt.block_on(async {
        let store = fibril_lab::cluster::connect(&rec).await?;
        let mut waiting = Vec::new();
        for (display, key) in &targets {
            match delete_one(&store, key).await {
                Ok(Deleted::Gone) => println!("{display} \"{}\" deleted", key.name),
                Ok(Deleted::Terminating) => waiting.push((display.clone(), key.clone())),
                Ok(Deleted::NotFound) => {
                    eprintln!(
                        "Error from server (NotFound): {} \"{}\" not found",
                        plural_display(display),
                        key.name
                    );
                    failed = true;
                }
                Err(e) => {
                    eprintln!("error: {display} \"{}\": {e:#}", key.name);
                    failed = true;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(a.timeout);
        for (display, key) in waiting {
            // Output first, as kubectl does, then wait for the kubelet.
            println!("{display} \"{}\" deleted", key.name);
            if !a.wait {
                continue;
            }
            loop {
                if store.get(&key).await?.is_none() {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "warning: {display} \"{}\" is still terminating after {} s (its node's kubelet removes it)",
                        key.name, a.timeout
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        anyhow::Ok(())
    })?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

enum Deleted {
    Gone,
    Terminating,
    NotFound,
}

/// Deletes one object; pods bound to a node get a deletionTimestamp and the
/// kubelet removes them (the deletion contract).
async fn delete_one(store: &SharedStore, key: &ObjectKey) -> anyhow::Result<Deleted> {
    for _ in 0..5 {
        let Some(obj) = store.get(key).await? else {
            return Ok(Deleted::NotFound);
        };
        let bound = key.kind == "Pod" && obj.value.pointer("/spec/nodeName").is_some();
        if !bound {
            match store.delete(key, Some(obj.mod_revision)).await {
                Ok(_) => return Ok(Deleted::Gone),
                Err(fibril_store::StoreError::Conflict { .. }) => continue,
                Err(fibril_store::StoreError::NotFound { .. }) => return Ok(Deleted::NotFound),
                Err(e) => return Err(e.into()),
            }
        }
        if obj.value.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Deleted::Terminating);
        }
        let mut v = obj.value.clone();
        let grace = v
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("deletionTimestamp".into(), json!(rfc3339_now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        match store.update(key, v, obj.mod_revision).await {
            Ok(_) => return Ok(Deleted::Terminating),
            Err(fibril_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("kept conflicting with concurrent writers")
}

// ---------------------------------------------------------------- scale, rollout

/// Reads, changes and writes one object, retrying on conflicts.
async fn modify(
    store: &SharedStore,
    key: &ObjectKey,
    f: impl Fn(&mut Value),
) -> anyhow::Result<()> {
    for _ in 0..5 {
        let Some(obj) = store.get(key).await? else {
            bail!(
                "Error from server (NotFound): {} \"{}\" not found",
                key.kind.to_ascii_lowercase(),
                key.name
            );
        };
        let mut v = obj.value.clone();
        f(&mut v);
        let g = int(&v, "/metadata/generation") + 1;
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("generation".into(), json!(g));
        }
        match store.update(key, v, obj.mod_revision).await {
            Ok(_) => return Ok(()),
            Err(fibril_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("kept conflicting with concurrent writers")
}

fn ensure_object<'a>(
    v: &'a mut Value,
    key: &str,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    let m = v.as_object_mut()?;
    let e = m.entry(key.to_string()).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut()
}

pub fn scale(a: ScaleArgs) -> anyhow::Result<ExitCode> {
    let (first, rest) = a
        .args
        .split_first()
        .context("scale: give deployment NAME")?;
    let (res, names) = split_type_names(first, rest)?;
    if res.kind != "Deployment" {
        bail!(
            "scale: only deployments can be scaled (got {})",
            res.display
        );
    }
    if a.replicas < 0 {
        bail!("--replicas must be 0 or more");
    }
    let ns = a.namespace.clone().unwrap_or_else(|| "default".into());
    let (rt, rec) = session(&a.lab.lab)?;
    rt.block_on(async {
        let store = fibril_lab::cluster::connect(&rec).await?;
        for n in &names {
            let key = ObjectKey::new("Deployment", Some(&ns), n);
            let replicas = a.replicas;
            modify(&store, &key, |v| {
                if let Some(spec) = ensure_object(v, "spec") {
                    spec.insert("replicas".into(), json!(replicas));
                }
            })
            .await?;
            println!("{}/{n} scaled", res.display);
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn rollout(c: RolloutCommand) -> anyhow::Result<ExitCode> {
    let RolloutCommand::Restart(a) = c;
    let (first, rest) = a
        .args
        .split_first()
        .context("rollout restart: give deployment/NAME or ds/fibril")?;
    let (res, names) = split_type_names(first, rest)?;
    match res.kind.as_str() {
        "DaemonSet" if names.iter().all(|n| n == "fibril" || n == "cilium") => {
            // The agents are lab processes, not DaemonSet pods.
            if !nix::unistd::geteuid().is_root() {
                bail!("rollout restart ds/fibril needs root (it restarts the lab's agents)");
            }
            fibril_lab::cluster::rollout_agents(&a.lab.lab, Duration::from_secs(90), &mut |l| {
                println!("  {l}")
            })?;
            println!(
                "daemonset.apps/{} restarted",
                names.first().map(String::as_str).unwrap_or("fibril")
            );
        }
        "Deployment"
            if names
                .iter()
                .all(|n| n == "cilium-operator" || n == "fibril-operator") =>
        {
            // The operator is a lab process, not a Deployment object.
            if !nix::unistd::geteuid().is_root() {
                bail!("rollout restart of the operator needs root (it restarts a lab process)");
            }
            let p = fibril_lab::cluster::restart_component(
                &a.lab.lab,
                "operator",
                Duration::from_secs(90),
            )?;
            println!("  ✓ operator restarted (pid {})", p.pid);
            for n in &names {
                println!("deployment.apps/{n} restarted");
            }
        }
        // The controller replaces the pods of a changed template (one at a
        // time, a new one Ready before an old one goes).
        kind @ ("Deployment" | "DaemonSet") => {
            let ns = a.namespace.clone().unwrap_or_else(|| "default".into());
            let (rt, rec) = session(&a.lab.lab)?;
            rt.block_on(async {
                let store = fibril_lab::cluster::connect(&rec).await?;
                let now = rfc3339_now();
                for n in &names {
                    let key = ObjectKey::new(kind, Some(&ns), n);
                    modify(&store, &key, |v| {
                        let Some(spec) = ensure_object(v, "spec") else {
                            return;
                        };
                        let tpl = spec.entry("template").or_insert_with(|| json!({}));
                        let Some(meta) = ensure_object(tpl, "metadata") else {
                            return;
                        };
                        let ann = meta.entry("annotations").or_insert_with(|| json!({}));
                        if let Some(ann) = ann.as_object_mut() {
                            ann.insert("kubectl.kubernetes.io/restartedAt".into(), json!(now));
                        }
                    })
                    .await?;
                    println!("{}/{n} restarted", res.display);
                }
                anyhow::Ok(())
            })?;
        }
        _ => bail!(
            "rollout restart: deployments and daemonsets only (got {})",
            res.display
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(312), "5m12s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(40 * 3600), "40h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(10 * 86400), "10d");
    }

    #[test]
    fn timestamps_roundtrip() {
        let t = 1_765_132_505;
        assert_eq!(
            parse_rfc3339(&fibril_kubelet::time::rfc3339(t)),
            Some(t as i64)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn jsonpath_templates() {
        let doc = json!({"items": [
            {"metadata": {"name": "a"}, "spec": {"podCIDR": "10.244.0.0/24", "c": ["x", "y"]}},
            {"metadata": {"name": "b"}, "spec": {"podCIDR": "10.244.1.0/24"}}
        ]});
        let out = jsonpath(
            r#"{range .items[*]}{.metadata.name}{"\t"}{.spec.podCIDR}{"\n"}{end}"#,
            &doc,
        )
        .unwrap();
        assert_eq!(out, "a\t10.244.0.0/24\nb\t10.244.1.0/24\n");
        assert_eq!(jsonpath("{.items[0].spec.c[*]}", &doc).unwrap(), "x y");
        assert_eq!(jsonpath("{.items[*].metadata.name}", &doc).unwrap(), "a b");
    }

    #[test]
    fn selectors() {
        let v = json!({"metadata": {"labels": {"app": "webpod"}}, "spec": {"nodeName": "k8s-w1"}});
        assert!(label_matches(&v, "app=webpod"));
        assert!(!label_matches(&v, "app!=webpod"));
        assert!(label_matches(&v, "app"));
        assert!(!label_matches(&v, "tier"));
        assert!(field_matches(&v, "spec.nodeName=k8s-w1"));
        assert!(!field_matches(&v, "spec.nodeName=k8s-ctr"));
    }

    #[test]
    fn resource_names() {
        assert_eq!(
            resolve("ciliumnodes").unwrap().display,
            "ciliumnode.cilium.io"
        );
        assert_eq!(resolve("deploy").unwrap().display, "deployment.apps");
        assert_eq!(resolve("po").unwrap().display, "pod");
        assert_eq!(resolve("events").unwrap().kind, "Event");
        assert_eq!(plural_display("pod"), "pods");
        assert_eq!(plural_display("deployment.apps"), "deployments.apps");
        assert_eq!(
            plural_display("ciliumidentity.cilium.io"),
            "ciliumidentities.cilium.io"
        );
        assert_eq!(plural_display("endpoints"), "endpoints");
        let (r, n) = split_type_names("deployment/webpod", &[]).unwrap();
        assert_eq!(
            (r.kind.as_str(), n),
            ("Deployment", vec!["webpod".to_string()])
        );
    }

    #[test]
    fn namespace_flag_moves_behind_the_subcommand() {
        let v = |s: &str| -> Vec<std::ffi::OsString> { s.split(' ').map(Into::into).collect() };
        assert_eq!(
            hoist_namespace_flag(v("fibril -n kube-system rollout restart ds/cilium")),
            v("fibril rollout restart ds/cilium -n kube-system")
        );
        assert_eq!(
            hoist_namespace_flag(v("fibril -n kube-system exec p -- ls -n")),
            v("fibril exec p -n kube-system -- ls -n")
        );
        assert_eq!(
            hoist_namespace_flag(v("fibril get pods -n x")),
            v("fibril get pods -n x")
        );
    }

    #[test]
    fn table_alignment() {
        let rows = vec![
            vec!["NAME".to_string(), "AGE".to_string()],
            vec!["webpod".to_string(), "5m".to_string()],
        ];
        assert_eq!(format_table(&rows), "NAME     AGE\nwebpod   5m\n");
    }
}
