//! `crawler bench` workloads against an in-process single-node `Member`: every workload runs a
//! small number of ops and reports them all, with no errors. No timing assertions.

mod support;

use std::time::{Duration, Instant};

use clap::Parser as _;
use crawler::bench::{self, BenchArgs, Report};
use crawler::cli::{Cli, Command};
use crawler::server::member::Member;
use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::RangeRequest;
use support::ports::free_port;

const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A single-node member on loopback ports, configured through the real `crawler store` flags.
async fn start_member(dir: &tempfile::TempDir) -> Member {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let data_dir = dir.path().join("data");
    let cli = Cli::try_parse_from([
        "crawler",
        "store",
        "--name",
        "bench",
        "--data-dir",
        data_dir.to_str().expect("utf-8 temp dir"),
        "--listen-client-urls",
        "http://127.0.0.1:0",
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("bench={peer}"),
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
    ])
    .expect("store flags parse");
    let Command::Store(args) = cli.command else {
        panic!("not the store command");
    };
    let member = crawler::services::start_member(args.member_config().expect("valid config"))
        .await
        .expect("member starts");
    // Ready once a linearizable read succeeds (a leader exists and has applied).
    let mut kv = KvClient::connect(format!("http://{}", member.client_addr()))
        .await
        .expect("connect");
    let start = Instant::now();
    loop {
        let r = kv
            .range(RangeRequest {
                key: b"ready".to_vec(),
                ..Default::default()
            })
            .await;
        if r.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < READY_DEADLINE,
            "member never became ready: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    member
}

/// Run `crawler bench <args>` against a fresh member.
async fn bench(args: &[&str]) -> Report {
    let dir = tempfile::tempdir().expect("temp dir");
    let member = start_member(&dir).await;
    let endpoint = member.client_addr().to_string();
    let mut argv = vec!["bench", "--endpoints", &endpoint];
    argv.extend_from_slice(args);
    let parsed = BenchArgs::try_parse_from(&argv).expect("bench flags parse");
    let report = bench::run(&parsed).await.expect("bench runs");
    member.shutdown().await.expect("clean shutdown");
    println!("{report}{}", report.json_line());
    assert_eq!(report.errors, 0, "errors: {:?}", report.error_samples);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_random_and_sequential() {
    let r = bench(&[
        "--conns",
        "2",
        "--clients",
        "4",
        "--total",
        "200",
        "put",
        "--key-space",
        "50",
    ])
    .await;
    assert_eq!(r.workload, "put");
    assert_eq!(r.ops, 200);
    assert!(r.qps > 0.0 && r.p99_ms > 0.0 && r.max_ms >= r.p50_ms);

    let r = bench(&[
        "--total",
        "30",
        "put",
        "--sequential-keys",
        "--val-size",
        "10",
    ])
    .await;
    assert_eq!(r.ops, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_linearizable_and_serializable_with_prefill() {
    for c in ["l", "s"] {
        let r = bench(&[
            "--conns",
            "2",
            "--clients",
            "3",
            "--total",
            "150",
            "range",
            "--consistency",
            c,
            "--prefill",
            "--key-space",
            "40",
        ])
        .await;
        assert_eq!(r.workload, format!("range-{c}"));
        assert_eq!(r.ops, 150);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_cas_counts_successful_swaps() {
    // Few keys and several clients: compares fail and are retried, never counted as errors.
    let r = bench(&[
        "--conns",
        "2",
        "--clients",
        "4",
        "--total",
        "120",
        "txn-cas",
        "--key-space",
        "3",
    ])
    .await;
    assert_eq!(r.workload, "txn-cas");
    assert_eq!(r.ops, 120);
    assert!(r.extra.contains_key("retries"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_latency_sees_every_put_once_per_watcher() {
    let r = bench(&[
        "--conns",
        "2",
        "--clients",
        "2",
        "--total",
        "40",
        "watch-latency",
        "--watchers",
        "5",
        "--put-rate",
        "0",
    ])
    .await;
    assert_eq!(r.workload, "watch-latency");
    assert_eq!(r.extra.get("puts"), Some(&40));
    assert_eq!(r.ops, 40 * 5);
    assert_eq!(r.extra.get("missing"), Some(&0));
    assert_eq!(r.extra.get("duplicates"), Some(&0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keepalive_round_trips() {
    let r = bench(&[
        "--conns",
        "2",
        "--clients",
        "3",
        "--total",
        "90",
        "lease-keepalive",
        "--ttl",
        "30",
    ])
    .await;
    assert_eq!(r.workload, "lease-keepalive");
    assert_eq!(r.ops, 90);
}
