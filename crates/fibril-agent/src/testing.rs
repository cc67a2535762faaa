//! Test support for privileged tests of the agent and of the components
//! built on it (CNI plugin, pod runner, CLI): an agent (or any component)
//! on its own tokio runtime thread ([`RuntimeThread`], [`TestAgent`]), a
//! guard that removes the namespaces and pinned datapaths a test made
//! ([`Cleanup`]), unique names and polling (re-exported from
//! `fibril_datapath::testing::fixture`), and the store setup every fabric
//! test does first ([`store_with_pod_cidrs`], [`config_with`]). Needs root.

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fibril_api::fibril::{FibrilNodeSpec, NodeIpamSpec};
use fibril_api::FibrilNode;
use fibril_config::Config;
use fibril_datapath::Datapath;
use fibril_netlink::NetNs;
use fibril_store::{MemoryStore, SharedStore, StoreExt};
use ipnet::IpNet;

pub use fibril_datapath::testing::fixture::{eventually, unique_name as uniq};

use crate::api::Client;
use crate::AgentOptions;

/// Where tests pin their datapaths (one fresh directory per agent).
pub const PIN_ROOT: &str = "/sys/fs/bpf/fibril-test";

/// How long [`TestAgent::start`] waits for `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The node sync interval of test agents (fast, so tests see changes soon).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// A component's `run(opts, shutdown)` future on its own multi-thread
/// runtime (2 workers) in a thread of its own, so that a test can stop and
/// restart it while the test thread blocks. Stopped on drop.
pub struct RuntimeThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl RuntimeThread {
    /// Runs `run(shutdown)`; `shutdown` resolves when [`Self::stop`] is
    /// called or the value is dropped.
    pub fn spawn<F, Fut, E>(run: F) -> RuntimeThread
    where
        F: FnOnce(futures::future::BoxFuture<'static, ()>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("runtime: {e}"))?;
            rt.block_on(run(Box::pin(async move {
                let _ = rx.await;
            })))
            .map_err(|e| e.to_string())
        });
        RuntimeThread {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Whether `run` has returned (an error, or a stop).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Signals shutdown and waits for `run` to return; its result (`Ok` when
    /// already stopped).
    pub fn stop(&mut self) -> Result<(), String> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err("panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// [`crate::run`] on a [`RuntimeThread`], ready (healthz answered) once
/// [`TestAgent::start`] returns. Stopped on drop.
pub struct TestAgent {
    opts: AgentOptions,
    task: RuntimeThread,
}

impl TestAgent {
    /// Starts the agent and waits (30 s) for its API; panics with the
    /// agent's error when it ends or does not answer.
    pub fn start(opts: AgentOptions) -> TestAgent {
        let o = opts.clone();
        let task = RuntimeThread::spawn(move |shutdown| crate::run(o, shutdown));
        let mut a = TestAgent { opts, task };
        let client = a.client();
        let ok = eventually(READY_TIMEOUT, || {
            if a.task.is_finished() {
                return Some(false);
            }
            client.healthz().ok().map(|_| true)
        });
        if ok != Some(true) {
            let res = a.stop();
            panic!("agent {} did not become ready: {res:?}", a.opts.node_name);
        }
        a
    }

    /// A client of the agent's API socket.
    pub fn client(&self) -> Client {
        Client::new(&self.opts.socket_path)
    }

    /// The options it was started with.
    pub fn opts(&self) -> &AgentOptions {
        &self.opts
    }

    /// Stops the agent now; its result (`Ok` when already stopped).
    pub fn stop(&mut self) -> Result<(), String> {
        self.task.stop()
    }
}

/// Removes, on drop (also while unwinding), the network namespaces and the
/// pinned datapaths a test registered, then [`PIN_ROOT`] when empty.
#[derive(Default)]
pub struct Cleanup {
    netns: Vec<String>,
    pin_dirs: Vec<PathBuf>,
}

impl Cleanup {
    /// Creates a network namespace with a unique name starting with `tag`;
    /// its name.
    pub fn netns(&mut self, tag: &str) -> String {
        let n = uniq(tag);
        if let Err(e) = NetNs::create(&n) {
            panic!("create netns {n}: {e}");
        }
        self.netns.push(n.clone());
        n
    }

    /// A fresh pin directory under [`PIN_ROOT`] (made by the agent).
    pub fn pin_dir(&mut self) -> PathBuf {
        let p = PathBuf::from(PIN_ROOT).join(uniq("agent"));
        self.pin_dirs.push(p.clone());
        p
    }

    /// Options of an agent for `node` in namespace `netns`: state under
    /// `state_dir`, a fresh [`Self::pin_dir`], node sync every 200 ms.
    pub fn agent_options(
        &mut self,
        node: &str,
        netns: &str,
        state_dir: PathBuf,
        config: &Config,
        store: &SharedStore,
    ) -> AgentOptions {
        let mut o = AgentOptions::new(
            node,
            netns,
            state_dir,
            self.pin_dir(),
            config.clone(),
            store.clone(),
        );
        o.sync_interval = SYNC_INTERVAL;
        o
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.netns {
            let _ = NetNs::delete_by_name(n);
        }
        for p in &self.pin_dirs {
            if let Err(e) = Datapath::destroy(p) {
                eprintln!("cleanup {}: {e}", p.display());
            }
        }
        let _ = std::fs::remove_dir(PIN_ROOT);
    }
}

/// Runs `f` on a fresh current-thread runtime (store calls from a test
/// thread).
pub fn block_on<F: Future>(f: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => panic!("runtime: {e}"),
    }
}

/// An in-memory store holding a FibrilNode per `(node, pod CIDR)`
/// ([`set_pod_cidrs`]).
pub fn store_with_pod_cidrs(nodes: &[(&str, &str)]) -> SharedStore {
    let store: SharedStore = Arc::new(MemoryStore::new());
    for (node, cidr) in nodes {
        block_on(set_pod_cidrs(&store, node, cidr));
    }
    store
}

/// The default config with `sets` (`key=value`, as `--set`) applied;
/// panics on a bad one.
pub fn config_with(sets: &[&str]) -> Config {
    let mut config = Config::default();
    if let Err(e) = config.apply_sets(sets) {
        panic!("config {sets:?}: {e}");
    }
    config
}

/// Creates the FibrilNode `node` with `spec.ipam.podCIDRs = [cidr]` (what
/// the operator would write in cluster-pool mode); panics on a bad CIDR or
/// a store error.
pub async fn set_pod_cidrs(store: &SharedStore, node: &str, cidr: &str) {
    let cidr: IpNet = cidr
        .parse()
        .unwrap_or_else(|e| panic!("pod CIDR {cidr}: {e}"));
    let spec = FibrilNodeSpec {
        ipam: Some(NodeIpamSpec {
            pod_cidrs: vec![cidr],
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Err(e) = store.create_as(&FibrilNode::new(node, spec)).await {
        panic!("create FibrilNode {node}: {e}");
    }
}
