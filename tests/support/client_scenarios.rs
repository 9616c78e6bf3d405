//! Client-side scenarios (KV client, registry, election) against any etcd-compatible endpoints.
//!
//! Each scenario takes the endpoints of a fresh single-member store, so the same checks run
//! against a real etcd (`tests/client_etcd.rs`) and against our own `crawler store`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crawler::client::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventType, KvClient, KvClientExt,
    KvError, LeaseKeeper, PutRequest, RangeRequest, RemoteConfig, RemoteKvClient, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, WatchBatch, WatchSpec, WatchStream,
};
use crawler::coord::election::{Election, ElectionError, Session};
use crawler::coord::registry::{
    Action, Node, RegisterOptions, Registry, RegistryEvent, RegistryWatcher, Service,
};

use super::wait::eventually;

/// Deadline for anything a scenario waits for.
pub const WAIT: Duration = Duration::from_secs(15);

/// A remote client on `endpoints` with short timeouts (tests should fail fast).
pub fn client(endpoints: &[String]) -> Arc<dyn KvClient> {
    let mut cfg = RemoteConfig::new(endpoints.iter().cloned());
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(3);
    Arc::new(RemoteKvClient::new(cfg).expect("client"))
}

/// The next watch batch that carries events (progress notifications skipped).
pub async fn next_events(stream: &mut WatchStream) -> WatchBatch {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("timed out waiting for a watch batch")
            .expect("watch ended");
        let batch = item.expect("watch error");
        if !batch.events.is_empty() {
            return batch;
        }
    }
}

async fn next_registry(w: &mut RegistryWatcher) -> RegistryEvent {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("timed out waiting for a registry event")
        .expect("registry watch ended")
        .expect("registry watch error")
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

/// Put/get/range/delete, revisions, prev_kv, sorting and limits, compaction errors.
pub async fn kv_ops(endpoints: &[String]) {
    let c = client(endpoints);
    let r1 = c.put_kv("/kv/a", "1", 0).await.expect("put a");
    let r2 = c.put_kv("/kv/b", "2", 0).await.expect("put b");
    assert_eq!(r2.revision, r1.revision + 1, "one write = one revision");
    let r3 = c
        .put(PutRequest {
            prev_kv: true,
            ..put_req("/kv/a", "11")
        })
        .await
        .expect("put a again");
    let prev = r3.body.prev_kv.expect("prev_kv requested");
    assert_eq!(prev.value, b"1");
    assert_eq!(prev.mod_revision, r1.revision);

    let a = c.get("/kv/a").await.expect("get a").body.expect("a exists");
    assert_eq!(a.value, b"11");
    assert_eq!(a.create_revision, r1.revision);
    assert_eq!(a.mod_revision, r3.revision);
    assert_eq!(a.version, 2);
    assert!(c.get("/kv/none").await.expect("get none").body.is_none());

    c.put_kv("/kv/c", "3", 0).await.expect("put c");
    let all = c.get_prefix("/kv/").await.expect("prefix");
    let keys: Vec<_> = all.body.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![b"/kv/a".to_vec(), b"/kv/b".to_vec(), b"/kv/c".to_vec()]
    );

    // Sorted by create revision descending, limited: newest first, `more` set, `count` total.
    let sorted = c
        .range(RangeRequest {
            key: b"/kv/".to_vec(),
            range_end: b"/kv0".to_vec(),
            limit: 1,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Create,
            ..RangeRequest::default()
        })
        .await
        .expect("sorted range");
    assert_eq!(sorted.body.kvs.len(), 1);
    assert_eq!(sorted.body.kvs[0].key, b"/kv/c");
    assert!(sorted.body.more);
    assert_eq!(sorted.body.count, 3);

    // Read at an old revision.
    let old = c
        .range(RangeRequest {
            key: b"/kv/a".to_vec(),
            revision: r1.revision,
            ..RangeRequest::default()
        })
        .await
        .expect("old read");
    assert_eq!(old.body.kvs[0].value, b"1");
    assert!(
        old.revision > r1.revision,
        "header revision is the current one"
    );

    let del = c
        .delete_range(DeleteRangeRequest {
            key: b"/kv/".to_vec(),
            range_end: b"/kv0".to_vec(),
            prev_kv: true,
        })
        .await
        .expect("delete");
    assert_eq!(del.body.deleted, 3);
    assert_eq!(del.body.prev_kvs.len(), 3);
    let nothing = c.delete_key("/kv/a").await.expect("delete missing");
    assert_eq!(nothing.body.deleted, 0);
    assert_eq!(
        nothing.revision, del.revision,
        "deleting nothing is no write"
    );

    // Future and compacted revisions.
    let fut = c
        .range(RangeRequest {
            key: b"/kv/a".to_vec(),
            revision: del.revision + 100,
            ..RangeRequest::default()
        })
        .await;
    assert_eq!(fut.err(), Some(KvError::FutureRevision));
    c.compact(r3.revision).await.expect("compact");
    let compacted = c
        .range(RangeRequest {
            key: b"/kv/a".to_vec(),
            revision: r1.revision,
            ..RangeRequest::default()
        })
        .await;
    assert!(
        matches!(compacted, Err(KvError::Compacted { .. })),
        "{compacted:?}"
    );

    // Invalid argument: empty key.
    let empty = c.put_kv("", "x", 0).await;
    assert!(
        matches!(empty, Err(KvError::InvalidArgument(_))),
        "{empty:?}"
    );
}

/// Txn compares, both branches, nested responses.
pub async fn txn_ops(endpoints: &[String]) {
    let c = client(endpoints);
    let create_absent = |key: &str| Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(0),
        key: key.into(),
        range_end: vec![],
    };
    let txn = |key: &str, value: &str| TxnRequest {
        compare: vec![create_absent(key)],
        success: vec![RequestOp::Put(put_req(key, value))],
        failure: vec![RequestOp::Range(RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        })],
    };
    let first = c.txn(txn("/txn/k", "v1")).await.expect("txn 1");
    assert!(first.body.succeeded);
    assert!(matches!(first.body.responses[0], ResponseOp::Put(_)));
    let second = c.txn(txn("/txn/k", "v2")).await.expect("txn 2");
    assert!(!second.body.succeeded);
    assert_eq!(
        second.revision, first.revision,
        "read-only branch writes nothing"
    );
    match &second.body.responses[0] {
        ResponseOp::Range(r) => {
            assert_eq!(r.kvs[0].value, b"v1");
            assert_eq!(r.kvs[0].create_revision, first.revision);
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    // A value compare on a missing key is false.
    let missing = c
        .txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::NotEqual,
                target: CompareTarget::Value(b"x".to_vec()),
                key: b"/txn/missing".to_vec(),
                range_end: vec![],
            }],
            success: vec![],
            failure: vec![],
        })
        .await
        .expect("txn value compare");
    assert!(!missing.body.succeeded);
    // Mod revision guard (fencing style).
    let guarded = c
        .txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Mod(first.revision),
                key: b"/txn/k".to_vec(),
                range_end: vec![],
            }],
            success: vec![
                RequestOp::Put(put_req("/txn/k", "v3")),
                RequestOp::Put(put_req("/txn/other", "o")),
            ],
            failure: vec![],
        })
        .await
        .expect("guarded txn");
    assert!(guarded.body.succeeded);
    assert_eq!(
        guarded.revision,
        first.revision + 1,
        "a txn is one revision"
    );
    let dup = c
        .txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(put_req("/txn/d", "1")),
                RequestOp::Put(put_req("/txn/d", "2")),
            ],
            failure: vec![],
        })
        .await;
    match dup {
        Err(KvError::InvalidArgument(m)) => {
            assert_eq!(m, "etcdserver: duplicate key given in txn request")
        }
        other => panic!("expected duplicate key error, got {other:?}"),
    }
}

/// Watch from now and from a past revision, prev_kv, deletes, compacted start.
pub async fn watch_ops(endpoints: &[String]) {
    let c = client(endpoints);
    let r0 = c.put_kv("/w/a", "0", 0).await.expect("put");
    let mut now = c
        .watch(WatchSpec::prefix("/w/").with_prev_kv())
        .await
        .expect("watch");
    assert!(now.created_revision() >= r0.revision);
    let r1 = c.put_kv("/w/a", "1", 0).await.expect("put");
    let r2 = c
        .txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(put_req("/w/b", "b")),
                RequestOp::Put(put_req("/w/c", "c")),
            ],
            failure: vec![],
        })
        .await
        .expect("txn");
    let r3 = c.delete_key("/w/a").await.expect("delete");

    let b1 = next_events(&mut now).await;
    assert_eq!(b1.events.len(), 1);
    let e = &b1.events[0];
    assert_eq!(e.kind, EventType::Put);
    assert_eq!(e.kv.value, b"1");
    assert_eq!(e.kv.mod_revision, r1.revision);
    assert_eq!(
        e.prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b"0".to_vec())
    );
    let b2 = next_events(&mut now).await;
    assert_eq!(b2.events.len(), 2, "one revision travels in one batch");
    assert!(b2.events.iter().all(|e| e.kv.mod_revision == r2.revision));
    assert!(
        b2.events.iter().all(|e| e.prev_kv.is_none()),
        "new keys have no prev"
    );
    let b3 = next_events(&mut now).await;
    let d = &b3.events[0];
    assert_eq!(d.kind, EventType::Delete);
    assert_eq!(d.kv.key, b"/w/a");
    assert_eq!(d.kv.mod_revision, r3.revision);
    assert_eq!(
        d.prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b"1".to_vec())
    );

    // From a past revision, without prev_kv: history replays in order.
    let mut past = c
        .watch(WatchSpec::key("/w/a").from_revision(r0.revision))
        .await
        .expect("watch past");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let b = next_events(&mut past).await;
        for e in b.events {
            assert!(e.prev_kv.is_none());
            seen.push((e.kind, e.kv.mod_revision));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, r0.revision),
            (EventType::Put, r1.revision),
            (EventType::Delete, r3.revision)
        ]
    );

    // A watch starting at or below the compaction point fails with the compact revision: at
    // creation, or (etcd 3.4 sends `created` first) as the stream's first and last item.
    c.compact(r2.revision).await.expect("compact");
    let compacted = match c
        .watch(WatchSpec::prefix("/w/").from_revision(r0.revision))
        .await
    {
        Ok(mut s) => {
            let first = tokio::time::timeout(WAIT, s.next())
                .await
                .expect("timed out waiting for the compaction outcome")
                .expect("an item before the end");
            assert!(
                tokio::time::timeout(WAIT, s.next())
                    .await
                    .expect("end")
                    .is_none(),
                "the stream ends after its error"
            );
            first.map(|_| ())
        }
        Err(e) => Err(e),
    };
    match compacted {
        Err(KvError::Compacted { compact_revision }) => assert_eq!(compact_revision, r2.revision),
        other => panic!("expected compacted, got {other:?}"),
    }
    drop(now);
    drop(past);
}

/// Lease grant, time-to-live, keepalive, revoke and expiry.
pub async fn lease_ops(endpoints: &[String]) {
    let c = client(endpoints);
    let g = c.lease_grant(2, 0).await.expect("grant").body;
    assert!(g.id > 0);
    assert!(g.ttl >= 2);
    c.put_kv("/lease/a", "x", g.id).await.expect("put on lease");
    let ttl = c.lease_time_to_live(g.id, true).await.expect("ttl").body;
    assert_eq!(ttl.granted_ttl, g.ttl);
    assert!(ttl.ttl > 0 && ttl.ttl <= g.ttl);
    assert_eq!(ttl.keys, vec![b"/lease/a".to_vec()]);
    let ka = c.lease_keep_alive_once(g.id).await.expect("keepalive").body;
    assert_eq!(ka.id, g.id);
    assert!(ka.ttl > 0);

    // Without keepalives, the lease expires and takes its key with it.
    eventually("lease expiry deletes the key", WAIT, || {
        let c = c.clone();
        async move { matches!(c.get("/lease/a").await, Ok(r) if r.body.is_none()) }
    })
    .await;
    let gone = c
        .lease_time_to_live(g.id, false)
        .await
        .expect("ttl of gone lease");
    assert_eq!(gone.body.ttl, -1);
    let ka = c.lease_keep_alive_once(g.id).await;
    assert!(matches!(ka, Err(KvError::NotFound(_))), "{ka:?}");
    let rv = c.lease_revoke(g.id).await;
    assert!(matches!(rv, Err(KvError::NotFound(_))), "{rv:?}");

    // Revoke deletes attached keys in one revision.
    let g2 = c.lease_grant(30, 0).await.expect("grant 2").body;
    c.put_kv("/lease/b", "x", g2.id).await.expect("put b");
    c.put_kv("/lease/c", "x", g2.id).await.expect("put c");
    c.lease_revoke(g2.id).await.expect("revoke");
    assert!(c.get_prefix("/lease/").await.expect("get").body.is_empty());

    // A kept-alive lease outlives several TTLs; once revoked, the keeper reports it lost.
    let keeper = LeaseKeeper::grant(c.clone(), 2).await.expect("keeper");
    c.put_kv("/lease/kept", "x", keeper.id())
        .await
        .expect("put kept");
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        assert!(
            c.get("/lease/kept").await.expect("get").body.is_some(),
            "kept lease expired"
        );
        assert!(!keeper.is_lost());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.lease_revoke(keeper.id()).await.expect("revoke kept");
    tokio::time::timeout(WAIT, keeper.lost())
        .await
        .expect("keeper notices the revoked lease");
}

fn worker(id: &str, addr: &str, tag: &str) -> Service {
    let mut md = BTreeMap::new();
    md.insert("tag".to_string(), tag.to_string());
    Service::with_node(
        "go.micro.server.worker",
        Node {
            id: id.into(),
            address: addr.into(),
            metadata: md,
        },
    )
}

/// Register, watch create/update/delete, get/list, deregister, re-registration after revoke.
pub async fn registry_ops(endpoints: &[String]) {
    let c = client(endpoints);
    let reg = Registry::new(c.clone());
    let mut all = reg.watch(None, 0).await.expect("watch all");
    let opts = RegisterOptions::ttl(Duration::from_secs(3));

    let w1 = worker("go.micro.server.worker-1", "127.0.0.1:9089", "a");
    let r1 = reg.register(&w1, opts).await.expect("register w1");
    assert_eq!(
        r1.keys(),
        vec!["/micro/registry/go.micro.server.worker/go.micro.server.worker-1"]
    );
    let ev = next_registry(&mut all).await;
    assert_eq!(ev.action, Action::Create);
    assert_eq!(ev.service, w1);

    // The stored value is go-micro's JSON.
    let raw = c
        .get(r1.keys()[0].clone())
        .await
        .expect("get")
        .body
        .expect("key");
    let json: serde_json::Value = serde_json::from_slice(&raw.value).expect("json");
    assert_eq!(json["name"], "go.micro.server.worker");
    assert_eq!(json["version"], "latest");
    assert!(json["metadata"].is_null());
    assert_eq!(json["nodes"][0]["id"], "go.micro.server.worker-1");
    assert_eq!(json["nodes"][0]["address"], "127.0.0.1:9089");
    assert_eq!(json["nodes"][0]["metadata"]["tag"], "a");
    assert!(raw.lease > 0);

    let w2 = worker("go.micro.server.worker-2", "127.0.0.1:9090", "b");
    let r2 = reg.register(&w2, opts).await.expect("register w2");
    assert_eq!(next_registry(&mut all).await.action, Action::Create);
    let got = reg
        .get_service("go.micro.server.worker")
        .await
        .expect("get service");
    assert_eq!(got.len(), 1);
    let mut ids: Vec<_> = got[0].nodes.iter().map(|n| n.id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["go.micro.server.worker-1", "go.micro.server.worker-2"]
    );
    assert_eq!(reg.list_services().await.expect("list").len(), 1);
    assert!(reg
        .get_service("nobody")
        .await
        .expect("get nobody")
        .is_empty());

    // Another registration of a live node id is refused, naming the holder's address (after
    // waiting one TTL for it to expire, which it does not: it is renewed).
    let w2x = worker("go.micro.server.worker-2", "127.0.0.1:9999", "x");
    let err = reg
        .register(&w2x, opts)
        .await
        .expect_err("a live id is taken");
    assert!(err.to_string().contains("127.0.0.1:9090"), "{err}");
    // The registration itself rewriting its node with new metadata is an update.
    let w2b = worker("go.micro.server.worker-2", "127.0.0.1:9090", "b2");
    r2.update(&w2b).await.expect("update w2");
    let ev = next_registry(&mut all).await;
    assert_eq!(ev.action, Action::Update);
    assert_eq!(ev.service, w2b);

    // A node that died without deregistering and starts again at its own address takes its
    // lingering key over at once (no other live process can serve that address).
    let w3 = worker("go.micro.server.worker-3", "127.0.0.1:9091", "c");
    let r3 = reg.register(&w3, opts).await.expect("register w3");
    assert_eq!(next_registry(&mut all).await.action, Action::Create);
    let dead_lease = r3.lease_id().await;
    drop(r3); // renewals stop; the key stays until its lease expires
    let started = tokio::time::Instant::now();
    let r3b = reg.register(&w3, opts).await.expect("restart w3");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait for the old lease"
    );
    assert_eq!(next_registry(&mut all).await.action, Action::Update);
    let held = c
        .get(r3b.keys()[0].clone())
        .await
        .expect("get")
        .body
        .expect("w3's key");
    assert_ne!(held.lease, dead_lease);
    assert_eq!(held.lease, r3b.lease_id().await);
    r3b.deregister().await.expect("deregister w3");
    assert_eq!(next_registry(&mut all).await.action, Action::Delete);

    // Clean deregistration: delete with the service decoded from prev_kv.
    r2.deregister().await.expect("deregister w2");
    let ev = next_registry(&mut all).await;
    assert_eq!(ev.action, Action::Delete);
    assert_eq!(ev.service, w2b);
    assert_eq!(
        reg.get_service("go.micro.server.worker")
            .await
            .expect("get")[0]
            .nodes
            .len(),
        1
    );

    // Revoke w1's lease behind its back: the key goes, and the registration puts it back.
    let old_lease = r1.lease_id().await;
    c.lease_revoke(old_lease)
        .await
        .expect("revoke behind its back");
    let ev = next_registry(&mut all).await;
    assert_eq!(ev.action, Action::Delete);
    assert_eq!(ev.service, w1);
    let ev = next_registry(&mut all).await;
    assert_eq!(ev.action, Action::Create);
    assert_eq!(ev.service, w1);
    let now = c
        .get(r1.keys()[0].clone())
        .await
        .expect("get")
        .body
        .expect("re-created");
    assert_ne!(now.lease, old_lease);
    assert_eq!(r1.lease_id().await, now.lease);

    // It also outlives its TTL while registered.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        assert!(c
            .get(r1.keys()[0].clone())
            .await
            .expect("get")
            .body
            .is_some());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    r1.deregister().await.expect("deregister w1");
    assert_eq!(next_registry(&mut all).await.action, Action::Delete);
    assert!(reg.list_services().await.expect("list").is_empty());
    // Its lease is revoked too.
    let ttl = c.lease_time_to_live(now.lease, false).await.expect("ttl");
    assert_eq!(ttl.body.ttl, -1);
}

/// Two candidates: the second leads after the first resigns; leader query; observe; loss.
pub async fn election_ops(endpoints: &[String]) {
    let c = client(endpoints);
    let election = Election::new(c.clone(), crawler::coord::election::DEFAULT_PREFIX);
    assert!(election.leader().await.expect("leader").is_none());
    let mut observer = election.observe().await.expect("observe");
    let first = tokio::time::timeout(WAIT, observer.next())
        .await
        .expect("observe")
        .expect("open");
    assert_eq!(first.expect("ok"), None);

    let s1 = Session::new(c.clone(), Duration::from_secs(5))
        .await
        .expect("session 1");
    let s2 = Session::new(c.clone(), Duration::from_secs(5))
        .await
        .expect("session 2");
    let v1 = crawler::coord::election::master_value(1, "127.0.0.1:9091");
    let v2 = crawler::coord::election::master_value(2, "127.0.0.1:9092");
    let l1 = election
        .campaign(&s1, v1.clone())
        .await
        .expect("campaign 1");
    assert_eq!(
        String::from_utf8_lossy(l1.key()),
        format!("/crawler/election/{:x}", s1.lease_id())
    );
    let leader = election
        .leader()
        .await
        .expect("leader")
        .expect("some leader");
    assert_eq!(leader.value_str(), v1);
    assert_eq!(leader.create_revision, l1.create_revision());
    assert_eq!(leader.lease, s1.lease_id());

    let seen = next_leader(&mut observer).await;
    assert_eq!(seen.value_str(), v1);

    // The second candidate queues behind the first.
    let election2 = election.clone();
    let v2c = v2.clone();
    let second = tokio::spawn(async move {
        let l = election2.campaign(&s2, v2c).await;
        (l, s2)
    });
    eventually("second candidate queued", WAIT, || {
        let c = c.clone();
        async move {
            matches!(c.get_prefix("/crawler/election/").await, Ok(r) if r.body.len() == 2)
        }
    })
    .await;
    assert!(!second.is_finished(), "second candidate must wait");

    // Fencing: a write guarded by the leadership succeeds while it lasts.
    let fenced = |fence: Compare, v: &'static str| TxnRequest {
        compare: vec![fence],
        success: vec![RequestOp::Put(put_req("/resources/x", v))],
        failure: vec![],
    };
    let fence1 = l1.fence();
    assert!(
        c.txn(fenced(fence1.clone(), "1"))
            .await
            .expect("txn")
            .body
            .succeeded
    );

    l1.resign().await.expect("resign");
    let (l2, s2) = tokio::time::timeout(WAIT, second)
        .await
        .expect("second wins")
        .expect("join");
    let mut l2 = l2.expect("campaign 2");
    assert!(l2.create_revision() > fence_rev(&fence1));
    assert_eq!(
        election
            .leader()
            .await
            .expect("leader")
            .expect("leader")
            .value_str(),
        v2
    );
    assert!(
        !c.txn(fenced(fence1, "stale"))
            .await
            .expect("txn")
            .body
            .succeeded,
        "deposed leader is fenced"
    );
    assert!(
        c.txn(fenced(l2.fence(), "2"))
            .await
            .expect("txn")
            .body
            .succeeded
    );

    let seen = next_leader(&mut observer).await;
    assert_eq!(seen.value_str(), v2);
    l2.proclaim("master2-moved").await.expect("proclaim");
    let seen = next_leader(&mut observer).await;
    assert_eq!(seen.value_str(), "master2-moved");

    // The same session campaigning again keeps its place (same key and create revision).
    let again = election
        .campaign(&s2, "master2-moved")
        .await
        .expect("re-campaign");
    assert_eq!(again.create_revision(), l2.create_revision());

    // An abandoned campaign withdraws its candidacy.
    let s3 = Session::new(c.clone(), Duration::from_secs(5))
        .await
        .expect("session 3");
    let s3_key = election.candidate_key(&s3);
    let election3 = election.clone();
    let third = tokio::spawn(async move {
        let _ = election3.campaign(&s3, "master3").await;
    });
    eventually("third candidate queued", WAIT, || {
        let c = c.clone();
        let k = s3_key.clone();
        async move { matches!(c.get(k).await, Ok(r) if r.body.is_some()) }
    })
    .await;
    third.abort();
    eventually("abandoned candidacy withdrawn", WAIT, || {
        let c = c.clone();
        let k = s3_key.clone();
        async move { matches!(c.get(k).await, Ok(r) if r.body.is_none()) }
    })
    .await;

    // Leadership is lost when its key is deleted, the session living on.
    assert!(!l2.is_lost());
    c.delete_key(l2.key().to_vec())
        .await
        .expect("delete leader key");
    tokio::time::timeout(WAIT, l2.lost())
        .await
        .expect("leadership lost with its key");
    tokio::time::timeout(WAIT, again.lost())
        .await
        .expect("same key, also lost");
    assert!(!s2.is_lost());
    let r = l2.proclaim("x").await;
    assert!(matches!(r, Err(ElectionError::NotLeader)), "{r:?}");
    s2.close().await.expect("close s2");

    // Leadership is lost when the session's lease goes.
    let mut l1b = election
        .campaign(&s1, v1.clone())
        .await
        .expect("campaign 1 again");
    assert_eq!(
        election
            .leader()
            .await
            .expect("leader")
            .expect("leader")
            .value_str(),
        v1
    );
    c.lease_revoke(s1.lease_id()).await.expect("revoke s1");
    tokio::time::timeout(WAIT, l1b.lost())
        .await
        .expect("leadership lost with its session");
    tokio::time::timeout(WAIT, s1.lost())
        .await
        .expect("session lost");
    let r = l1b.proclaim("x").await;
    assert!(matches!(r, Err(ElectionError::NotLeader)), "{r:?}");
    let r = election.campaign(&s1, "x").await;
    assert!(matches!(r, Err(ElectionError::SessionExpired)), "{r:?}");
    assert!(election.leader().await.expect("leader").is_none());
}

fn fence_rev(c: &Compare) -> i64 {
    match c.target {
        CompareTarget::Create(r) => r,
        _ => panic!("fence is a create compare"),
    }
}

async fn next_leader(
    o: &mut crawler::coord::election::Observer,
) -> crawler::coord::election::LeaderInfo {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, o.next())
            .await
            .expect("timed out observing")
            .expect("observer ended")
            .expect("observer error");
        if let Some(l) = item {
            return l;
        }
    }
}

/// A dead endpoint first in the list: every call (writes included) fails over to the live one.
pub async fn failover_dead_endpoint(live: &str, dead: &str) {
    let c = client(&[dead.to_string(), live.to_string()]);
    let r = c.put_kv("/fo/a", "1", 0).await.expect("put fails over");
    assert_eq!(
        c.get("/fo/a")
            .await
            .expect("get")
            .body
            .expect("a")
            .mod_revision,
        r.revision
    );
    let mut w = c
        .watch(WatchSpec::key("/fo/a"))
        .await
        .expect("watch fails over");
    let g = c.lease_grant(10, 0).await.expect("grant").body;
    c.lease_keep_alive_once(g.id).await.expect("keepalive");
    c.put_kv("/fo/a", "2", g.id).await.expect("put");
    let b = next_events(&mut w).await;
    assert_eq!(b.events[0].kv.value, b"2");

    // Only dead endpoints: a typed, retryable error, not a hang or a panic.
    let only_dead = client(&[dead.to_string()]);
    let e = only_dead
        .put_kv("/fo/b", "1", 0)
        .await
        .expect_err("no server");
    assert!(e.is_retryable(), "{e:?}");
    assert!(matches!(e, KvError::Unavailable(_)), "{e:?}");
}

/// A watch whose connection breaks resumes on another endpoint without gaps or duplicates.
/// `via_proxy` is an endpoint that `cut` makes unreachable; `direct` stays up.
pub async fn watch_resumes_after_endpoint_loss<F: FnOnce()>(via_proxy: &str, direct: &str, cut: F) {
    let writer = client(&[direct.to_string()]);
    let mut cfg = RemoteConfig::new([via_proxy.to_string(), direct.to_string()]);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(3);
    let remote = RemoteKvClient::new(cfg).expect("client");
    let c: Arc<dyn KvClient> = Arc::new(remote.clone());
    assert_eq!(remote.current_endpoint(), remote.endpoints()[0]);
    let mut w = c
        .watch(WatchSpec::prefix("/resume/").with_prev_kv())
        .await
        .expect("watch via proxy");
    let mut expected = Vec::new();
    for i in 0..3 {
        expected.push(
            writer
                .put_kv(format!("/resume/{i}"), "v", 0)
                .await
                .expect("put")
                .revision,
        );
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(
            next_events(&mut w)
                .await
                .events
                .iter()
                .map(|e| e.kv.mod_revision),
        );
    }
    cut();
    for i in 3..6 {
        expected.push(
            writer
                .put_kv(format!("/resume/{i}"), "v", 0)
                .await
                .expect("put")
                .revision,
        );
    }
    expected.push(
        writer
            .delete_key("/resume/0")
            .await
            .expect("delete")
            .revision,
    );
    while got.len() < expected.len() {
        got.extend(
            next_events(&mut w)
                .await
                .events
                .iter()
                .map(|e| e.kv.mod_revision),
        );
    }
    assert_eq!(
        got, expected,
        "no event lost or repeated across the reconnect"
    );
    assert_eq!(
        remote.current_endpoint(),
        remote.endpoints()[1],
        "the watch moved to the direct endpoint"
    );
    // The client now prefers the endpoint that works.
    c.put_kv("/resume/after", "x", 0)
        .await
        .expect("put after failover");
    let b = next_events(&mut w).await;
    assert_eq!(b.events[0].kv.key, b"/resume/after");
}
