//! BPF_PROG_TEST_RUN tests of conntrack (TCP state, timeouts, GC, counts),
//! native-routing FIB decisions, and flow events (sampling, rate limit,
//! lost-event accounting, async reader).

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use fibril_abi::{ct_flags, Ct4Key, Ct4Value, DropReason, ObsPoint, Verdict};
use fibril_datapath::testing::bed::{TestBed, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use fibril_datapath::testing::packet::{MacAddr, Packet};
use fibril_datapath::{monotonic_ns, DatapathConfig, Prog};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const SEC: u64 = 1_000_000_000;

fn config() -> DatapathConfig {
    DatapathConfig {
        node_ip: Ipv4Addr::new(192, 168, 10, 100),
        router_ip: ROUTER,
        native_routing_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
        ..Default::default()
    }
}

/// Bed with endpoints A (lxca) and B (lxcb) and an underlay eth1 with a
/// route to 10.244.1.0/24 via a permanent neighbour and one to
/// 10.244.2.0/24 via a gateway without neighbour entry.
fn new_bed(config: DatapathConfig) -> (TestBed, u32, u32) {
    let bed = TestBed::new(
        config,
        "sysctl -qw net.ipv4.ip_forward=1 && \
         ip link add lxca type veth peer name lxca-p && ip link add lxcb type veth peer name lxcb-p && \
         ip link add eth1 address 02:00:00:00:10:64 type veth peer name eth1-p && \
         for d in lxca lxca-p lxcb lxcb-p eth1 eth1-p; do ip link set $d up; done && \
         ip addr add 192.168.10.100/24 dev eth1 && \
         ip neigh add 192.168.10.101 lladdr 02:00:00:00:10:65 dev eth1 nud permanent && \
         ip route add 10.244.1.0/24 via 192.168.10.101 && \
         ip route add 10.244.2.0/24 via 192.168.10.102",
    );
    let ia = bed.ns.ifindex("lxca");
    let ib = bed.ns.ifindex("lxcb");
    let mut eps = bed.maps().endpoints().unwrap();
    for (ip, ifindex, id) in [(POD_A, ia, 1000), (POD_B, ib, 2000)] {
        eps.upsert(
            ip,
            &fibril_abi::EndpointInfo {
                ifindex,
                sec_identity: id,
                ep_id: id as u16,
                flags: 0,
                mac: [2, 0, 0, 0, 0, id as u8],
                node_mac: [2, 0, 0, 0, 1, id as u8],
            },
        )
        .unwrap();
    }
    (bed, ia, ib)
}

fn ct_entry(bed: &TestBed, key: &Ct4Key) -> Ct4Value {
    bed.maps()
        .conntrack()
        .unwrap()
        .table()
        .get(key)
        .unwrap()
        .expect("conntrack entry")
}

fn remaining_secs(v: &Ct4Value) -> u64 {
    v.lifetime.saturating_sub(monotonic_ns()) / SEC
}

#[test]
fn tcp_conntrack_states_and_timeouts() {
    let (mut bed, ia, ib) = new_bed(config());
    let key = Ct4Key {
        saddr: fibril_abi::ip_be(POD_A),
        daddr: fibril_abi::ip_be(POD_B),
        sport: fibril_abi::port_be(40000),
        dport: fibril_abi::port_be(80),
        proto: 6,
        flags: 0,
        pad: 0,
    };
    let seg = |from_a: bool, flags: u8| {
        if from_a {
            Packet::tcp(POD_A.octets(), 40000, POD_B.octets(), 80, flags).build()
        } else {
            Packet::tcp(POD_B.octets(), 80, POD_A.octets(), 40000, flags).build()
        }
    };
    assert_eq!(
        bed.run(Prog::FromContainer, ia, &seg(true, 0x02)).ret,
        TC_ACT_REDIRECT
    );
    let v = ct_entry(&bed, &key);
    assert_eq!(v.flags, ct_flags::SYN_SEEN);
    assert!((55..=60).contains(&remaining_secs(&v)), "SYN timeout 60s");
    assert_eq!(v.src_sec_id, 1000);

    bed.run(Prog::FromContainer, ib, &seg(false, 0x12));
    let v = ct_entry(&bed, &key);
    assert_ne!(v.flags & ct_flags::SYNACK_SEEN, 0);
    assert_eq!(v.flags & ct_flags::ESTABLISHED, 0);

    bed.run(Prog::FromContainer, ia, &seg(true, 0x10));
    let v = ct_entry(&bed, &key);
    assert_ne!(v.flags & ct_flags::ESTABLISHED, 0);
    assert!(remaining_secs(&v) > 21000, "established timeout 6h");
    assert_eq!((v.packets_fwd, v.packets_rev), (2, 1));
    assert_eq!(v.tcp_flags_fwd, 0x12, "SYN|ACK seen forward");

    bed.run(Prog::FromContainer, ia, &seg(true, 0x11));
    let v = ct_entry(&bed, &key);
    assert_ne!(v.flags & ct_flags::TX_CLOSING, 0);
    assert!(remaining_secs(&v) <= 10, "closing timeout 10s");

    // A new SYN on the closing tuple (port reuse) starts over.
    bed.run(Prog::FromContainer, ia, &seg(true, 0x02));
    let v = ct_entry(&bed, &key);
    assert_eq!(v.flags, ct_flags::SYN_SEEN);

    // RST closes both directions.
    bed.run(Prog::FromContainer, ib, &seg(false, 0x04));
    let v = ct_entry(&bed, &key);
    assert_ne!(v.flags & ct_flags::TX_CLOSING, 0);
    assert_ne!(v.flags & ct_flags::RX_CLOSING, 0);

    // Mid-stream pickup (e.g. after the table was lost): established.
    let mid = Packet::tcp(POD_A.octets(), 40001, POD_B.octets(), 80, 0x10).build();
    bed.run(Prog::FromContainer, ia, &mid);
    let k2 = Ct4Key {
        sport: fibril_abi::port_be(40001),
        ..key
    };
    let v = ct_entry(&bed, &k2);
    assert_ne!(v.flags & ct_flags::SEEN_NON_SYN, 0);
    assert_ne!(v.flags & ct_flags::ESTABLISHED, 0);

    // UDP: 60s, established once a reply is seen.
    let udp = Packet::udp(POD_A.octets(), 5353, POD_B.octets(), 53).build();
    bed.run(Prog::FromContainer, ia, &udp);
    let ku = Ct4Key {
        sport: fibril_abi::port_be(5353),
        dport: fibril_abi::port_be(53),
        proto: 17,
        ..key
    };
    assert!((55..=60).contains(&remaining_secs(&ct_entry(&bed, &ku))));
    let reply = Packet::udp(POD_B.octets(), 53, POD_A.octets(), 5353).build();
    bed.run(Prog::FromContainer, ib, &reply);
    assert_ne!(ct_entry(&bed, &ku).flags & ct_flags::ESTABLISHED, 0);
}

#[test]
fn conntrack_gc_and_counts() {
    let (mut bed, ia, _) = new_bed(config());
    for port in 0..10u16 {
        let p = Packet::udp(POD_A.octets(), 1000 + port, POD_B.octets(), 53).build();
        bed.run(Prog::FromContainer, ia, &p);
    }
    let mut ct = bed.maps().conntrack().unwrap();
    // Three stale entries, as if their lifetime had passed.
    let now = monotonic_ns();
    for i in 0..3u32 {
        let k = Ct4Key {
            saddr: fibril_abi::ip_be(Ipv4Addr::new(10, 244, 0, 50)),
            daddr: fibril_abi::ip_be(POD_B),
            sport: i as u16,
            dport: 80,
            proto: 6,
            flags: 0,
            pad: 0,
        };
        let v = Ct4Value {
            lifetime: now - SEC,
            created: now - 100 * SEC,
            ..Default::default()
        };
        ct.table().insert(&k, &v).unwrap();
    }
    let c = ct.counts(monotonic_ns()).unwrap();
    assert_eq!((c.total, c.udp, c.tcp, c.expired), (13, 10, 3, 3), "{c:?}");
    let st = ct.gc(monotonic_ns()).unwrap();
    assert_eq!((st.scanned, st.removed, st.alive), (13, 3, 10));
    assert_eq!(ct.counts(monotonic_ns()).unwrap().total, 10);
}

#[test]
fn native_routing_fib_decisions() {
    let (mut bed, ia, _) = new_bed(config());
    let eth1 = bed.ns.ifindex("eth1");
    // Route + neighbour: redirect out of eth1 with the FIB's MACs, pod IPs
    // kept, TTL decremented.
    let p = Packet::tcp(POD_A.octets(), 1234, [10, 244, 1, 10], 80, 0x02)
        .macs(
            MacAddr([2, 0, 0, 0, 0, 0xe8]),
            MacAddr([2, 0, 0, 0, 1, 0xe8]),
        )
        .build();
    let r = bed.run(Prog::FromContainer, ia, &p);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let o = r.parsed();
    assert_eq!(o.dmac, MacAddr([2, 0, 0, 0, 0x10, 0x65]), "gateway MAC");
    assert_eq!(o.smac, MacAddr([2, 0, 0, 0, 0x10, 0x64]), "eth1 MAC");
    assert_eq!(
        (o.saddr, o.daddr),
        (Some(POD_A), Some(Ipv4Addr::new(10, 244, 1, 10)))
    );
    assert_eq!(o.ttl, 63);
    assert!(o.ip_csum_ok);
    let ev = bed.events();
    assert!(ev
        .iter()
        .any(|f| f.obs_point == ObsPoint::ToNetwork && f.dst_ifindex == eth1));

    // Route without neighbour: to the stack, which resolves it.
    let p = Packet::tcp(POD_A.octets(), 1234, [10, 244, 2, 10], 80, 0x02).build();
    let r = bed.run(Prog::FromContainer, ia, &p);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(r.data, p, "untouched for the stack");

    // No route: dropped, counted, reported.
    let p = Packet::tcp(POD_A.octets(), 1234, [10, 244, 9, 10], 80, 0x02).build();
    assert_eq!(bed.run(Prog::FromContainer, ia, &p).ret, TC_ACT_SHOT);
    let m = bed.maps().metrics().unwrap();
    assert_eq!(m.drops(DropReason::NoRoute).unwrap(), 1);
    let drop = bed
        .events()
        .into_iter()
        .find(|f| f.verdict == Verdict::Dropped)
        .expect("drop event");
    assert_eq!(drop.drop_reason, Some(DropReason::NoRoute));
    assert_eq!(drop.drop_reason_name(), Some("NO_ROUTE"));

    // Outside the native routing CIDR: to the stack (masquerading happens
    // on the underlay egress).
    let p = Packet::udp(POD_A.octets(), 1, [8, 8, 8, 8], 53).build();
    assert_eq!(bed.run(Prog::FromContainer, ia, &p).ret, TC_ACT_OK);

    // From the underlay to a local pod: peer redirect; others: stack.
    let p = Packet::tcp([10, 244, 1, 10], 80, POD_A.octets(), 1234, 0x12).build();
    let r = bed.run(Prog::FromNetdev, eth1, &p);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().dmac, MacAddr([2, 0, 0, 0, 0, 0xe8]));
    let p = Packet::tcp([10, 244, 1, 10], 80, [192, 168, 10, 100], 22, 0x02).build();
    assert_eq!(bed.run(Prog::FromNetdev, eth1, &p).ret, TC_ACT_OK);
}

/// 1000 packets to the router IP = 1000 to-stack trace events wanted.
fn flood(bed: &mut TestBed, ia: u32, n: u32) {
    let p = Packet::icmp_echo(POD_A.octets(), ROUTER.octets(), 1, 1).build();
    assert_eq!(
        bed.run_repeat(Prog::FromContainer, ia, &p, n).ret,
        TC_ACT_OK
    );
}

#[test]
fn events_rate_limit_is_counted() {
    let (mut bed, ia, _) = new_bed(DatapathConfig {
        events_rate_limit: 5,
        ..config()
    });
    flood(&mut bed, ia, 1000);
    let got = bed.events().len() as u64;
    let c = bed.maps().metrics().unwrap().event_counters().unwrap();
    eprintln!("rate limit 5/s: {got} events, {c:?}");
    assert_eq!(
        got + c.rate_limited,
        1000,
        "every event is delivered or counted"
    );
    assert!(got <= 50, "limited: {got}");
    assert_eq!(c.lost, 0);
    assert_eq!(
        bed.maps().events().unwrap().lost_events().unwrap(),
        c.rate_limited
    );
}

#[test]
fn events_sampling_and_drops_never_sampled() {
    let (mut bed, ia, _) = new_bed(DatapathConfig {
        trace_sample: 10,
        events_rate_limit: 0,
        ..config()
    });
    flood(&mut bed, ia, 1000);
    let got = bed.events().len() as u64;
    let c = bed.maps().metrics().unwrap().event_counters().unwrap();
    eprintln!("sample 1/10: {got} events, {c:?}");
    assert_eq!(got + c.sampled_out, 1000);
    assert!((20..=300).contains(&got), "about 1 in 10: {got}");

    let (mut bed, ia, _) = new_bed(DatapathConfig {
        trace_sample: 0,
        ..config()
    });
    flood(&mut bed, ia, 100);
    let spoof = Packet::udp([10, 244, 0, 99], 1, POD_B.octets(), 2).build();
    bed.run(Prog::FromContainer, ia, &spoof);
    let ev = bed.events();
    assert_eq!(ev.len(), 1, "no trace events, the drop still reported");
    assert_eq!(ev[0].drop_reason, Some(DropReason::InvalidSource));
}

#[test]
fn full_ring_buffer_counts_lost_events() {
    let (mut bed, ia, _) = new_bed(DatapathConfig {
        events_rate_limit: 0,
        ..config()
    });
    // 1 MiB ring, 64 bytes per record: about 16k fit.
    flood(&mut bed, ia, 20000);
    let got = bed.events().len() as u64;
    let c = bed.maps().metrics().unwrap().event_counters().unwrap();
    eprintln!("ring full: {got} delivered, {c:?}");
    assert!(c.lost > 0);
    assert_eq!(got + c.lost, 20000);
}

#[test]
fn async_reader_receives_flows() {
    let (mut bed, ia, _) = new_bed(config());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut reader = rt
        .block_on(async { bed.maps().events().unwrap().into_async() })
        .unwrap();
    let p = Packet::icmp_echo(POD_A.octets(), ROUTER.octets(), 9, 1).build();
    bed.run(Prog::FromContainer, ia, &p);
    let flows = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), reader.next_batch()).await })
        .expect("flows within 5s")
        .unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].obs_point, ObsPoint::ToStack);
    assert_eq!(flows[0].src_ip, POD_A);
    assert_eq!(flows[0].icmp_type, Some(8));
    assert_eq!(reader.lost_events().unwrap(), 0);
}

#[test]
fn trace_aggregation_reports_new_flows_and_new_tcp_flags_only() {
    let (mut bed, ia, ib) = new_bed(DatapathConfig {
        trace_aggregation: true,
        events_rate_limit: 0,
        ..config()
    });
    // One ICMP flow, 1000 packets: reported once (new), the rest aggregated.
    flood(&mut bed, ia, 1000);
    let got = bed.events().len() as u64;
    let c = bed.maps().metrics().unwrap().event_counters().unwrap();
    eprintln!("aggregation: {got} events, {c:?}");
    assert_eq!(got, 1);
    assert_eq!(c.aggregated, 999);

    // TCP: SYN (new), SYN-ACK (new flags, reply), ACK (new flag), PSH|ACK
    // (new flag) are reported; further ACKs are not. Drops always are.
    let a_to_b = |flags| Packet::tcp(POD_A.octets(), 40000, POD_B.octets(), 80, flags).build();
    let b_to_a = |flags| Packet::tcp(POD_B.octets(), 80, POD_A.octets(), 40000, flags).build();
    bed.run(Prog::FromContainer, ia, &a_to_b(0x02));
    bed.run(Prog::FromContainer, ib, &b_to_a(0x12));
    bed.run(Prog::FromContainer, ia, &a_to_b(0x10));
    bed.run(Prog::FromContainer, ia, &a_to_b(0x18));
    for _ in 0..10 {
        bed.run(Prog::FromContainer, ia, &a_to_b(0x10));
        bed.run(Prog::FromContainer, ib, &b_to_a(0x10));
    }
    let spoof = Packet::udp([10, 244, 0, 99], 1, POD_B.octets(), 2).build();
    bed.run(Prog::FromContainer, ia, &spoof);
    let ev = bed.events();
    let flags: Vec<String> = ev
        .iter()
        .filter(|f| f.proto == 6)
        .map(|f| f.tcp_flags.to_string())
        .collect();
    assert_eq!(flags, ["SYN", "SYN, ACK", "ACK", "ACK, PSH"], "{flags:?}");
    assert_eq!(
        ev.iter().filter(|f| f.verdict == Verdict::Dropped).count(),
        1
    );
}

#[test]
fn trace_from_adds_from_endpoint_and_from_network_points() {
    let (mut bed, ia, _) = new_bed(DatapathConfig {
        trace_from: true,
        ..config()
    });
    let eth1 = bed.ns.ifindex("eth1");
    let p = Packet::tcp(POD_A.octets(), 1, POD_B.octets(), 2, 0x02).build();
    bed.run(Prog::FromContainer, ia, &p);
    let p = Packet::tcp([10, 244, 1, 10], 80, POD_A.octets(), 1234, 0x02).build();
    bed.run(Prog::FromNetdev, eth1, &p);
    let points: Vec<(ObsPoint, Verdict)> = bed
        .events()
        .iter()
        .map(|f| (f.obs_point, f.verdict))
        .collect();
    assert_eq!(
        points,
        [
            (ObsPoint::FromEndpoint, Verdict::Traced),
            (ObsPoint::ToEndpoint, Verdict::Forwarded),
            (ObsPoint::FromNetwork, Verdict::Traced),
            (ObsPoint::ToEndpoint, Verdict::Forwarded),
        ]
    );
}
