//! `fibril exec POD [-n NS] -- CMD ARGS`: runs a command inside a pod's
//! network, UTS and mount namespaces (found through the pod runner's record,
//! no store needed), with inherited stdio; exits with the command's code.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Pod name.
    pod: String,
    /// Namespace of the pod.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Lab the pod runs in.
    #[arg(long, env = "FIBRIL_LAB", default_value = fibril_lab::DEFAULT_LAB)]
    lab: String,
    /// Accepted for kubectl compatibility (stdin is always passed through).
    #[arg(short = 'i', long = "stdin")]
    _stdin: bool,
    /// Accepted for kubectl compatibility (the terminal is inherited).
    #[arg(short = 't', long = "tty")]
    _tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let (ns, pod) = (&args.namespace, &args.pod);
    let Some(rec) = fibril_kubelet::record::find(&args.lab, ns, pod)
        .with_context(|| format!("look up pod {ns}/{pod} in lab {}", args.lab))?
    else {
        bail!(
            "pods \"{pod}\" not found in namespace \"{ns}\" (no node of lab {} runs it)",
            args.lab
        );
    };
    if !rec.is_running() {
        bail!(
            "pod {ns}/{pod} is not running: its workload (pid {}) has exited; \
             see `fibril describe pod {pod} -n {ns}`",
            rec.pid
        );
    }
    // Open every namespace first: once one is entered, /proc paths may differ.
    let open = |what: &str| {
        let p = format!("/proc/{}/ns/{what}", rec.pid);
        File::open(&p).with_context(|| format!("pod {ns}/{pod}: open {p}"))
    };
    let (uts, net, mnt) = (open("uts")?, open("net")?, open("mnt")?);
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env("HOSTNAME", &rec.hostname);
    // SAFETY: pre_exec runs in the forked (single-threaded) child; it only
    // calls setns(2) and chdir(2). Entering a mount namespace needs a
    // single-threaded caller, which is why this is not done in the CLI itself.
    unsafe {
        cmd.pre_exec(move || {
            for (fd, nstype) in [
                (uts.as_raw_fd(), libc::CLONE_NEWUTS),
                (net.as_raw_fd(), libc::CLONE_NEWNET),
                (mnt.as_raw_fd(), libc::CLONE_NEWNS),
            ] {
                if libc::setns(fd, nstype) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd
        .status()
        .with_context(|| format!("run {:?} in pod {ns}/{pod}", args.command[0]))?;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
