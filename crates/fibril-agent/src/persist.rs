//! Durable, coalesced writes of the agent's `state.json` (group commit).
//!
//! Callers stage a snapshot while they hold the node lock (so generation
//! order is mutation order), release the lock, then [`Saver::wait`] for
//! their generation. One caller at a time writes: it takes the newest staged
//! snapshot, writes it to a temporary file, fsyncs it, renames it over the
//! state file and fsyncs the directory. Every waiter whose generation that
//! write covered returns at once, so N concurrent API calls cost about one
//! or two fsyncs instead of N, and nobody is answered before the state that
//! includes their change is on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use crate::node::PersistedState;

/// The state file's single writer.
#[derive(Debug)]
pub(crate) struct Saver {
    path: PathBuf,
    inner: Mutex<Inner>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    /// Newest snapshot not yet taken by a writer.
    staged: Option<PersistedState>,
    /// Generation of the newest staged snapshot.
    staged_gen: u64,
    /// Highest generation known to be on disk.
    durable_gen: u64,
    /// A write is in progress.
    writing: bool,
    /// The last failed write: (generation it covered, error).
    failed: Option<(u64, String)>,
}

impl Saver {
    /// Writes to `path` (`<state_dir>/state.json`).
    pub(crate) fn new(path: PathBuf) -> Self {
        Saver {
            path,
            inner: Mutex::new(Inner::default()),
            done: Condvar::new(),
        }
    }

    /// Stages `state` (replacing an older staged one) and returns its
    /// generation. Call with the node lock held.
    pub(crate) fn stage(&self, state: PersistedState) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.staged_gen += 1;
        g.staged = Some(state);
        g.staged_gen
    }

    /// Generation of the newest staged snapshot (0: none yet).
    pub(crate) fn latest(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .staged_gen
    }

    /// Blocks until generation `gen` (or a newer one) is on disk; writes it
    /// when no other caller is writing. Call without the node lock.
    pub(crate) fn wait(&self, gen: u64) -> Result<(), String> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if g.durable_gen >= gen {
                return Ok(());
            }
            if let Some((failed, e)) = &g.failed {
                if *failed >= gen {
                    return Err(e.clone());
                }
            }
            if !g.writing {
                let Some(state) = g.staged.take() else {
                    // Only reachable for a generation never staged.
                    return Err(format!(
                        "state generation {gen} was never staged for {}",
                        self.path.display()
                    ));
                };
                let target = g.staged_gen;
                g.writing = true;
                drop(g);
                let r = write_durable(&self.path, &state);
                g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                g.writing = false;
                match r {
                    Ok(()) => g.durable_gen = g.durable_gen.max(target),
                    Err(e) => g.failed = Some((target, e)),
                }
                self.done.notify_all();
                continue;
            }
            g = self.done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Writes `state` to `path` atomically and durably (tmp + fsync + rename +
/// directory fsync).
fn write_durable(path: &Path, state: &PersistedState) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| format!("encode state: {e}"))?;
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    f.write_all(&bytes)
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    f.sync_all()
        .map_err(|e| format!("fsync {}: {e}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
    if let Some(dir) = path.parent() {
        // The rename itself must survive a crash too.
        let d = std::fs::File::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
        d.sync_all()
            .map_err(|e| format!("fsync {}: {e}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_waiters_coalesce_and_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let saver = Arc::new(Saver::new(path.clone()));
        let state = Arc::new(Mutex::new(PersistedState::default()));
        std::thread::scope(|s| {
            for i in 0..32u8 {
                let (saver, state, path) = (saver.clone(), state.clone(), path.clone());
                s.spawn(move || {
                    let gen = {
                        let mut st = state.lock().unwrap();
                        st.containers
                            .insert(format!("c{i}"), std::net::Ipv4Addr::new(10, 0, 0, i));
                        saver.stage(st.clone())
                    };
                    saver.wait(gen).unwrap();
                    // Our change is on disk once we are answered.
                    let on_disk: PersistedState =
                        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                    assert!(on_disk.containers.contains_key(&format!("c{i}")));
                });
            }
        });
        let on_disk: PersistedState =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(on_disk.containers.len(), 32);
        assert_eq!(saver.latest(), 32);
    }

    #[test]
    fn a_failed_write_is_reported() {
        let saver = Saver::new(PathBuf::from("/nonexistent-fibril-dir/state.json"));
        let gen = saver.stage(PersistedState::default());
        assert!(saver
            .wait(gen)
            .unwrap_err()
            .contains("nonexistent-fibril-dir"));
    }
}
