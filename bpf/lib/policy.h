/* SPDX-License-Identifier: Apache-2.0 */
/* Policy hook points. Currently allow everything; the network policy issue
 * fills these in against fibril_policy (struct policy_key/policy_value).
 * Contract: return CTX_CONTINUE to allow, -DROP_POLICY_DENIED to deny.
 * Called once per new connection direction and for established traffic
 * (ct->state tells which), after service translation. */
#ifndef FIBRIL_POLICY_H
#define FIBRIL_POLICY_H

#include "maps.h"
#include "drop.h"
#include "conntrack.h"

/* Egress of a local endpoint (src_ep) towards dst_identity. */
static __always_inline int policy_can_egress4(struct __sk_buff *skb, const struct pkt4 *p,
					      const struct endpoint_info *src_ep,
					      __u32 dst_identity,
					      const struct ct_result *ct)
{
	(void)skb; (void)p; (void)src_ep; (void)dst_identity; (void)ct;
	return CTX_CONTINUE;
}

/* Ingress into a local endpoint (dst_ep) from src_identity. */
static __always_inline int policy_can_ingress4(struct __sk_buff *skb, const struct pkt4 *p,
					       const struct endpoint_info *dst_ep,
					       __u32 src_identity)
{
	(void)skb; (void)p; (void)dst_ep; (void)src_identity;
	return CTX_CONTINUE;
}

#endif /* FIBRIL_POLICY_H */
