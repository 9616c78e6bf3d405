//! `crawler`: a distributed web crawler whose coordination store — an etcd-compatible KV, watch,
//! lease and election service on openraft over sled — runs inside its own processes.
//!
//! Floors, lowest first; a module imports only from floors below it (checked by
//! `tests/architecture.rs`):
//! `util` → `server` (the etcd-compatible member) → `client` (the KV client) → `coord`
//! (registry, election, snowflake) → `services` (etcd's Election and Lock on `coord`) →
//! `model` → `crawl` → `config` (the process's `crawler.toml`) → `worker`, `master` → `bench`,
//! `cli`.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod coord;
pub mod crawl;
pub mod master;
pub mod model;
pub mod server;
pub mod services;
pub mod util;
pub mod worker;
