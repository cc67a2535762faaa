//! The work queue: each item at most once, due at a time; failures back off
//! exponentially per item (kube-runtime's requeue-on-error).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::OperatorOptions;

/// One unit of reconcile work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Work {
    /// The stored config changed.
    Config,
    /// FibrilPodIPPools changed (multi-pool).
    Pools,
    /// One FibrilNode's IPAM.
    FibrilNode(String),
    /// One Node's podCIDR.
    Node(String),
    /// Identity allocation and GC pass.
    Identities,
    /// Reconcile everything again.
    ResyncAll,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    due: BTreeMap<Work, Instant>,
    attempts: HashMap<Work, u32>,
}

impl Queue {
    /// Schedules `w` at `at`, or earlier if it is already scheduled earlier.
    pub fn add(&mut self, w: Work, at: Instant) {
        self.due
            .entry(w)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Removes and returns an item due at `now` (config and pools first, by `Work`'s order).
    pub fn pop_due(&mut self, now: Instant) -> Option<Work> {
        let w = self
            .due
            .iter()
            .find(|(_, t)| **t <= now)
            .map(|(w, _)| w.clone())?;
        self.due.remove(&w);
        Some(w)
    }

    pub fn succeeded(&mut self, w: &Work) {
        self.attempts.remove(w);
    }

    /// Requeues `w` with backoff; returns the delay.
    pub fn failed(&mut self, w: &Work, opts: &OperatorOptions) -> Duration {
        let n = self.attempts.entry(w.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 1u32 << (*n - 1).min(16);
        let delay = opts.retry_base.saturating_mul(factor).min(opts.retry_max);
        self.add(w.clone(), Instant::now() + delay);
        delay
    }
}
