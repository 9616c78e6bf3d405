//! `crawler`: a distributed web crawler whose coordination store — an etcd-compatible KV, watch,
//! lease and election service on openraft over sled — runs inside its own processes.

pub mod api;
pub mod cli;
pub mod lessor;
pub mod member;
pub mod watch_hub;
