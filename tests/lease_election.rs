//! The Lease, Election and Lock services of in-process `Member`s, driven through the generated
//! tonic clients exactly as an etcd client would.

mod support;

use std::time::{Duration, Instant};

use crawler::server::member::{Limits, Member, MemberConfig};
use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::lease_client::LeaseClient;
use crawler_proto::v3electionpb as epb;
use crawler_proto::v3electionpb::election_client::ElectionClient;
use crawler_proto::v3lockpb as lpb;
use crawler_proto::v3lockpb::lock_client::LockClient;
use crawler_raft::{ClusterState, NodeConfig};
use support::ports::free_port;
use support::wait::eventually_some;
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);

/// How long a call that must stay blocked is given to (wrongly) finish.
const STAYS_BLOCKED: Duration = Duration::from_millis(400);

fn node_config(
    dir: &std::path::Path,
    name: &str,
    peer_port: u16,
    client_port: u16,
    cluster: &[(String, String)],
) -> MemberConfig {
    MemberConfig {
        node: NodeConfig {
            name: name.to_string(),
            data_dir: dir.join(name),
            listen_peer: format!("127.0.0.1:{peer_port}").parse().expect("addr"),
            advertise_peer_urls: vec![format!("http://127.0.0.1:{peer_port}")],
            advertise_client_urls: vec![format!("http://127.0.0.1:{client_port}")],
            initial_cluster: cluster.to_vec(),
            initial_cluster_state: ClusterState::New,
            cluster_token: "lease-election-test".to_string(),
            heartbeat_interval_ms: 50,
            election_timeout_ms: 500,
            snapshot_count: 10_000,
            peer_dial_overrides: Default::default(),
        },
        listen_client: format!("127.0.0.1:{client_port}").parse().expect("addr"),
        limits: Limits::default(),
        auto_compaction: crawler::server::compactor::AutoCompaction::Off,
    }
}

/// Clients of one member.
#[derive(Clone)]
struct Clients {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    election: ElectionClient<Channel>,
    lock: LockClient<Channel>,
}

impl Clients {
    async fn connect(member: &Member) -> Clients {
        let url = format!("http://{}", member.client_addr());
        let channel = Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        Clients {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            election: ElectionClient::new(channel.clone()),
            lock: LockClient::new(channel),
        }
    }

    /// Ready once a linearizable read succeeds (a leader exists and has applied).
    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            let r = self.kv.range(range(b"ready")).await;
            if r.is_ok() {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "member never ready: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn grant(&mut self, ttl: i64) -> i64 {
        let r = self
            .lease
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await
            .expect("grant")
            .into_inner();
        assert!(r.id > 0);
        r.id
    }

    async fn put(&mut self, k: &str, v: &str, lease: i64) -> i64 {
        self.kv
            .put(pb::PutRequest {
                key: k.into(),
                value: v.into(),
                lease,
                ..Default::default()
            })
            .await
            .expect("put")
            .into_inner()
            .header
            .expect("header")
            .revision
    }

    async fn exists(&mut self, k: &str) -> bool {
        !self
            .kv
            .range(range(k.as_bytes()))
            .await
            .expect("range")
            .into_inner()
            .kvs
            .is_empty()
    }

    /// One keep-alive over a fresh stream: the TTL answered.
    async fn keep_alive(&mut self, id: i64) -> Result<i64, tonic::Status> {
        let mut replies = self
            .lease
            .lease_keep_alive(tokio_stream::once(pb::LeaseKeepAliveRequest { id }))
            .await?
            .into_inner();
        let r = replies.message().await?.expect("one keep-alive reply");
        assert_eq!(r.id, id);
        assert!(r.header.is_some());
        Ok(r.ttl)
    }

    async fn ttl(&mut self, id: i64, keys: bool) -> pb::LeaseTimeToLiveResponse {
        self.lease
            .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys })
            .await
            .expect("time to live")
            .into_inner()
    }

    async fn revoke(&mut self, id: i64) -> Result<(), tonic::Status> {
        self.lease
            .lease_revoke(pb::LeaseRevokeRequest { id })
            .await
            .map(|_| ())
    }

    async fn campaign(&mut self, name: &str, lease: i64, value: &str) -> epb::LeaderKey {
        let r = self
            .election
            .campaign(epb::CampaignRequest {
                name: name.into(),
                lease,
                value: value.into(),
            })
            .await
            .expect("campaign")
            .into_inner();
        assert!(r.header.is_some());
        r.leader.expect("leader key")
    }

    async fn leader_value(&mut self, name: &str) -> Result<String, tonic::Status> {
        let r = self
            .election
            .leader(epb::LeaderRequest { name: name.into() })
            .await?
            .into_inner();
        assert!(r.header.is_some());
        Ok(String::from_utf8_lossy(&r.kv.expect("kv").value).into_owned())
    }
}

fn range(k: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: k.to_vec(),
        ..Default::default()
    }
}

fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, msg: &str) {
    match r {
        Ok(v) => panic!("expected {code:?} {msg:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "code of {s:?}");
            assert_eq!(s.message(), msg);
        }
    }
}

/// A spawned call that must not finish yet: gives it a moment, checks it is still running.
async fn assert_blocked<T>(h: &mut tokio::task::JoinHandle<T>) {
    let r = tokio::time::timeout(STAYS_BLOCKED, h).await;
    assert!(r.is_err(), "call finished while it should still wait");
}

/// A spawned call that must finish now.
async fn finishes<T>(h: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(DEADLINE, h)
        .await
        .expect("call did not finish in time")
        .expect("task panicked")
}

struct Single {
    member: Option<Member>,
    c: Clients,
    _dir: tempfile::TempDir,
}

impl Single {
    async fn start() -> Single {
        let dir = tempfile::tempdir().expect("temp dir");
        let peer = free_port();
        let cluster = vec![("solo".to_string(), format!("http://127.0.0.1:{peer}"))];
        let member = crawler::services::start_member(node_config(
            dir.path(),
            "solo",
            peer,
            free_port(),
            &cluster,
        ))
        .await
        .expect("member starts");
        let mut c = Clients::connect(&member).await;
        c.wait_ready().await;
        Single {
            member: Some(member),
            c,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(m) = self.member.take() {
            m.shutdown().await.expect("clean shutdown");
        }
    }
}

#[tokio::test]
async fn lease_grant_keepalive_ttl_revoke() {
    let mut s = Single::start().await;
    let c = &mut s.c;

    // Grant with a chosen id and with a server-picked one.
    let g = c
        .lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 4242 })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!((g.id, g.ttl), (4242, 30));
    assert!(g.header.expect("header").revision >= 1);
    assert_status(
        c.lease
            .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 4242 })
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_status(
        c.lease
            .lease_grant(pb::LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    // A tiny TTL is raised to the minimum.
    let small = c
        .lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 0, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert!(small.ttl >= 1, "ttl {}", small.ttl);

    let id = c.grant(20).await;
    c.put("/lease/a", "1", id).await;
    c.put("/lease/b", "2", id).await;
    c.put("/other", "3", 0).await;

    let t = c.ttl(id, true).await;
    assert_eq!(t.id, id);
    assert_eq!(t.granted_ttl, 20);
    assert!((18..=20).contains(&t.ttl), "remaining {}", t.ttl);
    assert_eq!(t.keys, vec![b"/lease/a".to_vec(), b"/lease/b".to_vec()]);
    assert!(c.ttl(id, false).await.keys.is_empty());

    // Keep-alive: one reply per request on one stream.
    assert_eq!(c.keep_alive(id).await.expect("keepalive"), 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = c
        .lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    for want in [(id, 20), (777_777, 0), (id, 20)] {
        tx.send(pb::LeaseKeepAliveRequest { id: want.0 })
            .await
            .expect("send");
        let r = replies.message().await.expect("reply").expect("open");
        assert_eq!((r.id, r.ttl), want);
        assert!(r.header.is_some());
    }
    drop(tx);
    assert!(replies.message().await.expect("clean end").is_none());

    let leases = c
        .lease
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    assert!(leases.header.is_some());
    let ids: Vec<i64> = leases.leases.iter().map(|l| l.id).collect();
    for want in [4242, small.id, id] {
        assert!(ids.contains(&want), "{want} missing from {ids:?}");
    }

    // Revoke deletes the attached keys (only those).
    c.revoke(id).await.expect("revoke");
    assert!(!c.exists("/lease/a").await);
    assert!(!c.exists("/lease/b").await);
    assert!(c.exists("/other").await);
    let t = c.ttl(id, true).await;
    assert_eq!((t.id, t.ttl), (id, -1));
    assert!(t.header.is_some());
    assert_eq!(c.keep_alive(id).await.expect("keepalive"), 0);
    assert_status(
        c.revoke(id).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // A put with an unknown lease fails the same way.
    assert_status(
        c.kv.put(pb::PutRequest {
            key: "/x".into(),
            lease: id,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    s.stop().await;
}

#[tokio::test]
async fn lease_without_keepalive_expires() {
    let mut s = Single::start().await;
    let c = &mut s.c;
    let short = c.grant(1).await;
    let kept = c.grant(1).await;
    c.put("/exp/short", "x", short).await;
    c.put("/exp/kept", "y", kept).await;

    // Keep one lease alive while the other expires.
    let mut keeper = c.clone();
    let stop = tokio::sync::watch::channel(false);
    let mut stop_rx = stop.1.clone();
    let keeping = tokio::spawn(async move {
        loop {
            let ttl = keeper.keep_alive(kept).await.expect("keepalive");
            assert!(ttl > 0, "kept lease expired");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop_rx.changed() => return,
            }
        }
    });

    let mut c2 = c.clone();
    eventually_some("the short lease to expire", DEADLINE, || {
        let mut c = c2.clone();
        async move { (!c.exists("/exp/short").await).then_some(()) }
    })
    .await;
    assert_eq!(c2.ttl(short, false).await.ttl, -1);
    assert_eq!(c2.keep_alive(short).await.expect("keepalive"), 0);
    assert!(c2.exists("/exp/kept").await, "kept-alive lease expired");
    let t = c2.ttl(kept, false).await;
    assert!(t.ttl >= 0 && t.granted_ttl >= 1);

    let _ = stop.0.send(true);
    keeping.await.expect("keeper");
    s.stop().await;
}

#[tokio::test]
async fn election_two_candidates() {
    let mut s = Single::start().await;
    let c = &mut s.c;
    let la = c.grant(30).await;
    let lb = c.grant(30).await;

    assert_status(
        c.leader_value("e1").await,
        Code::Unknown,
        "election: no leader",
    );

    // Observe before anyone campaigns: the first leader arrives through the watch.
    let mut observe = c
        .election
        .observe(epb::LeaderRequest { name: "e1".into() })
        .await
        .expect("observe")
        .into_inner();

    let a = c.campaign("e1", la, "a").await;
    assert_eq!(a.name, b"e1".to_vec());
    assert_eq!(a.key, format!("e1/{la:x}").into_bytes());
    assert_eq!(a.lease, la);
    assert!(a.rev > 1);
    assert_eq!(c.leader_value("e1").await.expect("leader"), "a");
    let first = observe.message().await.expect("observe").expect("open");
    assert_eq!(first.kv.expect("kv").value, b"a".to_vec());

    // The second candidate waits for the first.
    let mut cb = c.clone();
    let mut b_campaign = tokio::spawn(async move { cb.campaign("e1", lb, "b").await });
    assert_blocked(&mut b_campaign).await;

    // Proclaim: new value, observed; a stale leader key is refused.
    let p = c
        .election
        .proclaim(epb::ProclaimRequest {
            leader: Some(a.clone()),
            value: "a2".into(),
        })
        .await
        .expect("proclaim")
        .into_inner();
    assert!(p.header.is_some());
    assert_eq!(c.leader_value("e1").await.expect("leader"), "a2");
    let next = observe.message().await.expect("observe").expect("open");
    assert_eq!(next.kv.expect("kv").value, b"a2".to_vec());
    let mut stale = a.clone();
    stale.rev += 1000;
    assert_status(
        c.election
            .proclaim(epb::ProclaimRequest {
                leader: Some(stale),
                value: "x".into(),
            })
            .await,
        Code::Unknown,
        "election: not leader",
    );
    assert_status(
        c.election
            .proclaim(epb::ProclaimRequest {
                leader: None,
                value: "x".into(),
            })
            .await,
        Code::Unknown,
        "\"leader\" field must be provided",
    );
    assert_blocked(&mut b_campaign).await;

    // Resign hands leadership to the waiting candidate.
    let r = c
        .election
        .resign(epb::ResignRequest {
            leader: Some(a.clone()),
        })
        .await
        .expect("resign")
        .into_inner();
    assert!(r.header.is_some());
    let b = finishes(b_campaign).await;
    assert_eq!(b.key, format!("e1/{lb:x}").into_bytes());
    assert!(b.rev > a.rev);
    assert_eq!(c.leader_value("e1").await.expect("leader"), "b");
    let next = observe.message().await.expect("observe").expect("open");
    assert_eq!(next.kv.expect("kv").value, b"b".to_vec());

    // A third candidate takes over when the leader's lease is revoked.
    let lc = c.grant(30).await;
    let mut cc = c.clone();
    let mut c_campaign = tokio::spawn(async move { cc.campaign("e1", lc, "c").await });
    assert_blocked(&mut c_campaign).await;
    c.revoke(lb).await.expect("revoke");
    let cl = finishes(c_campaign).await;
    assert_eq!(cl.lease, lc);
    assert_eq!(c.leader_value("e1").await.expect("leader"), "c");
    let next = observe.message().await.expect("observe").expect("open");
    assert_eq!(next.kv.expect("kv").value, b"c".to_vec());

    // Campaigning again with the same lease keeps the key and proclaims the new value.
    let again = c.campaign("e1", lc, "c2").await;
    assert_eq!((again.key.clone(), again.rev), (cl.key.clone(), cl.rev));
    assert_eq!(c.leader_value("e1").await.expect("leader"), "c2");

    c.revoke(lc).await.expect("revoke");
    assert_status(
        c.leader_value("e1").await,
        Code::Unknown,
        "election: no leader",
    );
    s.stop().await;
}

#[tokio::test]
async fn campaign_fails_when_its_lease_ends_while_waiting() {
    let mut s = Single::start().await;
    let c = &mut s.c;
    let la = c.grant(30).await;
    let lb = c.grant(30).await;
    c.campaign("e2", la, "a").await;
    let mut cb = c.clone();
    let mut waiting = tokio::spawn(async move {
        cb.election
            .campaign(epb::CampaignRequest {
                name: "e2".into(),
                lease: lb,
                value: "b".into(),
            })
            .await
    });
    assert_blocked(&mut waiting).await;
    c.revoke(lb).await.expect("revoke");
    assert_status(
        finishes(waiting).await,
        Code::Unknown,
        "election: session is expired",
    );
    assert_eq!(c.leader_value("e2").await.expect("leader"), "a");

    // A campaign under an unknown lease fails like a put would.
    assert_status(
        c.election
            .campaign(epb::CampaignRequest {
                name: "e2".into(),
                lease: lb,
                value: "b".into(),
            })
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    s.stop().await;
}

#[tokio::test]
async fn lock_is_mutually_exclusive() {
    let mut s = Single::start().await;
    let c = &mut s.c;
    let la = c.grant(30).await;
    let lb = c.grant(30).await;

    let ka = c
        .lock
        .lock(lpb::LockRequest {
            name: "l1".into(),
            lease: la,
        })
        .await
        .expect("lock")
        .into_inner();
    assert_eq!(ka.key, format!("l1/{la:x}").into_bytes());
    assert!(ka.header.is_some());
    assert!(c.exists(&format!("l1/{la:x}")).await);

    let mut cb = c.clone();
    let mut b_lock = tokio::spawn(async move {
        cb.lock
            .lock(lpb::LockRequest {
                name: "l1".into(),
                lease: lb,
            })
            .await
            .expect("lock")
            .into_inner()
    });
    assert_blocked(&mut b_lock).await;

    let u = c
        .lock
        .unlock(lpb::UnlockRequest {
            key: ka.key.clone(),
        })
        .await
        .expect("unlock")
        .into_inner();
    assert!(u.header.is_some());
    let kb = finishes(b_lock).await;
    assert_eq!(kb.key, format!("l1/{lb:x}").into_bytes());

    // The lock is held again: a new waiter blocks until the holder's lease is revoked.
    let mut ca = c.clone();
    let mut a_lock = tokio::spawn(async move {
        ca.lock
            .lock(lpb::LockRequest {
                name: "l1".into(),
                lease: la,
            })
            .await
            .expect("lock")
            .into_inner()
    });
    assert_blocked(&mut a_lock).await;
    c.revoke(lb).await.expect("revoke");
    let again = finishes(a_lock).await;
    assert_eq!(again.key, ka.key);
    assert_status(
        c.lock.unlock(lpb::UnlockRequest { key: vec![] }).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    s.stop().await;
}

/// A waiter that gives up (client cancels) leaves no key behind.
#[tokio::test]
async fn cancelled_lock_wait_withdraws() {
    let mut s = Single::start().await;
    let c = &mut s.c;
    let la = c.grant(30).await;
    let lb = c.grant(30).await;
    c.lock
        .lock(lpb::LockRequest {
            name: "l2".into(),
            lease: la,
        })
        .await
        .expect("lock");
    let mut cb = c.clone();
    let waiter = async move {
        cb.lock
            .lock(lpb::LockRequest {
                name: "l2".into(),
                lease: lb,
            })
            .await
    };
    assert!(tokio::time::timeout(STAYS_BLOCKED, waiter).await.is_err());
    let key_b = format!("l2/{lb:x}");
    let c2 = c.clone();
    eventually_some("the abandoned waiter's key to go", DEADLINE, || {
        let mut c = c2.clone();
        let k = key_b.clone();
        async move { (!c.exists(&k).await).then_some(()) }
    })
    .await;
    s.stop().await;
}

/// Three in-process members: keep-alives and TTL queries on followers are answered by the
/// leader's clock; a new leader extends the leases of the old one.
#[tokio::test]
async fn leases_across_three_members() {
    let dir = tempfile::tempdir().expect("temp dir");
    let names = ["m1", "m2", "m3"];
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let cluster: Vec<(String, String)> = names
        .iter()
        .zip(&ports)
        .map(|(n, (p, _))| (n.to_string(), format!("http://127.0.0.1:{p}")))
        .collect();
    let starts = names.iter().zip(&ports).map(|(n, (p, c))| {
        crawler::services::start_member(node_config(dir.path(), n, *p, *c, &cluster))
    });
    let mut members: Vec<Option<Member>> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|m| Some(m.expect("member starts")))
        .collect();
    let mut clients = Vec::new();
    for m in members.iter().flatten() {
        let mut c = Clients::connect(m).await;
        c.wait_ready().await;
        clients.push(c);
    }
    let leader_idx = |members: &Vec<Option<Member>>| -> Option<usize> {
        members.iter().position(|m| {
            m.as_ref()
                .is_some_and(|m| m.raft().status().leader == Some(m.raft().id()))
        })
    };
    let leader = eventually_some("a leader", DEADLINE, || {
        let l = leader_idx(&members);
        async move { l }
    })
    .await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // Granted through a follower; kept alive and queried through followers.
    let id = clients[follower].grant(5).await;
    clients[follower].put("/m/k", "v", id).await;
    // Every member must be able to answer once its client URL is published.
    let mut cf = clients[follower].clone();
    let ttl = eventually_some("a follower keep-alive", DEADLINE, || {
        let mut c = cf.clone();
        async move { c.keep_alive(id).await.ok() }
    })
    .await;
    assert_eq!(ttl, 5);
    assert_eq!(cf.keep_alive(987_654).await.expect("keepalive"), 0);
    let t = cf.ttl(id, true).await;
    assert_eq!(t.granted_ttl, 5);
    assert!((3..=5).contains(&t.ttl), "remaining {}", t.ttl);
    assert_eq!(t.keys, vec![b"/m/k".to_vec()]);
    assert_eq!(cf.ttl(987_654, false).await.ttl, -1);

    // Keep the lease alive through a follower for longer than its TTL.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        assert_eq!(cf.keep_alive(id).await.expect("keepalive"), 5);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(clients[other].exists("/m/k").await);

    // Leader change: stop the leader; the lease survives on the new leader and still expires
    // once nobody keeps it alive.
    cf.keep_alive(id).await.expect("keepalive");
    let old = members[leader].take().expect("leader member");
    old.shutdown().await.expect("shutdown");
    let new_leader = eventually_some("a new leader", DEADLINE, || {
        let l = leader_idx(&members);
        async move { l }
    })
    .await;
    assert_ne!(new_leader, leader);
    let mut cn = clients[new_leader].clone();
    let t = eventually_some("TTL from the new leader", DEADLINE, || {
        let mut c = cn.clone();
        async move {
            c.lease
                .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: false })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    })
    .await;
    assert!(t.ttl >= 4, "lease not extended on leader change: {}", t.ttl);
    eventually_some("the lease to expire on the new leader", DEADLINE, || {
        let mut c = cn.clone();
        async move { (!c.exists("/m/k").await).then_some(()) }
    })
    .await;
    assert_eq!(cn.ttl(id, false).await.ttl, -1);

    for m in members.iter_mut() {
        if let Some(m) = m.take() {
            m.shutdown().await.expect("shutdown");
        }
    }
}

/// Runs `etcdctl` (API v3) against `ep`; `None` when it is not installed.
async fn etcdctl(ep: &str, args: &[&str]) -> Option<(bool, String, String)> {
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .args(args)
        .output()
        .await
        .ok()?;
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Spawns a long-running `etcdctl` with piped stdout.
fn etcdctl_spawn(ep: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn etcdctl")
}

/// SIGINT, so that `etcdctl elect` resigns before it exits.
async fn interrupt(child: &tokio::process::Child) {
    let pid = child.id().expect("running child").to_string();
    let ok = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("kill")
        .success();
    assert!(ok, "kill -INT {pid} failed");
}

/// Real `etcdctl` 3.4 against the Lease service, and its client-side elections and locks
/// against the server-side Election and Lock services (same key layout, mutual exclusion).
#[tokio::test]
async fn etcdctl_interop() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut s = Single::start().await;
    let ep = s.member.as_ref().expect("member").client_addr().to_string();
    let Some((ok, out, err)) = etcdctl(&ep, &["lease", "grant", "30"]).await else {
        eprintln!("etcdctl not installed; skipping");
        s.stop().await;
        return;
    };
    assert!(ok, "lease grant: {err}");
    // "lease 694d77aa9e38260f granted with TTL(30s)"
    let hex = out.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(out.contains("granted with TTL(30s)"), "{out}");
    let id = i64::from_str_radix(&hex, 16).expect("hex id");

    let (ok, _, err) = etcdctl(&ep, &["put", &format!("--lease={hex}"), "/ctl/k", "v"])
        .await
        .expect("etcdctl");
    assert!(ok, "put: {err}");
    let (ok, out, err) = etcdctl(&ep, &["lease", "timetolive", &hex, "--keys"])
        .await
        .expect("etcdctl");
    assert!(ok, "timetolive: {err}");
    assert!(out.contains("granted with TTL(30s)"), "{out}");
    assert!(out.contains("attached keys([/ctl/k])"), "{out}");
    let (ok, out, err) = etcdctl(&ep, &["lease", "keep-alive", "--once", &hex])
        .await
        .expect("etcdctl");
    assert!(ok, "keep-alive: {err}");
    assert!(out.contains("keepalived with TTL(30)"), "{out}");
    let (ok, out, _) = etcdctl(&ep, &["lease", "list"]).await.expect("etcdctl");
    assert!(ok && out.contains(&hex), "{out}");
    let (ok, out, err) = etcdctl(&ep, &["lease", "revoke", &hex])
        .await
        .expect("etcdctl");
    assert!(ok && out.contains("revoked"), "revoke: {out} {err}");
    assert!(!s.c.exists("/ctl/k").await);
    let (ok, out, _) = etcdctl(&ep, &["lease", "timetolive", &hex])
        .await
        .expect("etcdctl");
    assert!(ok && out.contains("already expired"), "{out}");
    assert_eq!(s.c.ttl(id, false).await.ttl, -1);

    // `etcdctl elect` leads; a server-side candidate waits until it resigns.
    let mut elect = etcdctl_spawn(&ep, &["elect", "e3", "one"]);
    let mut c = s.c.clone();
    eventually_some("etcdctl to lead", DEADLINE, || {
        let mut c = c.clone();
        async move { (c.leader_value("e3").await.ok()? == "one").then_some(()) }
    })
    .await;
    let lease = c.grant(30).await;
    let mut c2 = c.clone();
    let mut campaign = tokio::spawn(async move { c2.campaign("e3", lease, "two").await });
    assert_blocked(&mut campaign).await;
    interrupt(&elect).await;
    let _ = tokio::time::timeout(DEADLINE, elect.wait()).await;
    let mine = finishes(campaign).await;
    assert_eq!(c.leader_value("e3").await.expect("leader"), "two");

    // `etcdctl elect -l` observes the server-side leader.
    let mut observer = etcdctl_spawn(&ep, &["elect", "-l", "e3"]);
    let stdout = observer.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let seen = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "two" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "etcdctl elect -l did not show the leader");
    drop(observer);
    c.election
        .resign(epb::ResignRequest { leader: Some(mine) })
        .await
        .expect("resign");

    // A server-side lock holder blocks `etcdctl lock`, until it unlocks.
    let held = c
        .lock
        .lock(lpb::LockRequest {
            name: "l3".into(),
            lease,
        })
        .await
        .expect("lock")
        .into_inner();
    let mut ctl_lock = etcdctl_spawn(&ep, &["lock", "l3", "echo", "got-it"]);
    let still_running = tokio::time::timeout(STAYS_BLOCKED, ctl_lock.wait())
        .await
        .is_err();
    assert!(still_running, "etcdctl lock did not wait for the holder");
    c.lock
        .unlock(lpb::UnlockRequest { key: held.key })
        .await
        .expect("unlock");
    let out = tokio::time::timeout(DEADLINE, ctl_lock.wait_with_output())
        .await
        .expect("etcdctl lock finished")
        .expect("output");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("got-it"));
    s.stop().await;
}
