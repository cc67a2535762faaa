//! Errors of the datapath crate.

use std::path::PathBuf;

/// Everything that can go wrong loading, attaching or programming the
/// datapath. Messages name the object, map, interface or path involved.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// bpffs could not be prepared.
    #[error("cannot prepare bpffs at {path}: {source}")]
    Bpffs {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An object failed to load (verifier, map creation, pin reuse).
    #[error("cannot load eBPF object {object}: {source}")]
    Load {
        /// Object name (bpf_lxc, bpf_host).
        object: &'static str,
        /// Cause.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program is missing from an object or failed to load.
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: String,
        /// Cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Attaching a program to an interface failed.
    #[error("cannot attach {program} to {ifname} ({hook}): {reason}")]
    Attach {
        /// Program name.
        program: String,
        /// Interface.
        ifname: String,
        /// ingress / egress.
        hook: &'static str,
        /// Cause.
        reason: String,
    },
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        /// netns path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A pinned map could not be opened.
    #[error("cannot open pinned map {path}: {source}")]
    OpenMap {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A pinned map has a layout other than the one this binary expects
    /// (remove the pins or migrate).
    #[error(
        "pinned map {path} has key/value size {found_key}/{found_value}, expected \
         {want_key}/{want_value}: the layout changed; unpin it (fibril lab down) or migrate"
    )]
    MapLayout {
        /// Pin path.
        path: PathBuf,
        /// Key size found.
        found_key: u32,
        /// Value size found.
        found_value: u32,
        /// Key size expected.
        want_key: u32,
        /// Value size expected.
        want_value: u32,
    },
    /// A map operation failed.
    #[error("map {map}: {op} {key}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Operation.
        op: &'static str,
        /// The key, formatted.
        key: String,
        /// Cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// Invalid configuration value.
    #[error("invalid datapath config {field}: {reason}")]
    Config {
        /// Field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Other I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias.
pub type Result<T, E = DatapathError> = std::result::Result<T, E>;

impl DatapathError {
    pub(crate) fn map(
        map: &'static str,
        op: &'static str,
        key: impl std::fmt::Debug,
        e: aya::maps::MapError,
    ) -> Self {
        Self::Map {
            map,
            op,
            key: format!("{key:?}"),
            source: Box::new(e),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
