//! Packet-level tests of the programs with BPF_PROG_TEST_RUN (root).
//! Pattern: SETUP (maps through the typed API) -> run crafted packet ->
//! CHECK verdict, output packet, events, counters.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::Ipv4Addr;

use fibril_abi::{identity, DropReason, EndpointInfo, ObsPoint, Verdict};
use fibril_datapath::testing::bed::{TestBed, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use fibril_datapath::testing::packet::{arp_request, MacAddr, Packet, Parsed};
use fibril_datapath::{DatapathConfig, Prog};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 100);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const LXC_A_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x0a];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const LXC_B_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x0b];

fn config() -> DatapathConfig {
    DatapathConfig {
        node_ip: NODE,
        router_ip: ROUTER,
        native_routing_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
        ..Default::default()
    }
}

/// A bed with two veths standing in for lxc devices (only their ifindexes
/// matter: the source check compares the endpoint's ifindex with the
/// skb's), and endpoints A (on lxca) and B (on lxcb).
fn bed_with_endpoints() -> (TestBed, u32, u32) {
    let bed = TestBed::new(
        config(),
        "ip link add lxca type veth peer name lxca-p && ip link add lxcb type veth peer name lxcb-p \
         && ip link set lxca up && ip link set lxcb up",
    );
    let ia = bed.ns.ifindex("lxca");
    let ib = bed.ns.ifindex("lxcb");
    let mut eps = bed.maps().endpoints().unwrap();
    eps.upsert(
        POD_A,
        &EndpointInfo {
            ifindex: ia,
            sec_identity: 1000,
            ep_id: 1,
            flags: 0,
            mac: MAC_A,
            node_mac: LXC_A_MAC,
        },
    )
    .unwrap();
    eps.upsert(
        POD_B,
        &EndpointInfo {
            ifindex: ib,
            sec_identity: 2000,
            ep_id: 2,
            flags: 0,
            mac: MAC_B,
            node_mac: LXC_B_MAC,
        },
    )
    .unwrap();
    (bed, ia, ib)
}

#[test]
fn arp_from_pod_is_answered_with_host_veth_mac() {
    let (mut bed, ia, _) = bed_with_endpoints();
    let req = arp_request(MacAddr(MAC_A), POD_A, ROUTER);
    let r = bed.run(Prog::FromContainer, ia, &req);
    assert_eq!(
        r.ret, TC_ACT_REDIRECT,
        "ARP reply is sent back out the veth"
    );
    let p = r.parsed();
    assert_eq!(p.arp_op, Some(2));
    assert_eq!(p.arp_sha, Some(MacAddr(LXC_A_MAC)));
    assert_eq!(p.arp_spa, Some(ROUTER));
    assert_eq!(p.arp_tha, Some(MacAddr(MAC_A)));
    assert_eq!(p.arp_tpa, Some(POD_A));
    assert_eq!(p.dmac, MacAddr(MAC_A));
    assert_eq!(p.smac, MacAddr(LXC_A_MAC));

    // Any target is answered (the pod only talks to its gateway)...
    let r = bed.run(
        Prog::FromContainer,
        ia,
        &arp_request(MacAddr(MAC_A), POD_A, POD_B),
    );
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    // ...but not DAD probes (sender 0.0.0.0), nor unknown senders.
    let r = bed.run(
        Prog::FromContainer,
        ia,
        &arp_request(MacAddr(MAC_A), Ipv4Addr::UNSPECIFIED, POD_A),
    );
    assert_eq!(r.ret, TC_ACT_OK);
    let r = bed.run(
        Prog::FromContainer,
        ia,
        &arp_request(MacAddr(MAC_A), Ipv4Addr::new(10, 244, 0, 99), ROUTER),
    );
    assert_eq!(r.ret, TC_ACT_OK);
}

#[test]
fn local_pod_to_pod_is_peer_redirected_with_mac_rewrite_and_ttl() {
    let (mut bed, ia, ib) = bed_with_endpoints();
    let pkt = Packet::tcp(POD_A.octets(), 40000, POD_B.octets(), 80, 0x02)
        .macs(MacAddr(MAC_A), MacAddr(LXC_A_MAC))
        .payload(b"hello")
        .build();
    let r = bed.run(Prog::FromContainer, ia, &pkt);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(p.smac, MacAddr(LXC_B_MAC), "source MAC = B's gateway MAC");
    assert_eq!(p.dmac, MacAddr(MAC_B), "destination MAC = B's eth0");
    assert_eq!(p.ttl, 63);
    assert!(p.ip_csum_ok, "IP checksum updated with the TTL");
    assert_eq!(p.l4_csum_ok, Some(true));
    assert_eq!((p.saddr, p.daddr), (Some(POD_A), Some(POD_B)));

    let ev = bed.events();
    let to_ep = ev
        .iter()
        .find(|f| f.obs_point == ObsPoint::ToEndpoint)
        .expect("to-endpoint event");
    assert_eq!(to_ep.verdict, Verdict::Forwarded);
    assert_eq!((to_ep.src_identity, to_ep.dst_identity), (1000, 2000));
    assert_eq!(to_ep.dst_ifindex, ib);
    assert_eq!((to_ep.src_port, to_ep.dst_port), (40000, 80));
    assert!(to_ep.tcp_flags.has(0x02));

    // Conntrack: one entry A->B, SYN seen; the reply B->A is a reply.
    let ct = bed.maps().conntrack().unwrap().entries().unwrap();
    assert_eq!(ct.len(), 1);
    let reply = Packet::tcp(POD_B.octets(), 80, POD_A.octets(), 40000, 0x12)
        .macs(MacAddr(MAC_B), MacAddr(LXC_B_MAC))
        .build();
    let r = bed.run(Prog::FromContainer, ib, &reply);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let ct = bed.maps().conntrack().unwrap().entries().unwrap();
    assert_eq!(ct.len(), 1, "reply reuses the entry");
    let (_, v) = ct[0];
    assert_eq!(v.packets_fwd, 1);
    assert_eq!(v.packets_rev, 1);
    assert_ne!(v.flags & fibril_abi::ct_flags::SYNACK_SEEN, 0);
}

#[test]
fn spoofed_source_is_dropped_with_reason() {
    let (mut bed, ia, ib) = bed_with_endpoints();
    // B's address sent from A's veth.
    let pkt = Packet::udp(POD_B.octets(), 5000, POD_A.octets(), 53).build();
    let r = bed.run(Prog::FromContainer, ia, &pkt);
    assert_eq!(r.ret, TC_ACT_SHOT);
    // Unknown address.
    let pkt = Packet::udp([10, 244, 0, 99], 5000, POD_A.octets(), 53).build();
    assert_eq!(bed.run(Prog::FromContainer, ib, &pkt).ret, TC_ACT_SHOT);
    let m = bed.maps().metrics().unwrap();
    assert_eq!(m.drops(DropReason::InvalidSource).unwrap(), 2);
    let drops: Vec<_> = bed
        .events()
        .into_iter()
        .filter(|f| f.verdict == Verdict::Dropped)
        .collect();
    assert_eq!(drops.len(), 2);
    assert!(drops
        .iter()
        .all(|f| f.drop_reason == Some(DropReason::InvalidSource)));
}

#[test]
fn traffic_to_router_and_node_goes_to_stack() {
    let (mut bed, ia, _) = bed_with_endpoints();
    for dst in [ROUTER, NODE] {
        let pkt = Packet::icmp_echo(POD_A.octets(), dst.octets(), 7, 1).build();
        let r = bed.run(Prog::FromContainer, ia, &pkt);
        assert_eq!(r.ret, TC_ACT_OK, "to {dst}");
        assert_eq!(r.data, pkt, "untouched");
    }
    let ev = bed.events();
    assert!(ev
        .iter()
        .all(|f| f.obs_point == ObsPoint::ToStack && f.dst_identity == identity::HOST));
}

#[test]
fn malformed_packets_are_dropped_sanely() {
    let (mut bed, ia, _) = bed_with_endpoints();
    let good = Packet::tcp(POD_A.octets(), 1, POD_B.octets(), 2, 0x02).build();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Truncated at every length after the Ethernet header (PROG_TEST_RUN
    // refuses a bare 14-byte header with EINVAL).
    for n in 15..good.len() {
        cases.push(("truncated", good[..n].to_vec()));
    }
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    cases.push(("ihl 4", bad_ihl));
    let mut bad_ver = good.clone();
    bad_ver[14] = 0x65;
    cases.push(("version 6", bad_ver));
    let mut long_len = good.clone();
    long_len[16..18].copy_from_slice(&1500u16.to_be_bytes());
    cases.push(("tot_len beyond packet", long_len));
    let mut v6 = good.clone();
    v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    cases.push(("ipv6 ethertype", v6));
    let mut short_arp = arp_request(MacAddr(MAC_A), POD_A, ROUTER);
    short_arp.truncate(30);
    cases.push(("short arp", short_arp));

    let mut refused = Vec::new();
    for (what, pkt) in &cases {
        // The kernel refuses some frames too short for their ethertype
        // before the program runs; those cannot reach tc either.
        let r = match bed.try_run(Prog::FromContainer, ia, pkt) {
            Ok(r) => r,
            Err(e) => {
                refused.push((pkt.len(), e));
                continue;
            }
        };
        assert_eq!(
            r.ret,
            TC_ACT_SHOT,
            "{what} ({} bytes) from a pod must be dropped",
            pkt.len()
        );
        // The host programs leave what they do not understand to the stack.
        let r = bed.run(Prog::FromNetdev, 1, pkt);
        assert_eq!(r.ret, TC_ACT_OK, "{what} on the underlay goes to the stack");
        let r = bed.run(Prog::ToNetdev, 1, pkt);
        assert_eq!(r.ret, TC_ACT_OK);
    }
    eprintln!(
        "kernel refused {} of {} malformed frames: {:?}",
        refused.len(),
        cases.len(),
        refused.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    assert!(
        refused.len() < cases.len() / 2,
        "most malformed frames must reach the program"
    );
    let m = bed.maps().metrics().unwrap();
    assert!(m.drops(DropReason::InvalidPacket).unwrap() > 0);
    assert_eq!(m.drops(DropReason::UnsupportedL3).unwrap(), 1);
    assert_eq!(m.drops(DropReason::InvalidArp).unwrap(), 1);
    // A fragment (offset != 0) has no L4 header but is still forwarded.
    let mut frag = Packet::udp(POD_A.octets(), 1, POD_B.octets(), 2);
    frag.frag_off = 100;
    let r = bed.run(Prog::FromContainer, ia, &frag.build());
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let _ = Parsed::parse(&r.data);
}

#[test]
fn host_to_pod_through_fibril_host_is_redirected_to_the_veth() {
    let (mut bed, ia, _) = bed_with_endpoints();
    let pkt = Packet::tcp(ROUTER.octets(), 5000, POD_A.octets(), 80, 0x02).build();
    let r = bed.run(Prog::ToHost, 1, &pkt);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!((p.smac, p.dmac), (MacAddr(LXC_A_MAC), MacAddr(MAC_A)));
    let ev = bed.events();
    let f = ev
        .iter()
        .find(|f| f.obs_point == ObsPoint::ToEndpoint)
        .unwrap();
    assert_eq!(
        (f.src_identity, f.dst_identity, f.dst_ifindex),
        (identity::HOST, 1000, ia)
    );
    // Not a pod: left to the stack.
    let pkt = Packet::tcp(ROUTER.octets(), 5000, [10, 244, 0, 77], 80, 0x02).build();
    assert_eq!(bed.run(Prog::ToHost, 1, &pkt).ret, TC_ACT_OK);
    assert_eq!(bed.run(Prog::FromHost, 1, &pkt).ret, TC_ACT_OK);
}

#[test]
fn pinned_map_with_another_layout_is_refused() {
    let bed = TestBed::new(config(), "");
    // A map of another layout pinned under an expected name.
    let dir = std::path::Path::new(fibril_datapath::testing::bed::TEST_PIN_ROOT)
        .join(fibril_datapath::testing::fixture::unique_name("layout"));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = aya::maps::MapData::from_pin(bed.pin_dir().join("fibril_metrics")).unwrap();
    metrics.pin(dir.join("fibril_endpoints")).unwrap();
    let err = fibril_datapath::Datapath::load(fibril_datapath::DatapathOptions {
        pin_dir: dir.clone(),
        netns: bed.ns.netns(),
        config: config(),
    })
    .unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    let msg = err.to_string();
    assert!(
        msg.contains("fibril_endpoints") && msg.contains("layout changed"),
        "{msg}"
    );
}

#[test]
fn links_of_deleted_interfaces_are_dropped_and_detach_removes_links() {
    let mut bed = TestBed::new(
        config(),
        "ip link add lxca type veth peer name lxca-p && ip link add lxcb type veth peer name lxcb-p",
    );
    use fibril_datapath::{pinned_attachments, AttachOutcome, Datapath};
    assert_eq!(
        bed.dp.attach_endpoint("lxca").unwrap(),
        AttachOutcome::Created
    );
    assert_eq!(
        bed.dp.attach_endpoint("lxcb").unwrap(),
        AttachOutcome::Created
    );
    assert_eq!(
        bed.dp.attach_endpoint("lxcb").unwrap(),
        AttachOutcome::Replaced
    );
    assert_eq!(pinned_attachments(bed.pin_dir()).unwrap().len(), 2);
    // Pod deleted: its link is defunct; a restart drops it.
    bed.ns.sh("ip link del lxca");
    let kept = bed.dp.replace_pinned().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].ifname, "lxcb");
    assert_eq!(pinned_attachments(bed.pin_dir()).unwrap().len(), 1);
    // A re-created interface of the same name gets a fresh link.
    bed.ns.sh("ip link add lxca type veth peer name lxca-p");
    assert_eq!(
        bed.dp.attach_endpoint("lxca").unwrap(),
        AttachOutcome::Created
    );
    // Pod programs are tc netlink filters, visible to tc(8).
    let filters = bed.ns.sh("tc filter show dev lxcb ingress");
    assert!(filters.contains("cil_from_container"), "{filters}");
    // Explicit detach while the device exists removes the filter too.
    assert_eq!(bed.dp.detach_endpoint("lxcb").unwrap(), 1);
    let filters = bed.ns.sh("tc filter show dev lxcb ingress");
    assert!(!filters.contains("cil_from_container"), "{filters}");
    // Detaching by pin dir only drops records (the filter goes with the device).
    assert_eq!(
        Datapath::detach_interface(bed.pin_dir(), "lxcb").unwrap(),
        0
    );
    let left = pinned_attachments(bed.pin_dir()).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].ifname, "lxca");
    // Attaching to a missing interface names it.
    let err = bed.dp.attach_endpoint("nope0").unwrap_err().to_string();
    assert!(err.contains("nope0"), "{err}");
}
