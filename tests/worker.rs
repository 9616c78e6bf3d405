//! The crawler worker against our own store (in-process member, through the in-process client
//! and through the remote client) and against a real etcd: registration with go-micro's exact
//! JSON on a lease of RegisterTTL, running exactly the resources assigned to it, stopping them
//! when deleted or moved, a consistent snapshot + watch with no gap, deregistration on a clean
//! stop, and lease expiry after `kill -9` of a `crawler worker` process.
//!
//! Also: the in-process `LocalClient` gives the same answers as the remote client on the same
//! sequence of calls (a differential test on two fresh members).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crawler::client::local::LocalClient;
use crawler::client::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KvClient, KvClientExt, PutRequest,
    RangeRequest, RemoteConfig, RemoteKvClient, RequestOp, TxnRequest, WatchSpec,
};
use crawler::model::runner::{TaskHandle, TaskRunner, TaskSpec, TaskState};
use crawler::model::task::TaskConfig;
use crawler::worker::{LoggingRunner, Worker, WorkerOptions};
use parking_lot::Mutex;
use support::etcd::{EtcdServer, TcpProxy};
use support::http;
use support::our_store::OurStore;
use support::wait::{eventually, within};
use support::worker_process::WorkerProcess;

/// Deadline for anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);
/// Upper bound of one test.
const TEST_DEADLINE: Duration = Duration::from_secs(120);
/// Registry key of worker `id`.
fn reg_key(id: &str) -> String {
    format!("/micro/registry/go.micro.server.worker/go.micro.server.worker-{id}")
}

async fn run<F: std::future::Future<Output = ()>>(f: F) {
    within(TEST_DEADLINE, f).await;
}

// ---- our store, in process --------------------------------------------------------------------

fn remote(endpoint: &str) -> Arc<dyn KvClient> {
    let mut cfg = RemoteConfig::new([endpoint.to_string()]);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(3);
    Arc::new(RemoteKvClient::new(cfg).expect("client"))
}

// ---- a runner that records what it was asked ----------------------------------------------------

/// Wraps the logging runner; records every start and flags a start of a resource already running.
#[derive(Clone, Default)]
struct RecordingRunner {
    inner: LoggingRunner,
    starts: Arc<Mutex<Vec<String>>>,
    double_starts: Arc<Mutex<Vec<String>>>,
}

impl RecordingRunner {
    fn running_ids(&self) -> BTreeSet<String> {
        self.inner
            .running()
            .into_iter()
            .map(|r| r.resource_id)
            .collect()
    }

    fn starts_of(&self, id: &str) -> usize {
        self.starts.lock().iter().filter(|s| *s == id).count()
    }
}

impl TaskRunner for RecordingRunner {
    fn start(
        &self,
        spec: TaskSpec,
    ) -> crawler::client::BoxFuture<
        '_,
        Result<Box<dyn TaskHandle>, crawler::model::runner::RunnerError>,
    > {
        let id = spec.resource.id.clone();
        if self.running_ids().contains(&id) {
            self.double_starts.lock().push(id.clone());
        }
        self.starts.lock().push(id);
        self.inner.start(spec)
    }
}

// ---- helpers ------------------------------------------------------------------------------------

/// Put `/resources/<name>` in the master's JSON; returns the revision of the write.
async fn put_resource(c: &Arc<dyn KvClient>, name: &str, id: &str, assigned: &str) -> i64 {
    let value = format!(
        r#"{{"ID":"{id}","Name":"{name}","AssignedNode":"{assigned}","CreationTime":1670841268798763000}}"#
    );
    c.put_kv(format!("/resources/{name}"), value, 0)
        .await
        .expect("put resource")
        .revision
}

async fn delete_resource(c: &Arc<dyn KvClient>, name: &str) -> i64 {
    c.delete_key(format!("/resources/{name}"))
        .await
        .expect("delete resource")
        .revision
}

/// Wait until the worker has acted on every resource change up to `rev`.
async fn wait_synced(w: &Worker, rev: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while w.synced_revision() < rev {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never caught up to revision {rev} (at {})",
            w.synced_revision()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn tasks_json(w: &Worker) -> Vec<serde_json::Value> {
    http::tasks_json(w.http_addr()).await
}

/// go-micro's exact JSON of a worker registration. No `tasks` metadata: a worker runs any task
/// whose spec is in the store.
fn expected_registration(id: &str, address: &str) -> String {
    format!(
        r#"{{"name":"go.micro.server.worker","version":"latest","metadata":null,"endpoints":[],"nodes":[{{"id":"go.micro.server.worker-{id}","address":"{address}","metadata":{{"broker":"http","protocol":"grpc","registry":"etcd","server":"grpc","transport":"grpc"}}}}]}}"#
    )
}

// ---- scenario: registration and assignments -----------------------------------------------------

async fn follows_assignments(client: Arc<dyn KvClient>) {
    let runner = RecordingRunner::default();
    let tasks = ["a", "b", "c"].map(TaskConfig::named).to_vec();
    let mut opts = WorkerOptions::local("7", tasks);
    opts.register_ttl = Duration::from_secs(3);
    let worker = Worker::start(opts, client.clone(), Arc::new(runner.clone()))
        .await
        .expect("worker starts");
    let node = worker.node_id().to_string();
    let addr = worker.advertise_address().to_string();
    assert_eq!(node, "go.micro.server.worker-7");
    assert_eq!(addr, format!("127.0.0.1:{}", worker.grpc_addr().port()));
    let me = format!("{node}|{addr}");

    // Registered with go-micro's exact JSON, on a lease of RegisterTTL.
    let kv = client
        .get(reg_key("7"))
        .await
        .expect("get registration")
        .body
        .expect("worker is registered");
    assert_eq!(
        String::from_utf8_lossy(&kv.value),
        expected_registration("7", &addr)
    );
    assert_ne!(kv.lease, 0, "registration is on a lease");
    let ttl = client
        .lease_time_to_live(kv.lease, true)
        .await
        .expect("lease ttl")
        .body;
    assert_eq!(ttl.granted_ttl, 3, "lease granted with RegisterTTL");
    assert_eq!(ttl.keys, vec![reg_key("7").into_bytes()]);

    // The gRPC port answers grpc.health.v1 (serving once assignments are loaded).
    wait_synced(&worker, 1).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", worker.grpc_addr()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect gRPC health");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "crawler.Worker"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }

    // Only what is assigned to this node runs; a node id that merely shares the prefix does not.
    put_resource(&client, "a", "101", &me).await;
    put_resource(&client, "b", "102", "go.micro.server.worker-70|127.0.0.1:1").await;
    let rev = put_resource(&client, "c", "103", "").await;
    wait_synced(&worker, rev).await;
    assert_eq!(runner.running_ids(), BTreeSet::from(["101".to_string()]));
    let rows = tasks_json(&worker).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["name"], "a");
    assert_eq!(rows[0]["resource_id"], "101");
    assert_eq!(rows[0]["status"], "running");
    assert_eq!(rows[0]["assigned_node"], me.as_str());
    assert!(
        rows[0]["started"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{rows:?}"
    );

    // Moved away: stopped.
    let rev = put_resource(&client, "a", "101", "go.micro.server.worker-8|127.0.0.1:2").await;
    wait_synced(&worker, rev).await;
    assert!(runner.running_ids().is_empty());
    assert!(tasks_json(&worker).await.is_empty());

    // Assigned here, then deleted: started, then stopped.
    let rev = put_resource(&client, "b", "102", &me).await;
    wait_synced(&worker, rev).await;
    assert_eq!(runner.running_ids(), BTreeSet::from(["102".to_string()]));
    let rev = delete_resource(&client, "b").await;
    wait_synced(&worker, rev).await;
    assert!(runner.running_ids().is_empty());

    // Recreated with a new ID: the old run stops, the new one starts, each once.
    let rev = put_resource(&client, "c", "103", &me).await;
    wait_synced(&worker, rev).await;
    let rev = put_resource(&client, "c", "104", &me).await;
    wait_synced(&worker, rev).await;
    assert_eq!(runner.running_ids(), BTreeSet::from(["104".to_string()]));
    // An update that keeps the ID (address part rewritten) does not restart the run.
    let rev = put_resource(&client, "c", "104", &format!("{node}|10.0.0.1:1")).await;
    wait_synced(&worker, rev).await;
    assert_eq!(runner.starts_of("103"), 1);
    assert_eq!(runner.starts_of("104"), 1);

    // A resource with no spec in the store nor in the config is listed as failed, not hidden.
    let rev = put_resource(&client, "zzz", "105", &me).await;
    wait_synced(&worker, rev).await;
    let rows = tasks_json(&worker).await;
    let zzz = rows
        .iter()
        .find(|r| r["name"] == "zzz")
        .expect("zzz listed");
    assert_eq!(zzz["status"], "failed");
    assert!(
        zzz["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no spec for task \"zzz\"")),
        "{zzz}"
    );
    // Its spec appears in the store: the run starts.
    client
        .put_kv("/crawler/specs/zzz", r#"{"Name":"zzz"}"#, 0)
        .await
        .expect("put spec");
    eventually("zzz started from its store spec", WAIT, || {
        let runner = runner.clone();
        async move { runner.running_ids().contains("105") }
    })
    .await;
    // A changed spec restarts the run (same resource ID: from its checkpoint).
    client
        .put_kv("/crawler/specs/zzz", r#"{"Name":"zzz","MaxPages":3}"#, 0)
        .await
        .expect("put spec");
    eventually("zzz restarted with its new spec", WAIT, || {
        let runner = runner.clone();
        async move { runner.starts_of("105") == 2 && runner.running_ids().contains("105") }
    })
    .await;
    let rev = delete_resource(&client, "zzz").await;
    wait_synced(&worker, rev).await;
    let (status, body) = http::http_get(worker.http_addr(), "/health").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node"], node.as_str());
    assert_eq!(worker.tasks().len(), 1);
    assert!(worker
        .tasks()
        .iter()
        .any(|t| t.status == TaskState::Running && t.resource_id == "104"));

    // A clean stop stops the runs and deregisters at once (not after the TTL).
    let lease = kv.lease;
    worker.shutdown().await.expect("clean shutdown");
    assert!(runner.running_ids().is_empty());
    assert!(
        client.get(reg_key("7")).await.expect("get").body.is_none(),
        "registration removed at once"
    );
    let ttl = client
        .lease_time_to_live(lease, false)
        .await
        .expect("ttl")
        .body;
    assert_eq!(ttl.ttl, -1, "registration lease revoked");
    assert!(
        runner.double_starts.lock().is_empty(),
        "started twice: {:?}",
        runner.double_starts.lock()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_local_client_worker_follows_assignments() {
    run(async {
        let store = OurStore::start().await;
        follows_assignments(store.local()).await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_remote_client_worker_follows_assignments() {
    run(async {
        let store = OurStore::start().await;
        follows_assignments(remote(&store.endpoint())).await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_worker_follows_assignments() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_worker_follows_assignments").await else {
        return;
    };
    run(follows_assignments(remote(&etcd.endpoint))).await;
}

// ---- scenario: registration lost -------------------------------------------------------------

/// The registration lease is revoked behind the worker's back (as after a partition longer than
/// the TTL): every run stops, the registry re-registers on a new lease, and the runs still
/// assigned here start again from a fresh snapshot.
async fn restarts_after_registration_lost(client: Arc<dyn KvClient>) {
    let runner = RecordingRunner::default();
    let mut opts = WorkerOptions::local("6", vec![TaskConfig::named("a")]);
    opts.register_ttl = Duration::from_secs(3);
    let worker = Worker::start(opts, client.clone(), Arc::new(runner.clone()))
        .await
        .expect("worker starts");
    let me = format!("{}|{}", worker.node_id(), worker.advertise_address());
    let rev = put_resource(&client, "a", "201", &me).await;
    wait_synced(&worker, rev).await;
    assert_eq!(runner.starts_of("201"), 1);
    let old = worker.lease_id().await.expect("lease");
    client.lease_revoke(old).await.expect("revoke");
    eventually("the run restarts after re-registration", WAIT, || {
        let runner = runner.clone();
        async move { runner.starts_of("201") == 2 && runner.running_ids().contains("201") }
    })
    .await;
    let kv = client
        .get(reg_key("6"))
        .await
        .expect("get")
        .body
        .expect("registered again");
    assert_ne!(kv.lease, old, "re-registered on a new lease");
    assert!(
        runner.double_starts.lock().is_empty(),
        "stopped before restarting"
    );
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_local_client_restarts_after_registration_lost() {
    run(async {
        let store = OurStore::start().await;
        restarts_after_registration_lost(store.local()).await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarts_after_registration_lost() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_restarts_after_registration_lost").await
    else {
        return;
    };
    run(restarts_after_registration_lost(remote(&etcd.endpoint))).await;
}

/// The worker loses its store (a partition: the proxy it talks through is cut) while its
/// resource stays assigned to it: once its registration could not be confirmed for a whole TTL
/// (by then the store has expired it and the master reassigns), it stops the run.
async fn stops_runs_when_cut_off(target: std::net::SocketAddr, direct: Arc<dyn KvClient>) {
    let proxy = TcpProxy::start(target).await;
    let client = remote(&proxy.endpoint());
    let runner = RecordingRunner::default();
    let mut opts = WorkerOptions::local("4", vec![TaskConfig::named("a")]);
    opts.register_ttl = Duration::from_secs(3);
    let worker = Worker::start(opts, client, Arc::new(runner.clone()))
        .await
        .expect("worker starts");
    let me = format!("{}|{}", worker.node_id(), worker.advertise_address());
    let rev = put_resource(&direct, "a", "301", &me).await;
    wait_synced(&worker, rev).await;
    assert_eq!(runner.running_ids(), BTreeSet::from(["301".to_string()]));
    let addr = worker.http_addr();
    eventually("ready: registered and watching", WAIT, || async move {
        http::http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    proxy.kill();
    let cut = tokio::time::Instant::now();
    eventually(
        "the run stops once the registration is presumed lost",
        WAIT,
        || {
            let runner = runner.clone();
            async move { runner.running_ids().is_empty() }
        },
    )
    .await;
    // Not before most of the TTL has passed without a confirmation.
    assert!(
        cut.elapsed() >= Duration::from_secs(1),
        "stopped too early: {:?}",
        cut.elapsed()
    );
    let (status, body) = http::http_get(worker.http_addr(), "/tasks").await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    // Not ready (503, JSON), though alive (/health answers).
    let (status, body) = http::http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"ready\":false"), "{body}");
    assert_eq!(http::http_get(addr, "/health").await.0, 200);
    // The store is unreachable: deregistration fails and is reported (the lease expires anyway).
    assert!(worker.shutdown().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_stops_runs_when_cut_off() {
    run(async {
        let store = OurStore::start().await;
        stops_runs_when_cut_off(store.member().client_addr(), store.local()).await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stops_runs_when_cut_off() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_stops_runs_when_cut_off").await else {
        return;
    };
    run(stops_runs_when_cut_off(
        etcd.client_addr,
        remote(&etcd.endpoint),
    ))
    .await;
}

// ---- scenario: snapshot + watch, no gap ---------------------------------------------------------

/// Resources are written one after another, without pause, while the worker starts: every one of
/// them must be started exactly once, whichever side of the snapshot revision it fell on. The
/// writer goes on until the worker has loaded its snapshot and then writes 30 more, so the
/// snapshot revision always falls inside the stream of writes.
async fn no_gap_at_startup(client: Arc<dyn KvClient>) {
    const MAX: usize = 2000;
    const AFTER_SYNC: usize = 30;
    let names: Vec<String> = (0..MAX).map(|i| format!("r{i:04}")).collect();
    let tasks: Vec<TaskConfig> = names.iter().map(TaskConfig::named).collect();
    let mut opts = WorkerOptions::local("5", tasks);
    opts.register_ttl = Duration::from_secs(5);
    // The address part is irrelevant to matching (the node id before `|` is what counts).
    let me = "go.micro.server.worker-5|127.0.0.1:1".to_string();
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel(0usize);
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut after_sync = 0;
            for (i, name) in names.iter().enumerate() {
                last = put_resource(&client, name, &format!("{}", 10_000 + i), &me).await;
                let _ = progress_tx.send(i + 1);
                if *synced_rx.borrow() {
                    after_sync += 1;
                    if after_sync == AFTER_SYNC {
                        return (i + 1, last);
                    }
                }
            }
            panic!("the worker did not load its snapshot while {MAX} resources were written (last rev {last})");
        })
    };
    // Start the worker while the writer is under way.
    progress_rx
        .wait_for(|n| *n >= 30)
        .await
        .expect("writer progresses");
    let runner = RecordingRunner::default();
    let worker = Worker::start(opts, client.clone(), Arc::new(runner.clone()))
        .await
        .expect("worker starts");
    wait_synced(&worker, 1).await;
    let written_at_sync = *progress_rx.borrow();
    let _ = synced_tx.send(true);
    let (written, last) = writer.await.expect("writer");
    assert!(
        written_at_sync < written,
        "writes continued after the snapshot"
    );
    wait_synced(&worker, last).await;
    let expected: BTreeSet<String> = (0..written).map(|i| format!("{}", 10_000 + i)).collect();
    assert_eq!(runner.running_ids(), expected, "every resource runs");
    assert_eq!(
        runner.starts.lock().len(),
        written,
        "each started exactly once"
    );
    assert!(runner.double_starts.lock().is_empty());
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_local_client_no_gap_at_startup() {
    run(async {
        let store = OurStore::start().await;
        no_gap_at_startup(store.local()).await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_no_gap_at_startup() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_no_gap_at_startup").await else {
        return;
    };
    run(no_gap_at_startup(remote(&etcd.endpoint))).await;
}

// ---- scenario: `crawler worker` processes ------------------------------------------------------

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("crawler.toml");
    std::fs::write(
        &path,
        "logLevel = \"warn\"\n[[Tasks]]\nName = \"a\"\n[GRPCServer]\nRegisterTTL = 60\n",
    )
    .expect("write config");
    path
}

async fn processes_register_and_expire(endpoint: String) {
    let client = remote(&endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());

    // SIGTERM: a clean exit deregisters at once (TTL 60 s: expiry cannot explain it).
    let mut p = WorkerProcess::spawn("31", &endpoint, 60, &config);
    assert!(
        p.ready.contains("node go.micro.server.worker-31"),
        "{}",
        p.ready
    );
    let kv = client
        .get(reg_key("31"))
        .await
        .expect("get")
        .body
        .expect("registered");
    let status = Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = p.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(
        client.get(reg_key("31")).await.expect("get").body.is_none(),
        "deregistered on clean exit"
    );
    let ttl = client
        .lease_time_to_live(kv.lease, false)
        .await
        .expect("ttl")
        .body;
    assert_eq!(ttl.ttl, -1, "lease revoked on clean exit");

    // kill -9: the key stays until its lease (RegisterTTL from the flag, over the file's 60)
    // expires.
    let mut p = WorkerProcess::spawn("32", &endpoint, 4, &config);
    let kv = client
        .get(reg_key("32"))
        .await
        .expect("get")
        .body
        .expect("registered");
    let granted = client
        .lease_time_to_live(kv.lease, false)
        .await
        .expect("ttl")
        .body
        .granted_ttl;
    assert_eq!(granted, 4, "--register-ttl overrides the file");
    p.child.kill().expect("kill -9");
    let _ = p.child.wait();
    let killed = tokio::time::Instant::now();
    assert!(
        client.get(reg_key("32")).await.expect("get").body.is_some(),
        "a crashed worker stays registered until its lease expires"
    );
    eventually(
        "the crashed worker's key expires with its lease",
        WAIT,
        || {
            let client = client.clone();
            async move {
                client
                    .get(reg_key("32"))
                    .await
                    .is_ok_and(|r| r.body.is_none())
            }
        },
    )
    .await;
    // At least two thirds of the TTL remained at the kill (renewals every third of it).
    assert!(
        killed.elapsed() >= Duration::from_secs(1),
        "expired too early: {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_worker_processes_register_and_expire() {
    run(async {
        let store = OurStore::start().await;
        processes_register_and_expire(store.endpoint()).await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_worker_processes_register_and_expire() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_worker_processes_register_and_expire").await
    else {
        return;
    };
    run(processes_register_and_expire(etcd.endpoint.clone())).await;
}

/// A worker id is one process's: a second `crawler worker` with a taken id waits one TTL (the
/// holder might be its own dead predecessor), then exits with an error naming the holder's
/// address, and the holder keeps its registration; a worker whose key another process takes over
/// stops and exits with an error instead of fighting over the key.
async fn a_worker_id_belongs_to_one_process(endpoint: String) {
    let client = remote(&endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let mut first = WorkerProcess::spawn("41", &endpoint, 2, &config);
    let held = client
        .get(reg_key("41"))
        .await
        .expect("get")
        .body
        .expect("registered");
    let address = first
        .ready
        .split(" address ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("address in the ready line")
        .to_string();

    let cfg = config.clone();
    let ep = endpoint.clone();
    let second = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_crawler"))
            .args([
                "worker",
                "--id",
                "41",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--registry",
                &ep,
                "--register-ttl",
                "2",
                "--config",
            ])
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the second worker")
    });
    let out = tokio::time::timeout(WAIT, second)
        .await
        .expect("the second worker exits")
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("registered by another process") && stderr.contains(&address),
        "{stderr}"
    );
    let still = client
        .get(reg_key("41"))
        .await
        .expect("get")
        .body
        .expect("still registered");
    assert_eq!((still.lease, still.value), (held.lease, held.value.clone()));
    assert!(
        first.child.try_wait().expect("try_wait").is_none(),
        "the holder runs on"
    );

    // Another process takes the key over (its own lease): the first worker gives up and exits.
    let lease = client.lease_grant(30, 0).await.expect("grant").body.id;
    let other = String::from_utf8_lossy(&held.value).replace(&address, "127.0.0.1:1");
    client
        .put_kv(reg_key("41"), other.into_bytes(), lease)
        .await
        .expect("take the key");
    let deadline = std::time::Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = first.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replaced worker did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!exit.success(), "exits with an error: {exit:?}");
    let now = client
        .get(reg_key("41"))
        .await
        .expect("get")
        .body
        .expect("the new holder's key");
    assert_eq!(
        now.lease, lease,
        "the exiting worker left the new holder's key alone"
    );
    let _ = client.lease_revoke(lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_a_worker_id_belongs_to_one_process() {
    run(async {
        let store = OurStore::start().await;
        a_worker_id_belongs_to_one_process(store.endpoint()).await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_worker_id_belongs_to_one_process() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_a_worker_id_belongs_to_one_process").await
    else {
        return;
    };
    run(a_worker_id_belongs_to_one_process(etcd.endpoint.clone())).await;
}

// ---- LocalClient ≡ RemoteKvClient --------------------------------------------------------------

/// One sequence of calls; every answer is rendered as text with lease ids masked, so two
/// clients on two fresh stores can be compared line by line.
async fn transcript(c: Arc<dyn KvClient>) -> Vec<String> {
    let mut out = Vec::new();
    let mut leases = BTreeMap::new();
    let mut mask = |id: i64| -> String {
        let n = leases.len();
        format!("L{}", leases.entry(id).or_insert(n))
    };
    macro_rules! rec {
        ($label:expr, $e:expr) => {
            out.push(format!("{}: {:?}", $label, $e));
        };
    }
    let mut watch = c
        .watch(WatchSpec::prefix("/t/").with_prev_kv())
        .await
        .expect("watch");
    rec!("put a", c.put_kv("/t/a", "1", 0).await);
    rec!(
        "put a prev",
        c.put(PutRequest {
            key: b"/t/a".to_vec(),
            value: b"2".to_vec(),
            prev_kv: true,
            ..PutRequest::default()
        })
        .await
    );
    rec!("put b", c.put_kv("/t/b", "x", 0).await);
    rec!("empty key", c.put_kv("", "x", 0).await);
    rec!("get a", c.get("/t/a").await);
    rec!("get missing", c.get("/t/zz").await);
    rec!("prefix", c.get_prefix("/t/").await);
    rec!(
        "range at 2",
        c.range(RangeRequest {
            key: b"/t/".to_vec(),
            range_end: b"/t0".to_vec(),
            revision: 2,
            ..RangeRequest::default()
        })
        .await
    );
    rec!(
        "future",
        c.range(RangeRequest {
            key: b"/t/a".to_vec(),
            revision: 1000,
            ..RangeRequest::default()
        })
        .await
    );
    let cas = |value: &str, expect: i64| TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Mod(expect),
            key: b"/t/a".to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: b"/t/a".to_vec(),
            value: value.as_bytes().to_vec(),
            ..PutRequest::default()
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            key: b"/t/a".to_vec(),
            ..RangeRequest::default()
        })],
    };
    rec!("cas ok", c.txn(cas("3", 3)).await);
    rec!("cas fail", c.txn(cas("4", 3)).await);
    rec!(
        "dup key",
        c.txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"/t/d".to_vec(),
                    ..PutRequest::default()
                }),
                RequestOp::Put(PutRequest {
                    key: b"/t/d".to_vec(),
                    ..PutRequest::default()
                }),
            ],
            failure: vec![],
        })
        .await
    );
    rec!(
        "delete b",
        c.delete_range(DeleteRangeRequest {
            key: b"/t/b".to_vec(),
            prev_kv: true,
            ..DeleteRangeRequest::default()
        })
        .await
    );
    rec!("delete none", c.delete_key("/t/none").await);
    // Leases: ids are random, so only their masks and the rest of the answers are compared.
    let g = c.lease_grant(30, 0).await.expect("grant");
    out.push(format!(
        "grant: rev {} id {} ttl {}",
        g.revision,
        mask(g.body.id),
        g.body.ttl
    ));
    let p = c.put_kv("/t/l", "v", g.body.id).await;
    rec!("put on lease", p);
    let ka = c.lease_keep_alive_once(g.body.id).await.expect("keepalive");
    out.push(format!(
        "keepalive: id {} ttl {}",
        mask(ka.body.id),
        ka.body.ttl
    ));
    let t = c.lease_time_to_live(g.body.id, true).await.expect("ttl");
    out.push(format!(
        "ttl: id {} granted {} keys {:?}",
        mask(t.body.id),
        t.body.granted_ttl,
        t.body.keys
    ));
    rec!(
        "revoke",
        c.lease_revoke(g.body.id).await.map(|r| r.revision)
    );
    rec!("get l", c.get("/t/l").await);
    let gone = c.lease_keep_alive_once(g.body.id).await;
    rec!("keepalive gone", gone.map(|r| r.body.ttl));
    let t = c.lease_time_to_live(g.body.id, false).await.expect("ttl");
    out.push(format!("ttl gone: {}", t.body.ttl));
    rec!(
        "revoke gone",
        c.lease_revoke(g.body.id).await.map(|r| r.revision)
    );
    rec!("compact", c.compact(4).await);
    rec!(
        "compacted",
        c.range(RangeRequest {
            key: b"/t/a".to_vec(),
            revision: 3,
            ..RangeRequest::default()
        })
        .await
    );
    match c.watch(WatchSpec::prefix("/t/").from_revision(2)).await {
        Ok(mut w) => {
            let first = tokio::time::timeout(WAIT, w.next())
                .await
                .expect("first item");
            rec!("watch compacted", first.map(|i| i.map(|b| b.events.len())));
        }
        Err(e) => {
            rec!("watch compacted (at creation)", e);
        }
    }
    rec!(
        "watch negative start",
        c.watch(WatchSpec::prefix("/t/").from_revision(-1))
            .await
            .map(|_| ())
    );
    rec!(
        "watch empty range",
        c.watch(WatchSpec {
            key: b"/t/b".to_vec(),
            range_end: b"/t/a".to_vec(),
            ..WatchSpec::default()
        })
        .await
        .map(|_| ())
    );
    // The watch opened at the start saw every change in order, with prev_kv.
    let last = c.put_kv("/t/end", "e", 0).await.expect("put end").revision;
    let mut events = Vec::new();
    loop {
        let batch = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("watch batch in time")
            .expect("watch open")
            .expect("watch ok");
        for ev in batch.events {
            events.push(format!(
                "{:?} {} @{} prev={:?}",
                ev.kind,
                String::from_utf8_lossy(&ev.kv.key),
                ev.kv.mod_revision,
                ev.prev_kv
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned())
            ));
        }
        if events
            .last()
            .is_some_and(|e| e.contains(&format!("@{last}")))
        {
            break;
        }
    }
    out.extend(events.into_iter().map(|e| format!("event {e}")));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_client_answers_like_remote_client() {
    run(async {
        let a = OurStore::start().await;
        let b = OurStore::start().await;
        let local = transcript(a.local()).await;
        let remote = transcript(remote(&b.endpoint())).await;
        for (i, (l, r)) in local.iter().zip(remote.iter()).enumerate() {
            assert_eq!(l, r, "answer {i} differs (local vs remote)");
        }
        assert_eq!(local.len(), remote.len());
        // Sanity: the transcript saw the errors it provokes.
        let text = local.join("\n");
        assert!(text.contains("InvalidArgument"), "{text}");
        assert!(text.contains("FutureRevision"), "{text}");
        assert!(text.contains("Compacted"), "{text}");
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_client_progress_notifications() {
    run(async {
        let store = OurStore::start().await;
        let c = LocalClient::from_member(store.member())
            .with_progress_interval(Duration::from_millis(100));
        let rev = c.put_kv("/p/a", "1", 0).await.expect("put").revision;
        let mut w = c
            .watch(WatchSpec::prefix("/p/").with_progress_notify())
            .await
            .expect("watch");
        assert_eq!(w.created_revision(), rev);
        // Idle: a batch without events announcing the current revision.
        let batch = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("progress in time")
            .expect("open")
            .expect("ok");
        assert!(batch.events.is_empty());
        assert_eq!(batch.revision, rev);
        // A change arrives before any progress that covers it.
        let rev2 = c.put_kv("/p/b", "2", 0).await.expect("put").revision;
        loop {
            let batch = tokio::time::timeout(WAIT, w.next())
                .await
                .expect("batch in time")
                .expect("open")
                .expect("ok");
            if !batch.events.is_empty() {
                assert_eq!(batch.events[0].kv.key, b"/p/b");
                assert_eq!(batch.revision, rev2);
                break;
            }
            assert!(batch.revision < rev2, "progress at {rev2} before its event");
        }
        drop(w);
        store.stop().await;
    })
    .await;
}
