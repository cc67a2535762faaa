/* SPDX-License-Identifier: Apache-2.0 */
/* Per-CPU packet counters in fibril_metrics, indexed by (dir << 8) | reason.
 * reason 0 = forwarded, 1..199 = DROP_* reasons, 250+ = internal counters
 * (events lost, rate limited, sampled out). Read by fibril_datapath::Metrics.
 */
#ifndef FIBRIL_METRICS_H
#define FIBRIL_METRICS_H

#include "maps.h"

#define METRIC_DIR_NONE 0
#define METRIC_DIR_INGRESS 1 /* towards a local endpoint / into the node */
#define METRIC_DIR_EGRESS 2  /* from a local endpoint / out of the node */

#define METRIC_FORWARDED 0
#define METRIC_EVENTS_LOST 250        /* ring buffer full */
#define METRIC_EVENTS_RATE_LIMITED 251 /* dropped by the per-CPU limiter */
#define METRIC_EVENTS_SAMPLED_OUT 252  /* trace events skipped by sampling */
#define METRIC_EVENTS_AGGREGATED 253   /* trace events skipped by aggregation */

static __always_inline void metrics_add(__u8 dir, __u8 reason, __u64 bytes)
{
	__u32 key = ((__u32)dir << 8) | reason;
	struct metrics_value *v;

	v = bpf_map_lookup_elem(&fibril_metrics, &key);
	if (v) {
		/* Per-CPU slot: plain adds, no atomics needed. */
		v->packets += 1;
		v->bytes += bytes;
	}
}

#endif /* FIBRIL_METRICS_H */
