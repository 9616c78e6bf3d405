//! The raft log and vote, kept in sled trees of their own inside the member's shared Db.
//!
//! Layout:
//! - tree [`LOG_TREE`]: log index (u64 big-endian, so byte order = index order) → bincode(entry);
//! - tree [`META_TREE`]: [`VOTE_KEY`], [`COMMITTED_KEY`], [`PURGED_KEY`] → bincode(value).
//!
//! Durability: `save_vote` returns after a flush; `append` fires openraft's callback after a
//! flush. Both go through one background flusher (see `flusher`), so concurrent writers share
//! flushes (group commit). Truncate, purge and the committed pointer are written without a flush
//! of their own: the next vote or append flush persists them, which is all openraft needs.

mod flusher;

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError, StorageIOError,
    Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;
use flusher::Flusher;

/// Name of the sled tree holding the log entries.
pub const LOG_TREE: &str = "raft_log";
/// Name of the sled tree holding the vote, the committed log id and the last purged log id.
pub const META_TREE: &str = "raft_meta";
/// Key of the vote in [`META_TREE`].
const VOTE_KEY: &[u8] = b"vote";
/// Key of the last committed log id in [`META_TREE`].
const COMMITTED_KEY: &[u8] = b"committed";
/// Key of the last purged log id in [`META_TREE`].
const PURGED_KEY: &[u8] = b"last_purged";

/// The raft log and vote in sled. Implements `openraft::storage::RaftLogStorage<C>`.
///
/// Clones share the trees and the flusher; openraft uses clones as log readers. The flusher
/// thread stops when the last clone is dropped.
pub struct LogStore<C> {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Arc<Flusher>,
    // fn() -> C: the store owns no C, so it is Send + Sync whatever C is.
    _c: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            log: self.log.clone(),
            meta: self.meta.clone(),
            flusher: Arc::clone(&self.flusher),
            _c: PhantomData,
        }
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
{
    /// Open the log stored in `db` (trees of its own, apart from the state machine's).
    ///
    /// Durable against a process crash: sled's flush writes with `sync_file_range`.
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Self::open_inner(db, None)
    }

    /// Like `open`, and every group flush is followed by an `fdatasync` of sled's data file in
    /// `dir` (the directory `open_db` was given), so acknowledged entries also survive a power
    /// loss: `sync_file_range` alone leaves them in the disk's write cache.
    pub fn open_synced(db: &sled::Db, dir: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_inner(db, Some(crate::sync_file(dir)?))
    }

    fn open_inner(db: &sled::Db, sync_file: Option<std::fs::File>) -> Result<Self, StoreError> {
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let flusher = Flusher::spawn(db.clone(), sync_file)
            .map_err(|e| StoreError::Other(format!("start raft log flusher: {e}")))?;
        let store = Self {
            log,
            meta,
            flusher: Arc::new(flusher),
            _c: PhantomData,
        };
        // A crash between recording a purge and removing its entries leaves them behind.
        if let Some(purged) = store.last_purged()? {
            remove_upto(&store.log, purged.index)?;
        }
        store.cut_at_hole()?;
        Ok(store)
    }

    /// Remove the entries after the first hole in the index sequence.
    ///
    /// Appends are plain inserts; should a crash ever recover a later entry without an earlier
    /// one (never acknowledged, since the flush covers both), the log must still be contiguous.
    fn cut_at_hole(&self) -> Result<(), StoreError> {
        let mut expected: Option<u64> = None;
        for key in self.log.iter().keys() {
            let index = key_index(&key?)?;
            match expected {
                Some(e) if index != e => {
                    tracing::warn!(
                        hole_at = e,
                        next = index,
                        "raft log has a hole; cutting it there"
                    );
                    return remove_from(&self.log, e);
                }
                _ => expected = Some(index + 1),
            }
        }
        Ok(())
    }

    /// Number of flushes the group-commit flusher has made so far (shared by all clones).
    ///
    /// Lets tests check that concurrent appends share flushes.
    pub fn flush_count(&self) -> u64 {
        self.flusher.count()
    }

    fn last_purged(&self) -> Result<Option<LogId<C::NodeId>>, StoreError> {
        get_meta(&self.meta, PURGED_KEY)
    }

    fn log_state(&self) -> Result<LogState<C>, StoreError>
    where
        C::Entry: DeserializeOwned,
    {
        let last_purged_log_id = self.last_purged()?;
        let last = match self.log.last()? {
            Some((key, value)) => Some(decode_entry::<C>(&key, &value)?.get_log_id().clone()),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged_log_id.clone(),
            last_log_id: last.or(last_purged_log_id),
        })
    }

    /// Entries with index in `range`, in order, stopping at the first hole.
    fn read_range<RB: RangeBounds<u64>>(&self, range: &RB) -> Result<Vec<C::Entry>, StoreError>
    where
        C::Entry: DeserializeOwned,
    {
        let Some((start, end)) = index_bounds(range) else {
            return Ok(Vec::new());
        };
        let lo = Bound::Included(index_key(start));
        let hi = match end {
            Some(end) => Bound::Excluded(index_key(end)),
            None => Bound::Unbounded,
        };
        let mut entries: Vec<C::Entry> = Vec::new();
        for item in self.log.range::<[u8; 8], _>((lo, hi)) {
            let (key, value) = item?;
            let entry = decode_entry::<C>(&key, &value)?;
            let index = entry.get_log_id().index;
            if let Some(prev) = entries.last() {
                if prev.get_log_id().index + 1 != index {
                    // Only a concurrent truncate can cause this; never hand out a log with a hole.
                    tracing::warn!(after = prev.get_log_id().index, index, "hole in raft log");
                    break;
                }
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.read_range(&range).map_err(|e| read_logs(&e))
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        self.log_state().map_err(|e| read_logs(&e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        put_meta(&self.meta, VOTE_KEY, vote)
            .map_err(|e| StorageIOError::<C::NodeId>::write_vote(&e))?;
        self.flusher
            .flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        get_meta(&self.meta, VOTE_KEY).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let res = match committed {
            Some(log_id) => put_meta(&self.meta, COMMITTED_KEY, &log_id),
            None => self
                .meta
                .remove(COMMITTED_KEY)
                .map(|_| ())
                .map_err(StoreError::from),
        };
        res.map_err(|e| write_logs(&e))
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        get_meta(&self.meta, COMMITTED_KEY).map_err(|e| read_logs(&e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Plain inserts, in index order, not a `sled::Batch`: a batch seals sled's io buffer twice
        // (two synchronous device writes) and buys nothing here, because sled recovers a prefix
        // of its log, so a crash mid-append leaves a prefix of these entries (and `open` cuts
        // the log at any hole). The entries are readable at once; durable after the flush.
        for entry in entries {
            let value = encode(&entry).map_err(|e| write_logs(&e))?;
            self.log
                .insert(index_key(entry.get_log_id().index), value)
                .map_err(|e| write_logs(&StoreError::from(e)))?;
        }
        self.flusher
            .submit(Box::new(move |res| callback.log_io_completed(res)));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        tracing::debug!(%log_id, "truncate raft log since");
        remove_from(&self.log, log_id.index).map_err(|e| write_logs(&e))
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        tracing::debug!(%log_id, "purge raft log upto");
        // Record first: a crash in between leaves stale entries, which `open` removes.
        put_meta(&self.meta, PURGED_KEY, &log_id).map_err(|e| write_logs(&e))?;
        remove_upto(&self.log, log_id.index).map_err(|e| write_logs(&e))
    }
}

/// Error of a failed log read, for openraft.
fn read_logs<NID: openraft::NodeId>(e: &StoreError) -> StorageError<NID> {
    StorageIOError::read_logs(e).into()
}

/// Error of a failed log write, for openraft.
fn write_logs<NID: openraft::NodeId>(e: &StoreError) -> StorageError<NID> {
    StorageIOError::write_logs(e).into()
}

/// sled key of log index `index`: big-endian so that key order is index order.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Log index of a sled key written by [`index_key`].
fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("raft log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// `range` as `(first index, end index exclusive or None for unbounded)`; `None` if empty.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        // `..=u64::MAX` has no exclusive end: treat as unbounded.
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if start >= end => None,
        _ => Some((start, end)),
    }
}

/// Remove every entry with index >= `index`, atomically.
fn remove_from(log: &sled::Tree, index: u64) -> Result<(), StoreError> {
    remove_keys(log, log.range(index_key(index)..))
}

/// Remove every entry with index <= `index`, atomically.
fn remove_upto(log: &sled::Tree, index: u64) -> Result<(), StoreError> {
    remove_keys(log, log.range(..=index_key(index)))
}

/// Remove the keys `iter` yields in one batch.
fn remove_keys(log: &sled::Tree, iter: sled::Iter) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for key in iter.keys() {
        batch.remove(key?);
    }
    log.apply_batch(batch)?;
    Ok(())
}

/// Decode the entry stored under `key`, checking that it is the entry of that index.
fn decode_entry<C>(key: &[u8], value: &[u8]) -> Result<C::Entry, StoreError>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    let index = key_index(key)?;
    let entry: C::Entry = decode(value, "raft log entry")?;
    if entry.get_log_id().index != index {
        return Err(StoreError::Corrupt(format!(
            "raft log entry {} stored under index {index}",
            entry.get_log_id()
        )));
    }
    Ok(entry)
}

/// Read and decode one value of the meta tree.
fn get_meta<T: DeserializeOwned>(meta: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    match meta.get(key)? {
        Some(bytes) => Ok(Some(decode(&bytes, &String::from_utf8_lossy(key))?)),
        None => Ok(None),
    }
}

/// Encode and write one value of the meta tree (no flush).
fn put_meta<T: Serialize>(meta: &sled::Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
    meta.insert(key, encode(value)?)?;
    Ok(())
}

/// bincode 2 (serde) encoding of our rows.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| StoreError::Other(format!("encode raft log data: {e}")))
}

/// Decode a row written by [`encode`]; trailing bytes mean corruption too.
fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    if read != bytes.len() {
        return Err(StoreError::Corrupt(format!(
            "{what}: {} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(value)
}
