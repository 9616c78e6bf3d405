//! etcd v3 gRPC services: thin translation between protobuf and the store's own types.
//!
//! INTERFACE STUB — files: `context.rs` (shared ApiContext + headers), `error.rs` (status mapping),
//! `convert.rs` (proto <-> store types), `kv.rs`, `watch.rs`, `lease.rs`, `cluster.rs`,
//! `maintenance.rs`, `election.rs`, `lock.rs`.
