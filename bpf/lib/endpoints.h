/* SPDX-License-Identifier: Apache-2.0 */
/* Local endpoints: lookup, ARP responder, delivery to a pod. */
#ifndef FIBRIL_ENDPOINTS_H
#define FIBRIL_ENDPOINTS_H

#include "maps.h"
#include "drop.h"
#include "trace.h"
#include "policy.h"

static __always_inline struct endpoint_info *lookup_endpoint(__be32 addr)
{
	struct endpoint_key key = { .ip = addr };

	return bpf_map_lookup_elem(&fibril_endpoints, &key);
}

struct arp_eth_body {
	__u8 sha[6];
	__be32 sip;
	__u8 tha[6];
	__be32 tip;
} __attribute__((packed));

/* Answers an ARP request from a pod with the MAC of its host-side veth
 * (whatever IP it asks for, like Cilium: the pod only ever talks to its
 * gateway). Returns a TC verdict or -DROP_*. Requests from unknown senders
 * and probes (sender IP 0) go to the stack untouched. */
static __always_inline int arp_respond(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct arphdr *arp;
	struct arp_eth_body *body, reply;
	struct endpoint_info *ep;
	__be16 op = bpf_htons(ARPOP_REPLY);
	__u8 smac[6];

	if (ctx_pull(skb, ETH_HLEN + sizeof(*arp) + sizeof(*body)) < 0)
		return -DROP_INVALID_ARP;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	arp = data + ETH_HLEN;
	body = (void *)(arp + 1);
	if ((void *)(body + 1) > data_end)
		return -DROP_INVALID_ARP;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != 6 || arp->ar_pln != 4)
		return -DROP_INVALID_ARP;
	if (arp->ar_op != bpf_htons(ARPOP_REQUEST))
		return TC_ACT_OK;
	if (body->sip == 0 || body->sip == body->tip)
		return TC_ACT_OK; /* DAD probe / gratuitous ARP */
	ep = lookup_endpoint(body->sip);
	if (!ep || ep->ifindex != skb->ifindex)
		return TC_ACT_OK;

	__builtin_memcpy(smac, ep->node_mac, 6);
	__builtin_memcpy(reply.sha, smac, 6);
	reply.sip = body->tip;
	__builtin_memcpy(reply.tha, body->sha, 6);
	reply.tip = body->sip;
	{
		__u8 dmac[6];

		__builtin_memcpy(dmac, eth->h_source, 6);
		if (rewrite_macs(skb, smac, dmac) < 0)
			return -DROP_WRITE_FAILED;
	}
	if (bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct arphdr, ar_op), &op,
				sizeof(op), 0) < 0)
		return -DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(struct arphdr), &reply,
				sizeof(reply), 0) < 0)
		return -DROP_WRITE_FAILED;
	return bpf_redirect(skb->ifindex, 0);
}

/* Delivers an IPv4 packet to a local endpoint: ingress policy, MAC rewrite,
 * TTL decrement, to-endpoint trace, redirect. `peer` selects
 * bpf_redirect_peer (only valid from a tc ingress hook) over a plain
 * redirect to the host veth's egress. Returns a TC verdict or -DROP_*. */
static __always_inline int endpoint_deliver4(struct __sk_buff *skb, struct pkt4 *p,
					     const struct endpoint_info *ep,
					     struct trace_ctx *tc, int peer)
{
	__u8 smac[6], dmac[6];
	__u32 ifindex = ep->ifindex;
	int ret;

	tc->dst_identity = ep->sec_identity;
	ret = policy_can_ingress4(skb, p, ep, tc->src_identity);
	if (ret != CTX_CONTINUE)
		return ret;
	__builtin_memcpy(smac, ep->node_mac, 6);
	__builtin_memcpy(dmac, ep->mac, 6);
	if (rewrite_macs(skb, smac, dmac) < 0)
		return -DROP_WRITE_FAILED;
	if (ipv4_dec_ttl(skb, p) < 0)
		return -DROP_TTL_EXCEEDED;
	__builtin_memcpy(p->smac, smac, 6);
	__builtin_memcpy(p->dmac, dmac, 6);
	send_trace(skb, p, tc, OBS_TO_ENDPOINT, ifindex);
	metrics_add(METRIC_DIR_INGRESS, METRIC_FORWARDED, skb->len);
	if (peer)
		return bpf_redirect_peer(ifindex, 0);
	return bpf_redirect(ifindex, 0);
}

#endif /* FIBRIL_ENDPOINTS_H */
