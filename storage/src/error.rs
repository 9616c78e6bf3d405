//! Typed errors of the storage layer. Texts are etcd's exact error strings where etcd has one.

use serde::{Deserialize, Serialize};

/// A deterministic failure of a command or read against the MVCC store.
///
/// These travel in `ApplyResponse` through the raft log, so they are plain data (serde).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApplyError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A `Command::LeaseExpire` committed in another term than the one that decided it.
    #[error("etcdserver: lease expiry decided in an earlier term")]
    StaleExpiry,
    /// The local database could not be read (corruption or I/O); produced by apply only for a
    /// malformed command (a batch nested in a batch).
    #[error("etcdserver: storage error: {0}")]
    Internal(String),
    /// A write that adds data while the NOSPACE alarm is active (etcd's `ErrNoSpace`).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
}

/// Any error of the storage layer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("storage: sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage: corrupt data: {0}")]
    Corrupt(String),
    #[error("storage: {0}")]
    Other(String),
}
