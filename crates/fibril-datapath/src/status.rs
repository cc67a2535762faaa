//! One-call summary of a node's datapath for `fibril dbg status` and the
//! agent: what is attached, map fill levels, conntrack, drops and event
//! accounting. Reads the pins only (no loaded programs needed).

use std::path::Path;

use fibril_abi::{map_sizes, DropReason};

use crate::error::Result;
use crate::loader::{pinned_attachments, PinnedAttachment};
use crate::maps::{monotonic_ns, CtCounts, EventCounters, Maps};

/// Drops of one reason, both directions summed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCount {
    /// Reason.
    pub reason: DropReason,
    /// Packets.
    pub packets: u64,
}

/// Summary of a node's datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathStatus {
    /// Pinned (attached) programs.
    pub attachments: Vec<PinnedAttachment>,
    /// Local endpoints.
    pub endpoints: usize,
    /// Capacity of `fibril_endpoints`.
    pub endpoints_capacity: u32,
    /// Conntrack counts.
    pub conntrack: CtCounts,
    /// Packets forwarded (all directions).
    pub forwarded: u64,
    /// Non-zero drop counters.
    pub drops: Vec<DropCount>,
    /// Event accounting.
    pub events: EventCounters,
}

impl DatapathStatus {
    /// Reads the status from a node's pin directory.
    pub fn read(pin_dir: &Path) -> Result<Self> {
        let maps = Maps::new(pin_dir);
        let metrics = maps.metrics()?;
        let mut forwarded = 0;
        let mut drops: Vec<DropCount> = Vec::new();
        for m in metrics.all()? {
            if m.reason == fibril_abi::metrics::FORWARDED {
                forwarded += m.packets;
            } else if let Some(reason) = m.drop_reason() {
                match drops.iter_mut().find(|d| d.reason == reason) {
                    Some(d) => d.packets += m.packets,
                    None => drops.push(DropCount {
                        reason,
                        packets: m.packets,
                    }),
                }
            }
        }
        drops.sort_by_key(|d| d.reason);
        Ok(Self {
            attachments: pinned_attachments(pin_dir)?,
            endpoints: maps.endpoints()?.len()?,
            endpoints_capacity: map_sizes::ENDPOINTS,
            conntrack: maps.conntrack()?.counts(monotonic_ns())?,
            forwarded,
            drops,
            events: metrics.event_counters()?,
        })
    }
}

impl std::fmt::Display for DatapathStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Programs:     {} attached", self.attachments.len())?;
        for a in &self.attachments {
            writeln!(
                f,
                "  {:<16} {:<8} {}",
                a.ifname,
                a.prog.hook().as_str(),
                a.prog.name()
            )?;
        }
        writeln!(
            f,
            "Endpoints:    {}/{}",
            self.endpoints, self.endpoints_capacity
        )?;
        let c = &self.conntrack;
        writeln!(
            f,
            "Conntrack:    {}/{} (TCP {}, UDP {}, ICMP {}, other {}; established {}, closing {}, expired {})",
            c.total, c.capacity, c.tcp, c.udp, c.icmp, c.other, c.established, c.closing, c.expired
        )?;
        writeln!(f, "Forwarded:    {} packets", self.forwarded)?;
        for d in &self.drops {
            writeln!(
                f,
                "Dropped:      {} packets ({})",
                d.packets,
                d.reason.as_str()
            )?;
        }
        write!(
            f,
            "Events:       lost {}, rate-limited {}, sampled out {}, aggregated {}",
            self.events.lost,
            self.events.rate_limited,
            self.events.sampled_out,
            self.events.aggregated
        )
    }
}
