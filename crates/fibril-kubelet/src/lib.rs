//! The pod runner (`fibril kubelet`): one per node of a lab. It plays
//! kubelet and container runtime at once:
//!
//! - registers the node's `Node` object (hostname/os/role labels, InternalIP
//!   and Hostname addresses, `Ready` condition, node info) and heartbeats it;
//!   `spec.podCIDR` belongs to the operator and is never touched;
//! - polls the Pods bound to the node (`spec.nodeName`) and runs each in a
//!   sandbox: a network namespace ([`fibril_lab::paths::pod_netns_name`]),
//!   the real `fibril-cni` plugin process for ADD/DEL, and a built-in
//!   workload ([`workload`]) in the pod's network, UTS and mount namespaces;
//! - writes the pod's status (phase, IPs, conditions, container status) and
//!   core/v1 Events (`FailedCreatePodSandBox`, `Failed`, `Pulled`, `Created`,
//!   `Started`, `Killing`);
//! - keeps a record per pod ([`record`]) so a restarted pod runner adopts
//!   running workloads instead of restarting them, and `fibril exec` finds
//!   the pod's process;
//! - deletion (the pod deletion contract): a Pod with `deletionTimestamp` or
//!   a vanished Pod is stopped (SIGTERM, SIGKILL after 2 s), CNI DEL, netns
//!   and record removed, then the object deleted.

pub mod error;
pub mod record;
pub mod sandbox;
pub mod time;
pub mod workload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use fibril_api::{ObjectKey, Pod};
use fibril_lab::{paths, LabState};
use fibril_store::{SharedStore, StoreError, StoreExt};
use serde_json::{json, Value};

pub use error::{KubeletError, Result};
pub use record::{PodFiles, PodRecord};
pub use sandbox::{Cni, CniFailure};
pub use workload::{workload_for_image, WorkloadKind};

/// kubelet version the Node reports (the seeds' clusters run v1.33.2).
pub const KUBELET_VERSION: &str = "v1.33.2";

/// How the pod runner is set up.
#[derive(Clone)]
pub struct KubeletOptions {
    pub lab: String,
    pub node: String,
    pub store: SharedStore,
    /// The `fibril` binary (CNI plugin link target, workload program).
    pub fibril_exe: PathBuf,
    /// How often Pods are polled.
    pub poll_interval: Duration,
    /// How often the Node's Ready condition is refreshed.
    pub heartbeat_interval: Duration,
    /// SIGTERM -> SIGKILL grace.
    pub kill_grace: Duration,
    /// How long a deleted pod keeps running, not Ready, before SIGTERM: the
    /// controller and agents move its endpoints and redirects away first,
    /// so no request is sent to a process that is already gone.
    pub endpoint_drain: Duration,
    /// etcd endpoints handed to `fibril dns` workloads (`--etcd`).
    pub etcd: Vec<String>,
}

impl std::fmt::Debug for KubeletOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletOptions")
            .field("lab", &self.lab)
            .field("node", &self.node)
            .field("fibril_exe", &self.fibril_exe)
            .finish_non_exhaustive()
    }
}

impl KubeletOptions {
    /// Defaults: this executable, 300 ms polls, 10 s heartbeats, 2 s grace.
    pub fn new(lab: &str, node: &str, store: SharedStore) -> Self {
        KubeletOptions {
            lab: lab.to_string(),
            node: node.to_string(),
            store,
            fibril_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fibril")),
            poll_interval: Duration::from_millis(300),
            heartbeat_interval: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
            endpoint_drain: Duration::from_secs(1),
            etcd: Vec::new(),
        }
    }
}

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(BACKOFF_MAX)
}

/// What the pod runner is doing with one pod.
enum Phase {
    /// Sandbox creation failed; retry at `next`.
    SandboxBackoff { next: Instant, delay: Duration },
    /// The image names no built-in workload: stays Pending.
    ImageError,
    /// Sandbox up; workload running or waiting to be restarted.
    Running {
        record: Box<PodRecord>,
        child: Option<Child>,
        restart_at: Option<Instant>,
        restart_delay: Duration,
    },
}

struct PodState {
    uid: String,
    phase: Phase,
    /// Status to write (cleared once written).
    pending_status: Option<Value>,
    /// When the pod was first seen with a deletionTimestamp.
    terminating_since: Option<Instant>,
}

/// The pod runner of one node.
pub struct Kubelet {
    opts: KubeletOptions,
    node_ip: Ipv4Addr,
    dns_ip: Ipv4Addr,
    control_plane: bool,
    pods_dir: PathBuf,
    cni: Cni,
    pods: HashMap<(String, String), PodState>,
    /// (ns, pod, reason, message) -> (event name, count).
    events: HashMap<(String, String, String, String), (String, i64)>,
    last_heartbeat: Option<Instant>,
}

/// Runs the pod runner until `shutdown` resolves. Pods keep running after
/// it returns (a restarted pod runner adopts them).
pub async fn run(opts: KubeletOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut k = Kubelet::new(opts)?;
    k.adopt().await;
    tokio::pin!(shutdown);
    loop {
        k.tick().await;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(k.opts.poll_interval) => {}
        }
    }
    tracing::info!(node = %k.opts.node, "pod runner stopping; pods keep running");
    Ok(())
}

fn pod_key(p: &Pod) -> (String, String) {
    (
        p.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// `CNI_CONTAINERID` of a pod instance: its uid without dashes (the plugin
/// hashes it into the host veth name).
pub fn container_id(uid: &str, namespace: &str, name: &str) -> String {
    let id: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if id.is_empty() {
        format!("{namespace}-{name}")
    } else {
        id
    }
}

impl Kubelet {
    /// Reads the lab's topology (node IP, role, DNS IP) and prepares the
    /// CNI plugin link and the pods dir.
    pub fn new(opts: KubeletOptions) -> Result<Kubelet> {
        let lab_err = |message: String| KubeletError::Lab {
            lab: opts.lab.clone(),
            message,
        };
        let state = LabState::load(&opts.lab)
            .map_err(|e| lab_err(e.to_string()))?
            .ok_or_else(|| lab_err("no state.json: is the lab up?".into()))?;
        let topo = &state.topology;
        let node = topo
            .nodes
            .iter()
            .find(|n| n.name == opts.node)
            .ok_or_else(|| lab_err(format!("node {} is not in the topology", opts.node)))?;
        let node_ip = node
            .interfaces
            .iter()
            .find(|i| i.name == "eth1")
            .or_else(|| node.interfaces.first())
            .map(|i| i.address)
            .ok_or_else(|| lab_err(format!("node {} has no interface", opts.node)))?;
        let control_plane = node.role == fibril_lab::topology::Role::ControlPlane;
        let dns_ip = topo.cluster.dns_service_ip;
        let pods_dir = paths::pods_dir(&opts.lab, &opts.node);
        std::fs::create_dir_all(&pods_dir).map_err(|e| KubeletError::io(&pods_dir, "create", e))?;
        let cni = Cni {
            bin_dir: paths::bin_dir(&opts.lab),
            agent_socket: paths::agent_socket(&opts.lab, &opts.node),
        };
        cni.ensure_plugin(&opts.fibril_exe)?;
        Ok(Kubelet {
            opts,
            node_ip,
            dns_ip,
            control_plane,
            pods_dir,
            cni,
            pods: HashMap::new(),
            events: HashMap::new(),
            last_heartbeat: None,
        })
    }

    fn store(&self) -> &SharedStore {
        &self.opts.store
    }

    /// Takes over the records of a previous run: running workloads stay.
    pub async fn adopt(&mut self) {
        for rec in record::load_all(&self.pods_dir) {
            tracing::info!(pod = %format!("{}/{}", rec.namespace, rec.name), pid = rec.pid,
                running = rec.is_running(), "adopting pod record");
            let key = (rec.namespace.clone(), rec.name.clone());
            let alive = rec.is_running();
            self.pods.insert(
                key,
                PodState {
                    uid: rec.uid.clone(),
                    phase: Phase::Running {
                        restart_at: (!alive).then(Instant::now),
                        record: Box::new(rec),
                        child: None,
                        restart_delay: BACKOFF_START,
                    },
                    pending_status: None,
                    terminating_since: None,
                },
            );
        }
    }

    /// One round: heartbeat when due, then reconcile every pod of this node.
    pub async fn tick(&mut self) {
        if self
            .last_heartbeat
            .is_none_or(|t| t.elapsed() >= self.opts.heartbeat_interval)
        {
            match self.register_node().await {
                Ok(()) => self.last_heartbeat = Some(Instant::now()),
                Err(e) => tracing::warn!(node = %self.opts.node, error = %e, "node registration"),
            }
        }
        let pods = match self.store().list_as::<Pod>(None).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "list pods");
                return;
            }
        };
        let mine: Vec<Pod> = pods
            .into_iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.opts.node)
            })
            .collect();
        let mut seen = HashSet::new();
        for pod in &mine {
            let key = pod_key(pod);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            seen.insert(key.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                let drain = self.opts.endpoint_drain;
                if let Some(st) = self
                    .pods
                    .get_mut(&key)
                    .filter(|s| matches!(s.phase, Phase::Running { .. }))
                {
                    let first = st.terminating_since.is_none();
                    let since = *st.terminating_since.get_or_insert_with(Instant::now);
                    if first {
                        let msg = format!("Stopping container {}", first_container_name(pod));
                        self.event(&key, &uid, "Normal", "Killing", &msg).await;
                    }
                    if since.elapsed() < drain {
                        continue;
                    }
                }
                self.teardown(&key, true).await;
                self.delete_object(&key, &uid).await;
                continue;
            }
            if self.pods.get(&key).is_some_and(|s| s.uid != uid) {
                // Same name, new instance: the old sandbox goes first.
                self.teardown(&key, false).await;
            }
            if !self.pods.contains_key(&key) {
                self.start_pod(pod).await;
            } else {
                self.check_pod(pod).await;
            }
            self.flush_status(&key, &uid).await;
        }
        let gone: Vec<_> = self
            .pods
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            tracing::info!(pod = %format!("{}/{}", key.0, key.1), "pod object gone; removing sandbox");
            self.teardown(&key, false).await;
        }
    }

    // ---- node ---------------------------------------------------------

    async fn register_node(&self) -> std::result::Result<(), StoreError> {
        let name = &self.opts.node;
        let key = ObjectKey::new("Node", None, name);
        let now = time::rfc3339_now();
        let existing = self.store().get(&key).await?;
        let mut value = match &existing {
            Some(o) => o.value.clone(),
            None => {
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
            }
        };
        let labels = &mut value["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        for (k, v) in [
            ("beta.kubernetes.io/arch", "amd64"),
            ("beta.kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("kubernetes.io/hostname", name.as_str()),
            ("kubernetes.io/os", "linux"),
        ] {
            labels[k] = json!(v);
        }
        if self.control_plane {
            labels["node-role.kubernetes.io/control-plane"] = json!("");
        }
        let status = &mut value["status"];
        if !status.is_object() {
            *status = json!({});
        }
        let ready_since = status["conditions"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| now.clone());
        status["addresses"] = json!([
            {"type": "InternalIP", "address": self.node_ip.to_string()},
            {"type": "Hostname", "address": name},
        ]);
        status["conditions"] = json!([
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "message": "kubelet has sufficient memory available", "lastHeartbeatTime": now, "lastTransitionTime": ready_since},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "message": "kubelet has no disk pressure", "lastHeartbeatTime": now, "lastTransitionTime": ready_since},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "message": "kubelet has sufficient PID available", "lastHeartbeatTime": now, "lastTransitionTime": ready_since},
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": ready_since},
        ]);
        status["nodeInfo"] = json!({
            "architecture": "amd64",
            "operatingSystem": "linux",
            "osImage": os_image(),
            "kernelVersion": kernel_version(),
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": format!("fibril://{}", env!("CARGO_PKG_VERSION")),
            "machineID": "", "systemUUID": "", "bootID": "",
        });
        status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": 10250}});
        match existing {
            Some(o) => self
                .store()
                .update(&key, value, o.mod_revision)
                .await
                .map(|_| ()),
            None => self.store().create(&key, value).await.map(|_| ()),
        }
    }

    // ---- pods ---------------------------------------------------------

    async fn start_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(container) = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .cloned()
        else {
            return;
        };
        let image = container.image.clone().unwrap_or_default();
        let Some(kind) = workload_for_image(&image) else {
            let why = format!(
                "Failed to pull image \"{image}\": image \"{image}\" is not a built-in Fibril workload \
                 (known: traefik/whoami, nginx, nicolaka/netshoot, curlimages/curl, busybox, alpine)"
            );
            tracing::warn!(pod = %format!("{}/{}", key.0, key.1), %image, "unknown image");
            self.event(&key, &uid, "Warning", "Failed", &why).await;
            self.event(&key, &uid, "Warning", "Failed", "Error: ErrImagePull")
                .await;
            let status = self.waiting_status(pod, "ErrImagePull", Some(&why));
            self.pods.insert(
                key,
                PodState {
                    uid,
                    phase: Phase::ImageError,
                    pending_status: Some(status),
                    terminating_since: None,
                },
            );
            return;
        };
        self.pods.insert(
            key.clone(),
            PodState {
                uid: uid.clone(),
                phase: Phase::SandboxBackoff {
                    next: Instant::now(),
                    delay: BACKOFF_START / 2,
                },
                pending_status: Some(self.waiting_status(pod, "ContainerCreating", None)),
                terminating_since: None,
            },
        );
        self.try_sandbox(pod, kind).await;
    }

    /// Creates the sandbox and starts the workload; on failure schedules
    /// the next try (backoff 1 s doubling to 30 s).
    async fn try_sandbox(&mut self, pod: &Pod, kind: WorkloadKind) {
        let key = pod_key(pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (ns, name) = (key.0.clone(), key.1.clone());
        let netns = paths::pod_netns_name(&self.opts.lab, &ns, &name);
        let cid = container_id(&uid, &ns, &name);
        let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
        let netns_path = fibril_netlink::netns_path(&netns)
            .to_string_lossy()
            .to_string();
        let cni_pod = sandbox::CniPod {
            container_id: &cid,
            namespace: &ns,
            name: &name,
            netns_path: Some(&netns_path),
            labels: &labels,
        };
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let netns = if host_network {
            fibril_lab::netns_name(&self.opts.lab, &self.opts.node)
        } else {
            netns
        };
        let node_ip = self.node_ip.to_string();
        let result: std::result::Result<String, String> = async {
            if host_network {
                return Ok(node_ip);
            }
            // rtnetlink's sync API runs its own runtime: keep it off ours.
            let n = netns.clone();
            tokio::task::spawn_blocking(move || sandbox::create_netns(&n))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let res =
                self.cni.call("ADD", &cni_pod).await.map_err(|f| {
                    format!("plugin type=\"{}\" failed (add): {f}", sandbox::CNI_TYPE)
                })?;
            sandbox::result_ip(&res).ok_or_else(|| format!("CNI result has no IP: {res}"))
        }
        .await;
        let ip = match result {
            Ok(ip) => ip,
            Err(e) => {
                let msg = format!("Failed to create pod sandbox: {e}");
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "sandbox");
                // Undo: DEL releases whatever ADD got (idempotent), then the netns.
                let del = sandbox::CniPod {
                    netns_path: fibril_netlink::netns_exists(&netns).then_some(netns_path.as_str()),
                    ..cni_pod.clone()
                };
                if let Err(f) = self.cni.call("DEL", &del).await {
                    tracing::warn!(pod = %format!("{ns}/{name}"), error = %f, "CNI DEL after failed ADD");
                }
                let _ = sandbox::delete_netns(&netns);
                self.event(&key, &uid, "Warning", "FailedCreatePodSandBox", &msg)
                    .await;
                let status = self.waiting_status(pod, "ContainerCreating", None);
                if let Some(st) = self.pods.get_mut(&key) {
                    let delay = match st.phase {
                        Phase::SandboxBackoff { delay, .. } => next_backoff(delay),
                        _ => BACKOFF_START,
                    };
                    st.phase = Phase::SandboxBackoff {
                        next: Instant::now() + delay,
                        delay,
                    };
                    st.pending_status = Some(status);
                }
                return;
            }
        };
        let files = PodFiles::new(&self.pods_dir, &ns, &name);
        let mut record = PodRecord {
            namespace: ns.clone(),
            name: name.clone(),
            uid: uid.clone(),
            container_id: cid.clone(),
            netns: netns.clone(),
            pid: 0,
            pid_start_time: 0,
            ip: ip.clone(),
            hostname: if host_network {
                self.opts.node.clone()
            } else {
                name.clone()
            },
            resolv_conf: files.resolv_conf.clone(),
            hostname_file: files.hostname.clone(),
            hosts_file: files.hosts.clone(),
            log: files.log.clone(),
            node: self.opts.node.clone(),
            image: pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            restart_count: 0,
            started_at: String::new(),
            host_network,
        };
        let write = |p: &PathBuf, text: String| {
            std::fs::write(p, text).map_err(|e| format!("write {}: {e}", p.display()))
        };
        let hostname = record.hostname.clone();
        let files_ok = write(&files.resolv_conf, self.pod_resolv_conf(pod))
            .and_then(|_| write(&files.hostname, format!("{hostname}\n")))
            .and_then(|_| write(&files.hosts, sandbox::hosts_file(&ip, &hostname)));
        if let Err(e) = files_ok {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "pod files");
        }
        let image = record.image.clone();
        let container_name = first_container_name(pod);
        self.event(
            &key,
            &uid,
            "Normal",
            "Pulled",
            &format!("Container image \"{image}\" already present on machine"),
        )
        .await;
        let child = self.spawn(pod, kind, &mut record);
        match child {
            Ok(child) => {
                self.event(
                    &key,
                    &uid,
                    "Normal",
                    "Created",
                    &format!("Created container: {container_name}"),
                )
                .await;
                self.event(
                    &key,
                    &uid,
                    "Normal",
                    "Started",
                    &format!("Started container {container_name}"),
                )
                .await;
                let _ = record.save(&files.record);
                let status = self.running_status(pod, &record);
                if let Some(st) = self.pods.get_mut(&key) {
                    st.phase = Phase::Running {
                        record: Box::new(record),
                        child: Some(child),
                        restart_at: None,
                        restart_delay: BACKOFF_START,
                    };
                    st.pending_status = Some(status);
                }
            }
            Err(e) => {
                // The sandbox stays; the workload start is retried like a crash.
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "start workload");
                self.event(&key, &uid, "Warning", "Failed", &format!("Error: {e}"))
                    .await;
                let _ = record.save(&files.record);
                if let Some(st) = self.pods.get_mut(&key) {
                    st.phase = Phase::Running {
                        record: Box::new(record),
                        child: None,
                        restart_at: Some(Instant::now() + BACKOFF_START),
                        restart_delay: BACKOFF_START,
                    };
                }
            }
        }
    }

    fn spawn(&self, pod: &Pod, kind: WorkloadKind, record: &mut PodRecord) -> Result<Child> {
        let c = pod.spec.as_ref().and_then(|s| s.containers.first());
        let mut args: Vec<String> = c.and_then(|c| c.command.clone()).unwrap_or_default();
        args.extend(c.and_then(|c| c.args.clone()).unwrap_or_default());
        let env: Vec<(String, String)> = c
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        let argv = self.workload_argv(pod, kind, args);
        let child = sandbox::spawn_workload(&sandbox::WorkloadSpawn {
            exe: self.opts.fibril_exe.clone(),
            argv,
            env,
            netns: record.netns.clone(),
            hostname: record.hostname.clone(),
            resolv_conf: record.resolv_conf.clone(),
            hostname_file: record.hostname_file.clone(),
            hosts_file: record.hosts_file.clone(),
            log: record.log.clone(),
        })?;
        let pid = i32::try_from(child.id()).unwrap_or(0);
        record.pid = pid;
        record.pid_start_time = fibril_lab::state::proc_start_time(pid).unwrap_or(0);
        record.started_at = time::rfc3339_now();
        Ok(child)
    }

    /// `fibril` arguments of a container: `workload KIND -- ARGS`, or for
    /// DNS images `dns --configmap NS/CM[:KEY] [--etcd URL] -- ARGS` with the
    /// ConfigMap of the pod's first configMap volume (the Corefile).
    fn workload_argv(&self, pod: &Pod, kind: WorkloadKind, args: Vec<String>) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if kind == WorkloadKind::Dns {
            argv.push("dns".into());
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            if let Some((cm, key)) = corefile_configmap(pod) {
                argv.push("--configmap".into());
                argv.push(format!("{ns}/{cm}:{key}"));
            }
            if !self.opts.etcd.is_empty() {
                argv.push("--etcd".into());
                argv.push(self.opts.etcd.join(","));
            }
        } else {
            argv.push("workload".into());
            argv.push(kind.as_str().into());
        }
        argv.push("--".into());
        argv.extend(args);
        argv
    }

    /// The node's resolv.conf (what `dnsPolicy: Default` pods get):
    /// `paths::node_dir(lab, node)/resolv.conf` when the lab wrote one (e.g.
    /// pointing at an upstream DNS inside the lab), else the machine's.
    fn node_resolv_conf(&self) -> String {
        let lab_file = paths::node_dir(&self.opts.lab, &self.opts.node).join("resolv.conf");
        std::fs::read_to_string(lab_file)
            .or_else(|_| std::fs::read_to_string("/etc/resolv.conf"))
            .unwrap_or_default()
    }

    /// The resolv.conf a pod gets, by `dnsPolicy` (kubelet's rules):
    /// `Default`, or `ClusterFirst` with `hostNetwork`, -> the node's;
    /// `None` -> `dnsConfig` only; otherwise the cluster DNS.
    fn pod_resolv_conf(&self, pod: &Pod) -> String {
        let spec = pod.spec.as_ref();
        let host_net = spec.and_then(|s| s.host_network).unwrap_or(false);
        let policy = spec
            .and_then(|s| s.dns_policy.clone())
            .unwrap_or_else(|| "ClusterFirst".into());
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        match policy.as_str() {
            "Default" => self.node_resolv_conf(),
            "ClusterFirst" if host_net => self.node_resolv_conf(),
            "None" => {
                let cfg = spec.and_then(|s| s.dns_config.clone()).unwrap_or_default();
                let mut out = String::new();
                let search = cfg.searches.unwrap_or_default();
                if !search.is_empty() {
                    out.push_str(&format!("search {}\n", search.join(" ")));
                }
                for n in cfg.nameservers.unwrap_or_default() {
                    out.push_str(&format!("nameserver {n}\n"));
                }
                let opts: Vec<String> = cfg
                    .options
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|o| {
                        let n = o.name?;
                        Some(match o.value {
                            Some(v) => format!("{n}:{v}"),
                            None => n,
                        })
                    })
                    .collect();
                if !opts.is_empty() {
                    out.push_str(&format!("options {}\n", opts.join(" ")));
                }
                out
            }
            _ => sandbox::resolv_conf(ns, self.dns_ip),
        }
    }

    /// A known pod: retry a failed sandbox, restart an exited workload,
    /// re-publish status if a write failed.
    async fn check_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        let Some(st) = self.pods.get_mut(&key) else {
            return;
        };
        match &mut st.phase {
            Phase::ImageError => {}
            Phase::SandboxBackoff { next, .. } => {
                if Instant::now() >= *next {
                    let image = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default();
                    if let Some(kind) = workload_for_image(&image) {
                        self.try_sandbox(pod, kind).await;
                    }
                }
            }
            Phase::Running {
                record,
                child,
                restart_at,
                restart_delay,
            } => {
                let exited = match child.as_mut() {
                    Some(c) => match c.try_wait() {
                        Ok(Some(status)) => Some(status.to_string()),
                        Ok(None) => None,
                        Err(e) => Some(e.to_string()),
                    },
                    None if restart_at.is_none() && !record.is_running() => Some("exited".into()),
                    None => None,
                };
                if let Some(how) = exited {
                    tracing::warn!(pod = %format!("{}/{}", key.0, key.1), pid = record.pid, %how,
                        "workload exited; restarting after {:?}", restart_delay);
                    *child = None;
                    record.pid = 0;
                    *restart_at = Some(Instant::now() + *restart_delay);
                    *restart_delay = next_backoff(*restart_delay);
                    let status = self.waiting_status(pod, "CrashLoopBackOff", None);
                    if let Some(st) = self.pods.get_mut(&key) {
                        st.pending_status = Some(status);
                    }
                    return;
                }
                if restart_at.is_some_and(|t| Instant::now() >= t) {
                    let image = record.image.clone();
                    let Some(kind) = workload_for_image(&image) else {
                        return;
                    };
                    let mut rec = (**record).clone();
                    rec.restart_count += 1;
                    let spawned = self.spawn(pod, kind, &mut rec);
                    let files = PodFiles::new(&self.pods_dir, &key.0, &key.1);
                    let Some(st) = self.pods.get_mut(&key) else {
                        return;
                    };
                    let Phase::Running {
                        record,
                        child,
                        restart_at,
                        restart_delay,
                    } = &mut st.phase
                    else {
                        return;
                    };
                    match spawned {
                        Ok(c) => {
                            **record = rec;
                            *child = Some(c);
                            *restart_at = None;
                            let _ = record.save(&files.record);
                            let rec = record.clone();
                            let status = self.running_status(pod, &rec);
                            if let Some(st) = self.pods.get_mut(&key) {
                                st.pending_status = Some(status);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "restart workload");
                            *restart_at = Some(Instant::now() + *restart_delay);
                            *restart_delay = next_backoff(*restart_delay);
                        }
                    }
                } else if st.pending_status.is_none() && !pod_status_matches(pod, record) {
                    // Someone overwrote the status (or it was adopted): publish again.
                    let rec = record.clone();
                    let status = self.running_status(pod, &rec);
                    if let Some(st) = self.pods.get_mut(&key) {
                        st.pending_status = Some(status);
                    }
                }
            }
        }
    }

    /// Stops the workload, CNI DEL, deletes the netns and the pod's files.
    async fn teardown(&mut self, key: &(String, String), announce: bool) {
        let (ns, name) = (key.0.clone(), key.1.clone());
        let state = self.pods.remove(key);
        self.events.retain(|k, _| !(k.0 == ns && k.1 == name));
        let files = PodFiles::new(&self.pods_dir, &ns, &name);
        let record = match state {
            Some(PodState {
                phase: Phase::Running { record, child, .. },
                ..
            }) => {
                let mut child = child;
                if announce {
                    let c = record.image.clone();
                    tracing::info!(pod = %format!("{ns}/{name}"), pid = record.pid, "stopping workload ({c})");
                }
                sandbox::stop_process(
                    record.pid,
                    record.pid_start_time,
                    child.as_mut(),
                    self.opts.kill_grace,
                )
                .await;
                Some(*record)
            }
            Some(_) => None,
            None => PodRecord::load(&files.record).ok(),
        };
        let netns = record
            .as_ref()
            .map(|r| r.netns.clone())
            .unwrap_or_else(|| paths::pod_netns_name(&self.opts.lab, &ns, &name));
        if record.as_ref().is_some_and(|r| r.host_network) {
            // The node's own namespace: nothing to undo but the files.
            files.remove_all();
            tracing::info!(pod = %format!("{ns}/{name}"), "host-network pod removed");
            return;
        }
        if let Some(r) = &record {
            let empty = BTreeMap::new();
            let netns_path = fibril_netlink::netns_path(&netns)
                .to_string_lossy()
                .to_string();
            let del = sandbox::CniPod {
                container_id: &r.container_id,
                namespace: &ns,
                name: &name,
                netns_path: fibril_netlink::netns_exists(&netns).then_some(netns_path.as_str()),
                labels: &empty,
            };
            if let Err(f) = self.cni.call("DEL", &del).await {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %f, "CNI DEL");
            }
        }
        if let Err(e) = sandbox::delete_netns(&netns) {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "delete netns");
        }
        files.remove_all();
        tracing::info!(pod = %format!("{ns}/{name}"), "sandbox removed");
    }

    async fn delete_object(&self, key: &(String, String), uid: &str) {
        match self.store().get_as::<Pod>(Some(&key.0), &key.1).await {
            Ok(Some(p)) if p.metadata.uid.as_deref().unwrap_or_default() == uid => {
                let rv = fibril_store::resource_version_of(&p);
                match self
                    .store()
                    .delete_as::<Pod>(Some(&key.0), &key.1, rv)
                    .await
                {
                    Ok(_) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "delete pod")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "get pod"),
        }
    }

    // ---- status and events --------------------------------------------

    fn base_status(&self, pod: &Pod, phase: &str, ready: bool) -> Value {
        let now = time::rfc3339_now();
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| json!(now));
        let t = if ready { "True" } else { "False" };
        let mut ready_cond = json!({"type": "Ready", "status": t, "lastTransitionTime": now});
        let mut cready_cond =
            json!({"type": "ContainersReady", "status": t, "lastTransitionTime": now});
        if !ready {
            let msg = format!(
                "containers with unready status: [{}]",
                first_container_name(pod)
            );
            for c in [&mut ready_cond, &mut cready_cond] {
                c["reason"] = json!("ContainersNotReady");
                c["message"] = json!(msg);
            }
        }
        json!({
            "phase": phase,
            "hostIP": self.node_ip.to_string(),
            "hostIPs": [{"ip": self.node_ip.to_string()}],
            "startTime": created,
            "qosClass": "BestEffort",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": t, "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": created},
                ready_cond,
                cready_cond,
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": created},
            ],
        })
    }

    fn waiting_status(&self, pod: &Pod, reason: &str, message: Option<&str>) -> Value {
        let mut s = self.base_status(pod, "Pending", false);
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let mut waiting = json!({"reason": reason});
        if let Some(m) = message {
            waiting["message"] = json!(m);
        }
        s["containerStatuses"] = json!([{
            "name": first_container_name(pod),
            "image": image,
            "imageID": "",
            "ready": false,
            "started": false,
            "restartCount": 0,
            "state": {"waiting": waiting},
        }]);
        if reason == "CrashLoopBackOff" {
            s["phase"] = json!("Running");
            s["containerStatuses"][0]["state"]["waiting"]["message"] = json!(format!(
                "back-off restarting failed container {}",
                first_container_name(pod)
            ));
            if let Some(r) = self.pods.get(&pod_key(pod)).and_then(|st| match &st.phase {
                Phase::Running { record, .. } => Some(record),
                _ => None,
            }) {
                s["podIP"] = json!(r.ip);
                s["podIPs"] = json!([{"ip": r.ip}]);
                s["containerStatuses"][0]["restartCount"] = json!(r.restart_count);
                s["containerStatuses"][0]["containerID"] =
                    json!(format!("fibril://{}", r.container_id));
            }
        }
        s
    }

    fn running_status(&self, pod: &Pod, r: &PodRecord) -> Value {
        let ready = ports_listening(pod, r.pid);
        let mut s = self.base_status(pod, "Running", ready);
        s["podIP"] = json!(r.ip);
        s["podIPs"] = json!([{"ip": r.ip}]);
        s["containerStatuses"] = json!([{
            "name": first_container_name(pod),
            "image": r.image,
            "imageID": format!("fibril://{}", workload_for_image(&r.image).map(|k| k.as_str()).unwrap_or("")),
            "containerID": format!("fibril://{}", r.container_id),
            "ready": ready,
            "started": true,
            "restartCount": r.restart_count,
            "state": {"running": {"startedAt": r.started_at}},
        }]);
        s
    }

    /// Writes the pending status of a pod (if any); kept for the next round
    /// on conflict.
    async fn flush_status(&mut self, key: &(String, String), uid: &str) {
        let Some(status) = self.pods.get(key).and_then(|s| s.pending_status.clone()) else {
            return;
        };
        let okey = ObjectKey::new("Pod", Some(&key.0), &key.1);
        let res = async {
            let Some(obj) = self.store().get(&okey).await? else {
                return Ok::<bool, StoreError>(true);
            };
            if obj.value["metadata"]["uid"].as_str().unwrap_or_default() != uid {
                return Ok(true);
            }
            let mut v = obj.value.clone();
            v["status"] = status;
            self.store().update(&okey, v, obj.mod_revision).await?;
            Ok(true)
        }
        .await;
        match res {
            Ok(_) => {
                if let Some(s) = self.pods.get_mut(key) {
                    s.pending_status = None;
                }
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "write pod status")
            }
        }
    }

    /// Records a core/v1 Event about a pod (a repeat bumps `count`).
    async fn event(
        &mut self,
        key: &(String, String),
        uid: &str,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        let (ns, pod) = key;
        let now = time::rfc3339_now();
        let ekey = (
            ns.clone(),
            pod.clone(),
            reason.to_string(),
            message.to_string(),
        );
        if let Some((name, count)) = self.events.get(&ekey).cloned() {
            let okey = ObjectKey::new("Event", Some(ns), &name);
            if let Ok(Some(obj)) = self.store().get(&okey).await {
                let mut v = obj.value.clone();
                v["count"] = json!(count + 1);
                v["lastTimestamp"] = json!(now);
                if self
                    .store()
                    .update(&okey, v, obj.mod_revision)
                    .await
                    .is_ok()
                {
                    self.events.insert(ekey, (name, count + 1));
                    return;
                }
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("{pod}.{:016x}", nanos as u64);
        let v = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": ns, "uid": uid},
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": self.opts.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.opts.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        match self
            .store()
            .create(&ObjectKey::new("Event", Some(ns), &name), v)
            .await
        {
            Ok(_) => {
                self.events.insert(ekey, (name, 1));
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{pod}"), %reason, error = %e, "write event")
            }
        }
    }
}

/// (ConfigMap, key) holding a DNS pod's Corefile: the configMap volume with
/// a `Corefile` item (node-local-dns also mounts the optional kube-dns one),
/// else the volume named config-volume, else the first configMap volume.
pub fn corefile_configmap(pod: &Pod) -> Option<(String, String)> {
    let vols: Vec<_> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.config_map.is_some())
        .collect();
    let has_corefile = |v: &&fibril_api::k8s_openapi::api::core::v1::Volume| {
        v.config_map
            .as_ref()
            .and_then(|c| c.items.as_ref())
            .is_some_and(|i| i.iter().any(|i| i.key == "Corefile"))
    };
    let cm = vols
        .iter()
        .find(has_corefile)
        .or_else(|| vols.iter().find(|v| v.name == "config-volume"))
        .or_else(|| vols.first())
        .and_then(|v| v.config_map.clone())?;
    let key = cm
        .items
        .as_ref()
        .and_then(|i| i.iter().find(|i| i.key == "Corefile").or(i.first()))
        .map(|i| i.key.clone())
        .unwrap_or_else(|| "Corefile".into());
    Some((cm.name, key))
}

fn first_container_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// The stored status already says what the record says (Running, IP, restarts).
fn pod_status_matches(pod: &Pod, r: &PodRecord) -> bool {
    let Some(s) = pod.status.as_ref() else {
        return false;
    };
    s.phase.as_deref() == Some("Running")
        && s.pod_ip.as_deref() == Some(r.ip.as_str())
        && s.container_statuses
            .as_ref()
            .and_then(|c| c.first())
            .is_some_and(|c| {
                c.restart_count == r.restart_count
                    && c.state.as_ref().is_some_and(|st| st.running.is_some())
                    && c.ready == ports_listening(pod, r.pid)
            })
}

/// Readiness without probes: every port the first container declares is
/// bound in the pod's network namespace (TCP listening, UDP bound), read
/// from `/proc/<pid>/net/*`, which shows the namespace of `pid`. A pod
/// without declared ports is ready once it runs.
fn ports_listening(pod: &Pod, pid: i32) -> bool {
    let ports: Vec<(bool, i32)> = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref())
        .map(|ps| {
            ps.iter()
                .map(|p| (p.protocol.as_deref() == Some("UDP"), p.container_port))
                .collect()
        })
        .unwrap_or_default();
    if ports.is_empty() {
        return true;
    }
    if pid <= 0 {
        return false;
    }
    let table = |file: &str, listen_only: bool| -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/net/{file}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let local = f.nth(1)?;
                let state = f.nth(1)?;
                if listen_only && state != "0A" {
                    return None;
                }
                i32::from_str_radix(local.rsplit(':').next()?, 16).ok()
            })
            .collect()
    };
    let (tcp, udp) = (table("tcp", true), table("udp", false));
    ports
        .iter()
        .all(|(is_udp, port)| if *is_udp { &udp } else { &tcp }.contains(port))
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.release().to_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod_with_volumes(v: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "kube-system"},
            "spec": {"containers": [{"name": "c", "image": "coredns/coredns:1.11.3"}], "volumes": v},
        }))
        .unwrap()
    }

    #[test]
    fn corefile_configmap_picks_the_corefile_volume() {
        let coredns = pod_with_volumes(json!([
            {"name": "config-volume", "configMap": {"name": "coredns",
              "items": [{"key": "Corefile", "path": "Corefile"}]}}
        ]));
        assert_eq!(
            corefile_configmap(&coredns),
            Some(("coredns".into(), "Corefile".into()))
        );
        let nodelocal = pod_with_volumes(json!([
            {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock"}},
            {"name": "kube-dns-config", "configMap": {"name": "kube-dns", "optional": true}},
            {"name": "config-volume", "configMap": {"name": "node-local-dns",
              "items": [{"key": "Corefile", "path": "Corefile.base"}]}}
        ]));
        assert_eq!(
            corefile_configmap(&nodelocal),
            Some(("node-local-dns".into(), "Corefile".into()))
        );
        assert_eq!(corefile_configmap(&pod_with_volumes(json!([]))), None);
    }

    #[test]
    fn container_ids_are_uid_based() {
        assert_eq!(container_id("3f2a-11-ab", "default", "web"), "3f2a11ab");
        assert_eq!(container_id("", "default", "web"), "default-web");
    }
}
