/* SPDX-License-Identifier: Apache-2.0 */
/* Tunnel (VXLAN / Geneve in eBPF) - HOOK STUBS.
 * Owned by the tunnel engineer, who replaces these bodies. Called only when
 * FEATURE(FEAT_TUNNEL). Config: CFG(tunnel_proto), CFG(tunnel_port),
 * CFG(node_ip), CFG(underlay_ifindex), CFG(pod_mtu). ipcache values carry
 * tunnel_endpoint (remote node IP). Return convention (common.h).
 */
#ifndef FIBRIL_ENCAP_H
#define FIBRIL_ENCAP_H

#include "maps.h"
#include "drop.h"
#include "trace.h"
#include "ipcache.h"

/* bpf_lxc after policy, for non-local destinations: if ipcache says the
 * destination sits behind tunnel_endpoint, encapsulate (VNI = source
 * identity tc->src_identity), emit to-overlay and redirect to the underlay.
 * CTX_CONTINUE when the destination is not tunneled. */
static __always_inline int encap4_from_endpoint(struct __sk_buff *skb, struct pkt4 *p,
						struct trace_ctx *tc)
{
	(void)skb; (void)p; (void)tc;
	return CTX_CONTINUE;
}

/* bpf_host ingress on the underlay device, first thing: if this is a tunnel
 * packet to CFG(node_ip):CFG(tunnel_port), decapsulate, re-parse into p, set
 * tc->src_identity from the VNI and tc->flags |= TRACE_F_FROM_OVERLAY, then
 * return CTX_CONTINUE so the caller delivers to the endpoint (from-overlay).
 * CTX_CONTINUE without touching anything for non-tunnel packets. */
static __always_inline int decap4_from_network(struct __sk_buff *skb, struct pkt4 *p,
					       struct trace_ctx *tc)
{
	(void)skb; (void)p; (void)tc;
	return CTX_CONTINUE;
}

#endif /* FIBRIL_ENCAP_H */
