//! Jepsen-style fault testing support: operation histories, a linearizability checker, and the
//! fault runner's cluster, proxies, nemesis, workloads and checks (see TESTING.md).
//!
//! Shared by several test targets, so not every item is used by each of them.
#![allow(dead_code)]

pub mod checker;
pub mod cluster;
pub mod history;
pub mod lease_check;
pub mod master_check;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod watch_check;
pub mod workload;
