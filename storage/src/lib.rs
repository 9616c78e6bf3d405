//! Storage for the embedded etcd-compatible store: the sled raft log store and the MVCC state machine.
//!
//! This crate knows nothing of gRPC or of the raft network. It is generic over the openraft type
//! config; `crawler-raft` picks the concrete one.

pub mod error;
pub mod log_store;
pub mod state_machine;
pub mod types;

pub use error::{ApplyError, StoreError};
pub use log_store::LogStore;
pub use state_machine::{ApplyObserver, StateMachine, StoreReader};
pub use types::*;

/// Open (or create) the sled database of one member under `dir`.
///
/// The cache is kept small on purpose: values are read from sled's page cache on demand and the
/// process should stay lighter than etcd.
pub fn open_db(dir: &std::path::Path) -> Result<sled::Db, StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(64 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    Ok(db)
}
