//! Where a lab cluster keeps its files: one place, so the lab orchestrator,
//! the pod runner, the agent's defaults and the CLI agree.
//!
//! ```text
//! /run/fibril/labs/<lab>/
//!   state.json                 the fabric (see state.rs)
//!   cluster.json               the cluster: etcd URL, processes, config (see cluster.rs)
//!   bin/fibril-cni             symlink to the fibril binary (CNI_PATH)
//!   etcd/                      etcd data dir
//!   logs/<component>.log       stdout/stderr of every lab process
//!   nodes/<node>/              agent run dir: agent.sock, state/
//!   nodes/<node>/pods/         pod sandboxes of that node: <ns>_<pod>.json
//! /sys/fs/bpf/fibril/<lab>/<node>/   pinned maps and links of a node
//! ```

use std::path::{Path, PathBuf};

use crate::state::{lab_dir, netns_prefix};

/// bpffs root of every lab's pins.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/fibril";

/// `bin/`: holds the `fibril-cni` link the pod runner passes as `CNI_PATH`.
pub fn bin_dir(lab: &str) -> PathBuf {
    lab_dir(lab).join("bin")
}

/// etcd's data directory.
pub fn etcd_dir(lab: &str) -> PathBuf {
    lab_dir(lab).join("etcd")
}

/// Log file of a lab process (`operator`, `controller`, `agent-k8s-ctr`, ...).
pub fn log_file(lab: &str, component: &str) -> PathBuf {
    lab_dir(lab).join("logs").join(format!("{component}.log"))
}

/// Run directory of a node's agent (`agent.sock`, `state/`).
pub fn node_dir(lab: &str, node: &str) -> PathBuf {
    lab_dir(lab).join("nodes").join(node)
}

/// The agent's endpoint API socket of `node`.
pub fn agent_socket(lab: &str, node: &str) -> PathBuf {
    node_dir(lab, node).join("agent.sock")
}

/// Pod sandbox records of `node` (`<ns>_<pod>.json`).
pub fn pods_dir(lab: &str, node: &str) -> PathBuf {
    node_dir(lab, node).join("pods")
}

/// bpffs directory of all nodes of `lab`.
pub fn lab_pin_root(lab: &str) -> PathBuf {
    Path::new(BPFFS_ROOT).join(lab)
}

/// bpffs directory of `node`'s pinned maps and links.
pub fn node_pin_dir(lab: &str, node: &str) -> PathBuf {
    lab_pin_root(lab).join(node)
}

/// Network namespace of a pod: `fl-<lab>-p-<hash>` (the lab prefix makes
/// `lab down` and crash recovery find it; the hash keeps the name short and
/// unique per namespace/name).
pub fn pod_netns_name(lab: &str, namespace: &str, pod: &str) -> String {
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain([b'/']).chain(pod.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}p-{:012x}", netns_prefix(lab), h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_netns_names_are_prefixed_stable_and_distinct() {
        let a = pod_netns_name("fibril", "default", "curl-pod");
        assert!(a.starts_with("fl-fibril-p-"), "{a}");
        assert_eq!(a, pod_netns_name("fibril", "default", "curl-pod"));
        assert_ne!(a, pod_netns_name("fibril", "kube-system", "curl-pod"));
        assert_ne!(a, pod_netns_name("fibril", "default", "curl-pod2"));
        assert!(a.len() < 40);
    }

    #[test]
    fn layout() {
        assert_eq!(
            agent_socket("l1", "k8s-w1"),
            PathBuf::from("/run/fibril/labs/l1/nodes/k8s-w1/agent.sock")
        );
        assert_eq!(
            node_pin_dir("l1", "k8s-w1"),
            PathBuf::from("/sys/fs/bpf/fibril/l1/k8s-w1")
        );
    }
}
