/* SPDX-License-Identifier: Apache-2.0 */
/* Service load balancing (kube-proxy replacement) - HOOK STUBS.
 * Owned by the load-balancing engineer, who replaces these bodies; the entry
 * programs already call them at the right places and only when
 * FEATURE(FEAT_LB) is set (a load-time constant, so disabled code is pruned).
 * Maps: fibril_lb4_services, fibril_lb4_backends, fibril_lb4_reverse_nat
 * (maps.h). Return convention (common.h): CTX_CONTINUE, a TC verdict, or
 * -DROP_*.
 */
#ifndef FIBRIL_LB_H
#define FIBRIL_LB_H

#include "maps.h"
#include "drop.h"
#include "trace.h"
#include "conntrack.h"

/* What a translation wants recorded in the connection's CT entry. */
struct lb_state {
	__u16 rev_nat_index; /* 0 = not a service connection */
	__u16 ct_flags;      /* extra CT_F_* (CT_F_NODE_PORT, CT_F_HAIRPIN) */
	__u32 backend_id;
};

/* bpf_lxc, traffic from a pod, before conntrack: if p->daddr:p->dport is a
 * service frontend, emit pre-xlate-fwd, pick a backend (or reuse the one in
 * a CT entry keyed with CT_KEY_F_SERVICE), DNAT the packet, update p
 * (daddr/dport, l4 checksums done), fill *lb, emit post-xlate-fwd.
 * Services without backends: -DROP_NO_SERVICE. */
static __always_inline int lb4_from_endpoint(struct __sk_buff *skb, struct pkt4 *p,
					     struct trace_ctx *tc, struct lb_state *lb)
{
	(void)skb; (void)p; (void)tc; (void)lb;
	return CTX_CONTINUE;
}

/* Reply of a service connection (ct->state == CT_STATE_REPLY and
 * ct->rev_nat_index != 0), in bpf_lxc (backend pod replying) and in
 * bpf_host ingress (reply from a remote backend): emit pre-xlate-rev,
 * rewrite the source back to the frontend from fibril_lb4_reverse_nat,
 * update p, emit post-xlate-rev. */
static __always_inline int lb4_rev_nat(struct __sk_buff *skb, struct pkt4 *p,
				       struct trace_ctx *tc, const struct ct_result *ct)
{
	(void)skb; (void)p; (void)tc; (void)ct;
	return CTX_CONTINUE;
}

/* bpf_host ingress on the underlay device, before local delivery:
 * NodePort / LoadBalancer / externalIP frontends (eTP=Local via
 * LB_SCOPE_INT), SNAT to the node IP for remote backends. May deliver or
 * redirect itself (return the verdict) or rewrite p and continue. */
static __always_inline int lb4_nodeport_ingress(struct __sk_buff *skb, struct pkt4 *p,
						struct trace_ctx *tc)
{
	(void)skb; (void)p; (void)tc;
	return CTX_CONTINUE;
}

/* bpf_host egress on the underlay device: NodePort replies (reverse DNAT/
 * SNAT of connections flagged CT_F_NODE_PORT). */
static __always_inline int lb4_nodeport_egress(struct __sk_buff *skb, struct pkt4 *p,
					       struct trace_ctx *tc)
{
	(void)skb; (void)p; (void)tc;
	return CTX_CONTINUE;
}

#endif /* FIBRIL_LB_H */
