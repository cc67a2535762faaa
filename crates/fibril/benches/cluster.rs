//! Control-plane figures of a real lab cluster (issue 4, Benchmarks). Needs
//! root; prints `<name> <value> <unit>` lines and asserts nothing:
//!
//! ```text
//! lab_up_seed4w_s          `fibril lab up --topology seed-4w` until it returns
//! cni_exec_version_p50_ms  the plugin process alone (CNI VERSION), one at a time
//! cni_add_serial_p50_ms    10 ADDs one at a time (each then DELeted), idle node
//! cni_add_p50_ms           100 concurrent ADDs through the lab's fibril-cni
//! cni_add_p99_ms             binary against k8s-w1's agent (spawn to exit,
//! cni_del_p99_ms             as the pod runner sees it), then 100 DELs
//! lab_pods_per_sec         Deployment of 40 whoami replicas: apply -> all Running
//! agent_sync_1000_services_ms  1,000 Services + EndpointSlices (10,000 backends)
//!                            written to the lab's etcd (8 writers) -> k8s-w0's
//!                            agent reports them programmed (frontends and
//!                            lb4_backends entries, from its status)
//! agent_sync_after_last_write_ms  the same, from the end of the writes
//! agent_rss_mib            VmRSS of k8s-w0's agent with those services and
//!                            100 local pods (Deployment pinned by nodeSelector)
//! lab_down_seed4w_s        `fibril lab down` until it returns
//! ```
//!
//! Run with `make bench-cluster` (= `cargo bench -p fibril --bench cluster`,
//! release binary) or `cargo test -p fibril --bench cluster -- --bench`
//! (debug binary). Without `--bench` (e.g. `cargo test --benches`) it only
//! says it skipped: a run brings up a whole cluster (about 2-4 minutes).
//! `FIBRIL_BIN` overrides the `fibril` binary. The lab (unique name) is
//! taken down by a guard whatever happens.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use fibril_lab::cluster::{enter_netns, with_store, ClusterRecord};
use fibril_lab::paths;
use fibril_store::StoreExt;
use serde_json::{json, Value};

/// The whole run may not take longer than this (every wait is bounded by it).
const RUN_BUDGET: Duration = Duration::from_secs(280);
const CNI_PODS: usize = 100;
/// ADDs one at a time before the concurrent ones (the idle baseline).
const SERIAL_ADDS: usize = 10;
const CNI_NODE: &str = "k8s-w1";
const RATE_REPLICAS: usize = 40;
const RSS_NODE: &str = "k8s-w0";
const RSS_PODS: usize = 100;
const SERVICES: usize = 1000;
const BACKENDS_PER_SERVICE: usize = 10;
/// Concurrent store writers for the services.
const WRITERS: usize = 8;

type Res<T> = Result<T, String>;

struct Bench {
    exe: PathBuf,
    lab: String,
    deadline: Instant,
    tmp: tempfile::TempDir,
}

impl Bench {
    fn fibril(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("FIBRIL_LAB", &self.lab);
        c
    }

    /// Runs `fibril ARGS` (lab from the env); its stdout, or an error with stderr.
    fn run(&self, args: &[&str]) -> Res<String> {
        let out = self
            .fibril()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {} {args:?}: {e}", self.exe.display()))?;
        if !out.status.success() {
            return Err(format!(
                "fibril {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn apply(&self, name: &str, doc: &Value) -> Res<()> {
        let path = self.tmp.path().join(format!("{name}.json"));
        std::fs::write(&path, doc.to_string()).map_err(|e| format!("write {path:?}: {e}"))?;
        let p = path.to_string_lossy().into_owned();
        self.run(&["apply", "-f", &p]).map(|_| ())
    }

    /// Polls `fibril get pods -l app=APP -o json` until `n` are Running.
    fn wait_running(&self, app: &str, n: usize, limit: Duration) -> Res<Duration> {
        let t0 = Instant::now();
        let end = t0 + limit.min(self.left());
        let sel = format!("app={app}");
        let mut last = 0;
        loop {
            let out = self.run(&["get", "pods", "-l", &sel, "-o", "json"])?;
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            let running = v["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter(|p| p["status"]["phase"] == "Running")
                        .count()
                })
                .unwrap_or(0);
            if running >= n {
                return Ok(t0.elapsed());
            }
            if running != last {
                last = running;
            }
            if Instant::now() > end {
                return Err(format!(
                    "{app}: {last}/{n} pods Running after {:?}",
                    t0.elapsed()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Takes the lab down when dropped (unless `down` already did).
struct LabGuard {
    exe: PathBuf,
    lab: String,
    armed: bool,
}

impl LabGuard {
    fn down(&mut self) -> Res<Duration> {
        self.armed = false;
        let t = Instant::now();
        let st = Command::new(&self.exe)
            .args(["lab", "down", "--name", &self.lab])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("lab down: {e}"))?;
        if !st.success() {
            return Err(format!("lab down {}: {st}", self.lab));
        }
        Ok(t.elapsed())
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("(cleanup: lab down --name {})", self.lab);
            let _ = self.down();
        }
    }
}

/// Pod namespaces of the CNI part; deleted when dropped.
struct NetnsGuard(Vec<String>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = fibril_kubelet::sandbox::delete_netns(n);
        }
    }
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn cni_conf(sock: &Path) -> String {
    json!({
        "cniVersion": "1.1.0",
        "name": fibril_kubelet::sandbox::CNI_NETWORK,
        "type": "fibril-cni",
        "agentSocket": sock,
    })
    .to_string()
}

/// One plugin call (spawn to exit) from a thread inside the node namespace.
fn cni_call(plugin: &Path, conf: &str, command: &str, cid: &str, netns: &str) -> Res<Duration> {
    let t = Instant::now();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.as_bytes())
            .map_err(|e| format!("{cid}: write config: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cid}: wait: {e}"))?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{command} {cid}: {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(took)
}

/// `n` concurrent plugin calls (one thread each, all in `node_netns`,
/// released together); per-call latencies in ms, sorted.
fn concurrent(
    plugin: &Path,
    conf: &str,
    node_netns: &str,
    command: &str,
    pods: &[(String, String)],
) -> Res<Vec<f64>> {
    let barrier = Arc::new(Barrier::new(pods.len()));
    let results: Vec<Res<Duration>> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|(cid, ns)| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    let entered = enter_netns(node_netns).map_err(|e| format!("setns: {e}"));
                    barrier.wait();
                    entered?;
                    cni_call(plugin, conf, command, cid, &format!("/run/netns/{ns}"))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let mut ms = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(d) => ms.push(d.as_secs_f64() * 1e3),
            Err(e) => errors.push(e),
        }
    }
    if let Some(e) = errors.first() {
        return Err(format!(
            "{} of {} {command}s failed, e.g. {e}",
            errors.len(),
            pods.len()
        ));
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms)
}

fn cni_part(b: &Bench) -> Res<()> {
    let rec = ClusterRecord::require(&b.lab).map_err(|e| e.to_string())?;
    let node_netns = rec
        .processes
        .iter()
        .find(|p| p.component == format!("agent-{CNI_NODE}"))
        .map(|p| p.netns.clone())
        .ok_or_else(|| format!("no agent-{CNI_NODE} in cluster.json"))?;
    let plugin = paths::bin_dir(&b.lab).join("fibril-cni");
    let conf = cni_conf(&paths::agent_socket(&b.lab, CNI_NODE));
    let mut guard = NetnsGuard(Vec::new());
    let mut pods = Vec::new();
    for i in 0..CNI_PODS {
        let ns = paths::pod_netns_name(&b.lab, "bench", &format!("cni-{i}"));
        fibril_kubelet::sandbox::create_netns(&ns).map_err(|e| e.to_string())?;
        guard.0.push(ns.clone());
        pods.push((format!("benchcni{i:03}"), ns));
    }
    // Baselines: the plugin process alone (VERSION: exec, parse, print), then
    // one ADD at a time (each followed by its DEL) on the otherwise idle node.
    let serial: Res<(Vec<f64>, Vec<f64>)> = std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&node_netns).map_err(|e| format!("setns: {e}"))?;
            let mut exec = Vec::new();
            for _ in 0..SERIAL_ADDS {
                let d = cni_call(&plugin, &conf, "VERSION", "", "")?;
                exec.push(d.as_secs_f64() * 1e3);
            }
            exec.sort_by(|a, b| a.total_cmp(b));
            let mut ms = Vec::new();
            for (cid, ns) in pods.iter().take(SERIAL_ADDS) {
                let d = cni_call(&plugin, &conf, "ADD", cid, &format!("/run/netns/{ns}"))?;
                ms.push(d.as_secs_f64() * 1e3);
                cni_call(&plugin, &conf, "DEL", cid, &format!("/run/netns/{ns}"))?;
            }
            ms.sort_by(|a, b| a.total_cmp(b));
            Ok((exec, ms))
        })
        .join()
        .unwrap_or_else(|_| Err("thread panicked".into()))
    });
    let t = Instant::now();
    let add = concurrent(&plugin, &conf, &node_netns, "ADD", &pods);
    let add_wall = t.elapsed();
    // DEL everything whatever ADD did (DEL of an unknown container is fine).
    let t = Instant::now();
    let del = concurrent(&plugin, &conf, &node_netns, "DEL", &pods);
    let del_wall = t.elapsed();
    drop(guard);
    let (exec, serial) = serial?;
    println!("cni_exec_version_p50_ms {:.1} ms", percentile(&exec, 50));
    let add = add?;
    let del = del?;
    println!("cni_add_serial_p50_ms {:.1} ms", percentile(&serial, 50));
    println!(
        "({CNI_PODS} concurrent ADDs on {CNI_NODE}: wall {:.0} ms, max {:.1} ms; DELs: wall {:.0} ms, p50 {:.1} ms)",
        add_wall.as_secs_f64() * 1e3,
        add.last().copied().unwrap_or(f64::NAN),
        del_wall.as_secs_f64() * 1e3,
        percentile(&del, 50),
    );
    println!("cni_add_p50_ms {:.1} ms", percentile(&add, 50));
    println!("cni_add_p99_ms {:.1} ms", percentile(&add, 99));
    println!("cni_del_p99_ms {:.1} ms", percentile(&del, 99));
    Ok(())
}

fn deployment(name: &str, replicas: usize, node: Option<&str>) -> Value {
    let mut spec = json!({
        "containers": [{"name": "whoami", "image": "traefik/whoami",
                        "ports": [{"containerPort": 80}]}],
    });
    if let Some(n) = node {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": n});
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    })
}

fn pods_rate_part(b: &Bench) -> Res<()> {
    let t = Instant::now();
    b.apply("rate", &deployment("bench-rate", RATE_REPLICAS, None))?;
    b.wait_running("bench-rate", RATE_REPLICAS, Duration::from_secs(120))?;
    let s = t.elapsed().as_secs_f64();
    println!("({RATE_REPLICAS} whoami replicas Running {s:.1} s after apply)");
    println!("lab_pods_per_sec {:.1} pods/s", RATE_REPLICAS as f64 / s);
    Ok(())
}

fn rss_kib(pid: i32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS for pid {pid}"))
}

/// (frontends programmed, lb4_backends entries) of a node's agent.
fn programmed(sock: &Path) -> Option<(usize, usize)> {
    let st = fibril_agent::api::Client::new(sock).status().ok()?;
    let backends = st
        .maps
        .iter()
        .find(|m| m.name.contains("lb4_backends"))
        .map_or(0, |m| m.entries);
    Some((st.services, backends))
}

fn service_objects(i: usize) -> Res<(fibril_api::Service, fibril_api::EndpointSlice)> {
    let name = format!("bench-svc-{i:04}");
    let svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "clusterIP": format!("10.96.{}.{}", 200 + i / 250, 1 + i % 250),
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
        },
    });
    let endpoints: Vec<Value> = (0..BACKENDS_PER_SERVICE)
        .map(|j| {
            let n = i * BACKENDS_PER_SERVICE + j;
            json!({
                "addresses": [format!("10.200.{}.{}", n / 250, 1 + n % 250)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            })
        })
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-bench"),
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "fibril-bench",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    });
    Ok((
        serde_json::from_value(svc).map_err(|e| format!("service {i}: {e}"))?,
        serde_json::from_value(slice).map_err(|e| format!("slice {i}: {e}"))?,
    ))
}

fn rss_part(b: &Bench) -> Res<()> {
    let rec = ClusterRecord::require(&b.lab).map_err(|e| e.to_string())?;
    let agent = rec
        .process(&format!("agent-{RSS_NODE}"))
        .ok_or_else(|| format!("no agent-{RSS_NODE} in cluster.json"))?
        .clone();
    let sock = paths::agent_socket(&b.lab, RSS_NODE);
    println!(
        "(agent {RSS_NODE} pid {} RSS before: {:.1} MiB)",
        agent.pid,
        rss_kib(agent.pid)? as f64 / 1024.0
    );

    let t = Instant::now();
    b.apply(
        "local",
        &deployment("bench-local", RSS_PODS, Some(RSS_NODE)),
    )?;
    b.wait_running("bench-local", RSS_PODS, Duration::from_secs(150))?;
    println!(
        "({RSS_PODS} pods pinned to {RSS_NODE} Running {:.1} s after apply; agent RSS {:.1} MiB)",
        t.elapsed().as_secs_f64(),
        rss_kib(agent.pid)? as f64 / 1024.0
    );

    let (svc0, be0) = programmed(&sock).ok_or("agent status")?;
    let mut objs = Vec::new();
    for i in 0..SERVICES {
        objs.push(service_objects(i)?);
    }
    // Written by WRITERS connections at once (one etcd client each), so the
    // figure is more about the agent than about sequential etcd round trips.
    let mut chunks: Vec<Vec<_>> = (0..WRITERS).map(|_| Vec::new()).collect();
    for (i, o) in objs.into_iter().enumerate() {
        chunks[i % WRITERS].push(o);
    }
    let t0 = Instant::now();
    let written: Vec<Res<()>> = std::thread::scope(|s| {
        let hs: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let rec = rec.clone();
                s.spawn(move || {
                    with_store(&rec, move |store| async move {
                        for (svc, slice) in &chunk {
                            store.create_as(svc).await.map_err(|e| e.to_string())?;
                            store.create_as(slice).await.map_err(|e| e.to_string())?;
                        }
                        Ok::<_, String>(())
                    })
                    .map_err(|e| e.to_string())?
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("writer panicked".into())))
            .collect()
    });
    let write = t0.elapsed();
    written.into_iter().collect::<Res<Vec<()>>>()?;
    let want = (svc0 + SERVICES, be0 + SERVICES * BACKENDS_PER_SERVICE);
    let end = Instant::now() + Duration::from_secs(90).min(b.left());
    let mut last = (svc0, be0);
    let synced = loop {
        if let Some(p) = programmed(&sock) {
            last = p;
            if p.0 >= want.0 && p.1 >= want.1 {
                break t0.elapsed();
            }
        }
        if Instant::now() > end {
            return Err(format!(
                "{RSS_NODE}: {}/{} frontends, {}/{} backends programmed after {:?}",
                last.0,
                want.0,
                last.1,
                want.1,
                t0.elapsed()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A couple of sync passes more, so the figure is the steady state.
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(agent.pid)? as f64 / 1024.0;
    println!(
        "({SERVICES} Services + EndpointSlices written in {:.0} ms; {RSS_NODE} agent: {} frontends, {} backends)",
        write.as_secs_f64() * 1e3,
        last.0,
        last.1
    );
    println!(
        "agent_sync_1000_services_ms {:.0} ms",
        synced.as_secs_f64() * 1e3
    );
    println!(
        "agent_sync_after_last_write_ms {:.0} ms",
        synced.saturating_sub(write).as_secs_f64() * 1e3
    );
    println!("agent_rss_mib {rss:.1} MiB");
    Ok(())
}

fn main() {
    if std::env::args().all(|a| a != "--bench") {
        println!("cluster bench: skipped (run with --bench: it brings up a seed-4w lab)");
        return;
    }
    let exe = std::env::var_os("FIBRIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fibril")));
    let kind = if exe.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else if exe.components().any(|c| c.as_os_str() == "debug") {
        "debug"
    } else {
        "other"
    };
    println!("(fibril binary: {} [{kind}])", exe.display());
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cluster bench: temp dir: {e}");
            std::process::exit(1);
        }
    };
    let lab = format!("bench{}", std::process::id());
    let b = Bench {
        exe: exe.clone(),
        lab: lab.clone(),
        deadline: Instant::now() + RUN_BUDGET,
        tmp,
    };
    let started = Instant::now();
    let mut guard = LabGuard {
        exe,
        lab: lab.clone(),
        armed: true,
    };
    let t = Instant::now();
    let up = b.run(&["lab", "up", "--topology", "seed-4w", "--name", &lab]);
    let up_s = t.elapsed().as_secs_f64();
    let mut failed = false;
    match up {
        Ok(_) => {
            println!("lab_up_seed4w_s {up_s:.1} s");
            for (name, part) in [
                ("cni", cni_part as fn(&Bench) -> Res<()>),
                ("pods", pods_rate_part),
                ("rss", rss_part),
            ] {
                if b.left().is_zero() {
                    eprintln!("cluster bench: time budget spent before {name}");
                    failed = true;
                    break;
                }
                if let Err(e) = part(&b) {
                    eprintln!("cluster bench: {name}: {e}");
                    failed = true;
                }
            }
        }
        Err(e) => {
            eprintln!("cluster bench: {e}");
            failed = true;
        }
    }
    match guard.down() {
        Ok(d) => println!("lab_down_seed4w_s {:.1} s", d.as_secs_f64()),
        Err(e) => {
            eprintln!("cluster bench: {e}");
            failed = true;
        }
    }
    println!("(total {:.0} s)", started.elapsed().as_secs_f64());
    if failed {
        std::process::exit(1);
    }
}
