//! INTERFACE STUB — the lease helper implements it. Signatures are the contract.
//!
//! Lease clocks. Only the leader decides expiry: it keeps a deadline per lease, extends every lease
//! when it takes over, and expires a lease by proposing `Command::LeaseRevoke` through raft.
//! Followers forward keep-alives and TTL queries to the leader.

use std::sync::Arc;

use crawler_raft::RaftNode;

/// Errors of lease operations (texts are etcd's).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("etcdserver: requested lease not found")]
    NotFound,
    #[error("etcdserver: lease already exists")]
    Exists,
    #[error(transparent)]
    Raft(#[from] crawler_raft::RaftError),
    #[error("{0}")]
    Other(String),
}

/// Remaining time of a lease.
#[derive(Clone, Debug)]
pub struct LeaseTtl {
    pub id: i64,
    /// Remaining seconds; -1 when the lease does not exist.
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// The member's lease clock keeper.
pub struct Lessor {}

impl Lessor {
    /// Start the lessor and its expiry loop (acts only while this member leads).
    pub fn start(_raft: RaftNode) -> Arc<Self> {
        todo!()
    }
    /// Grant a lease (`id` 0 = pick one). Returns (id, ttl) with the TTL raised to the minimum.
    pub async fn grant(&self, _id: i64, _ttl: i64) -> Result<(i64, i64), LeaseError> {
        todo!()
    }
    /// Revoke a lease and delete its keys.
    pub async fn revoke(&self, _id: i64) -> Result<(), LeaseError> {
        todo!()
    }
    /// Renew a lease; returns the new TTL, or 0 if the lease is unknown.
    pub async fn keep_alive(&self, _id: i64) -> Result<i64, LeaseError> {
        todo!()
    }
    /// Remaining TTL (and keys if asked).
    pub async fn time_to_live(&self, _id: i64, _keys: bool) -> Result<LeaseTtl, LeaseError> {
        todo!()
    }
    /// Stop the expiry loop.
    pub fn stop(&self) {}
}
