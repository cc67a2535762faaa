//! Support for the end-to-end scenario tests: they drive the `fibril` binary
//! exactly as a user types it, against a lab with a unique name, and check
//! real packets (captures on lab interfaces, replies from workloads).
//!
//! [`Lab`] brings a lab up and removes it on drop, also when the test fails.

#![allow(dead_code)] // each scenario binary uses a different subset

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fibril")
}

/// Output as one string (stdout then stderr).
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One lab at a time per test binary: labs are heavy for a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// A running lab; `lab down` on drop.
pub struct Lab {
    pub name: String,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// `fibril lab up --topology T --name <unique> --set ...`; panics with the
    /// command's output when it fails.
    pub fn up(tag: &str, topology: &str, sets: &[&str]) -> Lab {
        let mut args = Vec::new();
        for s in sets {
            args.extend(["--set", s]);
        }
        Lab::up_args(tag, topology, &args)
    }

    /// Like [`Lab::up`] with raw `lab up` arguments (`--set k=v`, `--no-dns`).
    pub fn up_args(tag: &str, topology: &str, extra: &[&str]) -> Lab {
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let lab = Lab {
            name,
            _serial: serial,
        };
        // A leftover of an earlier crashed run with the same name goes first.
        let _ = lab.run(&["lab", "down", "--name", &lab.name]);
        let mut args = vec!["lab", "up", "--topology", topology, "--name", &lab.name];
        args.extend_from_slice(extra);
        let o = lab.run(&args);
        assert!(o.status.success(), "lab up failed:\n{}", text(&o));
        lab
    }

    /// Runs `fibril ARGS` with FIBRIL_LAB set to this lab.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("FIBRIL_LAB", &self.name)
            .stdin(Stdio::null())
            .output()
            .expect("run fibril")
    }

    /// Runs `fibril ARGS`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "fibril {args:?} failed:\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `fibril apply -f <file>` with `yaml` written to a temporary file.
    pub fn apply(&self, yaml: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("manifest.yaml");
        std::fs::write(&path, yaml).expect("write manifest");
        let p = path.to_string_lossy().into_owned();
        self.ok(&["apply", "-f", &p])
    }

    /// `fibril exec POD -- CMD...` (namespace `default`).
    pub fn exec_pod(&self, pod: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// `fibril lab exec HOST -- CMD...`.
    pub fn lab_exec(&self, host: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["lab", "exec", host, "--name", &self.name, "--"];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// A background command inside a lab host (e.g. tcpdump); killed on drop.
    pub fn spawn_on(&self, host: &str, cmd: &[&str]) -> Background {
        let mut args = vec!["lab", "exec", host, "--name", &self.name, "--"];
        args.extend_from_slice(cmd);
        self.spawn(&args)
    }

    /// A background command inside a pod (`fibril exec POD -- CMD`).
    pub fn spawn_in_pod(&self, pod: &str, cmd: &[&str]) -> Background {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.spawn(&args)
    }

    /// PID of a lab process (`cluster.json`), e.g. `agent-k8s-ctr`, `etcd`.
    pub fn pid_of(&self, component: &str) -> i32 {
        let path = format!("/run/fibril/labs/{}/cluster.json", self.name);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("cluster.json"))
                .expect("cluster.json parses");
        v["processes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["component"] == component))
            .and_then(|p| p["pid"].as_i64())
            .unwrap_or_else(|| panic!("no {component} in {path}")) as i32
    }

    /// `fibril ARGS` in the background.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let out = tempfile::NamedTempFile::new().expect("tempfile");
        let path = out.path().to_path_buf();
        // One open file description for both streams, so they append
        // instead of overwriting each other.
        let stdout = out.reopen().expect("reopen");
        let stderr = stdout.try_clone().expect("clone");
        let child = Command::new(bin())
            .args(args)
            .env("FIBRIL_LAB", &self.name)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("spawn");
        Background {
            child,
            path,
            _file: out,
        }
    }

    /// Waits until `count` pods whose names start with one of `prefixes`
    /// are Running and Ready; returns the `get pods -A -o wide` output.
    pub fn wait_running(&self, prefixes: &[&str], count: usize, timeout: Duration) -> String {
        let mut last = String::new();
        let got = eventually(timeout, || {
            last = self.ok(&["get", "pods", "-A", "-o", "wide"]);
            // NAMESPACE NAME READY STATUS ...: Running and all containers Ready
            // (a pod joins its Services' endpoints only once Ready).
            let running = last
                .lines()
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let ready = f
                        .get(2)
                        .and_then(|r| r.split_once('/'))
                        .is_some_and(|(a, b)| a == b);
                    f.get(3) == Some(&"Running")
                        && ready
                        && prefixes
                            .iter()
                            .any(|p| f.get(1).is_some_and(|n| n.starts_with(p)))
                })
                .count();
            (running >= count).then_some(())
        });
        assert!(got.is_some(), "pods not Running and Ready in time:\n{last}");
        last
    }

    /// The ClusterIP of a service (`get svc NAME -o json`).
    pub fn cluster_ip(&self, svc: &str, ns: &str) -> String {
        let js = self.ok(&["get", "services", svc, "-n", ns, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&js).expect("service json");
        v["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_else(|| panic!("no clusterIP in {js}"))
            .to_string()
    }

    /// Pod IP of a pod (`get pods NAME -o json`).
    pub fn pod_ip(&self, pod: &str, ns: &str) -> String {
        let js = self.ok(&["get", "pods", pod, "-n", ns, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&js).expect("pod json");
        v["status"]["podIP"]
            .as_str()
            .unwrap_or_else(|| panic!("no podIP in {js}"))
            .to_string()
    }

    /// Names of pods whose name starts with `prefix` (`get pods -o json`).
    pub fn pods(&self, prefix: &str) -> Vec<(String, String, String)> {
        let js = self.ok(&["get", "pods", "-A", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&js).expect("pods json");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .filter_map(|p| {
                let name = p["metadata"]["name"].as_str()?.to_string();
                name.starts_with(prefix).then(|| {
                    (
                        name,
                        p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                        p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                    )
                })
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = self.run(&["lab", "down", "--name", &self.name]);
        if !o.status.success() {
            eprintln!("lab down {} failed: {}", self.name, text(&o));
        }
    }
}

/// A background process; SIGTERM (then SIGKILL) to its process group on drop.
pub struct Background {
    child: Child,
    path: PathBuf,
    _file: tempfile::NamedTempFile,
}

impl Background {
    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Waits up to `timeout` for it to exit by itself; its output if it did.
    pub fn wait(&mut self, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Stops it (SIGINT, so tcpdump flushes) and returns its output.
    pub fn stop(mut self) -> String {
        self.signal(Signal::SIGINT);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.output()
    }

    fn signal(&mut self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
