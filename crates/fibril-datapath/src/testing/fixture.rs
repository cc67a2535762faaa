//! RAII network-namespace fixture for privileged tests.
//!
//! Every name is unique per process and call; `Drop` deletes the namespace
//! (which removes its interfaces) and never panics, also while unwinding.
//! Commands run through `nsenter --net=...` so bpffs stays visible.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::Netns;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid>x<n>`.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// Runs a command in the caller's namespace; returns its output.
pub fn run(cmd: &[&str]) -> Output {
    let (prog, args) = cmd.split_first().expect("empty command");
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command, panicking with its stderr if it fails.
pub fn must(cmd: &[&str]) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True if we can create namespaces and load BPF (root).
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace deleted on drop.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    owned: bool,
}

impl TestNetns {
    /// Creates `fibril-t-<tag><pid>x<n>` with `lo` up.
    pub fn new(tag: &str) -> Self {
        let name = unique_name(&format!("fibril-t-{tag}"));
        must(&["ip", "netns", "add", &name]);
        let ns = Self { name, owned: true };
        ns.sh("ip link set lo up");
        ns
    }

    /// A handle on an existing `/run/netns/<name>` (e.g. a lab fabric
    /// host) that is not deleted on drop.
    pub fn existing(name: &str) -> Self {
        Self {
            name: name.to_string(),
            owned: false,
        }
    }

    /// Namespace name (for `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// As a [`Netns`] for the datapath.
    pub fn netns(&self) -> Netns {
        Netns::Path(self.path())
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()));
        c.arg("--");
        c
    }

    /// Runs a shell script inside; returns its output.
    pub fn sh_output(&self, script: &str) -> Output {
        self.nsenter()
            .args(["sh", "-c", script])
            .output()
            .unwrap_or_else(|e| panic!("nsenter {}: {e}", self.name))
    }

    /// Runs a shell script inside, panicking with stderr on failure;
    /// returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.sh_output(script);
        assert!(
            out.status.success(),
            "in netns {}: `{script}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until something listens on TCP `port` inside (a server spawned
    /// with [`Self::spawn`] races its first client otherwise); false on timeout.
    pub fn wait_tcp_listen(&self, port: u16, timeout: Duration) -> bool {
        eventually(timeout, || {
            let o = self.sh_output(&format!("ss -ltnH 'sport = :{port}'"));
            (!String::from_utf8_lossy(&o.stdout).trim().is_empty()).then_some(())
        })
        .is_some()
    }

    /// Spawns a background command inside (stdout/stderr piped), in its own
    /// process group so [`ChildGuard`] can kill the whole pipeline on drop.
    pub fn spawn(&self, script: &str) -> ChildGuard {
        use std::os::unix::process::CommandExt;
        let child = self
            .nsenter()
            .args(["sh", "-c", &format!("exec {script}")])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn in {}: {e}", self.name));
        ChildGuard(Some(child))
    }

    /// ifindex of an interface inside.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        crate::netns::ifindex(&self.netns(), ifname)
            .unwrap_or_else(|e| panic!("ifindex {ifname} in {}: {e}", self.name))
    }

    /// MAC of an interface inside.
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        // Not /sys/class/net: nsenter keeps the caller's sysfs.
        let s = self.sh(&format!("ip -br link show dev {ifname}"));
        s.split_whitespace()
            .find_map(parse_mac)
            .unwrap_or_else(|| panic!("no MAC in {s:?} of {ifname}"))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut it = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    it.next().is_none().then_some(m)
}

/// A child process killed (with its process group, if it leads one) and
/// reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

fn kill_group(c: &mut Child) {
    let pid = c.id() as i32;
    // SAFETY: getpgid/kill on our own child's pid; the group is only killed
    // when the child leads it (spawned with process_group(0)).
    unsafe {
        if libc::getpgid(pid) == pid {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = c.kill();
}

impl ChildGuard {
    /// The child.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child taken")
    }

    /// Kills, waits and returns stdout+stderr.
    pub fn finish(mut self) -> (String, String) {
        let mut c = self.0.take().expect("child taken");
        kill_group(&mut c);
        match c.wait_with_output() {
            Ok(o) => (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(_) => (String::new(), String::new()),
        }
    }

    /// Waits for exit (no kill) and returns stdout+stderr and success.
    pub fn wait(mut self) -> (bool, String, String) {
        let c = self.0.take().expect("child taken");
        match c.wait_with_output() {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(_) => (false, String::new(), String::new()),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            kill_group(&mut c);
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `assert_eventually!(timeout_secs, cond, msg...)`: polls a boolean
/// expression until true or fails the test.
#[macro_export]
macro_rules! assert_eventually {
    ($secs:expr, $cond:expr, $($msg:tt)+) => {
        if $crate::testing::fixture::eventually(
            std::time::Duration::from_secs($secs),
            || if $cond { Some(()) } else { None },
        ).is_none() {
            panic!($($msg)+);
        }
    };
}

/// A pod: a netns with `eth0` (/32 address, default route via `gw`) whose
/// veth peer `host_if` sits in `node`.
#[derive(Debug)]
pub struct TestPod {
    /// The pod's namespace.
    pub ns: TestNetns,
    /// Pod IP.
    pub ip: std::net::Ipv4Addr,
    /// Host-side veth name in the node netns.
    pub host_if: String,
}

impl TestPod {
    /// Creates the pod netns and veth pair; the node gets `/32 route via
    /// host_if` (what the agent installs).
    pub fn new(
        node: &TestNetns,
        host_if: &str,
        ip: std::net::Ipv4Addr,
        gw: std::net::Ipv4Addr,
    ) -> Self {
        let ns = TestNetns::new("pod");
        // No IPv6: keeps router solicitations (dropped as unsupported L3)
        // out of the events.
        let _ = ns.sh_output(
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
        );
        node.sh(&format!(
            "ip link add {host_if} type veth peer name eth0 netns {pod} && \
             ip link set {host_if} up && \
             ip route add {ip}/32 dev {host_if}",
            pod = ns.name()
        ));
        ns.sh(&format!(
            "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && \
             ip route add {gw}/32 dev eth0 && ip route add default via {gw} dev eth0"
        ));
        Self {
            ns,
            ip,
            host_if: host_if.to_string(),
        }
    }

    /// An `EndpointInfo` for this pod.
    pub fn endpoint_info(
        &self,
        node: &TestNetns,
        identity: u32,
        ep_id: u16,
    ) -> fibril_abi::EndpointInfo {
        fibril_abi::EndpointInfo {
            ifindex: node.ifindex(&self.host_if),
            sec_identity: identity,
            ep_id,
            flags: 0,
            mac: self.ns.mac("eth0"),
            node_mac: node.mac(&self.host_if),
        }
    }
}
