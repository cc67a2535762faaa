//! Text output of `fibril dbg` in cilium-dbg's layouts, from the agent API's
//! answers ([`crate::api`]) and from pinned maps. The LB, NAT and ip-masq
//! listings are the datapath's own formatters (`LbDump`, `nat::format_list`,
//! `ipmasq::list`); this module has the rest.

use std::net::Ipv4Addr;
use std::path::Path;

use fibril_abi::{
    ct_flags, ct_key_flags, ip_from_be, ipcache_flags, Ct4Key, Ct4Value, EndpointInfo, IpcacheValue,
};
use fibril_datapath::{LbDump, Maps, Prefix4};

use crate::api::{EndpointListEntry, IdentityEntry, IpEntry, NodeEntry, StatusResponse};

/// Width of the label column of `status` (cilium-dbg's tabwriter: the
/// longest label, `KubeProxyReplacement:`, plus three spaces).
const LABEL: usize = 24;

fn kv(out: &mut String, label: &str, value: &str) {
    out.push_str(&format!("{:<LABEL$}{value}", format!("{label}:")));
    out.push('\n');
}

/// `status [--verbose] [--all-addresses]`.
pub fn format_status(s: &StatusResponse, verbose: bool, all_addresses: bool) -> String {
    let mut out = String::new();
    kv(&mut out, "KVStore", "Disabled");
    let store = if s.store.is_empty() { "Ok" } else { &s.store };
    kv(
        &mut out,
        "Kubernetes",
        &format!("{store}   (cluster store)"),
    );
    kv(&mut out, "KubeProxyReplacement", &s.kube_proxy_replacement);
    kv(&mut out, "Host firewall", "Disabled");
    kv(&mut out, "Fibril", &format!("Ok   node {}", s.node));
    kv(&mut out, "NodeMonitor", "Listening for events");
    kv(&mut out, "Cilium health daemon", "Ok");
    kv(&mut out, "IPAM", &format!("{},", s.ipam));
    if verbose || all_addresses {
        out.push_str("Allocated addresses:\n");
        for a in &s.allocations {
            out.push_str(&format!("  {a}\n"));
        }
    }
    kv(&mut out, "Routing", &s.routing);
    kv(&mut out, "Masquerading", &s.masquerading);
    kv(&mut out, "Endpoints", &format!("{} local", s.endpoints));
    kv(
        &mut out,
        "Services",
        &format!("{} frontends programmed", s.services),
    );
    if !s.announced.is_empty() {
        let ips: Vec<String> = s.announced.iter().map(|i| i.to_string()).collect();
        kv(&mut out, "L2 announcements", &ips.join(", "));
    }
    let st = &s.stats;
    kv(
        &mut out,
        "Controller Status",
        &format!(
            "sync {} passes, {} failed; services {} updated, {} removed, {} failed",
            st.sync_passes,
            st.sync_errors,
            st.services_upserted,
            st.services_deleted,
            st.service_errors
        ),
    );
    kv(
        &mut out,
        "Garbage collection",
        &format!(
            "conntrack {} runs, {} removed; NAT {} runs, {} removed",
            st.ct_gc_runs, st.ct_gc_removed, st.nat_gc_runs, st.nat_gc_removed
        ),
    );
    if verbose {
        out.push_str("BPF Maps:\n");
        for m in &s.maps {
            out.push_str(&format!("  {:<24}{}/{}\n", m.name, m.entries, m.capacity));
        }
        out.push_str("Datapath:\n");
        for l in s.datapath.lines() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out
}

/// Left-aligned columns, three spaces apart; multi-line cells continue on
/// following lines (the other cells empty).
pub fn table(header: &[&str], rows: &[Vec<Vec<String>>]) -> String {
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate().take(n) {
            for l in cell {
                w[i] = w[i].max(l.len());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == n {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}", width = w[i] + 3));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        let height = r.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for k in 0..height {
            line(
                (0..n)
                    .map(|i| r.get(i).and_then(|c| c.get(k)).map_or("", String::as_str))
                    .collect(),
            );
        }
    }
    out
}

fn one(s: impl Into<String>) -> Vec<String> {
    vec![s.into()]
}

/// `endpoint list`.
pub fn format_endpoint_list(eps: &[EndpointListEntry]) -> String {
    let header = [
        "ENDPOINT",
        "POLICY (ingress)",
        "POLICY (egress)",
        "IDENTITY",
        "LABELS (source:key[=value])",
        "IPv6",
        "IPv4",
        "STATUS",
    ];
    let mut rows = vec![vec![
        one(""),
        one("ENFORCEMENT"),
        one("ENFORCEMENT"),
        one(""),
        one(""),
        one(""),
        one(""),
        one(""),
    ]];
    for e in eps {
        let labels = if e.labels.is_empty() {
            one("reserved:unknown")
        } else {
            e.labels.clone()
        };
        rows.push(vec![
            one(e.id.to_string()),
            one(e.policy.0.clone()),
            one(e.policy.1.clone()),
            one(e.identity.to_string()),
            labels,
            one(""),
            one(e.ipv4.map(|i| i.to_string()).unwrap_or_default()),
            one(e.status.clone()),
        ]);
    }
    table(&header, &rows)
}

/// `ip list`.
pub fn format_ip_list(ips: &[IpEntry]) -> String {
    let rows: Vec<Vec<Vec<String>>> = ips
        .iter()
        .map(|e| {
            let labels = if e.labels.is_empty() {
                one(e.identity.to_string())
            } else {
                e.labels.clone()
            };
            vec![one(e.prefix.clone()), labels, one(e.source.clone())]
        })
        .collect();
    table(&["IP", "IDENTITY", "SOURCE"], &rows)
}

/// `identity list`.
pub fn format_identity_list(ids: &[IdentityEntry]) -> String {
    let rows: Vec<Vec<Vec<String>>> = ids
        .iter()
        .map(|e| vec![one(e.id.to_string()), e.labels.clone()])
        .collect();
    table(&["ID", "LABELS"], &rows)
}

/// `node list`.
pub fn format_node_list(nodes: &[NodeEntry]) -> String {
    let rows: Vec<Vec<Vec<String>>> = nodes
        .iter()
        .map(|n| {
            vec![
                one(n.name.clone()),
                one(n.ipv4.map(|i| i.to_string()).unwrap_or_default()),
                if n.cidrs.is_empty() {
                    one("")
                } else {
                    n.cidrs.clone()
                },
                one(""),
                one(""),
                one(n.source.clone()),
            ]
        })
        .collect();
    table(
        &[
            "Name",
            "IPv4 Address",
            "Endpoint CIDR",
            "IPv6 Address",
            "Endpoint CIDR",
            "Source",
        ],
        &rows,
    )
}

/// `bpf ipcache list`.
pub fn format_ipcache_list(entries: &[(Prefix4, IpcacheValue)]) -> String {
    let rows: Vec<Vec<Vec<String>>> = entries
        .iter()
        .map(|(p, v)| {
            let mut flags = Vec::new();
            if v.flags & ipcache_flags::REMOTE_NODE != 0 {
                flags.push("remote-node");
            }
            if v.flags & ipcache_flags::POD_CIDR != 0 {
                flags.push("pod-cidr");
            }
            let flags = if flags.is_empty() {
                "<none>".to_string()
            } else {
                flags.join(",")
            };
            vec![
                one(p.to_string()),
                one(format!(
                    "identity={} encryptkey=0 tunnelendpoint={} flags={flags}",
                    v.sec_identity,
                    ip_from_be(v.tunnel_endpoint)
                )),
            ]
        })
        .collect();
    table(&["IP PREFIX/ADDRESS", "IDENTITY"], &rows)
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        n => format!("proto{n}"),
    }
}

fn ct_flag_names(f: u16) -> String {
    let names = [
        (ct_flags::SYN_SEEN, "SynSeen"),
        (ct_flags::SYNACK_SEEN, "SynAckSeen"),
        (ct_flags::ESTABLISHED, "Established"),
        (ct_flags::TX_CLOSING, "TxClosing"),
        (ct_flags::RX_CLOSING, "RxClosing"),
        (ct_flags::SEEN_NON_SYN, "SeenNonSyn"),
        (ct_flags::NODE_PORT, "NodePort"),
        (ct_flags::SNAT, "SNAT"),
        (ct_flags::HAIRPIN, "Hairpin"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    format!("[ {} ]", v.join(" "))
}

/// `bpf ct list global`: one line per entry, cilium-dbg's fields
/// (`expires` in seconds of the monotonic clock, as Cilium prints it).
pub fn format_ct_list(entries: &[(Ct4Key, Ct4Value)]) -> String {
    let mut v: Vec<&(Ct4Key, Ct4Value)> = entries.iter().collect();
    v.sort_by_key(|(k, _)| {
        (
            k.proto,
            ip_from_be(k.saddr),
            u16::from_be(k.sport),
            ip_from_be(k.daddr),
        )
    });
    let mut out = String::new();
    for (k, c) in v {
        let dir = if k.flags & ct_key_flags::SERVICE != 0 {
            "SVC"
        } else {
            "OUT"
        };
        out.push_str(&format!(
            "{} {dir} {}:{} -> {}:{} expires={} RxPackets={} RxBytes={} RxFlagsSeen={:#04x} LastRxReport={} TxPackets={} TxBytes={} TxFlagsSeen={:#04x} LastTxReport={} Flags={:#06x} {} RevNAT={} SourceSecurityID={} IfIndex={} BackendID={}\n",
            proto_name(k.proto),
            ip_from_be(k.saddr),
            u16::from_be(k.sport),
            ip_from_be(k.daddr),
            u16::from_be(k.dport),
            c.lifetime / 1_000_000_000,
            c.packets_rev,
            c.bytes_rev,
            c.tcp_flags_rev,
            c.last_report_rev,
            c.packets_fwd,
            c.bytes_fwd,
            c.tcp_flags_fwd,
            c.last_report_fwd,
            c.flags,
            ct_flag_names(c.flags),
            c.rev_nat_index,
            c.src_sec_id,
            c.ifindex,
            c.backend_id,
        ));
    }
    out
}

/// `bpf endpoint list`: local endpoints, and the node's own addresses as
/// `(localhost)`.
pub fn format_bpf_endpoint_list(eps: &[(Ipv4Addr, EndpointInfo)], host_ips: &[Ipv4Addr]) -> String {
    let mac = |m: [u8; 6]| crate::api::format_mac(m).to_uppercase();
    let mut rows: Vec<Vec<Vec<String>>> = host_ips
        .iter()
        .map(|ip| vec![one(format!("{ip}:0")), one("(localhost)")])
        .collect();
    for (ip, e) in eps {
        rows.push(vec![
            one(format!("{ip}:0")),
            one(format!(
                "id={:<5} sec_id={:<5} flags={:#06x} ifindex={:<3} mac={} nodemac={} parent_ifindex=0",
                e.ep_id,
                e.sec_identity,
                e.flags,
                e.ifindex,
                mac(e.mac),
                mac(e.node_mac)
            )),
        ]);
    }
    table(&["IP ADDRESS", "LOCAL ENDPOINT INFO"], &rows)
}

/// `map get NAME`: the entries of one pinned map as `Key  Value`.
pub fn map_get(pin_dir: &Path, name: &str) -> Result<String, fibril_datapath::DatapathError> {
    use fibril_abi::map_names as n;
    let maps = Maps::new(pin_dir);
    let mut rows: Vec<Vec<Vec<String>>> = Vec::new();
    let mut push = |k: String, v: String| rows.push(vec![one(k), one(v), one("sync"), one("")]);
    match name {
        n::ENDPOINTS => {
            for (ip, e) in maps.endpoints()?.list()? {
                push(
                    ip.to_string(),
                    format!(
                        "id={} sec_id={} flags={:#06x} ifindex={}",
                        e.ep_id, e.sec_identity, e.flags, e.ifindex
                    ),
                );
            }
        }
        n::IPCACHE => {
            for (p, v) in maps.ipcache()?.entries()? {
                push(
                    p.to_string(),
                    format!(
                        "identity={} tunnelendpoint={} flags={:#x}",
                        v.sec_identity,
                        ip_from_be(v.tunnel_endpoint),
                        v.flags
                    ),
                );
            }
        }
        n::IPMASQ => {
            for (p, _) in maps.ipmasq()?.entries()? {
                push(p.to_string(), "<none>".into());
            }
        }
        n::LB4_SERVICES | n::LB4_BACKENDS | n::LB4_REVERSE_NAT => {
            let d = LbDump::read(&maps).map_err(|e| match e {
                fibril_datapath::lb::LbError::Datapath(d) => d,
                other => fibril_datapath::DatapathError::Config {
                    field: "lb",
                    reason: other.to_string(),
                },
            })?;
            match name {
                n::LB4_SERVICES => {
                    for s in &d.services {
                        push(
                            format!("{} {}", s.frontend, s.scope),
                            format!(
                                "count={} revnat={} flags={:#x} ({})",
                                s.count,
                                s.rev_nat,
                                s.flags,
                                s.svc_type()
                            ),
                        );
                        for (slot, id) in &s.slots {
                            push(
                                format!("{} {} slot {slot}", s.frontend, s.scope),
                                format!("backend={id}"),
                            );
                        }
                    }
                }
                n::LB4_BACKENDS => {
                    for (id, b) in &d.backends {
                        push(
                            id.to_string(),
                            format!(
                                "{}:{} proto={} flags={:#x}",
                                ip_from_be(b.address),
                                u16::from_be(b.port),
                                proto_name(b.proto),
                                b.flags
                            ),
                        );
                    }
                }
                _ => {
                    for (id, r) in &d.revnat {
                        push(
                            id.to_string(),
                            format!("{}:{}", ip_from_be(r.address), u16::from_be(r.port)),
                        );
                    }
                }
            }
        }
        n::CT4 => {
            return Ok(format_ct_list(&maps.conntrack()?.entries()?));
        }
        n::NAT4 => {
            let nat = fibril_datapath::Nat::open(pin_dir)?;
            return nat.list(fibril_datapath::monotonic_ns());
        }
        other => {
            return Err(fibril_datapath::DatapathError::Config {
                field: "map",
                reason: format!(
                    "map {other:?} cannot be listed (try one of: {})",
                    [
                        n::ENDPOINTS,
                        n::IPCACHE,
                        n::IPMASQ,
                        n::LB4_SERVICES,
                        n::LB4_BACKENDS,
                        n::LB4_REVERSE_NAT,
                        n::CT4,
                        n::NAT4
                    ]
                    .join(", ")
                ),
            })
        }
    }
    Ok(table(&["Key", "Value", "State", "Error"], &rows))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status() -> StatusResponse {
        StatusResponse {
            node: "k8s-ctr".into(),
            ipam: "IPv4: 2/254 allocated from 10.244.0.0/24".into(),
            allocations: vec![
                "10.244.0.1 (router)".into(),
                "10.244.0.2 (health)".into(),
                "10.244.0.5 (default/curl-pod [restored])".into(),
            ],
            routing: "Network: Native   Host: BPF".into(),
            masquerading: "BPF   [eth1]   10.244.0.0/16 [IPv4: Enabled, IPv6: Disabled]".into(),
            kube_proxy_replacement: "True   [eth1   192.168.10.100 (Direct Routing)]".into(),
            ..Default::default()
        }
    }

    #[test]
    fn status_lines_as_the_seeds() {
        let t = format_status(&status(), false, false);
        assert!(
            t.contains("KubeProxyReplacement:   True   [eth1   192.168.10.100 (Direct Routing)]\n"),
            "{t}"
        );
        assert!(
            t.contains("Routing:                Network: Native   Host: BPF\n"),
            "{t}"
        );
        assert!(t.contains("Masquerading:           BPF   [eth1]   10.244.0.0/16 [IPv4: Enabled, IPv6: Disabled]\n"), "{t}");
        assert!(
            t.contains("IPAM:                   IPv4: 2/254 allocated from 10.244.0.0/24,\n"),
            "{t}"
        );
        assert!(!t.contains("Allocated addresses"));
        let v = format_status(&status(), true, false);
        assert!(v.contains("Allocated addresses:\n  10.244.0.1 (router)\n  10.244.0.2 (health)\n  10.244.0.5 (default/curl-pod [restored])\n"), "{v}");
        assert!(format_status(&status(), false, true).contains("Allocated addresses:"));
    }

    #[test]
    fn endpoint_list_columns() {
        let t = format_endpoint_list(&[EndpointListEntry {
            id: 147,
            identity: 28565,
            labels: vec![
                "k8s:app=curl".into(),
                "k8s:io.kubernetes.pod.namespace=default".into(),
            ],
            ipv4: Some(Ipv4Addr::new(10, 244, 0, 199)),
            status: "ready".into(),
            pod: "default/curl".into(),
            policy: ("Disabled".into(), "Disabled".into()),
        }]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ENDPOINT   POLICY (ingress)   POLICY (egress)   IDENTITY   LABELS (source:key[=value])"), "{t}");
        assert!(lines[0].ends_with("IPv6   IPv4           STATUS"), "{t}");
        assert_eq!(
            lines[1].trim_end(),
            "           ENFORCEMENT        ENFORCEMENT"
        );
        assert!(
            lines[2].starts_with(
                "147        Disabled           Disabled          28565      k8s:app=curl"
            ),
            "{t}"
        );
        assert!(lines[2].ends_with("10.244.0.199   ready"), "{t}");
        assert!(lines[3]
            .trim_start()
            .starts_with("k8s:io.kubernetes.pod.namespace=default"));
    }

    #[test]
    fn ipcache_and_nodes() {
        let t = format_ipcache_list(&[(
            "10.244.1.0/24".parse().unwrap(),
            IpcacheValue {
                sec_identity: 2,
                tunnel_endpoint: fibril_abi::ip_be(Ipv4Addr::new(192, 168, 10, 101)),
                flags: ipcache_flags::POD_CIDR,
                pad: 0,
            },
        )]);
        assert_eq!(
            t,
            "IP PREFIX/ADDRESS   IDENTITY\n10.244.1.0/24       identity=2 encryptkey=0 tunnelendpoint=192.168.10.101 flags=pod-cidr\n"
        );
        let t = format_node_list(&[NodeEntry {
            name: "k8s-ctr".into(),
            ipv4: Some(Ipv4Addr::new(192, 168, 10, 100)),
            cidrs: vec!["10.244.0.0/24".into()],
            source: "local".into(),
        }]);
        assert!(t.starts_with("Name      IPv4 Address     Endpoint CIDR   IPv6 Address   Endpoint CIDR   Source\n"), "{t}");
        assert!(
            t.contains(
                "k8s-ctr   192.168.10.100   10.244.0.0/24                                  local\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn ip_and_identity_lists() {
        let t = format_ip_list(&[
            IpEntry {
                prefix: "0.0.0.0/0".into(),
                identity: 2,
                labels: vec!["reserved:world".into()],
                source: "reserved".into(),
            },
            IpEntry {
                prefix: "10.244.0.5/32".into(),
                identity: 5000,
                labels: vec![],
                source: "local".into(),
            },
        ]);
        assert_eq!(
            t,
            "IP              IDENTITY         SOURCE\n0.0.0.0/0       reserved:world   reserved\n10.244.0.5/32   5000             local\n"
        );
        let t = format_identity_list(&[IdentityEntry {
            id: 1,
            labels: vec!["reserved:host".into()],
        }]);
        assert_eq!(t, "ID   LABELS\n1    reserved:host\n");
    }

    #[test]
    fn ct_and_endpoint_lines() {
        let k = Ct4Key {
            saddr: fibril_abi::ip_be(Ipv4Addr::new(10, 244, 0, 5)),
            daddr: fibril_abi::ip_be(Ipv4Addr::new(10, 96, 0, 10)),
            sport: 40000u16.to_be(),
            dport: 53u16.to_be(),
            proto: 17,
            flags: ct_key_flags::SERVICE,
            pad: 0,
        };
        let v = Ct4Value {
            lifetime: 5_000_000_000,
            rev_nat_index: 3,
            backend_id: 7,
            flags: ct_flags::ESTABLISHED,
            ..Default::default()
        };
        let t = format_ct_list(&[(k, v)]);
        assert!(
            t.starts_with("UDP SVC 10.244.0.5:40000 -> 10.96.0.10:53 expires=5 "),
            "{t}"
        );
        assert!(
            t.contains("[ Established ] RevNAT=3 SourceSecurityID=0 IfIndex=0 BackendID=7\n"),
            "{t}"
        );
        let t = format_bpf_endpoint_list(
            &[(
                Ipv4Addr::new(10, 244, 0, 9),
                EndpointInfo {
                    ifindex: 6,
                    sec_identity: 4,
                    ep_id: 331,
                    flags: 0,
                    mac: [0xbe, 0xee, 0xb4, 0xf3, 0x41, 0x63],
                    node_mac: [0x3a, 0xd8, 0xe1, 0x8e, 0x59, 0xeb],
                },
            )],
            &[Ipv4Addr::new(192, 168, 10, 100)],
        );
        assert!(t.contains("192.168.10.100:0   (localhost)\n"), "{t}");
        assert!(t.contains("10.244.0.9:0       id=331   sec_id=4     flags=0x0000 ifindex=6   mac=BE:EE:B4:F3:41:63 nodemac=3A:D8:E1:8E:59:EB parent_ifindex=0\n"), "{t}");
    }
}
