/* SPDX-License-Identifier: Apache-2.0 */
/* Common definitions for every Fibril program: includes, return-code
 * conventions, the per-node load-time configuration, packet parsing with
 * bounds checks and checksum/rewrite helpers. Parsing copies header fields
 * into `struct pkt4` so later helpers that change the packet
 * (bpf_skb_store_bytes, adjust_room, ...) never leave stale pointers behind.
 */
#ifndef FIBRIL_COMMON_H
#define FIBRIL_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Return-code convention shared by every lib function that can end packet
 * processing (the hook points for lb.h / nat.h / encap.h follow it too):
 *   CTX_CONTINUE   keep going in the caller;
 *   >= 0           final TC verdict, return it as-is (TC_ACT_OK,
 *                  TC_ACT_REDIRECT, ...);
 *   < 0            -DROP_* reason: the caller emits a drop event, counts it
 *                  and returns TC_ACT_SHOT (see send_drop() in drop.h).
 */
#define CTX_CONTINUE 1000
#define IS_DROP(ret) ((ret) < 0)

/* Reserved security identities (same numbers as Cilium). */
#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_UNMANAGED 3
#define IDENTITY_HEALTH 4
#define IDENTITY_INIT 5
#define IDENTITY_REMOTE_NODE 6

/* Feature switches in fibril_config.features. Because the config lives in a
 * frozen .rodata map the verifier prunes disabled branches entirely. */
#define FEAT_TUNNEL (1U << 0)      /* routingMode=tunnel (encap.h) */
#define FEAT_MASQUERADE (1U << 1)  /* bpf.masquerade (nat.h) */
#define FEAT_LB (1U << 2)          /* kubeProxyReplacement (lb.h) */
#define FEAT_POLICY (1U << 3)      /* policy enforcement (policy.h) */
#define FEAT_MASQ_LINK_LOCAL (1U << 4) /* ipMasqAgent.masqLinkLocal */
#define FEAT_TRACE_FROM (1U << 5)  /* emit from-* trace events too */
#define FEAT_TRACE_AGGREGATE (1U << 6) /* trace only new flows, new TCP flags,
					  * and once per CT_REPORT_INTERVAL */

#define TUNNEL_PROTO_NONE 0
#define TUNNEL_PROTO_VXLAN 1
#define TUNNEL_PROTO_GENEVE 2

/* Per-node configuration, set by the loader with EbpfLoader::override_global
 * ("fibril_config"). Mirrors fibril_abi::NodeConfig (checked against BTF).
 * Addresses are in network byte order, ports and lengths in host order. */
struct fibril_config {
	__be32 node_ip;            /* underlay IP of this node */
	__be32 router_ip;          /* IP held by fibril_host (pods' gateway) */
	__u32 underlay_ifindex;    /* eth1 */
	__u32 host_ifindex;        /* fibril_host */
	__be32 native_cidr;        /* ipv4NativeRoutingCIDR network */
	__u32 native_cidr_len;     /* its prefix length (0 = no native CIDR) */
	__u32 features;            /* FEAT_* */
	__u16 tunnel_port;         /* UDP port of the tunnel protocol */
	__u8 tunnel_proto;         /* TUNNEL_PROTO_* */
	__u8 pad0;
	__u32 trace_sample;        /* emit 1 of N trace events (0 = none) */
	__u32 events_rate_limit;   /* max events/s per CPU (0 = unlimited) */
	__u32 pod_mtu;             /* for encap.h (MTU minus overhead) */
	__u32 cluster_id;
	__u8 node_mac[6];          /* MAC of the underlay device */
	__u8 pad1[2];
	__u16 snat_port_min;       /* nat.h: SNAT port / ICMP id range, host */
	__u16 snat_port_max;       /* order (0 = 32768..60999) */
};

volatile const struct fibril_config fibril_config = {
	.trace_sample = 1,
};

#define CFG(field) (fibril_config.field)
#define FEATURE(f) ((CFG(features) & (f)) != 0)

/* Newer-kernel flags missing from Debian's 6.1 uapi headers. */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

/* ICMP (linux/icmp.h drags in libc headers too). */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};

/* ARP (linux/if_arp.h drags in libc headers that do not build for BPF). */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2
struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

#define IP_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

#ifndef offsetof
#define offsetof(t, m) __builtin_offsetof(t, m)
#endif

/* TCP flag bits as in the header's 13th byte. */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_ACK 0x10
#define TCP_FLAG_URG 0x20

/* Parsed IPv4 packet. Values, not pointers. */
struct pkt4 {
	__u8 smac[6];
	__u8 dmac[6];
	__be32 saddr;
	__be32 daddr;
	__be16 sport;      /* or ICMP echo id for echo request/reply */
	__be16 dport;      /* or ICMP type<<8|code for other ICMP */
	__u8 proto;
	__u8 tcp_flags;
	__u8 ttl;
	__u8 is_fragment;  /* non-first fragment: no L4 header, ports are 0 */
	__u16 l4_off;      /* offset of the L4 header from the frame start */
	__u16 tot_len;     /* IPv4 total length */
	__u8 icmp_type;
	__u8 pad[3];
};

static __always_inline int ctx_pull(struct __sk_buff *skb, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + len <= data_end)
		return 0;
	if (skb->len < len)
		return -1;
	if (bpf_skb_pull_data(skb, len) < 0)
		return -1;
	return 0;
}

static __always_inline __be16 ctx_eth_proto(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if (data + ETH_HLEN > data_end)
		return 0;
	return eth->h_proto;
}

/* Parses Ethernet + IPv4 + the L4 ports. Returns 0 or -1 for a malformed or
 * truncated packet (caller decides whether that is a drop or a pass). */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt4 *p)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 ihl_len;

	if (ctx_pull(skb, ETH_HLEN + sizeof(struct iphdr)) < 0)
		return -1;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	ihl_len = ip->ihl * 4;
	p->tot_len = bpf_ntohs(ip->tot_len);
	if (p->tot_len < ihl_len || ETH_HLEN + (__u32)p->tot_len > skb->len)
		return -1;
	__builtin_memcpy(p->smac, eth->h_source, 6);
	__builtin_memcpy(p->dmac, eth->h_dest, 6);
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->ttl = ip->ttl;
	p->is_fragment = (ip->frag_off & bpf_htons(0x1fff)) != 0;
	p->l4_off = ETH_HLEN + ihl_len;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->icmp_type = 0;

	if (p->is_fragment)
		return 0;

	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th;
		__u8 *flags;

		if (ctx_pull(skb, p->l4_off + sizeof(struct tcphdr)) < 0)
			return -1;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		th = data + (p->l4_off & 0x7f);
		if ((void *)(th + 1) > data_end)
			return -1;
		p->sport = th->source;
		p->dport = th->dest;
		flags = (__u8 *)th + 13;
		p->tcp_flags = *flags;
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh;

		if (ctx_pull(skb, p->l4_off + sizeof(struct udphdr)) < 0)
			return -1;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		uh = data + (p->l4_off & 0x7f);
		if ((void *)(uh + 1) > data_end)
			return -1;
		p->sport = uh->source;
		p->dport = uh->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *ic;

		if (ctx_pull(skb, p->l4_off + sizeof(struct icmphdr)) < 0)
			return -1;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		ic = data + (p->l4_off & 0x7f);
		if ((void *)(ic + 1) > data_end)
			return -1;
		p->icmp_type = ic->type;
		if (ic->type == ICMP_ECHO || ic->type == ICMP_ECHOREPLY) {
			/* Echo id plays the port role on both sides so a
			 * request and its reply share one CT entry. */
			p->sport = ic->un.echo.id;
			p->dport = ic->un.echo.id;
		} else {
			p->dport = bpf_htons(((__u16)ic->type << 8) | ic->code);
		}
		break;
	}
	default:
		break;
	}
	return 0;
}

/* Rewrites both MAC addresses. Returns 0 or -1. */
static __always_inline int rewrite_macs(struct __sk_buff *skb, const __u8 *smac,
					const __u8 *dmac)
{
	if (bpf_skb_store_bytes(skb, 0, dmac, 6, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 6, smac, 6, 0) < 0)
		return -1;
	return 0;
}

/* Decrements the IPv4 TTL with an incremental checksum update. Returns 0, or
 * -1 when the TTL would expire (caller hands the packet to the stack so the
 * kernel sends ICMP time exceeded) or the write failed. */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb, struct pkt4 *p)
{
	__u8 new_ttl;

	if (p->ttl <= 1)
		return -1;
	new_ttl = p->ttl - 1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons((__u16)p->ttl << 8),
				bpf_htons((__u16)new_ttl << 8), 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, IP_TTL_OFF, &new_ttl, 1, 0) < 0)
		return -1;
	p->ttl = new_ttl;
	return 0;
}

/* True if addr (network order) is inside the native routing CIDR. */
static __always_inline int in_native_cidr(__be32 addr)
{
	__u32 len = CFG(native_cidr_len);
	__u32 mask;

	if (len == 0 || len > 32)
		return 0;
	mask = len == 32 ? 0xffffffff : ~(0xffffffffU >> len);
	return (bpf_ntohl(addr) & mask) == (bpf_ntohl(CFG(native_cidr)) & mask);
}

#endif /* FIBRIL_COMMON_H */
