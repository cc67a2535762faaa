/* SPDX-License-Identifier: Apache-2.0 */
/* Masquerading (eBPF SNAT to the node IP) - HOOK STUBS.
 * Owned by the masquerading engineer, who replaces these bodies. Called only
 * when FEATURE(FEAT_MASQUERADE). Maps: fibril_nat4 (struct ct4_key with
 * NAT_DIR_* in flags -> struct nat4_value), fibril_ipmasq (LPM of
 * non-masquerade prefixes). Config: CFG(node_ip), in_native_cidr().
 * Return convention (common.h): CTX_CONTINUE, a TC verdict, or -DROP_*.
 */
#ifndef FIBRIL_NAT_H
#define FIBRIL_NAT_H

#include "maps.h"
#include "drop.h"
#include "trace.h"

/* bpf_host egress on the underlay device: traffic leaving the node whose
 * source is a local pod and whose destination is outside the native routing
 * CIDR and outside fibril_ipmasq: allocate a port/ICMP id, rewrite the
 * source to CFG(node_ip), update p. */
static __always_inline int nat4_snat_egress(struct __sk_buff *skb, struct pkt4 *p,
					    struct trace_ctx *tc)
{
	(void)skb; (void)p; (void)tc;
	return CTX_CONTINUE;
}

/* bpf_host ingress on the underlay device: replies to CFG(node_ip) that match
 * a NAT_DIR_INGRESS entry: rewrite the destination back to the pod and
 * update p, so the caller delivers it to the endpoint. */
static __always_inline int nat4_rev_snat_ingress(struct __sk_buff *skb, struct pkt4 *p,
						 struct trace_ctx *tc)
{
	(void)skb; (void)p; (void)tc;
	return CTX_CONTINUE;
}

#endif /* FIBRIL_NAT_H */
