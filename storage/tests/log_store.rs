//! The sled raft log store: reads, boundaries, durability across reopen and crash, group commit.

mod support;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use crawler_storage::log_store::{LOG_TREE, META_TREE};
use crawler_storage::{ApplyResponse, Command, LogStore, PutRequest};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogId, RaftLogReader, Vote,
};

openraft::declare_raft_types!(
    /// Test type config: the store's commands with the default node type.
    pub TypeConfig:
        D = Command,
        R = ApplyResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

type Store = LogStore<TypeConfig>;

/// Env var that turns the `crash_child` test into the child half of `entries_survive_crash`.
const CRASH_DIR_ENV: &str = "CRAWLER_LOG_STORE_CRASH_DIR";
/// Printed by the child once its writes were acknowledged, right before it dies.
const CRASH_MARKER: &str = "log-store-child-acknowledged";
/// Exit code of the child's simulated crash.
const CRASH_EXIT_CODE: i32 = 42;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// A normal entry carrying a put of `key{index}`.
fn put_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: format!("key{index}").into_bytes(),
            value: vec![index as u8; 16],
            ..Default::default()
        })),
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    indexes.map(|i| put_entry(term, i)).collect()
}

fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
    entries.iter().map(|e| e.get_log_id().index).collect()
}

fn open(dir: &Path) -> (sled::Db, Store) {
    let db = support::open_db_when_free(dir);
    let store = Store::open(&db).expect("open log store");
    (db, store)
}

#[tokio::test]
async fn append_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, mut store) = open(dir.path());

    let st = store.get_log_state().await.unwrap();
    assert_eq!((None, None), (st.last_purged_log_id, st.last_log_id));
    assert!(store.try_get_log_entries(..).await.unwrap().is_empty());

    let membership = Entry::<TypeConfig> {
        log_id: log_id(1, 1),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2, 3])], None)),
    };
    let blank = Entry::<TypeConfig> {
        log_id: log_id(1, 2),
        payload: EntryPayload::Blank,
    };
    let mut written = vec![membership, blank];
    written.extend(entries(1, 3..=6));
    store.blocking_append(written.clone()).await.unwrap();

    let all = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(written, all);
    assert_eq!(
        vec![3, 4],
        indexes(&store.try_get_log_entries(3..5).await.unwrap())
    );
    assert_eq!(
        vec![5, 6],
        indexes(&store.try_get_log_entries(5..=100).await.unwrap())
    );
    assert!(store.try_get_log_entries(4..4).await.unwrap().is_empty());
    assert!(store.try_get_log_entries(7..).await.unwrap().is_empty());

    let st = store.get_log_state().await.unwrap();
    assert_eq!(None, st.last_purged_log_id);
    assert_eq!(Some(log_id(1, 6)), st.last_log_id);

    // A reader is a view of the same trees: it sees later appends too.
    let mut reader = store.get_log_reader().await;
    store.blocking_append(entries(2, 7..=7)).await.unwrap();
    assert_eq!(
        (1..=7).collect::<Vec<_>>(),
        indexes(&reader.try_get_log_entries(..).await.unwrap())
    );
}

#[tokio::test]
async fn vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, mut store) = open(dir.path());
        assert_eq!(None, store.read_vote().await.unwrap());
        assert_eq!(None, store.read_committed().await.unwrap());
        store.save_committed(Some(log_id(2, 9))).await.unwrap();
        store.save_vote(&Vote::new(3, 2)).await.unwrap();
        store.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
    }
    let (_db, mut store) = open(dir.path());
    assert_eq!(
        Some(Vote::new_committed(4, 1)),
        store.read_vote().await.unwrap()
    );
    assert_eq!(Some(log_id(2, 9)), store.read_committed().await.unwrap());

    store.save_committed(None).await.unwrap();
    assert_eq!(None, store.read_committed().await.unwrap());
}

#[tokio::test]
async fn truncate_and_purge_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, mut store) = open(dir.path());
    store.blocking_append(entries(1, 1..=10)).await.unwrap();

    // truncate(i) removes i and everything after it.
    store.truncate(log_id(1, 8)).await.unwrap();
    assert_eq!(
        (1..=7).collect::<Vec<_>>(),
        indexes(&store.try_get_log_entries(..).await.unwrap())
    );
    assert_eq!(
        Some(log_id(1, 7)),
        store.get_log_state().await.unwrap().last_log_id
    );

    // Truncating past the end changes nothing.
    store.truncate(log_id(1, 20)).await.unwrap();
    assert_eq!(7, store.try_get_log_entries(..).await.unwrap().len());

    // purge(i) removes i and everything before it and remembers i.
    store.purge(log_id(1, 3)).await.unwrap();
    assert_eq!(
        vec![4, 5, 6, 7],
        indexes(&store.try_get_log_entries(0..100).await.unwrap())
    );
    let st = store.get_log_state().await.unwrap();
    assert_eq!(Some(log_id(1, 3)), st.last_purged_log_id);
    assert_eq!(Some(log_id(1, 7)), st.last_log_id);

    // Appending after a truncate replaces the conflicting tail.
    store.truncate(log_id(1, 6)).await.unwrap();
    store.blocking_append(entries(2, 6..=8)).await.unwrap();
    let got = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(vec![4, 5, 6, 7, 8], indexes(&got));
    assert_eq!(log_id(2, 6), *got[2].get_log_id());

    // Purging everything: the last log id is the last purged one.
    store.purge(log_id(3, 12)).await.unwrap();
    assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
    let st = store.get_log_state().await.unwrap();
    assert_eq!(Some(log_id(3, 12)), st.last_purged_log_id);
    assert_eq!(Some(log_id(3, 12)), st.last_log_id);

    // The log continues after the purged id, and the purge is remembered across reopen.
    store.blocking_append(entries(3, 13..=14)).await.unwrap();
    drop(store);
    drop(_db);
    let (_db, mut store) = open(dir.path());
    let st = store.get_log_state().await.unwrap();
    assert_eq!(Some(log_id(3, 12)), st.last_purged_log_id);
    assert_eq!(Some(log_id(3, 14)), st.last_log_id);
    assert_eq!(
        vec![13, 14],
        indexes(&store.try_get_log_entries(..).await.unwrap())
    );
}

#[tokio::test]
async fn entries_survive_drop_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = entries(1, 1..=50);
    {
        let (_db, mut store) = open(dir.path());
        for chunk in written.chunks(7) {
            store.blocking_append(chunk.to_vec()).await.unwrap();
        }
        // Dropping the store stops its flusher thread, which releases the Db: the reopen below
        // would fail on sled's directory lock otherwise.
    }
    let (_db, mut store) = open(dir.path());
    assert_eq!(written, store.try_get_log_entries(..).await.unwrap());
    assert_eq!(
        Some(log_id(1, 50)),
        store.get_log_state().await.unwrap().last_log_id
    );
}

/// Child half of `entries_survive_crash`: does nothing unless that test started it.
#[tokio::test]
async fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    // No periodic background flush: only the store's own flushes make data durable.
    let db = sled::Config::new()
        .path(&dir)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let mut store = Store::open(&db).unwrap();
    store.blocking_append(entries(1, 1..=20)).await.unwrap();
    store.save_vote(&Vote::new(5, 3)).await.unwrap();
    store.blocking_append(entries(5, 21..=25)).await.unwrap();
    println!("{CRASH_MARKER}");
    // Die without running any destructor (sled flushes on drop). `exit` rather than `abort`
    // so that no core file is written.
    std::process::exit(CRASH_EXIT_CODE);
}

#[test]
fn entries_survive_crash() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(CRASH_MARKER),
        "child did not finish its writes: status {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        Some(CRASH_EXIT_CODE),
        out.status.code(),
        "child did not exit early"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_db, mut store) = open(dir.path());
        let got = store.try_get_log_entries(..).await.unwrap();
        assert_eq!((1..=25).collect::<Vec<_>>(), indexes(&got));
        assert_eq!(Some(Vote::new(5, 3)), store.read_vote().await.unwrap());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_flushes() {
    const WRITERS: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = open(dir.path());
    let before = store.flush_count();

    // Many writers append at once (each its own entry); each waits for its own callback.
    let mut tasks = tokio::task::JoinSet::new();
    for index in 1..=WRITERS {
        let mut writer = store.clone();
        tasks.spawn(async move { writer.blocking_append([put_entry(1, index)]).await });
    }
    let deadline = Duration::from_secs(30);
    while let Some(res) = tokio::time::timeout(deadline, tasks.join_next())
        .await
        .expect("appends did not complete")
    {
        res.unwrap().unwrap();
    }

    let flushes = store.flush_count() - before;
    println!("{WRITERS} concurrent appends shared {flushes} flushes");
    assert!(flushes >= 1, "callbacks fired without any flush");
    assert!(
        flushes < WRITERS,
        "{WRITERS} concurrent appends took {flushes} flushes: no group commit"
    );
    let mut reader = store.clone();
    assert_eq!(
        (1..=WRITERS).collect::<Vec<_>>(),
        indexes(&reader.try_get_log_entries(..).await.unwrap())
    );
}

#[tokio::test]
async fn corrupt_rows_are_storage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut store) = open(dir.path());
    store.blocking_append(entries(1, 1..=3)).await.unwrap();

    // Garbage where entry 4 should be: reads and the log state fail, without a panic.
    db.open_tree(LOG_TREE)
        .unwrap()
        .insert(4u64.to_be_bytes(), &[0xff, 0xfe, 0x01][..])
        .unwrap();
    assert!(store.try_get_log_entries(..).await.is_err());
    assert!(store.get_log_state().await.is_err());
    // Entries before the bad row still read fine.
    assert_eq!(
        vec![1, 2, 3],
        indexes(&store.try_get_log_entries(1..4).await.unwrap())
    );

    // An entry stored under the wrong index is corruption too.
    let misplaced =
        bincode::serde::encode_to_vec(put_entry(1, 9), bincode::config::standard()).unwrap();
    db.open_tree(LOG_TREE)
        .unwrap()
        .insert(4u64.to_be_bytes(), misplaced)
        .unwrap();
    assert!(store.try_get_log_entries(..).await.is_err());

    db.open_tree(META_TREE)
        .unwrap()
        .insert("vote", &[0xff][..])
        .unwrap();
    assert!(store.read_vote().await.is_err());
}

#[tokio::test]
async fn hole_ends_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut store) = open(dir.path());
    store.blocking_append(entries(1, 1..=6)).await.unwrap();
    db.open_tree(LOG_TREE)
        .unwrap()
        .remove(4u64.to_be_bytes())
        .unwrap();
    assert_eq!(
        vec![1, 2, 3],
        indexes(&store.try_get_log_entries(..).await.unwrap())
    );
}

/// Reopening cuts the log at a hole, so the log state never names an entry after a gap.
#[tokio::test]
async fn reopen_cuts_the_log_at_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, mut store) = open(dir.path());
        store.blocking_append(entries(1, 1..=6)).await.unwrap();
        db.open_tree(LOG_TREE)
            .unwrap()
            .remove(4u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let (_db, mut store) = open(dir.path());
    assert_eq!(
        vec![1, 2, 3],
        indexes(&store.try_get_log_entries(..).await.unwrap())
    );
    let st = store.get_log_state().await.unwrap();
    assert_eq!(Some(log_id(1, 3)), st.last_log_id);
}

/// The fdatasync variant flushes through sled's data file and keeps everything readable.
#[tokio::test]
async fn synced_store_appends_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let written = entries(1, 1..=20);
    {
        let db = support::open_db_when_free(dir.path());
        let mut store = Store::open_synced(&db, dir.path()).expect("open synced log store");
        for chunk in written.chunks(5) {
            store.blocking_append(chunk.to_vec()).await.unwrap();
        }
        assert!(store.flush_count() >= 4);
    }
    let (_db, mut store) = open(dir.path());
    assert_eq!(written, store.try_get_log_entries(..).await.unwrap());
}

/// A directory that is not sled's (no data file to fdatasync) is an error, not a silent skip.
#[tokio::test]
async fn synced_store_needs_the_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let db = support::open_db_when_free(dir.path());
    assert!(Store::open_synced(&db, other.path()).is_err());
}
