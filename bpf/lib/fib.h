/* SPDX-License-Identifier: Apache-2.0 */
/* Native routing: FIB lookup + redirect out of the route's device with the
 * MACs of the FIB result. Pod IPs are kept (no NAT, no encapsulation). */
#ifndef FIBRIL_FIB_H
#define FIBRIL_FIB_H

#include "maps.h"
#include "drop.h"
#include "trace.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* Returns a TC verdict or -DROP_*:
 *   route + neighbour      -> redirect (to-network)
 *   neighbour missing,
 *   fragmentation needed,
 *   TTL expiring           -> TC_ACT_OK, the kernel resolves / answers (to-stack)
 *   no route               -> -DROP_NO_ROUTE
 */
static __always_inline int fib_redirect4(struct __sk_buff *skb, struct pkt4 *p,
					 struct trace_ctx *tc)
{
	struct bpf_fib_lookup fib;
	long rc;

	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.l4_protocol = p->proto;
	/* tot_len 0: the kernel checks the MTU with is_skb_forwardable(),
	 * which understands GSO packets. */
	fib.tot_len = 0;
	fib.ipv4_src = p->saddr;
	fib.ipv4_dst = p->daddr;
	fib.ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return -DROP_NO_ROUTE;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
	case BPF_FIB_LKUP_RET_UNSUPP_LWT:
		send_trace(skb, p, tc, OBS_TO_STACK, 0);
		return TC_ACT_OK;
	default:
		if (rc < 0)
			return -DROP_FIB_FAILED;
		send_trace(skb, p, tc, OBS_TO_STACK, 0);
		return TC_ACT_OK;
	}
	if (p->ttl <= 1) {
		send_trace(skb, p, tc, OBS_TO_STACK, 0);
		return TC_ACT_OK;
	}
	if (rewrite_macs(skb, fib.smac, fib.dmac) < 0)
		return -DROP_WRITE_FAILED;
	if (ipv4_dec_ttl(skb, p) < 0)
		return -DROP_WRITE_FAILED;
	__builtin_memcpy(p->smac, fib.smac, 6);
	__builtin_memcpy(p->dmac, fib.dmac, 6);
	send_trace(skb, p, tc, OBS_TO_NETWORK, fib.ifindex);
	metrics_add(METRIC_DIR_EGRESS, METRIC_FORWARDED, skb->len);
	return bpf_redirect(fib.ifindex, 0);
}

#endif /* FIBRIL_FIB_H */
