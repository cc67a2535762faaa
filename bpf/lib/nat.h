/* SPDX-License-Identifier: Apache-2.0 */
/* Masquerading: eBPF SNAT to the node IP on the underlay device.
 *
 * fibril_nat4 holds two entries per translated flow, keyed by struct ct4_key
 * with NAT_DIR_* in flags:
 *   EGRESS   pod:port -> remote:rport        => to node_ip:nport
 *   INGRESS  remote:rport -> node_ip:nport   => to pod:port
 * (ICMP echo: sport = dport = echo id on both sides, as parse_ipv4 does.)
 * The INGRESS entry is inserted first with BPF_NOEXIST: it is the one that
 * claims the node port, so two flows can never share a reply tuple; the
 * EGRESS entry follows, and a failure there removes the INGRESS entry again,
 * so no half entry stays behind.
 *
 * Port choice: the pod's own port if it lies in the SNAT range (ICMP: the
 * original id), then NAT_ALLOC_TRIES candidates min + mix(hash(tuple) + i *
 * golden ratio) % range inside [snat_port_min, snat_port_max] (independent
 * probes: at 80% occupancy 32 tries fail with probability 0.8^32).
 *
 * Replies of connections opened from outside towards a pod (conntrack has
 * them as remote -> pod) are never translated.
 *
 * Connections of the node itself leaving with source node_ip towards a
 * masqueraded destination get an identity pair (to_addr = node_ip, same
 * port), so pod translations never pick a port a host connection uses.
 *
 * ICMP errors about a translated flow (fragmentation needed, unreachable,
 * time exceeded) are translated back too, quoted header included.
 *
 * Entries carry created/last_seen (bpf_ktime_get_ns); the agent's GC
 * (fibril_datapath::nat::Nat::gc) removes idle pairs.
 */
#ifndef FIBRIL_NAT_H
#define FIBRIL_NAT_H

#include "maps.h"
#include "drop.h"
#include "trace.h"
#include "endpoints.h"
#include "ipcache.h"
#include "conntrack.h"

#define NAT_PORT_MIN_DEFAULT 32768
#define NAT_PORT_MAX_DEFAULT 60999
#define NAT_ALLOC_TRIES 32
#define NAT_HASH_STEP 0x9e3779b9U

#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6
#define ICMP_CSUM_OFF 2
#define ICMP_ID_OFF 4

static __always_inline __u32 nat_port_min(void)
{
	return CFG(snat_port_min) ? CFG(snat_port_min) : NAT_PORT_MIN_DEFAULT;
}

static __always_inline __u32 nat_port_max(void)
{
	__u32 max = CFG(snat_port_min) ? CFG(snat_port_max) : NAT_PORT_MAX_DEFAULT;

	return max < nat_port_min() ? nat_port_min() : max;
}

/* Protocols we translate; for ICMP only echo (the id is the "port"). */
static __always_inline int nat_proto_ok(const struct pkt4 *p, __u8 icmp_type)
{
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)
		return 1;
	return p->proto == IPPROTO_ICMP && p->icmp_type == icmp_type;
}

/* Destination that must keep the pod IP: native routing CIDR, another node
 * of the cluster (ipcache remote-node entry), a non-masquerade prefix. */
static __always_inline int nat_dst_excluded(__be32 daddr)
{
	struct ipmasq_key mk = { .prefixlen = 32, .ip = daddr };
	struct ipcache_value *ic;

	if (in_native_cidr(daddr))
		return 1;
	ic = ipcache_lookup4(daddr);
	if (ic && ((ic->flags & IPCACHE_F_REMOTE_NODE) ||
		   ic->sec_identity == IDENTITY_REMOTE_NODE ||
		   ic->sec_identity == IDENTITY_HOST))
		return 1;
	return bpf_map_lookup_elem(&fibril_ipmasq, &mk) != 0;
}

static __always_inline __u32 nat_mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7feb352dU;
	h ^= h >> 15;
	h *= 0x846ca68bU;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 nat_hash(const struct pkt4 *p)
{
	__u32 h = bpf_ntohl(p->saddr) * 2654435761U;

	h ^= bpf_ntohl(p->daddr) * 2246822519U;
	h ^= ((__u32)bpf_ntohs(p->sport) << 16 | bpf_ntohs(p->dport)) * 3266489917U;
	h ^= p->proto;
	h ^= h >> 15;
	h *= 668265263U;
	h ^= h >> 13;
	return h;
}

/* Rewrites one address (source if `src`) and the port / ICMP id next to it,
 * with checksum updates. `port_off` is the L4 offset of the port/id field.
 * Returns 0 or -DROP_WRITE_FAILED. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct pkt4 *p,
				       int src, __be32 old_addr, __be32 new_addr,
				       __be16 old_port, __be16 new_port)
{
	__u32 addr_off = src ? IP_SADDR_OFF : IP_DADDR_OFF;
	__u32 l4 = p->l4_off;
	__u32 csum_off, port_off;
	__u64 pflag = BPF_F_PSEUDO_HDR;

	switch (p->proto) {
	case IPPROTO_TCP:
		csum_off = l4 + TCP_CSUM_OFF;
		port_off = l4 + (src ? 0 : 2);
		break;
	case IPPROTO_UDP:
		csum_off = l4 + UDP_CSUM_OFF;
		port_off = l4 + (src ? 0 : 2);
		pflag |= BPF_F_MARK_MANGLED_0;
		break;
	default: /* ICMP echo: no pseudo header, the id is the port */
		csum_off = l4 + ICMP_CSUM_OFF;
		port_off = l4 + ICMP_ID_OFF;
		pflag = 0;
		break;
	}

	if (old_addr != new_addr) {
		if (pflag &&
		    bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, pflag | 4) < 0)
			return -DROP_WRITE_FAILED;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) < 0)
			return -DROP_WRITE_FAILED;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	if (old_port != new_port) {
		__u64 f = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, f | 2) < 0)
			return -DROP_WRITE_FAILED;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	return 0;
}

/* Reply key of a flow translated to node_ip:nport. */
static __always_inline void nat_ingress_key(struct ct4_key *k, const struct pkt4 *p,
					    __be16 nport)
{
	k->saddr = p->daddr;
	k->daddr = CFG(node_ip);
	k->sport = p->proto == IPPROTO_ICMP ? nport : p->dport;
	k->dport = nport;
	k->proto = p->proto;
	k->flags = NAT_DIR_INGRESS;
	k->pad = 0;
}

/* Finds or creates the pair for the packet's tuple. `keep_port`: identity
 * mapping for the node's own connections (no search). Returns 0 with *out
 * filled, or -DROP_NAT_*. */
static __always_inline int nat4_get_or_create(const struct pkt4 *p, int keep_port,
					      struct nat4_value *out)
{
	struct ct4_key ek, ik;
	struct nat4_value ev = {}, iv = {};
	struct nat4_value *found;
	__u64 now = bpf_ktime_get_ns();
	__u32 min = nat_port_min(), max = nat_port_max();
	__u32 range = max - min + 1;
	__u32 orig = bpf_ntohs(p->sport);
	__u32 h, i, port;
	long err;

	ct4_key_from_pkt(&ek, p, 0, NAT_DIR_EGRESS);
	found = bpf_map_lookup_elem(&fibril_nat4, &ek);
	if (found) {
		found->last_seen = now;
		*out = *found;
		/* The LRU may have evicted the reply half: put it back. */
		nat_ingress_key(&ik, p, found->to_port);
		if (!bpf_map_lookup_elem(&fibril_nat4, &ik)) {
			iv.to_addr = p->saddr;
			iv.to_port = p->sport;
			iv.created = found->created;
			iv.last_seen = now;
			bpf_map_update_elem(&fibril_nat4, &ik, &iv, BPF_NOEXIST);
		}
		return 0;
	}

	iv.to_addr = p->saddr;
	iv.to_port = p->sport;
	iv.created = now;
	iv.last_seen = now;
	ev.to_addr = CFG(node_ip);
	ev.created = now;
	ev.last_seen = now;
	h = nat_hash(p);

	for (i = 0; i <= NAT_ALLOC_TRIES; i++) {
		if (i == 0) {
			/* The original port first (ICMP ids: always). */
			if (!keep_port && p->proto != IPPROTO_ICMP &&
			    (orig < min || orig > max))
				continue;
			port = orig;
		} else {
			if (keep_port)
				break;
			/* Independent probes: linear ones cluster. */
			port = min + nat_mix(h + i * NAT_HASH_STEP) % range;
		}
		nat_ingress_key(&ik, p, bpf_htons((__u16)port));
		err = bpf_map_update_elem(&fibril_nat4, &ik, &iv, BPF_NOEXIST);
		if (err == -17 /* EEXIST: port taken for this remote */)
			continue;
		if (err < 0)
			return -DROP_NAT_MAP_FULL;
		ev.to_port = bpf_htons((__u16)port);
		err = bpf_map_update_elem(&fibril_nat4, &ek, &ev, BPF_NOEXIST);
		if (err == 0) {
			*out = ev;
			return 0;
		}
		/* Undo the claim: never leave half a pair. */
		bpf_map_delete_elem(&fibril_nat4, &ik);
		if (err != -17)
			return -DROP_NAT_MAP_FULL;
		/* Another CPU created this flow's pair first: use it. */
		found = bpf_map_lookup_elem(&fibril_nat4, &ek);
		if (!found)
			return -DROP_NAT_MAP_FULL;
		*out = *found;
		return 0;
	}
	return -DROP_NAT_NO_PORT;
}

/* Local pod (or the router IP) as source? */
static __always_inline int nat_src_is_local_pod(__be32 saddr)
{
	struct endpoint_info *ep;

	if (saddr == CFG(router_ip))
		return 1;
	ep = lookup_endpoint(saddr);
	return ep && !(ep->flags & ENDPOINT_F_HOST);
}

/* bpf_host egress on the underlay device: traffic leaving the node whose
 * source is a local pod and whose destination is outside the native routing
 * CIDR, other nodes and fibril_ipmasq: allocate a port/ICMP id, rewrite the
 * source to CFG(node_ip), update p. */
static __always_inline int nat4_snat_egress(struct __sk_buff *skb, struct pkt4 *p,
					    struct trace_ctx *tc)
{
	struct nat4_value v;
	int host, ret;

	if (!CFG(node_ip))
		return CTX_CONTINUE;
	host = p->saddr == CFG(node_ip);
	if (!host && !nat_src_is_local_pod(p->saddr))
		return CTX_CONTINUE;
	if (nat_dst_excluded(p->daddr))
		return CTX_CONTINUE;
	if (p->is_fragment)
		/* No L4 header to translate: sending it with the pod IP would
		 * leak it, and the first fragment's mapping is unknown. */
		return host ? CTX_CONTINUE : -DROP_FRAG_NOT_SUPPORTED;
	if (!nat_proto_ok(p, ICMP_ECHO))
		return CTX_CONTINUE;
	if (!host) {
		/* A reply of a connection the remote side opened (the pod's CIDR
		 * is routed to it): conntrack holds it as remote -> pod. Keep
		 * the pod IP, the remote expects it. */
		struct ct4_key ck;

		ct4_key_from_pkt(&ck, p, 1, 0);
		if (bpf_map_lookup_elem(&fibril_ct4, &ck))
			return CTX_CONTINUE;
	}

	ret = nat4_get_or_create(p, host, &v);
	if (ret < 0)
		return host ? CTX_CONTINUE : ret;
	if (host)
		return CTX_CONTINUE;
	if (!tc->src_identity) {
		struct endpoint_info *ep = lookup_endpoint(p->saddr);

		tc->src_identity = ep ? ep->sec_identity : IDENTITY_HOST;
	}
	ret = nat_rewrite(skb, p, 1, p->saddr, v.to_addr, p->sport, v.to_port);
	if (ret < 0)
		return ret;
	p->saddr = v.to_addr;
	p->sport = v.to_port;
	if (p->proto == IPPROTO_ICMP)
		p->dport = v.to_port;
	metrics_add(METRIC_DIR_EGRESS, METRIC_FORWARDED, skb->len);
	send_trace(skb, p, tc, OBS_TO_NETWORK, skb->ifindex);
	return TC_ACT_OK;
}

/* Incremental update of a 16-bit ones' complement checksum for a 32-bit
 * field change (RFC 1624), for the checksum of an IP header quoted inside
 * an ICMP error (no helper reaches it). */
static __always_inline __sum16 csum_replace4_val(__sum16 check, __be32 from, __be32 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(from & 0xffff);
	sum += (__u16)~(from >> 16);
	sum += (to & 0xffff);
	sum += (to >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

struct nat_icmp_inner {
	struct iphdr ip;
	__be16 sport;  /* TCP/UDP source port; ICMP: type, code */
	__be16 dport;  /* TCP/UDP destination port; ICMP: checksum */
	__be16 w2;     /* ICMP: echo id */
	__be16 w3;
};

/* ICMP error (destination unreachable, e.g. fragmentation needed; time
 * exceeded) about a masqueraded flow, sent to the node IP: the quoted
 * packet is node_ip:nport -> remote. Rewrites the outer destination and the
 * quoted source (address, port / echo id, quoted IP checksum) back to the
 * pod, so its stack learns the path MTU or the failure. The quoted L4
 * checksum is left alone (it covers bytes the error does not carry).
 * Returns CTX_CONTINUE (p updated when translated) or -DROP_*. */
static __always_inline int nat4_rev_snat_icmp_error(struct __sk_buff *skb, struct pkt4 *p)
{
	struct nat_icmp_inner in;
	struct ct4_key k = {};
	struct nat4_value *v;
	__u32 icmp_csum_off = p->l4_off + ICMP_CSUM_OFF;
	__u32 inner_off = p->l4_off + 8;
	__u32 port_off;
	__be16 nport, to_port;
	__be32 to_addr;
	__sum16 new_check;

	if (bpf_skb_load_bytes(skb, inner_off, &in, sizeof(in)) < 0)
		return CTX_CONTINUE;
	if (in.ip.version != 4 || in.ip.ihl != 5 || in.ip.saddr != CFG(node_ip))
		return CTX_CONTINUE;
	k.saddr = in.ip.daddr;
	k.daddr = CFG(node_ip);
	k.proto = in.ip.protocol;
	k.flags = NAT_DIR_INGRESS;
	switch (in.ip.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		nport = in.sport;
		k.sport = in.dport;
		k.dport = nport;
		port_off = inner_off + sizeof(struct iphdr);
		break;
	case IPPROTO_ICMP:
		if ((bpf_ntohs(in.sport) >> 8) != ICMP_ECHO)
			return CTX_CONTINUE;
		nport = in.w2;
		k.sport = nport;
		k.dport = nport;
		port_off = inner_off + sizeof(struct iphdr) + ICMP_ID_OFF;
		break;
	default:
		return CTX_CONTINUE;
	}
	v = bpf_map_lookup_elem(&fibril_nat4, &k);
	if (!v)
		return CTX_CONTINUE;
	to_addr = v->to_addr;
	to_port = v->to_port;
	if (to_addr == CFG(node_ip))
		return CTX_CONTINUE;

	/* Quoted source address and the quoted header's checksum. */
	new_check = csum_replace4_val(in.ip.check, in.ip.saddr, to_addr);
	if (bpf_l4_csum_replace(skb, icmp_csum_off, in.ip.saddr, to_addr, 4) < 0 ||
	    bpf_l4_csum_replace(skb, icmp_csum_off, in.ip.check, new_check, 2) < 0 ||
	    bpf_skb_store_bytes(skb, inner_off + offsetof(struct iphdr, saddr), &to_addr, 4, 0) < 0 ||
	    bpf_skb_store_bytes(skb, inner_off + offsetof(struct iphdr, check), &new_check, 2, 0) < 0)
		return -DROP_WRITE_FAILED;
	/* Quoted source port / echo id. */
	if (nport != to_port &&
	    (bpf_l4_csum_replace(skb, icmp_csum_off, nport, to_port, 2) < 0 ||
	     bpf_skb_store_bytes(skb, port_off, &to_port, 2, 0) < 0))
		return -DROP_WRITE_FAILED;
	/* Outer destination: IP header checksum only (ICMP has no pseudo
	 * header). */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, p->daddr, to_addr, 4) < 0 ||
	    bpf_skb_store_bytes(skb, IP_DADDR_OFF, &to_addr, 4, 0) < 0)
		return -DROP_WRITE_FAILED;
	p->daddr = to_addr;
	return CTX_CONTINUE;
}

/* bpf_host ingress on the underlay device: replies to CFG(node_ip) that match
 * a NAT_DIR_INGRESS entry: rewrite the destination back to the pod and
 * update p, so the caller delivers it to the endpoint. Misses and the
 * node's own connections continue untouched (they belong to the stack). */
static __always_inline int nat4_rev_snat_ingress(struct __sk_buff *skb, struct pkt4 *p,
						 struct trace_ctx *tc)
{
	struct ct4_key k;
	struct nat4_value *v;
	__be32 to_addr;
	__be16 to_port;
	int ret;

	(void)tc;
	if (!CFG(node_ip) || p->daddr != CFG(node_ip) || p->is_fragment)
		return CTX_CONTINUE;
	if (p->proto == IPPROTO_ICMP &&
	    (p->icmp_type == ICMP_DEST_UNREACH || p->icmp_type == ICMP_TIME_EXCEEDED))
		return nat4_rev_snat_icmp_error(skb, p);
	if (!nat_proto_ok(p, ICMP_ECHOREPLY))
		return CTX_CONTINUE;
	ct4_key_from_pkt(&k, p, 0, NAT_DIR_INGRESS);
	v = bpf_map_lookup_elem(&fibril_nat4, &k);
	if (!v)
		return CTX_CONTINUE;
	v->last_seen = bpf_ktime_get_ns();
	to_addr = v->to_addr;
	to_port = v->to_port;
	if (to_addr == CFG(node_ip))
		return CTX_CONTINUE; /* the node's own connection */
	ret = nat_rewrite(skb, p, 0, p->daddr, to_addr, p->dport, to_port);
	if (ret < 0)
		return ret;
	p->daddr = to_addr;
	p->dport = to_port;
	if (p->proto == IPPROTO_ICMP)
		p->sport = to_port;
	return CTX_CONTINUE;
}

#endif /* FIBRIL_NAT_H */
