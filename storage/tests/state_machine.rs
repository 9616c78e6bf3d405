//! The MVCC state machine through its public API, on real sled in temp dirs: revisions, key
//! generations, puts with leases, deletes, txns, ranges, compaction, leases, events, reopen and
//! snapshots.

mod support;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use crawler_storage::*;
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder,
    SnapshotMeta,
};
use parking_lot::Mutex;

openraft::declare_raft_types!(
    /// Test type config: the store's commands with the default node type.
    pub TC:
        D = Command,
        R = ApplyResponse,
        NodeId = u64,
        Node = BasicNode,
);

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// Records everything the state machine announces.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<(i64, Vec<Event>)>>,
    restored: Mutex<Vec<i64>>,
}

impl ApplyObserver for Recorder {
    fn on_apply(&self, revision: i64, events: &[Event]) {
        self.applied.lock().push((revision, events.to_vec()));
    }
    fn on_restore(&self, revision: i64) {
        self.restored.lock().push(revision);
    }
}

/// A state machine on a fresh sled db, fed entries with consecutive log indexes.
struct H {
    dir: tempfile::TempDir,
    sm: Option<StateMachine>,
    db: Option<sled::Db>,
    next: u64,
    rec: Arc<Recorder>,
}

impl H {
    fn new() -> H {
        let dir = tempfile::tempdir().unwrap();
        let (db, sm) = open(dir.path());
        let rec = Arc::new(Recorder::default());
        sm.set_observer(rec.clone());
        H {
            dir,
            sm: Some(sm),
            db: Some(db),
            next: 1,
            rec,
        }
    }

    fn sm(&mut self) -> &mut StateMachine {
        self.sm.as_mut().unwrap()
    }

    fn r(&self) -> StoreReader {
        self.sm.as_ref().unwrap().reader()
    }

    /// Close everything and open the same directory again.
    fn reopen(&mut self) {
        self.sm = None;
        self.db = None;
        let (db, sm) = open(self.dir.path());
        self.rec = Arc::new(Recorder::default());
        sm.set_observer(self.rec.clone());
        self.sm = Some(sm);
        self.db = Some(db);
    }

    async fn entries(&mut self, payloads: Vec<EntryPayload<TC>>) -> Vec<ApplyResponse> {
        let entries: Vec<Entry<TC>> = payloads
            .into_iter()
            .map(|payload| {
                let e = Entry {
                    log_id: log_id(self.next),
                    payload,
                };
                self.next += 1;
                e
            })
            .collect();
        RaftStateMachine::<TC>::apply(self.sm(), entries)
            .await
            .unwrap()
    }

    async fn cmd(&mut self, c: Command) -> ApplyResponse {
        self.entries(vec![EntryPayload::Normal(c)]).await.remove(0)
    }

    async fn put(&mut self, k: &str, v: &str) -> ApplyResponse {
        self.cmd(Command::Put(put(k, v))).await
    }

    async fn del(&mut self, k: &str, end: &[u8]) -> ApplyResponse {
        self.cmd(Command::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.to_vec(),
            prev_kv: true,
        }))
        .await
    }

    async fn txn(&mut self, t: TxnRequest) -> (i64, Result<TxnResponse, ApplyError>) {
        let r = self.cmd(Command::Txn(t)).await;
        let res = r.result.map(|c| match c {
            CommandResult::Txn(t) => t,
            other => panic!("unexpected {other:?}"),
        });
        (r.revision, res)
    }

    fn get(&self, k: &str) -> Option<KeyValue> {
        self.get_at(k, 0).unwrap()
    }

    fn get_at(&self, k: &str, rev: i64) -> Result<Option<KeyValue>, ApplyError> {
        let mut r = self.r().range(&RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        })?;
        assert!(r.kvs.len() <= 1);
        Ok(r.kvs.pop())
    }

    fn rev(&self) -> i64 {
        self.r().current_revision()
    }
}

fn open(dir: &Path) -> (sled::Db, StateMachine) {
    let db = support::open_db_when_free(dir);
    let sm = StateMachine::open(&db).unwrap();
    (db, sm)
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn range(k: &str, end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn cmp(k: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: k.into(),
        range_end: vec![],
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn membership_payload(ids: &[u64]) -> EntryPayload<TC> {
    let set: BTreeSet<u64> = ids.iter().copied().collect();
    EntryPayload::Membership(Membership::new(vec![set], None))
}

#[tokio::test]
async fn revision_arithmetic() {
    let mut h = H::new();
    assert_eq!(h.rev(), 1);
    assert_eq!(h.r().applied_index(), 0);

    assert_eq!(h.put("a", "1").await.revision, 2);
    assert_eq!(h.put("b", "1").await.revision, 3);

    // A delete that matches nothing is not a write.
    let r = h.del("zzz", b"").await;
    assert_eq!(r.revision, 3);
    assert_eq!(
        r.result,
        Ok(CommandResult::DeleteRange(DeleteRangeResponse::default()))
    );
    assert_eq!(h.del("b", b"").await.revision, 4);

    // Failed put: error result, nothing changes.
    let mut p = put("c", "1");
    p.lease = 99;
    let r = h.cmd(Command::Put(p)).await;
    assert_eq!(r.revision, 4);
    assert_eq!(r.result, Err(ApplyError::LeaseNotFound));
    assert!(h.get("c").is_none());

    // Non-key commands and raft entries leave the revision alone.
    let rs = h
        .entries(vec![
            EntryPayload::Blank,
            membership_payload(&[1, 2]),
            EntryPayload::Normal(Command::LeaseGrant { id: 5, ttl: 10 }),
            EntryPayload::Normal(Command::PublishMember {
                id: 1,
                attrs: MemberAttrs {
                    name: "n1".into(),
                    client_urls: vec!["http://x".into()],
                },
            }),
            EntryPayload::Normal(Command::ForgetMember { id: 9 }),
        ])
        .await;
    assert_eq!(rs.len(), 5);
    assert!(rs.iter().all(|r| r.revision == 4));
    assert_eq!(rs[0].result, Ok(CommandResult::Done));
    assert_eq!(rs[1].result, Ok(CommandResult::Done));
    assert_eq!(
        rs[2].result,
        Ok(CommandResult::LeaseGrant { id: 5, ttl: 10 })
    );
    let again = h.cmd(Command::LeaseGrant { id: 5, ttl: 1 }).await;
    assert_eq!(again.result, Err(ApplyError::LeaseExists));
    assert_eq!(h.r().member_attrs()[&1].name, "n1");

    // Read-only txn: no revision.
    let (rev, res) = h
        .txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Range(range("a", b""))],
            failure: vec![],
        })
        .await;
    assert_eq!(rev, 4);
    assert!(res.unwrap().succeeded);

    // A txn with three writes: one revision, shared by every key.
    let (rev, res) = h
        .txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(put("x", "1")),
                RequestOp::Put(put("y", "1")),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    ..Default::default()
                }),
            ],
            failure: vec![],
        })
        .await;
    res.unwrap();
    assert_eq!(rev, 5);
    assert_eq!(h.get("x").unwrap().mod_revision, 5);
    assert_eq!(h.get("y").unwrap().mod_revision, 5);
    assert!(h.get("a").is_none());
    assert_eq!(h.rev(), 5);
    assert_eq!(h.r().applied_index(), h.next - 1);
}

#[tokio::test]
async fn versions_across_generations() {
    let mut h = H::new();
    h.put("k", "v1").await; // 2
    h.put("k", "v2").await; // 3
    let kv = h.get("k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let r = h.del("k", b"").await; // 4
    match r.result {
        Ok(CommandResult::DeleteRange(d)) => {
            assert_eq!(d.deleted, 1);
            assert_eq!(d.prev_kvs, vec![kv.clone()]);
        }
        other => panic!("{other:?}"),
    }
    h.put("k", "v3").await; // 5
    let kv = h.get("k").unwrap();
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.as_slice()
        ),
        (5, 5, 1, &b"v3"[..])
    );
    // History.
    assert_eq!(h.get_at("k", 2).unwrap().unwrap().value, b"v1");
    assert_eq!(h.get_at("k", 3).unwrap().unwrap().version, 2);
    assert!(h.get_at("k", 4).unwrap().is_none());
    assert!(h.get_at("k", 1).unwrap().is_none());
    assert_eq!(h.get_at("k", 6), Err(ApplyError::FutureRevision));
}

#[tokio::test]
async fn put_with_lease_and_ignore_flags() {
    let mut h = H::new();
    let mut p = put("k", "v");
    p.ignore_value = true;
    assert_eq!(
        h.cmd(Command::Put(p.clone())).await.result,
        Err(ApplyError::KeyNotFound)
    );
    let mut p2 = put("k", "v");
    p2.ignore_lease = true;
    assert_eq!(
        h.cmd(Command::Put(p2)).await.result,
        Err(ApplyError::KeyNotFound)
    );
    assert_eq!(h.rev(), 1);

    h.cmd(Command::LeaseGrant { id: 7, ttl: 30 }).await;
    h.cmd(Command::LeaseGrant { id: 8, ttl: 30 }).await;
    let mut p = put("k", "v1");
    p.lease = 7;
    h.cmd(Command::Put(p)).await; // 2
    assert_eq!(h.get("k").unwrap().lease, 7);
    assert_eq!(h.r().lease(7).unwrap().keys, vec![b"k".to_vec()]);

    // ignore_lease keeps lease 7, new value; prev_kv returned.
    let mut p = put("k", "v2");
    p.ignore_lease = true;
    p.prev_kv = true;
    let r = h.cmd(Command::Put(p)).await; // 3
    match r.result {
        Ok(CommandResult::Put(PutResponse {
            prev_kv: Some(prev),
        })) => {
            assert_eq!(prev.value, b"v1");
            assert_eq!(prev.lease, 7);
        }
        other => panic!("{other:?}"),
    }
    let kv = h.get("k").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v2"[..], 7, 2)
    );

    // ignore_value keeps the value; lease moves to 8 (detached from 7).
    let mut p = put("k", "");
    p.ignore_value = true;
    p.lease = 8;
    h.cmd(Command::Put(p)).await; // 4
    let kv = h.get("k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"v2"[..], 8));
    assert!(h.r().lease(7).unwrap().keys.is_empty());
    assert_eq!(h.r().lease(8).unwrap().keys, vec![b"k".to_vec()]);

    // Plain put without lease detaches.
    h.put("k", "v3").await;
    assert_eq!(h.get("k").unwrap().lease, 0);
    assert!(h.r().lease(8).unwrap().keys.is_empty());

    // Unknown lease: nothing changes.
    let mut p = put("k", "v4");
    p.lease = 1234;
    let before = h.rev();
    assert_eq!(
        h.cmd(Command::Put(p)).await.result,
        Err(ApplyError::LeaseNotFound)
    );
    assert_eq!(h.rev(), before);
    assert_eq!(h.get("k").unwrap().value, b"v3");
    let mut ids: Vec<i64> = h.r().leases().iter().map(|l| l.id).collect();
    ids.sort();
    assert_eq!(ids, vec![7, 8]);
}

#[tokio::test]
async fn delete_ranges() {
    let mut h = H::new();
    for k in ["a", "b/1", "b/2", "b0", "c", "d"] {
        h.put(k, "v").await;
    }
    let r = h.del("b/", b"b0").await;
    let rev = r.revision;
    match r.result {
        Ok(CommandResult::DeleteRange(d)) => {
            assert_eq!(d.deleted, 2);
            assert_eq!(keys(&d.prev_kvs), vec!["b/1", "b/2"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rev, 8);
    // "\0" = every key >= "c".
    let r = h.del("c", &[0]).await;
    assert_eq!(r.revision, 9);
    let all = h.r().range(&range("\0", &[0])).unwrap();
    assert_eq!(keys(&all.kvs), vec!["a", "b0"]);
    // range_end <= key is an empty range.
    let r = h.del("b", b"a").await;
    assert_eq!(r.revision, 9);
    // Events of the prefix delete: two DELETEs at revision 8 with prev_kv.
    let applied = h.rec.applied.lock().clone();
    let (rev8, evs) = applied.iter().find(|(r, _)| *r == 8).unwrap();
    assert_eq!(*rev8, 8);
    assert_eq!(evs.len(), 2);
    for e in evs {
        assert_eq!(e.kind, EventType::Delete);
        assert_eq!(e.kv.mod_revision, 8);
        assert_eq!(e.kv.version, 0);
        assert!(e.kv.value.is_empty());
        assert_eq!(e.prev_kv.as_ref().unwrap().key, e.kv.key);
    }
}

#[tokio::test]
async fn txn_compares() {
    let mut h = H::new();
    h.cmd(Command::LeaseGrant { id: 3, ttl: 10 }).await;
    h.put("a", "1").await; // 2
    h.put("a", "2").await; // 3: create 2, mod 3, version 2
    let mut p = put("b", "x");
    p.lease = 3;
    h.cmd(Command::Put(p)).await; // 4

    use CompareResult::*;
    use CompareTarget::*;
    let cases: Vec<(Compare, bool)> = vec![
        (cmp("a", Equal, Version(2)), true),
        (cmp("a", Greater, Version(1)), true),
        (cmp("a", Less, Version(2)), false),
        (cmp("a", NotEqual, Version(2)), false),
        (cmp("a", Equal, Create(2)), true),
        (cmp("a", Equal, Mod(3)), true),
        (cmp("a", Greater, Mod(3)), false),
        (cmp("a", Equal, Value(b"2".to_vec())), true),
        (cmp("a", Less, Value(b"3".to_vec())), true),
        (cmp("b", Equal, Lease(3)), true),
        (cmp("a", Equal, Lease(0)), true),
        // A missing key is a zero KeyValue...
        (cmp("zz", Equal, Create(0)), true),
        (cmp("zz", Equal, Version(0)), true),
        (cmp("zz", Equal, Lease(0)), true),
        // ...except for VALUE, which always fails.
        (cmp("zz", Equal, Value(vec![])), false),
        (cmp("zz", NotEqual, Value(b"q".to_vec())), false),
    ];
    for (c, want) in cases {
        let (_, res) = h
            .txn(TxnRequest {
                compare: vec![c.clone()],
                success: vec![],
                failure: vec![],
            })
            .await;
        assert_eq!(res.unwrap().succeeded, want, "{c:?}");
    }
    // Range compares hold for every key in range.
    let mut c = cmp("a", Greater, Mod(1));
    c.range_end = b"c".to_vec();
    let (_, res) = h
        .txn(TxnRequest {
            compare: vec![c.clone()],
            ..Default::default()
        })
        .await;
    assert!(res.unwrap().succeeded);
    c.target = Mod(3);
    let (_, res) = h
        .txn(TxnRequest {
            compare: vec![c.clone()],
            ..Default::default()
        })
        .await;
    assert!(!res.unwrap().succeeded, "b has mod 4 > 3 but a has 3");
    // An empty range compares as a zero KeyValue.
    let mut c = cmp("m", Equal, Create(0));
    c.range_end = b"n".to_vec();
    let (_, res) = h
        .txn(TxnRequest {
            compare: vec![c],
            ..Default::default()
        })
        .await;
    assert!(res.unwrap().succeeded);
    // All compares must hold.
    let (rev, res) = h
        .txn(TxnRequest {
            compare: vec![cmp("a", Equal, Version(2)), cmp("a", Equal, Version(3))],
            success: vec![RequestOp::Put(put("s", "1"))],
            failure: vec![RequestOp::Put(put("f", "1"))],
        })
        .await;
    let res = res.unwrap();
    assert!(!res.succeeded);
    assert_eq!(rev, 5);
    assert!(h.get("f").is_some());
    assert!(h.get("s").is_none());
}

#[tokio::test]
async fn txn_semantics() {
    let mut h = H::new();
    h.put("k", "old").await; // 2
                             // Later ops see earlier writes; nested txns; one revision for all.
    let inner = TxnRequest {
        // Compares of nested txns are evaluated before the outer txn runs (etcd): "n" is
        // absent then, although the outer txn writes it first.
        compare: vec![cmp("n", CompareResult::Equal, CompareTarget::Create(0))],
        success: vec![
            RequestOp::Put(put("inner", "1")),
            RequestOp::Range(range("n", b"")),
        ],
        failure: vec![RequestOp::Put(put("inner-failure", "1"))],
    };
    let (rev, res) = h
        .txn(TxnRequest {
            compare: vec![cmp(
                "k",
                CompareResult::Equal,
                CompareTarget::Value(b"old".to_vec()),
            )],
            success: vec![
                RequestOp::Put(put("n", "1")),
                RequestOp::Put(put("k", "new")),
                RequestOp::Range(range("k", b"")),
                RequestOp::Txn(inner),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"n".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                }),
                RequestOp::Range(range("a", b"z")),
            ],
            failure: vec![],
        })
        .await;
    assert_eq!(rev, 3);
    let res = res.unwrap();
    assert!(res.succeeded);
    match &res.responses[2] {
        ResponseOp::Range(r) => {
            assert_eq!(r.kvs[0].value, b"new");
            assert_eq!(r.kvs[0].version, 2);
            assert_eq!(r.kvs[0].mod_revision, 3);
        }
        other => panic!("{other:?}"),
    }
    match &res.responses[3] {
        ResponseOp::Txn(t) => {
            assert!(t.succeeded);
            match &t.responses[1] {
                ResponseOp::Range(r) => assert_eq!(r.kvs[0].value, b"1"),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    match &res.responses[4] {
        ResponseOp::DeleteRange(d) => {
            assert_eq!(d.deleted, 1);
            assert_eq!(d.prev_kvs[0].mod_revision, 3);
        }
        other => panic!("{other:?}"),
    }
    match &res.responses[5] {
        ResponseOp::Range(r) => assert_eq!(keys(&r.kvs), vec!["inner", "k"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.rev(), 3);
    assert!(h.get("n").is_none());
    assert_eq!(h.get("inner").unwrap().mod_revision, 3);
    // Events of the revision in order, with sub-revision order.
    let applied = h.rec.applied.lock().clone();
    let (r, evs) = applied.last().unwrap();
    assert_eq!(*r, 3);
    let kinds: Vec<(EventType, String)> = evs
        .iter()
        .map(|e| (e.kind, String::from_utf8(e.kv.key.clone()).unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventType::Put, "n".into()),
            (EventType::Put, "k".into()),
            (EventType::Put, "inner".into()),
            (EventType::Delete, "n".into()),
        ]
    );
    assert_eq!(evs[1].prev_kv.as_ref().unwrap().value, b"old");
    assert!(evs[0].prev_kv.is_none());

    // Putting a key twice in one txn (via nesting) bumps its version twice.
    let (rev, res) = h
        .txn(TxnRequest {
            success: vec![
                RequestOp::Put(put("dup", "1")),
                RequestOp::Txn(TxnRequest {
                    success: vec![RequestOp::Put(put("dup", "2"))],
                    ..Default::default()
                }),
            ],
            ..Default::default()
        })
        .await;
    res.unwrap();
    assert_eq!(rev, 4);
    let kv = h.get("dup").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.create_revision),
        (&b"2"[..], 2, 4)
    );
    // The history read sees the same.
    let evs = h.r().events(b"dup", b"", 4, 4, 0).unwrap();
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[1].prev_kv.as_ref().unwrap().value, b"1");
}

#[tokio::test]
async fn failed_txn_changes_nothing() {
    let mut h = H::new();
    h.put("k", "v").await; // 2
    h.cmd(Command::LeaseGrant { id: 1, ttl: 5 }).await;
    let before_events = h.rec.applied.lock().len();

    // A put with a missing lease fails the txn before anything is written.
    let mut bad = put("y", "1");
    bad.lease = 42;
    let (rev, res) = h
        .txn(TxnRequest {
            success: vec![RequestOp::Put(put("x", "1")), RequestOp::Put(bad)],
            ..Default::default()
        })
        .await;
    assert_eq!(res, Err(ApplyError::LeaseNotFound));
    assert_eq!(rev, 2);

    // A failure found only while running (ignore_value after the txn deleted the key) rolls
    // back everything the txn did, lease attachments included.
    let mut leased = put("z", "1");
    leased.lease = 1;
    let mut iv = put("k", "");
    iv.ignore_value = true;
    let (rev, res) = h
        .txn(TxnRequest {
            success: vec![
                RequestOp::Put(leased),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                }),
                RequestOp::Put(iv),
            ],
            ..Default::default()
        })
        .await;
    assert_eq!(res, Err(ApplyError::KeyNotFound));
    assert_eq!(rev, 2);

    // A range at a future revision fails the txn too.
    let (_, res) = h
        .txn(TxnRequest {
            success: vec![
                RequestOp::Put(put("x", "1")),
                RequestOp::Range(RangeRequest {
                    key: b"k".to_vec(),
                    revision: 100,
                    ..Default::default()
                }),
            ],
            ..Default::default()
        })
        .await;
    assert_eq!(res, Err(ApplyError::FutureRevision));

    assert_eq!(h.rev(), 2);
    assert!(h.get("x").is_none());
    assert!(h.get("z").is_none());
    assert_eq!(h.get("k").unwrap().value, b"v");
    assert!(h.r().lease(1).unwrap().keys.is_empty());
    assert_eq!(h.rec.applied.lock().len(), before_events);
    // The next write gets the next revision, and state survives a reopen unchanged.
    assert_eq!(h.put("w", "1").await.revision, 3);
    h.reopen();
    assert_eq!(h.rev(), 3);
    assert!(h.get("z").is_none());
    assert_eq!(h.get("k").unwrap().value, b"v");
}

#[tokio::test]
async fn range_options() {
    let mut h = H::new();
    // key: value, written in this order (revisions 2..=6).
    for (k, v) in [("e", "1"), ("d", "5"), ("c", "2"), ("b", "4"), ("a", "3")] {
        h.put(k, v).await;
    }
    h.put("c", "2b").await; // 7: c version 2
    let r = h.r();
    let all = r.range(&range("a", b"z")).unwrap();
    assert_eq!(keys(&all.kvs), vec!["a", "b", "c", "d", "e"]);
    assert_eq!((all.count, all.more), (5, false));

    let mut q = range("a", b"z");
    q.limit = 2;
    let lim = r.range(&q).unwrap();
    assert_eq!(keys(&lim.kvs), vec!["a", "b"]);
    assert_eq!((lim.count, lim.more), (5, true));
    q.limit = 5;
    assert!(!r.range(&q).unwrap().more);

    let mut q = range("a", b"z");
    q.sort_order = SortOrder::Descend;
    q.sort_target = SortTarget::Value;
    q.limit = 3;
    let s = r.range(&q).unwrap();
    assert_eq!(keys(&s.kvs), vec!["d", "b", "a"]);
    assert_eq!((s.count, s.more), (5, true));

    let mut q = range("a", b"z");
    q.sort_order = SortOrder::Descend;
    assert_eq!(
        keys(&r.range(&q).unwrap().kvs),
        vec!["e", "d", "c", "b", "a"]
    );

    // A non-key target without an order sorts ascending.
    let mut q = range("a", b"z");
    q.sort_target = SortTarget::Mod;
    assert_eq!(
        keys(&r.range(&q).unwrap().kvs),
        vec!["e", "d", "b", "a", "c"]
    );
    q.sort_target = SortTarget::Version;
    q.sort_order = SortOrder::Descend;
    assert_eq!(keys(&r.range(&q).unwrap().kvs)[0], "c");
    q.sort_target = SortTarget::Create;
    q.sort_order = SortOrder::Ascend;
    assert_eq!(
        keys(&r.range(&q).unwrap().kvs),
        vec!["e", "d", "c", "b", "a"]
    );

    // Filters apply before the limit; count is the total in range.
    let mut q = range("a", b"z");
    q.min_mod_revision = 4;
    q.max_mod_revision = 6;
    let f = r.range(&q).unwrap();
    assert_eq!(keys(&f.kvs), vec!["a", "b"]);
    assert_eq!((f.count, f.more), (5, false));
    q.limit = 1;
    let f = r.range(&q).unwrap();
    assert_eq!(keys(&f.kvs), vec!["a"]);
    assert!(f.more);
    let mut q = range("a", b"z");
    q.min_create_revision = 3;
    q.max_create_revision = 4;
    assert_eq!(keys(&r.range(&q).unwrap().kvs), vec!["c", "d"]);

    // keys_only / count_only.
    let mut q = range("a", b"z");
    q.keys_only = true;
    let k = r.range(&q).unwrap();
    assert!(k.kvs.iter().all(|kv| kv.value.is_empty() && kv.version > 0));
    let mut q = range("a", b"z");
    q.count_only = true;
    let c = r.range(&q).unwrap();
    assert!(c.kvs.is_empty());
    assert_eq!(c.count, 5);

    // Old revision: at 3 only e and d existed.
    let mut q = range("a", b"z");
    q.revision = 3;
    let old = r.range(&q).unwrap();
    assert_eq!(keys(&old.kvs), vec!["d", "e"]);
    assert_eq!(old.count, 2);
    q.revision = 8;
    assert_eq!(r.range(&q), Err(ApplyError::FutureRevision));
    // Single key, missing key, empty range.
    assert_eq!(r.range(&range("c", b"")).unwrap().kvs[0].value, b"2b");
    assert_eq!(r.range(&range("zz", b"")).unwrap().count, 0);
    assert_eq!(r.range(&range("d", b"a")).unwrap().count, 0);

    // Read-only txn through the reader.
    let (rev, t) = r
        .txn_read_only(&TxnRequest {
            compare: vec![cmp("c", CompareResult::Equal, CompareTarget::Version(2))],
            success: vec![RequestOp::Range(range("c", b""))],
            failure: vec![],
        })
        .unwrap();
    assert_eq!(rev, 7);
    assert!(t.succeeded);
    let mut q = range("c", b"");
    q.revision = 99;
    assert_eq!(
        r.txn_read_only(&TxnRequest {
            success: vec![RequestOp::Range(q)],
            ..Default::default()
        }),
        Err(ApplyError::FutureRevision)
    );
}

#[tokio::test]
async fn compaction() {
    let mut h = H::new();
    h.put("a", "1").await; // 2
    h.put("a", "2").await; // 3
    h.put("b", "1").await; // 4
    h.del("b", b"").await; // 5
    h.put("c", "1").await; // 6
    h.del("c", b"").await; // 7
    h.put("a", "3").await; // 8
    assert_eq!(
        h.cmd(Command::Compact { revision: 9 }).await.result,
        Err(ApplyError::FutureRevision)
    );
    let r = h.cmd(Command::Compact { revision: 6 }).await;
    assert_eq!((r.revision, r.result), (8, Ok(CommandResult::Compact)));
    assert_eq!(h.r().compact_revision(), 6);
    assert_eq!(
        h.cmd(Command::Compact { revision: 6 }).await.result,
        Err(ApplyError::Compacted)
    );
    assert_eq!(
        h.cmd(Command::Compact { revision: 3 }).await.result,
        Err(ApplyError::Compacted)
    );

    let check = |h: &H| {
        // Below the compaction point: compacted. At it: still readable (as etcd).
        assert_eq!(h.get_at("a", 5), Err(ApplyError::Compacted));
        assert_eq!(h.get_at("a", 6).unwrap().unwrap().value, b"2");
        assert!(h.get_at("b", 6).unwrap().is_none());
        assert_eq!(h.get_at("c", 6).unwrap().unwrap().value, b"1");
        assert!(h.get_at("c", 7).unwrap().is_none());
        assert_eq!(h.get("a").unwrap().value, b"3");
        assert_eq!(h.get("a").unwrap().version, 3);
        assert_eq!(h.get("a").unwrap().create_revision, 2);
        assert_eq!(
            h.r().events(b"a", b"", 6, 10, 0),
            Err(ApplyError::Compacted)
        );
        let evs = h.r().events(b"\0", &[0], 7, 10, 0).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].kind, EventType::Delete);
        assert_eq!(evs[0].prev_kv.as_ref().unwrap().value, b"1");
        assert_eq!(evs[1].prev_kv.as_ref().unwrap().value, b"2");
        assert_eq!(h.rev(), 8);
    };
    check(&h);
    h.reopen();
    check(&h);

    // Rows really are gone: "b" (deleted at 5 <= 6) left no history, so events from 7 on
    // never mention it and a compaction at the head drops c's tombstone as well.
    let r = h.cmd(Command::Compact { revision: 8 }).await;
    assert_eq!(r.revision, 8);
    assert_eq!(h.get_at("a", 8).unwrap().unwrap().value, b"3");
    assert!(h.get("c").is_none());
    h.reopen();
    assert_eq!(h.rev(), 8);
    assert_eq!(h.r().compact_revision(), 8);
    assert_eq!(h.put("d", "1").await.revision, 9);
    let evs = h.r().events(b"\0", &[0], 9, 9, 0).unwrap();
    assert_eq!(evs.len(), 1);
}

/// Version rows (prefix `k`) of the state machine tree as sled holds them.
fn stored_versions(h: &H) -> usize {
    let db = h.db.as_ref().unwrap();
    db.open_tree(state_machine::SM_TREE)
        .unwrap()
        .scan_prefix(b"k")
        .count()
}

#[tokio::test]
async fn compaction_deletes_the_dropped_rows_from_sled() {
    let mut h = H::new();
    for i in 0..200 {
        h.put("a", &i.to_string()).await;
    }
    h.put("b", "1").await;
    h.del("b", b"").await;
    // Reopen so the count is what reached sled, not what waits in memory.
    h.reopen();
    assert_eq!(stored_versions(&h), 202);
    let head = h.rev();
    assert_eq!(
        h.cmd(Command::Compact { revision: head }).await.result,
        Ok(CommandResult::Compact)
    );
    h.reopen();
    // Only a's newest version is left; b's versions and tombstone are gone.
    assert_eq!(stored_versions(&h), 1);
    assert_eq!(h.get("a").unwrap().value, b"199");
    assert_eq!(h.get("a").unwrap().version, 200);
}

#[tokio::test]
async fn compaction_removes_everything_keeps_revision() {
    let mut h = H::new();
    h.put("a", "1").await; // 2
    h.del("a", b"").await; // 3
    h.cmd(Command::Compact { revision: 3 }).await;
    h.reopen();
    assert_eq!(h.rev(), 3);
    assert_eq!(h.put("a", "2").await.revision, 4);
    assert_eq!(h.get("a").unwrap().create_revision, 4);
}

#[tokio::test]
async fn lease_revoke() {
    let mut h = H::new();
    h.cmd(Command::LeaseGrant { id: 10, ttl: 60 }).await;
    for k in ["s/2", "s/1", "s/3"] {
        let mut p = put(k, "v");
        p.lease = 10;
        h.cmd(Command::Put(p)).await;
    }
    h.put("other", "v").await; // 5
    let info = h.r().lease(10).unwrap();
    assert_eq!(info.ttl, 60);
    assert_eq!(
        info.keys,
        vec![b"s/1".to_vec(), b"s/2".to_vec(), b"s/3".to_vec()]
    );
    assert!(h.r().lease(11).is_none());

    assert_eq!(
        h.cmd(Command::LeaseRevoke { id: 11 }).await.result,
        Err(ApplyError::LeaseNotFound)
    );
    let r = h.cmd(Command::LeaseRevoke { id: 10 }).await;
    assert_eq!((r.revision, r.result), (6, Ok(CommandResult::LeaseRevoke)));
    assert!(h.r().lease(10).is_none());
    assert_eq!(
        keys(&h.r().range(&range("\0", &[0])).unwrap().kvs),
        vec!["other"]
    );
    let applied = h.rec.applied.lock().clone();
    let (rev, evs) = applied.last().unwrap();
    assert_eq!(*rev, 6);
    assert_eq!(
        keys(&evs.iter().map(|e| e.kv.clone()).collect::<Vec<_>>()),
        vec!["s/1", "s/2", "s/3"]
    );
    assert!(evs
        .iter()
        .all(|e| e.kind == EventType::Delete && e.kv.mod_revision == 6 && e.prev_kv.is_some()));

    // Revoking a lease without keys is not a write.
    h.cmd(Command::LeaseGrant { id: 12, ttl: 1 }).await;
    let r = h.cmd(Command::LeaseRevoke { id: 12 }).await;
    assert_eq!(r.revision, 6);
    assert!(h.r().leases().is_empty());
    // Deleting a leased key detaches it.
    h.cmd(Command::LeaseGrant { id: 13, ttl: 1 }).await;
    let mut p = put("t", "v");
    p.lease = 13;
    h.cmd(Command::Put(p)).await;
    h.del("t", b"").await;
    assert!(h.r().lease(13).unwrap().keys.is_empty());
}

/// An expiry decided in one raft term revokes only from an entry of that term (the test's
/// entries are all of term 1); from any other it changes nothing, alone or in a batch.
#[tokio::test]
async fn lease_expire_is_bound_to_its_term() {
    let mut h = H::new();
    h.cmd(Command::LeaseGrant { id: 20, ttl: 60 }).await;
    let mut p = put("e", "v");
    p.lease = 20;
    h.cmd(Command::Put(p)).await;

    for stale in [0, 2] {
        let rev = h.rev();
        let r = h
            .cmd(Command::LeaseExpire {
                id: 20,
                term: stale,
            })
            .await;
        assert_eq!((r.revision, r.result), (rev, Err(ApplyError::StaleExpiry)));
        let r = h
            .cmd(Command::Batch(vec![
                Command::LeaseExpire {
                    id: 20,
                    term: stale,
                },
                Command::Put(put("after", "v")),
            ]))
            .await;
        let Ok(CommandResult::Batch(inner)) = r.result else {
            panic!("batch result {:?}", r.result)
        };
        assert_eq!(inner[0].result, Err(ApplyError::StaleExpiry));
        assert!(inner[1].result.is_ok());
        assert!(h.r().lease(20).is_some());
        assert!(h.get("e").is_some());
    }

    let rev = h.rev();
    let r = h.cmd(Command::LeaseExpire { id: 20, term: 1 }).await;
    assert_eq!(
        (r.revision, r.result),
        (rev + 1, Ok(CommandResult::LeaseRevoke))
    );
    assert!(h.r().lease(20).is_none());
    assert!(h.get("e").is_none());
    assert_eq!(
        h.cmd(Command::LeaseExpire { id: 20, term: 1 }).await.result,
        Err(ApplyError::LeaseNotFound)
    );
}

#[tokio::test]
async fn events_history() {
    let mut h = H::new();
    h.put("a", "1").await; // 2
    h.put("b", "1").await; // 3
    h.put("a", "2").await; // 4
    h.del("a", b"").await; // 5
    let (rev, res) = h
        .txn(TxnRequest {
            success: vec![RequestOp::Put(put("a", "3")), RequestOp::Put(put("b", "2"))],
            ..Default::default()
        })
        .await;
    assert_eq!((rev, res.is_ok()), (6, true));
    h.put("c", "1").await; // 7

    let r = h.r();
    let evs = r.events(b"a", b"", 1, 100, 0).unwrap();
    let summary: Vec<(EventType, i64, Option<Vec<u8>>)> = evs
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventType::Put, 2, None),
            (EventType::Put, 4, Some(b"1".to_vec())),
            (EventType::Delete, 5, Some(b"2".to_vec())),
            (EventType::Put, 6, None),
        ]
    );
    // Every key, a window, and the no-split limit.
    let all = r.events(b"\0", &[0], 3, 6, 0).unwrap();
    assert_eq!(all.len(), 5);
    let lim = r.events(b"\0", &[0], 3, 100, 4).unwrap();
    // 3 (b), 4 (a), 5 (a del), then revision 6 has two events: never split.
    assert_eq!(lim.len(), 5);
    assert_eq!(lim.last().unwrap().kv.mod_revision, 6);
    let lim = r.events(b"\0", &[0], 3, 100, 2).unwrap();
    assert_eq!(lim.len(), 2);
    let prefix = r.events(b"b", b"c", 1, 100, 0).unwrap();
    assert_eq!(prefix.len(), 2);
    assert_eq!(prefix[1].prev_kv.as_ref().unwrap().value, b"1");
    assert!(r.events(b"a", b"", 8, 100, 0).unwrap().is_empty());
    assert_eq!(r.events(b"a", b"", 0, 2, 0).unwrap().len(), 1);
    // The live announcements match the history.
    let announced: Vec<Event> = h
        .rec
        .applied
        .lock()
        .iter()
        .flat_map(|(_, e)| e.clone())
        .collect();
    assert_eq!(announced, r.events(b"\0", &[0], 1, 100, 0).unwrap());
    let revs: Vec<i64> = h.rec.applied.lock().iter().map(|(r, _)| *r).collect();
    assert_eq!(revs, vec![2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn reads_and_history_span_written_and_unwritten_rows() {
    // Applied rows reach sled in groups; a snapshot writes everything first. Reads, history and
    // prev_kv must see the rows in sled and those still in memory alike, and a reopen all of it.
    // Nothing is written but by the snapshot here, so revisions 12..=22 are in memory only.
    let mut h = H::new();
    h.sm().set_persist_policy(PersistPolicy {
        max_ops: usize::MAX,
        max_age: std::time::Duration::MAX,
    });
    for i in 0..10 {
        h.put(&format!("k{}", i % 4), &format!("a{i}")).await; // revisions 2..=11
    }
    let mut builder = RaftStateMachine::<TC>::get_snapshot_builder(h.sm()).await;
    RaftSnapshotBuilder::<TC>::build_snapshot(&mut builder)
        .await
        .unwrap();
    drop(builder);
    for i in 10..20 {
        h.put(&format!("k{}", i % 4), &format!("b{i}")).await; // revisions 12..=21
    }
    h.del("k0", b"").await; // 22

    let check = |h: &H| {
        let r = h.r();
        let evs = r.events(b"k", b"l", 1, 100, 0).unwrap();
        let revs: Vec<i64> = evs.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, (2..=22).collect::<Vec<_>>());
        // Revision 12 overwrote k2, last written at revision 8 (in sled since the snapshot).
        assert_eq!(evs[10].prev_kv.as_ref().unwrap().value, b"a6");
        assert_eq!(evs[20].kind, EventType::Delete);
        assert_eq!(evs[20].prev_kv.as_ref().unwrap().value, b"b16");
        // A window that starts in sled and ends in memory, with the no-split limit.
        assert_eq!(r.events(b"k", b"l", 9, 14, 0).unwrap().len(), 6);
        assert_eq!(r.events(b"k", b"l", 9, 100, 3).unwrap().len(), 3);
        assert_eq!(h.get_at("k1", 6).unwrap().unwrap().value, b"a1");
        assert_eq!(h.get_at("k1", 20).unwrap().unwrap().value, b"b17");
        assert_eq!(h.get("k3").unwrap().value, b"b19");
        assert!(h.get("k0").is_none());
        assert_eq!(h.rev(), 22);
    };
    check(&h);
    h.reopen();
    check(&h);
}

#[tokio::test]
async fn many_entries_one_apply_call() {
    let mut h = H::new();
    h.cmd(Command::LeaseGrant { id: 1, ttl: 1 }).await;
    let mut p = put("l", "v");
    p.lease = 1;
    let rs = h
        .entries(vec![
            EntryPayload::Normal(Command::Put(put("a", "1"))),
            EntryPayload::Normal(Command::Put(put("a", "2"))),
            EntryPayload::Normal(Command::Put(p)),
            EntryPayload::Normal(Command::Compact { revision: 3 }),
            EntryPayload::Normal(Command::LeaseRevoke { id: 1 }),
            EntryPayload::Normal(Command::Txn(TxnRequest {
                compare: vec![cmp(
                    "a",
                    CompareResult::Equal,
                    CompareTarget::Value(b"2".to_vec()),
                )],
                success: vec![RequestOp::Put(put("b", "1"))],
                failure: vec![],
            })),
        ])
        .await;
    let revs: Vec<i64> = rs.iter().map(|r| r.revision).collect();
    assert_eq!(revs, vec![2, 3, 4, 4, 5, 6]);
    assert!(rs.iter().all(|r| r.result.is_ok()), "{rs:?}");
    let announced: Vec<i64> = h.rec.applied.lock().iter().map(|(r, _)| *r).collect();
    assert_eq!(announced, vec![2, 3, 4, 5, 6]);
    h.reopen();
    assert_eq!(h.rev(), 6);
    assert_eq!(h.r().compact_revision(), 3);
    assert_eq!(h.get_at("a", 3).unwrap().unwrap().value, b"2");
    assert_eq!(h.get_at("a", 2), Err(ApplyError::Compacted));
    assert!(h.get("l").is_none());
    assert!(h.get("b").is_some());
}

#[tokio::test]
async fn reopen_restores_everything() {
    let mut h = H::new();
    h.cmd(Command::LeaseGrant { id: 4, ttl: 9 }).await;
    let mut p = put("leased", "v");
    p.lease = 4;
    h.cmd(Command::Put(p)).await; // 2
    h.put("x", "1").await; // 3
    h.put("x", "2").await; // 4
    h.del("x", b"").await; // 5
    h.put("x", "3").await; // 6
    h.cmd(Command::PublishMember {
        id: 7,
        attrs: MemberAttrs {
            name: "m7".into(),
            client_urls: vec!["http://127.0.0.1:1".into()],
        },
    })
    .await;
    h.entries(vec![membership_payload(&[1, 2, 3])]).await;
    let applied = h.next - 1;

    h.reopen();
    assert_eq!(h.rev(), 6);
    assert_eq!(h.r().applied_index(), applied);
    let kv = h.get("x").unwrap();
    assert_eq!((kv.create_revision, kv.version, kv.mod_revision), (6, 1, 6));
    assert_eq!(h.get_at("x", 4).unwrap().unwrap().version, 2);
    assert_eq!(h.r().lease(4).unwrap().keys, vec![b"leased".to_vec()]);
    assert_eq!(h.r().lease(4).unwrap().ttl, 9);
    assert_eq!(h.r().member_attrs()[&7].name, "m7");
    let (last, mem) = RaftStateMachine::<TC>::applied_state(h.sm()).await.unwrap();
    assert_eq!(last, Some(log_id(applied)));
    assert_eq!(mem.log_id(), &Some(log_id(applied)));
    assert_eq!(
        mem.membership().voter_ids().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Revoke after reopen still finds the attached key.
    let r = h.cmd(Command::LeaseRevoke { id: 4 }).await;
    assert_eq!(r.revision, 7);
    assert!(h.get("leased").is_none());
    assert!(h.r().db_size() > 0);
}

#[tokio::test]
async fn snapshot_transfer() {
    let mut src = H::new();
    src.cmd(Command::LeaseGrant { id: 2, ttl: 30 }).await;
    let mut p = put("leased", "v");
    p.lease = 2;
    src.cmd(Command::Put(p)).await; // 2
    src.put("a", "1").await; // 3
    src.put("a", "2").await; // 4
    src.put("b", "1").await; // 5
    src.del("b", b"").await; // 6
    src.cmd(Command::Compact { revision: 3 }).await;
    src.entries(vec![membership_payload(&[1, 2])]).await;

    assert!(RaftStateMachine::<TC>::get_current_snapshot(src.sm())
        .await
        .unwrap()
        .is_none());
    let mut builder = RaftStateMachine::<TC>::get_snapshot_builder(src.sm()).await;
    let snap = RaftSnapshotBuilder::<TC>::build_snapshot(&mut builder)
        .await
        .unwrap();
    drop(builder);
    assert_eq!(snap.meta.last_log_id, Some(log_id(src.next - 1)));
    // Writes after the snapshot are not in it.
    src.put("after", "1").await;

    // The follower has unrelated keys that must disappear.
    let mut dst = H::new();
    dst.put("stale", "x").await;
    dst.put("stale2", "x").await;
    dst.put("stale3", "x").await;
    dst.put("stale4", "x").await;
    dst.put("stale5", "x").await;
    dst.put("stale6", "x").await;
    dst.put("stale7", "x").await;
    dst.cmd(Command::LeaseGrant { id: 99, ttl: 1 }).await;

    // A corrupt snapshot is refused and changes nothing.
    let bad_meta: SnapshotMeta<u64, BasicNode> = snap.meta.clone();
    let err = RaftStateMachine::<TC>::install_snapshot(
        dst.sm(),
        &bad_meta,
        Box::new(Cursor::new(b"not a snapshot".to_vec())),
    )
    .await;
    assert!(err.is_err());
    assert!(dst.get("stale").is_some());

    let mut data = RaftStateMachine::<TC>::begin_receiving_snapshot(dst.sm())
        .await
        .unwrap();
    *data = Cursor::new(snap.snapshot.get_ref().clone());
    RaftStateMachine::<TC>::install_snapshot(dst.sm(), &snap.meta, data)
        .await
        .unwrap();
    assert_eq!(dst.rec.restored.lock().clone(), vec![6]);

    let check = |dst: &H, src: &H| {
        assert_eq!(dst.rev(), 6);
        assert_eq!(dst.r().compact_revision(), 3);
        let all = dst.r().range(&range("\0", &[0])).unwrap();
        assert_eq!(keys(&all.kvs), vec!["a", "leased"]);
        let mut at5 = range("\0", &[0]);
        at5.revision = 5;
        assert_eq!(dst.r().range(&at5), src.r().range(&at5));
        assert_eq!(dst.get_at("a", 2), Err(ApplyError::Compacted));
        assert_eq!(dst.r().lease(2).unwrap().keys, vec![b"leased".to_vec()]);
        assert!(dst.r().lease(99).is_none());
        assert_eq!(
            dst.r().events(b"\0", &[0], 4, 6, 0),
            src.r().events(b"\0", &[0], 4, 6, 0)
        );
    };
    check(&dst, &src);
    let (last, mem) = RaftStateMachine::<TC>::applied_state(dst.sm())
        .await
        .unwrap();
    assert_eq!(last, snap.meta.last_log_id);
    assert_eq!(mem, snap.meta.last_membership);
    let cur = RaftStateMachine::<TC>::get_current_snapshot(dst.sm())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.meta, snap.meta);

    // Everything survives a reopen, including the current snapshot.
    dst.reopen();
    check(&dst, &src);
    let cur = RaftStateMachine::<TC>::get_current_snapshot(dst.sm())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.meta, snap.meta);
    assert_eq!(cur.snapshot.get_ref(), snap.snapshot.get_ref());
    // And the follower continues from the snapshot's revision.
    dst.next = snap.meta.last_log_id.unwrap().index + 1;
    assert_eq!(dst.put("a", "3").await.revision, 7);
    assert_eq!(dst.get("a").unwrap().version, 3);
    src.reopen();
    let cur = RaftStateMachine::<TC>::get_current_snapshot(src.sm())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.meta, snap.meta);
}

#[tokio::test]
async fn readers_see_applied_state_concurrently() {
    let mut h = H::new();
    let reader = h.r();
    let t = std::thread::spawn(move || {
        // Poll with a deadline until the writer's last revision is visible.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let before = reader.current_revision();
            let r = reader.range(&range("\0", &[0])).unwrap();
            assert!(r.count >= before - 1, "a read never goes back in time");
            assert!(r
                .kvs
                .iter()
                .all(|kv| kv.mod_revision <= reader.current_revision()));
            if before >= 51 {
                return r.count;
            }
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::yield_now();
        }
    });
    for i in 0..50 {
        h.put(&format!("k{i}"), "v").await;
    }
    assert_eq!(t.join().unwrap(), 50);
}

/// The commands of a batch, as the batch test feeds them (some fail on purpose).
fn batch_cmds() -> Vec<Command> {
    let mut leased = put("l", "v");
    leased.lease = 7;
    let mut missing_lease = put("x", "v");
    missing_lease.lease = 99;
    let mut ignore = put("nokey", "");
    ignore.ignore_value = true;
    vec![
        Command::Put(put("a", "1")),
        Command::LeaseGrant { id: 7, ttl: 60 },
        Command::Put(missing_lease),
        Command::Put(leased),
        Command::Txn(TxnRequest {
            compare: vec![cmp(
                "a",
                CompareResult::Equal,
                CompareTarget::Value(b"1".to_vec()),
            )],
            success: vec![RequestOp::Put(put("a", "2")), RequestOp::Put(put("b", "1"))],
            failure: vec![],
        }),
        Command::Put(ignore),
        Command::LeaseGrant { id: 7, ttl: 5 },
        Command::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: vec![],
            prev_kv: true,
        }),
        Command::LeaseRevoke { id: 7 },
        Command::Put(put("a", "3")),
    ]
}

#[tokio::test]
async fn batch_applies_each_command_as_its_own_entry() {
    let mut h = H::new();
    h.put("z", "0").await; // 2
    let r = h.cmd(Command::Batch(batch_cmds())).await;
    assert_eq!(r.revision, 8);
    let inner = match r.result {
        Ok(CommandResult::Batch(v)) => v,
        other => panic!("unexpected {other:?}"),
    };
    let got: Vec<(i64, Result<&str, ApplyError>)> = inner
        .iter()
        .map(|r| {
            let kind = match &r.result {
                Ok(CommandResult::Put(_)) => Ok("put"),
                Ok(CommandResult::LeaseGrant { .. }) => Ok("grant"),
                Ok(CommandResult::Txn(t)) if t.succeeded => Ok("txn"),
                Ok(CommandResult::DeleteRange(d)) if d.deleted == 1 => Ok("del"),
                Ok(CommandResult::LeaseRevoke) => Ok("revoke"),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => Err(e.clone()),
            };
            (r.revision, kind)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (3, Ok("put")),
            (3, Ok("grant")),
            (3, Err(ApplyError::LeaseNotFound)),
            (4, Ok("put")),
            (5, Ok("txn")),
            (5, Err(ApplyError::KeyNotFound)),
            (5, Err(ApplyError::LeaseExists)),
            (6, Ok("del")),
            (7, Ok("revoke")),
            (8, Ok("put")),
        ]
    );
    // The failed put changed nothing; the lease grant that failed kept the first TTL until
    // the revoke.
    assert!(h.get("x").is_none());
    assert!(h.get("l").is_none());
    assert!(h.r().lease(7).is_none());
    let a = h.get("a").unwrap();
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.version),
        (&b"3"[..], 8, 1)
    );
    assert_eq!(h.get("b").unwrap().mod_revision, 5);
    assert_eq!(h.rev(), 8);
    assert_eq!(h.r().applied_index(), 2);

    // One announcement per inner revision, with that revision's events only.
    let applied = h.rec.applied.lock().clone();
    let summary: Vec<(i64, Vec<(EventType, String)>)> = applied
        .iter()
        .map(|(rev, evs)| {
            (
                *rev,
                evs.iter()
                    .map(|e| (e.kind, String::from_utf8(e.kv.key.clone()).unwrap()))
                    .collect(),
            )
        })
        .collect();
    let p = |k: &str| (EventType::Put, k.to_string());
    let d = |k: &str| (EventType::Delete, k.to_string());
    assert_eq!(
        summary,
        vec![
            (2, vec![p("z")]),
            (3, vec![p("a")]),
            (4, vec![p("l")]),
            (5, vec![p("a"), p("b")]),
            (6, vec![d("a")]),
            (7, vec![d("l")]),
            (8, vec![p("a")]),
        ]
    );
    // The history agrees with the announcements and survives a reopen.
    let announced: Vec<Event> = applied.iter().flat_map(|(_, e)| e.clone()).collect();
    assert_eq!(announced, h.r().events(b"\0", &[0], 1, 100, 0).unwrap());
    h.reopen();
    assert_eq!(h.rev(), 8);
    assert_eq!(h.get("a").unwrap().value, b"3");
    assert!(h.r().lease(7).is_none());
    assert_eq!(h.r().applied_index(), 2);
}

#[tokio::test]
async fn batch_equals_separate_entries() {
    let mut batched = H::new();
    let mut single = H::new();
    let r = batched.cmd(Command::Batch(batch_cmds())).await;
    let inner = match r.result {
        Ok(CommandResult::Batch(v)) => v,
        other => panic!("unexpected {other:?}"),
    };
    let mut separate = Vec::new();
    for c in batch_cmds() {
        separate.push(single.cmd(c).await);
    }
    assert_eq!(inner, separate);
    assert_eq!(*batched.rec.applied.lock(), *single.rec.applied.lock());
    let all = range("\0", &[0]);
    assert_eq!(batched.r().range(&all), single.r().range(&all));
    assert_eq!(
        batched.r().events(b"\0", &[0], 1, 100, 0),
        single.r().events(b"\0", &[0], 1, 100, 0)
    );
}

#[tokio::test]
async fn batch_edge_cases() {
    let mut h = H::new();
    // Empty batch: nothing happens, but the entry is applied.
    let r = h.cmd(Command::Batch(vec![])).await;
    assert_eq!(
        (r.revision, r.result),
        (1, Ok(CommandResult::Batch(vec![])))
    );
    assert_eq!(h.r().applied_index(), 1);
    // A nested batch is rejected on its own; its neighbours apply.
    let r = h
        .cmd(Command::Batch(vec![
            Command::Put(put("a", "1")),
            Command::Batch(vec![Command::Put(put("n", "1"))]),
            Command::Put(put("b", "1")),
        ]))
        .await;
    let inner = match r.result {
        Ok(CommandResult::Batch(v)) => v,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(inner.len(), 3);
    assert_eq!(inner[0].revision, 2);
    assert!(matches!(inner[1].result, Err(ApplyError::Internal(_))));
    assert_eq!(inner[2].revision, 3);
    assert!(h.get("n").is_none());
    // Batches mixed with plain entries in one apply call, with a compaction inside a batch.
    let rs = h
        .entries(vec![
            EntryPayload::Normal(Command::Put(put("a", "2"))),
            EntryPayload::Normal(Command::Batch(vec![
                Command::Put(put("a", "3")),
                Command::Compact { revision: 4 },
                Command::Compact { revision: 4 },
            ])),
            EntryPayload::Blank,
            EntryPayload::Normal(Command::Put(put("c", "1"))),
        ])
        .await;
    let revs: Vec<i64> = rs.iter().map(|r| r.revision).collect();
    assert_eq!(revs, vec![4, 5, 5, 6]);
    let inner = match &rs[1].result {
        Ok(CommandResult::Batch(v)) => v.clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(inner[1].result, Ok(CommandResult::Compact));
    assert_eq!(inner[2].result, Err(ApplyError::Compacted));
    h.reopen();
    assert_eq!(h.rev(), 6);
    assert_eq!(h.r().compact_revision(), 4);
    assert_eq!(h.get_at("a", 4).unwrap().unwrap().value, b"2");
    assert_eq!(h.r().applied_index(), 6);
}
