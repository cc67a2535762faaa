//! Privileged test (root): a real container runtime drives the fibril CNI
//! plugin. Debian's podman 4.3 (runc, CNI network backend) runs a container
//! from a locally built busybox image on a lab node; the container gets an
//! address from the node's agent, reaches the lab's whoami pods on both
//! nodes and through their Service's ClusterIP, and removing it (CNI DEL)
//! leaves no endpoint, veth, route, netns, mount or address behind.
//!
//! podman only ever sees temporary configuration (`CONTAINERS_CONF`,
//! `CONTAINERS_STORAGE_CONF`, `--root`/`--runroot` under a temp dir); the
//! machine's global config and the root netns are left alone. podman keeps
//! libcni's result cache in `/var/lib/cni/results` (not configurable in 4.3);
//! DEL removes the container's entry there.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NODE: &str = "k8s-ctr";
const IMAGE: &str = "localhost/fibril-busybox:test";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fibril(lab: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fibril"))
        .args(args)
        .env("FIBRIL_LAB", lab)
        .output()
        .unwrap()
}

fn ok(o: Output, what: &str) -> String {
    let t = text(&o);
    assert!(o.status.success(), "{what} failed:\n{t}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A podman whose whole state and config live in one temp dir.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// The config files (`scripts/podman-fibril.sh`, the script the docs
    /// show) and the image, built from Debian's busybox-static.
    fn configure(&self, cni_bin_dir: &Path, agent_socket: &Path) {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/podman-fibril.sh"
        );
        let out = Command::new("bash")
            .arg(script)
            .arg(&self.dir)
            .arg("--cni-bin-dir")
            .arg(cni_bin_dir)
            .arg("--agent-socket")
            .arg(agent_socket)
            .arg("--image")
            .output()
            .unwrap();
        ok(out, "scripts/podman-fibril.sh");
    }

    fn run(&self, args: &[&str]) -> Output {
        // A hung podman must not hang the test (the guard then cleans up).
        Command::new("timeout")
            .args(["60", "podman"])
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args)
            .output()
            .unwrap()
    }
}

/// Removes podman's containers, images and mounts, then the lab, even if
/// the test fails half-way.
struct Cleanup {
    lab: String,
    podman: Option<Podman>,
    tmp: Option<tempfile::TempDir>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.podman.take() {
            let _ = p.run(&["rm", "--all", "--force", "--time", "0"]);
            let _ = p.run(&["rmi", "--all", "--force"]);
            let _ = p.run(&["system", "reset", "--force"]);
            // Anything podman still has mounted under its dir (shm, rootfs).
            if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
                let mut mounts: Vec<&str> = mi
                    .lines()
                    .filter_map(|l| l.split(' ').nth(4))
                    .filter(|m| Path::new(m).starts_with(&p.dir))
                    .collect();
                mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
                for m in mounts {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        if let Some(t) = self.tmp.take() {
            kill_users_of(t.path());
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_fibril"))
            .args(["lab", "down", "--name", &self.lab])
            .output();
    }
}

/// Kills (by PID) what the test started that still runs with `dir` in its
/// command line: containerd and its shims after a hung `ctr`, conmon.
fn kill_users_of(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The runtime's commands, installed from Debian's packages when missing
/// (as scripts/setup.sh does). `false` only when they cannot be installed.
fn ensure(packages: &[&str], commands: &[&str]) -> bool {
    if commands.iter().all(|c| have(c)) {
        return true;
    }
    eprintln!("runtime_cni: installing {packages:?} with apt-get");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    commands.iter().all(|c| have(c))
}

/// `(name, phase, podIP, node)` of the lab's webpod pods.
fn webpods(lab: &str) -> Vec<(String, String, String, String)> {
    let out = fibril(
        lab,
        &[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.podIP} {.spec.nodeName}{\"\\n\"}{end}",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("webpod-"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[0].into(), f[1].into(), f[2].into(), f[3].into()))
        })
        .collect()
}

/// Brings up the lab with the webpod Deployment and Service; returns the
/// running webpods and the Service's ClusterIP.
fn lab_with_webpods(lab: &str) -> (Vec<(String, String, String, String)>, String) {
    ok(
        Command::new(env!("CARGO_BIN_EXE_fibril"))
            .args(["lab", "up", "--name", lab])
            .output()
            .unwrap(),
        "lab up",
    );
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../lab/manifests/webpod.yaml"
    );
    ok(fibril(lab, &["apply", "-f", manifest]), "apply webpod");
    // Both webpod pods running with addresses (anti-affinity is not
    // required, so any placement, but two of them).
    let deadline = Instant::now() + Duration::from_secs(30);
    let pods = loop {
        let p = webpods(lab);
        if p.len() == 2
            && p.iter()
                .all(|(_, phase, ip, _)| phase == "Running" && !ip.is_empty())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "webpod pods not running: {p:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let cluster_ip = ok(
        fibril(
            lab,
            &["get", "svc", "webpod", "-o", "jsonpath={.spec.clusterIP}"],
        ),
        "get svc",
    )
    .trim()
    .to_string();
    assert!(!cluster_ip.is_empty(), "webpod Service has no ClusterIP");
    (pods, cluster_ip)
}

fn lxc_links(netns: &str) -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("lxc") && n != "lxc_health")
        .collect()
}

/// Owners of the node agent's address allocations, by IP (its persisted
/// IPAM state; other pods, e.g. coredns, may come and go meanwhile).
fn ipam_owner(lab: &str, ip: &str) -> Option<String> {
    let path = fibril_lab::paths::node_dir(lab, NODE).join("state/state.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v.pointer("/ipam/allocations")?
        .as_array()?
        .iter()
        .find(|a| a["ip"] == ip)
        .and_then(|a| a["owner"].as_str())
        .map(str::to_string)
}

/// One HTTP/1.0 GET from inside the container (busybox nc: Debian's static
/// busybox `wget` crashes in glibc's static NSS), retried while the whoami
/// server starts.
fn http_get(podman: &Podman, container: &str, ip: &str) -> String {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = podman.run(&["exec", container, "sh", "-c", &script]);
        let t = text(&o);
        if t.contains("Hostname:") || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn podman_container_on_a_lab_node_reaches_lab_pods() {
    if !is_root() {
        eprintln!("SKIP runtime_cni: needs root (network namespaces, podman)");
        return;
    }
    if !ensure(&["podman", "runc"], &["podman", "runc"]) {
        eprintln!(
            "SKIP runtime_cni: podman/runc could not be installed from Debian's packages \
             (scripts/setup.sh installs them)"
        );
        return;
    }
    let started = Instant::now();
    let lab = format!("rt{}", std::process::id());
    let tmp = tempfile::Builder::new()
        .prefix("fibril-podman-")
        .tempdir()
        .unwrap();
    let mut cleanup = Cleanup {
        lab: lab.clone(),
        podman: None,
        tmp: None,
    };

    let (pods, cluster_ip) = lab_with_webpods(&lab);

    let podman = cleanup.podman.insert(Podman {
        dir: tmp.path().to_path_buf(),
    });
    cleanup.tmp = Some(tmp);
    podman.configure(
        &fibril_lab::paths::bin_dir(&lab),
        &fibril_lab::paths::agent_socket(&lab, NODE),
    );
    let images = ok(
        podman.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        "images",
    );
    assert!(images.contains(IMAGE), "{images}");
    let networks = ok(
        podman.run(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]),
        "network ls",
    );
    assert!(networks.contains("fibril fibril-cni"), "{networks}");

    let node_netns = format!("fl-{lab}-{NODE}");
    let links_before = lxc_links(&node_netns);

    let name = format!("fibril-rt-{}", std::process::id());
    ok(
        podman.run(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "fibril",
            IMAGE,
            "sleep",
            "600",
        ]),
        "podman run",
    );
    let ip = ok(
        podman.run(&[
            "inspect",
            &name,
            "--format",
            "{{.NetworkSettings.Networks.fibril.IPAddress}}",
        ]),
        "inspect",
    )
    .trim()
    .to_string();
    let sandbox = ok(
        podman.run(&[
            "inspect",
            &name,
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
        ]),
        "inspect",
    )
    .trim()
    .to_string();
    eprintln!("runtime_cni: container {name} has {ip}, netns {sandbox}");
    assert!(ip.starts_with("10."), "container address {ip:?}");

    // Inside: eth0 with the /32 and the default route via the node's router IP.
    let addr = ok(
        podman.run(&["exec", &name, "ip", "-o", "-4", "addr", "show", "eth0"]),
        "ip addr",
    );
    assert!(addr.contains(&format!("{ip}/32")), "{addr}");
    let route = ok(podman.run(&["exec", &name, "ip", "route"]), "ip route");
    assert!(route.contains("default via"), "{route}");

    // The node side: an endpoint in the agent and one more lxc veth.
    let eps = ok(
        fibril(&lab, &["dbg", "--node", NODE, "endpoint", "list"]),
        "endpoint list",
    );
    assert!(eps.contains(&ip), "endpoint list lacks {ip}:\n{eps}");
    // podman passes the container name as K8S_POD_NAME (no namespace).
    assert_eq!(
        ipam_owner(&lab, &ip).as_deref(),
        Some(format!("default/{name}").as_str()),
        "owner of {ip}"
    );
    let links_during = lxc_links(&node_netns);
    assert_eq!(
        links_during.difference(&links_before).count(),
        1,
        "before {links_before:?}, with the container {links_during:?}"
    );

    // The container reaches the whoami pods on its own node and on the other.
    for (pod, _, pod_ip, node) in &pods {
        let reply = http_get(podman, &name, pod_ip);
        eprintln!("runtime_cni: {pod} ({pod_ip} on {node}) answered:\n{reply}");
        assert!(
            reply.contains(&format!("Hostname: {pod}")),
            "{pod} via {pod_ip}: {reply}"
        );
        assert!(reply.contains(&format!("RemoteAddr: {ip}:")), "{reply}");
    }

    // And the webpod Service's ClusterIP (the node's datapath balances it).
    let reply = http_get(podman, &name, &cluster_ip);
    eprintln!("runtime_cni: ClusterIP {cluster_ip} answered:\n{reply}");
    assert!(
        pods.iter()
            .any(|(pod, ..)| reply.contains(&format!("Hostname: {pod}"))),
        "webpod via ClusterIP {cluster_ip}: {reply}"
    );

    // Removing the container runs CNI DEL: nothing left behind.
    ok(
        podman.run(&["rm", "--force", "--time", "0", &name]),
        "podman rm",
    );
    let eps = ok(
        fibril(&lab, &["dbg", "--node", NODE, "endpoint", "list"]),
        "endpoint list",
    );
    assert!(!eps.contains(&ip), "endpoint {ip} left after rm:\n{eps}");
    assert_eq!(lxc_links(&node_netns), links_before, "veth left after rm");
    assert_eq!(ipam_owner(&lab, &ip), None, "address {ip} not released");
    let routes = Command::new("ip")
        .args(["-n", &node_netns, "route"])
        .output()
        .unwrap();
    let routes = text(&routes);
    assert!(
        !routes.contains(&format!("{ip} ")),
        "route to {ip} left:\n{routes}"
    );
    if !sandbox.is_empty() {
        assert!(
            !Path::new(&sandbox).exists(),
            "netns {sandbox} left after rm"
        );
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = podman.dir.display().to_string();
    assert!(
        !mi.lines()
            .any(|l| l.contains(&dir) && l.contains("/runroot/")),
        "container mounts left under {dir}"
    );
    let left = ok(podman.run(&["ps", "-a", "-q"]), "ps");
    assert!(left.trim().is_empty(), "containers left: {left}");
    eprintln!("runtime_cni: done in {:?}", started.elapsed());
}

#[test]
fn ctr_run_cni_container_on_a_lab_node_reaches_lab_pods() {
    if !is_root() {
        eprintln!("SKIP runtime_cni: needs root (network namespaces, containerd)");
        return;
    }
    if !ensure(&["containerd", "runc"], &["containerd", "ctr", "runc"]) {
        eprintln!(
            "SKIP runtime_cni: containerd/runc could not be installed from Debian's packages \
             (scripts/setup.sh installs them)"
        );
        return;
    }
    let started = Instant::now();
    let lab = format!("rc{}", std::process::id());
    let tmp = tempfile::Builder::new()
        .prefix("fibril-ctr-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let _cleanup = Cleanup {
        lab: lab.clone(),
        podman: None,
        tmp: Some(tmp),
    };
    let (pods, cluster_ip) = lab_with_webpods(&lab);
    let node_netns = format!("fl-{lab}-{NODE}");
    let links_before = lxc_links(&node_netns);

    // One `ctr run --rm --cni` (ADD when the task starts, DEL with an empty
    // CNI_NETNS when it exits); inside, the address and an HTTP GET to each
    // webpod and to the ClusterIP, each retried while the datapath settles.
    let mut script = String::from(
        "get() { for i in $(seq 30); do r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $1 80); \
         case $r in *Hostname:*) echo \"== $1\"; echo \"$r\"; return;; esac; sleep 0.3; done; \
         echo \"== $1: no answer\"; }; ip -4 -o addr show eth0; ip route; ",
    );
    for (_, _, ip, _) in &pods {
        script.push_str(&format!("get {ip}; "));
    }
    script.push_str(&format!("get {cluster_ip}"));
    let id = format!("fibril-ctr-{}", std::process::id());
    let out = Command::new("timeout")
        .arg("60")
        .arg("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/ctr-fibril.sh"
        ))
        .arg(&dir)
        .arg("--cni-bin-dir")
        .arg(fibril_lab::paths::bin_dir(&lab))
        .arg("--agent-socket")
        .arg(fibril_lab::paths::agent_socket(&lab, NODE))
        .args(["--id", &id, "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let reply = ok(out, "scripts/ctr-fibril.sh");
    eprintln!("runtime_cni: ctr container {id}:\n{reply}");

    // Its address: a /32 from the node's pod CIDR, default route on eth0.
    let ip = reply
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.strip_suffix("/32"))
        .unwrap_or_else(|| panic!("no /32 on eth0 in:\n{reply}"))
        .to_string();
    assert!(ip.starts_with("10."), "container address {ip:?}");
    assert!(reply.contains("default via"), "{reply}");
    for (pod, _, pod_ip, node) in &pods {
        let part = reply
            .split("== ")
            .find(|p| p.starts_with(&format!("{pod_ip}\n")))
            .unwrap_or_else(|| panic!("no answer from {pod} ({pod_ip} on {node}):\n{reply}"));
        assert!(part.contains(&format!("Hostname: {pod}")), "{part}");
        assert!(part.contains(&format!("RemoteAddr: {ip}:")), "{part}");
    }
    let part = reply
        .split("== ")
        .find(|p| p.starts_with(&format!("{cluster_ip}\n")))
        .unwrap_or_else(|| panic!("no answer from ClusterIP {cluster_ip}:\n{reply}"));
    assert!(part.contains("Hostname: webpod-"), "{part}");

    // DEL ran when the task exited: nothing left behind.
    let eps = ok(
        fibril(&lab, &["dbg", "--node", NODE, "endpoint", "list"]),
        "endpoint list",
    );
    assert!(
        !eps.contains(&ip),
        "endpoint {ip} left after ctr run --rm:\n{eps}"
    );
    assert_eq!(
        lxc_links(&node_netns),
        links_before,
        "veth left after ctr run --rm"
    );
    assert_eq!(ipam_owner(&lab, &ip), None, "address {ip} not released");
    let routes = text(
        &Command::new("ip")
            .args(["-n", &node_netns, "route"])
            .output()
            .unwrap(),
    );
    assert!(
        !routes.contains(&format!("{ip} ")),
        "route to {ip} left:\n{routes}"
    );
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fibril-cni-"))
        .collect();
    assert!(netns.is_empty(), "plugin netns binds left: {netns:?}");
    eprintln!("runtime_cni: ctr done in {:?}", started.elapsed());
}
