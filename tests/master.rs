//! The crawler master, the same scenarios on our store (in-process member; masters on the
//! in-process client, workers and checks over gRPC) and on a real etcd 3.4 process (skipped with a
//! message when `/usr/bin/etcd` is missing).
//!
//! Workers are lightweight registry registrations made through `crawler::coord::registry`, exactly as
//! `crawler worker` registers; killing one = revoking its lease or letting it expire.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crawler::client::{KvClientExt, RangeRequest};
use crawler::coord::election::Election;
use crawler::coord::snowflake::SnowflakeId;
use crawler::master::{ResourceStore, WriteError};
use crawler::model::resource::Resource;
use crawler_proto::crawler::{Empty, ResourceSpec};
use support::master_env::{
    self, grpc, http, http_addr, http_typed, log_lines, on_both, per_node, Env, Kind, WAIT,
};
use support::wait::eventually_some;
use tonic::Code;

on_both!(
    a_master_id_belongs_to_one_master,
    tasks_go_only_to_workers_that_can_run_them,
    workers_joining_together_split_the_seeds,
    rebalance_gives_late_joiners_their_share,
    worker_join_leave_diff,
    seeds_added_and_assigned,
    seeds_before_workers,
    least_loaded_spread,
    reassign_on_worker_death,
    leader_failover,
    fencing_deleted_key,
    fencing_paused_leader,
    follower_forwarding,
    api_errors,
    external_writes,
);

fn ids_and_times(rs: &BTreeMap<String, Resource>) -> BTreeMap<String, (String, i64)> {
    rs.iter()
        .map(|(n, r)| (n.clone(), (r.id.clone(), r.creation_time)))
        .collect()
}

async fn wait_log(what: &str) {
    eventually_some(&format!("log line {what:?}"), WAIT, || async {
        (!log_lines(what).is_empty()).then_some(())
    })
    .await;
}

/// Registry watch → worker set → the Go line on join, leave (clean deregister and lease expiry).
async fn worker_join_leave_diff(env: Arc<Env>) {
    let m = env.start_leader(1, &[]).await;
    let mut a = env.register_worker().await;
    wait_log(&format!(
        "worker joined: [{}], leaved: [], changed: []",
        a.id
    ))
    .await;
    let b = env.register_worker().await;
    wait_log(&format!(
        "worker joined: [{}], leaved: [], changed: []",
        b.id
    ))
    .await;
    eventually_some("master sees both workers", WAIT, || async {
        (m.workers().len() == 2).then_some(())
    })
    .await;
    let (status, body) = http(http_addr(&m), "GET", "/crawler/workers", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["workers"]
        .as_array()
        .expect("workers array")
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert_eq!(ids, vec![a.id.as_str(), b.id.as_str()]);
    assert_eq!(body["workers"][0]["address"], a.address.as_str());

    // Clean exit: deregistered at once.
    a.reg
        .take()
        .expect("registered")
        .deregister()
        .await
        .expect("deregister");
    wait_log(&format!(
        "worker joined: [], leaved: [{}], changed: []",
        a.id
    ))
    .await;
    // Only b is left: a new resource goes to it.
    let mut c = grpc(&m).await;
    let r = c
        .add_resource(ResourceSpec {
            name: "r".into(),
            ..ResourceSpec::default()
        })
        .await
        .expect("add")
        .into_inner()
        .resource
        .expect("resource");
    assert_eq!(r.assigned_node, b.assigned());
    // b re-registers on another address (its value rewritten on its own lease, as go-micro
    // does; another process can no longer take its id): "changed", and its resource follows it
    // (same ID, same creation time).
    let reg = b.reg.as_ref().expect("registered");
    let key = reg.keys().remove(0);
    let moved = env
        .client()
        .get(key.clone())
        .await
        .expect("get")
        .body
        .expect("b's key");
    let value = String::from_utf8_lossy(&moved.value).replace(&b.address, "127.0.0.1:1");
    env.client()
        .put_kv(key, value.into_bytes(), reg.lease_id().await)
        .await
        .expect("re-register b");
    wait_log(&format!(
        "worker joined: [], leaved: [], changed: [{}]",
        b.id
    ))
    .await;
    let b2_assigned = format!("{}|127.0.0.1:1", b.id);
    let rs = env
        .wait_resources("the resource follows b's new address", |rs| {
            rs["r"].assigned_node == b2_assigned
        })
        .await;
    assert_eq!(
        (rs["r"].id.as_str(), rs["r"].creation_time),
        (r.id.as_str(), r.creation_time)
    );
    // Crash: the registration lease expires after its TTL.
    let b_id = b.id.clone();
    drop(b);
    wait_log(&format!("worker joined: [], leaved: [{b_id}], changed: []")).await;
    assert!(m.workers().is_empty());
    env.wait_resources("unassigned once no worker is left", |rs| {
        rs["r"].assigned_node.is_empty()
    })
    .await;
    m.shutdown().await;
}

/// Seeds from the config are stored once, in the Go JSON shape, with snowflake IDs of this
/// master, assigned least-loaded; a restarted master does not add them again.
async fn seeds_added_and_assigned(env: Arc<Env>) {
    let w1 = env.register_worker().await;
    let w2 = env.register_worker().await;
    let seeds = ["douban_book_list", "xxx", "s3", "s4"];
    let m = env.start_leader(7, &seeds).await;
    let rs = env.resources().await;
    assert_eq!(rs.keys().map(String::as_str).collect::<Vec<_>>().len(), 4);
    for s in seeds {
        let r = &rs[s];
        let id: i64 = r.id.parse().expect("numeric ID");
        assert_eq!(SnowflakeId(id).node(), 7, "ID minted by master 7");
        assert!(r.creation_time > 1_600_000_000_000_000_000, "unix nanos");
        assert!(
            r.assigned_node == w1.assigned() || r.assigned_node == w2.assigned(),
            "{r:?}"
        );
    }
    let load = per_node(&rs);
    assert_eq!(load.get(&w1.assigned()), Some(&2));
    assert_eq!(load.get(&w2.assigned()), Some(&2));
    // Exactly the Go JSON shape and key.
    let raw = env.raw_resources().await;
    let v = &raw["/resources/douban_book_list"];
    let r = &rs["douban_book_list"];
    assert_eq!(
        v,
        &format!(
            r#"{{"ID":"{}","Name":"douban_book_list","AssignedNode":"{}","CreationTime":{}}}"#,
            r.id, r.assigned_node, r.creation_time
        )
    );
    // The election lives outside /resources/.
    assert!(raw.keys().all(|k| !k.contains("election")));
    let le = Election::new(env.client(), "/crawler/election")
        .leader()
        .await
        .expect("leader")
        .expect("some leader");
    assert!(String::from_utf8_lossy(&le.key).starts_with("/crawler/election/"));
    assert_eq!(le.value_str(), m.election_value());
    assert!(m.election_value().starts_with("master7-127.0.0.1:"));

    // A new leader with more seeds adds only the missing one and keeps the others untouched.
    m.shutdown().await;
    let m2 = env.start_leader(8, &["xxx", "s5"]).await;
    let rs2 = env.resources().await;
    assert_eq!(rs2.len(), 5);
    for s in seeds {
        assert_eq!(rs2[s], rs[s], "existing resource unchanged");
    }
    assert_eq!(SnowflakeId(rs2["s5"].id.parse().expect("id")).node(), 8);
    m2.shutdown().await;
}

/// Seeds added while no worker lives are stored unassigned, and assigned when one joins.
async fn seeds_before_workers(env: Arc<Env>) {
    let m = env.start_leader(1, &["a", "b", "c"]).await;
    let rs = env.resources().await;
    assert_eq!(rs.len(), 3, "nothing dropped");
    assert!(rs.values().all(|r| r.assigned_node.is_empty()), "{rs:?}");
    let before = ids_and_times(&rs);
    let w = env.register_worker().await;
    let rs = env
        .wait_resources("all assigned to the new worker", |rs| {
            rs.values().all(|r| r.assigned_node == w.assigned())
        })
        .await;
    assert_eq!(ids_and_times(&rs), before, "IDs and creation times kept");
    // Added through the API with no worker: stored unassigned, node absent in the reply.
    drop(w);
    env.wait_resources("unassigned after the worker expired", |rs| {
        rs.values().all(|r| r.assigned_node.is_empty())
    })
    .await;
    let mut c = grpc(&m).await;
    let reply = c
        .add_resource(ResourceSpec {
            name: "d".into(),
            ..ResourceSpec::default()
        })
        .await
        .expect("add without workers")
        .into_inner();
    assert!(reply.node.is_none());
    assert_eq!(reply.resource.expect("resource").assigned_node, "");
    let w2 = env.register_worker().await;
    env.wait_resources("all four on the second worker", |rs| {
        rs.len() == 4 && rs.values().all(|r| r.assigned_node == w2.assigned())
    })
    .await;
    m.shutdown().await;
}

/// A second master with a live master's id is refused (after waiting one session TTL, in case
/// the key was its own dead predecessor's): its snowflake IDs would collide.
async fn a_master_id_belongs_to_one_master(env: Arc<Env>) {
    let m = env.start_leader(7, &[]).await;
    let err = crawler::master::Master::start(env.master_config(7, &[]), env.client())
        .await
        .expect_err("a second master 7 is refused");
    let text = err.to_string();
    assert!(
        text.contains("master id 7 is taken") && text.contains(m.election_value()),
        "{text}"
    );
    // Another id is fine.
    let other = env.start_master(env.master_config(8, &[])).await;
    other.shutdown().await;
    m.shutdown().await;
}

/// A worker lists the tasks it can run (registration metadata `tasks`): a resource goes only to
/// a worker that can run it, and stays unassigned while none can, instead of failing on one that
/// cannot; a worker that lists nothing (a plain go-micro node) takes anything.
async fn tasks_go_only_to_workers_that_can_run_them(env: Arc<Env>) {
    let n = master_env::unique();
    let only_a = master_env::register_node_with(
        env.client(),
        format!("go.micro.server.worker-{n}"),
        format!("127.0.0.1:{}", 20000 + n),
        BTreeMap::from([("tasks".to_string(), "a,b".to_string())]),
    )
    .await;
    let m = env.start_leader(1, &["a", "zzz"]).await;
    let rs = env
        .wait_resources("a assigned", |rs| {
            rs.len() == 2 && rs["a"].assigned_node == only_a.assigned()
        })
        .await;
    assert_eq!(rs["zzz"].assigned_node, "", "no worker can run zzz: {rs:?}");
    // An API add of a task nobody lists: stored, unassigned.
    let (status, reply) = http(
        http_addr(&m),
        "POST",
        "/crawler/resource",
        Some(r#"{"name":"q"}"#),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["resource"]["AssignedNode"], "");
    let any = env.register_worker().await;
    env.wait_resources("the unlimited worker takes zzz and q", |rs| {
        rs["zzz"].assigned_node == any.assigned() && rs["q"].assigned_node == any.assigned()
    })
    .await;
    m.shutdown().await;
}

/// Two workers started together (registered back to back after the seeds were stored
/// unassigned): the seeds are split between them, not all given to whichever joined first.
async fn workers_joining_together_split_the_seeds(env: Arc<Env>) {
    let m = env.start_leader(1, &["a", "b", "c", "d"]).await;
    let (w1, w2) = tokio::join!(env.register_worker(), env.register_worker());
    let rs = env
        .wait_resources("every seed assigned", |rs| {
            rs.values().all(|r| !r.assigned_node.is_empty())
        })
        .await;
    let load = per_node(&rs);
    assert_eq!(load.get(&w1.assigned()), Some(&2), "{load:?}");
    assert_eq!(load.get(&w2.assigned()), Some(&2), "{load:?}");
    m.shutdown().await;
}

/// With `Rebalance` on, workers that join later get their share (loads end within one of each
/// other), each move keeping the resource's ID and creation time; with it off (the default,
/// as in every other scenario) a late joiner gets only new work.
async fn rebalance_gives_late_joiners_their_share(env: Arc<Env>) {
    let w1 = env.register_worker().await;
    let mut cfg = env.master_config(1, &["a", "b", "c", "d", "e"]);
    cfg.rebalance = true;
    let m = env.start_master(cfg).await;
    assert!(m.wait_ready(WAIT).await, "leader ready");
    let rs = env
        .wait_resources("all on the first worker", |rs| {
            rs.len() == 5 && rs.values().all(|r| r.assigned_node == w1.assigned())
        })
        .await;
    let before = ids_and_times(&rs);
    let w2 = env.register_worker().await;
    let rs = env
        .wait_resources("split 3/2", |rs| {
            let load = per_node(rs);
            load.get(&w1.assigned()) == Some(&3) && load.get(&w2.assigned()) == Some(&2)
        })
        .await;
    assert_eq!(ids_and_times(&rs), before, "IDs and creation times kept");
    let w3 = env.register_worker().await;
    env.wait_resources("within one of each other over three", |rs| {
        let load = per_node(rs);
        [&w1, &w2, &w3]
            .iter()
            .all(|w| matches!(load.get(&w.assigned()), Some(1 | 2)))
    })
    .await;
    m.shutdown().await;
}

/// 3 workers, 30 resources added through the API: 10 each, counted from the store.
async fn least_loaded_spread(env: Arc<Env>) {
    let ws = [
        env.register_worker().await,
        env.register_worker().await,
        env.register_worker().await,
    ];
    let m = env.start_leader(1, &[]).await;
    eventually_some("master sees 3 workers", WAIT, || async {
        (m.workers().len() == 3).then_some(())
    })
    .await;
    // 30 adds at once, half through a follower (forwarded): the leader serializes them.
    let f = env.start_master(env.master_config(2, &[])).await;
    let c = grpc(&m).await;
    let cf = grpc(&f).await;
    let adds = (0..30).map(|i| {
        let mut c = if i % 2 == 0 { c.clone() } else { cf.clone() };
        async move {
            let reply = c
                .add_resource(ResourceSpec {
                    name: format!("task-{i:02}"),
                    ..ResourceSpec::default()
                })
                .await
                .expect("add")
                .into_inner();
            let node = reply.node.expect("assigned");
            let r = reply.resource.expect("resource");
            assert_eq!(r.assigned_node, format!("{}|{}", node.id, node.address));
        }
    });
    futures::future::join_all(adds).await;
    f.shutdown().await;
    let rs = env.resources().await;
    assert_eq!(rs.len(), 30);
    let load = per_node(&rs);
    for w in &ws {
        assert_eq!(load.get(&w.assigned()), Some(&10), "{load:?}");
    }
    // IDs are unique and increase with creation.
    let mut ids: Vec<i64> = rs.values().map(|r| r.id.parse().expect("id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30);
    // A new leader counts from the store: the next one goes to the least-loaded worker.
    m.shutdown().await;
    let m2 = env.start_leader(2, &[]).await;
    let mut c2 = grpc(&m2).await;
    let _ = c2
        .delete_resource(ResourceSpec {
            name: "task-05".into(),
            ..ResourceSpec::default()
        })
        .await
        .expect("delete");
    let lighter = env.resources().await;
    let light_node = ws
        .iter()
        .find(|w| per_node(&lighter).get(&w.assigned()) == Some(&9))
        .expect("one worker has 9")
        .assigned();
    let r = c2
        .add_resource(ResourceSpec {
            name: "task-30".into(),
            ..ResourceSpec::default()
        })
        .await
        .expect("add")
        .into_inner()
        .resource
        .expect("resource");
    assert_eq!(r.assigned_node, light_node);
    m2.shutdown().await;
}

/// A worker whose registration disappears loses its resources to the live ones, IDs and creation
/// times kept; with no worker left they are unassigned, then assigned to the next one.
async fn reassign_on_worker_death(env: Arc<Env>) {
    let mut a = env.register_worker().await;
    let b = env.register_worker().await;
    let m = env.start_leader(1, &[]).await;
    let mut c = grpc(&m).await;
    for i in 0..6 {
        c.add_resource(ResourceSpec {
            name: format!("r{i}"),
            ..ResourceSpec::default()
        })
        .await
        .expect("add");
    }
    let rs = env.resources().await;
    assert_eq!(per_node(&rs).get(&a.assigned()), Some(&3));
    let before = ids_and_times(&rs);

    // Kill a: revoke its lease (what its death amounts to once the TTL has passed).
    let lease = a.reg.as_ref().expect("registered").lease_id().await;
    let reg = a.reg.take();
    drop(reg);
    env.client().lease_revoke(lease).await.expect("revoke");
    let rs = env
        .wait_resources("everything moved to b", |rs| {
            rs.values().all(|r| r.assigned_node == b.assigned())
        })
        .await;
    assert_eq!(ids_and_times(&rs), before, "IDs and creation times kept");
    wait_log(&format!(
        "worker joined: [], leaved: [{}], changed: []",
        a.id
    ))
    .await;

    // b crashes: its lease expires; nothing is left to run them.
    drop(b);
    env.wait_resources("everything unassigned", |rs| {
        rs.values().all(|r| r.assigned_node.is_empty())
    })
    .await;
    let c2 = env.register_worker().await;
    let rs = env
        .wait_resources("everything on the new worker", |rs| {
            rs.values().all(|r| r.assigned_node == c2.assigned())
        })
        .await;
    assert_eq!(ids_and_times(&rs), before, "IDs and creation times kept");
    m.shutdown().await;
}

/// Two masters: the leader resigns (shutdown), then a leader crashes (abort, its session expires);
/// each time the other becomes ready and holds every resource.
async fn leader_failover(env: Arc<Env>) {
    let w = env.register_worker().await;
    let m1 = env.start_leader(1, &["s1", "s2"]).await;
    let m2 = env.start_master(env.master_config(2, &["s1", "s2"])).await;
    // m2 follows: it sees m1 as the leader.
    let (status, leader) = http(http_addr(&m2), "GET", "/crawler/leader", None).await;
    assert_eq!(
        (status, leader["value"].as_str()),
        (200, Some(m1.election_value()))
    );
    assert!(!m2.is_leader());
    let mut c = grpc(&m1).await;
    for i in 0..4 {
        c.add_resource(ResourceSpec {
            name: format!("r{i}"),
            ..ResourceSpec::default()
        })
        .await
        .expect("add");
    }
    let before = env.resources().await;
    assert_eq!(before.len(), 6);

    // Graceful: resign → m2 takes over at once.
    m1.shutdown().await;
    assert!(m2.wait_ready(WAIT).await, "m2 takes over");
    let (status, body) = http(http_addr(&m2), "GET", "/crawler/resources", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["resources"].as_array().map(Vec::len), Some(6));
    assert_eq!(env.resources().await, before, "nothing rewritten");
    let (status, health) = http(http_addr(&m2), "GET", "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["leader"], true);
    assert_eq!(health["ready"], true);

    // Crash: m3 joins, m2 dies without resigning; m3 is ready within the session TTL + slack.
    let m3 = env.start_master(env.master_config(3, &[])).await;
    let (status, leader) = http(http_addr(&m3), "GET", "/crawler/leader", None).await;
    assert_eq!(status, 200);
    assert_eq!(leader["value"], m2.election_value());
    assert_eq!(leader["is_self"], false);
    m2.abort();
    let started = tokio::time::Instant::now();
    assert!(
        m3.wait_ready(WAIT).await,
        "m3 takes over after m2's session expires"
    );
    assert!(
        started.elapsed() < master_env::SESSION_TTL + Duration::from_secs(10),
        "failover took {:?}",
        started.elapsed()
    );
    let mut c3 = grpc(&m3).await;
    let listed = c3
        .list_resources(Empty {})
        .await
        .expect("list")
        .into_inner()
        .resources;
    assert_eq!(listed.len(), 6);
    assert_eq!(env.resources().await, before);
    // The new leader acts: a new resource goes to the worker.
    let r = c3
        .add_resource(ResourceSpec {
            name: "after".into(),
            ..ResourceSpec::default()
        })
        .await
        .expect("add on new leader")
        .into_inner();
    assert_eq!(r.resource.expect("r").assigned_node, w.assigned());
    let l = c3.leader(Empty {}).await.expect("leader").into_inner();
    assert!(l.is_self);
    assert_eq!(l.master_id, 3);
    m3.shutdown().await;
}

/// The election key is deleted behind the leader's back: its fenced writes fail, the store is
/// unchanged, and it stops acting (then campaigns again).
async fn fencing_deleted_key(env: Arc<Env>) {
    let w = env.register_worker().await;
    let m = env.start_leader(1, &["s1"]).await;
    let fence = m.fence().expect("leader has a fence");
    let client = env.client();
    let before = client.get_prefix("/resources/").await.expect("read").body;
    let store = ResourceStore::new(client.clone());
    client
        .delete_key(fence.key.clone())
        .await
        .expect("delete election key");

    let new = Resource {
        id: "1".into(),
        name: "intruder".into(),
        assigned_node: w.assigned(),
        creation_time: 1,
    };
    assert_eq!(store.create(&fence, &new).await, Err(WriteError::Fenced));
    let s1 = store.get("s1").await.expect("get").expect("s1 stored");
    let moved = Resource {
        assigned_node: "elsewhere|x".into(),
        ..s1.resource.clone()
    };
    assert_eq!(
        store.update(&fence, &moved, s1.mod_revision).await,
        Err(WriteError::Fenced)
    );
    assert_eq!(store.delete(&fence, "s1").await, Err(WriteError::Fenced));
    let after = client.get_prefix("/resources/").await.expect("read").body;
    assert_eq!(after, before, "store unchanged");

    // The master noticed, stopped acting, and leads again under a new key.
    eventually_some("a new term with a new fence", WAIT, || async {
        m.fence()
            .filter(|f| f.create_revision != fence.create_revision)
            .map(|_| ())
    })
    .await;
    assert!(m.wait_ready(WAIT).await);
    assert_eq!(store.create(&fence, &new).await, Err(WriteError::Fenced));
    let fresh = m.fence().expect("fence");
    let rev = store
        .create(
            &fresh,
            &Resource {
                name: "legit".into(),
                ..new.clone()
            },
        )
        .await
        .expect("the leader's write commits");
    // The write tags its writer: the election key was re-put in the same txn (read as of that
    // revision, so later leader writes do not matter), keeping value, lease and create revision.
    let legit = store
        .get("legit")
        .await
        .expect("get")
        .expect("legit stored");
    assert_eq!(legit.mod_revision, rev);
    let at_write = client
        .range(RangeRequest {
            key: fresh.key.clone(),
            revision: rev,
            ..RangeRequest::default()
        })
        .await
        .expect("read election key at the write")
        .body
        .kvs;
    let [tag] = at_write.as_slice() else {
        panic!("one election key at revision {rev}: {at_write:?}");
    };
    assert_eq!(tag.mod_revision, rev, "election key tagged at the write");
    assert_eq!(tag.create_revision, fresh.create_revision);
    let before = client
        .range(RangeRequest {
            key: fresh.key.clone(),
            revision: rev - 1,
            ..RangeRequest::default()
        })
        .await
        .expect("read election key before the write")
        .body
        .kvs;
    assert_eq!(before.len(), 1);
    assert_eq!(
        (&tag.value, tag.lease, tag.version),
        (&before[0].value, before[0].lease, before[0].version + 1)
    );
    m.shutdown().await;
}

/// A leader that was "paused" (its session revoked; a successor took over and wrote) and then
/// resumes with its old fence cannot overwrite the successor's decisions.
async fn fencing_paused_leader(env: Arc<Env>) {
    let w = env.register_worker().await;
    let m1 = env.start_leader(1, &["s1"]).await;
    let old = m1.fence().expect("fence");
    let m2 = env.start_master(env.master_config(2, &[])).await;
    let client = env.client();
    // Pause m1 for good: stop it (it keeps no in-memory power), then expire its session behind its
    // back as a long GC pause or partition would.
    let info = Election::new(client.clone(), "/crawler/election")
        .leader()
        .await
        .expect("leader")
        .expect("m1 leads");
    assert_eq!(info.create_revision, old.create_revision);
    m1.abort();
    client
        .lease_revoke(info.lease)
        .await
        .expect("revoke m1's session");
    assert!(m2.wait_ready(WAIT).await, "m2 takes over");
    let mut c2 = grpc(&m2).await;
    c2.add_resource(ResourceSpec {
        name: "by-m2".into(),
        ..ResourceSpec::default()
    })
    .await
    .expect("m2 writes");
    let before = client.get_prefix("/resources/").await.expect("read").body;

    // m1 "resumes" and tries its pending writes with its old fence.
    let store = ResourceStore::new(client.clone());
    let s = store.get("by-m2").await.expect("get").expect("stored");
    let overwrite = Resource {
        assigned_node: "stale-decision|x".into(),
        ..s.resource.clone()
    };
    assert_eq!(
        store.update(&old, &overwrite, s.mod_revision).await,
        Err(WriteError::Fenced)
    );
    assert_eq!(store.delete(&old, "by-m2").await, Err(WriteError::Fenced));
    assert_eq!(
        store
            .create(
                &old,
                &Resource {
                    name: "by-m1".into(),
                    ..overwrite.clone()
                }
            )
            .await,
        Err(WriteError::Fenced)
    );
    let after = client.get_prefix("/resources/").await.expect("read").body;
    assert_eq!(after, before, "store unchanged");
    assert_eq!(env.resources().await["by-m2"].assigned_node, w.assigned());
    m2.shutdown().await;
}

/// Writes sent to a follower (HTTP and gRPC) are forwarded to the leader; reads are local; with
/// no leader the follower says so.
async fn follower_forwarding(env: Arc<Env>) {
    let w = env.register_worker().await;
    // An API-only master that never campaigns: with nobody leading it answers "no master leader".
    let mut cfg = env.master_config(9, &[]);
    cfg.campaign = false;
    let f = env.start_master(cfg).await;
    let fh = http_addr(&f);
    let (status, body) = http(fh, "POST", "/crawler/resource", Some(r#"{"name":"x"}"#)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "no master leader");
    let mut fg = grpc(&f).await;
    let err = fg
        .add_resource(ResourceSpec {
            name: "x".into(),
            ..ResourceSpec::default()
        })
        .await
        .expect_err("no leader");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "no master leader");
    let (status, body) = http(fh, "GET", "/crawler/leader", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("no master leader"))
    );
    let (status, health) = http(fh, "GET", "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["leader"], false);
    assert_eq!(health["ready"], false);

    let leader = env.start_leader(1, &[]).await;
    // HTTP add through the follower.
    let (status, body) = http(
        fh,
        "POST",
        "/crawler/resource",
        Some(r#"{"name":"via-http"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource"]["Name"], "via-http");
    assert_eq!(body["resource"]["AssignedNode"], w.assigned());
    assert_eq!(body["node"]["id"], w.id.as_str());
    let id = body["resource"]["ID"].as_str().expect("ID").to_string();
    let id: i64 = id.parse().expect("numeric");
    assert_eq!(SnowflakeId(id).node(), 1, "minted by the leader");
    // gRPC add through the follower.
    let r = fg
        .add_resource(ResourceSpec {
            name: "via-grpc".into(),
            ..ResourceSpec::default()
        })
        .await
        .expect("forwarded add")
        .into_inner();
    assert_eq!(r.node.expect("node").id, w.id);
    // Errors pass through the forwarding with their codes.
    let err = fg
        .add_resource(ResourceSpec {
            name: "via-grpc".into(),
            ..ResourceSpec::default()
        })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    let (status, _) = http(
        fh,
        "POST",
        "/crawler/resource",
        Some(r#"{"name":"via-http"}"#),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = http(
        fh,
        "DELETE",
        "/crawler/resource",
        Some(r#"{"name":"nope"}"#),
    )
    .await;
    assert_eq!(status, 404);
    // Reads on the follower.
    let (status, body) = http(fh, "GET", "/crawler/resources", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["resources"].as_array().map(Vec::len), Some(2));
    let (status, body) = http(fh, "GET", "/crawler/leader", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["value"], leader.election_value());
    assert_eq!(body["master_id"], 1);
    assert_eq!(body["is_self"], false);
    assert_eq!(body["address"], leader.grpc_addr().to_string());
    // Delete through the follower, both ways.
    let (status, _) = http(
        fh,
        "DELETE",
        "/crawler/resource",
        Some(r#"{"name":"via-http"}"#),
    )
    .await;
    assert_eq!(status, 200);
    fg.delete_resource(ResourceSpec {
        name: "via-grpc".into(),
        ..ResourceSpec::default()
    })
    .await
    .expect("forwarded delete");
    assert!(env.resources().await.is_empty());

    // A campaigning follower forwards too.
    let m2 = env.start_master(env.master_config(2, &[])).await;
    let (status, body) = http(
        http_addr(&m2),
        "POST",
        "/crawler/resource",
        Some(r#"{"name":"z"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!m2.is_leader());
    // Leader gone and unreachable while its key is still there: a clear 503.
    leader.abort();
    let (status, body) = http(fh, "POST", "/crawler/resource", Some(r#"{"name":"q"}"#)).await;
    assert_eq!(status, 503, "{body}");
    assert!(m2.wait_ready(WAIT).await);
    let (status, _) = http(fh, "POST", "/crawler/resource", Some(r#"{"name":"q"}"#)).await;
    assert_eq!(status, 200);
    m2.shutdown().await;
    f.shutdown().await;
}

/// Bad input, duplicates and unknown resources on the leader, HTTP and gRPC.
async fn api_errors(env: Arc<Env>) {
    let _w = env.register_worker().await;
    let m = env.start_leader(1, &[]).await;
    let h = http_addr(&m);
    for body in [r#"{"name":""}"#, r#"{"name":"   "}"#, r#"{}"#] {
        let (status, reply) = http(h, "POST", "/crawler/resource", Some(body)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(reply["error"], "resource name is empty");
    }
    let (status, reply) = http(h, "POST", "/crawler/resource", Some("not json")).await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().is_some());
    let (status, _) = http(h, "POST", "/crawler/resource", Some(r#"{"name":"a/b"}"#)).await;
    assert_eq!(status, 400);
    // Strict input, every error as JSON, nothing stored.
    let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(10_000));
    let (status, reply) = http(h, "POST", "/crawler/resource", Some(&long)).await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("longer than")),
        "{reply}"
    );
    let (status, reply) = http(
        h,
        "POST",
        "/crawler/resource",
        Some(r#"{"name":"u","x":1}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown field")),
        "{reply}"
    );
    let (status, reply) = http_typed(
        h,
        "POST",
        "/crawler/resource",
        r#"{"name":"t"}"#,
        "text/plain",
    )
    .await;
    assert_eq!(status, 415);
    assert!(
        reply["error"].as_str().is_some_and(|e| e.contains("JSON")),
        "{reply}"
    );
    let huge = format!(r#"{{"name":"{}"}}"#, "y".repeat(5 << 20));
    let (status, reply) = http(h, "POST", "/crawler/resource", Some(&huge)).await;
    assert_eq!(status, 413);
    assert!(reply["error"].as_str().is_some(), "{reply}");
    assert!(env.resources().await.is_empty(), "nothing stored");
    let (status, reply) = http(h, "POST", "/crawler/resource", Some(r#"{"name":"dup"}"#)).await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = http(h, "POST", "/crawler/resource", Some(r#"{"name":"dup"}"#)).await;
    assert_eq!(status, 409);
    assert_eq!(reply["error"], "resource dup already exists");
    let (status, reply) = http(
        h,
        "DELETE",
        "/crawler/resource",
        Some(r#"{"name":"ghost"}"#),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"], "resource ghost not found");
    let (status, _) = http(h, "GET", "/crawler/resource?name=ghost", None).await;
    assert_eq!(status, 404);
    let (status, reply) = http(h, "GET", "/crawler/resource?name=dup", None).await;
    assert_eq!(status, 200);
    assert_eq!(reply["Name"], "dup");
    let (status, _) = http(h, "GET", "/no/such/path", None).await;
    assert_eq!(status, 404);
    let (status, health) = http(h, "GET", "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["leader"], true);
    assert_eq!(health["ready"], true);

    let mut c = grpc(&m).await;
    let spec = |n: &str| ResourceSpec {
        name: n.into(),
        ..ResourceSpec::default()
    };
    let e = c.add_resource(spec("")).await.expect_err("empty");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "resource name is empty");
    let e = c.add_resource(spec("dup")).await.expect_err("dup");
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = c.delete_resource(spec("ghost")).await.expect_err("ghost");
    assert_eq!(e.code(), Code::NotFound);
    let e = c.get_resource(spec("ghost")).await.expect_err("ghost");
    assert_eq!(e.code(), Code::NotFound);
    let e = c.delete_resource(spec("")).await.expect_err("empty");
    assert_eq!(e.code(), Code::InvalidArgument);
    let got = c.get_resource(spec("dup")).await.expect("get").into_inner();
    assert_eq!(got.name, "dup");
    c.delete_resource(spec("dup")).await.expect("delete");
    let e = c.delete_resource(spec("dup")).await.expect_err("gone");
    assert_eq!(e.code(), Code::NotFound);
    let workers = c
        .list_workers(Empty {})
        .await
        .expect("workers")
        .into_inner();
    assert_eq!(workers.workers.len(), 1);
    m.shutdown().await;
}

/// Resources written behind the master's back are picked up by its periodic resync; values under
/// `/resources/` that are not resources are skipped, never fatal.
async fn external_writes(env: Arc<Env>) {
    let w = env.register_worker().await;
    let mut cfg = env.master_config(1, &[]);
    cfg.resync_interval = Duration::from_millis(300);
    let m = env.start_master(cfg).await;
    assert!(m.wait_ready(WAIT).await);
    let client = env.client();
    client
        .put_kv(
            "/resources/ext",
            r#"{"ID":"42","Name":"ext","AssignedNode":"","CreationTime":7}"#,
            0,
        )
        .await
        .expect("put");
    client
        .put_kv("/resources/garbage", "not json", 0)
        .await
        .expect("put");
    client
        .put_kv("/resources/election/3f3584fc571ae9d0", "master2-x:1", 0)
        .await
        .expect("put");
    let got = eventually_some("the external resource is assigned", WAIT, || async {
        let kv = client
            .get("/resources/ext")
            .await
            .expect("get")
            .body
            .expect("exists");
        let r = Resource::decode(&kv.value).expect("json");
        (r.assigned_node == w.assigned()).then_some(r)
    })
    .await;
    assert_eq!(
        (got.id.as_str(), got.creation_time),
        ("42", 7),
        "ID and time kept"
    );
    let (status, body) = http(http_addr(&m), "GET", "/crawler/resources", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["resources"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["Name"].as_str())
        .collect();
    assert_eq!(names, vec!["ext"]);
    // The leader still works normally.
    let (status, _) = http(
        http_addr(&m),
        "POST",
        "/crawler/resource",
        Some(r#"{"name":"after"}"#),
    )
    .await;
    assert_eq!(status, 200);
    m.shutdown().await;
}
