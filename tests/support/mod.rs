//! The test fixtures every integration-test binary shares: free ports, waiting with deadlines,
//! child processes, store clusters driven by `etcdctl`, stores (a real etcd process, our own
//! in-process member), worker processes, master environments, an HTTP/1.1 GET, and the client
//! scenarios run against any store, and real PostgreSQL and MariaDB servers.
//!
//! Each test binary includes it with `mod support;` and uses only part of it.
#![allow(dead_code)]

pub mod client_scenarios;
pub mod cluster;
pub mod etcd;
pub mod etcdctl;
pub mod http;
pub mod master_env;
pub mod masters;
pub mod our_store;
pub mod ports;
pub mod process;
pub mod scrape;
pub mod sql_servers;
pub mod synth;
pub mod wait;
pub mod worker_process;
