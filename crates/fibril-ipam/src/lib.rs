//! IP address management: node allocators, cluster-pool, multi-pool, host-scope. Pure logic, no I/O.
