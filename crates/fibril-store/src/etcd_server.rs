//! [`EtcdServer`]: runs Debian's `etcd` binary as a single-member cluster in
//! a child process (tests, the lab). Owns the process: start, wait until
//! healthy, stop by PID (SIGTERM, then SIGKILL), restart on the same data dir
//! and addresses, and stop on `Drop`.
//!
//! The lab runs etcd inside a node's network namespace by giving a
//! [`EtcdServerConfig::command_prefix`] such as
//! `["nsenter", "--net=/run/netns/NAME", "--"]` (which execs, so the PID is
//! etcd's) or a [`EtcdServerConfig::customize`] hook on the `Command`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// Errors starting or stopping etcd; messages name the data dir or URL.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    #[error("cannot pick a free port on {host}: {source}")]
    FreePort {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create etcd data dir or log file {path}: {source}")]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {binary:?} (is Debian's etcd-server installed?): {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd (data dir {data_dir}) exited during start-up with {status}; log {log}:\n{tail}")]
    Exited {
        data_dir: PathBuf,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "etcd at {url} (data dir {data_dir}) not healthy after {waited:?}; log {log}:\n{tail}"
    )]
    NotHealthy {
        url: String,
        data_dir: PathBuf,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("invalid etcd URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// A hook that adjusts the `Command` before etcd is spawned.
pub type CommandHook = Arc<dyn Fn(&mut Command) + Send + Sync>;

/// How to run one etcd member.
#[derive(Clone)]
pub struct EtcdServerConfig {
    /// Member name (`--name`).
    pub name: String,
    /// Data dir (`--data-dir`); created if missing, reused on restart.
    pub data_dir: PathBuf,
    /// Client URL to listen on and advertise, e.g. `http://127.0.0.1:2379`.
    pub client_url: String,
    /// Peer URL to listen on and advertise, e.g. `http://127.0.0.1:2380`.
    pub peer_url: String,
    /// The etcd binary (default `etcd` on `PATH`).
    pub binary: PathBuf,
    /// etcd's stdout/stderr go here (default `<data_dir>.log`).
    pub log_file: PathBuf,
    /// Extra etcd arguments.
    pub extra_args: Vec<String>,
    /// Program and arguments to run etcd under; they must exec etcd so the
    /// child PID is etcd's (e.g. `nsenter --net=/run/netns/X --`).
    pub command_prefix: Vec<OsString>,
    /// Last-minute changes to the `Command` (environment, `pre_exec`, ...).
    pub customize: Option<CommandHook>,
    /// How long [`EtcdServer::start`] waits for readiness.
    pub start_timeout: Duration,
    /// Also require `GET <client_url>/health` to answer `true` before
    /// `start` returns. Readiness is otherwise judged from etcd's own log
    /// ("ready to serve client requests", written after it joined the
    /// cluster and elected a leader); turn this off when the client URL is
    /// not reachable from the caller's network namespace.
    pub http_health_check: bool,
}

impl std::fmt::Debug for EtcdServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServerConfig")
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .field("client_url", &self.client_url)
            .field("peer_url", &self.peer_url)
            .field("binary", &self.binary)
            .field("log_file", &self.log_file)
            .field("extra_args", &self.extra_args)
            .field("command_prefix", &self.command_prefix)
            .field("customize", &self.customize.is_some())
            .finish()
    }
}

/// A port on `host` that was free a moment ago.
pub fn free_port(host: &str) -> Result<u16, EtcdServerError> {
    TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| EtcdServerError::FreePort {
            host: host.to_string(),
            source,
        })
}

impl EtcdServerConfig {
    /// A member on 127.0.0.1 with free client and peer ports.
    pub fn local(data_dir: impl Into<PathBuf>) -> Result<Self, EtcdServerError> {
        let client = free_port("127.0.0.1")?;
        let mut peer = free_port("127.0.0.1")?;
        while peer == client {
            peer = free_port("127.0.0.1")?;
        }
        Ok(Self::new(
            data_dir,
            format!("http://127.0.0.1:{client}"),
            format!("http://127.0.0.1:{peer}"),
        ))
    }

    /// A member with the given URLs.
    pub fn new(data_dir: impl Into<PathBuf>, client_url: String, peer_url: String) -> Self {
        let data_dir = data_dir.into();
        let mut log = data_dir.clone().into_os_string();
        log.push(".log");
        Self {
            name: "fibril".into(),
            data_dir,
            client_url,
            peer_url,
            binary: PathBuf::from("etcd"),
            log_file: PathBuf::from(log),
            extra_args: Vec::new(),
            command_prefix: Vec::new(),
            customize: None,
            start_timeout: Duration::from_secs(30),
            http_health_check: true,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = match self.command_prefix.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        // Inherited ETCD_* variables (e.g. from a shell) would override flags.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        // etcd 3.4 refuses to start on architectures other than amd64 (and
        // arm64 in some builds) unless told which one it runs on.
        match std::env::consts::ARCH {
            "x86_64" => {}
            "aarch64" => {
                cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
            }
            other => {
                cmd.env("ETCD_UNSUPPORTED_ARCH", go_arch(other));
            }
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&self.client_url)
            .arg("--advertise-client-urls")
            .arg(&self.client_url)
            .arg("--listen-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-cluster")
            .arg(format!("{}={}", self.name, self.peer_url))
            .arg("--initial-cluster-state")
            .arg("new")
            .args(&self.extra_args)
            .stdin(Stdio::null());
        if let Some(hook) = &self.customize {
            hook(&mut cmd);
        }
        cmd
    }
}

fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// A running etcd member. Dropping it stops the process.
#[derive(Debug)]
pub struct EtcdServer {
    config: EtcdServerConfig,
    child: Option<Child>,
    /// Length of the log file when the current process was started, so
    /// readiness and error tails only look at this run's lines.
    log_offset: u64,
}

/// etcd (3.4 and 3.5) logs this once it serves clients.
const READY_MARKER: &str = "ready to serve client requests";

impl EtcdServer {
    /// Starts etcd and waits until `/health` answers `true`. Blocks (polls
    /// with a deadline); from async code call it via `spawn_blocking` if
    /// blocking a runtime thread for up to a second matters.
    pub fn start(config: EtcdServerConfig) -> Result<Self, EtcdServerError> {
        let mut server = Self {
            config,
            child: None,
            log_offset: 0,
        };
        server.spawn_and_wait()?;
        Ok(server)
    }

    /// Starts a member on 127.0.0.1 with free ports in `data_dir`, picking
    /// new ports (up to 3 tries) if another process grabbed one meanwhile.
    pub fn start_local(data_dir: impl Into<PathBuf>) -> Result<Self, EtcdServerError> {
        let data_dir = data_dir.into();
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::start(EtcdServerConfig::local(&data_dir)?) {
                Err(EtcdServerError::Exited { tail, .. })
                    if tries < 3 && tail.contains("address already in use") =>
                {
                    warn!(data_dir = %data_dir.display(), "etcd port taken, retrying with new ports");
                }
                other => return other,
            }
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), EtcdServerError> {
        let cfg = &self.config;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| EtcdServerError::Files {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let files_err = |source| EtcdServerError::Files {
            path: cfg.log_file.clone(),
            source,
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(&cfg.log_file)
            .map_err(files_err)?;
        let log2 = log.try_clone().map_err(files_err)?;
        self.log_offset = log.metadata().map(|m| m.len()).unwrap_or_default();
        let mut cmd = cfg.command();
        cmd.stdout(log).stderr(log2);
        let child = cmd.spawn().map_err(|source| EtcdServerError::Spawn {
            binary: cfg.binary.clone(),
            source,
        })?;
        debug!(pid = child.id(), url = %cfg.client_url, data_dir = %cfg.data_dir.display(), "etcd started");
        self.child = Some(child);
        if let Err(e) = self.wait_healthy() {
            self.stop();
            return Err(e);
        }
        Ok(())
    }

    fn wait_healthy(&mut self) -> Result<(), EtcdServerError> {
        let start = Instant::now();
        let addr = host_port(&self.config.client_url)?;
        let log = |s: &Self| log_since(&s.config.log_file, s.log_offset);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(EtcdServerError::Exited {
                        data_dir: self.config.data_dir.clone(),
                        status: status.to_string(),
                        log: self.config.log_file.clone(),
                        tail: tail(&log(self)),
                    });
                }
            }
            // The marker in our own log (not just an answer on the port,
            // which another etcd could give) proves this process is ready.
            if log(self).contains(READY_MARKER)
                && (!self.config.http_health_check || health_ok(&addr))
            {
                debug!(url = %self.config.client_url, waited = ?start.elapsed(), "etcd healthy");
                return Ok(());
            }
            if start.elapsed() > self.config.start_timeout {
                return Err(EtcdServerError::NotHealthy {
                    url: self.config.client_url.clone(),
                    data_dir: self.config.data_dir.clone(),
                    waited: start.elapsed(),
                    log: self.config.log_file.clone(),
                    tail: tail(&log(self)),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URL, for [`crate::EtcdStore::connect`].
    pub fn client_url(&self) -> &str {
        &self.config.client_url
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EtcdServerConfig {
        &self.config
    }

    /// The PID of the running etcd, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops etcd: SIGTERM, then SIGKILL after 5 s; reaps it. Idempotent,
    /// never panics.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Ok(raw) = i32::try_from(child.id()) else {
            return;
        };
        let pid = Pid::from_raw(raw);
        if let Ok(None) = child.try_wait() {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                warn!(pid = raw, "etcd ignored SIGTERM, killing it");
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        let _ = child.wait();
        debug!(pid = raw, "etcd stopped");
    }

    /// Kills etcd at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops etcd and starts it again on the same data dir and addresses.
    pub fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.stop();
        self.spawn_and_wait()
    }

    /// Starts etcd again after [`Self::stop`]/[`Self::kill`] (no-op if running).
    pub fn start_again(&mut self) -> Result<(), EtcdServerError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn_and_wait()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `host:port` of an `http://host:port` URL.
fn host_port(url: &str) -> Result<String, EtcdServerError> {
    let bad = |reason: &str| EtcdServerError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let hp = rest.split('/').next().unwrap_or_default();
    if !hp.contains(':') {
        return Err(bad("needs an explicit port"));
    }
    Ok(hp.to_string())
}

fn health_ok(addr: &str) -> bool {
    let Some(sa) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&sa, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.starts_with("HTTP/1.") && body.contains(" 200 ") && body.contains("\"health\":\"true\"")
}

/// The log written since `offset`.
fn log_since(path: &Path, offset: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            host_port("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert_eq!(host_port("http://10.0.0.1:1/x").unwrap(), "10.0.0.1:1");
        assert!(host_port("https://a:1").is_err());
        assert!(host_port("http://a").is_err());
    }

    #[test]
    fn command_line() {
        let cfg = EtcdServerConfig::new(
            "/tmp/d",
            "http://10.1.0.1:2379".into(),
            "http://10.1.0.1:2380".into(),
        );
        let mut cfg = cfg;
        cfg.command_prefix = vec!["nsenter".into(), "--net=/run/netns/x".into(), "--".into()];
        let cmd = cfg.command();
        assert_eq!(cmd.get_program(), "nsenter");
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&args[..3], &["--net=/run/netns/x", "--", "etcd"]);
        assert!(args.contains(&"fibril=http://10.1.0.1:2380".to_string()));
        assert_eq!(cfg.log_file, PathBuf::from("/tmp/d.log"));
    }
}
