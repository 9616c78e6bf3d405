//! Monitoring against real processes: `/metrics` of a store member (client port and
//! `--listen-metrics-urls`), of a master and of a worker, parsed as Prometheus text; `/health`
//! and `/readyz` of a three-member cluster across a quorum loss and back.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::cluster::{Cluster, ELECTION_MS};
use support::etcdctl::ok;
use support::masters::{member_args, MasterProc};
use support::ports::free_port;
use support::scrape::{get, has_histogram, scrape, value};
use support::wait::wait_until;
use support::worker_process::WorkerProcess;

/// The etcd metric names the store must export.
const ETCD_NAMES: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_failed_total",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_debugging_mvcc_keys_total",
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
];

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(addr), name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing"))
}

#[test]
fn store_metrics_on_client_port_and_metrics_url() {
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let mut c = Cluster::start_with(1, &["--listen-metrics-urls", &metrics_url]);
    let ep = c.endpoints();
    let client = addr_of(&c.node(0).client_url());
    let extra = addr_of(&metrics_url);
    ok(&ep, &["put", "warm", "up"]);

    for addr in [&client, &extra] {
        let s = scrape(addr);
        let names: Vec<&str> = s.samples.iter().map(|x| x.metric.as_str()).collect();
        for want in ETCD_NAMES {
            assert!(names.contains(want), "{want} missing on {addr}: {names:?}");
        }
        assert!(
            has_histogram(&s, "etcd_disk_wal_fsync_duration_seconds"),
            "no fsync histogram on {addr}"
        );
        assert_eq!(value(&s, "etcd_server_has_leader", &[]), Some(1.0));
        assert_eq!(value(&s, "etcd_server_is_leader", &[]), Some(1.0));
    }

    // Puts, deletes and gRPC calls are counted; keys and db size are there.
    let puts0 = metric(&client, "etcd_mvcc_put_total", &[]);
    let put_ok = [("grpc_method", "Put"), ("grpc_code", "OK")];
    let handled0 = metric(&client, "grpc_server_handled_total", &put_ok);
    for i in 0..5 {
        ok(&ep, &["put", &format!("k{i}"), "v"]);
    }
    ok(&ep, &["del", "k0"]);
    let s = scrape(&client);
    assert!(value(&s, "etcd_mvcc_put_total", &[]).unwrap_or(0.0) >= puts0 + 5.0);
    assert!(value(&s, "grpc_server_handled_total", &put_ok).unwrap_or(0.0) >= handled0 + 5.0);
    assert!(
        value(&s, "grpc_server_started_total", &[("grpc_method", "Put")]).unwrap_or(0.0) >= 6.0
    );
    assert!(value(&s, "etcd_mvcc_delete_total", &[]).unwrap_or(0.0) >= 1.0);
    assert!(value(&s, "etcd_debugging_mvcc_keys_total", &[]).unwrap_or(0.0) >= 5.0);
    assert!(value(&s, "etcd_mvcc_db_total_size_in_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert!(value(&s, "etcd_server_proposals_applied_total", &[]).unwrap_or(0.0) >= 6.0);
    // A failed call is counted with its code.
    let _ = support::etcdctl::etcdctl(&ep, &["get", "k", "--rev", "999999"]);
    assert!(
        value(
            &scrape(&client),
            "grpc_server_handled_total",
            &[("grpc_method", "Range"), ("grpc_code", "OutOfRange")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    for addr in [&client, &extra] {
        let (code, body) = get(addr, "/health", Duration::from_secs(5)).expect("GET /health");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["health"], "true", "{body}");
        let (code, body) = get(addr, "/readyz?verbose", Duration::from_secs(5)).expect("readyz");
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("[+]leader ok") && body.ends_with("ok\n"),
            "{body}"
        );
        let (code, body) = get(addr, "/livez", Duration::from_secs(5)).expect("livez");
        assert_eq!((code, body.as_str()), (200, "ok\n"));
    }
    // gRPC still works on the same port after HTTP/1 clients came and went.
    assert_eq!(ok(&ep, &["get", "k1", "--print-value-only"]).trim(), "v");
}

fn ready_http(line: &str, key: &str) -> String {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next().expect("value after key").to_string();
        }
    }
    panic!("no {key} in {line:?}")
}

#[test]
fn master_and_worker_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("crawler.toml");
    std::fs::write(
        &cfg,
        "logLevel = \"info\"\n\n[[Tasks]]\nName = \"seed-a\"\nURLs = [\"http://127.0.0.1:9/\"]\n\
         Robots = false\nRetries = 0\n\n[MasterServer]\nSessionTTL = 2\n",
    )
    .expect("write config");
    let (c, p) = (free_port(), free_port());
    let store_args = member_args(&dir.path().join("m1"), c, p);
    let mut m = MasterProc::spawn(1, &cfg, dir.path(), &store_args);
    m.wait_started();
    let endpoint = format!("127.0.0.1:{c}");
    let mut w = WorkerProcess::spawn("1", &endpoint, 2, Path::new(&cfg));
    let worker_http = ready_http(&w.ready, "http");
    let master_http = m.http.to_string();

    let seen = wait_until(Duration::from_secs(30), || {
        let s = scrape(&master_http);
        let leader = value(&s, "crawler_master_is_leader", &[])?;
        let workers = value(&s, "crawler_master_workers", &[])?;
        let assigned = value(&s, "crawler_master_resources", &[("assigned", "true")])?;
        let assignments = value(&s, "crawler_master_assignments_total", &[])?;
        (leader == 1.0 && workers == 1.0 && assigned >= 1.0 && assignments >= 1.0).then_some(s)
    });
    assert!(
        seen.is_some(),
        "master metrics never showed the worker and the seed; log:\n{}",
        m.log_tail()
    );
    let s = scrape(&master_http);
    assert!(value(&s, "crawler_master_leader_changes_total", &[]).unwrap_or(0.0) >= 1.0);
    assert!(value(&s, "crawler_master_reassignments_total", &[]).is_some());

    let task = wait_until(Duration::from_secs(30), || {
        let s = scrape(&worker_http);
        value(
            &s,
            "crawler_worker_pages_fetched_total",
            &[("task", "seed-a")],
        )?;
        value(&s, "crawler_worker_frontier", &[("task", "seed-a")])?;
        value(&s, "crawler_worker_errors_total", &[("task", "seed-a")])?;
        value(&s, "crawler_worker_items_total", &[("task", "seed-a")])
    });
    assert!(task.is_some(), "worker metrics never showed task seed-a");
    let s = scrape(&worker_http);
    let states: f64 = ["running", "finished", "failed"]
        .iter()
        .filter_map(|st| value(&s, "crawler_worker_tasks", &[("state", st)]))
        .sum();
    assert_eq!(states, 1.0);

    // The master's embedded store member serves etcd's metrics on its client port.
    assert_eq!(metric(&endpoint, "etcd_server_has_leader", &[]), 1.0);
    w.kill_9();
    m.kill9();
}

fn status(addr: &str, path: &str) -> Option<u16> {
    get(addr, path, Duration::from_secs(5)).map(|(c, _)| c)
}

#[test]
fn health_and_readyz_follow_quorum() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(20));
    let addrs: Vec<String> = (0..3).map(|i| addr_of(&c.node(i).client_url())).collect();
    for a in &addrs {
        assert_eq!(status(a, "/health"), Some(200), "{a}");
        assert_eq!(status(a, "/readyz"), Some(200), "{a}");
    }
    // Kill two members (the leader among them): the survivor turns 503 within about one
    // election timeout (plus the probe's own quorum wait).
    let survivor = (leader + 1) % 3;
    let killed: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    for &i in &killed {
        c.node(i).kill();
    }
    let t0 = Instant::now();
    let bound = Duration::from_millis(3 * ELECTION_MS);
    let down = wait_until(bound + Duration::from_secs(2), || {
        let h = status(&addrs[survivor], "/health")?;
        let r = status(&addrs[survivor], "/readyz")?;
        (h == 503 && r == 503).then(|| t0.elapsed())
    })
    .expect("/health and /readyz never turned 503");
    assert!(down <= bound, "took {down:?} to turn 503");
    let (_, body) = get(&addrs[survivor], "/health", Duration::from_secs(5)).expect("health");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["health"], "false", "{body}");
    let (_, body) =
        get(&addrs[survivor], "/readyz?verbose", Duration::from_secs(5)).expect("readyz");
    assert!(body.contains("[-]leader failed"), "{body}");
    // The process is alive all along.
    assert_eq!(status(&addrs[survivor], "/livez"), Some(200));

    // The two come back: healthy again.
    for &i in &killed {
        c.node(i).start();
    }
    let up = wait_until(Duration::from_secs(30), || {
        addrs
            .iter()
            .all(|a| status(a, "/health") == Some(200) && status(a, "/readyz") == Some(200))
            .then_some(())
    });
    assert!(up.is_some(), "not healthy again; logs:\n{}", c.logs(30));
}
