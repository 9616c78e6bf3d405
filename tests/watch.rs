//! Watch: the hub against a real MVCC state machine, and etcd's Watch gRPC service against an
//! in-process single-node member.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler::server::member::{Limits, Member, MemberConfig};
use crawler::server::watch_hub::{Delivery, WatchHub, WatchSpec, Watcher, WATCHER_BUFFER};
use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::watch_client::WatchClient;
use crawler_proto::etcdserverpb::watch_create_request::FilterType;
use crawler_proto::etcdserverpb::watch_request::RequestUnion;
use crawler_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use crawler_proto::mvccpb::event::EventType as PbEventType;
use crawler_raft::{ClusterState, NodeConfig, TypeConfig};
use crawler_storage::{
    ApplyError, Command, DeleteRangeRequest as StDelete, Event, EventType, PutRequest as StPut,
    StateMachine,
};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use support::ports::free_port;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Hub against a real state machine (entries applied directly, as openraft would)

struct Store {
    _dir: tempfile::TempDir,
    sm: StateMachine,
    hub: Arc<WatchHub>,
    index: u64,
}

impl Store {
    fn open() -> Store {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crawler_storage::open_db(dir.path()).expect("open sled");
        let sm = StateMachine::open(&db).expect("open state machine");
        let hub = WatchHub::new();
        sm.set_observer(hub.clone());
        hub.attach(sm.reader());
        Store {
            _dir: dir,
            sm,
            hub,
            index: 0,
        }
    }

    async fn apply(&mut self, cmd: Command) -> i64 {
        self.index += 1;
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(cmd),
        };
        let resps = self.sm.apply(vec![entry]).await.expect("apply");
        resps[0].revision
    }

    async fn put(&mut self, key: &str, value: &str) -> i64 {
        self.apply(Command::Put(StPut {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }))
        .await
    }

    async fn delete(&mut self, key: &str) -> i64 {
        self.apply(Command::DeleteRange(StDelete {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        }))
        .await
    }
}

fn spec(key: &str) -> WatchSpec {
    WatchSpec {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn prefix_spec(prefix: &str) -> WatchSpec {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    WatchSpec {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        ..Default::default()
    }
}

/// Receive deliveries until `n` events arrived (or panic at the deadline).
async fn recv_events(w: &mut Watcher, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.rx.recv()).await {
            Ok(Some(Delivery::Events(evs))) => {
                assert!(!evs.is_empty(), "empty delivery");
                out.extend(evs)
            }
            Ok(Some(Delivery::Compacted { compact_revision })) => {
                panic!("unexpected compaction at {compact_revision}")
            }
            Ok(None) => panic!("watcher closed after {} events", out.len()),
            Err(_) => panic!("timed out with {} of {n} events", out.len()),
        }
    }
    assert_eq!(out.len(), n, "more events than expected");
    out
}

fn key_of(ev: &Event) -> String {
    String::from_utf8_lossy(&ev.kv.key).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_live_events_filters_and_prev_kv() {
    let mut s = Store::open();
    let mut all = s.hub.watch(prefix_spec("a/")).expect("watch");
    let mut one = s.hub.watch(spec("a/x")).expect("watch");
    let mut prev = s
        .hub
        .watch(WatchSpec {
            prev_kv: true,
            ..spec("a/x")
        })
        .expect("watch");
    let mut no_put = s
        .hub
        .watch(WatchSpec {
            no_put: true,
            ..prefix_spec("a/")
        })
        .expect("watch");
    let mut no_delete = s
        .hub
        .watch(WatchSpec {
            no_delete: true,
            ..prefix_spec("a/")
        })
        .expect("watch");
    let mut from_key = s
        .hub
        .watch(WatchSpec {
            key: b"b".to_vec(),
            range_end: vec![0],
            ..Default::default()
        })
        .expect("watch");

    let r1 = s.put("a/x", "1").await;
    let r2 = s.put("a/y", "2").await;
    let r3 = s.put("a/x", "3").await;
    let r4 = s.delete("a/x").await;
    let r5 = s.put("c", "4").await;
    assert_eq!([r2, r3, r4, r5], [r1 + 1, r1 + 2, r1 + 3, r1 + 4]);

    let evs = recv_events(&mut all, 4).await;
    let revs: Vec<i64> = evs.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, vec![r1, r2, r3, r4]);
    assert!(evs.iter().all(|e| e.prev_kv.is_none()), "prev_kv not asked");
    assert_eq!(evs[3].kind, EventType::Delete);

    let evs = recv_events(&mut one, 3).await;
    assert_eq!(
        evs.iter().map(key_of).collect::<Vec<_>>(),
        vec!["a/x", "a/x", "a/x"]
    );

    let evs = recv_events(&mut prev, 3).await;
    assert!(evs[0].prev_kv.is_none(), "create has no previous version");
    assert_eq!(
        evs[1].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"1".to_vec())
    );
    assert_eq!(evs[2].kind, EventType::Delete);
    assert_eq!(
        evs[2].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"3".to_vec())
    );

    let evs = recv_events(&mut no_put, 1).await;
    assert_eq!(evs[0].kind, EventType::Delete);
    let evs = recv_events(&mut no_delete, 3).await;
    assert!(evs.iter().all(|e| e.kind == EventType::Put));
    let evs = recv_events(&mut from_key, 1).await;
    assert_eq!(key_of(&evs[0]), "c");
    assert_eq!(s.hub.notified_revision(), r5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_slow_watcher_does_not_block_apply_and_gets_everything() {
    let mut s = Store::open();
    let mut slow = s.hub.watch(prefix_spec("k/")).expect("watch");
    let n = WATCHER_BUFFER * 3 + 17;
    let first = s.put("k/0", "0").await;
    for i in 1..n {
        // Never awaits on the watcher: apply must not block however full its buffer is.
        s.put(&format!("k/{i}"), &i.to_string()).await;
    }
    let (_, unsynced) = s.hub.watcher_counts();
    assert_eq!(unsynced, 1, "the full watcher fell back to unsynced");
    let evs = recv_events(&mut slow, n).await;
    for (i, ev) in evs.iter().enumerate() {
        assert_eq!(ev.kv.mod_revision, first + i as i64, "in order, no gap");
        assert_eq!(key_of(ev), format!("k/{i}"));
    }
    // Back in sync: live events follow.
    let r = s.put("k/last", "x").await;
    let evs = recv_events(&mut slow, 1).await;
    assert_eq!(evs[0].kv.mod_revision, r);
    let deadline = Instant::now() + DEADLINE;
    while s.hub.watcher_counts() != (1, 0) {
        assert!(Instant::now() < deadline, "watcher never became synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_progress_only_when_synced() {
    let mut s = Store::open();
    let mut slow = s.hub.watch(spec("p")).expect("watch");
    let idle = s.hub.watch(spec("q")).expect("watch");
    let future = s
        .hub
        .watch(WatchSpec {
            start_revision: 1000,
            ..spec("q")
        })
        .expect("watch");
    let ids = [slow.id(), idle.id()];
    let r = s.put("q", "0").await;
    assert_eq!(s.hub.progress_revision(&ids), Some(r));
    assert_eq!(
        s.hub.progress_revision(&[future.id()]),
        None,
        "not before its start revision"
    );
    let mut last = 0;
    for i in 0..=WATCHER_BUFFER {
        last = s.put("p", &i.to_string()).await;
    }
    assert_eq!(s.hub.progress_revision(&ids), None, "one watcher is behind");
    recv_events(&mut slow, WATCHER_BUFFER + 1).await;
    let deadline = Instant::now() + DEADLINE;
    while s.hub.progress_revision(&ids) != Some(last) {
        assert!(Instant::now() < deadline, "watcher never synced again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_replays_history_then_continues_live() {
    let mut s = Store::open();
    let r1 = s.put("h", "1").await;
    s.put("other", "x").await;
    s.put("h", "2").await;
    s.delete("h").await;
    let mut w = s
        .hub
        .watch(WatchSpec {
            start_revision: r1,
            prev_kv: true,
            ..spec("h")
        })
        .expect("watch");
    // Concurrent writes while it catches up.
    let r5 = s.put("h", "3").await;
    let evs = recv_events(&mut w, 4).await;
    let got: Vec<(EventType, i64)> = evs.iter().map(|e| (e.kind, e.kv.mod_revision)).collect();
    assert_eq!(
        got,
        vec![
            (EventType::Put, r1),
            (EventType::Put, r1 + 2),
            (EventType::Delete, r1 + 3),
            (EventType::Put, r5)
        ]
    );
    assert_eq!(
        evs[1].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"1".to_vec())
    );
    // A start revision in the future waits for it.
    let mut fut = s
        .hub
        .watch(WatchSpec {
            start_revision: r5 + 2,
            ..spec("h")
        })
        .expect("watch");
    s.put("h", "4").await;
    let r7 = s.put("h", "5").await;
    let evs = recv_events(&mut fut, 1).await;
    assert_eq!(evs[0].kv.mod_revision, r7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_compaction() {
    let mut s = Store::open();
    for i in 0..5 {
        s.put("c", &i.to_string()).await;
    }
    let cur = s.put("c", "5").await;
    s.apply(Command::Compact { revision: cur - 2 }).await;
    assert!(matches!(
        s.hub.watch(WatchSpec {
            start_revision: 2,
            ..spec("c")
        }),
        Err(ApplyError::Compacted)
    ));
    let mut ok = s
        .hub
        .watch(WatchSpec {
            start_revision: cur - 1,
            ..spec("c")
        })
        .expect("watch after the compaction point");
    let evs = recv_events(&mut ok, 2).await;
    assert_eq!(evs[0].kv.mod_revision, cur - 1);

    // An unsynced watcher overtaken by a compaction is cancelled with the compaction point.
    let mut behind = s.hub.watch(spec("d")).expect("watch");
    let mut last = 0;
    for i in 0..(WATCHER_BUFFER + 10) {
        last = s.put("d", &i.to_string()).await;
    }
    s.apply(Command::Compact { revision: last }).await;
    let deadline = Instant::now() + DEADLINE;
    let mut seen = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, behind.rx.recv()).await {
            Ok(Some(Delivery::Events(evs))) => seen += evs.len(),
            Ok(Some(Delivery::Compacted { compact_revision })) => {
                assert_eq!(compact_revision, last);
                break;
            }
            Ok(None) => panic!("closed without a compaction notice"),
            Err(_) => panic!("no compaction notice"),
        }
    }
    assert!(seen < WATCHER_BUFFER + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_dropped_watcher_is_forgotten() {
    let mut s = Store::open();
    let w = s.hub.watch(spec("z")).expect("watch");
    let w2 = s
        .hub
        .watch(WatchSpec {
            start_revision: 1,
            ..spec("z")
        })
        .expect("watch");
    drop(w);
    drop(w2);
    let deadline = Instant::now() + DEADLINE;
    loop {
        s.put("z", "1").await;
        if s.hub.watcher_counts() == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped watchers still registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restore_from_snapshot_delivers_the_jump() {
    use openraft::RaftSnapshotBuilder;
    // The leader's state: history the follower never applied.
    let mut leader = Store::open();
    let first = leader.put("r/a", "1").await;
    leader.put("r/b", "2").await;
    leader.delete("r/a").await;
    let last = leader.put("r/c", "3").await;
    let mut builder = RaftStateMachine::<TypeConfig>::get_snapshot_builder(&mut leader.sm).await;
    let snap: openraft::Snapshot<TypeConfig> =
        builder.build_snapshot().await.expect("build snapshot");

    let mut follower = Store::open();
    let mut w = follower.hub.watch(prefix_spec("r/")).expect("watch");
    let mut other = follower.hub.watch(spec("r/b")).expect("watch");
    RaftStateMachine::<TypeConfig>::install_snapshot(&mut follower.sm, &snap.meta, snap.snapshot)
        .await
        .expect("install snapshot");
    // The watcher wanted everything after revision 1: the snapshot's history fills the jump.
    let evs = recv_events(&mut w, 4).await;
    let revs: Vec<i64> = evs.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, (first..=last).collect::<Vec<_>>());
    let evs = recv_events(&mut other, 1).await;
    assert_eq!(key_of(&evs[0]), "r/b");
    assert_eq!(follower.hub.notified_revision(), last);
    // And live events continue after it.
    follower.index = leader.index;
    let r = follower.put("r/d", "4").await;
    assert_eq!(r, last + 1);
    let evs = recv_events(&mut w, 1).await;
    assert_eq!(evs[0].kv.mod_revision, r);
}

// ---------------------------------------------------------------------------------------------
// The gRPC service against an in-process member

struct TestMember {
    _dir: tempfile::TempDir,
    member: Option<Member>,
    addr: SocketAddr,
}

impl TestMember {
    async fn start() -> TestMember {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer_port = free_port();
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let node = NodeConfig {
            name: "w1".into(),
            data_dir: dir.path().join("data"),
            listen_peer: SocketAddr::from(([127, 0, 0, 1], peer_port)),
            advertise_peer_urls: vec![peer_url.clone()],
            advertise_client_urls: vec![],
            initial_cluster: vec![("w1".into(), peer_url)],
            initial_cluster_state: ClusterState::New,
            cluster_token: "watch-test".into(),
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
            peer_dial_overrides: Default::default(),
        };
        let member = crawler::services::start_member(MemberConfig {
            node,
            listen_client: SocketAddr::from(([127, 0, 0, 1], 0)),
            limits: Limits::default(),
            auto_compaction: crawler::server::compactor::AutoCompaction::Off,
        })
        .await
        .expect("start member");
        let addr = member.client_addr();
        let tm = TestMember {
            _dir: dir,
            member: Some(member),
            addr,
        };
        // Ready once a write goes through.
        let mut kv = tm.kv().await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let r = kv
                .put(PutRequest {
                    key: b"ready".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                })
                .await;
            if r.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member never accepted a write: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tm
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    async fn stop(mut self) {
        if let Some(m) = self.member.take() {
            m.shutdown().await.expect("shutdown");
        }
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    let resp = kv
        .put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    resp.header.expect("header").revision
}

async fn delete(kv: &mut KvClient<Channel>, key: &str) -> i64 {
    let resp = kv
        .delete_range(DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    resp.header.expect("header").revision
}

/// One client Watch stream.
struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl Stream {
    async fn open(tm: &TestMember) -> Stream {
        let (tx, req_rx) = mpsc::channel(16);
        let mut client = WatchClient::new(tm.channel().await);
        let rx = client
            .watch(ReceiverStream::new(req_rx))
            .await
            .expect("watch call")
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&self, req: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(req),
            })
            .await
            .expect("send watch request");
    }

    async fn create(&mut self, req: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(req)).await;
        let resp = self.next().await;
        assert!(resp.created, "expected a created response, got {resp:?}");
        resp
    }

    async fn next(&mut self) -> WatchResponse {
        match tokio::time::timeout(DEADLINE, self.rx.message()).await {
            Ok(Ok(Some(resp))) => resp,
            other => panic!("no watch response: {other:?}"),
        }
    }

    /// Event responses until `n` events of watcher `id` arrived (other responses are skipped).
    async fn events(&mut self, id: i64, n: usize) -> Vec<crawler_proto::mvccpb::Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let resp = self.next().await;
            assert!(!resp.canceled, "unexpected cancel: {resp:?}");
            if resp.watch_id == id {
                out.extend(resp.events);
            }
        }
        assert_eq!(out.len(), n);
        out
    }
}

fn create_req(key: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn prefix_req(prefix: &str) -> WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    WatchCreateRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        ..Default::default()
    }
}

fn ev_key(ev: &crawler_proto::mvccpb::Event) -> String {
    String::from_utf8_lossy(&ev.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default())
        .into_owned()
}

fn ev_rev(ev: &crawler_proto::mvccpb::Event) -> i64 {
    ev.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_create_events_prev_kv_filters_cancel() {
    let tm = TestMember::start().await;
    let mut kv = tm.kv().await;
    let mut s = Stream::open(&tm).await;

    let created = s
        .create(WatchCreateRequest {
            prev_kv: true,
            ..create_req("foo")
        })
        .await;
    assert_eq!(created.watch_id, 0, "etcd's first automatic id is 0");
    let cur = created.header.expect("header").revision;
    let w_noput = s
        .create(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..prefix_req("f")
        })
        .await
        .watch_id;
    let w_custom = s
        .create(WatchCreateRequest {
            watch_id: 42,
            filters: vec![FilterType::Nodelete as i32],
            ..create_req("foo")
        })
        .await
        .watch_id;
    assert_eq!((w_noput, w_custom), (1, 42));
    // A duplicate id is refused like etcd does.
    s.send(RequestUnion::CreateRequest(WatchCreateRequest {
        watch_id: 42,
        ..create_req("foo")
    }))
    .await;
    let dup = s.next().await;
    assert!(dup.created && dup.canceled && dup.watch_id == -1, "{dup:?}");
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    let r1 = put(&mut kv, "foo", "v1").await;
    assert!(r1 > cur);
    let r2 = put(&mut kv, "foo", "v2").await;
    let r3 = delete(&mut kv, "foo").await;

    let mut by_id: std::collections::HashMap<i64, Vec<crawler_proto::mvccpb::Event>> =
        Default::default();
    let mut total = 0;
    while total < 3 + 1 + 2 {
        let resp = s.next().await;
        assert!(!resp.created && !resp.canceled, "{resp:?}");
        assert_eq!(resp.events.len(), 1, "one event per revision here");
        assert_eq!(
            resp.header.as_ref().map(|h| h.revision),
            Some(ev_rev(&resp.events[0]))
        );
        total += resp.events.len();
        by_id.entry(resp.watch_id).or_default().extend(resp.events);
    }
    let main = &by_id[&0];
    assert_eq!(
        main.iter().map(ev_rev).collect::<Vec<_>>(),
        vec![r1, r2, r3]
    );
    assert_eq!(main[2].r#type, PbEventType::Delete as i32);
    assert_eq!(
        main[1].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"v1".to_vec())
    );
    assert_eq!(
        main[2].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"v2".to_vec()),
        "a delete carries the value before it"
    );
    assert_eq!(by_id[&1].len(), 1);
    assert_eq!(by_id[&1][0].r#type, PbEventType::Delete as i32);
    assert!(by_id[&42]
        .iter()
        .all(|e| e.r#type == PbEventType::Put as i32));
    assert!(by_id[&42].iter().all(|e| e.prev_kv.is_none()));

    // Cancel: answered, and nothing more for that id.
    s.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 0,
    }))
    .await;
    let c = s.next().await;
    assert!(c.canceled && c.watch_id == 0, "{c:?}");
    // Unknown ids are ignored, as etcd does.
    s.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 999,
    }))
    .await;
    put(&mut kv, "foo", "v3").await;
    let resp = s.next().await;
    assert_eq!(
        resp.watch_id, 42,
        "only the remaining watcher sees foo: {resp:?}"
    );

    // A reversed range is refused.
    s.send(RequestUnion::CreateRequest(WatchCreateRequest {
        key: b"b".to_vec(),
        range_end: b"a".to_vec(),
        ..Default::default()
    }))
    .await;
    let bad = s.next().await;
    assert!(bad.created && bad.canceled, "{bad:?}");
    assert_eq!(bad.cancel_reason, "mvcc: watcher range is empty");
    tm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_history_progress_and_compaction() {
    let tm = TestMember::start().await;
    let mut kv = tm.kv().await;
    let r1 = put(&mut kv, "h/a", "1").await;
    put(&mut kv, "h/b", "2").await;
    put(&mut kv, "x", "3").await;
    let r4 = put(&mut kv, "h/a", "4").await;

    let mut s = Stream::open(&tm).await;
    let w = s
        .create(WatchCreateRequest {
            start_revision: r1,
            ..prefix_req("h/")
        })
        .await
        .watch_id;
    let evs = s.events(w, 3).await;
    assert_eq!(
        evs.iter().map(ev_key).collect::<Vec<_>>(),
        vec!["h/a", "h/b", "h/a"]
    );
    assert_eq!(ev_rev(&evs[2]), r4);
    let r5 = put(&mut kv, "h/c", "5").await;
    let evs = s.events(w, 1).await;
    assert_eq!(ev_rev(&evs[0]), r5);

    // Progress request: watch id -1 and the current revision, after every earlier event.
    let r6 = put(&mut kv, "h/d", "6").await;
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let mut saw_r6 = false;
    loop {
        let resp = s.next().await;
        if resp.watch_id == -1 {
            assert!(saw_r6, "progress overtook an event");
            assert_eq!(resp.header.map(|h| h.revision), Some(r6));
            assert!(resp.events.is_empty());
            break;
        }
        saw_r6 |= resp.events.iter().any(|e| ev_rev(e) == r6);
    }

    // Compacted start revision: created, then canceled with the compaction point.
    let rc = put(&mut kv, "h/e", "7").await;
    kv.compact(CompactionRequest {
        revision: rc,
        physical: true,
    })
    .await
    .expect("compact");
    s.send(RequestUnion::CreateRequest(WatchCreateRequest {
        start_revision: r1,
        ..prefix_req("h/")
    }))
    .await;
    let mut created = s.next().await;
    while created.watch_id == w {
        created = s.next().await;
    }
    assert!(created.created && !created.canceled, "{created:?}");
    let canceled = s.next().await;
    assert_eq!(canceled.watch_id, created.watch_id);
    assert!(canceled.canceled, "{canceled:?}");
    assert_eq!(canceled.compact_revision, rc);

    // Negative start revision is refused.
    s.send(RequestUnion::CreateRequest(WatchCreateRequest {
        start_revision: -3,
        ..create_req("q")
    }))
    .await;
    let neg = s.next().await;
    assert!(neg.created && neg.canceled && neg.watch_id == -1, "{neg:?}");
    tm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_many_watchers_one_stream() {
    let tm = TestMember::start().await;
    let mut kv = tm.kv().await;
    let mut s = Stream::open(&tm).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(s.create(create_req(&format!("m/{i}"))).await.watch_id);
    }
    let all = s.create(prefix_req("m/")).await.watch_id;
    let mut expected = std::collections::HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let r = put(&mut kv, &format!("m/{i}"), "v").await;
        expected.insert(*id, r);
    }
    let mut seen_all = Vec::new();
    let mut seen = std::collections::HashMap::new();
    while seen_all.len() < 20 || seen.len() < 20 {
        let resp = s.next().await;
        if resp.watch_id == all {
            seen_all.extend(resp.events.iter().map(ev_rev));
        } else {
            assert_eq!(resp.events.len(), 1);
            assert!(seen
                .insert(resp.watch_id, ev_rev(&resp.events[0]))
                .is_none());
        }
    }
    assert_eq!(seen, expected);
    let mut sorted = seen_all.clone();
    sorted.sort();
    assert_eq!(seen_all, sorted, "in revision order");
    tm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_slow_client_does_not_block_writers() {
    let tm = TestMember::start().await;
    let mut slow = Stream::open(&tm).await;
    let w = slow.create(prefix_req("s/")).await.watch_id;
    let start = put(&mut tm.kv().await, "s/start", "0").await;

    // The slow client never reads while others write far more than every buffer on the path
    // (hub channel, stream channel, HTTP/2 windows, socket buffers) holds.
    let value = "x".repeat(8 * 1024);
    let writers = 4;
    let per_writer = 300;
    let mut tasks = Vec::new();
    for t in 0..writers {
        let mut kv = tm.kv().await;
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                put(&mut kv, &format!("s/{t}/{i}"), &value).await;
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("writers blocked by a slow watcher")
            .expect("writer task");
    }
    let end = put(&mut tm.kv().await, "s/end", "0").await;

    // Now it reads: every event, in order, exactly once.
    let total = writers * per_writer + 2;
    let evs = slow.events(w, total).await;
    let revs: Vec<i64> = evs.iter().map(ev_rev).collect();
    assert_eq!(revs.first(), Some(&start));
    assert_eq!(revs.last(), Some(&end));
    assert!(
        revs.windows(2).all(|p| p[0] < p[1]),
        "in order, no duplicate"
    );
    let keys: std::collections::HashSet<String> = evs.iter().map(ev_key).collect();
    assert_eq!(keys.len(), total, "every key once");
    tm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_periodic_progress_notify() {
    use crawler::server::grpc::watch::WatchService;
    use crawler_proto::etcdserverpb::watch_server::WatchServer;

    let tm = TestMember::start().await;
    let ctx = tm.member.as_ref().expect("member").context().clone();
    // A second Watch endpoint over the same member, with a short progress interval.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = WatchService::new(ctx).with_progress_interval(Duration::from_millis(200));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WatchServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let (tx, req_rx) = mpsc::channel(16);
    let rx = WatchClient::new(channel)
        .watch(ReceiverStream::new(req_rx))
        .await
        .expect("watch call")
        .into_inner();
    let mut s = Stream { tx, rx };
    let notified = s
        .create(WatchCreateRequest {
            progress_notify: true,
            ..create_req("p")
        })
        .await
        .watch_id;
    let silent = s.create(create_req("p")).await.watch_id;
    let mut kv = tm.kv().await;
    let rev = put(&mut kv, "other", "x").await;

    // Idle: the progress_notify watcher gets empty responses at the current revision.
    let mut progress = 0;
    while progress < 2 {
        let resp = s.next().await;
        assert_ne!(resp.watch_id, silent, "no progress without progress_notify");
        assert_eq!(resp.watch_id, notified);
        assert!(resp.events.is_empty() && !resp.created && !resp.canceled);
        assert!(resp.header.map_or(0, |h| h.revision) >= rev);
        progress += 1;
    }
    // Events still flow, in order with the notifications.
    let r = put(&mut kv, "p", "1").await;
    loop {
        let resp = s.next().await;
        if resp.events.is_empty() {
            assert!(
                resp.header.map_or(0, |h| h.revision) < r,
                "progress overtook an event"
            );
            continue;
        }
        assert_eq!(ev_rev(&resp.events[0]), r);
        break;
    }
    server.abort();
    tm.stop().await;
}

/// Lines printed by a child process, read on a thread.
fn spawn_lines(
    mut cmd: std::process::Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn etcdctl");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn read_lines(rx: &std::sync::mpsc::Receiver<String>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(_) => panic!("etcdctl printed only {out:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_live_and_replay() {
    let etcdctl = "/usr/bin/etcdctl";
    if !std::path::Path::new(etcdctl).exists() {
        eprintln!("skipping: {etcdctl} not installed");
        return;
    }
    let tm = TestMember::start().await;
    let mut kv = tm.kv().await;
    let first = put(&mut kv, "e/a", "1").await;
    let endpoint = format!("http://{}", tm.addr);

    // Replay from a past revision, with prev_kv, then live.
    let mut cmd = std::process::Command::new(etcdctl);
    cmd.env("ETCDCTL_API", "3").args([
        "--endpoints",
        &endpoint,
        "watch",
        "--prefix",
        "e/",
        "--prev-kv",
        "--rev",
        &first.to_string(),
    ]);
    let (child, lines) = spawn_lines(cmd);
    let _child = KillOnDrop(child);
    assert_eq!(read_lines(&lines, 3), vec!["PUT", "e/a", "1"]);
    put(&mut kv, "e/a", "2").await;
    // PUT, previous key and value, key and value.
    assert_eq!(read_lines(&lines, 5), vec!["PUT", "e/a", "1", "e/a", "2"]);
    delete(&mut kv, "e/a").await;
    assert_eq!(read_lines(&lines, 4), vec!["DELETE", "e/a", "2", "e/a"]);
    tm.stop().await;
}

/// Kills a child process when the test ends, even by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
