/* SPDX-License-Identifier: Apache-2.0 */
/* Service load balancing (kube-proxy replacement), socket-less at tc level.
 * Called only when FEATURE(FEAT_LB). Maps: fibril_lb4_services (slot 0 =
 * the service, slots 1..count = backend ids), fibril_lb4_backends,
 * fibril_lb4_reverse_nat, fibril_lb4_snat (NodePort SNAT state), and
 * fibril_ct4 (a CT_KEY_F_SERVICE entry per client->frontend tuple keeps the
 * chosen backend: sticky per connection; the post-DNAT entry carries the
 * rev-NAT index so replies are translated back).
 *
 * Paths:
 *   pod -> frontend           lb4_from_endpoint (bpf_lxc): DNAT; a pod that
 *                             reaches itself is also SNATed to LB_HAIRPIN_IP.
 *   node -> ClusterIP         lb4_nodeport_egress (underlay egress): the
 *                             node's route to the service CIDR leaves through
 *                             the underlay; DNAT there, local backends are
 *                             redirected to their veth.
 *   outside -> NodePort/LB IP lb4_nodeport_ingress (underlay ingress): DNAT;
 *                             remote backends also get SNAT to node_ip (state
 *                             in fibril_lb4_snat) so replies come back here.
 *   replies                   lb4_rev_nat (CT reply with rev_nat_index) and
 *                             the LB4_SNAT_REV lookup in lb4_nodeport_ingress.
 * Return convention (common.h): CTX_CONTINUE, a TC verdict, or -DROP_*.
 */
#ifndef FIBRIL_LB_H
#define FIBRIL_LB_H

#include "maps.h"
#include "drop.h"
#include "trace.h"
#include "conntrack.h"
#include "endpoints.h"
#include "ipcache.h"
#include "encap.h"

/* Source of hairpinned connections (a pod reaching itself through a
 * service): 169.254.42.1, as Cilium's IPV4_LOOPBACK. Network order. */
#define LB_HAIRPIN_IP bpf_htonl(0xa9fe2a01)

/* Source ports used for NodePort SNAT to the node IP. */
#define LB_SNAT_PORT_MIN 61000
#define LB_SNAT_PORT_RANGE 4000
#define LB_SNAT_TRIES 4

#ifndef BPF_F_MARK_MANGLED_0
#define BPF_F_MARK_MANGLED_0 (1ULL << 5)
#endif
#ifndef BPF_F_PSEUDO_HDR
#define BPF_F_PSEUDO_HDR (1ULL << 4)
#endif

/* What a translation wants recorded in the connection's CT entry. */
struct lb_state {
	__u16 rev_nat_index; /* 0 = not a service connection */
	__u16 ct_flags;      /* extra CT_F_* (CT_F_NODE_PORT, CT_F_HAIRPIN) */
	__u32 backend_id;
};

/* ---- packet rewriting ------------------------------------------------ */

static __always_inline int lb_l4_csum_off(const struct pkt4 *p, __u32 *off, __u64 *flags)
{
	if (p->proto == IPPROTO_TCP) {
		*off = p->l4_off + offsetof(struct tcphdr, check);
		*flags = 0;
		return 0;
	}
	if (p->proto == IPPROTO_UDP) {
		*off = p->l4_off + offsetof(struct udphdr, check);
		*flags = BPF_F_MARK_MANGLED_0;
		return 0;
	}
	return -1;
}

/* Rewrites the source (dst = 0) or destination (dst = 1) address and port
 * with incremental L3/L4 checksum updates, and updates p. */
static __always_inline int lb_rewrite4(struct __sk_buff *skb, struct pkt4 *p, int dst,
				       __be32 new_addr, __be16 new_port)
{
	__be32 old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u32 csum_off;
	__u64 csum_flags;

	if (lb_l4_csum_off(p, &csum_off, &csum_flags) < 0)
		return -DROP_WRITE_FAILED;
	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
					csum_flags | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
			return -DROP_WRITE_FAILED;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
			return -DROP_WRITE_FAILED;
		if (bpf_skb_store_bytes(skb, dst ? IP_DADDR_OFF : IP_SADDR_OFF, &new_addr,
					sizeof(new_addr), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
					csum_flags | sizeof(new_port)) < 0)
			return -DROP_WRITE_FAILED;
		if (bpf_skb_store_bytes(skb, p->l4_off + (dst ? 2 : 0), &new_port,
					sizeof(new_port), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	if (dst) {
		p->daddr = new_addr;
		p->dport = new_port;
	} else {
		p->saddr = new_addr;
		p->sport = new_port;
	}
	return 0;
}

/* Forwards a translated packet by FIB lookup: redirect with the route's
 * MACs, or bpf_redirect_neigh when the neighbour is not resolved yet. Used
 * where the stack must not see the packet (its source is a node address,
 * which the stack would drop as martian). `egress`: running on tc egress of
 * the route's own device, where the packet may just continue. */
static __always_inline int lb_forward4(struct __sk_buff *skb, struct pkt4 *p,
				       struct trace_ctx *tc, int egress)
{
	struct bpf_fib_lookup fib;
	long rc;

	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = p->proto;
	fib.ipv4_src = p->saddr;
	fib.ipv4_dst = p->daddr;
	fib.ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH && fib.ifindex) {
		send_trace(skb, p, tc, OBS_TO_NETWORK, fib.ifindex);
		metrics_add(METRIC_DIR_EGRESS, METRIC_FORWARDED, skb->len);
		return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		if (rc == BPF_FIB_LKUP_RET_BLACKHOLE || rc == BPF_FIB_LKUP_RET_UNREACHABLE ||
		    rc == BPF_FIB_LKUP_RET_PROHIBIT || rc == BPF_FIB_LKUP_RET_NOT_FWDED)
			return -DROP_NO_ROUTE;
		send_trace(skb, p, tc, OBS_TO_STACK, 0);
		return TC_ACT_OK;
	}
	if (rewrite_macs(skb, fib.smac, fib.dmac) < 0)
		return -DROP_WRITE_FAILED;
	__builtin_memcpy(p->smac, fib.smac, 6);
	__builtin_memcpy(p->dmac, fib.dmac, 6);
	send_trace(skb, p, tc, OBS_TO_NETWORK, fib.ifindex);
	metrics_add(METRIC_DIR_EGRESS, METRIC_FORWARDED, skb->len);
	if (egress && fib.ifindex == skb->ifindex)
		return TC_ACT_OK;
	if (!egress && ipv4_dec_ttl(skb, p) < 0)
		return -DROP_TTL_EXCEEDED;
	return bpf_redirect(fib.ifindex, 0);
}

/* A translated packet to a backend on another node: through the tunnel
 * when ipcache puts the backend behind one (routingMode=tunnel), else by
 * FIB (native routing). */
static __always_inline int lb_to_remote_backend(struct __sk_buff *skb, struct pkt4 *p,
						struct trace_ctx *tc, int egress)
{
	int ret;

	if (FEATURE(FEAT_TUNNEL)) {
		ret = encap4_from_endpoint(skb, p, tc);
		if (ret != CTX_CONTINUE)
			return ret;
	}
	return lb_forward4(skb, p, tc, egress);
}

/* ---- service lookup and backend selection ---------------------------- */

static __always_inline int lb_l4_ok(const struct pkt4 *p)
{
	return !p->is_fragment && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP);
}

/* The service entry (slot 0) of the packet's destination, or NULL. A
 * frontend address 0.0.0.0 is a NodePort on every node address (here:
 * CFG(node_ip)). `internal`: in-cluster traffic, which uses the all-backends
 * scope of a two-scope (externalTrafficPolicy=Local) service. */
static __always_inline struct lb4_service *lb4_lookup_service(struct lb4_key *key,
							      const struct pkt4 *p, int internal)
{
	struct lb4_service *svc, *svc_int;

	__builtin_memset(key, 0, sizeof(*key));
	key->address = p->daddr;
	key->dport = p->dport;
	key->proto = p->proto;
	key->scope = LB_SCOPE_EXT;
	svc = bpf_map_lookup_elem(&fibril_lb4_services, key);
	if (!svc && p->daddr == CFG(node_ip) && p->daddr != 0) {
		key->address = 0;
		svc = bpf_map_lookup_elem(&fibril_lb4_services, key);
	}
	if (svc && internal && (svc->flags & SVC_F_EXT_LOCAL)) {
		key->scope = LB_SCOPE_INT;
		svc_int = bpf_map_lookup_elem(&fibril_lb4_services, key);
		if (svc_int)
			return svc_int;
		key->scope = LB_SCOPE_EXT;
	}
	return svc;
}

/* Picks the backend of a connection to a frontend: the one recorded in the
 * connection's service CT entry if it still exists, else a random slot
 * (spreads evenly; sticky through the CT entry). Fills *be and *lb. */
static __always_inline int lb4_select_backend(struct __sk_buff *skb, const struct pkt4 *p,
					      struct lb4_key *key,
					      const struct lb4_service *svc,
					      __u32 src_identity, struct lb4_backend *be,
					      struct lb_state *lb)
{
	struct lb4_backend_key bkey = {};
	struct lb4_backend *b = NULL;
	struct lb4_service *slot;
	struct ct_result sct;
	__u16 count = svc->count;
	__u16 rev_nat_index = svc->rev_nat_index;
	int ret;

	ct_lookup4(skb, p, CT_KEY_F_SERVICE, &sct);
	if (sct.state == CT_STATE_ESTABLISHED && sct.backend_id) {
		bkey.backend_id = sct.backend_id;
		b = bpf_map_lookup_elem(&fibril_lb4_backends, &bkey);
		if (!b) {
			/* Backend removed: forget it and pick again. */
			struct ct4_key ck;

			ct4_key_from_pkt(&ck, p, 0, CT_KEY_F_SERVICE);
			bpf_map_delete_elem(&fibril_ct4, &ck);
		}
	}
	if (!b) {
		if (count == 0)
			return -DROP_NO_SERVICE;
		key->backend_slot = (bpf_get_prandom_u32() % count) + 1;
		slot = bpf_map_lookup_elem(&fibril_lb4_services, key);
		if (!slot) {
			/* The service shrank since its entry was read: slot 1
			 * exists as long as the service has a backend. */
			key->backend_slot = 1;
			slot = bpf_map_lookup_elem(&fibril_lb4_services, key);
		}
		key->backend_slot = 0;
		if (!slot)
			return -DROP_NO_BACKEND;
		bkey.backend_id = slot->backend_id;
		b = bpf_map_lookup_elem(&fibril_lb4_backends, &bkey);
		if (!b)
			return -DROP_NO_BACKEND;
		/* Established from the start: the entry must live as long as the
		 * connection's own entry (it only sees the forward direction,
		 * so it would never reach established by itself). */
		ret = ct_create4(skb, p, CT_KEY_F_SERVICE, src_identity, rev_nat_index,
				 bkey.backend_id, CT_F_ESTABLISHED);
		if (IS_DROP(ret))
			return ret;
	}
	*be = *b;
	lb->rev_nat_index = rev_nat_index;
	lb->backend_id = bkey.backend_id;
	return 0;
}

/* bpf_lxc, traffic from a pod, before conntrack: if p->daddr:p->dport is a
 * service frontend, emit pre-xlate-fwd, pick a backend (or reuse the one in
 * the CT entry keyed with CT_KEY_F_SERVICE), DNAT the packet, update p,
 * fill *lb, emit post-xlate-fwd. A pod reaching itself (hairpin) is also
 * SNATed to LB_HAIRPIN_IP so its reply comes back through bpf_lxc.
 * Services without backends: -DROP_NO_SERVICE. */
static __always_inline int lb4_from_endpoint(struct __sk_buff *skb, struct pkt4 *p,
					     struct trace_ctx *tc, struct lb_state *lb)
{
	struct lb4_backend be;
	struct lb4_service *svc;
	struct lb4_key key;
	int ret;

	if (!lb_l4_ok(p))
		return CTX_CONTINUE;
	svc = lb4_lookup_service(&key, p, 1);
	if (!svc)
		return CTX_CONTINUE;
	send_trace(skb, p, tc, OBS_PRE_XLATE_FWD, 0);
	ret = lb4_select_backend(skb, p, &key, svc, tc->src_identity, &be, lb);
	if (ret < 0)
		return ret;
	if (be.address == p->saddr) {
		ret = lb_rewrite4(skb, p, 0, LB_HAIRPIN_IP, p->sport);
		if (ret < 0)
			return ret;
		lb->ct_flags |= CT_F_HAIRPIN;
	}
	ret = lb_rewrite4(skb, p, 1, be.address, be.port);
	if (ret < 0)
		return ret;
	send_trace(skb, p, tc, OBS_POST_XLATE_FWD, 0);
	return CTX_CONTINUE;
}

/* Reply of a service connection (ct->state == CT_STATE_REPLY and
 * ct->rev_nat_index != 0), in bpf_lxc (backend pod replying) and in
 * bpf_host ingress (reply from a remote backend): emit pre-xlate-rev,
 * rewrite the source back to the frontend from fibril_lb4_reverse_nat
 * (and the destination back to the pod for hairpin), update p, emit
 * post-xlate-rev. NodePort replies (external client) are forwarded here
 * by FIB: their new source is a node address. */
static __always_inline int lb4_rev_nat(struct __sk_buff *skb, struct pkt4 *p,
				       struct trace_ctx *tc, const struct ct_result *ct)
{
	struct lb4_reverse_nat_key rkey = { .rev_nat_index = ct->rev_nat_index };
	struct lb4_reverse_nat *rn;
	__be32 addr, orig_saddr = p->saddr;
	__be16 port;
	int ret;

	if (!lb_l4_ok(p))
		return CTX_CONTINUE;
	rn = bpf_map_lookup_elem(&fibril_lb4_reverse_nat, &rkey);
	if (!rn)
		return CTX_CONTINUE;
	addr = rn->address ? rn->address : CFG(node_ip);
	port = rn->port;
	send_trace(skb, p, tc, OBS_PRE_XLATE_REV, 0);
	ret = lb_rewrite4(skb, p, 0, addr, port);
	if (ret < 0)
		return ret;
	if (ct->flags & CT_F_HAIRPIN) {
		ret = lb_rewrite4(skb, p, 1, orig_saddr, p->dport);
		if (ret < 0)
			return ret;
	}
	send_trace(skb, p, tc, OBS_POST_XLATE_REV, 0);
	if (ct->flags & CT_F_NODE_PORT)
		return lb_forward4(skb, p, tc, 0);
	return CTX_CONTINUE;
}

/* ---- NodePort / LoadBalancer ------------------------------------------ */

/* SNAT of a NodePort connection to a remote backend: reuse the connection's
 * port or allocate one (random, LB_SNAT_TRIES attempts) and record both
 * directions in fibril_lb4_snat. Rewrites the source to node_ip:port. */
static __always_inline int lb4_nodeport_snat(struct __sk_buff *skb, struct pkt4 *p,
					     __be32 front_addr, __be16 front_port,
					     __be32 client_addr, __be16 client_port,
					     __u16 rev_nat_index)
{
	struct ct4_key fkey = {}, rkey = {};
	struct lb4_snat_value fv = {}, rv = {};
	struct lb4_snat_value *cur;
	__u64 now = bpf_ktime_get_ns();
	__be16 port = 0;
	int i;

	/* p is already DNATed: the forward key is the original tuple. */
	fkey.saddr = client_addr;
	fkey.daddr = front_addr;
	fkey.sport = client_port;
	fkey.dport = front_port;
	fkey.proto = p->proto;
	fkey.flags = LB4_SNAT_FWD;
	cur = bpf_map_lookup_elem(&fibril_lb4_snat, &fkey);
	if (cur && cur->to_addr == p->daddr && cur->to_port == p->dport) {
		cur->last_seen = now;
		port = cur->snat_port;
	}

	rkey.saddr = p->daddr;
	rkey.daddr = CFG(node_ip);
	rkey.sport = p->dport;
	rkey.proto = p->proto;
	rkey.flags = LB4_SNAT_REV;
	if (port) {
		rkey.dport = port;
		cur = bpf_map_lookup_elem(&fibril_lb4_snat, &rkey);
		if (cur)
			cur->last_seen = now;
		else
			port = 0; /* reverse entry evicted: allocate afresh */
	}
	if (!port) {
		rv.to_addr = client_addr;
		rv.to_port = client_port;
		rv.front_addr = front_addr;
		rv.front_port = front_port;
		rv.rev_nat_index = rev_nat_index;
		rv.last_seen = now;
#pragma unroll
		for (i = 0; i < LB_SNAT_TRIES; i++) {
			__be16 cand = bpf_htons(LB_SNAT_PORT_MIN +
						bpf_get_prandom_u32() % LB_SNAT_PORT_RANGE);

			rkey.dport = cand;
			if (bpf_map_update_elem(&fibril_lb4_snat, &rkey, &rv, BPF_NOEXIST) == 0) {
				port = cand;
				break;
			}
		}
		if (!port)
			return -DROP_NAT_NO_PORT;
		fv.to_addr = p->daddr;
		fv.to_port = p->dport;
		fv.snat_port = port;
		fv.rev_nat_index = rev_nat_index;
		fv.last_seen = now;
		if (bpf_map_update_elem(&fibril_lb4_snat, &fkey, &fv, BPF_ANY) < 0) {
			bpf_map_delete_elem(&fibril_lb4_snat, &rkey);
			return -DROP_NAT_MAP_FULL;
		}
	}
	return lb_rewrite4(skb, p, 0, CFG(node_ip), port);
}

/* Reply of a SNATed NodePort connection (backend -> node_ip:snat_port):
 * restore frontend -> client and send it back out. CTX_CONTINUE if the
 * packet is not one. */
static __always_inline int lb4_nodeport_rev_snat(struct __sk_buff *skb, struct pkt4 *p,
						 struct trace_ctx *tc)
{
	struct ct4_key rkey = {};
	struct lb4_snat_value *v;
	__be32 to_addr, front_addr;
	__be16 to_port, front_port;
	int ret;

	rkey.saddr = p->saddr;
	rkey.daddr = p->daddr;
	rkey.sport = p->sport;
	rkey.dport = p->dport;
	rkey.proto = p->proto;
	rkey.flags = LB4_SNAT_REV;
	v = bpf_map_lookup_elem(&fibril_lb4_snat, &rkey);
	if (!v)
		return CTX_CONTINUE;
	v->last_seen = bpf_ktime_get_ns();
	to_addr = v->to_addr;
	to_port = v->to_port;
	front_addr = v->front_addr ? v->front_addr : CFG(node_ip);
	front_port = v->front_port;
	if (!tc->src_identity)
		tc->src_identity = ipcache_identity4(p->saddr);
	send_trace(skb, p, tc, OBS_PRE_XLATE_REV, 0);
	ret = lb_rewrite4(skb, p, 0, front_addr, front_port);
	if (ret < 0)
		return ret;
	ret = lb_rewrite4(skb, p, 1, to_addr, to_port);
	if (ret < 0)
		return ret;
	send_trace(skb, p, tc, OBS_POST_XLATE_REV, 0);
	return lb_forward4(skb, p, tc, 0);
}

/* bpf_host ingress on the underlay device, before local delivery:
 *  1. replies of SNATed NodePort connections (fibril_lb4_snat);
 *  2. NodePort / LoadBalancer frontends: DNAT; a local backend is left to
 *     the caller's local delivery (CT entry with CT_F_NODE_PORT, client IP
 *     preserved); a remote one is SNATed to node_ip and forwarded. With
 *     eTP=Local the external scope holds only local backends: a node without
 *     one drops with DROP_NO_SERVICE. ClusterIPs are not reachable from
 *     outside;
 *  3. replies to the node's own connections to a ClusterIP (remote
 *     backend): rev NAT, then the stack. */
static __always_inline int lb4_nodeport_ingress(struct __sk_buff *skb, struct pkt4 *p,
						struct trace_ctx *tc)
{
	struct lb_state lb = {};
	struct lb4_backend be;
	struct lb4_service *svc;
	struct lb4_key key;
	struct ct_result ct;
	__be32 front_addr, client_addr;
	__be16 front_port, client_port;
	int ret;

	if (!lb_l4_ok(p))
		return CTX_CONTINUE;
	if (p->daddr == CFG(node_ip)) {
		ret = lb4_nodeport_rev_snat(skb, p, tc);
		if (ret != CTX_CONTINUE)
			return ret;
	}
	svc = lb4_lookup_service(&key, p, 0);
	if (svc && (svc->flags & (SVC_F_NODEPORT | SVC_F_LOADBALANCER))) {
		if (!tc->src_identity)
			tc->src_identity = ipcache_identity4(p->saddr);
		front_addr = p->daddr;
		front_port = p->dport;
		client_addr = p->saddr;
		client_port = p->sport;
		send_trace(skb, p, tc, OBS_PRE_XLATE_FWD, 0);
		ret = lb4_select_backend(skb, p, &key, svc, tc->src_identity, &be, &lb);
		if (ret < 0)
			return ret;
		ret = lb_rewrite4(skb, p, 1, be.address, be.port);
		if (ret < 0)
			return ret;
		if (lookup_endpoint(be.address)) {
			/* Local backend: DNAT only, the caller delivers. */
			ret = ct_create4(skb, p, 0, tc->src_identity, lb.rev_nat_index,
					 lb.backend_id, CT_F_NODE_PORT);
			if (IS_DROP(ret))
				return ret;
			send_trace(skb, p, tc, OBS_POST_XLATE_FWD, 0);
			return CTX_CONTINUE;
		}
		ret = lb4_nodeport_snat(skb, p, front_addr, front_port, client_addr,
					client_port, lb.rev_nat_index);
		if (ret < 0)
			return ret;
		send_trace(skb, p, tc, OBS_POST_XLATE_FWD, 0);
		return lb_to_remote_backend(skb, p, tc, 0);
	}
	if (p->daddr == CFG(node_ip) || p->daddr == CFG(router_ip)) {
		ct_lookup4(skb, p, 0, &ct);
		if (ct.state == CT_STATE_REPLY && ct.rev_nat_index != 0) {
			tc->ct_state = ct.state;
			ret = lb4_rev_nat(skb, p, tc, &ct);
			if (ret != CTX_CONTINUE)
				return ret;
			send_trace(skb, p, tc, OBS_TO_STACK, 0);
			return TC_ACT_OK;
		}
	}
	return CTX_CONTINUE;
}

/* bpf_host egress on the underlay device: the node's own connections to a
 * service frontend (its route to the service CIDR leaves through the
 * underlay). DNAT with a rev-NAT CT entry; a local backend is redirected to
 * its veth, a remote one follows the FIB. NodePort replies need nothing
 * here: they were translated where they entered. */
static __always_inline int lb4_nodeport_egress(struct __sk_buff *skb, struct pkt4 *p,
					       struct trace_ctx *tc)
{
	struct lb_state lb = {};
	struct lb4_backend be;
	struct lb4_service *svc;
	struct endpoint_info *ep;
	struct lb4_key key;
	int ret;

	if (!lb_l4_ok(p))
		return CTX_CONTINUE;
	svc = lb4_lookup_service(&key, p, 1);
	if (!svc)
		return CTX_CONTINUE;
	tc->src_identity = IDENTITY_HOST;
	send_trace(skb, p, tc, OBS_PRE_XLATE_FWD, 0);
	ret = lb4_select_backend(skb, p, &key, svc, IDENTITY_HOST, &be, &lb);
	if (ret < 0)
		return ret;
	ret = lb_rewrite4(skb, p, 1, be.address, be.port);
	if (ret < 0)
		return ret;
	ret = ct_create4(skb, p, 0, IDENTITY_HOST, lb.rev_nat_index, lb.backend_id, 0);
	if (IS_DROP(ret))
		return ret;
	send_trace(skb, p, tc, OBS_POST_XLATE_FWD, 0);
	ep = lookup_endpoint(be.address);
	if (ep && !(ep->flags & ENDPOINT_F_HOST))
		return endpoint_deliver4(skb, p, ep, tc, 0);
	tc->dst_identity = ipcache_identity4(p->daddr);
	return lb_to_remote_backend(skb, p, tc, 1);
}

#endif /* FIBRIL_LB_H */
