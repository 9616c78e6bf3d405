//! openraft's storage Suite against the real sled log store and MVCC state machine.

use std::io::Cursor;

use crawler_storage::{open_db, ApplyResponse, Command, LogStore, StateMachine, StoreError};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use tempfile::TempDir;

openraft::declare_raft_types!(
    /// Test type config: the store's commands with openraft's basic node type.
    pub TypeConfig:
        D = Command,
        R = ApplyResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// Opens a fresh sled Db in a temp dir (the guard) with both stores in it.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore<TypeConfig>, StateMachine, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<TypeConfig>, StateMachine), StorageError<u64>> {
        fn open_err(e: &StoreError) -> StorageError<u64> {
            StorageIOError::write(e).into()
        }
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let db = open_db(dir.path()).map_err(|e| open_err(&e))?;
        let log = LogStore::open(&db).map_err(|e| open_err(&e))?;
        let sm = StateMachine::open(&db).map_err(|e| open_err(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
