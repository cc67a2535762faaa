//! Fibril `#[repr(C)]` map keys and values shared with the C eBPF programs.
