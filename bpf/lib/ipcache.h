/* SPDX-License-Identifier: Apache-2.0 */
/* ipcache lookups: address -> security identity and tunnel endpoint. */
#ifndef FIBRIL_IPCACHE_H
#define FIBRIL_IPCACHE_H

#include "maps.h"

static __always_inline struct ipcache_value *ipcache_lookup4(__be32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = addr };

	return bpf_map_lookup_elem(&fibril_ipcache, &key);
}

/* Identity of a remote address: ipcache entry, else world. */
static __always_inline __u32 ipcache_identity4(__be32 addr)
{
	struct ipcache_value *v = ipcache_lookup4(addr);

	return v ? v->sec_identity : IDENTITY_WORLD;
}

#endif /* FIBRIL_IPCACHE_H */
