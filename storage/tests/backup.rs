//! Backups through the public API: an image streamed into a file, verified, restored into a
//! fresh state machine with every key, revision and lease; corrupt and truncated files refused;
//! HashKV equal on two state machines fed the same entries.

use std::io::{Cursor, Write};
use std::path::Path;

use crawler_storage::backup::{self, BackupError, Chunk};
use crawler_storage::*;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

openraft::declare_raft_types!(
    /// Test type config.
    pub TC:
        D = Command,
        R = ApplyResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

async fn apply(sm: &mut StateMachine, index: u64, cmd: Command) {
    let e: Entry<TC> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    };
    let r = RaftStateMachine::<TC>::apply(sm, vec![e]).await.unwrap();
    r[0].result.as_ref().unwrap();
}

fn put(k: &str, v: &str, lease: i64) -> Command {
    Command::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        ..Default::default()
    })
}

/// A state machine with history, a delete, a lease and a compaction.
async fn filled(dir: &Path) -> (sled::Db, StateMachine) {
    let db = open_db(dir).unwrap();
    let mut sm = StateMachine::open(&db).unwrap();
    let cmds = vec![
        Command::LeaseGrant { id: 7, ttl: 60 },
        put("a", "1", 0),
        put("b", "1", 7),
        put("a", "2", 0),
        put("c", "x", 0),
        Command::DeleteRange(DeleteRangeRequest {
            key: "c".into(),
            ..Default::default()
        }),
        Command::Compact { revision: 4 },
        put("d", &"v".repeat(5000), 0),
        put("a", "3", 0),
    ];
    for (i, c) in cmds.into_iter().enumerate() {
        apply(&mut sm, i as u64 + 1, c).await;
    }
    (db, sm)
}

fn all(r: &StoreReader) -> Vec<KeyValue> {
    r.range(&RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    })
    .unwrap()
    .kvs
}

fn save(r: &StoreReader, path: &Path) -> u64 {
    let img = r.backup_image(11, 22).unwrap();
    let total = img.data_len();
    let mut f = std::fs::File::create(path).unwrap();
    let mut last_remaining = total;
    for c in img.into_chunks(100) {
        match c {
            Chunk::Data { bytes, remaining } => {
                assert_eq!(last_remaining - bytes.len() as u64, remaining);
                last_remaining = remaining;
                f.write_all(&bytes).unwrap();
            }
            Chunk::Checksum(sum) => {
                assert_eq!(last_remaining, 0);
                f.write_all(&sum).unwrap();
            }
        }
    }
    total + 32
}

#[tokio::test]
async fn save_verify_restore() {
    let src = tempfile::tempdir().unwrap();
    let (_db, sm) = filled(src.path()).await;
    let r = sm.reader();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("snap.db");
    let size = save(&r, &file);

    let v = backup::verify(&file).unwrap();
    assert_eq!(v.size, size);
    assert_eq!(
        size % 512,
        32,
        "etcdctl wants whole 512-byte pages before the sha256"
    );
    assert_eq!(v.header.revision, r.current_revision());
    assert_eq!(v.header.key_count, 3);
    assert_eq!(v.header.lease_count, 1);
    assert_eq!((v.header.cluster_id, v.header.member_id), (11, 22));

    let dst = tempfile::tempdir().unwrap();
    let db2 = open_db(dst.path()).unwrap();
    let sum = restore_backup(&v, &db2).unwrap();
    assert_eq!((sum.keys, sum.leases), (3, 1));
    // A second restore into the same db is refused.
    assert!(matches!(
        restore_backup(&v, &db2),
        Err(BackupError::Target(_))
    ));
    let sm2 = StateMachine::open(&db2).unwrap();
    let r2 = sm2.reader();
    assert_eq!(all(&r2), all(&r));
    assert_eq!(r2.current_revision(), r.current_revision());
    assert_eq!(r2.compact_revision(), r.current_revision());
    let lease = r2.lease(7).unwrap();
    assert_eq!((lease.ttl, lease.keys), (60, vec![b"b".to_vec()]));
    assert_eq!(r2.hash_kv(0).unwrap().2, r.current_revision());

    // A flipped byte and a cut file are refused with what is wrong.
    let mut bytes = std::fs::read(&file).unwrap();
    let bad = out.path().join("bad.db");
    bytes[100] ^= 0x40;
    std::fs::write(&bad, &bytes).unwrap();
    let e = backup::verify(&bad).unwrap_err();
    assert!(matches!(e, BackupError::ChecksumMismatch { .. }), "{e}");
    bytes[100] ^= 0x40;
    for cut in [10, 64, 90, 200, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let e = backup::verify(&bad).unwrap_err();
        assert!(
            matches!(e, BackupError::Truncated { at, .. } if at == cut as u64),
            "cut {cut}: {e}"
        );
    }
    std::fs::write(
        &bad,
        b"not a snapshot at all, just text, long enough for a header............................",
    )
    .unwrap();
    let e = backup::verify(&bad).unwrap_err();
    assert!(e.to_string().contains("not a crawler snapshot"), "{e}");
}

#[tokio::test]
async fn hash_kv_is_deterministic() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_db1, sm1) = filled(d1.path()).await;
    let (_db2, sm2) = filled(d2.path()).await;
    let (r1, r2) = (sm1.reader(), sm2.reader());
    let cur = r1.current_revision();
    assert_eq!(r1.hash_kv(0).unwrap(), r2.hash_kv(0).unwrap());
    assert_eq!(r1.hash_kv(cur - 1).unwrap(), r2.hash_kv(cur - 1).unwrap());
    assert_ne!(r1.hash_kv(cur - 1).unwrap().0, r1.hash_kv(cur).unwrap().0);
    assert_eq!(r1.hash_kv(0).unwrap().1, 4);
    assert_eq!(r1.hash_kv(4), Err(ApplyError::Compacted));
    assert_eq!(r1.hash_kv(cur + 1), Err(ApplyError::FutureRevision));
    assert_eq!(r1.hash_all().unwrap(), r2.hash_all().unwrap());
}
