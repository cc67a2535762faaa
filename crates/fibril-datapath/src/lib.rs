//! Loads, pins and attaches the eBPF programs; typed access to every map.
