//! Node fixture for the privileged datapath tests: a node netns (own or a
//! lab fabric host) with `fibril_host`/`fibril_net`, the datapath loaded and
//! attached, pods as netns + veth. Drop unpins everything (detaching the
//! programs) before the namespaces go.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fibril_datapath::testing::fixture::{unique_name, TestNetns, TestPod};
use fibril_datapath::{Datapath, DatapathConfig, DatapathOptions, Device, Maps};

pub const PIN_ROOT: &str = "/sys/fs/bpf/fibril-test";

pub struct TestNode {
    pub pods: Vec<TestPod>,
    pub dp: Option<Datapath>,
    pub pin_dir: PathBuf,
    pub router_ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    pub underlay: Option<String>,
    pub ns: TestNetns,
}

impl TestNode {
    /// A node namespace of its own (no underlay).
    pub fn standalone(router_ip: Ipv4Addr) -> Self {
        let ns = TestNetns::new("node");
        Self::init(ns, router_ip, Ipv4Addr::new(192, 168, 10, 100), None)
    }

    /// A lab fabric host as node.
    pub fn in_netns(ns_name: &str, node_ip: Ipv4Addr, router_ip: Ipv4Addr) -> Self {
        Self::init(
            TestNetns::existing(ns_name),
            router_ip,
            node_ip,
            Some("eth1".into()),
        )
    }

    fn init(
        ns: TestNetns,
        router_ip: Ipv4Addr,
        node_ip: Ipv4Addr,
        underlay: Option<String>,
    ) -> Self {
        ns.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && \
             sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1; \
             ip link add fibril_host type veth peer name fibril_net && \
             ip addr add {router_ip}/32 dev fibril_host && \
             ip link set fibril_host up && ip link set fibril_net up"
        ));
        Self {
            pods: Vec::new(),
            dp: None,
            pin_dir: Path::new(PIN_ROOT).join(unique_name("node")),
            router_ip,
            node_ip,
            underlay,
            ns,
        }
    }

    pub fn config(&self) -> DatapathConfig {
        DatapathConfig {
            node_ip: self.node_ip,
            router_ip: self.router_ip,
            underlay_device: self.underlay.clone().map(Device::Name).unwrap_or_default(),
            host_device: Device::Name("fibril_host".into()),
            native_routing_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
            ..Default::default()
        }
    }

    pub fn options(&self, config: DatapathConfig) -> DatapathOptions {
        DatapathOptions {
            pin_dir: self.pin_dir.clone(),
            netns: self.ns.netns(),
            config,
        }
    }

    /// Loads and attaches to fibril_host (and the underlay).
    pub fn load(&mut self, config: DatapathConfig) {
        let mut dp = Datapath::load(self.options(config)).unwrap();
        dp.attach_host_device("fibril_host").unwrap();
        if let Some(u) = self.underlay.clone() {
            dp.attach_underlay(&u).unwrap();
        }
        for p in &self.pods {
            dp.attach_endpoint(&p.host_if).unwrap();
        }
        self.dp = Some(dp);
    }

    pub fn maps(&self) -> Maps {
        Maps::new(&self.pin_dir)
    }

    /// Creates a pod; registers and attaches it if the datapath is loaded.
    pub fn add_pod(&mut self, host_if: &str, ip: Ipv4Addr, identity: u32) -> usize {
        let pod = TestPod::new(&self.ns, host_if, ip, self.router_ip);
        if let Some(dp) = self.dp.as_mut() {
            dp.attach_endpoint(host_if).unwrap();
        }
        self.pods.push(pod);
        let idx = self.pods.len() - 1;
        if self.dp.is_some() {
            self.register_pod(idx, identity);
        }
        idx
    }

    pub fn register_pod(&self, idx: usize, identity: u32) {
        let pod = &self.pods[idx];
        let info = pod.endpoint_info(&self.ns, identity, idx as u16 + 1);
        self.maps()
            .endpoints()
            .unwrap()
            .upsert(pod.ip, &info)
            .unwrap();
    }

    pub fn pod(&self, idx: usize) -> &TestPod {
        &self.pods[idx]
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Err(e) = Datapath::destroy(&self.pin_dir) {
            eprintln!("cleanup {}: {e}", self.pin_dir.display());
        }
        let _ = std::fs::remove_dir(PIN_ROOT);
        // Lab hosts are not ours: remove what we added to them.
        let _ = self.ns.sh_output("ip link del fibril_host");
    }
}

/// A lab name unique to this run (`[a-z0-9_]`, at most 24 chars).
pub fn lab_name(tag: &str) -> String {
    unique_name(tag).replace('x', "_")
}
