//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`) on real
//! `crawler store` processes, driven with the real `etcdctl`. The periodic test also runs against
//! a real etcd (`CRAWLER_TEST_SERVER=/usr/bin/etcd`) to check the test itself; the others use the
//! hidden `--auto-compaction-check-interval`, which etcd does not have.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler::client::{KvClientExt, RemoteConfig, RemoteKvClient};
use serde_json::Value;
use support::cluster::*;
use support::etcdctl::*;
use support::wait::must_wait;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// Whether `get key --rev=rev` is refused as compacted (panics on any other failure).
fn compacted_at(ep: &str, key: &str, rev: i64) -> bool {
    let r = rev.to_string();
    let out = etcdctl(ep, &["get", key, "--rev", &r, "--consistency=s"]);
    if out.status.success() {
        return false;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(COMPACTED),
        "get --rev={rev} failed otherwise: {stderr}"
    );
    true
}

/// The store's compaction revision, found by bisection between `lo` (compacted) and `hi`
/// (readable): the smallest readable revision (etcd serves reads at the compaction point).
fn compact_revision(ep: &str, key: &str, mut lo: i64, mut hi: i64) -> i64 {
    assert!(compacted_at(ep, key, lo) && !compacted_at(ep, key, hi));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if compacted_at(ep, key, mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// `dbSize` of `endpoint status`.
fn db_size(ep: &str) -> i64 {
    let v: Value = serde_json::from_str(&ok(ep, &["endpoint", "status", "-w", "json"]))
        .expect("endpoint status json");
    let st = &v[0]["Status"];
    st["dbSize"]
        .as_i64()
        .or_else(|| st["db_size"].as_i64())
        .unwrap_or_else(|| panic!("no dbSize in {v}"))
}

/// One put through etcdctl; returns the revision it was written at.
fn put(ep: &str, key: &str, val: &str) -> i64 {
    json(ep, &["put", key, val])["header"]["revision"]
        .as_i64()
        .expect("header.revision")
}

/// etcd's periodic compactor with a 2 s retention: nothing written in the last 2 s is ever
/// compacted away, and compaction keeps happening (the point moves forward).
#[test]
fn periodic_mode_keeps_the_retention_window() {
    const RETENTION: Duration = Duration::from_secs(2);
    let c = Cluster::start_with(
        1,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
    );
    let ep = c.ep(0);
    let key = "periodic/k";
    // (start of the put, revision it wrote): the store's revision at time t is at most the
    // revision of the last put started before t.
    let mut log: Vec<(Instant, i64)> = Vec::new();
    let put_logged = |i: usize, log: &mut Vec<(Instant, i64)>| {
        let started = Instant::now();
        let rev = put(&ep, key, &format!("v{i}"));
        log.push((started, rev));
        rev
    };
    let newest_before = |log: &[(Instant, i64)], t: Instant| -> i64 {
        log.iter()
            .filter(|(s, _)| *s <= t)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(1)
    };

    let first = put_logged(0, &mut log);
    let mut points = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 1;
    while points.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "compaction points after 60 s: {points:?}\n{}",
            c.logs(40)
        );
        let newest = put_logged(i, &mut log);
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
        if !compacted_at(&ep, key, first) {
            continue;
        }
        let point = compact_revision(&ep, key, first, newest);
        let seen = Instant::now();
        // etcd compacts to a revision sampled at least one retention before the compaction.
        let bound = newest_before(&log, seen - RETENTION);
        assert!(
            point <= bound,
            "compacted to {point}, but revision {bound} was current only {RETENTION:?} ago \
             (log {log:?})"
        );
        if points.last() != Some(&point) {
            points.push(point);
        }
    }
    assert!(points[1] > points[0], "{points:?}");
}

/// Revision mode: every check interval the leader compacts to current − retention; once writes
/// stop, the compaction point settles exactly there.
#[test]
fn revision_mode_compacts_to_current_minus_retention() {
    if against_real_etcd() {
        eprintln!("SKIPPED: etcd checks every 5 minutes (no --auto-compaction-check-interval)");
        return;
    }
    let c = Cluster::start_with(
        1,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
            "--auto-compaction-check-interval",
            "200ms",
        ],
    );
    let ep = c.ep(0);
    let key = "revision/k";
    let first = put(&ep, key, "v0");
    let mut last = first;
    for i in 1..30 {
        last = put(&ep, key, &format!("v{i}"));
    }
    assert!(last >= first + 29);
    let want = last - 10;
    must_wait(
        Duration::from_secs(20),
        "compaction to current - 10",
        || compacted_at(&ep, key, want - 1).then_some(()),
    );
    assert_eq!(compact_revision(&ep, key, first, last), want);
    let err = fails(&ep, &["get", key, "--rev", &first.to_string()]);
    assert!(err.contains(COMPACTED), "{err}");
    // The value as of the compaction point is still there.
    let kv = kvs(&json(&ep, &["get", key, "--rev", &want.to_string()]));
    assert_eq!(kv[0].value, format!("v{}", want - first));
}

/// Rewrite a few keys thousands of times through the project's client: `n` puts of
/// `value_len` bytes over `keys` keys, `concurrency` at a time. Returns the last revision, the
/// largest db size seen and every sample (one after each 1000 puts).
fn rewrite(
    ep: &str,
    keys: usize,
    n: usize,
    value_len: usize,
    concurrency: usize,
) -> (i64, i64, Vec<i64>) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(async {
        Arc::new(RemoteKvClient::new(RemoteConfig::new([ep.to_string()])).expect("client"))
    });
    let value = vec![b'x'; value_len];
    let mut last = 0;
    let mut peak = 0;
    let mut sizes = Vec::new();
    for chunk in 0..n.div_ceil(1000) {
        let done = chunk * 1000;
        let count = (n - done).min(1000);
        last = last.max(rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..concurrency {
                let client = client.clone();
                let value = value.clone();
                tasks.spawn(async move {
                    let mut last = 0;
                    for i in (w..count).step_by(concurrency) {
                        let key = format!("bounded/{}", (done + i) % keys);
                        let r = client.put_kv(key, value.clone(), 0).await.expect("put");
                        last = last.max(r.revision);
                    }
                    last
                });
            }
            let mut last = 0;
            while let Some(r) = tasks.join_next().await {
                last = last.max(r.expect("writer task"));
            }
            last
        }));
        let size = db_size(ep);
        peak = peak.max(size);
        sizes.push(size);
    }
    (last, peak, sizes)
}

/// Rewriting 5 keys 20000 times (1 KiB values, ~20 MiB of versions) with revision-mode
/// auto-compaction (keep 1000) leaves at most ~1000 versions and a db far smaller than the
/// history; the same workload without compaction keeps every version and outgrows the bound.
#[test]
fn auto_compaction_bounds_stored_versions_and_db_size() {
    if against_real_etcd() {
        eprintln!("SKIPPED: uses --auto-compaction-check-interval");
        return;
    }
    const PUTS: usize = 20_000;
    const VALUE: usize = 1024;
    const BOUND: i64 = 8 * 1024 * 1024;
    let key = "bounded/0";

    let on = Cluster::start_with(
        1,
        &[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--auto-compaction-check-interval=200ms",
        ],
    );
    let ep = on.ep(0);
    let (last, peak, sizes) = rewrite(&ep, 5, PUTS, VALUE, 8);
    // Settles at last − 1000 once the writes stop.
    must_wait(Duration::from_secs(20), "compaction to last - 1000", || {
        compacted_at(&ep, key, last - 1001).then_some(())
    });
    let point = compact_revision(&ep, key, 1, last);
    assert_eq!(
        point,
        last - 1000,
        "versions kept: current - compaction point"
    );
    eprintln!("auto-compaction on: db size after each 1000 puts {sizes:?}, peak {peak}");
    assert!(
        peak < BOUND,
        "db size reached {peak} bytes with auto-compaction on ({sizes:?})"
    );
    drop(on);

    // Control: the same workload without compaction must break the bound, or the bound above
    // proves nothing.
    let off = Cluster::start(1);
    let ep = off.ep(0);
    let (_, peak_off, sizes_off) = rewrite(&ep, 5, PUTS, VALUE, 8);
    eprintln!("auto-compaction off: db size after each 1000 puts {sizes_off:?}");
    assert!(
        peak_off > BOUND,
        "without compaction the db stayed at {peak_off} bytes: the bound does not discriminate"
    );
    assert!(!compacted_at(&ep, key, 2), "nothing was compacted");
}
