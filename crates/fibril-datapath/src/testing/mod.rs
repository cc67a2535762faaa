//! Test support shared by the datapath's tests and its users' tests (LB,
//! NAT, encap engineers): a packet builder/parser ([`packet`]), a
//! `BPF_PROG_TEST_RUN` harness ([`bed`]), and RAII netns fixtures
//! ([`fixture`]). Privileged: needs root.

pub mod bed;
pub mod fixture;
pub mod packet;
