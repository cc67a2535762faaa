/* SPDX-License-Identifier: Apache-2.0 */
/* Every map of the Fibril datapath, with its key and value layouts. This is
 * the single source of truth: each struct has a #[repr(C)] twin in
 * crates/fibril-abi (checked against this object's BTF by the datapath
 * crate's tests). All maps are pinned by name under the node's bpffs
 * directory, so programs of every object share them and they survive a
 * reload. Changing a layout means a new name suffix (_v2) and migration code
 * in fibril-datapath.
 *
 * Byte order: addresses and ports as on the wire (network order) unless the
 * field comment says otherwise.
 */
#ifndef FIBRIL_MAPS_H
#define FIBRIL_MAPS_H

#include "common.h"

#define PIN_BY_NAME 1 /* LIBBPF_PIN_BY_NAME */

/* ---- Sizes ---------------------------------------------------------- */
#define CT4_MAX_ENTRIES 65536
#define NAT4_MAX_ENTRIES 65536
#define LB4_SERVICES_MAX 262144 /* slot 0 + one entry per backend slot */
#define LB4_BACKENDS_MAX 131072
#define LB4_REVNAT_MAX 65536
#define LB4_SNAT_MAX 65536
#define IPCACHE_MAX 16384
#define ENDPOINTS_MAX 4096
#define IPMASQ_MAX 64
#define POLICY_MAX 16384
#define EVENTS_RINGBUF_SIZE (1 << 20)
#define METRICS_MAX 768 /* (dir << 8) | reason, dir 0..2 */

/* ---- Endpoints: local pod IP -> where and how to deliver ------------- */
struct endpoint_key {
	__be32 ip;
};

#define ENDPOINT_F_HOST (1 << 0)   /* the node itself (fibril_host) */
#define ENDPOINT_F_HEALTH (1 << 1) /* the health endpoint */

struct endpoint_info {
	__u32 ifindex;       /* host-side veth (lxc...) */
	__u32 sec_identity;  /* security identity of the pod */
	__u16 ep_id;         /* endpoint id (policy map key, CLI) */
	__u16 flags;         /* ENDPOINT_F_* */
	__u8 mac[6];         /* the pod's eth0 MAC */
	__u8 node_mac[6];    /* MAC of the host-side veth (pod's gateway MAC) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} fibril_endpoints SEC(".maps");

/* ---- ipcache: prefix -> identity, tunnel endpoint (LPM) ------------- */
struct ipcache_key {
	__u32 prefixlen;     /* LPM prefix length in bits (host order) */
	__be32 ip;
};

#define IPCACHE_F_REMOTE_NODE (1 << 0) /* a node IP */
#define IPCACHE_F_POD_CIDR (1 << 1)    /* a remote node's pod CIDR */

struct ipcache_value {
	__u32 sec_identity;
	__be32 tunnel_endpoint; /* remote node IP, 0 = not behind a tunnel */
	__u16 flags;            /* IPCACHE_F_* */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} fibril_ipcache SEC(".maps");

/* ---- Conntrack -------------------------------------------------------- */
/* Key: the tuple in the direction of the first packet of the connection.
 * For ICMP echo, sport = dport = echo id. */
struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 flags;          /* CT_KEY_F_* (scope: e.g. service vs. pod tuple) */
	__u16 pad;
};

#define CT_KEY_F_SERVICE (1 << 0) /* tuple carries the service frontend (lb.h) */

/* ct4_value.flags */
#define CT_F_SYN_SEEN (1 << 0)     /* SYN in the forward direction */
#define CT_F_SYNACK_SEEN (1 << 1)  /* SYN+ACK in the reply direction */
#define CT_F_ESTABLISHED (1 << 2)  /* handshake completed / reply seen */
#define CT_F_TX_CLOSING (1 << 3)   /* FIN/RST from the originator */
#define CT_F_RX_CLOSING (1 << 4)   /* FIN/RST from the responder */
#define CT_F_SEEN_NON_SYN (1 << 5) /* mid-stream pickup */
#define CT_F_NODE_PORT (1 << 6)    /* lb.h: NodePort connection */
#define CT_F_SNAT (1 << 7)         /* nat.h: masqueraded */
#define CT_F_HAIRPIN (1 << 8)      /* lb.h: pod reached itself via a service */

struct ct4_value {
	__u64 lifetime;      /* expiry, bpf_ktime_get_ns() clock (CLOCK_MONOTONIC) */
	__u64 created;       /* bpf_ktime_get_ns() at creation */
	__u64 packets_fwd;
	__u64 bytes_fwd;
	__u64 packets_rev;
	__u64 bytes_rev;
	__u32 src_sec_id;    /* identity of the originator */
	__u32 backend_id;    /* lb.h: selected backend */
	__u16 rev_nat_index; /* lb.h: index into fibril_lb4_reverse_nat */
	__u16 flags;         /* CT_F_* */
	__u8 tcp_flags_fwd;  /* union of TCP flags seen, forward */
	__u8 tcp_flags_rev;  /* union of TCP flags seen, reply */
	__u16 ifindex;       /* ingress interface of the first packet (low 16 bits) */
	__u32 last_report_fwd; /* trace aggregation: last reported, ktime seconds */
	__u32 last_report_rev;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct4_value);
	__uint(max_entries, CT4_MAX_ENTRIES);
	__uint(pinning, PIN_BY_NAME);
} fibril_ct4 SEC(".maps");

/* ---- SNAT (nat.h) ----------------------------------------------------- */
/* Key: a ct4_key tuple; flags = NAT_DIR_EGRESS for the original tuple
 * (pod -> world) or NAT_DIR_INGRESS for the translated reply tuple
 * (world -> node_ip:port). */
#define NAT_DIR_EGRESS 0
#define NAT_DIR_INGRESS 1

struct nat4_value {
	__be32 to_addr;      /* address to rewrite to */
	__be16 to_port;      /* port / ICMP id to rewrite to */
	__u16 pad;
	__u64 created;
	__u64 last_seen;     /* bpf_ktime_get_ns(), for GC */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct nat4_value);
	__uint(max_entries, NAT4_MAX_ENTRIES);
	__uint(pinning, PIN_BY_NAME);
} fibril_nat4 SEC(".maps");

/* ---- ip-masq-agent non-masquerade prefixes (LPM) ---------------------- */
struct ipmasq_key {
	__u32 prefixlen;
	__be32 ip;
};

struct ipmasq_value {
	__u8 flags;          /* reserved */
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipmasq_key);
	__type(value, struct ipmasq_value);
	__uint(max_entries, IPMASQ_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} fibril_ipmasq SEC(".maps");

/* ---- Service load balancing (lb.h), Cilium's layout -------------------- */
/* backend_slot 0 = the service entry itself (count, rev_nat_index, flags);
 * slots 1..count hold backend ids. */
struct lb4_key {
	__be32 address;      /* frontend IP (ClusterIP, node IP, LB IP) */
	__be16 dport;        /* frontend port */
	__u16 backend_slot;  /* host order */
	__u8 proto;          /* IPPROTO_TCP / IPPROTO_UDP (0 = any) */
	__u8 scope;          /* LB_SCOPE_EXT / LB_SCOPE_INT (eTP=Local) */
	__u8 pad[2];
};

#define LB_SCOPE_EXT 0
#define LB_SCOPE_INT 1

#define SVC_F_NODEPORT (1 << 0)
#define SVC_F_EXT_LOCAL (1 << 1)    /* externalTrafficPolicy: Local */
#define SVC_F_LOADBALANCER (1 << 2)
#define SVC_F_LOCAL_REDIRECT (1 << 3)
#define SVC_F_CLUSTER_IP (1 << 4)
#define SVC_F_HOSTPORT (1 << 5)

struct lb4_service {
	__u32 backend_id;    /* slot > 0: backend id; slot 0: unused */
	__u16 count;         /* slot 0: number of backends */
	__u16 rev_nat_index; /* host order */
	__u16 flags;         /* SVC_F_* */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, LB4_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} fibril_lb4_services SEC(".maps");

struct lb4_backend_key {
	__u32 backend_id;
};

#define BE_F_LOCAL (1 << 0)       /* backend runs on this node */
#define BE_F_TERMINATING (1 << 1)

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;          /* BE_F_* */
	__u16 cluster_id;
	__u8 zone;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_backend_key);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB4_BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} fibril_lb4_backends SEC(".maps");

struct lb4_reverse_nat_key {
	__u16 rev_nat_index;
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_reverse_nat_key);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB4_REVNAT_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} fibril_lb4_reverse_nat SEC(".maps");

/* NodePort/LoadBalancer SNAT state for remote backends (lb.h). Key: a
 * ct4_key with flags LB4_SNAT_FWD for the client -> frontend tuple, or
 * LB4_SNAT_REV for the backend -> node_ip:snat_port reply tuple. */
#define LB4_SNAT_FWD 0
#define LB4_SNAT_REV 1

struct lb4_snat_value {
	__be32 to_addr;      /* FWD: backend; REV: client */
	__be16 to_port;      /* FWD: backend port; REV: client port */
	__be16 snat_port;    /* FWD: allocated source port on node_ip */
	__be32 front_addr;   /* REV: frontend address restored as source */
	__be16 front_port;   /* REV: frontend port */
	__u16 rev_nat_index; /* host order */
	__u64 last_seen;     /* bpf_ktime_get_ns() */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct lb4_snat_value);
	__uint(max_entries, LB4_SNAT_MAX);
	__uint(pinning, PIN_BY_NAME);
} fibril_lb4_snat SEC(".maps");

/* ---- Policy (later issue): per endpoint, per peer identity ------------ */
struct policy_key {
	__u32 sec_label;     /* peer identity (0 = any) */
	__u16 ep_id;         /* local endpoint */
	__be16 dport;        /* 0 = any */
	__u8 proto;          /* 0 = any */
	__u8 egress;         /* 1 = egress rule, 0 = ingress */
	__u16 pad;
};

#define POLICY_F_DENY (1 << 0)

struct policy_value {
	__u32 flags;         /* POLICY_F_* */
	__u32 pad;
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} fibril_policy SEC(".maps");

/* ---- Events (trace.h / drop.h) ---------------------------------------- */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_SIZE);
	__uint(pinning, PIN_BY_NAME);
} fibril_events SEC(".maps");

/* Per-CPU token bucket of the event rate limiter (trace.h). Internal. */
struct events_rl_state {
	__u64 last_ns;
	__u64 tokens;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct events_rl_state);
	__uint(max_entries, 1);
	__uint(pinning, PIN_BY_NAME);
} fibril_events_rl SEC(".maps");

/* ---- Metrics (metrics.h): per-CPU counters ------------------------------ */
struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAX);
	__uint(pinning, PIN_BY_NAME);
} fibril_metrics SEC(".maps");

#endif /* FIBRIL_MAPS_H */
