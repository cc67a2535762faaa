//! Tunnel (VXLAN / Geneve in eBPF) with BPF_PROG_TEST_RUN (root): encap of
//! a pod packet (outer headers, UDP port, VNI = identity, checksums, outer
//! MACs from the FIB), decap back to the inner packet delivered to the
//! endpoint, and non-tunnel / wrong-port / malformed / truncated packets.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::Ipv4Addr;

use fibril_abi::{DropReason, EndpointInfo, ObsPoint, Verdict};
use fibril_datapath::testing::bed::{TestBed, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use fibril_datapath::testing::packet::{MacAddr, Packet, Parsed};
use fibril_datapath::tunnel::{decode, ENCAP_OVERHEAD};
use fibril_datapath::{DatapathConfig, Device, Prefix4, Prog, Tunnel};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 100);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 100);
const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 200);
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0x0c, 0xc8];
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const LXC_A_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x0a];
const ID_A: u32 = 0xcba; // the seed's Geneve VNI 0x000cba

struct Bed {
    bed: TestBed,
    lxc: u32,
    eth1: u32,
    eth1_mac: [u8; 6],
}

fn bed(tunnel: Tunnel) -> Bed {
    let cfg = DatapathConfig {
        node_ip: NODE,
        router_ip: ROUTER,
        underlay_device: Device::Name("eth1".into()),
        ..Default::default()
    }
    .with_tunnel(tunnel, 1500)
    .unwrap();
    assert_eq!(cfg.pod_mtu, if tunnel.is_enabled() { 1450 } else { 1500 });
    let gw_mac = MacAddr(GW_MAC);
    let bed = TestBed::new(
        cfg,
        &format!(
            "sysctl -qw net.ipv4.ip_forward=1 && \
             ip link add lxca type veth peer name lxca-p && ip link set lxca up && \
             ip link set lxca-p up && \
             ip link add eth1 type veth peer name eth1-p && ip link set eth1 up && \
             ip link set eth1-p up && ip addr add {NODE}/24 dev eth1 && \
             ip route add 192.168.20.0/24 via {GW} dev eth1 && \
             ip neigh add {GW} lladdr {gw_mac} dev eth1 nud permanent"
        ),
    );
    let lxc = bed.ns.ifindex("lxca");
    let eth1 = bed.ns.ifindex("eth1");
    let eth1_mac = bed.ns.mac("eth1");
    bed.maps()
        .endpoints()
        .unwrap()
        .upsert(
            POD_A,
            &EndpointInfo {
                ifindex: lxc,
                sec_identity: ID_A,
                ep_id: 1,
                flags: 0,
                mac: MAC_A,
                node_mac: LXC_A_MAC,
            },
        )
        .unwrap();
    let mut ipc = bed.maps().ipcache().unwrap();
    ipc.upsert_tunnel_route("10.244.1.0/24".parse().unwrap(), REMOTE_NODE, 2)
        .unwrap();
    ipc.upsert_remote_node(REMOTE_NODE, None).unwrap();
    // A pod CIDR whose node has no route.
    ipc.upsert_tunnel_route(
        "10.244.9.0/24".parse().unwrap(),
        Ipv4Addr::new(172, 31, 0, 9),
        2,
    )
    .unwrap();
    Bed {
        bed,
        lxc,
        eth1,
        eth1_mac,
    }
}

/// An encapsulated frame as a remote node would send it.
fn tunnel_frame(
    tunnel: Tunnel,
    outer_dst: Ipv4Addr,
    vni: u32,
    inner: &[u8],
    tun_hdr: Option<Vec<u8>>,
) -> Vec<u8> {
    let hdr = tun_hdr.unwrap_or_else(|| {
        let mut h = vec![0u8; 8];
        match tunnel {
            Tunnel::Vxlan { .. } => h[0] = 0x08,
            _ => h[2..4].copy_from_slice(&0x6558u16.to_be_bytes()),
        }
        h[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
        h
    });
    let mut payload = hdr;
    payload.extend_from_slice(inner);
    Packet::udp(
        REMOTE_NODE.octets(),
        51234,
        outer_dst.octets(),
        tunnel.port().unwrap(),
    )
    .macs(MacAddr(GW_MAC), MacAddr([2, 0, 0, 0, 0, 0x99]))
    .payload(&payload)
    .build()
}

fn remote_inner() -> Vec<u8> {
    Packet::tcp(REMOTE_POD.octets(), 80, POD_A.octets(), 40000, 0x12)
        .macs(MacAddr([2, 0, 0, 0, 2, 1]), MacAddr([2, 0, 0, 0, 2, 2]))
        .payload(b"reply")
        .build()
}

fn check_encap(tunnel: Tunnel) {
    let mut b = bed(tunnel);
    let pkt = Packet::tcp(POD_A.octets(), 40000, REMOTE_POD.octets(), 80, 0x02)
        .macs(MacAddr(MAC_A), MacAddr(LXC_A_MAC))
        .payload(b"hello over the tunnel")
        .build();
    let r = b.bed.run(Prog::FromContainer, b.lxc, &pkt);
    assert_eq!(
        r.ret, TC_ACT_REDIRECT,
        "{tunnel:?}: redirected to the underlay"
    );
    assert_eq!(r.data.len(), pkt.len() + ENCAP_OVERHEAD as usize);
    let outer = Parsed::parse(&r.data).unwrap();
    assert_eq!(outer.smac, MacAddr(b.eth1_mac), "outer source MAC = eth1");
    assert_eq!(
        outer.dmac,
        MacAddr(GW_MAC),
        "outer destination MAC = next hop"
    );
    assert_eq!((outer.saddr, outer.daddr), (Some(NODE), Some(REMOTE_NODE)));
    assert_eq!(outer.proto, 17);
    assert!(outer.ip_csum_ok, "outer IPv4 checksum");
    assert_eq!(outer.dport, tunnel.port());
    let sport = outer.sport.unwrap();
    assert!((32768..61000).contains(&sport), "entropy port {sport}");
    let d = decode(&r.data, tunnel).expect("decodes");
    assert_eq!(d.vni, ID_A, "VNI = source identity");
    assert_eq!(d.outer_ttl, 64);
    assert_eq!(d.udp_csum, 0, "no outer UDP checksum (valid for IPv4)");
    let udp_len = u16::from_be_bytes([r.data[38], r.data[39]]);
    assert_eq!(usize::from(udp_len), r.data.len() - 34, "UDP length");
    let ip_len = u16::from_be_bytes([r.data[16], r.data[17]]);
    assert_eq!(usize::from(ip_len), r.data.len() - 14, "outer IPv4 length");
    assert_eq!(d.inner, pkt, "inner frame unchanged");
    eprintln!(
        "{tunnel:?}: {} -> {} udp {} -> {} vni {:#x}, {} + {} bytes",
        d.outer_src,
        d.outer_dst,
        d.udp_sport,
        d.udp_dport,
        d.vni,
        pkt.len(),
        ENCAP_OVERHEAD
    );

    let ev = b.bed.events();
    let to = ev
        .iter()
        .find(|f| f.obs_point == ObsPoint::ToOverlay)
        .expect("to-overlay event");
    assert_eq!(to.verdict, Verdict::Forwarded);
    assert_eq!((to.src_ip, to.dst_ip), (POD_A, REMOTE_POD), "inner flow");
    assert_eq!(to.src_identity, ID_A);
    assert_eq!(to.dst_ifindex, b.eth1);

    // Outer source ports spread over flows, and one flow keeps its port.
    let mut ports = std::collections::BTreeSet::new();
    for sp in 41000..41016u16 {
        let p = Packet::udp(POD_A.octets(), sp, REMOTE_POD.octets(), 53)
            .macs(MacAddr(MAC_A), MacAddr(LXC_A_MAC))
            .build();
        let r = b.bed.run(Prog::FromContainer, b.lxc, &p);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        let sport = decode(&r.data, tunnel).unwrap().udp_sport;
        let again = b.bed.run(Prog::FromContainer, b.lxc, &p);
        assert_eq!(decode(&again.data, tunnel).unwrap().udp_sport, sport);
        ports.insert(sport);
    }
    assert!(ports.len() >= 8, "16 flows, {} outer ports", ports.len());

    // ICMP too.
    let ping = Packet::icmp_echo(POD_A.octets(), REMOTE_POD.octets(), 9, 1)
        .macs(MacAddr(MAC_A), MacAddr(LXC_A_MAC))
        .build();
    let r = b.bed.run(Prog::FromContainer, b.lxc, &ping);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(decode(&r.data, tunnel).unwrap().inner, ping);

    // A tunneled CIDR whose node has no route: dropped with a reason.
    let lost = Packet::icmp_echo(POD_A.octets(), [10, 244, 9, 9], 9, 1)
        .macs(MacAddr(MAC_A), MacAddr(LXC_A_MAC))
        .build();
    let r = b.bed.run(Prog::FromContainer, b.lxc, &lost);
    assert_eq!(r.ret, TC_ACT_SHOT);
    assert_eq!(r.data, lost, "left intact");
    let m = b.bed.maps().metrics().unwrap();
    assert_eq!(m.drops(DropReason::NoRoute).unwrap(), 1);

    // Not in the ipcache: no encapsulation (to the stack here: no native
    // CIDR configured).
    let other = Packet::icmp_echo(POD_A.octets(), [10, 10, 1, 200], 9, 1)
        .macs(MacAddr(MAC_A), MacAddr(LXC_A_MAC))
        .build();
    let r = b.bed.run(Prog::FromContainer, b.lxc, &other);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(r.data, other);
}

#[test]
fn vxlan_encap_builds_outer_headers() {
    check_encap(Tunnel::vxlan());
}

#[test]
fn geneve_encap_builds_outer_headers() {
    check_encap(Tunnel::geneve());
}

#[test]
fn non_default_port_encap() {
    check_encap(Tunnel::Vxlan { port: 4789 });
    check_encap(Tunnel::Geneve { port: 7081 });
}

#[test]
fn encap_respects_the_underlay_mtu() {
    let mut b = bed(Tunnel::geneve());
    // 1450 bytes of IPv4 (the pod MTU) fit a 1500 underlay once
    // encapsulated; 1451 do not.
    for (ip_len, verdict) in [
        (1450usize, TC_ACT_REDIRECT),
        (1451, TC_ACT_SHOT),
        (1500, TC_ACT_SHOT),
    ] {
        let pkt = Packet::udp(POD_A.octets(), 5000, REMOTE_POD.octets(), 5001)
            .macs(MacAddr(MAC_A), MacAddr(LXC_A_MAC))
            .payload(&vec![0xab; ip_len - 28])
            .build();
        let r = b.bed.run(Prog::FromContainer, b.lxc, &pkt);
        assert_eq!(r.ret, verdict, "IPv4 length {ip_len}");
        if verdict == TC_ACT_REDIRECT {
            assert_eq!(r.data.len(), 1514, "a full 1500-byte underlay frame");
        } else {
            assert_eq!(r.data, pkt, "left intact");
        }
    }
    let m = b.bed.maps().metrics().unwrap();
    assert_eq!(m.drops(DropReason::FragNotSupported).unwrap(), 2);
}

#[test]
fn host_to_remote_pod_is_encapsulated_with_the_host_identity() {
    let mut b = bed(Tunnel::vxlan());
    // Host stack -> fibril_host egress (route to the remote pod CIDR via
    // fibril_host): cil_to_host encapsulates with identity host (1).
    let pkt = Packet::icmp_echo(ROUTER.octets(), REMOTE_POD.octets(), 3, 1).build();
    let r = b.bed.run(Prog::ToHost, b.lxc, &pkt);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let d = decode(&r.data, Tunnel::vxlan()).unwrap();
    assert_eq!((d.outer_src, d.outer_dst), (NODE, REMOTE_NODE));
    assert_eq!(d.vni, fibril_abi::identity::HOST);
    assert_eq!(d.inner, pkt);
    // Received with VNI host (1): the sender is a remote node.
    let inner = Packet::icmp_echo(REMOTE_POD.octets(), POD_A.octets(), 3, 1)
        .macs(MacAddr([2, 0, 0, 0, 2, 1]), MacAddr([2, 0, 0, 0, 2, 2]))
        .build();
    let f = tunnel_frame(Tunnel::vxlan(), NODE, 1, &inner, None);
    let r = b.bed.run(Prog::FromNetdev, b.eth1, &f);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let ev = b.bed.events();
    assert!(ev.iter().any(|f| f.obs_point == ObsPoint::FromOverlay
        && f.src_identity == fibril_abi::identity::REMOTE_NODE));
    // A local destination from the host is still delivered locally.
    let local = Packet::icmp_echo(ROUTER.octets(), POD_A.octets(), 3, 1).build();
    let r = b.bed.run(Prog::ToHost, b.lxc, &local);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(r.data.len(), local.len(), "not encapsulated");
}

fn check_decap(tunnel: Tunnel) {
    let mut b = bed(tunnel);
    let inner = remote_inner();
    let frame = tunnel_frame(tunnel, NODE, 2000, &inner, None);
    let r = b.bed.run(Prog::FromNetdev, b.eth1, &frame);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "{tunnel:?}: delivered to the pod");
    assert_eq!(r.data.len(), inner.len(), "outer headers removed");
    let p = r.parsed();
    assert_eq!((p.saddr, p.daddr), (Some(REMOTE_POD), Some(POD_A)));
    assert_eq!((p.sport, p.dport), (Some(80), Some(40000)));
    assert_eq!(p.dmac, MacAddr(MAC_A));
    assert_eq!(p.smac, MacAddr(LXC_A_MAC));
    assert_eq!(p.ttl, 63);
    assert!(p.ip_csum_ok);
    assert_eq!(p.l4_csum_ok, Some(true));
    assert_eq!(
        &r.data[14..],
        &{
            let mut i = inner[14..].to_vec();
            // TTL and header checksum are the only IPv4 changes.
            i[8] = 63;
            i[10..12].copy_from_slice(&r.data[24..26]);
            i
        }[..]
    );

    let ev = b.bed.events();
    let from = ev
        .iter()
        .find(|f| f.obs_point == ObsPoint::FromOverlay)
        .expect("from-overlay event");
    assert_eq!(from.src_identity, 2000, "identity from the VNI");
    assert_eq!((from.src_ip, from.dst_ip), (REMOTE_POD, POD_A));
    let to = ev
        .iter()
        .find(|f| f.obs_point == ObsPoint::ToEndpoint)
        .expect("to-endpoint event");
    assert_eq!((to.src_identity, to.dst_identity), (2000, ID_A));
    assert_eq!(to.dst_ifindex, b.lxc);

    // Geneve options (non-critical) are skipped.
    if let Tunnel::Geneve { .. } = tunnel {
        let mut hdr = vec![2u8, 0, 0x65, 0x58, 0, 0x0b, 0xb8, 0];
        hdr.extend_from_slice(&[0x01, 0x02, 0x01, 0x01, 0xde, 0xad, 0xbe, 0xef]);
        let f = tunnel_frame(tunnel, NODE, 0, &inner, Some(hdr));
        let r = b.bed.run(Prog::FromNetdev, b.eth1, &f);
        assert_eq!(r.ret, TC_ACT_REDIRECT, "Geneve with 8 bytes of options");
        assert_eq!(r.data.len(), inner.len());
        let ev = b.bed.events();
        assert!(ev
            .iter()
            .any(|f| f.obs_point == ObsPoint::FromOverlay && f.src_identity == 3000));
    }
}

#[test]
fn vxlan_decap_restores_inner_packet() {
    check_decap(Tunnel::vxlan());
}

#[test]
fn geneve_decap_restores_inner_packet() {
    check_decap(Tunnel::geneve());
}

#[test]
fn non_default_port_decap() {
    check_decap(Tunnel::Vxlan { port: 4789 });
    check_decap(Tunnel::Geneve { port: 7081 });
}

fn check_untouched(b: &mut Bed, what: &str, pkt: &[u8]) {
    let r = b.bed.run(Prog::FromNetdev, b.eth1, pkt);
    assert_eq!(r.ret, TC_ACT_OK, "{what}: to the stack");
    assert_eq!(r.data, pkt, "{what}: untouched");
}

fn check_ignored_and_malformed(tunnel: Tunnel) {
    let mut b = bed(tunnel);
    let inner = remote_inner();
    let port = tunnel.port().unwrap();

    // Not tunnel traffic.
    let tcp = Packet::tcp(REMOTE_NODE.octets(), 5000, NODE.octets(), 22, 0x02).build();
    check_untouched(&mut b, "TCP to the node", &tcp);
    let dns = Packet::udp(REMOTE_NODE.octets(), 5000, NODE.octets(), 53)
        .payload(b"query")
        .build();
    check_untouched(&mut b, "UDP/53 to the node", &dns);
    // Wrong port: the other protocol's default, and port + 1.
    for wrong in [8472u16, 6081, 4789, port + 1] {
        if wrong == port {
            continue;
        }
        let mut f = tunnel_frame(tunnel, NODE, 2000, &inner, None);
        f[36..38].copy_from_slice(&wrong.to_be_bytes());
        let f = refresh_udp(f);
        check_untouched(&mut b, &format!("tunnel header on port {wrong}"), &f);
    }
    // Right port, but for another host.
    let f = tunnel_frame(tunnel, Ipv4Addr::new(192, 168, 10, 101), 2000, &inner, None);
    check_untouched(&mut b, "tunnel packet for another IP", &f);

    // Malformed tunnel packets: dropped with a reason, never delivered.
    let mut cases: Vec<(&str, Vec<u8>, DropReason)> = Vec::new();
    let good_hdr = || {
        let f = tunnel_frame(tunnel, NODE, 2000, &inner, None);
        f[42..50].to_vec()
    };
    match tunnel {
        Tunnel::Vxlan { .. } => {
            let mut h = good_hdr();
            h[0] = 0; // no I flag
            cases.push((
                "VXLAN without I flag",
                tunnel_frame(tunnel, NODE, 0, &inner, Some(h)),
                DropReason::DecapFailed,
            ));
        }
        _ => {
            let mut h = good_hdr();
            h[0] = 0x40; // version 1
            cases.push((
                "Geneve version 1",
                tunnel_frame(tunnel, NODE, 0, &inner, Some(h)),
                DropReason::DecapFailed,
            ));
            let mut h = good_hdr();
            h[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // not TEB
            cases.push((
                "Geneve protocol IPv4",
                tunnel_frame(tunnel, NODE, 0, &inner, Some(h)),
                DropReason::DecapFailed,
            ));
            let mut h = good_hdr();
            h[1] = 0x40; // critical options
            cases.push((
                "Geneve C bit",
                tunnel_frame(tunnel, NODE, 0, &inner, Some(h)),
                DropReason::DecapFailed,
            ));
            let mut h = good_hdr();
            h[0] = 0x3f; // 252 bytes of options the packet does not have
            cases.push((
                "Geneve options beyond the packet",
                tunnel_frame(tunnel, NODE, 0, &inner, Some(h)),
                DropReason::DecapFailed,
            ));
        }
    }
    let mut ipv6_inner = inner.clone();
    ipv6_inner[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    cases.push((
        "inner IPv6 ethertype",
        tunnel_frame(tunnel, NODE, 2000, &ipv6_inner, None),
        DropReason::DecapFailed,
    ));
    let mut bad_inner = inner.clone();
    bad_inner[14] = 0x44; // IHL 4
    cases.push((
        "inner IPv4 IHL 4",
        tunnel_frame(tunnel, NODE, 2000, &bad_inner, None),
        DropReason::DecapFailed,
    ));
    cases.push((
        "inner frame cut after the Ethernet header",
        tunnel_frame(tunnel, NODE, 2000, &inner[..20], None),
        DropReason::DecapFailed,
    ));
    let mut frag = tunnel_frame(tunnel, NODE, 2000, &inner, None);
    frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF
    let frag = refresh_ip(frag);
    cases.push(("outer first fragment", frag, DropReason::FragNotSupported));

    for (what, f, reason) in &cases {
        let before = b.bed.maps().metrics().unwrap().drops(*reason).unwrap();
        let r = b.bed.run(Prog::FromNetdev, b.eth1, f);
        assert_eq!(r.ret, TC_ACT_SHOT, "{what}: dropped");
        let after = b.bed.maps().metrics().unwrap().drops(*reason).unwrap();
        assert_eq!(after, before + 1, "{what}: counted as {reason:?}");
    }
    let drops: Vec<_> = b
        .bed
        .events()
        .into_iter()
        .filter(|f| f.verdict == Verdict::Dropped)
        .collect();
    assert_eq!(drops.len(), cases.len(), "one drop event per case");

    // Every truncation of a good tunnel frame: no crash, never delivered
    // half-parsed. The outer IPv4 total length still claims the full
    // frame, so the base parser sends short frames to the stack.
    let good = tunnel_frame(tunnel, NODE, 2000, &inner, None);
    let mut refused = 0;
    let mut verdicts = std::collections::BTreeMap::new();
    for n in 15..good.len() {
        match b.bed.try_run(Prog::FromNetdev, b.eth1, &good[..n]) {
            Ok(r) => {
                assert!(
                    r.ret == TC_ACT_OK || r.ret == TC_ACT_SHOT,
                    "truncated to {n}: verdict {}",
                    r.ret
                );
                *verdicts.entry(r.ret).or_insert(0) += 1;
            }
            Err(_) => refused += 1,
        }
    }
    // Truncated but with consistent outer lengths (a lying sender).
    for n in 42..good.len() {
        let mut f = good[..n].to_vec();
        let tot = (n - 14) as u16;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        f[38..40].copy_from_slice(&(tot - 20).to_be_bytes());
        let f = refresh_ip(f);
        let r = b.bed.run(Prog::FromNetdev, b.eth1, &f);
        assert_eq!(
            r.ret, TC_ACT_SHOT,
            "tunnel packet truncated to {n} with matching lengths: dropped"
        );
        *verdicts.entry(100 + r.ret).or_insert(0) += 1;
    }
    eprintln!("{tunnel:?}: truncation verdicts {verdicts:?}, kernel refused {refused}");
}

/// Recomputes the outer IPv4 header checksum.
fn refresh_ip(mut f: Vec<u8>) -> Vec<u8> {
    f[24..26].copy_from_slice(&[0, 0]);
    let c = fibril_datapath::testing::packet::checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// Zeroes the outer UDP checksum (allowed for IPv4) after a rewrite.
fn refresh_udp(mut f: Vec<u8>) -> Vec<u8> {
    f[40..42].copy_from_slice(&[0, 0]);
    f
}

#[test]
fn vxlan_ignores_other_traffic_and_drops_malformed() {
    check_ignored_and_malformed(Tunnel::vxlan());
}

#[test]
fn geneve_ignores_other_traffic_and_drops_malformed() {
    check_ignored_and_malformed(Tunnel::geneve());
}

#[test]
fn tunnel_disabled_leaves_tunnel_packets_and_remote_pods_alone() {
    let mut b = bed(Tunnel::Disabled);
    let f = tunnel_frame(Tunnel::vxlan(), NODE, 2000, &remote_inner(), None);
    check_untouched(&mut b, "VXLAN frame, tunnel disabled", &f);
    let pkt = Packet::tcp(POD_A.octets(), 40000, REMOTE_POD.octets(), 80, 0x02)
        .macs(MacAddr(MAC_A), MacAddr(LXC_A_MAC))
        .build();
    let r = b.bed.run(Prog::FromContainer, b.lxc, &pkt);
    assert_eq!(
        r.ret, TC_ACT_OK,
        "native mode, no native CIDR: to the stack"
    );
    assert_eq!(r.data, pkt);
}

#[test]
fn ipcache_tunnel_routes_api() {
    let b = bed(Tunnel::vxlan());
    let ipc = b.bed.maps().ipcache().unwrap();
    assert_eq!(ipc.tunnel_endpoint(REMOTE_POD).unwrap(), Some(REMOTE_NODE));
    assert_eq!(ipc.tunnel_endpoint(REMOTE_NODE).unwrap(), None);
    assert_eq!(ipc.tunnel_endpoint(POD_A).unwrap(), None);
    let routes = ipc.tunnel_routes().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(
        routes[0].prefix,
        "10.244.1.0/24".parse::<Prefix4>().unwrap()
    );
    assert_eq!(routes[0].node_ip, REMOTE_NODE);
    let mut ipc = ipc;
    assert!(ipc
        .upsert_tunnel_route(Prefix4::host(REMOTE_POD), Ipv4Addr::UNSPECIFIED, 1)
        .unwrap_err()
        .to_string()
        .contains("10.244.1.10/32"));
}
