//! `crawler master` processes killed with SIGKILL: another master becomes ready within the session
//! TTL plus a few seconds and holds every resource, IDs unchanged.
//!
//! Two setups: two masters on a real etcd 3.4 (`--etcd-endpoints`; skipped when `/usr/bin/etcd` is
//! missing), and the self-contained cluster: three masters each embedding one member of a
//! three-member store. Workers are registry registrations made by the test.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::etcd::EtcdServer;
use support::master_env::{
    capture_logs, register_worker_on, remote_client, resources_of, try_http, TestWorker, WAIT,
};
use support::masters::{ready_leader, spawn_three_masters, MasterProc, START_DEADLINE};
use support::ports::free_port;
use support::wait::eventually_some;

/// Session TTL the test config sets (`[MasterServer] SessionTTL`).
const SESSION_TTL: Duration = Duration::from_secs(2);
/// Failover bound: the session TTL plus a few seconds.
const FAILOVER: Duration = Duration::from_secs(12);

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("crawler.toml");
    std::fs::write(
        &path,
        format!(
            "logLevel = \"info\"\n\n[[Tasks]]\nName = \"seed-a\"\n\n[[Tasks]]\nName = \"seed-b\"\n\n\
             [MasterServer]\nSessionTTL = {}\n",
            SESSION_TTL.as_secs()
        ),
    )
    .expect("write config");
    path
}

/// Seeds and forwarded adds, then kill -9 of the leader: another master is ready in time and
/// holds everything unchanged.
async fn kill_leader_scenario(ms: &mut [MasterProc], endpoints: Vec<String>) {
    let client = remote_client(endpoints);
    let w: TestWorker = register_worker_on(client.clone()).await;
    let leader = ready_leader(ms, None, START_DEADLINE).await;
    let follower = (leader + 1) % ms.len();
    // Writes through a follower process are forwarded to the leader process.
    for name in ["r1", "r2", "r3"] {
        let body = format!(r#"{{"name":"{name}"}}"#);
        let (status, reply) = try_http(ms[follower].http, "POST", "/crawler/resource", Some(&body))
            .await
            .expect("follower reachable");
        assert_eq!(status, 200, "{reply}");
    }
    let before = eventually_some("seeds and adds all assigned to the worker", WAIT, || {
        let client = client.clone();
        let want = w.assigned();
        async move {
            let rs = resources_of(&client).await;
            (rs.len() == 5 && rs.values().all(|r| r.assigned_node == want)).then_some(rs)
        }
    })
    .await;

    ms[leader].kill9();
    let t0 = tokio::time::Instant::now();
    let next = ready_leader(ms, Some(leader), FAILOVER).await;
    eprintln!("failover after kill -9 took {:?}", t0.elapsed());
    assert_ne!(next, leader);
    assert_eq!(
        resources_of(&client).await,
        before,
        "IDs and assignments unchanged"
    );
    let (status, body) = try_http(ms[next].http, "GET", "/crawler/resources", None)
        .await
        .expect("new leader reachable");
    assert_eq!(status, 200);
    assert_eq!(body["resources"].as_array().map(Vec::len), Some(5));
    let (status, reply) = try_http(
        ms[next].http,
        "POST",
        "/crawler/resource",
        Some(r#"{"name":"after"}"#),
    )
    .await
    .expect("new leader reachable");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["resource"]["AssignedNode"], w.assigned());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_leader_master_on_etcd() {
    capture_logs();
    let Some(etcd) = EtcdServer::start_or_skip("kill9_leader_master_on_etcd").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let ep = vec!["--etcd-endpoints".to_string(), etcd.client_addr.to_string()];
    let mut ms = vec![
        MasterProc::spawn(1, &config, dir.path(), &ep),
        MasterProc::spawn(2, &config, dir.path(), &ep),
    ];
    for m in &mut ms {
        m.wait_started();
    }
    tokio::time::timeout(
        Duration::from_secs(120),
        kill_leader_scenario(&mut ms, etcd.endpoints()),
    )
    .await
    .expect("test deadline");
}

/// Three masters, each embedding one member of a three-member store, as README's cluster
/// example starts them (on free ports); started and printed ready. Returns them and their client
/// endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_leader_master_in_three_master_cluster() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let (mut ms, endpoints) = spawn_three_masters(dir.path(), &config);
    tokio::time::timeout(Duration::from_secs(120), async {
        kill_leader_scenario(&mut ms, endpoints).await;
        quorum_loss_turns_readyz_unavailable(&mut ms).await;
    })
    .await
    .expect("test deadline");
}

/// Two masters left of three: both ready (leader and follower). Kill one more: the last one's
/// store has no quorum, and its `/readyz` turns 503 within about an election timeout (the
/// probe's own 1 s bound included), while `/health` (liveness) still answers.
async fn quorum_loss_turns_readyz_unavailable(ms: &mut [MasterProc]) {
    let mut alive: Vec<usize> = Vec::new();
    for (i, m) in ms.iter_mut().enumerate() {
        if m.child.try_wait().ok().flatten().is_none() {
            alive.push(i);
        }
    }
    assert_eq!(alive.len(), 2);
    for &i in &alive {
        eventually_some("survivors ready", WAIT, || {
            let m = &ms[i];
            async move { (m.readyz().await == Some(200)).then_some(()) }
        })
        .await;
    }
    ms[alive[0]].kill9();
    let t0 = tokio::time::Instant::now();
    let last = &ms[alive[1]];
    eventually_some("the last master is not ready", WAIT, || async {
        (last.readyz().await == Some(503)).then_some(())
    })
    .await;
    let took = t0.elapsed();
    eprintln!("readyz turned 503 {took:?} after the quorum was lost");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(last.health().await.is_some(), "liveness still answers");
}

/// README's cluster example, run as written but on free ports and in a temp dir: `crawler
/// demo-site`, three masters and a worker, all with the sample `crawler.toml`: the
/// `demo_books` task's twelve books land in the worker's results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_cluster_example_produces_items() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let site_port = free_port();
    let mut site = Command::new(env!("CARGO_BIN_EXE_crawler"))
        .args(["demo-site", "--listen", &format!("127.0.0.1:{site_port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crawler demo-site");
    let mut ready = String::new();
    BufReader::new(site.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("demo site ready line");
    assert!(ready.starts_with("demo site ready:"), "{ready}");
    let results = dir.path().join("results");
    let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crawler.toml"))
        .expect("sample config");
    let config = dir.path().join("crawler.toml");
    std::fs::write(
        &config,
        format!("DataDir = \"{}\"\n{sample}", results.display())
            .replace("127.0.0.1:8078", &format!("127.0.0.1:{site_port}")),
    )
    .expect("write config");
    let (ms, endpoints) = spawn_three_masters(dir.path(), &config);
    let registry = endpoints
        .iter()
        .map(|e| e.trim_start_matches("http://"))
        .collect::<Vec<_>>()
        .join(",");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_crawler"))
        .args([
            "worker",
            "--id=1",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--registry",
            &registry,
            "--config",
        ])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crawler worker");
    let file = results.join("demo_books.jsonl");
    let items = eventually_some("the demo task's twelve books", WAIT, || {
        let file = file.clone();
        async move {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            (text.lines().count() >= 12).then_some(text)
        }
    })
    .await;
    assert!(items.contains("红楼梦"), "{items}");
    let _ = worker.kill();
    let _ = worker.wait();
    let _ = site.kill();
    let _ = site.wait();
    drop(ms);
}
