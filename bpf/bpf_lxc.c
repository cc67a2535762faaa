/* SPDX-License-Identifier: Apache-2.0 */
/* tc ingress of a pod's host-side veth (lxc...): traffic FROM the pod.
 *
 * Order (hook points for the later features marked [lb] [nat] [encap]):
 *   ARP -> answer with the host veth MAC
 *   IPv4: source check (endpoint owns the IP and the veth)
 *         from-endpoint trace
 *         [lb] service translation (pre/post-xlate-fwd)
 *         conntrack (create / refresh); reply of a service -> [lb] rev NAT
 *         egress policy
 *         router IP / node IP / host endpoint  -> to-stack
 *         local endpoint                       -> peer redirect (to-endpoint)
 *         [encap] remote node behind a tunnel  -> to-overlay
 *         inside ipv4NativeRoutingCIDR         -> FIB + redirect (to-network)
 *         anything else                        -> to-stack ([nat] on eth1 egress)
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

static __always_inline int from_container_ipv4(struct __sk_buff *skb, struct pkt4 *p,
					       struct trace_ctx *tc)
{
	struct endpoint_info *src_ep, *dst_ep;
	struct lb_state lb = {};
	struct ct_result ct;
	int ret;

	src_ep = lookup_endpoint(p->saddr);
	if (!src_ep || src_ep->ifindex != skb->ifindex)
		return -DROP_INVALID_SOURCE;
	tc->src_identity = src_ep->sec_identity;
	if (FEATURE(FEAT_TRACE_FROM))
		send_trace(skb, p, tc, OBS_FROM_ENDPOINT, 0);

	if (FEATURE(FEAT_LB)) {
		ret = lb4_from_endpoint(skb, p, tc, &lb);
		if (ret != CTX_CONTINUE)
			return ret;
	}

	ct_lookup4(skb, p, 0, &ct);
	tc->ct_state = ct.state;
	if (ct.state != CT_STATE_NEW && !ct.report)
		tc->flags |= TRACE_F_QUIET;
	if (ct.state == CT_STATE_NEW) {
		ret = ct_create4(skb, p, 0, tc->src_identity, lb.rev_nat_index,
				 lb.backend_id, lb.ct_flags);
		if (IS_DROP(ret))
			return ret;
	} else if (ct.state == CT_STATE_REPLY && ct.rev_nat_index != 0 && FEATURE(FEAT_LB)) {
		ret = lb4_rev_nat(skb, p, tc, &ct);
		if (ret != CTX_CONTINUE)
			return ret;
	}

	dst_ep = lookup_endpoint(p->daddr);
	if (dst_ep)
		tc->dst_identity = dst_ep->sec_identity;
	else if (p->daddr == CFG(router_ip) || p->daddr == CFG(node_ip))
		tc->dst_identity = IDENTITY_HOST;
	else
		tc->dst_identity = ipcache_identity4(p->daddr);

	ret = policy_can_egress4(skb, p, src_ep, tc->dst_identity, &ct);
	if (ret != CTX_CONTINUE)
		return ret;

	if (p->daddr == CFG(router_ip) || p->daddr == CFG(node_ip) ||
	    (dst_ep && (dst_ep->flags & ENDPOINT_F_HOST))) {
		send_trace(skb, p, tc, OBS_TO_STACK, 0);
		metrics_add(METRIC_DIR_EGRESS, METRIC_FORWARDED, skb->len);
		return TC_ACT_OK;
	}
	if (dst_ep)
		return endpoint_deliver4(skb, p, dst_ep, tc, 1);

	if (FEATURE(FEAT_TUNNEL)) {
		ret = encap4_from_endpoint(skb, p, tc);
		if (ret != CTX_CONTINUE)
			return ret;
	}

	if (in_native_cidr(p->daddr))
		return fib_redirect4(skb, p, tc);

	send_trace(skb, p, tc, OBS_TO_STACK, 0);
	metrics_add(METRIC_DIR_EGRESS, METRIC_FORWARDED, skb->len);
	return TC_ACT_OK;
}

SEC("classifier/cil_from_container")
int cil_from_container(struct __sk_buff *skb)
{
	struct trace_ctx tc = {};
	struct pkt4 p = {};
	__be16 proto;
	int ret;

	proto = ctx_eth_proto(skb);
	if (proto == bpf_htons(ETH_P_ARP)) {
		ret = arp_respond(skb);
		if (IS_DROP(ret))
			return send_drop(skb, 0, &tc, METRIC_DIR_EGRESS, ret, OBS_FROM_ENDPOINT);
		return ret;
	}
	if (proto != bpf_htons(ETH_P_IP))
		return send_drop(skb, 0, &tc, METRIC_DIR_EGRESS, DROP_UNSUPPORTED_L3,
				 OBS_FROM_ENDPOINT);
	if (parse_ipv4(skb, &p) < 0)
		return send_drop(skb, 0, &tc, METRIC_DIR_EGRESS, DROP_INVALID_PACKET,
				 OBS_FROM_ENDPOINT);
	ret = from_container_ipv4(skb, &p, &tc);
	if (IS_DROP(ret))
		return send_drop(skb, &p, &tc, METRIC_DIR_EGRESS, ret, OBS_FROM_ENDPOINT);
	return ret;
}

char _license[] SEC("license") = "GPL";
