/* SPDX-License-Identifier: Apache-2.0 */
/* Flow events in the fibril_events ring buffer: trace events at observation
 * points and drop events (drop.h). One fixed-size record, struct
 * flow_event, mirrored by fibril_abi::FlowEvent and decoded into
 * fibril_datapath::Flow.
 *
 * Flood protection: with FEAT_TRACE_AGGREGATE (Cilium's "medium" monitor
 * aggregation) a connection is traced when it is new, when a TCP flag shows
 * up for the first time in a direction, and at most once per
 * CT_REPORT_INTERVAL otherwise; trace events are sampled 1-in-N
 * (fibril_config.trace_sample) and every event passes a per-CPU token bucket of
 * fibril_config.events_rate_limit events/s. Nothing is silent: a full ring
 * buffer, a rate-limited and a sampled-out event each bump their counter in
 * fibril_metrics.
 */
#ifndef FIBRIL_TRACE_H
#define FIBRIL_TRACE_H

#include "maps.h"
#include "metrics.h"

#define EVENT_TYPE_TRACE 1
#define EVENT_TYPE_DROP 2

/* Observation points (Hubble names in the comments). */
#define OBS_UNKNOWN 0
#define OBS_FROM_ENDPOINT 1  /* from-endpoint */
#define OBS_TO_ENDPOINT 2    /* to-endpoint */
#define OBS_FROM_NETWORK 3   /* from-network */
#define OBS_TO_NETWORK 4     /* to-network */
#define OBS_FROM_OVERLAY 5   /* from-overlay */
#define OBS_TO_OVERLAY 6     /* to-overlay */
#define OBS_TO_STACK 7       /* to-stack */
#define OBS_PRE_XLATE_FWD 8  /* pre-xlate-fwd */
#define OBS_POST_XLATE_FWD 9 /* post-xlate-fwd */
#define OBS_PRE_XLATE_REV 10 /* pre-xlate-rev */
#define OBS_POST_XLATE_REV 11 /* post-xlate-rev */
#define OBS_FROM_HOST 12     /* from-host */
#define OBS_TO_HOST 13       /* to-host */

#define VERDICT_FORWARDED 1
#define VERDICT_DROPPED 2
#define VERDICT_TRACED 3
#define VERDICT_TRANSLATED 4

/* ct_state of an event */
#define CT_STATE_UNKNOWN 0
#define CT_STATE_NEW 1
#define CT_STATE_ESTABLISHED 2
#define CT_STATE_REPLY 3

struct flow_event {
	__u64 ts_ns;         /* bpf_ktime_get_ns() */
	__u8 event_type;     /* EVENT_TYPE_* */
	__u8 obs_point;      /* OBS_* */
	__u8 verdict;        /* VERDICT_* */
	__u8 drop_reason;    /* DROP_* for drops, 0 otherwise */
	__u32 ifindex;       /* interface the program runs on */
	__u32 dst_ifindex;   /* redirect target, 0 if none */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;        /* ICMP: echo id */
	__be16 dport;        /* ICMP: echo id or type<<8|code */
	__u8 proto;
	__u8 tcp_flags;
	__u8 ct_state;       /* CT_STATE_* */
	__u8 icmp_type;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 pkt_len;       /* skb->len */
	__u32 cpu;
	__u32 pad;
};

/* Anchors the struct in the object's BTF (clang only describes the types of
 * globals, maps and function signatures) for the ABI check; lives in the
 * .rodata map next to fibril_config, never read. */
volatile const struct flow_event fibril_abi_flow_event = {};

/* Per-packet facts the entry programs accumulate for events. */
struct trace_ctx {
	__u32 src_identity;
	__u32 dst_identity;
	__u8 ct_state;
	__u8 flags;          /* TRACE_F_* */
	__u8 pad[2];
};

#define TRACE_F_FROM_OVERLAY (1 << 0) /* set by encap.h after decapsulation */
#define TRACE_F_QUIET (1 << 1)        /* conntrack: nothing new to report */

static __always_inline int events_rate_ok(void)
{
	__u32 zero = 0, limit = CFG(events_rate_limit);
	struct events_rl_state *st;
	__u64 now, elapsed, refill;

	if (limit == 0)
		return 1;
	st = bpf_map_lookup_elem(&fibril_events_rl, &zero);
	if (!st)
		return 1;
	now = bpf_ktime_get_ns();
	elapsed = now - st->last_ns;
	/* Refill: limit tokens per second, bucket depth = limit. */
	if (elapsed >= 1000000000ULL) {
		st->tokens = limit;
		st->last_ns = now;
	} else {
		refill = elapsed * limit / 1000000000ULL;
		if (refill > 0) {
			st->tokens += refill;
			if (st->tokens > limit)
				st->tokens = limit;
			st->last_ns = now;
		}
	}
	if (st->tokens == 0)
		return 0;
	st->tokens -= 1;
	return 1;
}

static __always_inline void emit_event(struct __sk_buff *skb, const struct pkt4 *p,
				       const struct trace_ctx *tc, __u8 type, __u8 obs,
				       __u8 verdict, __u8 reason, __u32 dst_ifindex)
{
	struct flow_event *ev;

	if (!events_rate_ok()) {
		metrics_add(METRIC_DIR_NONE, METRIC_EVENTS_RATE_LIMITED, 0);
		return;
	}
	ev = bpf_ringbuf_reserve(&fibril_events, sizeof(*ev), 0);
	if (!ev) {
		metrics_add(METRIC_DIR_NONE, METRIC_EVENTS_LOST, 0);
		return;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->event_type = type;
	ev->pad = 0;
	ev->obs_point = obs;
	ev->verdict = verdict;
	ev->drop_reason = reason;
	ev->ifindex = skb->ifindex;
	ev->dst_ifindex = dst_ifindex;
	if (p) {
		ev->saddr = p->saddr;
		ev->daddr = p->daddr;
		ev->sport = p->sport;
		ev->dport = p->dport;
		ev->proto = p->proto;
		ev->tcp_flags = p->tcp_flags;
		ev->icmp_type = p->icmp_type;
	} else {
		ev->saddr = 0;
		ev->daddr = 0;
		ev->sport = 0;
		ev->dport = 0;
		ev->proto = 0;
		ev->tcp_flags = 0;
		ev->icmp_type = 0;
	}
	if (tc) {
		ev->src_identity = tc->src_identity;
		ev->dst_identity = tc->dst_identity;
		ev->ct_state = tc->ct_state;
	} else {
		ev->src_identity = 0;
		ev->dst_identity = 0;
		ev->ct_state = 0;
	}
	ev->pkt_len = skb->len;
	ev->cpu = bpf_get_smp_processor_id();
	bpf_ringbuf_submit(ev, 0);
}

/* Trace event at an observation point, subject to sampling. */
static __always_inline void send_trace(struct __sk_buff *skb, const struct pkt4 *p,
				       const struct trace_ctx *tc, __u8 obs,
				       __u32 dst_ifindex)
{
	__u32 n = CFG(trace_sample);
	__u8 verdict;

	if (n == 0)
		return;
	if (FEATURE(FEAT_TRACE_AGGREGATE) && tc && (tc->flags & TRACE_F_QUIET)) {
		metrics_add(METRIC_DIR_NONE, METRIC_EVENTS_AGGREGATED, 0);
		return;
	}
	if (n > 1 && bpf_get_prandom_u32() % n != 0) {
		metrics_add(METRIC_DIR_NONE, METRIC_EVENTS_SAMPLED_OUT, 0);
		return;
	}
	switch (obs) {
	case OBS_PRE_XLATE_FWD:
	case OBS_POST_XLATE_FWD:
	case OBS_PRE_XLATE_REV:
	case OBS_POST_XLATE_REV:
		verdict = VERDICT_TRANSLATED;
		break;
	case OBS_FROM_ENDPOINT:
	case OBS_FROM_NETWORK:
	case OBS_FROM_OVERLAY:
	case OBS_FROM_HOST:
		verdict = VERDICT_TRACED;
		break;
	default:
		verdict = VERDICT_FORWARDED;
	}
	emit_event(skb, p, tc, EVENT_TYPE_TRACE, obs, verdict, 0, dst_ifindex);
}

#endif /* FIBRIL_TRACE_H */
