//! Masquerading (bpf/lib/nat.h) with BPF_PROG_TEST_RUN (root): SNAT on the
//! underlay egress (`cil_to_netdev`), reverse SNAT on its ingress
//! (`cil_from_netdev`), exceptions, port allocation and collisions,
//! malformed input, and the Rust side (listing, GC).

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddrV4};

use fibril_abi::{ipcache_flags, DropReason, EndpointInfo, IpcacheValue};
use fibril_datapath::ipmasq::{self, IpMasqConfig};
use fibril_datapath::nat::{NatDir, NatTimeouts};
use fibril_datapath::testing::bed::{TestBed, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use fibril_datapath::testing::packet::{checksum, MacAddr, Packet, Parsed};
use fibril_datapath::{monotonic_ns, DatapathConfig, Nat, Prefix4, Prog};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 100);
const PEER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 101);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 200);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const LXC_A_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x0a];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const LXC_B_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x0b];

fn config() -> DatapathConfig {
    DatapathConfig {
        node_ip: NODE,
        router_ip: ROUTER,
        native_routing_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
        masquerade: true,
        ..Default::default()
    }
}

/// A bed with endpoints A (lxca), B (lxcb) and C (lxcb too; only A and B
/// receive replies in these tests).
fn bed(config: DatapathConfig) -> TestBed {
    let bed = TestBed::new(
        config,
        "ip link add lxca type veth peer name lxca-p && ip link add lxcb type veth peer name lxcb-p \
         && ip link set lxca up && ip link set lxcb up",
    );
    let ia = bed.ns.ifindex("lxca");
    let ib = bed.ns.ifindex("lxcb");
    let mut eps = bed.maps().endpoints().unwrap();
    for (ip, ifindex, mac, node_mac, id) in [
        (POD_A, ia, MAC_A, LXC_A_MAC, 1u16),
        (POD_B, ib, MAC_B, LXC_B_MAC, 2),
        (POD_C, ib, MAC_B, LXC_B_MAC, 3),
    ] {
        eps.upsert(
            ip,
            &EndpointInfo {
                ifindex,
                sec_identity: 1000 + u32::from(id),
                ep_id: id,
                flags: 0,
                mac,
                node_mac,
            },
        )
        .unwrap();
    }
    bed
}

fn nat(bed: &TestBed) -> Nat {
    Nat::open(bed.pin_dir()).unwrap()
}

/// ICMP echo id and whether the ICMP checksum verifies.
fn icmp_id_csum(frame: &[u8]) -> (u16, bool) {
    let icmp = &frame[34..];
    (
        u16::from_be_bytes([icmp[4], icmp[5]]),
        checksum(icmp, 0) == 0,
    )
}

fn assert_csums(p: &Parsed, what: &str) {
    assert!(p.ip_csum_ok, "{what}: IP checksum");
    if p.l4_csum_ok.is_some() {
        assert_eq!(p.l4_csum_ok, Some(true), "{what}: L4 checksum");
    }
}

#[test]
fn tcp_syn_is_masqueraded_and_reply_reverse_translated() {
    let mut bed = bed(config());
    let syn = Packet::tcp(POD_A.octets(), 45678, REMOTE.octets(), 80, 0x02)
        .payload(b"GET /")
        .build();
    let r = bed.run(Prog::ToNetdev, 1, &syn);
    assert_eq!(r.ret, TC_ACT_OK);
    let p = r.parsed();
    assert_eq!(p.saddr, Some(NODE), "source rewritten to the node IP");
    assert_eq!(p.daddr, Some(REMOTE));
    assert_eq!(
        p.sport,
        Some(45678),
        "original port kept when free and in range"
    );
    assert_eq!(p.dport, Some(80));
    assert_csums(&p, "SYN");

    let n = nat(&bed);
    let now = monotonic_ns();
    let listing = n.list(now).unwrap();
    eprintln!("{listing}");
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with(
        "TCP OUT 10.244.0.10:45678 -> 10.10.1.200:80 XLATE_SRC 192.168.10.100:45678 Created="
    ));
    assert!(lines[0].ends_with("sec ago NeedsCT=1"));
    assert!(lines[1].starts_with(
        "TCP IN 10.10.1.200:80 -> 192.168.10.100:45678 XLATE_DST 10.244.0.10:45678 Created="
    ));

    // Retransmission: same mapping, no new entries.
    let r2 = bed.run(Prog::ToNetdev, 1, &syn);
    assert_eq!(r2.data, r.data);
    assert_eq!(n.entries().unwrap().len(), 2);

    // SYN-ACK from the remote to node_ip:45678 -> back to pod A.
    let synack = Packet::tcp(REMOTE.octets(), 80, NODE.octets(), 45678, 0x12)
        .payload(b"HTTP/1.1")
        .build();
    let r = bed.run(Prog::FromNetdev, 1, &synack);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "delivered to the pod");
    let p = r.parsed();
    assert_eq!(p.daddr, Some(POD_A));
    assert_eq!(p.dport, Some(45678));
    assert_eq!(p.saddr, Some(REMOTE));
    assert_eq!(p.dmac, MacAddr(MAC_A));
    assert_csums(&p, "SYN-ACK");

    // last_seen moves forward; GC keeps live pairs, removes idle ones.
    let mut n = nat(&bed);
    let st = n.gc(monotonic_ns(), &NatTimeouts::default(), None).unwrap();
    assert_eq!((st.removed, st.alive), (0, 2));
    let st = n
        .gc(
            monotonic_ns() + 7 * 3600 * 1_000_000_000,
            &NatTimeouts::default(),
            None,
        )
        .unwrap();
    assert_eq!(st.removed, 2, "idle pair removed as a whole");
    assert!(n.entries().unwrap().is_empty());
    // Without the mapping the reply is the stack's business.
    let r = bed.run(Prog::FromNetdev, 1, &synack);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(r.data, synack);
}

#[test]
fn udp_port_outside_range_is_reallocated_and_reversed() {
    let mut bed = bed(config());
    let q = Packet::udp(POD_B.octets(), 5353, REMOTE.octets(), 53)
        .payload(b"query")
        .build();
    let r = bed.run(Prog::ToNetdev, 1, &q);
    assert_eq!(r.ret, TC_ACT_OK);
    let p = r.parsed();
    assert_eq!(p.saddr, Some(NODE));
    let nport = p.sport.unwrap();
    assert!((32768..=60999).contains(&nport), "port {nport} in range");
    assert_csums(&p, "UDP query");

    // UDP without checksum stays without.
    let mut raw = Packet::udp(POD_B.octets(), 5354, REMOTE.octets(), 53).build();
    raw[40..42].copy_from_slice(&[0, 0]);
    let r = bed.run(Prog::ToNetdev, 1, &raw);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(&r.data[40..42], &[0, 0], "zero UDP checksum kept");

    let reply = Packet::udp(REMOTE.octets(), 53, NODE.octets(), nport)
        .payload(b"answer")
        .build();
    let r = bed.run(Prog::FromNetdev, 1, &reply);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!((p.daddr, p.dport), (Some(POD_B), Some(5353)));
    assert_eq!(p.dmac, MacAddr(MAC_B));
    assert_csums(&p, "UDP answer");
}

#[test]
fn icmp_echo_id_translation_and_collision() {
    let mut bed = bed(config());
    let ping_a = Packet::icmp_echo(POD_A.octets(), REMOTE.octets(), 0x1234, 1).build();
    let r = bed.run(Prog::ToNetdev, 1, &ping_a);
    assert_eq!(r.ret, TC_ACT_OK);
    let p = r.parsed();
    assert_eq!(p.saddr, Some(NODE));
    assert!(p.ip_csum_ok);
    let (id_a, ok) = icmp_id_csum(&r.data);
    assert_eq!(id_a, 0x1234, "first user keeps its id");
    assert!(ok);

    // Pod B pings the same host with the same id: needs another id.
    let ping_b = Packet::icmp_echo(POD_B.octets(), REMOTE.octets(), 0x1234, 1).build();
    let r = bed.run(Prog::ToNetdev, 1, &ping_b);
    assert_eq!(r.ret, TC_ACT_OK);
    let (id_b, ok) = icmp_id_csum(&r.data);
    assert!(ok, "ICMP checksum after id rewrite");
    assert_ne!(id_b, id_a);
    assert!((32768..=60999).contains(&id_b));

    for (id, pod, mac) in [(id_a, POD_A, MAC_A), (id_b, POD_B, MAC_B)] {
        let mut reply = Packet::icmp_echo(REMOTE.octets(), NODE.octets(), id, 1);
        reply.l4 = fibril_datapath::testing::packet::L4::IcmpEcho {
            id,
            seq: 1,
            reply: true,
        };
        let r = bed.run(Prog::FromNetdev, 1, &reply.build());
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        let p = r.parsed();
        assert_eq!(p.daddr, Some(pod));
        assert_eq!(p.dmac, MacAddr(mac));
        assert!(p.ip_csum_ok);
        let (back, ok) = icmp_id_csum(&r.data);
        assert_eq!(back, 0x1234, "original id restored for {pod}");
        assert!(ok);
    }
    let listing = nat(&bed).list(monotonic_ns()).unwrap();
    eprintln!("{listing}");
    assert!(listing
        .contains("ICMP OUT 10.244.0.10:4660 -> 10.10.1.200:4660 XLATE_SRC 192.168.10.100:4660"));
    // Other ICMP from a pod (e.g. an error it sends) is not translated.
    let mut other = Packet::icmp_echo(POD_A.octets(), REMOTE.octets(), 1, 1).build();
    other[34] = 3; // destination unreachable
    let r = bed.run(Prog::ToNetdev, 1, &other);
    assert_eq!((r.ret, r.data == other), (TC_ACT_OK, true));
}

#[test]
fn two_pods_same_port_same_destination_get_distinct_node_ports() {
    let mut bed = bed(config());
    let mut got = Vec::new();
    for pod in [POD_A, POD_B] {
        let syn = Packet::tcp(pod.octets(), 40000, REMOTE.octets(), 80, 0x02).build();
        let r = bed.run(Prog::ToNetdev, 1, &syn);
        assert_eq!(r.ret, TC_ACT_OK);
        let p = r.parsed();
        assert_eq!(p.saddr, Some(NODE));
        assert_csums(&p, "SYN");
        got.push(p.sport.unwrap());
    }
    assert_eq!(got[0], 40000);
    assert_ne!(got[0], got[1], "distinct node ports: {got:?}");
    // The same pod port to another destination may reuse 40000.
    let syn = Packet::tcp(POD_B.octets(), 40000, [10, 10, 2, 200], 80, 0x02).build();
    assert_eq!(bed.run(Prog::ToNetdev, 1, &syn).parsed().sport, Some(40000));

    for (nport, pod) in [(got[0], POD_A), (got[1], POD_B)] {
        let synack = Packet::tcp(REMOTE.octets(), 80, NODE.octets(), nport, 0x12).build();
        let r = bed.run(Prog::FromNetdev, 1, &synack);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        let p = r.parsed();
        assert_eq!((p.daddr, p.dport), (Some(pod), Some(40000)));
        assert_csums(&p, "SYN-ACK");
    }
    let entries = nat(&bed).entries().unwrap();
    assert_eq!(entries.len(), 6);
    assert_eq!(entries.iter().filter(|e| e.dir == NatDir::Out).count(), 3);
}

#[test]
fn port_exhaustion_drops_with_reason_and_leaves_no_half_entry() {
    let mut bed = bed(DatapathConfig {
        snat_port_range: (40000, 40001),
        ..config()
    });
    let mut rets = Vec::new();
    for pod in [POD_A, POD_B, POD_C] {
        let syn = Packet::tcp(pod.octets(), 40000, REMOTE.octets(), 80, 0x02).build();
        let r = bed.run(Prog::ToNetdev, 1, &syn);
        rets.push((r.ret, r.parsed().sport));
    }
    assert_eq!(rets[0], (TC_ACT_OK, Some(40000)));
    assert_eq!(rets[1], (TC_ACT_OK, Some(40001)));
    assert_eq!(rets[2].0, TC_ACT_SHOT, "range of 2 exhausted");
    let m = bed.maps().metrics().unwrap();
    assert_eq!(m.drops(DropReason::NatNoPort).unwrap(), 1);
    let entries = nat(&bed).entries().unwrap();
    assert_eq!(entries.len(), 4, "two complete pairs, nothing for C");
    assert!(entries
        .iter()
        .all(|e| *e.src.ip() != POD_C && *e.xlate.ip() != POD_C));
    // A bad range is refused when the config is turned into fibril_config.
    let e = DatapathConfig {
        snat_port_range: (50000, 40000),
        ..config()
    }
    .to_abi(&fibril_datapath::Netns::Current)
    .unwrap_err();
    assert!(e.to_string().contains("50000-40000"), "{e}");
}

#[test]
fn exceptions_keep_the_pod_ip() {
    let mut bed = bed(config());
    // ip-masq-agent: the seeds' nonMasqueradeCIDRs.
    let cfg =
        IpMasqConfig::parse(r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"]}"#).unwrap();
    let mut map = bed.maps().ipmasq().unwrap();
    let st = ipmasq::sync(&mut map, &ipmasq::desired_prefixes(true, &cfg)).unwrap();
    assert_eq!(st.added.len(), 3);
    let listing = ipmasq::format_list(&ipmasq::PrefixStore::prefixes(&map).unwrap());
    assert_eq!(
        listing,
        "IP PREFIX/ADDRESS\n10.10.1.0/24\n10.10.2.0/24\n169.254.0.0/16\n"
    );
    // Registered peer node (ipcache remote-node entry).
    bed.maps()
        .ipcache()
        .unwrap()
        .insert(
            Prefix4::host(PEER_NODE),
            &IpcacheValue {
                sec_identity: 6,
                tunnel_endpoint: 0,
                flags: ipcache_flags::REMOTE_NODE,
                pad: 0,
            },
        )
        .unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ipmasq prefix",
            Packet::tcp(POD_A.octets(), 40000, REMOTE.octets(), 80, 0x02).build(),
        ),
        (
            "link-local",
            Packet::udp(POD_A.octets(), 40000, [169, 254, 1, 1], 53).build(),
        ),
        (
            "native routing CIDR",
            Packet::tcp(POD_A.octets(), 40000, [10, 244, 5, 5], 80, 0x02).build(),
        ),
        (
            "another node",
            Packet::icmp_echo(POD_A.octets(), PEER_NODE.octets(), 9, 1).build(),
        ),
        (
            "source not a local pod",
            Packet::tcp([10, 244, 7, 7], 40000, [8, 8, 8, 8], 80, 0x02).build(),
        ),
        ("not TCP/UDP/ICMP", {
            let mut p = Packet::tcp(POD_A.octets(), 1, [8, 8, 8, 8], 2, 0x02);
            p.l4 = fibril_datapath::testing::packet::L4::Raw(47);
            p.payload = vec![0; 8];
            p.build()
        }),
    ];
    for (what, pkt) in &cases {
        let r = bed.run(Prog::ToNetdev, 1, pkt);
        assert_eq!(r.ret, TC_ACT_OK, "{what}");
        assert_eq!(&r.data, pkt, "{what}: untouched");
    }
    assert!(nat(&bed).entries().unwrap().is_empty());
    // Outside every exception: masqueraded.
    let pkt = Packet::tcp(POD_A.octets(), 40000, [10, 10, 3, 200], 80, 0x02).build();
    assert_eq!(bed.run(Prog::ToNetdev, 1, &pkt).parsed().saddr, Some(NODE));
    // Syncing back to "disabled" empties the map; then 10.10.1.200 is NATed.
    ipmasq::sync(&mut map, &ipmasq::desired_prefixes(false, &cfg)).unwrap();
    assert!(ipmasq::PrefixStore::prefixes(&map).unwrap().is_empty());
    let r = bed.run(Prog::ToNetdev, 1, &cases[0].1);
    assert_eq!(r.parsed().saddr, Some(NODE));
}

#[test]
fn node_connections_reserve_their_ports() {
    let mut bed = bed(config());
    // The node's own connection from 50000 (e.g. curl on the node).
    let host = Packet::tcp(NODE.octets(), 50000, REMOTE.octets(), 80, 0x02).build();
    let r = bed.run(Prog::ToNetdev, 1, &host);
    assert_eq!(
        (r.ret, &r.data),
        (TC_ACT_OK, &host),
        "host packet untouched"
    );
    // A pod using the same port to the same destination gets another one.
    let pod = Packet::tcp(POD_A.octets(), 50000, REMOTE.octets(), 80, 0x02).build();
    let nport = bed.run(Prog::ToNetdev, 1, &pod).parsed().sport.unwrap();
    assert_ne!(nport, 50000);
    // Replies to the node's connection stay with the stack.
    let reply = Packet::tcp(REMOTE.octets(), 80, NODE.octets(), 50000, 0x12).build();
    let r = bed.run(Prog::FromNetdev, 1, &reply);
    assert_eq!((r.ret, &r.data), (TC_ACT_OK, &reply));
    let n = nat(&bed);
    let c = n.counts().unwrap();
    assert_eq!((c.host, c.tcp, c.total), (1, 1, 4), "{c:?}");
    eprintln!("{}", n.list(monotonic_ns()).unwrap());
}

#[test]
fn malformed_and_fragments() {
    let mut bed = bed(config());
    let good = Packet::tcp(POD_A.octets(), 40000, REMOTE.octets(), 80, 0x02).build();
    for n in 15..good.len() {
        let pkt = &good[..n];
        for prog in [Prog::ToNetdev, Prog::FromNetdev] {
            if let Ok(r) = bed.try_run(prog, 1, pkt) {
                assert_eq!(r.ret, TC_ACT_OK, "truncated {n} bytes left to the stack");
            }
        }
    }
    let reply = Packet::tcp(REMOTE.octets(), 80, NODE.octets(), 40000, 0x12).build();
    for n in 15..reply.len() {
        if let Ok(r) = bed.try_run(Prog::FromNetdev, 1, &reply[..n]) {
            assert_eq!(r.ret, TC_ACT_OK);
        }
    }
    assert!(nat(&bed).entries().unwrap().is_empty(), "nothing allocated");
    // A non-first fragment of a masqueraded flow cannot be translated.
    let mut frag = Packet::udp(POD_A.octets(), 1, REMOTE.octets(), 2);
    frag.frag_off = 100;
    let r = bed.run(Prog::ToNetdev, 1, &frag.build());
    assert_eq!(r.ret, TC_ACT_SHOT);
    let m = bed.maps().metrics().unwrap();
    assert_eq!(m.drops(DropReason::FragNotSupported).unwrap(), 1);
    // Unknown reply tuples to the node are left alone.
    let r = bed.run(Prog::FromNetdev, 1, &reply);
    assert_eq!((r.ret, &r.data), (TC_ACT_OK, &reply));
}

#[test]
fn gc_removes_orphans_and_respects_conntrack_closing() {
    let mut bed = bed(config());
    let syn = Packet::tcp(POD_A.octets(), 45000, REMOTE.octets(), 80, 0x02).build();
    bed.run(Prog::ToNetdev, 1, &syn);
    let udp = Packet::udp(POD_B.octets(), 45001, REMOTE.octets(), 53).build();
    bed.run(Prog::ToNetdev, 1, &udp);
    let mut n = nat(&bed);
    assert_eq!(n.entries().unwrap().len(), 4);
    let now = monotonic_ns();
    // 2 minutes later: UDP idle past 60 s, TCP not.
    let st = n
        .gc(now + 120 * 1_000_000_000, &NatTimeouts::default(), None)
        .unwrap();
    assert_eq!(st.removed, 2);
    let left = n.entries().unwrap();
    assert!(left.iter().all(|e| e.proto == 6));
    // A closing conntrack entry shortens the TCP pair's life.
    let ct_key = fibril_abi::Ct4Key {
        flags: 0,
        ..left[0].key()
    };
    let ct_val = fibril_abi::Ct4Value {
        lifetime: now + 3600 * 1_000_000_000,
        flags: fibril_abi::ct_flags::TX_CLOSING | fibril_abi::ct_flags::RX_CLOSING,
        ..Default::default()
    };
    let st = n
        .gc(
            now + 20 * 1_000_000_000,
            &NatTimeouts::default(),
            Some(&[(ct_key, ct_val)]),
        )
        .unwrap();
    assert_eq!(st.removed, 2);
    // Orphan half: removed on the next pass.
    bed.run(Prog::ToNetdev, 1, &syn);
    let out = n.entries().unwrap()[0];
    n.table().remove(&out.partner_key()).unwrap();
    let st = n.gc(monotonic_ns(), &NatTimeouts::default(), None).unwrap();
    assert_eq!(st.removed, 1);
    assert!(n.entries().unwrap().is_empty());
    assert_eq!(
        n.lookup_out(
            6,
            SocketAddrV4::new(POD_A, 45000),
            SocketAddrV4::new(REMOTE, 80)
        )
        .unwrap(),
        None
    );
}

/// An ICMP error (type/code) from `from` to the node quoting `quoted` (an
/// IP packet as it left the node, from its IP header on).
fn icmp_error(from: Ipv4Addr, typ: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![typ, code, 0, 0, 0, 0, 0x05, 0x78]; // MTU 1400
    icmp.extend_from_slice(&quoted[..28]);
    let c = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = Packet::tcp(from.octets(), 0, NODE.octets(), 0, 0);
    p.l4 = fibril_datapath::testing::packet::L4::Raw(1);
    p.payload = icmp;
    p.build()
}

#[test]
fn icmp_errors_about_masqueraded_flows_go_back_to_the_pod() {
    let mut bed = bed(config());
    let hop = Ipv4Addr::new(192, 168, 10, 200);
    for (what, pkt, pod, pod_port) in [
        (
            "TCP, port kept",
            Packet::tcp(POD_A.octets(), 45678, REMOTE.octets(), 80, 0x02).build(),
            POD_A,
            45678u16,
        ),
        (
            "UDP, port remapped",
            Packet::udp(POD_B.octets(), 5353, REMOTE.octets(), 53)
                .payload(&[7; 1400])
                .build(),
            POD_B,
            5353,
        ),
    ] {
        let out = bed.run(Prog::ToNetdev, 1, &pkt);
        assert_eq!(out.parsed().saddr, Some(NODE), "{what}");
        for (typ, code) in [(3u8, 4u8), (3, 1), (11, 0)] {
            let err = icmp_error(hop, typ, code, &out.data[14..]);
            let r = bed.run(Prog::FromNetdev, 1, &err);
            assert_eq!(r.ret, TC_ACT_REDIRECT, "{what} {typ}/{code}: delivered");
            let p = r.parsed();
            assert_eq!((p.saddr, p.daddr), (Some(hop), Some(pod)), "{what}");
            assert!(p.ip_csum_ok, "{what}: outer IP checksum");
            let icmp = &r.data[34..];
            assert_eq!((icmp[0], icmp[1]), (typ, code));
            assert_eq!(checksum(icmp, 0), 0, "{what}: ICMP checksum");
            let quoted = &icmp[8..];
            assert_eq!(&quoted[12..16], &pod.octets(), "{what}: quoted source");
            assert_eq!(
                &quoted[16..20],
                &REMOTE.octets(),
                "{what}: quoted destination"
            );
            assert_eq!(checksum(&quoted[..20], 0), 0, "{what}: quoted IP checksum");
            assert_eq!(
                u16::from_be_bytes([quoted[20], quoted[21]]),
                pod_port,
                "{what}: quoted source port"
            );
        }
    }
    // An error quoting an unknown flow, or the node's own, is the stack's.
    let own = Packet::tcp(NODE.octets(), 1234, REMOTE.octets(), 80, 0x02).build();
    let err = icmp_error(hop, 3, 4, &own[14..]);
    let r = bed.run(Prog::FromNetdev, 1, &err);
    assert_eq!((r.ret, &r.data), (TC_ACT_OK, &err));
    // Truncated quote: left alone, never read past the end.
    let out = bed.run(
        Prog::ToNetdev,
        1,
        &Packet::tcp(POD_A.octets(), 45678, REMOTE.octets(), 80, 0x02).build(),
    );
    let err = icmp_error(hop, 3, 4, &out.data[14..]);
    for n in 34..err.len() {
        let mut t = err[..n].to_vec();
        t[16..18].copy_from_slice(&((n - 14) as u16).to_be_bytes());
        if let Ok(r) = bed.try_run(Prog::FromNetdev, 1, &t) {
            assert!(
                r.ret == TC_ACT_OK || r.ret == TC_ACT_REDIRECT,
                "{n}: {}",
                r.ret
            );
        }
    }
}

#[test]
fn loads_and_translates_with_every_feature_on() {
    // The verifier sees nat.h next to lb.h, encap.h and policy in one
    // program: it must still load, and SNAT must still apply.
    let mut bed = bed(DatapathConfig {
        load_balancing: true,
        policy: true,
        trace_from: true,
        tunnel: fibril_datapath::Tunnel::Vxlan { port: 8472 },
        ..config()
    });
    let syn = Packet::tcp(POD_A.octets(), 45678, REMOTE.octets(), 80, 0x02).build();
    let r = bed.run(Prog::ToNetdev, 1, &syn);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(r.parsed().saddr, Some(NODE));
    let synack = Packet::tcp(REMOTE.octets(), 80, NODE.octets(), 45678, 0x12).build();
    let r = bed.run(Prog::FromNetdev, 1, &synack);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().daddr, Some(POD_A));
    // The SNAT is reported as to-network with the translated source.
    let ev = bed.events();
    assert!(
        ev.iter()
            .any(|f| f.obs_point == fibril_abi::ObsPoint::ToNetwork
                && f.src_ip == NODE
                && f.dst_ip == REMOTE
                && f.src_identity == 1001),
        "{ev:?}"
    );
}

#[test]
fn replies_of_inbound_connections_keep_the_pod_ip() {
    let mut bed = bed(config());
    // The remote connects to pod A directly (its CIDR is routed to the node).
    let syn = Packet::tcp(REMOTE.octets(), 50123, POD_A.octets(), 8080, 0x02).build();
    let r = bed.run(Prog::FromNetdev, 1, &syn);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "delivered to the pod");
    let synack = Packet::tcp(POD_A.octets(), 8080, REMOTE.octets(), 50123, 0x12).build();
    let r = bed.run(Prog::ToNetdev, 1, &synack);
    assert_eq!(
        (r.ret, &r.data),
        (TC_ACT_OK, &synack),
        "reply keeps the pod IP"
    );
    assert!(nat(&bed).entries().unwrap().is_empty());
    // The pod's own connections to the same remote are still masqueraded.
    let out = Packet::tcp(POD_A.octets(), 40000, REMOTE.octets(), 80, 0x02).build();
    assert_eq!(bed.run(Prog::ToNetdev, 1, &out).parsed().saddr, Some(NODE));
}

#[test]
fn many_flows_to_one_destination_get_distinct_ports() {
    // 800 flows from three pods to one remote ip:port in a range of 1000
    // ports (80% full at the end): every flow gets its own node port and a
    // consistent pair.
    let mut bed = bed(DatapathConfig {
        snat_port_range: (40000, 40999),
        ..config()
    });
    let mut seen = std::collections::HashSet::new();
    let mut shot = 0;
    for i in 0..800u16 {
        let pod = [POD_A, POD_B, POD_C][usize::from(i % 3)];
        let sport = 20000 + i; // outside the range: always reallocated
        let udp = Packet::udp(pod.octets(), sport, REMOTE.octets(), 53).build();
        let r = bed.run(Prog::ToNetdev, 1, &udp);
        if r.ret == TC_ACT_SHOT {
            shot += 1;
            continue;
        }
        let p = r.parsed();
        assert_eq!(p.saddr, Some(NODE));
        let nport = p.sport.unwrap();
        assert!((40000..=40999).contains(&nport));
        assert!(seen.insert(nport), "node port {nport} handed out twice");
    }
    eprintln!("{} flows translated, {shot} without a port", seen.len());
    assert_eq!(shot, 0);
    let entries = nat(&bed).entries().unwrap();
    assert_eq!(entries.len(), 1600);
    let keys: std::collections::HashSet<_> = entries.iter().map(|e| e.key()).collect();
    assert!(entries.iter().all(|e| keys.contains(&e.partner_key())));
}
