//! Flow events: decoding `fibril_events` records into [`Flow`]s and reading
//! the ring buffer (blocking drain or async with tokio's `AsyncFd`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, RingBuf};
use fibril_abi::{
    ip_from_be, map_names, port_from_be, CtState, DropReason, EventType, FlowEvent, ObsPoint,
    Verdict,
};
use tokio::io::unix::AsyncFd;

use crate::error::{DatapathError, Result};
use crate::maps::{EventCounters, Metrics};

/// TCP flags of a packet, printed like Hubble (`SYN, ACK`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;

    /// True if every bit of `f` is set.
    pub fn has(self, f: u8) -> bool {
        self.0 & f == f
    }
}

impl std::fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::SYN, "SYN"),
            (Self::ACK, "ACK"),
            (Self::PSH, "PSH"),
            (Self::FIN, "FIN"),
            (Self::RST, "RST"),
            (Self::URG, "URG"),
        ];
        let mut first = true;
        for (bit, name) in names {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str(", ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A decoded flow event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when emitted.
    pub time_ns: u64,
    /// Trace or drop.
    pub event_type: EventType,
    /// Observation point.
    pub obs_point: ObsPoint,
    /// Verdict.
    pub verdict: Verdict,
    /// Drop reason of drop events.
    pub drop_reason: Option<DropReason>,
    /// Raw drop reason code (also for reasons this build does not know).
    pub drop_reason_code: u8,
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
    /// Source port (TCP/UDP) or ICMP echo id.
    pub src_port: u16,
    /// Destination port (TCP/UDP), ICMP echo id, or type<<8|code.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// TCP flags.
    pub tcp_flags: TcpFlags,
    /// ICMP type (ICMP only).
    pub icmp_type: Option<u8>,
    /// Source identity.
    pub src_identity: u32,
    /// Destination identity.
    pub dst_identity: u32,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Redirect target (0 = none).
    pub dst_ifindex: u32,
    /// Conntrack state.
    pub ct_state: CtState,
    /// Packet length.
    pub pkt_len: u32,
    /// CPU.
    pub cpu: u32,
}

impl Flow {
    /// Decodes one ring-buffer record. Never panics: short or unknown
    /// records give `None`.
    pub fn decode(bytes: &[u8]) -> Option<Flow> {
        if bytes.len() < std::mem::size_of::<FlowEvent>() {
            return None;
        }
        // SAFETY: the length was checked; FlowEvent is plain integers (any
        // bit pattern valid) and read_unaligned has no alignment needs.
        let ev: FlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Self::from_event(&ev)
    }

    /// Converts a raw event.
    pub fn from_event(ev: &FlowEvent) -> Option<Flow> {
        let event_type = EventType::from_u8(ev.event_type)?;
        let verdict = Verdict::from_u8(ev.verdict)?;
        let is_tcp_udp = ev.proto == 6 || ev.proto == 17 || ev.proto == 1;
        Some(Flow {
            time_ns: ev.ts_ns,
            event_type,
            obs_point: ObsPoint::from_u8(ev.obs_point).unwrap_or(ObsPoint::Unknown),
            verdict,
            drop_reason: if event_type == EventType::Drop {
                DropReason::from_u8(ev.drop_reason)
            } else {
                None
            },
            drop_reason_code: ev.drop_reason,
            src_ip: ip_from_be(ev.saddr),
            dst_ip: ip_from_be(ev.daddr),
            src_port: if is_tcp_udp {
                port_from_be(ev.sport)
            } else {
                0
            },
            dst_port: if is_tcp_udp {
                port_from_be(ev.dport)
            } else {
                0
            },
            proto: ev.proto,
            tcp_flags: TcpFlags(ev.tcp_flags),
            icmp_type: (ev.proto == 1).then_some(ev.icmp_type),
            src_identity: ev.src_identity,
            dst_identity: ev.dst_identity,
            ifindex: ev.ifindex,
            dst_ifindex: ev.dst_ifindex,
            ct_state: CtState::from_u8(ev.ct_state).unwrap_or(CtState::Unknown),
            pkt_len: ev.pkt_len,
            cpu: ev.cpu,
        })
    }

    /// Wall-clock time of the event (the monotonic `time_ns` shifted by the
    /// current offset between CLOCK_REALTIME and CLOCK_MONOTONIC).
    pub fn system_time(&self) -> std::time::SystemTime {
        let mono_now = crate::maps::monotonic_ns();
        let now = std::time::SystemTime::now();
        if self.time_ns <= mono_now {
            now - std::time::Duration::from_nanos(mono_now - self.time_ns)
        } else {
            now + std::time::Duration::from_nanos(self.time_ns - mono_now)
        }
    }

    /// Protocol name (`TCP`, `UDP`, `ICMPv4`, or the number).
    pub fn proto_name(&self) -> String {
        match self.proto {
            6 => "TCP".into(),
            17 => "UDP".into(),
            1 => "ICMPv4".into(),
            n => format!("proto {n}"),
        }
    }

    /// The drop reason's name, if any (e.g. `NO_ROUTE`).
    pub fn drop_reason_name(&self) -> Option<&'static str> {
        self.drop_reason.map(DropReason::as_str)
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.proto {
            6 | 17 => write!(
                f,
                "{}:{} (ID:{}) -> {}:{} (ID:{}) {} {}",
                self.src_ip,
                self.src_port,
                self.src_identity,
                self.dst_ip,
                self.dst_port,
                self.dst_identity,
                self.obs_point,
                self.verdict
            )?,
            _ => write!(
                f,
                "{} (ID:{}) -> {} (ID:{}) {} {}",
                self.src_ip,
                self.src_identity,
                self.dst_ip,
                self.dst_identity,
                self.obs_point,
                self.verdict
            )?,
        }
        if let Some(r) = self.drop_reason {
            write!(f, " ({})", r.description())?;
        }
        match self.proto {
            6 => write!(f, " (TCP Flags: {})", self.tcp_flags),
            17 => f.write_str(" (UDP)"),
            1 => match self.icmp_type {
                Some(0) => f.write_str(" (ICMPv4 EchoReply)"),
                Some(8) => f.write_str(" (ICMPv4 EchoRequest)"),
                Some(t) => write!(f, " (ICMPv4 type {t})"),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// Reader of a node's `fibril_events` ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
    dir: PathBuf,
}

impl EventReader {
    /// Opens the pinned ring buffer under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(map_names::EVENTS);
        let data = MapData::from_pin(&path).map_err(|e| DatapathError::OpenMap {
            path: path.clone(),
            source: Box::new(e),
        })?;
        let map = Map::from_map_data(data).map_err(|e| DatapathError::OpenMap {
            path: path.clone(),
            source: Box::new(e),
        })?;
        let ring = RingBuf::try_from(map).map_err(|e| DatapathError::OpenMap {
            path,
            source: Box::new(e),
        })?;
        Ok(Self {
            ring,
            dir: dir.to_path_buf(),
        })
    }

    /// Takes every record available now (non-blocking). Undecodable records
    /// are skipped (counted in the returned `skipped`).
    pub fn drain(&mut self) -> (Vec<Flow>, usize) {
        let mut flows = Vec::new();
        let mut skipped = 0;
        while let Some(item) = self.ring.next() {
            match Flow::decode(&item) {
                Some(f) => flows.push(f),
                None => skipped += 1,
            }
        }
        (flows, skipped)
    }

    /// Lost / rate-limited / sampled-out counts (from `fibril_metrics`).
    pub fn event_counters(&self) -> Result<EventCounters> {
        Metrics::open(&self.dir)?.event_counters()
    }

    /// Events lost because the ring buffer was full or the rate limiter
    /// dropped them (sampling is not loss).
    pub fn lost_events(&self) -> Result<u64> {
        let c = self.event_counters()?;
        Ok(c.lost + c.rate_limited)
    }

    /// Turns the reader into an async stream source.
    pub fn into_async(self) -> Result<AsyncEventReader> {
        let dir = self.dir.clone();
        // SAFETY: the RingBuf owns its map fd (the epoll-able ring buffer
        // fd) for its whole life inside the AsyncFd and always returns the
        // same fd from as_raw_fd().
        let fd =
            unsafe { AsyncFd::register_with_interest(self.ring, tokio::io::Interest::READABLE) }
                .map_err(|e| DatapathError::io("register ring buffer with tokio", e.into()))?;
        Ok(AsyncEventReader { fd, dir })
    }
}

/// Async reader (tokio `AsyncFd` on the ring buffer's epoll fd).
pub struct AsyncEventReader {
    fd: AsyncFd<RingBuf<MapData>>,
    dir: PathBuf,
}

impl AsyncEventReader {
    /// Waits until events are available and returns them all (at least one
    /// record was signalled; undecodable ones are dropped).
    pub async fn next_batch(&mut self) -> Result<Vec<Flow>> {
        loop {
            let mut guard = self
                .fd
                .readable_mut()
                .await
                .map_err(|e| DatapathError::io("wait for ring buffer", e))?;
            let ring = guard.get_inner_mut();
            let mut flows = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(f) = Flow::decode(&item) {
                    flows.push(f);
                }
            }
            guard.clear_ready();
            if !flows.is_empty() {
                return Ok(flows);
            }
        }
    }

    /// See [`EventReader::lost_events`].
    pub fn lost_events(&self) -> Result<u64> {
        let c = Metrics::open(&self.dir)?.event_counters()?;
        Ok(c.lost + c.rate_limited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_never_panics_on_short_input() {
        for n in 0..64 {
            let _ = Flow::decode(&vec![0xffu8; n]);
        }
        assert!(Flow::decode(&[0u8; 10]).is_none());
    }

    #[test]
    fn decode_drop_event() {
        let ev = FlowEvent {
            event_type: EventType::Drop as u8,
            verdict: Verdict::Dropped as u8,
            drop_reason: DropReason::NoRoute as u8,
            obs_point: ObsPoint::FromEndpoint as u8,
            saddr: fibril_abi::ip_be(Ipv4Addr::new(10, 244, 0, 5)),
            daddr: fibril_abi::ip_be(Ipv4Addr::new(10, 244, 9, 9)),
            sport: fibril_abi::port_be(40000),
            dport: fibril_abi::port_be(80),
            proto: 6,
            tcp_flags: 0x02,
            ..Default::default()
        };
        // SAFETY: FlowEvent is plain integers without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const FlowEvent).cast::<u8>(),
                std::mem::size_of::<FlowEvent>(),
            )
        };
        let f = Flow::decode(bytes).unwrap();
        assert_eq!(f.drop_reason, Some(DropReason::NoRoute));
        assert_eq!(f.dst_port, 80);
        let s = f.to_string();
        assert!(s.contains("10.244.0.5:40000"), "{s}");
        assert!(s.contains("DROPPED (no route)"), "{s}");
        assert!(s.contains("TCP Flags: SYN"), "{s}");
    }
}
