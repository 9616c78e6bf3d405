//! INTERFACE STUB — to be implemented (see the log store helper's task). Signatures are the contract.

use std::marker::PhantomData;

use crate::error::StoreError;

/// The raft log and vote in sled. Implements `openraft::storage::RaftLogStorage<C>`.
pub struct LogStore<C> {
    _c: PhantomData<C>,
}

impl<C> LogStore<C> {
    /// Open the log stored in `db` (trees of its own, apart from the state machine's).
    pub fn open(_db: &sled::Db) -> Result<Self, StoreError> {
        todo!()
    }
}
