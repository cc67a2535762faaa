//! The agent's counters and `/metrics` (Prometheus text, prometheus-client),
//! plus the map fill levels shared with `fibril dbg map list`.

use std::path::Path;

use fibril_abi::{map_names, map_sizes};
use fibril_datapath::Maps;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// Counters kept by the sync and GC loops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Sync passes done.
    pub sync_passes: u64,
    /// Sync passes that failed (store or datapath errors).
    pub sync_errors: u64,
    /// Service frontends written.
    pub services_upserted: u64,
    /// Service frontends removed.
    pub services_deleted: u64,
    /// Service frontends that failed to program.
    pub service_errors: u64,
    /// Conntrack GC passes.
    pub ct_gc_runs: u64,
    /// Conntrack entries removed by GC.
    pub ct_gc_removed: u64,
    /// Conntrack entries alive after the last GC.
    pub ct_alive: u64,
    /// NAT GC passes.
    pub nat_gc_runs: u64,
    /// NAT entries removed by GC (masquerading and NodePort SNAT).
    pub nat_gc_removed: u64,
}

/// One pinned map's fill level (`map list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    /// Map name.
    pub name: String,
    /// Entries.
    pub entries: usize,
    /// `max_entries`.
    pub capacity: u32,
    /// Errors while reading it (0 or 1).
    pub errors: u32,
}

/// Fill levels of the node's pinned maps (maps that cannot be read count
/// one error; the ring buffer and per-CPU tables are listed with 0).
pub fn map_fill(pin_dir: &Path) -> Vec<MapFill> {
    let maps = Maps::new(pin_dir);
    let mut out = Vec::new();
    let mut push = |name: &str, n: Option<usize>, cap: u32| {
        out.push(MapFill {
            name: name.to_string(),
            entries: n.unwrap_or(0),
            capacity: cap,
            errors: u32::from(n.is_none()),
        })
    };
    push(
        map_names::ENDPOINTS,
        maps.endpoints().ok().and_then(|m| m.len().ok()),
        map_sizes::ENDPOINTS,
    );
    push(
        map_names::IPCACHE,
        maps.ipcache()
            .ok()
            .and_then(|m| m.entries().ok())
            .map(|v| v.len()),
        map_sizes::IPCACHE,
    );
    push(
        map_names::CT4,
        maps.conntrack()
            .ok()
            .and_then(|m| m.entries().ok())
            .map(|v| v.len()),
        map_sizes::CT4,
    );
    push(
        map_names::NAT4,
        maps.nat4().ok().and_then(|m| m.len().ok()),
        map_sizes::NAT4,
    );
    push(
        map_names::IPMASQ,
        maps.ipmasq()
            .ok()
            .and_then(|m| m.entries().ok())
            .map(|v| v.len()),
        map_sizes::IPMASQ,
    );
    push(
        map_names::LB4_SERVICES,
        maps.lb4_services().ok().and_then(|m| m.len().ok()),
        map_sizes::LB4_SERVICES,
    );
    push(
        map_names::LB4_BACKENDS,
        maps.lb4_backends().ok().and_then(|m| m.len().ok()),
        map_sizes::LB4_BACKENDS,
    );
    push(
        map_names::LB4_REVERSE_NAT,
        maps.lb4_reverse_nat().ok().and_then(|m| m.len().ok()),
        map_sizes::LB4_REVERSE_NAT,
    );
    push(
        map_names::LB4_SNAT,
        fibril_datapath::lb::snat_entries(&maps)
            .ok()
            .map(|v| v.len()),
        map_sizes::LB4_SNAT,
    );
    push(
        map_names::POLICY,
        maps.policy().ok().and_then(|m| m.len().ok()),
        map_sizes::POLICY,
    );
    out
}

/// `map list`: `Name  Num entries  Num errors  Cache enabled`.
pub fn format_map_list(fill: &[MapFill]) -> String {
    let w = fill.iter().map(|m| m.name.len()).max().unwrap_or(4).max(4) + 3;
    let mut out = format!(
        "{:<w$}{:<14}{:<13}{}\n",
        "Name", "Num entries", "Num errors", "Cache enabled"
    );
    for m in fill {
        out.push_str(&format!(
            "{:<w$}{:<14}{:<13}{}\n",
            m.name, m.entries, m.errors, "false"
        ));
    }
    out
}

/// Values of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Counters.
    pub stats: AgentStats,
    /// Local endpoints.
    pub endpoints: usize,
    /// Service frontends programmed.
    pub services: usize,
    /// Map fill levels.
    pub maps: Vec<MapFill>,
    /// Forwarded packets.
    pub forwarded: u64,
    /// Drops by reason.
    pub drops: Vec<(String, u64)>,
}

/// Renders a snapshot as Prometheus text.
pub fn render(s: &Snapshot) -> String {
    let mut reg = Registry::with_prefix("fibril");
    let gauge = |reg: &mut Registry, name: &str, help: &str, v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        reg.register(name, help, g);
    };
    let counter = |reg: &mut Registry, name: &str, help: &str, v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        reg.register(name, help, c);
    };
    let st = &s.stats;
    gauge(&mut reg, "endpoints", "Local endpoints", s.endpoints as i64);
    gauge(
        &mut reg,
        "services",
        "Service frontends programmed",
        s.services as i64,
    );
    counter(&mut reg, "sync_passes", "Sync passes", st.sync_passes);
    counter(
        &mut reg,
        "sync_errors",
        "Sync passes that failed",
        st.sync_errors,
    );
    let upd: Family<Vec<(String, String)>, Counter> = Family::default();
    upd.get_or_create(&vec![("op".into(), "upsert".into())])
        .inc_by(st.services_upserted);
    upd.get_or_create(&vec![("op".into(), "delete".into())])
        .inc_by(st.services_deleted);
    upd.get_or_create(&vec![("op".into(), "error".into())])
        .inc_by(st.service_errors);
    reg.register("service_updates", "Service frontend updates", upd);
    counter(&mut reg, "ct_gc_runs", "Conntrack GC passes", st.ct_gc_runs);
    counter(
        &mut reg,
        "ct_gc_removed",
        "Conntrack entries removed by GC",
        st.ct_gc_removed,
    );
    counter(&mut reg, "nat_gc_runs", "NAT GC passes", st.nat_gc_runs);
    counter(
        &mut reg,
        "nat_gc_removed",
        "NAT entries removed by GC",
        st.nat_gc_removed,
    );
    let entries: Family<Vec<(String, String)>, Gauge> = Family::default();
    let pressure: Family<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>> =
        Family::default();
    for m in &s.maps {
        let l = vec![("map_name".to_string(), m.name.clone())];
        entries.get_or_create(&l).set(m.entries as i64);
        if m.capacity > 0 {
            pressure
                .get_or_create(&l)
                .set(m.entries as f64 / f64::from(m.capacity));
        }
    }
    reg.register("map_entries", "Entries of a pinned map", entries);
    reg.register(
        "map_pressure",
        "Fill level of a pinned map (entries / max_entries)",
        pressure,
    );
    counter(
        &mut reg,
        "forward_count",
        "Packets forwarded by the datapath",
        s.forwarded,
    );
    let drops: Family<Vec<(String, String)>, Counter> = Family::default();
    for (reason, n) in &s.drops {
        drops
            .get_or_create(&vec![("reason".into(), reason.clone())])
            .inc_by(*n);
    }
    reg.register("drop_count", "Packets dropped by the datapath", drops);
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.push_str("# encoding failed\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let s = Snapshot {
            stats: AgentStats {
                sync_errors: 2,
                services_upserted: 5,
                ..Default::default()
            },
            endpoints: 3,
            services: 4,
            maps: vec![MapFill {
                name: "fibril_ct4".into(),
                entries: 10,
                capacity: 100,
                errors: 0,
            }],
            forwarded: 7,
            drops: vec![("NO_SERVICE".into(), 1)],
        };
        let t = render(&s);
        assert!(t.contains("fibril_endpoints 3\n"), "{t}");
        assert!(t.contains("fibril_sync_errors_total 2\n"), "{t}");
        assert!(
            t.contains("fibril_service_updates_total{op=\"upsert\"} 5\n"),
            "{t}"
        );
        assert!(
            t.contains("fibril_map_pressure{map_name=\"fibril_ct4\"} 0.1"),
            "{t}"
        );
        assert!(
            t.contains("fibril_drop_count_total{reason=\"NO_SERVICE\"} 1\n"),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"));
    }

    #[test]
    fn map_list_columns() {
        let t = format_map_list(&[MapFill {
            name: "fibril_lb4_services".into(),
            entries: 12,
            capacity: 1,
            errors: 0,
        }]);
        assert_eq!(
            t,
            "Name                  Num entries   Num errors   Cache enabled\nfibril_lb4_services   12            0            false\n"
        );
    }
}
