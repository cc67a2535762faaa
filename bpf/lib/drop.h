/* SPDX-License-Identifier: Apache-2.0 */
/* Drop reasons and send_drop(): every drop is counted in fibril_metrics and
 * reported as a drop event (subject only to the rate limiter, never to
 * sampling). Numbers are ABI: fibril_abi::DropReason mirrors them. */
#ifndef FIBRIL_DROP_H
#define FIBRIL_DROP_H

#include "trace.h"

#define DROP_INVALID_PACKET 1      /* malformed or truncated headers */
#define DROP_UNSUPPORTED_L3 2      /* not IPv4 / ARP */
#define DROP_INVALID_SOURCE 3      /* source IP not owned by the endpoint */
#define DROP_NO_ROUTE 4            /* FIB: no route to destination */
#define DROP_CT_MAP_FULL 5         /* conntrack insertion failed */
#define DROP_POLICY_DENIED 6       /* policy.h */
#define DROP_UNKNOWN_ENDPOINT 7    /* endpoint lookup failed for delivery */
#define DROP_FIB_FAILED 8          /* bpf_fib_lookup error */
#define DROP_NO_SERVICE 9          /* lb.h: service without backends */
#define DROP_NO_BACKEND 10         /* lb.h: backend id not found */
#define DROP_NAT_NO_MAPPING 11     /* nat.h: reverse SNAT miss */
#define DROP_NAT_MAP_FULL 12       /* nat.h: NAT insertion failed */
#define DROP_NAT_NO_PORT 13        /* nat.h: port allocation exhausted */
#define DROP_ENCAP_FAILED 14       /* encap.h */
#define DROP_DECAP_FAILED 15       /* encap.h */
#define DROP_NO_TUNNEL_ENDPOINT 16 /* encap.h: no ipcache tunnel endpoint */
#define DROP_WRITE_FAILED 17       /* a packet rewrite helper failed */
#define DROP_REDIRECT_FAILED 18
#define DROP_INVALID_ARP 19
#define DROP_MAP_UPDATE_FAILED 20  /* any other map update failure */
#define DROP_FRAG_NOT_SUPPORTED 21
#define DROP_TTL_EXCEEDED 22
#define DROP_REASON_MAX 199

/* Counts and reports a drop; returns TC_ACT_SHOT for the caller to return.
 * `reason` is positive (DROP_*); pass -ret for a negative lib return. */
static __always_inline int send_drop(struct __sk_buff *skb, const struct pkt4 *p,
				     const struct trace_ctx *tc, __u8 dir, int reason,
				     __u8 obs)
{
	if (reason < 0)
		reason = -reason;
	if (reason <= 0 || reason > DROP_REASON_MAX)
		reason = DROP_INVALID_PACKET;
	metrics_add(dir, (__u8)reason, skb->len);
	emit_event(skb, p, tc, EVENT_TYPE_DROP, obs, VERDICT_DROPPED, (__u8)reason, 0);
	return TC_ACT_SHOT;
}

#endif /* FIBRIL_DROP_H */
