//! `BPF_PROG_TEST_RUN` harness: a private netns, a private pin directory,
//! the datapath loaded with a chosen config, and `run()` returning the
//! verdict and the output packet.
//!
//! ```no_run
//! use fibril_datapath::testing::bed::{TestBed, TC_ACT_SHOT};
//! use fibril_datapath::testing::packet::Packet;
//! use fibril_datapath::{DatapathConfig, Prog};
//! let mut bed = TestBed::new(DatapathConfig::default(), "");
//! let pkt = Packet::tcp([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, 0x02).build();
//! let r = bed.run(Prog::FromContainer, 1, &pkt);
//! assert_eq!(r.ret, TC_ACT_SHOT); // unknown source endpoint
//! ```

use std::path::{Path, PathBuf};

use aya::programs::{TestRun, TestRunOptions};

use crate::events::Flow;
use crate::loader::{Datapath, DatapathOptions};
use crate::maps::Maps;
use crate::objects::Prog;
use crate::testing::fixture::{unique_name, TestNetns};
use crate::testing::packet::Parsed;
use crate::DatapathConfig;

/// `TC_ACT_OK`.
pub const TC_ACT_OK: i32 = 0;
/// `TC_ACT_SHOT`.
pub const TC_ACT_SHOT: i32 = 2;
/// `TC_ACT_REDIRECT`.
pub const TC_ACT_REDIRECT: i32 = 7;

/// Size of `struct __sk_buff` passed as ctx (offsets from linux/bpf.h).
const SKB_CTX_SIZE: usize = 192;
const SKB_INGRESS_IFINDEX_OFF: usize = 36;
const SKB_IFINDEX_OFF: usize = 40;

/// Result of one test run.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Program return code (TC_ACT_*).
    pub ret: i32,
    /// Output packet.
    pub data: Vec<u8>,
}

impl RunResult {
    /// The output packet parsed.
    pub fn parsed(&self) -> Parsed {
        Parsed::parse(&self.data).unwrap_or_default()
    }
}

/// Root of test pin directories.
pub const TEST_PIN_ROOT: &str = "/sys/fs/bpf/fibril-test";

/// A loaded datapath in a private netns and pin dir; both removed on drop.
pub struct TestBed {
    /// Datapath (programs loaded, nothing attached).
    pub dp: Datapath,
    /// The private netns (configure devices and routes with `ns.sh`).
    pub ns: TestNetns,
    pin_dir: PathBuf,
}

impl TestBed {
    /// Creates the netns, runs `setup` (shell, inside the netns; may be
    /// empty) and loads the datapath with `config`.
    pub fn new(config: DatapathConfig, setup: &str) -> Self {
        let ns = TestNetns::new("bed");
        if !setup.is_empty() {
            ns.sh(setup);
        }
        let pin_dir = Path::new(TEST_PIN_ROOT).join(unique_name("bed"));
        let dp = Datapath::load(DatapathOptions {
            pin_dir: pin_dir.clone(),
            netns: ns.netns(),
            config,
        })
        .unwrap_or_else(|e| panic!("load datapath: {e}: {:?}", std::error::Error::source(&e)));
        Self { dp, ns, pin_dir }
    }

    /// Pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Typed maps.
    pub fn maps(&self) -> Maps {
        Maps::new(&self.pin_dir)
    }

    /// Runs `prog` on `pkt` as if received on `ifindex` (1 = lo; use an
    /// interface of `ns` for endpoint checks). Panics if the kernel refuses
    /// the run (see [`TestBed::try_run`]).
    pub fn run(&mut self, prog: Prog, ifindex: u32, pkt: &[u8]) -> RunResult {
        self.try_run(prog, ifindex, pkt)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {}: {e}", prog.name()))
    }

    /// Like [`TestBed::run`], but returns the kernel's refusal (e.g. EINVAL
    /// for frames too short for their ethertype) as an error string.
    pub fn try_run(&mut self, prog: Prog, ifindex: u32, pkt: &[u8]) -> Result<RunResult, String> {
        self.try_run_repeat(prog, ifindex, pkt, 1)
    }

    /// Runs `prog` `repeat` times in one syscall on the same skb (changes
    /// accumulate: use packets the program does not rewrite, e.g. to the
    /// stack). Returns the last run's result.
    pub fn run_repeat(&mut self, prog: Prog, ifindex: u32, pkt: &[u8], repeat: u32) -> RunResult {
        self.try_run_repeat(prog, ifindex, pkt, repeat)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {}: {e}", prog.name()))
    }

    /// [`TestBed::run_repeat`] returning the kernel's refusal as an error.
    pub fn try_run_repeat(
        &mut self,
        prog: Prog,
        ifindex: u32,
        pkt: &[u8],
        repeat: u32,
    ) -> Result<RunResult, String> {
        let mut ctx = vec![0u8; SKB_CTX_SIZE];
        ctx[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[SKB_INGRESS_IFINDEX_OFF..SKB_INGRESS_IFINDEX_OFF + 4]
            .copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; pkt.len() + 256];
        let netns = self.ns.netns();
        let program = self.dp.program(prog).map_err(|e| e.to_string())?;
        let res = netns
            .run(|| {
                let opts = TestRunOptions {
                    data_in: Some(pkt),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat,
                    ..TestRunOptions::default()
                };
                program.test_run(opts).map_err(|e| {
                    let src = std::error::Error::source(&e).map(|s| s.to_string());
                    format!("{e} ({src:?}), packet {} bytes", pkt.len())
                })
            })
            .map_err(|e| e.to_string())??;
        out.truncate(res.data_size_out as usize);
        Ok(RunResult {
            ret: res.return_value as i32,
            data: out,
        })
    }

    /// Drains the events emitted so far.
    pub fn events(&self) -> Vec<Flow> {
        self.maps().events().expect("events").drain().0
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if let Err(e) = Datapath::destroy(&self.pin_dir) {
            eprintln!("TestBed cleanup {}: {e}", self.pin_dir.display());
        }
        // Whatever a test pinned there itself.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // Only succeeds once the last bed is gone.
        let _ = std::fs::remove_dir(TEST_PIN_ROOT);
    }
}
