//! The crawl engine at scale, against the generated site (`crawler::crawl::synthetic_site`) on
//! 127.0.0.x, which counts requests per page and requests open per host:
//! - requests in flight never exceed the task's `Concurrency` nor `ConcurrencyPerHost` on any
//!   host, and several hosts are crawled at once;
//! - two tasks crawling one host on one worker share that host's budget;
//! - a worker killed with SIGKILL after 10k+ pages: the task resumes on another worker and every
//!   page is fetched exactly once, except at most `Concurrency + CheckpointPages` pages fetched
//!   after the last checkpoint;
//! - deleting a running task's resource leaves nothing under its key space.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crawler::client::{KvClient, KvClientExt};
use crawler::config::Config;
use crawler::crawl::checkpoint::{CheckpointStore, DoneMarker, Manifest};
use crawler::crawl::synthetic_site::{SiteOptions, SyntheticSite};
use crawler::crawl::CrawlRunner;
use crawler::master::{Master, MasterConfig, ResourceStore};
use crawler::model::runner::{TaskRunner, TaskSpec};
use crawler::worker::{Worker, WorkerOptions};
use support::http;
use support::our_store::OurStore;
use support::synth::{addr, finished, options, put_resource, resource, task, task_toml};
use support::wait::{eventually, within};
use support::worker_process::WorkerProcess;

/// Deadline for anything a test waits for.
const WAIT: Duration = Duration::from_secs(60);
/// Upper bound of one test.
const TEST_DEADLINE: Duration = Duration::from_secs(300);

async fn run<F: std::future::Future<Output = ()>>(f: F) {
    within(TEST_DEADLINE, f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_stays_within_the_task_and_host_bounds() {
    run(async {
        let store = OurStore::start().await;
        let client = store.local();
        let opts = SiteOptions {
            fanout: 6,
            pages: 400,
            page_bytes: 1024,
            latency: Duration::from_millis(25),
        };
        let hosts = [
            addr("127.0.0.1:0"),
            addr("127.0.0.2:0"),
            addr("127.0.0.3:0"),
        ];
        let site = SyntheticSite::start(opts, &hosts).await.expect("site");
        let dir = tempfile::tempdir().expect("tempdir");
        let t = task(
            "bounded",
            &site.seed(),
            "Concurrency = 7\nConcurrencyPerHost = 3",
        );
        let res = resource("bounded", "11");
        put_resource(&client, &res).await;
        let runner = CrawlRunner::new(client.clone(), options(dir.path()));
        let h = runner
            .start(TaskSpec {
                resource: res,
                task: t,
            })
            .await
            .expect("start");
        finished(h.as_ref(), WAIT).await;
        let stats = h.report().stats;
        h.stop().await;

        let s = site.stats();
        for n in 0..400 {
            assert_eq!(s.count(n), 1, "page {n} fetched once");
        }
        assert_eq!(stats["pages_fetched"], 400, "{stats}");
        assert_eq!(stats["items"], 400, "{stats}");
        let per_host = s.open_per_host();
        assert_eq!(per_host.len(), 3, "{per_host:?}");
        for (host, open) in &per_host {
            assert!(open.most <= 3, "{host}: {open:?}");
        }
        let total = s.open_total();
        assert!(total.most <= 7, "{total:?}");
        // More open at once than one host allows: hosts were crawled in parallel.
        assert!(total.most > 3, "{total:?} {per_host:?}");
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_on_one_host_share_its_budget() {
    run(async {
        let store = OurStore::start().await;
        let client = store.local();
        let opts = SiteOptions {
            fanout: 5,
            pages: 150,
            page_bytes: 1024,
            latency: Duration::from_millis(25),
        };
        let site = SyntheticSite::start(opts, &[addr("127.0.0.1:0")])
            .await
            .expect("site");
        let dir = tempfile::tempdir().expect("tempdir");
        let runner = CrawlRunner::new(client.clone(), options(dir.path()));
        let mut handles = Vec::new();
        for (name, id) in [("left", "21"), ("right", "22")] {
            let res = resource(name, id);
            put_resource(&client, &res).await;
            let t = task(
                name,
                &site.seed(),
                "Concurrency = 16\nConcurrencyPerHost = 4",
            );
            handles.push(
                runner
                    .start(TaskSpec {
                        resource: res,
                        task: t,
                    })
                    .await
                    .expect("start"),
            );
        }
        for h in &handles {
            finished(h.as_ref(), WAIT).await;
        }
        for h in handles {
            h.stop().await;
        }
        let s = site.stats();
        for n in 0..150 {
            assert_eq!(s.count(n), 2, "page {n}: once per task");
        }
        let total = s.open_total();
        // Each task alone may open 4: together they still open at most 4.
        assert!(total.most <= 4, "{total:?}");
        assert!(total.most >= 2, "requests overlapped: {total:?}");
        store.stop().await;
    })
    .await;
}

/// `crawler worker` config crawling the site from `seed` into `results`.
fn worker_config(dir: &Path, file: &str, seed: &str, results: &Path, extra: &str) -> String {
    let text = format!(
        "logLevel = \"warn\"\nDataDir = \"{}\"\n{}\n[GRPCServer]\nRegisterTTL = 2\n",
        results.display(),
        task_toml("synth", seed, extra)
    );
    Config::parse(&text, "worker.toml").expect("valid worker config");
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_kill_9_past_10k_pages_fetching_each_page_once_but_the_window() {
    run(async {
        const PAGES: u64 = 12_000;
        const CONCURRENCY: u64 = 16;
        const CHECKPOINT_PAGES: u64 = 100;
        let opts = SiteOptions {
            fanout: 10,
            pages: PAGES,
            page_bytes: 1024,
            latency: Duration::ZERO,
        };
        let site = SyntheticSite::start(opts, &[addr("127.0.0.1:0")])
            .await
            .expect("site");
        let store = OurStore::start().await;
        let client = store.local();
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = format!(
            "Concurrency = {CONCURRENCY}\nCheckpointPages = {CHECKPOINT_PAGES}\nCheckpointInterval = 600"
        );
        let cfg_a = worker_config(
            dir.path(),
            "a.toml",
            &site.seed(),
            &dir.path().join("a"),
            &extra,
        );
        let cfg_b = worker_config(
            dir.path(),
            "b.toml",
            &site.seed(),
            &dir.path().join("b"),
            &extra,
        );
        let mut mc = MasterConfig::new(1, addr("127.0.0.1:0"));
        mc.seeds = vec!["synth".to_string()];
        let master = Master::start(mc, client.clone()).await.expect("master");
        assert!(master.wait_ready(WAIT).await, "master ready");

        let mut a = WorkerProcess::spawn("a", &store.endpoint(), 2, Path::new(&cfg_a));
        let requests = &site.stats().requests;
        eventually("worker a fetched 10k pages", WAIT, || {
            let n = requests.load(Ordering::SeqCst);
            async move { n >= 10_000 }
        })
        .await;
        a.kill_9();
        let fetched_by_a = requests.load(Ordering::SeqCst);
        let manifest = client
            .get(CheckpointStore::manifest_key("synth"))
            .await
            .expect("get")
            .body
            .expect("a checkpoint before the kill");
        let manifest: Manifest = serde_json::from_slice(&manifest.value).expect("manifest JSON");
        assert_eq!(manifest.writer, "go.micro.server.worker-a");
        assert!(
            manifest.delta_next > manifest.delta_first || manifest.delta_first > 0,
            "incremental checkpoints were written: {manifest:?}"
        );
        assert!(fetched_by_a < PAGES, "a was killed before the end");

        let _b = WorkerProcess::spawn("b", &store.endpoint(), 2, Path::new(&cfg_b));
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        let done = loop {
            if let Ok(r) = client.get(CheckpointStore::done_key("synth")).await {
                if let Some(kv) = r.body {
                    break serde_json::from_slice::<DoneMarker>(&kv.value).expect("done JSON");
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task was never finished after the takeover"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(done.writer, "go.micro.server.worker-b");
        assert_eq!((done.pages, done.items, done.errors), (PAGES, PAGES, 0));

        let s = site.stats();
        let mut twice = 0;
        for n in 0..PAGES {
            match s.count(n) {
                1 => {}
                2 => twice += 1,
                c => panic!("page {n} fetched {c} times"),
            }
        }
        eprintln!(
            "a fetched {fetched_by_a}, checkpointed {} ({} deltas live); {twice} fetched twice",
            manifest.pages,
            manifest.delta_next - manifest.delta_first
        );
        // Fetched again: what a fetched after its last checkpoint (in flight or not yet
        // checkpointed), which is at most Concurrency + CheckpointPages.
        assert!(
            twice <= fetched_by_a - manifest.pages,
            "{twice} pages fetched twice; a fetched {fetched_by_a}, checkpointed {}",
            manifest.pages
        );
        assert!(
            twice <= CONCURRENCY + CHECKPOINT_PAGES,
            "{twice} pages fetched twice"
        );
        master.shutdown().await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_task_leaves_nothing_under_its_key_space() {
    run(async {
        let store = OurStore::start().await;
        let client = store.local();
        // Slow enough to be mid-crawl with checkpoints written when it is deleted.
        let opts = SiteOptions {
            fanout: 10,
            pages: 100_000,
            page_bytes: 1024,
            latency: Duration::from_millis(20),
        };
        let site = SyntheticSite::start(opts, &[addr("127.0.0.1:0")])
            .await
            .expect("site");
        let dir = tempfile::tempdir().expect("tempdir");
        let t = task("doomed", &site.seed(), "CheckpointPages = 5");
        let mut mc = MasterConfig::new(1, addr("127.0.0.1:0"));
        mc.seeds = vec!["doomed".to_string()];
        let master = Master::start(mc, client.clone()).await.expect("master");
        assert!(master.wait_ready(WAIT).await, "master ready");
        let runner = Arc::new(CrawlRunner::new(client.clone(), options(dir.path())));
        let worker = Worker::start(WorkerOptions::local("d1", vec![t]), client.clone(), runner)
            .await
            .expect("worker");
        let prefix = CheckpointStore::prefix("doomed");
        eventually("checkpoints with deltas are written", WAIT, || {
            let c = client.clone();
            async move {
                let Ok(Some(kv)) = c
                    .get(CheckpointStore::manifest_key("doomed"))
                    .await
                    .map(|r| r.body)
                else {
                    return false;
                };
                let m: Manifest = serde_json::from_slice(&kv.value).expect("manifest JSON");
                m.delta_next > m.delta_first
            }
        })
        .await;

        let fence = master.fence().expect("the master leads");
        ResourceStore::new(client.clone())
            .delete(&fence, "doomed")
            .await
            .expect("delete");
        eventually("the worker stops the task", WAIT, || {
            let w = worker.http_addr();
            async move { http::tasks_json(w).await.is_empty() }
        })
        .await;
        let left = client.get_prefix(prefix.clone()).await.expect("get").body;
        assert!(
            left.is_empty(),
            "left under {prefix}: {:?}",
            left.iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect::<Vec<_>>()
        );
        worker.shutdown().await.expect("worker shutdown");
        master.shutdown().await;
        store.stop().await;
    })
    .await;
}

// ---- a long run stays bounded -----------------------------------------------------------------

/// `crawler dev` (store + master + worker in one process), killed on drop.
struct DevProcess {
    child: std::process::Child,
    client_url: String,
    worker_http: SocketAddr,
}

impl DevProcess {
    fn spawn(dir: &Path, config: &Path, extra: &[&str]) -> Self {
        use std::io::BufRead as _;
        let port = || support::ports::free_port();
        let client_url = format!("http://127.0.0.1:{}", port());
        let peer_url = format!("http://127.0.0.1:{}", port());
        let worker_http = addr(&format!("127.0.0.1:{}", port()));
        let mut args = vec![
            "dev".to_string(),
            "--config".into(),
            config.to_str().expect("utf-8 path").into(),
            "--data-dir".into(),
            dir.join("store").to_str().expect("utf-8 path").into(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url,
            "--master-http".into(),
            format!("127.0.0.1:{}", port()),
            "--master-grpc".into(),
            format!("127.0.0.1:{}", port()),
            "--worker-http".into(),
            worker_http.to_string(),
            "--worker-grpc".into(),
            format!("127.0.0.1:{}", port()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_crawler"))
            .args(&args)
            .env_remove("CRAWLER_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn crawler dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let dev = Self {
            child,
            client_url,
            worker_http,
        };
        loop {
            match rx.recv_timeout(WAIT) {
                Ok(line) if line.starts_with("crawler dev ready:") => return dev,
                Ok(_) => continue,
                Err(_) => panic!("crawler dev printed no ready line within {WAIT:?}"),
            }
        }
    }

    /// Resident memory, bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// The store's db size (`etcdctl endpoint status`), bytes.
    fn db_size(&self) -> u64 {
        let out = std::process::Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.client_url,
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        v[0]["Status"]["dbSize"].as_u64().expect("dbSize")
    }

    /// Keys in the store.
    async fn keys(&self) -> i64 {
        let cfg = crawler::client::RemoteConfig::new([self.client_url.clone()]);
        let c = crawler::client::RemoteKvClient::new(cfg).expect("client");
        let r = c
            .range(crawler::client::RangeRequest {
                key: vec![0],
                range_end: vec![0],
                count_only: true,
                ..Default::default()
            })
            .await
            .expect("count");
        r.body.count
    }

    async fn pages(&self) -> u64 {
        http::tasks_json(self.worker_http)
            .await
            .iter()
            .find(|r| r["name"] == "chain")
            .and_then(|r| r["stats"]["pages_fetched"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ETCDCTL: &str = "/usr/bin/etcdctl";

/// One sample of a long run.
#[derive(Debug)]
struct Sample {
    pages: u64,
    keys: i64,
    db: u64,
    rss: u64,
}

/// A chain of pages (fan-out 1: the frontier stays one request) crawled with a checkpoint per
/// page, so the store takes two writes per page; with a 2 s compaction window the store's keys,
/// its db size and the process's memory level off instead of growing with the pages crawled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_crawl_with_compaction_keeps_store_and_memory_bounded() {
    if !Path::new(ETCDCTL).exists() {
        eprintln!("SKIPPED: no {ETCDCTL}");
        return;
    }
    run(async {
        // Sampled at 4k..16k pages, before the task finishes (its done mark deletes everything).
        const PAGES: u64 = 20_000;
        let opts = SiteOptions {
            fanout: 1,
            pages: PAGES + 1,
            page_bytes: 512,
            latency: Duration::ZERO,
        };
        let site = SyntheticSite::start(opts, &[addr("127.0.0.1:0")])
            .await
            .expect("site");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("chain.toml");
        let text = format!(
            "logLevel = \"warn\"\nDataDir = \"{}\"\n{}",
            dir.path().join("results").display(),
            task_toml(
                "chain",
                &site.seed(),
                &format!("MaxPages = {PAGES}\nConcurrency = 1\nCheckpointPages = 1")
            )
        );
        Config::parse(&text, "chain.toml").expect("config");
        std::fs::write(&config, text).expect("write config");
        let dev = DevProcess::spawn(dir.path(), &config, &["--auto-compaction-retention", "2s"]);
        let mut samples: Vec<Sample> = Vec::new();
        for at in [4_000, 8_000, 12_000, 16_000] {
            let deadline = tokio::time::Instant::now() + WAIT * 2;
            loop {
                if dev.pages().await >= at {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the crawl stalled before {at} pages: {samples:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples.push(Sample {
                pages: dev.pages().await,
                keys: dev.keys().await,
                db: dev.db_size(),
                rss: dev.rss(),
            });
        }
        eprintln!("{samples:#?}");
        let first = &samples[0];
        for s in &samples[1..] {
            assert!(s.pages > first.pages, "{samples:#?}");
            // Live keys: resources, registrations, the manifest, a base and the deltas not yet
            // folded (at most 1024 on a small base): never more than after the first 4000
            // pages plus a fold's.
            assert!(s.keys <= first.keys.max(100) + 1100, "{samples:#?}");
            // Two writes a page add about 1.1 KiB a page of history without compaction (13 MiB
            // more by the last sample, measured); compacted, the db stays within a few MiB
            // (sled grows in segments, and raft snapshots live in the same file).
            assert!(s.db <= first.db + (8 << 20), "{samples:#?}");
            assert!(s.rss <= first.rss + (48 << 20), "{samples:#?}");
        }
        let total = site.stats().requests.load(Ordering::Relaxed);
        assert!(total >= 16_000, "{total}");
        drop(dev);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_paused_mid_crawl_checkpoints_when_it_stops() {
    // Pausing unassigns the resource (same ID); the stopping run still writes its last
    // checkpoint, so resuming refetches nothing it had done.
    run(async {
        let opts = SiteOptions {
            fanout: 5,
            pages: 2000,
            page_bytes: 256,
            latency: Duration::from_millis(5),
        };
        let site = SyntheticSite::start(opts, &[addr("127.0.0.1:0")])
            .await
            .expect("site");
        let store = OurStore::start().await;
        let client = store.local();
        let dir = tempfile::tempdir().expect("tempdir");
        let t = task(
            "p",
            &site.seed(),
            "Concurrency = 2\nCheckpointPages = 100000\nCheckpointInterval = 600",
        );
        let r = resource("p", "301");
        put_resource(&client, &r).await;
        let runner = CrawlRunner::new(client.clone(), options(dir.path()));
        let h = runner
            .start(TaskSpec {
                resource: r.clone(),
                task: t,
            })
            .await
            .expect("start");
        let requests = &site.stats().requests;
        eventually("some pages fetched", WAIT, || {
            let n = requests.load(Ordering::SeqCst);
            async move { n >= 50 }
        })
        .await;
        let mut paused = r.clone();
        paused.assigned_node = String::new();
        put_resource(&client, &paused).await;
        h.stop().await;
        let kv = client
            .get(CheckpointStore::manifest_key("p"))
            .await
            .expect("get")
            .body
            .expect("a checkpoint written at the stop");
        let m: Manifest = serde_json::from_slice(&kv.value).expect("manifest JSON");
        assert!(m.pages >= 40, "{m:?}");
        store.stop().await;
    })
    .await;
}
