/* SPDX-License-Identifier: Apache-2.0 */
/* Programs of the node's devices:
 *   cil_from_netdev  tc ingress of the underlay device (eth1)
 *   cil_to_netdev    tc egress of the underlay device
 *   cil_from_host    tc ingress of fibril_host (from fibril_net)
 *   cil_to_host      tc egress of fibril_host (host stack -> pods)
 *
 * from-netdev order: [encap] decapsulation, [nat] reverse SNAT, [lb] NodePort,
 * then local endpoints are delivered by peer redirect (conntrack refreshed,
 * [lb] rev NAT for replies of service connections); everything else goes to
 * the stack untouched. to-netdev: [lb] NodePort replies, [nat] SNAT.
 * Non-IPv4 and malformed packets go to the stack: the kernel owns them.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/trace.h"
#include "lib/drop.h"
#include "lib/conntrack.h"
#include "lib/ipcache.h"
#include "lib/policy.h"
#include "lib/endpoints.h"
#include "lib/fib.h"
#include "lib/lb.h"
#include "lib/nat.h"
#include "lib/encap.h"

/* Delivery of a packet entering the node to a local endpoint. `peer` as in
 * endpoint_deliver4(). Returns CTX_CONTINUE if the destination is not a
 * local pod. */
static __always_inline int to_local_endpoint(struct __sk_buff *skb, struct pkt4 *p,
					     struct trace_ctx *tc, __u8 from_obs, int peer)
{
	struct endpoint_info *ep;
	struct ct_result ct;
	int ret;

	ep = lookup_endpoint(p->daddr);
	if (!ep || (ep->flags & ENDPOINT_F_HOST))
		return CTX_CONTINUE;
	if (!tc->src_identity)
		tc->src_identity = ipcache_identity4(p->saddr);
	ct_lookup4(skb, p, 0, &ct);
	tc->ct_state = ct.state;
	if (ct.state != CT_STATE_NEW && !ct.report)
		tc->flags |= TRACE_F_QUIET;
	if (ct.state == CT_STATE_NEW) {
		ret = ct_create4(skb, p, 0, tc->src_identity, 0, 0, 0);
		if (IS_DROP(ret))
			return ret;
	} else if (ct.state == CT_STATE_REPLY && ct.rev_nat_index != 0 && FEATURE(FEAT_LB)) {
		ret = lb4_rev_nat(skb, p, tc, &ct);
		if (ret != CTX_CONTINUE)
			return ret;
	}
	if (from_obs == OBS_FROM_OVERLAY || FEATURE(FEAT_TRACE_FROM))
		send_trace(skb, p, tc, from_obs, 0);
	return endpoint_deliver4(skb, p, ep, tc, peer);
}

SEC("classifier/cil_from_netdev")
int cil_from_netdev(struct __sk_buff *skb)
{
	struct trace_ctx tc = {};
	struct pkt4 p = {};
	int ret;

	if (ctx_eth_proto(skb) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &p) < 0)
		return TC_ACT_OK;

	if (FEATURE(FEAT_TUNNEL)) {
		ret = decap4_from_network(skb, &p, &tc);
		if (ret != CTX_CONTINUE)
			goto out;
	}
	if (FEATURE(FEAT_MASQUERADE)) {
		ret = nat4_rev_snat_ingress(skb, &p, &tc);
		if (ret != CTX_CONTINUE)
			goto out;
	}
	if (FEATURE(FEAT_LB)) {
		ret = lb4_nodeport_ingress(skb, &p, &tc);
		if (ret != CTX_CONTINUE)
			goto out;
	}
	ret = to_local_endpoint(skb, &p, &tc,
				(tc.flags & TRACE_F_FROM_OVERLAY) ? OBS_FROM_OVERLAY
								  : OBS_FROM_NETWORK,
				1);
	if (ret == CTX_CONTINUE)
		return TC_ACT_OK;
out:
	if (IS_DROP(ret))
		return send_drop(skb, &p, &tc, METRIC_DIR_INGRESS, ret, OBS_FROM_NETWORK);
	return ret;
}

SEC("classifier/cil_to_netdev")
int cil_to_netdev(struct __sk_buff *skb)
{
	struct trace_ctx tc = {};
	struct pkt4 p = {};
	int ret = CTX_CONTINUE;

	if (ctx_eth_proto(skb) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &p) < 0)
		return TC_ACT_OK;
	if (FEATURE(FEAT_LB)) {
		ret = lb4_nodeport_egress(skb, &p, &tc);
		if (ret != CTX_CONTINUE)
			goto out;
	}
	if (FEATURE(FEAT_MASQUERADE)) {
		ret = nat4_snat_egress(skb, &p, &tc);
		if (ret != CTX_CONTINUE)
			goto out;
	}
	return TC_ACT_OK;
out:
	if (IS_DROP(ret))
		return send_drop(skb, &p, &tc, METRIC_DIR_EGRESS, ret, OBS_TO_NETWORK);
	return ret;
}

SEC("classifier/cil_from_host")
int cil_from_host(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

/* Host stack -> pod through fibril_host (routes to pod CIDRs via
 * fibril_host): deliver to the endpoint's veth egress. */
SEC("classifier/cil_to_host")
int cil_to_host(struct __sk_buff *skb)
{
	struct trace_ctx tc = { .src_identity = IDENTITY_HOST };
	struct pkt4 p = {};
	int ret;

	if (ctx_eth_proto(skb) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &p) < 0)
		return TC_ACT_OK;
	ret = to_local_endpoint(skb, &p, &tc, OBS_FROM_HOST, 0);
	/* [encap] host -> remote pod in tunnel mode (the agent routes remote
	 * pod CIDRs via fibril_host): encapsulated with the host identity. */
	if (ret == CTX_CONTINUE && FEATURE(FEAT_TUNNEL)) {
		tc.dst_identity = ipcache_identity4(p.daddr);
		ret = encap4_from_endpoint(skb, &p, &tc);
	}
	if (ret == CTX_CONTINUE)
		return TC_ACT_OK;
	if (IS_DROP(ret))
		return send_drop(skb, &p, &tc, METRIC_DIR_INGRESS, ret, OBS_FROM_HOST);
	return ret;
}

char _license[] SEC("license") = "GPL";
