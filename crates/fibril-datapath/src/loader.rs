//! Loading, attaching and replacing the datapath programs of one node.
//!
//! Survival across the loading process: maps are pinned by name under the
//! node's pin directory (`<pin_dir>/fibril_*`) and every TCX link is pinned
//! under `<pin_dir>/links/<ifname>:<hook>:<program>` (bpffs forbids dots in
//! names, so a `.` of the interface name is stored as `%2e`; interface names
//! cannot contain `:`). A pinned link keeps
//! its program attached after the process exits (also on kill -9). A new
//! process loads fresh programs that reuse the pinned maps, then swaps each
//! pinned link to the new program with `BPF_LINK_UPDATE`, which is atomic:
//! no packet sees an empty hook.
//!
//! Pod veths are the exception: `cil_from_container` is attached in tc
//! netlink mode (clsact qdisc + direct-action cls_bpf filter at
//! [`POD_FILTER_PRIORITY`]/[`POD_FILTER_HANDLE`]), because a TCX
//! `BPF_LINK_CREATE` on a fresh device waits for an RCU grace period under
//! rtnl (10-15 ms, serialised machine-wide), which capped concurrent CNI ADDs.
//! A netlink filter stays attached without any process or pin and goes away
//! with the device. What was attached is recorded by pinning the program at
//! `<pin_dir>/tc/<ifname>:<hook>:<program>`; a restart replaces the filter
//! in place (same priority and handle, `RTM_NEWTFILTER` without
//! `NLM_F_CREATE`), which cls_bpf swaps atomically, then re-pins the record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aya::maps::MapData;
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{ProgramInfo, SchedClassifier};
use aya::{Ebpf, EbpfLoader};
use fibril_abi::{map_names, NodeConfig};

use crate::bpffs;
use crate::config::DatapathConfig;
use crate::error::{DatapathError, Result};
use crate::maps::{expected_sizes, Maps};
use crate::netns::Netns;
use crate::objects::{Object, Prog};

/// Where and how to load one node's datapath.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// bpffs directory of this node, e.g. `/sys/fs/bpf/fibril/<lab>/<node>`.
    pub pin_dir: PathBuf,
    /// Namespace holding the node's interfaces.
    pub netns: Netns,
    /// Per-node constants.
    pub config: DatapathConfig,
}

/// What [`Datapath::attach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// A new link was created and pinned.
    Created,
    /// An existing pinned link now runs the new program (atomic swap).
    Replaced,
}

/// tc priority of the netlink-mode pod filter.
pub const POD_FILTER_PRIORITY: u16 = 1;
/// tc handle of the netlink-mode pod filter.
pub const POD_FILTER_HANDLE: u32 = 1;

/// How an attachment is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// A TCX link pinned under `<pin_dir>/links`.
    Tcx,
    /// A tc netlink (clsact + cls_bpf) filter, recorded under `<pin_dir>/tc`
    /// by a pin of the attached program.
    Netlink {
        /// Filter priority.
        priority: u16,
        /// Filter handle.
        handle: u32,
    },
}

/// An attachment found under `<pin_dir>/links` (TCX) or `<pin_dir>/tc`
/// (netlink filters of pod veths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedAttachment {
    /// Interface name.
    pub ifname: String,
    /// Program attached.
    pub prog: Prog,
    /// Pin path (the link for TCX, the attached program for netlink).
    pub path: PathBuf,
    /// TCX link or netlink filter.
    pub mode: AttachMode,
}

/// The loaded programs of one node, with their pinned maps.
pub struct Datapath {
    pin_dir: PathBuf,
    netns: Netns,
    config: NodeConfig,
    objects: HashMap<Object, Ebpf>,
    mounted: Option<PathBuf>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("netns", &self.netns)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn encode_ifname(ifname: &str) -> String {
    ifname.replace('%', "%25").replace('.', "%2e")
}

fn decode_ifname(enc: &str) -> String {
    enc.replace("%2e", ".").replace("%25", "%")
}

fn tc_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("tc")
}

fn tc_record_path(pin_dir: &Path, ifname: &str, prog: Prog) -> PathBuf {
    tc_dir(pin_dir).join(format!(
        "{}:{}:{}",
        encode_ifname(ifname),
        prog.hook().as_str(),
        prog.name()
    ))
}

fn link_pin_path(pin_dir: &Path, ifname: &str, prog: Prog) -> PathBuf {
    links_dir(pin_dir).join(format!(
        "{}:{}:{}",
        encode_ifname(ifname),
        prog.hook().as_str(),
        prog.name()
    ))
}

/// Checks pinned maps against the layouts this binary was built with, so a
/// layout change is a clear error instead of garbage in the datapath.
fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    for name in map_names::ALL {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let data = MapData::from_pin(&path).map_err(|e| DatapathError::OpenMap {
            path: path.clone(),
            source: Box::new(e),
        })?;
        let info = data.info().map_err(|e| DatapathError::OpenMap {
            path: path.clone(),
            source: Box::new(e),
        })?;
        if let Some((k, v)) = expected_sizes(name) {
            if info.key_size() != k || info.value_size() != v {
                return Err(DatapathError::MapLayout {
                    path,
                    found_key: info.key_size(),
                    found_value: info.value_size(),
                    want_key: k,
                    want_value: v,
                });
            }
        }
    }
    Ok(())
}

impl Datapath {
    /// Loads both objects with the node's constants, creating or reusing the
    /// pinned maps. Programs are loaded but not attached.
    pub fn load(opts: DatapathOptions) -> Result<Self> {
        // Validate before touching bpffs, so a bad config leaves nothing behind.
        let config = opts.config.to_abi(&opts.netns)?;
        let mounted = bpffs::ensure_bpffs(&opts.pin_dir)?;
        let fresh = !opts.pin_dir.exists();
        for dir in [links_dir(&opts.pin_dir), tc_dir(&opts.pin_dir)] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DatapathError::io(format!("create {}", dir.display()), e))?;
        }
        let loaded = Self::load_objects(&opts.pin_dir, &config);
        if loaded.is_err() && fresh {
            // A first load that failed must not leave pins or directories behind.
            if let Err(e) = std::fs::remove_dir_all(&opts.pin_dir) {
                tracing::warn!(pin_dir = %opts.pin_dir.display(), error = %e, "cleanup after failed load");
            }
        }
        let objects = loaded?;
        tracing::info!(pin_dir = %opts.pin_dir.display(), "datapath loaded");
        Ok(Self {
            pin_dir: opts.pin_dir,
            netns: opts.netns,
            config,
            objects,
            mounted,
        })
    }

    fn load_objects(pin_dir: &Path, config: &NodeConfig) -> Result<HashMap<Object, Ebpf>> {
        check_pinned_layouts(pin_dir)?;
        let mut objects = HashMap::new();
        for obj in Object::ALL {
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(pin_dir)
                .override_global("fibril_config", config, true)
                .load(obj.bytes())
                .map_err(|e| DatapathError::Load {
                    object: obj.name(),
                    source: Box::new(e),
                })?;
            for prog in Prog::ALL.into_iter().filter(|p| p.object() == obj) {
                classifier(&mut ebpf, prog)?
                    .load()
                    .map_err(|e| DatapathError::Program {
                        program: prog.name().to_string(),
                        source: Box::new(e),
                    })?;
            }
            objects.insert(obj, ebpf);
        }
        Ok(objects)
    }

    /// The node's pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The namespace the datapath attaches in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The constants the programs were loaded with.
    pub fn node_config(&self) -> &NodeConfig {
        &self.config
    }

    /// The bpffs this load mounted, if any.
    pub fn mounted_bpffs(&self) -> Option<&Path> {
        self.mounted.as_deref()
    }

    /// Typed access to the pinned maps.
    pub fn maps(&self) -> Maps {
        Maps::new(&self.pin_dir)
    }

    /// The loaded program (for tests: `BPF_PROG_TEST_RUN`).
    pub fn program(&mut self, prog: Prog) -> Result<&mut SchedClassifier> {
        let ebpf = self
            .objects
            .get_mut(&prog.object())
            .ok_or_else(|| DatapathError::Config {
                field: "object",
                reason: format!("{} not loaded", prog.object().name()),
            })?;
        classifier(ebpf, prog)
    }

    /// Attaches `prog` to `ifname` (in the datapath's netns) and pins the
    /// link; if a pinned link already exists for that interface and program,
    /// swaps the program atomically instead.
    pub fn attach(&mut self, prog: Prog, ifname: &str) -> Result<AttachOutcome> {
        let path = link_pin_path(&self.pin_dir, ifname, prog);
        let netns = self.netns.clone();
        let program = self.program(prog)?;
        let err = |reason: String| DatapathError::Attach {
            program: prog.name().to_string(),
            ifname: ifname.to_string(),
            hook: prog.hook().as_str(),
            reason,
        };
        if path.exists() {
            match replace_link(program, &path) {
                Ok(()) => {
                    tracing::debug!(ifname, prog = prog.name(), "replaced pinned link");
                    return Ok(AttachOutcome::Replaced);
                }
                Err(reason) => {
                    // Typically the interface was deleted (defunct link):
                    // drop the stale pin and attach afresh.
                    tracing::info!(ifname, prog = prog.name(), %reason, "stale pinned link, re-attaching");
                    std::fs::remove_file(&path)
                        .map_err(|e| err(format!("remove stale pin: {e}")))?;
                }
            }
        }
        let ifname_owned = ifname.to_string();
        let fd = netns
            .run(|| -> Result<FdLink, String> {
                let id = program
                    .attach_with_options(
                        &ifname_owned,
                        prog.hook().attach_type(),
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
                let link = program.take_link(id).map_err(|e| e.to_string())?;
                link.try_into().map_err(|e| format!("{e}"))
            })?
            .map_err(err)?;
        fd.pin(&path)
            .map_err(|e| err(format!("pin {}: {e}: {}", path.display(), source_chain(&e))))?;
        tracing::debug!(ifname, prog = prog.name(), "attached");
        Ok(AttachOutcome::Created)
    }

    /// Attaches `cil_from_container` to a pod's host-side veth in tc
    /// netlink mode (see the module docs for why not TCX). An existing
    /// filter at the pod priority/handle is replaced atomically.
    pub fn attach_endpoint(&mut self, ifname: &str) -> Result<AttachOutcome> {
        let outcome = self.attach_netlink(Prog::FromContainer, ifname)?;
        // A TCX link of an older agent on the same hook would run first:
        // drop it now that the filter is in place.
        let old = link_pin_path(&self.pin_dir, ifname, Prog::FromContainer);
        if old.exists() {
            tracing::info!(ifname, "replacing TCX pod link by a tc netlink filter");
            unpin_link(&old)?;
        }
        Ok(outcome)
    }

    /// Attaches `prog` to `ifname` as a netlink-mode filter (replacing the
    /// one at the pod priority/handle if present) and records it.
    fn attach_netlink(&mut self, prog: Prog, ifname: &str) -> Result<AttachOutcome> {
        let record = tc_record_path(&self.pin_dir, ifname, prog);
        let netns = self.netns.clone();
        let program = self.program(prog)?;
        let err = |reason: String| DatapathError::Attach {
            program: prog.name().to_string(),
            ifname: ifname.to_string(),
            hook: prog.hook().as_str(),
            reason,
        };
        let outcome = netns
            .run(|| -> Result<AttachOutcome, String> {
                // Replace first: true for a restart, and cheap (one netlink
                // round trip) when there is nothing to replace.
                if replace_filter(program, ifname, prog).is_ok() {
                    return Ok(AttachOutcome::Replaced);
                }
                if let Err(e) = aya::programs::tc::qdisc_add_clsact(ifname) {
                    // Usually EEXIST; a real problem shows in the attach below.
                    tracing::trace!(ifname, error = %e, "add clsact");
                }
                let id = program
                    .attach_with_options(
                        ifname,
                        prog.hook().attach_type(),
                        TcAttachOptions::Netlink(NlOptions {
                            priority: POD_FILTER_PRIORITY,
                            handle: TcHandle::from(POD_FILTER_HANDLE),
                            classid: None,
                        }),
                    )
                    .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
                keep_filter(program, id)?;
                Ok(AttachOutcome::Created)
            })?
            .map_err(err)?;
        pin_record(program, &record).map_err(err)?;
        tracing::debug!(
            ifname,
            prog = prog.name(),
            ?outcome,
            "attached (tc netlink)"
        );
        Ok(outcome)
    }

    /// Detaches the pod program from `ifname` (deleting its netlink filter
    /// in the datapath's namespace if the device is still there) and drops
    /// every record of `ifname`. Returns the records dropped.
    pub fn detach_endpoint(&mut self, ifname: &str) -> Result<usize> {
        let prog = Prog::FromContainer;
        let record = tc_record_path(&self.pin_dir, ifname, prog);
        if record.exists() {
            let name = ifname.to_string();
            let gone = self.netns.run(move || {
                let link = SchedClassifierLink::attached(
                    &name,
                    prog.hook().attach_type(),
                    POD_FILTER_PRIORITY,
                    TcHandle::from(POD_FILTER_HANDLE),
                    None,
                );
                // Dropping an owned netlink link deletes the filter.
                link.map(drop).map_err(|e| e.to_string())
            })?;
            if let Err(reason) = gone {
                tracing::debug!(ifname, %reason, "pod filter already gone");
            }
        }
        Self::detach_interface(&self.pin_dir, ifname)
    }

    /// Attaches `cil_from_netdev` / `cil_to_netdev` to the underlay device.
    pub fn attach_underlay(&mut self, ifname: &str) -> Result<()> {
        self.attach(Prog::FromNetdev, ifname)?;
        self.attach(Prog::ToNetdev, ifname)?;
        Ok(())
    }

    /// Attaches `cil_from_host` / `cil_to_host` to `fibril_host`.
    pub fn attach_host_device(&mut self, ifname: &str) -> Result<()> {
        self.attach(Prog::FromHost, ifname)?;
        self.attach(Prog::ToHost, ifname)?;
        Ok(())
    }

    /// Swaps every pinned link of this node to the programs loaded here
    /// (the restart path). Stale links (interface gone) are unpinned.
    /// Returns the attachments now running the new programs.
    pub fn replace_pinned(&mut self) -> Result<Vec<PinnedAttachment>> {
        let mut done = Vec::new();
        let netns = self.netns.clone();
        for att in pinned_attachments(&self.pin_dir)? {
            let program = self.program(att.prog)?;
            let r = match att.mode {
                AttachMode::Tcx => replace_link(program, &att.path),
                AttachMode::Netlink { .. } => netns
                    .run(|| replace_filter(program, &att.ifname, att.prog))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
                    .and_then(|()| pin_record(program, &att.path)),
            };
            match r {
                Ok(()) => done.push(att),
                Err(reason) => {
                    tracing::info!(ifname = %att.ifname, %reason, "removing stale attachment");
                    let _ = std::fs::remove_file(&att.path);
                }
            }
        }
        Ok(done)
    }

    /// Detaches every TCX link from `ifname` and drops its netlink filter
    /// records (e.g. on pod deletion, after the veth is deleted: netlink
    /// filters go with the device; use [`Datapath::detach_endpoint`] while
    /// the device still exists). Returns the attachments dropped.
    pub fn detach_interface(pin_dir: &Path, ifname: &str) -> Result<usize> {
        let mut n = 0;
        for att in pinned_attachments(pin_dir)? {
            if att.ifname == ifname {
                match att.mode {
                    AttachMode::Tcx => unpin_link(&att.path)?,
                    AttachMode::Netlink { .. } => remove_record(&att.path)?,
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Detaches everything and removes the node's pins (maps included) and
    /// the directory: `lab down` for one node.
    pub fn destroy(pin_dir: &Path) -> Result<()> {
        if !pin_dir.exists() {
            return Ok(());
        }
        for att in pinned_attachments(pin_dir)? {
            if att.mode == AttachMode::Tcx {
                unpin_link(&att.path)?;
            }
        }
        // The directory belongs to this node: unpin every map (also ones of
        // an older binary) and whatever else was pinned there.
        std::fs::remove_dir_all(pin_dir)
            .map_err(|e| DatapathError::io(format!("remove {}", pin_dir.display()), e))?;
        Ok(())
    }
}

fn classifier(ebpf: &mut Ebpf, prog: Prog) -> Result<&mut SchedClassifier> {
    let missing = || DatapathError::Config {
        field: "program",
        reason: format!("{} not found in {}", prog.name(), prog.object().name()),
    };
    let p = ebpf.program_mut(prog.name()).ok_or_else(missing)?;
    p.try_into().map_err(|e| DatapathError::Program {
        program: prog.name().to_string(),
        source: Box::new(e),
    })
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&c.to_string());
        s.push_str("; ");
        cur = c.source();
    }
    s
}

/// Atomically points the pinned link at `path` to `program`.
fn replace_link(program: &mut SchedClassifier, path: &Path) -> Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| format!("open pin: {e}"))?;
    let fd = FdLink::from(pinned);
    let link = SchedClassifierLink::try_from(fd).map_err(|e| format!("not a TCX link: {e}"))?;
    let id = program
        .attach_to_link(link)
        .map_err(|e| format!("link update: {e}: {}", source_chain(&e)))?;
    // Close our fd only: the pin keeps the link (and the new program) alive.
    let link = program.take_link(id).map_err(|e| e.to_string())?;
    drop(link);
    Ok(())
}

/// Points the pod filter of `ifname` at `program` (`RTM_NEWTFILTER`
/// without `NLM_F_CREATE`: fails if there is no such filter, e.g. the
/// device is gone or new). Runs in the caller's namespace.
fn replace_filter(program: &mut SchedClassifier, ifname: &str, prog: Prog) -> Result<(), String> {
    let link = SchedClassifierLink::attached(
        ifname,
        prog.hook().attach_type(),
        POD_FILTER_PRIORITY,
        TcHandle::from(POD_FILTER_HANDLE),
        None,
    )
    .map_err(|e| format!("{ifname}: {e}"))?;
    let id = program
        .attach_to_link(link)
        .map_err(|e| format!("filter replace: {e}: {}", source_chain(&e)))?;
    keep_filter(program, id)
}

/// Takes the netlink link out of aya's bookkeeping without detaching it:
/// the filter must outlive this process.
fn keep_filter(
    program: &mut SchedClassifier,
    id: aya::programs::tc::SchedClassifierLinkId,
) -> Result<(), String> {
    let link = program.take_link(id).map_err(|e| e.to_string())?;
    std::mem::forget(link);
    Ok(())
}

/// Records that `program` is attached: pins it at `record` (a temporary
/// name first, then renamed over the old record).
fn pin_record(program: &mut SchedClassifier, record: &Path) -> Result<(), String> {
    let mut tmp = record.as_os_str().to_owned();
    tmp.push("~new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    program
        .pin(&tmp)
        .map_err(|e| format!("pin {}: {e}: {}", tmp.display(), source_chain(&e)))?;
    std::fs::rename(&tmp, record).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("rename {} to {}: {e}", tmp.display(), record.display())
    })
}

fn remove_record(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io(format!("unpin {}", path.display()), e)),
    }
}

fn unpin_link(path: &Path) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => {
            // Unpinning and closing the last fd destroys the link, which
            // detaches the program.
            let fd = pinned
                .unpin()
                .map_err(|e| DatapathError::io(format!("unpin {}", path.display()), e))?;
            drop(fd);
        }
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

impl PinnedAttachment {
    /// `(link id, program id)` of the pinned link: the link id stays across
    /// a replacement, the program id changes. For a netlink filter the
    /// first is the filter handle (also kept across a replacement) and the
    /// program is the one last attached.
    pub fn ids(&self) -> Result<(u32, u32)> {
        if let AttachMode::Netlink { handle, .. } = self.mode {
            let info = ProgramInfo::from_pin(&self.path).map_err(|e| {
                DatapathError::io(
                    format!("open pinned program {}", self.path.display()),
                    std::io::Error::other(e.to_string()),
                )
            })?;
            return Ok((handle, info.id()));
        }
        let pinned = PinnedLink::from_pin(&self.path).map_err(|e| {
            DatapathError::io(
                format!("open pinned link {}", self.path.display()),
                std::io::Error::other(e.to_string()),
            )
        })?;
        let fd = FdLink::from(pinned);
        let info = fd.info().map_err(|e| {
            DatapathError::io(
                format!("link info {}", self.path.display()),
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok((info.id(), info.program_id()))
    }
}

/// Lists the attachments of a node: pinned TCX links and recorded netlink
/// filters.
pub fn pinned_attachments(pin_dir: &Path) -> Result<Vec<PinnedAttachment>> {
    let mut out = Vec::new();
    list_dir(&links_dir(pin_dir), AttachMode::Tcx, &mut out)?;
    list_dir(
        &tc_dir(pin_dir),
        AttachMode::Netlink {
            priority: POD_FILTER_PRIORITY,
            handle: POD_FILTER_HANDLE,
        },
        &mut out,
    )?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn list_dir(dir: &Path, mode: AttachMode, out: &mut Vec<PinnedAttachment>) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DatapathError::io(format!("read {}", dir.display()), e)),
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // <ifname>:<hook>:<prog>
        let mut parts = name.rsplitn(3, ':');
        let (Some(prog), Some(hook), Some(ifname)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(prog) = Prog::from_name(prog) else {
            continue;
        };
        if prog.hook().as_str() != hook {
            continue;
        }
        out.push(PinnedAttachment {
            ifname: decode_ifname(ifname),
            prog,
            path: entry.path(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        let dir = Path::new("/x");
        for ifname in ["lxc1", "eth0.100", "a%b.c"] {
            let p = link_pin_path(dir, ifname, Prog::FromNetdev);
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.contains('.'), "{name}");
            let mut parts = name.rsplitn(3, ':');
            assert_eq!(parts.next(), Some("cil_from_netdev"));
            assert_eq!(parts.next(), Some("ingress"));
            assert_eq!(parts.next().map(decode_ifname).as_deref(), Some(ifname));
        }
    }
}
