//! Results sinks against real database servers (`support::sql_servers`), crawling the generated
//! site (`crawler::crawl::synthetic_site`), one item per page:
//! - PostgreSQL and MariaDB: a crawl stores every item exactly once, and writing the same items
//!   again (a page processed twice) adds nothing;
//! - PostgreSQL or MariaDB killed with SIGKILL mid-crawl and restarted: the crawl waits (the
//!   task's status detail says why), resumes, and every item is stored exactly once;
//! - a `crawler worker` cut off the store (its checkpoints fail, its items are still stored),
//!   then killed with SIGKILL, the task moved to another worker by the master, which processes
//!   those pages again (the sink from the config's global `[Sink]`): every item exactly once.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crawler::client::KvClientExt;
use crawler::config::Config;
use crawler::crawl::checkpoint::{CheckpointStore, DoneMarker, Manifest};
use crawler::crawl::sink::{Item, RoutingSinks, SinkFactory};
use crawler::crawl::synthetic_site::{SiteOptions, SyntheticSite};
use crawler::crawl::CrawlRunner;
use crawler::master::{Master, MasterConfig};
use crawler::model::runner::{TaskRunner, TaskSpec, TaskState};
use sqlx::Connection as _;
use support::etcd::TcpProxy;
use support::our_store::OurStore;
use support::sql_servers::{stored, SqlServer};
use support::synth::{addr, finished, options, put_resource, resource, task, task_toml};
use support::wait::{eventually, eventually_some, within};
use support::worker_process::WorkerProcess;

/// Deadline for anything a test waits for.
const WAIT: Duration = Duration::from_secs(60);
/// Upper bound of one test.
const TEST_DEADLINE: Duration = Duration::from_secs(300);

async fn run<F: std::future::Future<Output = ()>>(f: F) {
    within(TEST_DEADLINE, f).await;
}

/// `Sink = { ... }` of a task writing to `db`.
fn sink_line(db: &SqlServer, kind: &str) -> String {
    format!("Sink = {{ Kind = \"{kind}\", DSN = \"{}\" }}", db.dsn())
}

/// Rows of `task` now (0 while the table does not exist yet).
async fn row_count(db: &SqlServer, table: &str, task: &str) -> i64 {
    let dsn = db.dsn();
    let sql = format!("SELECT count(*) FROM {table} WHERE task = $1");
    let Ok(mut c) = sqlx::PgConnection::connect(&dsn).await else {
        return 0;
    };
    sqlx::query_as::<_, (i64,)>(&sql)
        .bind(task)
        .fetch_one(&mut c)
        .await
        .map_or(0, |r| r.0)
}

/// Every item exactly once: `pages` rows, one per page, the `n` of every page.
async fn assert_exactly_once(db: &SqlServer, table: &str, task: &str, pages: u64) {
    let (rows, urls, ns, _) = stored(db, table, task).await;
    assert_eq!(
        (rows, urls),
        (pages as i64, pages as i64),
        "rows, distinct urls"
    );
    assert_eq!(
        ns,
        (0..pages).collect::<BTreeSet<u64>>(),
        "every page's item"
    );
}

/// Crawl `pages` pages into `db` through a task-level `Sink`, then write a page's items again.
async fn crawl_stores_every_item_once(db: SqlServer, kind: &str) {
    const PAGES: u64 = 300;
    let opts = SiteOptions {
        fanout: 10,
        pages: PAGES,
        page_bytes: 512,
        latency: Duration::ZERO,
    };
    let site = SyntheticSite::start(opts, &[addr("127.0.0.1:0")])
        .await
        .expect("site");
    let store = OurStore::start().await;
    let client = store.local();
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!("CheckpointPages = 25\n{}", sink_line(&db, kind));
    let t = task("synth", &site.seed(), &extra);
    let res = resource("synth", "21");
    put_resource(&client, &res).await;
    let runner = CrawlRunner::new(client.clone(), options(dir.path()));
    let h = runner
        .start(TaskSpec {
            resource: res,
            task: t.clone(),
        })
        .await
        .expect("start");
    finished(h.as_ref(), WAIT * 2).await;
    h.stop().await;
    assert_exactly_once(&db, "crawler_items", "synth", PAGES).await;
    let (_, _, _, workers) = stored(&db, "crawler_items", "synth").await;
    assert_eq!(workers, BTreeSet::from(["test".to_string()]));
    assert!(
        !dir.path().join("synth.jsonl").exists(),
        "no JSON lines when the task has a SQL sink"
    );

    // A page processed again (as after a crash) yields the same keys: nothing is added, and
    // items of a new page in the same sync still are.
    let sinks = RoutingSinks::new(dir.path(), None, "again");
    let sink = sinks.open(&t).await.expect("open");
    let item = |url: String, n: u64| Item {
        task: "synth".into(),
        kind: "page".into(),
        url,
        index: 0,
        fields: vec![("n".into(), Some(n.to_string()))],
        fetched_at: SystemTime::now(),
    };
    let again = item(site.seed(), 0);
    let new = item(format!("{}?new", site.seed()), PAGES);
    sink.write(std::slice::from_ref(&again))
        .await
        .expect("write");
    sink.sync().await.expect("sync");
    sink.write(&[again, new]).await.expect("write");
    sink.sync().await.expect("sync");
    assert_exactly_once(&db, "crawler_items", "synth", PAGES + 1).await;
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_every_item_exactly_once() {
    run(async {
        let db = SqlServer::postgres().await;
        crawl_stores_every_item_once(db, "postgres").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_stores_every_item_exactly_once() {
    run(async {
        let db = SqlServer::mariadb().await;
        crawl_stores_every_item_once(db, "mysql").await;
    })
    .await;
}

/// Kill `db` with SIGKILL mid-crawl, hold it down, restart it: the crawl waits, then finishes
/// with every item stored once.
async fn killed_mid_crawl_the_crawl_waits(mut db: SqlServer, kind: &str) {
    const PAGES: u64 = 600;
    let opts = SiteOptions {
        fanout: 10,
        pages: PAGES,
        page_bytes: 512,
        latency: Duration::from_millis(20),
    };
    let site = SyntheticSite::start(opts, &[addr("127.0.0.1:0")])
        .await
        .expect("site");
    let store = OurStore::start().await;
    let client = store.local();
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "Concurrency = 2\nCheckpointPages = 10\n{}",
        sink_line(&db, kind)
    );
    let res = resource("synth", "22");
    put_resource(&client, &res).await;
    let runner = CrawlRunner::new(client.clone(), options(dir.path()));
    let h = runner
        .start(TaskSpec {
            resource: res,
            task: task("synth", &site.seed(), &extra),
        })
        .await
        .expect("start");
    eventually("a checkpoint past 50 pages", WAIT, || {
        let r = h.report();
        async move { r.stats["last_checkpoint_pages"].as_u64().unwrap_or(0) >= 50 }
    })
    .await;

    db.kill_9().await;
    let detail = eventually_some("the status says why the crawl waits", WAIT, || {
        let r = h.report();
        async move {
            r.detail
                .filter(|d| d.contains("results not stored") && d.contains("retrying in"))
        }
    })
    .await;
    assert!(detail.contains("results database unavailable"), "{detail}");
    eprintln!("status detail while the database is down: {detail}");
    // Held down for a while: no checkpoint may be written, the crawl does not fail, and it
    // stops dispatching (at most the visits in flight complete).
    let before = h.report();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = h.report();
    assert_eq!(during.state, TaskState::Running, "{during:?}");
    assert_eq!(
        during.stats["last_checkpoint_pages"], before.stats["last_checkpoint_pages"],
        "no checkpoint while the results cannot be stored"
    );
    let (p0, p1) = (
        before.stats["pages_fetched"].as_u64().unwrap_or(0),
        during.stats["pages_fetched"].as_u64().unwrap_or(0),
    );
    assert!(p1 <= p0 + 2, "the crawl waits: {p0} -> {p1} pages");
    assert!(p1 < PAGES, "killed mid-crawl");

    db.restart().await;
    finished(h.as_ref(), WAIT * 2).await;
    h.stop().await;
    assert_exactly_once(&db, "crawler_items", "synth", PAGES).await;
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_crawl_the_crawl_waits_then_stores_every_item_once() {
    run(async {
        let db = SqlServer::postgres().await;
        killed_mid_crawl_the_crawl_waits(db, "postgres").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_killed_mid_crawl_the_crawl_waits_then_stores_every_item_once() {
    run(async {
        let db = SqlServer::mariadb().await;
        killed_mid_crawl_the_crawl_waits(db, "mysql").await;
    })
    .await;
}

/// `crawler worker` config: the task without a sink of its own, the global `[Sink]` to `db`.
fn worker_config(dir: &Path, file: &str, seed: &str, db: &SqlServer, extra: &str) -> String {
    let text = format!(
        "logLevel = \"warn\"\nDataDir = \"{}\"\n\n[Sink]\nKind = \"postgres\"\nDSN = \"{}\"\n{}\n\
         [GRPCServer]\nRegisterTTL = 2\n",
        dir.join(file).with_extension("results").display(),
        db.dsn(),
        task_toml("synth", seed, extra)
    );
    Config::parse(&text, "worker.toml").expect("valid worker config");
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_moved_after_kill_9_stores_every_item_exactly_once_in_postgres() {
    run(async {
        const PAGES: u64 = 2000;
        let db = SqlServer::postgres().await;
        let opts = SiteOptions {
            fanout: 10,
            pages: PAGES,
            page_bytes: 512,
            latency: Duration::from_millis(10),
        };
        let site = SyntheticSite::start(opts, &[addr("127.0.0.1:0")])
            .await
            .expect("site");
        let store = OurStore::start().await;
        let client = store.local();
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = "Concurrency = 4\nCheckpointPages = 50";
        let cfg_a = worker_config(dir.path(), "a.toml", &site.seed(), &db, extra);
        let cfg_b = worker_config(dir.path(), "b.toml", &site.seed(), &db, extra);
        let mut mc = MasterConfig::new(1, addr("127.0.0.1:0"));
        mc.seeds = vec!["synth".to_string()];
        let master = Master::start(mc, client.clone()).await.expect("master");
        assert!(master.wait_ready(WAIT).await, "master ready");

        // Worker a reaches the store through a proxy, so it can be cut off the store alone.
        let proxy = TcpProxy::start(store.member().client_addr()).await;
        let mut a = WorkerProcess::spawn("a", &proxy.endpoint(), 2, Path::new(&cfg_a));
        eventually("worker a stored 200 items", WAIT, || {
            let db = &db;
            async move { row_count(db, "crawler_items", "synth").await >= 200 }
        })
        .await;
        // Cut off the store, a's checkpoints fail while it goes on crawling and storing items
        // (each sync precedes its checkpoint): the next owner processes again pages whose items
        // are already in the table.
        proxy.kill();
        let (checkpointed, stored_by_a) = eventually_some(
            "worker a stored items past its last checkpoint",
            WAIT,
            || {
                let (db, client) = (&db, client.clone());
                async move {
                    let kv = client
                        .get(CheckpointStore::manifest_key("synth"))
                        .await
                        .ok()?
                        .body?;
                    let m: Manifest = serde_json::from_slice(&kv.value).ok()?;
                    let rows = row_count(db, "crawler_items", "synth").await;
                    (rows >= m.pages as i64 + 50).then_some((m.pages, rows))
                }
            },
        )
        .await;
        a.kill_9();
        let fetched_by_a = site.stats().requests.load(Ordering::SeqCst);
        assert!(fetched_by_a < PAGES, "a was killed before the end");

        let _b = WorkerProcess::spawn("b", &store.endpoint(), 2, Path::new(&cfg_b));
        let done = eventually_some("the task is finished after the move", WAIT * 2, || {
            let client = client.clone();
            async move {
                let kv = client
                    .get(CheckpointStore::done_key("synth"))
                    .await
                    .ok()?
                    .body?;
                serde_json::from_slice::<DoneMarker>(&kv.value).ok()
            }
        })
        .await;
        assert_eq!(done.writer, "go.micro.server.worker-b");
        assert_eq!(done.pages, PAGES);

        let s = site.stats();
        let twice = (0..PAGES).filter(|&n| s.count(n) > 1).count() as i64;
        eprintln!(
            "a fetched {fetched_by_a}, checkpointed {checkpointed}, stored {stored_by_a}; \
             {twice} pages fetched twice"
        );
        assert!(
            twice >= stored_by_a - checkpointed as i64,
            "the pages stored past the checkpoint were processed again"
        );
        assert_exactly_once(&db, "crawler_items", "synth", PAGES).await;
        let (_, _, _, workers) = stored(&db, "crawler_items", "synth").await;
        assert_eq!(
            workers,
            BTreeSet::from([
                "go.micro.server.worker-a".to_string(),
                "go.micro.server.worker-b".to_string()
            ]),
            "both workers stored items"
        );
        master.shutdown().await;
        store.stop().await;
    })
    .await;
}
