/* SPDX-License-Identifier: Apache-2.0 */
/* Connection tracking in fibril_ct4 (LRU hash). One entry per connection,
 * keyed by the tuple of its first packet; a packet matching the swapped
 * tuple is a reply. The datapath keeps TCP state flags and refreshes the
 * entry's lifetime (expiry, bpf_ktime_get_ns clock) on every packet; the
 * agent's GC (fibril_datapath::Conntrack::gc) removes expired entries. A
 * failed insertion is a drop with DROP_CT_MAP_FULL, never a crash.
 */
#ifndef FIBRIL_CONNTRACK_H
#define FIBRIL_CONNTRACK_H

#include "maps.h"
#include "drop.h"

#define NSEC_PER_SEC 1000000000ULL
/* Timeouts (Cilium's defaults). */
#define CT_TIMEOUT_TCP_SYN (60ULL * NSEC_PER_SEC)
#define CT_TIMEOUT_TCP_ESTABLISHED (21600ULL * NSEC_PER_SEC)
#define CT_TIMEOUT_TCP_CLOSE (10ULL * NSEC_PER_SEC)
#define CT_TIMEOUT_NON_TCP (60ULL * NSEC_PER_SEC)
/* Trace aggregation: report a direction of a connection at least this often. */
#define CT_REPORT_INTERVAL_S 5

struct ct_result {
	__u8 state;           /* CT_STATE_* (trace.h) */
	__u8 report;          /* 1: new TCP flags or report interval due */
	__u16 flags;          /* CT_F_* after this packet */
	__u16 rev_nat_index;
	__u16 pad2;
	__u32 backend_id;
	__u32 src_sec_id;
};

static __always_inline void ct4_key_from_pkt(struct ct4_key *k, const struct pkt4 *p,
					     int reverse, __u8 key_flags)
{
	if (reverse) {
		k->saddr = p->daddr;
		k->daddr = p->saddr;
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		k->saddr = p->saddr;
		k->daddr = p->daddr;
		k->sport = p->sport;
		k->dport = p->dport;
	}
	k->proto = p->proto;
	k->flags = key_flags;
	k->pad = 0;
}

static __always_inline __u64 ct_timeout(const struct pkt4 *p, __u16 flags)
{
	if (p->proto != IPPROTO_TCP)
		return CT_TIMEOUT_NON_TCP;
	if ((flags & CT_F_TX_CLOSING) && (flags & CT_F_RX_CLOSING))
		return CT_TIMEOUT_TCP_CLOSE;
	if (flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
		return CT_TIMEOUT_TCP_CLOSE;
	if (flags & CT_F_ESTABLISHED)
		return CT_TIMEOUT_TCP_ESTABLISHED;
	return CT_TIMEOUT_TCP_SYN;
}

/* Updates TCP state for a packet in direction `reply`; returns new flags. */
static __always_inline __u16 ct_tcp_update(__u16 flags, __u8 tcp, int reply)
{
	if (tcp & TCP_FLAG_RST)
		return flags | CT_F_TX_CLOSING | CT_F_RX_CLOSING;
	if (!reply) {
		if ((tcp & TCP_FLAG_SYN) && !(tcp & TCP_FLAG_ACK)) {
			/* A new SYN on a closing tuple: port reuse, start over. */
			if (flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
				flags = 0;
			flags |= CT_F_SYN_SEEN;
		} else if (tcp & TCP_FLAG_ACK) {
			if (flags & CT_F_SYNACK_SEEN)
				flags |= CT_F_ESTABLISHED;
		}
		if (tcp & TCP_FLAG_FIN)
			flags |= CT_F_TX_CLOSING;
	} else {
		if ((tcp & TCP_FLAG_SYN) && (tcp & TCP_FLAG_ACK))
			flags |= CT_F_SYNACK_SEEN;
		else if ((tcp & TCP_FLAG_ACK) && (flags & CT_F_SYNACK_SEEN))
			flags |= CT_F_ESTABLISHED;
		if (tcp & TCP_FLAG_FIN)
			flags |= CT_F_RX_CLOSING;
	}
	return flags;
}

/* Looks the packet up in both directions and refreshes the entry found.
 * Returns CT_STATE_NEW (nothing found; *res zeroed), CT_STATE_ESTABLISHED
 * (forward direction) or CT_STATE_REPLY. */
static __always_inline int ct_lookup4(struct __sk_buff *skb, const struct pkt4 *p,
				      __u8 key_flags, struct ct_result *res)
{
	struct ct4_key key;
	struct ct4_value *v;
	__u64 now;
	int reply = 0;

	__builtin_memset(res, 0, sizeof(*res));
	ct4_key_from_pkt(&key, p, 0, key_flags);
	v = bpf_map_lookup_elem(&fibril_ct4, &key);
	if (!v) {
		ct4_key_from_pkt(&key, p, 1, key_flags);
		v = bpf_map_lookup_elem(&fibril_ct4, &key);
		if (!v) {
			res->state = CT_STATE_NEW;
			return CT_STATE_NEW;
		}
		reply = 1;
	}
	now = bpf_ktime_get_ns();
	{
		__u32 now_s = (__u32)(now / NSEC_PER_SEC);
		__u8 seen = reply ? v->tcp_flags_rev : v->tcp_flags_fwd;
		__u32 last = reply ? v->last_report_rev : v->last_report_fwd;

		if ((p->tcp_flags & ~seen) || now_s - last >= CT_REPORT_INTERVAL_S) {
			res->report = 1;
			if (reply)
				v->last_report_rev = now_s;
			else
				v->last_report_fwd = now_s;
		}
	}
	{
		__u16 flags = v->flags;

		if (p->proto == IPPROTO_TCP)
			flags = ct_tcp_update(flags, p->tcp_flags, reply);
		else if (reply)
			flags |= CT_F_ESTABLISHED;
		if (flags != v->flags)
			v->flags = flags;
		v->lifetime = now + ct_timeout(p, flags);
		res->flags = flags;
	}
	if (reply) {
		__sync_fetch_and_add(&v->packets_rev, 1);
		__sync_fetch_and_add(&v->bytes_rev, skb->len);
		v->tcp_flags_rev |= p->tcp_flags;
	} else {
		__sync_fetch_and_add(&v->packets_fwd, 1);
		__sync_fetch_and_add(&v->bytes_fwd, skb->len);
		v->tcp_flags_fwd |= p->tcp_flags;
	}
	res->rev_nat_index = v->rev_nat_index;
	res->backend_id = v->backend_id;
	res->src_sec_id = v->src_sec_id;
	res->state = reply ? CT_STATE_REPLY : CT_STATE_ESTABLISHED;
	return res->state;
}

/* Creates the entry for a new connection. Returns 0 or -DROP_CT_MAP_FULL. */
static __always_inline int ct_create4(struct __sk_buff *skb, const struct pkt4 *p,
				      __u8 key_flags, __u32 src_sec_id,
				      __u16 rev_nat_index, __u32 backend_id,
				      __u16 extra_flags)
{
	struct ct4_key key;
	struct ct4_value v;
	__u64 now = bpf_ktime_get_ns();
	__u16 flags = extra_flags;
	long err;

	ct4_key_from_pkt(&key, p, 0, key_flags);
	__builtin_memset(&v, 0, sizeof(v));
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_FLAG_SYN)
			flags |= CT_F_SYN_SEEN;
		else
			/* Mid-stream pickup (e.g. CT lost): trust it. */
			flags |= CT_F_SEEN_NON_SYN | CT_F_ESTABLISHED;
		if (p->tcp_flags & TCP_FLAG_RST)
			flags |= CT_F_TX_CLOSING | CT_F_RX_CLOSING;
		if (p->tcp_flags & TCP_FLAG_FIN)
			flags |= CT_F_TX_CLOSING;
	}
	v.created = now;
	v.lifetime = now + ct_timeout(p, flags);
	v.packets_fwd = 1;
	v.bytes_fwd = skb->len;
	v.tcp_flags_fwd = p->tcp_flags;
	v.src_sec_id = src_sec_id;
	v.rev_nat_index = rev_nat_index;
	v.backend_id = backend_id;
	v.flags = flags;
	v.ifindex = (__u16)skb->ifindex;
	v.last_report_fwd = (__u32)(now / NSEC_PER_SEC);
	err = bpf_map_update_elem(&fibril_ct4, &key, &v, BPF_NOEXIST);
	if (err == -17 /* EEXIST: another CPU created it first */)
		return 0;
	if (err < 0)
		return -DROP_CT_MAP_FULL;
	return 0;
}

#endif /* FIBRIL_CONNTRACK_H */
