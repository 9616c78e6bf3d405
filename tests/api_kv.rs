//! The KV, Maintenance and Cluster services of an in-process single-node `Member`, driven through
//! the generated tonic clients exactly as an etcd client would.

mod support;

use std::time::{Duration, Instant};

use crawler::server::member::{Limits, Member, MemberConfig};
use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::cluster_client::ClusterClient;
use crawler_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crawler_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crawler_proto::etcdserverpb::request_op::Request as Op;
use crawler_proto::etcdserverpb::response_op::Response as OpResp;
use crawler_raft::{ClusterState, NodeConfig};
use support::ports::free_port;
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);

struct Fixture {
    member: Option<Member>,
    kv: KvClient<Channel>,
    channel: Channel,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let peer_port = free_port();
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let cfg = MemberConfig {
            node: NodeConfig {
                name: "solo".to_string(),
                data_dir: dir.path().join("data"),
                listen_peer: format!("127.0.0.1:{peer_port}").parse().expect("addr"),
                advertise_peer_urls: vec![peer_url.clone()],
                advertise_client_urls: vec!["http://127.0.0.1:0".to_string()],
                initial_cluster: vec![("solo".to_string(), peer_url)],
                initial_cluster_state: ClusterState::New,
                cluster_token: "api-kv-test".to_string(),
                heartbeat_interval_ms: 50,
                election_timeout_ms: 500,
                snapshot_count: 10_000,
                peer_dial_overrides: Default::default(),
            },
            listen_client: "127.0.0.1:0".parse().expect("addr"),
            limits: Limits::default(),
            auto_compaction: crawler::server::compactor::AutoCompaction::Off,
        };
        let member = crawler::services::start_member(cfg)
            .await
            .expect("member starts");
        let url = format!("http://{}", member.client_addr());
        let channel = Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut kv = KvClient::new(channel.clone());
        // Ready once a linearizable read succeeds (a leader exists and has applied).
        let start = Instant::now();
        loop {
            let r = kv.range(range(b"ready")).await;
            if r.is_ok() {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "member never became ready: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Fixture {
            member: Some(member),
            kv,
            channel,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(m) = self.member.take() {
            m.shutdown().await.expect("clean shutdown");
        }
    }

    async fn put(&mut self, k: &str, v: &str) -> pb::PutResponse {
        self.kv
            .put(pb::PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
            .await
            .expect("put")
            .into_inner()
    }

    async fn get(&mut self, r: pb::RangeRequest) -> pb::RangeResponse {
        self.kv.range(r).await.expect("range").into_inner()
    }
}

fn range(k: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: k.to_vec(),
        ..Default::default()
    }
}

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn keys(r: &pb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn put_op(k: &str, v: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn get_op(k: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestRange(range(k.as_bytes()))),
    }
}

fn del_op(k: &str, end: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

fn cmp(k: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> pb::Compare {
    pb::Compare {
        key: k.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        range_end: vec![],
    }
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, msg: &str) {
    match r {
        Ok(v) => panic!("expected {code:?} {msg:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "code of {s:?}");
            assert_eq!(s.message(), msg);
        }
    }
}

#[tokio::test]
async fn headers_put_delete_and_ranges() {
    let mut f = Fixture::start().await;

    let p1 = f.put("/r/a", "1").await;
    let h = p1.header.expect("put header");
    assert_ne!(h.cluster_id, 0);
    assert_ne!(h.member_id, 0);
    assert!(h.raft_term >= 1);
    let rev_a = h.revision;
    assert!(rev_a >= 2);
    // Each write raises the revision by exactly one.
    let p2 = f.put("/r/b", "22").await;
    assert_eq!(p2.header.expect("header").revision, rev_a + 1);
    f.put("/r/c", "3").await;
    f.put("/r/d", "444").await;
    f.put("/s/x", "x").await;

    // put with prev_kv
    let p =
        f.kv.put(pb::PutRequest {
            key: "/r/a".into(),
            value: "1b".into(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    let prev = p.prev_kv.expect("prev kv");
    assert_eq!(prev.value, b"1");
    assert_eq!(prev.version, 1);
    let cur_rev = p.header.expect("header").revision;

    // single key
    let r = f.get(range(b"/r/a")).await;
    let h = r.header.expect("range header");
    assert_eq!(h.revision, cur_rev);
    assert_ne!(h.member_id, 0);
    assert_eq!(r.count, 1);
    assert_eq!(r.kvs[0].value, b"1b");
    assert_eq!(r.kvs[0].version, 2);
    assert_eq!(r.kvs[0].create_revision, rev_a);
    assert_eq!(r.kvs[0].mod_revision, cur_rev);

    // prefix
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            ..Default::default()
        })
        .await;
    assert_eq!(keys(&r), ["/r/a", "/r/b", "/r/c", "/r/d"]);
    assert_eq!(r.count, 4);
    assert!(!r.more);

    // "\0": every key >= key
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/c".to_vec(),
            range_end: vec![0],
            ..Default::default()
        })
        .await;
    assert_eq!(keys(&r), ["/r/c", "/r/d", "/s/x"]);

    // limit + more + count
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            limit: 2,
            ..Default::default()
        })
        .await;
    assert_eq!(keys(&r), ["/r/a", "/r/b"]);
    assert!(r.more);
    assert_eq!(r.count, 4);

    // sort by value length isn't a target; sort by key descending and by mod ascending
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Key as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(keys(&r), ["/r/d", "/r/c", "/r/b", "/r/a"]);
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Mod as i32,
            limit: 3,
            ..Default::default()
        })
        .await;
    assert_eq!(keys(&r), ["/r/b", "/r/c", "/r/d"]);
    assert!(r.more);
    assert_eq!(r.count, 4);

    // read at an older revision: the old value, header still at the current revision
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/a".to_vec(),
            revision: rev_a,
            ..Default::default()
        })
        .await;
    assert_eq!(r.kvs[0].value, b"1");
    assert_eq!(r.header.expect("header").revision, cur_rev);

    // keys_only / count_only / serializable
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            keys_only: true,
            serializable: true,
            ..Default::default()
        })
        .await;
    assert_eq!(r.kvs.len(), 4);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            count_only: true,
            ..Default::default()
        })
        .await;
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 4);

    // min/max filters
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            min_mod_revision: rev_a + 1,
            max_mod_revision: rev_a + 2,
            ..Default::default()
        })
        .await;
    assert_eq!(keys(&r), ["/r/b", "/r/c"]);
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            min_create_revision: rev_a + 2,
            ..Default::default()
        })
        .await;
    assert_eq!(keys(&r), ["/r/c", "/r/d"]);
    let r = f
        .get(pb::RangeRequest {
            key: b"/r/".to_vec(),
            range_end: prefix_end(b"/r/"),
            max_create_revision: rev_a,
            ..Default::default()
        })
        .await;
    assert_eq!(keys(&r), ["/r/a"]);

    // delete with prev_kv
    let d =
        f.kv.delete_range(pb::DeleteRangeRequest {
            key: b"/r/c".to_vec(),
            range_end: prefix_end(b"/r/c"),
            prev_kv: true,
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(d.deleted, 1);
    assert_eq!(d.prev_kvs.len(), 1);
    assert_eq!(d.prev_kvs[0].value, b"3");
    let del_rev = d.header.expect("header").revision;
    assert_eq!(del_rev, cur_rev + 1);
    // A delete that matches nothing leaves the revision alone.
    let d =
        f.kv.delete_range(pb::DeleteRangeRequest {
            key: b"/r/nothing".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(d.deleted, 0);
    assert_eq!(d.header.expect("header").revision, del_rev);

    f.stop().await;
}

#[tokio::test]
async fn txns() {
    let mut f = Fixture::start().await;
    let rev = f.put("/t/a", "1").await.header.expect("header").revision;

    // compare succeeds: then-branch runs, reads see the txn's own earlier writes
    let t =
        f.kv.txn(pb::TxnRequest {
            compare: vec![cmp(
                "/t/a",
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value(b"1".to_vec()),
            )],
            success: vec![put_op("/t/b", "2"), get_op("/t/b")],
            failure: vec![put_op("/t/c", "3")],
        })
        .await
        .expect("txn")
        .into_inner();
    assert!(t.succeeded);
    assert_eq!(t.header.expect("header").revision, rev + 1);
    assert_eq!(t.responses.len(), 2);
    match &t.responses[1].response {
        Some(OpResp::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"2"),
        other => panic!("unexpected {other:?}"),
    }

    // compare fails: else-branch; CREATE == 0 means absent
    let t =
        f.kv.txn(pb::TxnRequest {
            compare: vec![cmp(
                "/t/a",
                CompareTarget::Create,
                CompareResult::Equal,
                TargetUnion::CreateRevision(0),
            )],
            success: vec![put_op("/t/a", "overwritten")],
            failure: vec![get_op("/t/a")],
        })
        .await
        .expect("txn")
        .into_inner();
    assert!(!t.succeeded);
    // read-only: revision unchanged
    assert_eq!(t.header.expect("header").revision, rev + 1);
    match &t.responses[0].response {
        Some(OpResp::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"1"),
        other => panic!("unexpected {other:?}"),
    }

    // nested txn; both branches of the nested txn may name the same key
    let t =
        f.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: vec![pb::RequestOp {
                request: Some(Op::RequestTxn(pb::TxnRequest {
                    compare: vec![cmp(
                        "/t/b",
                        CompareTarget::Version,
                        CompareResult::Greater,
                        TargetUnion::Version(0),
                    )],
                    success: vec![put_op("/t/n", "then")],
                    failure: vec![put_op("/t/n", "else")],
                })),
            }],
            failure: vec![],
        })
        .await
        .expect("nested txn")
        .into_inner();
    assert!(t.succeeded);
    match &t.responses[0].response {
        Some(OpResp::ResponseTxn(inner)) => assert!(inner.succeeded),
        other => panic!("unexpected {other:?}"),
    }
    let r = f.get(range(b"/t/n")).await;
    assert_eq!(r.kvs[0].value, b"then");

    f.stop().await;
}

#[tokio::test]
async fn validation_errors() {
    let mut f = Fixture::start().await;
    let invalid = Code::InvalidArgument;

    assert_status(
        f.kv.range(range(b"")).await,
        invalid,
        "etcdserver: key is not provided",
    );
    assert_status(
        f.kv.put(pb::PutRequest::default()).await,
        invalid,
        "etcdserver: key is not provided",
    );
    assert_status(
        f.kv.delete_range(pb::DeleteRangeRequest::default()).await,
        invalid,
        "etcdserver: key is not provided",
    );
    assert_status(
        f.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: vec![put_op("", "x")],
            failure: vec![],
        })
        .await,
        invalid,
        "etcdserver: key is not provided",
    );
    assert_status(
        f.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: vec![put_op("/v/a", "1"), put_op("/v/a", "2")],
            failure: vec![],
        })
        .await,
        invalid,
        "etcdserver: duplicate key given in txn request",
    );
    assert_status(
        f.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: vec![del_op("/v/", "/v0"), put_op("/v/a", "2")],
            failure: vec![],
        })
        .await,
        invalid,
        "etcdserver: duplicate key given in txn request",
    );
    let many: Vec<_> = (0..129).map(|i| put_op(&format!("/v/{i}"), "x")).collect();
    assert_status(
        f.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: many,
            failure: vec![],
        })
        .await,
        invalid,
        "etcdserver: too many operations in txn request",
    );
    // 128 operations are allowed.
    let ok: Vec<_> = (0..128).map(|i| put_op(&format!("/v/{i}"), "x")).collect();
    f.kv.txn(pb::TxnRequest {
        compare: vec![],
        success: ok,
        failure: vec![],
    })
    .await
    .expect("128 ops are fine");

    // Over --max-request-bytes (1.5 MiB) but under the gRPC limit (+512 KiB).
    let big = vec![b'x'; 1536 * 1024 + 100 * 1024];
    assert_status(
        f.kv.put(pb::PutRequest {
            key: b"/v/big".to_vec(),
            value: big,
            ..Default::default()
        })
        .await,
        invalid,
        "etcdserver: request is too large",
    );

    // future and compacted revisions
    let cur = f.put("/v/c", "1").await.header.expect("header").revision;
    assert_status(
        f.kv.range(pb::RangeRequest {
            key: b"/v/c".to_vec(),
            revision: cur + 10,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let cur = f.put("/v/c", "2").await.header.expect("header").revision;
    let c =
        f.kv.compact(pb::CompactionRequest {
            revision: cur,
            physical: true,
        })
        .await
        .expect("compact")
        .into_inner();
    assert!(c.header.is_some());
    assert_status(
        f.kv.range(pb::RangeRequest {
            key: b"/v/c".to_vec(),
            revision: cur - 1,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        f.kv.compact(pb::CompactionRequest {
            revision: cur - 1,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );

    // a put with a lease that does not exist
    assert_status(
        f.kv.put(pb::PutRequest {
            key: b"/v/l".to_vec(),
            value: b"x".to_vec(),
            lease: 12345,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );

    // unknown sort enum: rejected, not a panic
    let r =
        f.kv.range(pb::RangeRequest {
            key: b"/v/c".to_vec(),
            sort_order: 42,
            ..Default::default()
        })
        .await;
    assert_eq!(r.expect_err("bad sort order").code(), invalid);

    f.stop().await;
}

#[tokio::test]
async fn maintenance_status_and_member_list() {
    let f = Fixture::start().await;
    let mut m = MaintenanceClient::new(f.channel.clone());
    let s = m
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let h = s.header.expect("status header");
    assert_eq!(s.version, "3.5.0");
    assert_eq!(s.leader, h.member_id);
    assert!(s.raft_term >= 1);
    assert_eq!(s.raft_term, h.raft_term);
    assert!(s.raft_index >= 1);
    assert!(s.raft_applied_index >= 1);
    assert!(s.db_size > 0);
    assert!(!s.is_learner);
    assert!(s.errors.is_empty());

    let a = m
        .alarm(pb::AlarmRequest::default())
        .await
        .expect("alarm")
        .into_inner();
    assert!(a.alarms.is_empty());
    assert!(a.header.is_some());

    let mut c = ClusterClient::new(f.channel.clone());
    let l = c
        .member_list(pb::MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner();
    let h = l.header.expect("member list header");
    assert_eq!(l.members.len(), 1);
    let me = &l.members[0];
    assert_eq!(me.id, h.member_id);
    assert_eq!(me.name, "solo");
    assert_eq!(me.peer_ur_ls.len(), 1);
    assert!(me.peer_ur_ls[0].starts_with("http://127.0.0.1:"));
    assert!(!me.is_learner);

    // bad peer URLs are rejected with etcd's text
    let r = c
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec!["not a url".to_string()],
            is_learner: false,
        })
        .await;
    assert_status(
        r,
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );

    f.stop().await;
}

/// The in-process client runs the gRPC layer's checks on the store's own types: the same
/// requests fail with the same etcd texts.
#[tokio::test]
async fn local_client_rejects_what_grpc_rejects() {
    use crawler::client::local::LocalClient;
    use crawler::client::{
        DeleteRangeRequest, KvClient as _, KvError, PutRequest, RangeRequest, RequestOp, TxnRequest,
    };
    let mut f = Fixture::start().await;
    let local = LocalClient::from_member(f.member.as_ref().expect("running"));
    let put = |k: &str| {
        RequestOp::Put(PutRequest {
            key: k.into(),
            value: b"x".to_vec(),
            ..Default::default()
        })
    };
    let invalid = |e: KvError, want: &str| match e {
        KvError::InvalidArgument(m) => assert_eq!(m, want),
        other => panic!("expected InvalidArgument {want:?}, got {other:?}"),
    };
    let no_key = "etcdserver: key is not provided";
    invalid(
        local
            .range(RangeRequest::default())
            .await
            .expect_err("empty key"),
        no_key,
    );
    invalid(
        local
            .put(PutRequest::default())
            .await
            .expect_err("empty key"),
        no_key,
    );
    invalid(
        local
            .delete_range(DeleteRangeRequest::default())
            .await
            .expect_err("empty key"),
        no_key,
    );
    let dup = TxnRequest {
        compare: vec![],
        success: vec![put("/l/a"), put("/l/a")],
        failure: vec![],
    };
    invalid(
        local.txn(dup).await.expect_err("duplicate"),
        "etcdserver: duplicate key given in txn request",
    );
    let many = TxnRequest {
        compare: vec![],
        success: (0..129).map(|i| put(&format!("/l/{i}"))).collect(),
        failure: vec![],
    };
    invalid(
        local.txn(many).await.expect_err("too many"),
        "etcdserver: too many operations in txn request",
    );
    let ignore = PutRequest {
        key: b"/l/k".to_vec(),
        value: b"v".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    invalid(
        local
            .put(ignore)
            .await
            .expect_err("value with ignore_value"),
        "etcdserver: value is provided",
    );
    f.kv.put(pb::PutRequest {
        key: b"/l/ok".to_vec(),
        ..Default::default()
    })
    .await
    .expect("grpc put");
    let r = local
        .range(RangeRequest {
            key: b"/l/ok".to_vec(),
            ..Default::default()
        })
        .await
        .expect("local range");
    assert_eq!(r.body.kvs.len(), 1);
    f.stop().await;
}
