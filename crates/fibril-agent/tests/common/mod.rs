//! The bed of the agent's privileged fabric tests: the seed-3w fabric, an
//! in-memory store with the pod CIDRs of k8s-ctr (10.244.0.0/24) and k8s-w1
//! (10.244.1.0/24), an agent per node, pods made through the CNI plugin, and
//! servers in pods. Everything goes on drop (also while unwinding).

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::Duration;

use fibril_agent::testing::{
    config_with, eventually, store_with_pod_cidrs, uniq, Cleanup, TestAgent,
};
use fibril_agent::AgentOptions;
use fibril_datapath::testing::fixture::{ChildGuard, TestNetns};
use fibril_lab::fabric::FabricGuard;
use fibril_lab::{netns_name, Fabric, Topology};
use fibril_store::SharedStore;

pub const PY: &str = "/usr/bin/python3";

/// Two agents on the seed-3w fabric. Fields drop in order: agents, then
/// pod namespaces and pinned datapaths, then the fabric, then the state dir.
pub struct TwoAgents {
    pub ctr: TestAgent,
    pub w1: TestAgent,
    pub ctr_opts: AgentOptions,
    pub w1_opts: AgentOptions,
    pub store: SharedStore,
    pub lab: String,
    pub cleanup: Cleanup,
    _fabric: FabricGuard,
    pub dir: tempfile::TempDir,
}

impl TwoAgents {
    /// The fabric of a lab named after `tag`, and agents configured with
    /// `sets` (`key=value`), ready.
    pub fn up(tag: &str, sets: &[&str]) -> TwoAgents {
        let dir = tempfile::tempdir().unwrap();
        let topo = Topology::builtin("seed-3w").unwrap();
        let lab = uniq(tag).replace('x', "_");
        let fabric = Fabric::up_guarded(&topo, &lab).unwrap();
        let mut cleanup = Cleanup::default();
        let store =
            store_with_pod_cidrs(&[("k8s-ctr", "10.244.0.0/24"), ("k8s-w1", "10.244.1.0/24")]);
        let config = config_with(sets);
        let mut opts = |node: &str| {
            cleanup.agent_options(
                node,
                &netns_name(&lab, node),
                dir.path().join(node),
                &config,
                &store,
            )
        };
        let ctr_opts = opts("k8s-ctr");
        let w1_opts = opts("k8s-w1");
        let ctr = TestAgent::start(ctr_opts.clone());
        let w1 = TestAgent::start(w1_opts.clone());
        TwoAgents {
            ctr,
            w1,
            ctr_opts,
            w1_opts,
            store,
            lab,
            cleanup,
            _fabric: fabric,
            dir,
        }
    }

    /// A pod `default/<name>` on `node` (k8s-ctr or k8s-w1): a namespace
    /// named after `tag`, CNI ADD with container id `cid`; the namespace
    /// and the pod's address.
    pub fn pod(&mut self, node: &str, tag: &str, cid: &str, name: &str) -> (TestNetns, Ipv4Addr) {
        let socket = match node {
            "k8s-ctr" => self.ctr_opts.socket_path.clone(),
            "k8s-w1" => self.w1_opts.socket_path.clone(),
            other => panic!("no agent on {other}"),
        };
        let ns = self.cleanup.netns(tag);
        let ip = fibril_cni::testing::add(&socket, cid, &ns, name);
        (TestNetns::existing(&ns), ip)
    }
}

/// Spawns `cmd` (a server on TCP 8080) in `ns` and waits (10 s) until it
/// accepts; `what` names it in the panic.
pub fn serve_8080(ns: &TestNetns, cmd: &str, what: &str) -> ChildGuard {
    let g = ns.spawn(cmd);
    let ok = eventually(Duration::from_secs(10), || {
        ns.sh_output(&format!(
            "{PY} -c 'import socket; socket.create_connection((\"127.0.0.1\", 8080), 1)'"
        ))
        .status
        .success()
        .then_some(())
    });
    assert!(ok.is_some(), "{what} did not start");
    g
}
