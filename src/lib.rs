//! `crawler`: a distributed web crawler whose coordination store — an etcd-compatible KV, watch,
//! lease and election service on openraft over sled — runs inside its own processes.

pub mod api;
pub mod cli;
pub mod election;
pub mod kv_client;
pub mod lessor;
pub mod member;
pub mod registry;
pub mod snowflake;
pub mod watch_hub;
