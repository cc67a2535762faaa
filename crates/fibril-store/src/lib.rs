//! The cluster store: one trait, etcd and in-memory backends.
