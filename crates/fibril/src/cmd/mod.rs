//! One module per top-level subcommand; each exposes a clap `Subcommand`/`Args`
//! type and a `run` function returning the process exit code.

pub mod agent;
pub mod config;
pub mod controller;
pub mod dbg;
pub mod dns;
pub mod exec;
pub mod kube;
pub mod kubelet;
pub mod lab;
pub mod observe;
pub mod operator;
pub mod store;
pub mod workload;
