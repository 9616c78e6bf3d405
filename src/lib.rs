//! `crawler`: a distributed web crawler whose coordination store — an etcd-compatible KV, watch,
//! lease and election service on openraft over sled — runs inside its own processes.

pub mod api;
pub mod bench;
pub mod cli;
pub mod compactor;
pub mod config;
pub mod crawl;
pub mod dev;
pub mod election;
pub mod kv_client;
pub mod lessor;
pub mod master;
pub mod member;
pub mod registry;
pub mod snowflake;
pub mod watch_hub;
pub mod worker;
