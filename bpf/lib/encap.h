/* SPDX-License-Identifier: Apache-2.0 */
/* Tunnel: VXLAN and Geneve encapsulation/decapsulation done entirely in
 * eBPF (no kernel vxlan/geneve device: this machine's kernel has no geneve
 * module and Fibril must not need one). Called only when
 * FEATURE(FEAT_TUNNEL). Config: CFG(tunnel_proto), CFG(tunnel_port),
 * CFG(node_ip), CFG(underlay_ifindex). ipcache values carry
 * tunnel_endpoint (remote node IP). Return convention (common.h).
 *
 * Wire format, both protocols the same size (50 bytes of overhead, so pod
 * MTU = underlay MTU - 50, 1450 for 1500):
 *   outer Ethernet | outer IPv4 (20) | UDP (8) | VXLAN or Geneve (8) |
 *   inner Ethernet (14) | inner IPv4 ...
 * VNI (24 bits) = source security identity. Outer UDP source port = a hash
 * of the inner flow (entropy for ECMP/RSS), outer UDP checksum 0 (allowed
 * for IPv4, and what GSO of SKB_GSO_UDP_TUNNEL produces), no Geneve options
 * sent (options of received packets are skipped).
 *
 * bpf_skb_adjust_room(BPF_ADJ_ROOM_MAC) inserts/removes the room right
 * after the outer Ethernet header, so the frame's own Ethernet header
 * becomes the outer one. The ENCAP flags mark the skb as UDP-tunnel
 * encapsulated, so GSO (TCP) packets are segmented correctly later; FIXED_GSO
 * keeps the MSS because the pod MTU already leaves room for the overhead.
 */
#ifndef FIBRIL_ENCAP_H
#define FIBRIL_ENCAP_H

#include "maps.h"
#include "drop.h"
#include "trace.h"
#include "ipcache.h"

#ifndef AF_INET
#define AF_INET 2
#endif

#define VXLAN_HLEN 8
#define GENEVE_HLEN 8
#define TUNNEL_HLEN 8 /* VXLAN and Geneve without options */
#define ENCAP_OVERHEAD (sizeof(struct iphdr) + sizeof(struct udphdr) + TUNNEL_HLEN + ETH_HLEN)
#define VXLAN_FLAG_VNI 0x08         /* "I" flag: the VNI is valid */
#define GENEVE_PROTO_TEB 0x6558     /* Transparent Ethernet Bridging */
#define GENEVE_MAX_OPT_LEN 252      /* opt_len is 6 bits of 4-byte words */
#define IP_MF 0x2000
#define IP_OFFMASK 0x1fff
/* Outer UDP source port range (the kernel's default ephemeral range, as
 * udp_flow_src_port() uses). */
#define TUNNEL_SPORT_MIN 32768
#define TUNNEL_SPORT_MAX 61000

/* The 50 bytes inserted after the outer Ethernet header. VXLAN and Geneve
 * share the 8-byte layout: byte 0/1 flags (VXLAN: 0x08,0; Geneve:
 * ver/opt_len, O/C), bytes 2-3 reserved (VXLAN) or protocol type (Geneve),
 * bytes 4-6 VNI, byte 7 reserved. */
struct encap_hdr {
	struct iphdr ip;
	struct udphdr udp;
	__u8 tun_flags;
	__u8 tun_flags2;
	__be16 tun_proto;
	__be32 vni_rsvd; /* VNI << 8 */
	__u8 inner_dmac[6];
	__u8 inner_smac[6];
	__be16 inner_proto;
} __attribute__((packed));

_Static_assert(sizeof(struct encap_hdr) == ENCAP_OVERHEAD, "encap header is 50 bytes");

static __always_inline __u16 tunnel_src_port(struct __sk_buff *skb)
{
	__u32 hash = bpf_get_hash_recalc(skb);

	/* Same mapping as the kernel's udp_flow_src_port(): fold the high
	 * bits in, then scale into [min, max). */
	hash ^= hash << 16;
	return (__u16)((((__u64)hash * (TUNNEL_SPORT_MAX - TUNNEL_SPORT_MIN)) >> 32) +
		       TUNNEL_SPORT_MIN);
}

static __always_inline __u16 ipv4_hdr_csum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* bpf_lxc after policy, for non-local destinations (and bpf_host's
 * cil_to_host for host -> remote pod, with the host identity): if ipcache
 * says the
 * destination sits behind tunnel_endpoint, encapsulate (VNI = source
 * identity tc->src_identity), emit to-overlay and redirect to the underlay.
 * CTX_CONTINUE when the destination is not tunneled. */
static __always_inline int encap4_from_endpoint(struct __sk_buff *skb, struct pkt4 *p,
						struct trace_ctx *tc)
{
	struct ipcache_value *info;
	struct bpf_fib_lookup fib;
	struct encap_hdr h;
	struct iphdr oip;
	__be32 remote;
	__u32 out_ifindex;
	int have_neigh = 0;
	long rc;

	if (CFG(tunnel_proto) != TUNNEL_PROTO_VXLAN && CFG(tunnel_proto) != TUNNEL_PROTO_GENEVE)
		return CTX_CONTINUE;
	info = ipcache_lookup4(p->daddr);
	if (!info || info->tunnel_endpoint == 0 || info->tunnel_endpoint == CFG(node_ip))
		return CTX_CONTINUE;
	remote = info->tunnel_endpoint;
	/* Outer IPv4 total length must fit in 16 bits (GSO packets carry up
	 * to 64 KiB in one skb; TCP keeps them below this). */
	if ((__u32)p->tot_len + ENCAP_OVERHEAD > 0xffff)
		return -DROP_ENCAP_FAILED;

	/* Outer next hop before touching the packet, so a failure leaves it
	 * intact. Output lookup restricted to the underlay device when set. */
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.ipv4_src = CFG(node_ip);
	fib.ipv4_dst = remote;
	out_ifindex = CFG(underlay_ifindex);
	if (out_ifindex) {
		fib.ifindex = out_ifindex;
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	} else {
		fib.ifindex = skb->ifindex;
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	}
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		have_neigh = 1;
		out_ifindex = fib.ifindex;
		break;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		/* bpf_redirect_neigh() resolves the next hop's MAC. */
		if (fib.ifindex)
			out_ifindex = fib.ifindex;
		break;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return -DROP_NO_ROUTE;
	default:
		/* FWD_DISABLED, LWT, ...: let the neighbour subsystem route it
		 * out of the underlay. */
		if (!out_ifindex)
			return -DROP_NO_ROUTE;
		break;
	}
	if (!out_ifindex)
		return -DROP_NO_ROUTE;
	/* A non-GSO packet that would not fit the underlay once encapsulated
	 * (pod MTU above underlay MTU - 50): the peer device would drop it
	 * silently, so drop it here with a reason and a counter. GSO packets
	 * pass: their segments follow the pod MTU. */
	{
		__u32 mtu_len = 0;

		if (bpf_check_mtu(skb, out_ifindex, &mtu_len, ENCAP_OVERHEAD, 0) !=
		    BPF_MTU_CHK_RET_SUCCESS)
			return -DROP_FRAG_NOT_SUPPORTED;
	}

	__builtin_memset(&oip, 0, sizeof(oip));
	oip.version = 4;
	oip.ihl = 5;
	oip.tot_len = bpf_htons(p->tot_len + ENCAP_OVERHEAD);
	oip.id = (__be16)bpf_get_prandom_u32();
	oip.ttl = 64;
	oip.protocol = IPPROTO_UDP;
	oip.saddr = CFG(node_ip);
	oip.daddr = remote;
	oip.check = ipv4_hdr_csum(&oip);
	__builtin_memset(&h, 0, sizeof(h));
	__builtin_memcpy(&h.ip, &oip, sizeof(oip));
	h.udp.source = bpf_htons(tunnel_src_port(skb));
	h.udp.dest = bpf_htons(CFG(tunnel_port));
	h.udp.len = bpf_htons(p->tot_len + ENCAP_OVERHEAD - sizeof(struct iphdr));
	h.udp.check = 0;
	if (CFG(tunnel_proto) == TUNNEL_PROTO_VXLAN) {
		h.tun_flags = VXLAN_FLAG_VNI;
	} else {
		h.tun_flags = 0; /* version 0, no options */
		h.tun_proto = bpf_htons(GENEVE_PROTO_TEB);
	}
	h.vni_rsvd = bpf_htonl((tc->src_identity & 0xffffff) << 8);
	__builtin_memcpy(h.inner_dmac, p->dmac, 6);
	__builtin_memcpy(h.inner_smac, p->smac, 6);
	h.inner_proto = bpf_htons(ETH_P_IP);

	if (bpf_skb_adjust_room(skb, ENCAP_OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
					BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
					BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
					BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN)) < 0)
		return -DROP_ENCAP_FAILED;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0) < 0)
		return -DROP_WRITE_FAILED;
	if (have_neigh) {
		if (rewrite_macs(skb, fib.smac, fib.dmac) < 0)
			return -DROP_WRITE_FAILED;
	}

	tc->flags &= ~TRACE_F_FROM_OVERLAY;
	send_trace(skb, p, tc, OBS_TO_OVERLAY, out_ifindex);
	metrics_add(METRIC_DIR_EGRESS, METRIC_FORWARDED, skb->len);
	if (have_neigh)
		return bpf_redirect(out_ifindex, 0);
	return bpf_redirect_neigh(out_ifindex, 0, 0, 0);
}

/* bpf_host ingress on the underlay device, first thing: if this is a tunnel
 * packet to CFG(node_ip):CFG(tunnel_port), decapsulate, re-parse into p, set
 * tc->src_identity from the VNI and tc->flags |= TRACE_F_FROM_OVERLAY, then
 * return CTX_CONTINUE so the caller delivers to the endpoint (from-overlay).
 * CTX_CONTINUE without touching anything for non-tunnel packets.
 * Malformed tunnel packets (bad flags/version/protocol, truncated, not
 * IPv4 inside, outer fragments) are dropped with DROP_DECAP_FAILED or
 * DROP_FRAG_NOT_SUPPORTED. */
static __always_inline int decap4_from_network(struct __sk_buff *skb, struct pkt4 *p,
					       struct trace_ctx *tc)
{
	void *data, *data_end;
	struct iphdr *oip;
	__u8 *tun;
	__u32 tun_off, tun_len, inner_off, shrink, vni;
	__be16 inner_proto;

	if (CFG(tunnel_proto) != TUNNEL_PROTO_VXLAN && CFG(tunnel_proto) != TUNNEL_PROTO_GENEVE)
		return CTX_CONTINUE;
	if (p->proto != IPPROTO_UDP || p->is_fragment)
		return CTX_CONTINUE;
	if (p->dport != bpf_htons(CFG(tunnel_port)))
		return CTX_CONTINUE;
	if (CFG(node_ip) && p->daddr != CFG(node_ip))
		return CTX_CONTINUE;

	/* A first fragment: the inner packet is incomplete. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	oip = data + ETH_HLEN;
	if ((void *)(oip + 1) > data_end)
		return -DROP_DECAP_FAILED;
	if (oip->frag_off & bpf_htons(IP_MF | IP_OFFMASK))
		return -DROP_FRAG_NOT_SUPPORTED;

	tun_off = (__u32)p->l4_off + sizeof(struct udphdr);
	if (tun_off > 128)
		return -DROP_DECAP_FAILED;
	if (ctx_pull(skb, tun_off + TUNNEL_HLEN) < 0)
		return -DROP_DECAP_FAILED;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	tun = data + (tun_off & 0xff);
	if ((void *)(tun + TUNNEL_HLEN) > data_end)
		return -DROP_DECAP_FAILED;
	if (CFG(tunnel_proto) == TUNNEL_PROTO_VXLAN) {
		if (!(tun[0] & VXLAN_FLAG_VNI))
			return -DROP_DECAP_FAILED;
		tun_len = VXLAN_HLEN;
	} else {
		if ((tun[0] >> 6) != 0) /* version */
			return -DROP_DECAP_FAILED;
		/* O: control message, not data; C: critical options we do
		 * not understand (RFC 8926 says drop). */
		if (tun[1] & 0xc0)
			return -DROP_DECAP_FAILED;
		if (tun[2] != (GENEVE_PROTO_TEB >> 8) || tun[3] != (GENEVE_PROTO_TEB & 0xff))
			return -DROP_DECAP_FAILED;
		tun_len = GENEVE_HLEN + (tun[0] & 0x3f) * 4;
	}
	vni = ((__u32)tun[4] << 16) | ((__u32)tun[5] << 8) | tun[6];

	inner_off = tun_off + tun_len;
	/* The whole inner Ethernet + IPv4 header must be there, and the
	 * outer IP/UDP lengths must cover it. */
	if (inner_off + ETH_HLEN + sizeof(struct iphdr) > skb->len ||
	    inner_off + ETH_HLEN + sizeof(struct iphdr) > ETH_HLEN + (__u32)p->tot_len)
		return -DROP_DECAP_FAILED;
	if (bpf_skb_load_bytes(skb, inner_off + 12, &inner_proto, sizeof(inner_proto)) < 0)
		return -DROP_DECAP_FAILED;
	if (inner_proto != bpf_htons(ETH_P_IP))
		return -DROP_DECAP_FAILED;

	/* Remove outer IPv4 + UDP + tunnel header + inner Ethernet: the outer
	 * Ethernet header stays and fronts the inner IPv4 packet. */
	shrink = inner_off;
	if (bpf_skb_adjust_room(skb, -(__s32)shrink, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO) < 0)
		return -DROP_DECAP_FAILED;
	if (parse_ipv4(skb, p) < 0)
		return -DROP_DECAP_FAILED;
	/* The sending node's own traffic is "remote-node" here. */
	tc->src_identity = vni == IDENTITY_HOST ? IDENTITY_REMOTE_NODE : vni;
	tc->flags |= TRACE_F_FROM_OVERLAY;
	return CTX_CONTINUE;
}

#endif /* FIBRIL_ENCAP_H */
