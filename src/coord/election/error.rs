//! Why an election or lock call failed: a leaf, so every part of the protocol can name it.

use crate::client::KvError;

/// Why an election call failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The store call failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The session's lease is gone (or the candidate's key with it); start a new session.
    #[error("election: session expired")]
    SessionExpired,
    /// The candidate's key was deleted or replaced: this leadership is over.
    #[error("election: not leader")]
    NotLeader,
}
