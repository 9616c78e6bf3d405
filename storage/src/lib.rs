//! Storage for the embedded etcd-compatible store: the sled raft log store and the MVCC state machine.
//!
//! This crate knows nothing of gRPC or of the raft network. It is generic over the openraft type
//! config; `crawler-raft` picks the concrete one.

pub mod backup;
pub mod error;
pub mod log_store;
pub mod metrics;
pub mod state_machine;
pub mod types;

pub use error::{ApplyError, StoreError};
pub use log_store::LogStore;
pub use state_machine::{
    restore_backup, ApplyObserver, PersistPolicy, RestoreSummary, StateMachine, StoreReader,
};
pub use types::*;

/// Open (or create) a member's state machine database (or any sled database) under `dir`.
///
/// The cache is kept small on purpose: the newest version of every key and the key index live in
/// the state machine's memory, so sled is read only for older revisions (and the OS page cache
/// still serves those); sled fills whatever cache it is given, so each MiB here is a MiB of RSS
/// (measured: 64 → 16 MiB took ~45 MiB off a 1-node put-c100 run, with no loss of throughput).
pub fn open_db(dir: &std::path::Path) -> Result<sled::Db, StoreError> {
    open_with_cache(dir, 16 * 1024 * 1024)
}

/// Open (or create) a member's raft log database under `dir`.
///
/// The log lives in a sled database of its own so that its group flush waits only for log
/// writes, not for the state machine's (sled makes an LSN durable only after everything before
/// it in the same database). Only recent entries are read back (replication), so the cache is
/// small.
pub fn open_log_db(dir: &std::path::Path) -> Result<sled::Db, StoreError> {
    open_with_cache(dir, 8 * 1024 * 1024)
}

/// sled's data file in `dir` (the directory a Db was opened in), opened for `fdatasync`.
pub(crate) fn sync_file(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("db");
    std::fs::File::open(&path)
        .map_err(|e| StoreError::Other(format!("open {} for fdatasync: {e}", path.display())))
}

fn open_with_cache(dir: &std::path::Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    Ok(db)
}
