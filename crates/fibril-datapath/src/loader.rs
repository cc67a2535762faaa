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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aya::maps::MapData;
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::SchedClassifier;
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

/// A pinned link found under `<pin_dir>/links`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedAttachment {
    /// Interface name.
    pub ifname: String,
    /// Program attached.
    pub prog: Prog,
    /// Pin path.
    pub path: PathBuf,
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
        std::fs::create_dir_all(links_dir(&opts.pin_dir))
            .map_err(|e| DatapathError::io(format!("create {}", opts.pin_dir.display()), e))?;
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

    /// Attaches `cil_from_container` to a pod's host-side veth.
    pub fn attach_endpoint(&mut self, ifname: &str) -> Result<AttachOutcome> {
        self.attach(Prog::FromContainer, ifname)
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
        for att in pinned_attachments(&self.pin_dir)? {
            let program = self.program(att.prog)?;
            match replace_link(program, &att.path) {
                Ok(()) => done.push(att),
                Err(reason) => {
                    tracing::info!(ifname = %att.ifname, %reason, "removing stale pinned link");
                    let _ = std::fs::remove_file(&att.path);
                }
            }
        }
        Ok(done)
    }

    /// Detaches every program from `ifname` (e.g. on pod deletion).
    pub fn detach_interface(pin_dir: &Path, ifname: &str) -> Result<usize> {
        let mut n = 0;
        for att in pinned_attachments(pin_dir)? {
            if att.ifname == ifname {
                unpin_link(&att.path)?;
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
            unpin_link(&att.path)?;
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
    /// a replacement, the program id changes.
    pub fn ids(&self) -> Result<(u32, u32)> {
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

/// Lists the pinned links of a node.
pub fn pinned_attachments(pin_dir: &Path) -> Result<Vec<PinnedAttachment>> {
    let dir = links_dir(pin_dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DatapathError::io(format!("read {}", dir.display()), e)),
    };
    let mut out = Vec::new();
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
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
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
