//! Coordination on any etcd-compatible store, through the KV client: service registry, leader
//! election (the one implementation of etcd's concurrency protocol) and snowflake ids.

pub mod election;
pub mod registry;
pub mod snowflake;
