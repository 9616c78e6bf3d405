//! The crawl engine against a fixture site served from this test process on 127.0.0.1:
//! - the exact items produced (the JSON lines file) from list → detail pages, a GBK page whose
//!   charset is only in a `<meta>` tag and one with no charset at all, a 500 that recovers on
//!   retry, a robots.txt disallow and a link outside the allowed domain; the request count of
//!   every URL; a finished task is marked done and not run again;
//! - stop: deleting the resource, or moving it to another worker, ends the run promptly and
//!   cancels the request in flight (the fixture sees the connection close);
//! - resume: `crawler worker` processes against a store member and a master in this process;
//!   the first worker is killed with SIGKILL mid-crawl, the master reassigns the task, the
//!   second worker finishes it from the checkpoint: every item is produced, and the pages
//!   fetched again are at most those fetched since the last checkpoint.
//!
//! Rate limits are tested against tokio's paused clock in `src/crawl/limiter.rs`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use crawler::client::{KvClient, KvClientExt, RemoteConfig, RemoteKvClient};
use crawler::config::Config;
use crawler::crawl::checkpoint::{
    CheckpointError, CheckpointStore, Checkpointer, DoneMarker, Manifest,
};
use crawler::crawl::frontier::{Counters, Frontier};
use crawler::crawl::{CrawlOptions, CrawlRunner};
use crawler::master::{Master, MasterConfig};
use crawler::model::resource::Resource;
use crawler::model::runner::{TaskHandle, TaskRunner, TaskSpec, TaskState};
use crawler::worker::{Worker, WorkerOptions};
use parking_lot::Mutex;
use support::etcd::EtcdServer;
use support::http;
use support::our_store::OurStore;
use support::wait::{eventually, within};
use support::worker_process::WorkerProcess;
use tokio::io::AsyncReadExt as _;

/// Deadline for anything a test waits for.
const WAIT: Duration = Duration::from_secs(30);
/// Upper bound of one test.
const TEST_DEADLINE: Duration = Duration::from_secs(180);
/// How long a stopped run may take to end (the engine's bound is its stop grace + 2 s).
const STOP_BOUND: Duration = Duration::from_secs(8);

async fn run<F: std::future::Future<Output = ()>>(f: F) {
    within(TEST_DEADLINE, f).await;
}

// ---- our store, in process --------------------------------------------------------------------

async fn put_resource(c: &Arc<dyn KvClient>, r: &Resource) {
    c.put_kv(
        format!("/resources/{}", r.name),
        serde_json::to_vec(r).expect("resource JSON"),
        0,
    )
    .await
    .expect("put resource");
}

fn resource(name: &str, id: &str, assigned: &str) -> Resource {
    Resource {
        id: id.into(),
        name: name.into(),
        assigned_node: assigned.into(),
        creation_time: 1_670_841_268_798_763_000,
    }
}

// ---- the fixture site ---------------------------------------------------------------------------

/// A small shop: list pages `/list?page=N` linking to items `/item/K`, counting every request.
struct Site {
    addr: SocketAddr,
    lists: usize,
    per_list: usize,
    /// Page 1 also links to `/gbk`, `/gbk-none` and `/flaky`.
    extras: bool,
    /// Requests per path (with query).
    counts: Mutex<BTreeMap<String, usize>>,
    /// Requests other than robots.txt.
    pages: AtomicUsize,
    /// Page requests beyond this many wait until `release` (usize::MAX: never).
    hold_after: AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
    /// 500s `/flaky` still answers before it recovers.
    flaky_failures: AtomicUsize,
}

const GBK_META: &str = "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=gbk\">\
    <title>商品</title></head><body><h1 class=\"name\">中文商品</h1><p class=\"price\">价格：12.50 元</p>\
    </body></html>";
const GBK_NONE: &str = "<html><head><title>没有声明</title></head><body><h1 class=\"name\">无声明的中文页面</h1>\
    <p class=\"price\">价格：8.80 元</p><p>这是一个没有任何字符集声明的网页，用来检验编码探测是否能够正确识别\
    简体中文的国标编码。我们的爬虫应当把它解码成正确的文字，而不是乱码。</p></body></html>";

impl Site {
    async fn start(lists: usize, per_list: usize, extras: bool) -> Arc<Site> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fixture");
        let addr = listener.local_addr().expect("addr");
        let site = Arc::new(Site {
            addr,
            lists,
            per_list,
            extras,
            counts: Mutex::new(BTreeMap::new()),
            pages: AtomicUsize::new(0),
            hold_after: AtomicUsize::new(usize::MAX),
            release: tokio::sync::watch::channel(false).0,
            flaky_failures: AtomicUsize::new(1),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(site.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        site
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    fn counts(&self) -> BTreeMap<String, usize> {
        self.counts.lock().clone()
    }

    fn list_page(&self, n: usize) -> String {
        let mut b = format!("<html><body><h1>Page {n}</h1><ul class=\"items\">");
        for k in (n - 1) * self.per_list + 1..=n * self.per_list {
            b.push_str(&format!(
                "<li><a class=\"item\" href=\"/item/{k}\">Item {k}</a></li>"
            ));
        }
        if self.extras && n == 1 {
            for p in ["/gbk", "/gbk-none", "/flaky", "/gz", "/moved", "/escape"] {
                b.push_str(&format!("<li><a class=\"item\" href=\"{p}\">{p}</a></li>"));
            }
        }
        b.push_str("</ul>");
        if n < self.lists {
            b.push_str(&format!(
                "<a class=\"next\" href=\"/list?page={}\">next</a>",
                n + 1
            ));
        }
        // A page robots.txt disallows, and the same server under another host name (outside
        // the allowed domain).
        b.push_str(&format!(
            "<footer><a href=\"/secret/hidden\">secret</a> \
             <a href=\"http://localhost:{}/offsite\">elsewhere</a></footer></body></html>",
            self.addr.port()
        ));
        b
    }
}

fn html(body: impl Into<axum::body::Body>, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}

async fn handle(State(site): State<Arc<Site>>, uri: Uri) -> Response {
    let key = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    *site.counts.lock().entry(key.clone()).or_default() += 1;
    let path = uri.path();
    if path == "/robots.txt" {
        return html("User-agent: *\nDisallow: /secret/\n", "text/plain");
    }
    let n = site.pages.fetch_add(1, Ordering::SeqCst) + 1;
    if n > site.hold_after.load(Ordering::SeqCst) {
        let mut rx = site.release.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
    if path == "/list" {
        let page = uri
            .query()
            .and_then(|q| q.strip_prefix("page="))
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| (1..=site.lists).contains(p));
        return match page {
            Some(p) => html(site.list_page(p), "text/html; charset=utf-8"),
            None => (StatusCode::NOT_FOUND, "no such list").into_response(),
        };
    }
    if let Some(k) = path
        .strip_prefix("/item/")
        .and_then(|k| k.parse::<usize>().ok())
    {
        return html(
            format!(
                "<html><body><h1 class=\"name\">Item {k}</h1><p class=\"price\">Price: {k}.50 yuan</p>\
                 <a class=\"more\" href=\"/item/{k}/more\">more</a></body></html>"
            ),
            "text/html",
        );
    }
    match path {
        "/gz" => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            gzip_stored(
                "<html><body><h1 class=\"name\">Compressed</h1><p class=\"price\">2.25</p></body></html>"
                    .as_bytes(),
            ),
        )
            .into_response(),
        // A redirect off the allowed domain: not followed.
        "/escape" => (
            StatusCode::FOUND,
            [(
                header::LOCATION,
                format!("http://localhost:{}/offsite", site.addr.port()),
            )],
        )
            .into_response(),
        "/moved" => (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, "/item/7")],
        )
            .into_response(),
        "/gbk" => html(
            encoding_rs::GBK.encode(GBK_META).0.into_owned(),
            "text/html",
        ),
        "/gbk-none" => html(
            encoding_rs::GBK.encode(GBK_NONE).0.into_owned(),
            "text/html",
        ),
        "/flaky" => {
            let left = site.flaky_failures.load(Ordering::SeqCst);
            if left > 0 {
                site.flaky_failures.store(left - 1, Ordering::SeqCst);
                return (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response();
            }
            html(
                "<html><body><h1 class=\"name\">Recovered</h1><p class=\"price\">Price: 1.00</p></body></html>",
                "text/html; charset=utf-8",
            )
        }
        _ => html("<html><body>nothing here</body></html>", "text/html"),
    }
}

/// A gzip stream of `data` in one stored (uncompressed) deflate block: enough for the client to
/// have to decode gzip, without a compression library in the tests.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let len = u16::try_from(data.len()).expect("small body");
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // final block, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The task config for the shop at `base`.
fn shop_config(name: &str, base: &str, extra: &str) -> String {
    format!(
        r#"
[[Tasks]]
Name = "{name}"
URLs = ["{base}/list?page=1"]
MaxDepth = 10
Retries = 2
Timeout = 20
{extra}

[[Tasks.Rules]]
Name = "list"
Depth = 0
Follow = [
  {{ Selector = "ul.items a.item", Rule = "item" }},
  {{ Selector = "a.next", Rule = "list" }},
  "footer a",
]

[[Tasks.Rules]]
Name = "item"
Items = [{{ Name = "product", Fields = [
  {{ Name = "name", Selector = "h1.name" }},
  {{ Name = "price", Selector = ".price", Regex = '([0-9]+\.[0-9]+)' }},
  {{ Name = "more", Selector = "a.more", Attr = "href" }},
] }}]
"#
    )
}

fn test_options(data_dir: &Path) -> CrawlOptions {
    let mut o = CrawlOptions::new(data_dir);
    o.backoff_base = Duration::from_millis(50);
    o.progress_every = Duration::from_secs(1);
    o.writer = "test".into();
    o
}

/// The JSON lines of a results file with `fetched_at` checked (RFC 3339 UTC) and removed.
fn read_items(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            assert!(
                line.starts_with("{\"task\":"),
                "field order task, item, url, fields, fetched_at: {line}"
            );
            let mut v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let t = v["fetched_at"].as_str().expect("fetched_at").to_string();
            assert!(
                t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
                "{t}"
            );
            v.as_object_mut().expect("object").remove("fetched_at");
            v
        })
        .collect()
}

fn product(
    task: &str,
    url: &str,
    name: &str,
    price: &str,
    more: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "task": task,
        "item": "product",
        "url": url,
        "fields": { "name": name, "price": price, "more": more },
    })
}

async fn wait_state(h: &dyn TaskHandle, what: &str) -> TaskState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = h.report();
        if r.state != TaskState::Running {
            return r.state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still running: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- exact items --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawls_the_fixture_site_exactly() {
    run(async {
        let store = OurStore::start().await;
        let client = store.local();
        let site = Site::start(2, 3, true).await;
        let base = site.base();
        let dir = tempfile::tempdir().expect("tempdir");
        // One request at a time: the items come in crawl order.
        let cfg = Config::parse(&shop_config("shop", &base, "Concurrency = 1"), "test.toml")
            .expect("config");
        let task = cfg.tasks[0].clone();
        let res = resource("shop", "101", "go.micro.server.worker-t|127.0.0.1:1");
        put_resource(&client, &res).await;

        let runner = CrawlRunner::new(client.clone(), test_options(dir.path()));
        let h = runner
            .start(TaskSpec {
                resource: res.clone(),
                task: task.clone(),
            })
            .await
            .expect("start");
        assert_eq!(wait_state(h.as_ref(), "crawl").await, TaskState::Finished);

        // The exact items, in crawl order (breadth first, links in document order).
        let items = read_items(&dir.path().join("shop.jsonl"));
        let item = |k: usize| {
            product(
                "shop",
                &format!("{base}/item/{k}"),
                &format!("Item {k}"),
                &format!("{k}.50"),
                Some(&format!("{base}/item/{k}/more")),
            )
        };
        let expected = vec![
            item(1),
            item(2),
            item(3),
            product("shop", &format!("{base}/gbk"), "中文商品", "12.50", None),
            product(
                "shop",
                &format!("{base}/gbk-none"),
                "无声明的中文页面",
                "8.80",
                None,
            ),
            product("shop", &format!("{base}/flaky"), "Recovered", "1.00", None),
            product("shop", &format!("{base}/gz"), "Compressed", "2.25", None),
            // Through a redirect: the item carries the final URL.
            item(7),
            item(4),
            item(5),
            item(6),
        ];
        assert_eq!(items, expected);

        // Every page once; the flaky one twice (500, then 200); robots.txt once; the disallowed
        // and the off-domain page never.
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for p in [
            "/robots.txt",
            "/list?page=1",
            "/list?page=2",
            "/gbk",
            "/gbk-none",
            "/gz",
            "/moved",
            "/escape",
        ] {
            want.insert(p.to_string(), 1);
        }
        for k in 1..=7 {
            want.insert(format!("/item/{k}"), 1);
        }
        want.insert("/flaky".into(), 2);
        assert_eq!(site.counts(), want);

        let stats = h.report().stats;
        assert_eq!(stats["pages_fetched"], 13, "{stats}");
        assert_eq!(stats["items"], 11, "{stats}");
        assert_eq!(stats["errors"], 1, "the escaping redirect: {stats}");
        assert_eq!(stats["retries"], 1, "{stats}");
        assert_eq!(stats["robots_denied"], 1, "{stats}");
        assert_eq!(stats["offsite_links"], 2, "{stats}");
        assert_eq!(stats["frontier"], 0, "{stats}");
        h.stop().await;

        // Done, and not run again: a new run of the same resource fetches nothing.
        let done = client
            .get(CheckpointStore::done_key("shop"))
            .await
            .expect("get")
            .body
            .expect("done mark");
        let done: DoneMarker = serde_json::from_slice(&done.value).expect("done JSON");
        assert_eq!(
            (done.resource_id.as_str(), done.pages, done.items),
            ("101", 13, 11)
        );
        let left: Vec<String> = client
            .get_prefix(CheckpointStore::prefix("shop"))
            .await
            .expect("get")
            .body
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        assert_eq!(
            left,
            [CheckpointStore::done_key("shop")],
            "only the done mark is left once done"
        );
        let h = runner
            .start(TaskSpec {
                resource: res.clone(),
                task: task.clone(),
            })
            .await
            .expect("start again");
        assert_eq!(wait_state(h.as_ref(), "rerun").await, TaskState::Finished);
        let r = h.report();
        assert!(
            r.detail
                .as_deref()
                .is_some_and(|d| d.contains("already finished")),
            "{r:?}"
        );
        h.stop().await;
        assert_eq!(site.counts(), want, "nothing fetched again");
        assert_eq!(read_items(&dir.path().join("shop.jsonl")).len(), 11);

        // A bad rule is refused at start, naming the task and the rule.
        let mut bad = task.clone();
        bad.rules[1].items[0].fields[0].selector = Some("h1[".into());
        let err = runner
            .start(TaskSpec {
                resource: res,
                task: bad,
            })
            .await
            .err()
            .expect("bad selector refused");
        assert!(
            err.0.contains("task \"shop\"") && err.0.contains("rule \"item\""),
            "{err}"
        );
        store.stop().await;
    })
    .await;
}

// ---- stop ---------------------------------------------------------------------------------------

/// A server that reads a request and never answers; it counts requests and closed connections.
struct Hang {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Hang {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (rq, cl) = (requests.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (rq, cl) = (rq.clone(), cl.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                cl.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => {
                                let had = buf.windows(4).any(|w| w == b"\r\n\r\n");
                                buf.extend_from_slice(&chunk[..n]);
                                if !had && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                                    rq.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            closed,
        }
    }
}

async fn task_rows(w: &Worker) -> Vec<serde_json::Value> {
    http::tasks_json(w.http_addr()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_promptly_when_deleted_or_moved() {
    run(async {
        let store = OurStore::start().await;
        let client = store.local();
        let hang = Hang::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[[Tasks]]\nName = \"slow\"\nURLs = [\"http://{}/hang\"]\nRobots = false\nTimeout = 600\nRetries = 0\n",
            hang.addr
        );
        let cfg = Config::parse(&text, "test.toml").expect("config");
        let runner = Arc::new(CrawlRunner::new(client.clone(), test_options(dir.path())));
        let worker = Worker::start(
            WorkerOptions::local("s1", cfg.tasks.clone()),
            client.clone(),
            runner,
        )
        .await
        .expect("worker");
        let mine = format!("{}|{}", worker.node_id(), worker.advertise_address());

        for (round, id) in [(1usize, "201"), (2, "202")] {
            put_resource(&client, &resource("slow", id, &mine)).await;
            eventually("the request is in flight", WAIT, || {
                let n = hang.requests.load(Ordering::SeqCst);
                async move { n == round }
            })
            .await;
            let rows = task_rows(&worker).await;
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0]["status"], "running", "{rows:?}");
            assert_eq!(rows[0]["stats"]["pages_fetched"], 0, "{rows:?}");

            let asked = tokio::time::Instant::now();
            if round == 1 {
                client.delete_key("/resources/slow").await.expect("delete");
            } else {
                put_resource(&client, &resource("slow", id, "go.micro.server.worker-x|h:1"))
                    .await;
            }
            eventually("the request in flight is cancelled", WAIT, || {
                let n = hang.closed.load(Ordering::SeqCst);
                async move { n == round }
            })
            .await;
            loop {
                if task_rows(&worker).await.is_empty() {
                    break;
                }
                assert!(asked.elapsed() < STOP_BOUND, "the run did not end in time");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(asked.elapsed() < STOP_BOUND, "stopped in {:?}", asked.elapsed());
        }
        worker.shutdown().await.expect("worker shutdown");
        store.stop().await;
    })
    .await;
}

/// A site that answers 503 to its first `failing` requests, then a page.
async fn down_then_up(failing: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let n = h.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < failing {
                (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
            } else {
                html("<html><body><h1>up</h1></body></html>", "text/html").into_response()
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (addr, hits)
}

/// A run that fails (its site is down) is started again after a backoff, a bounded number of
/// times: with the site back on the second retry the task finishes, and the worker shows the
/// retries and the last error; with a site that stays down it gives up after the last retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_is_retried_with_backoff_then_given_up() {
    run(async {
        let store = OurStore::start().await;
        let client = store.local();
        let (up_later, hits) = down_then_up(2).await;
        let (never, never_hits) = down_then_up(usize::MAX).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[[Tasks]]\nName = \"later\"\nURLs = [\"http://{up_later}/\"]\nRobots = false\nRetries = 0\n\
             [[Tasks]]\nName = \"never\"\nURLs = [\"http://{never}/\"]\nRobots = false\nRetries = 0\n"
        );
        let cfg = Config::parse(&text, "test.toml").expect("config");
        let runner = Arc::new(CrawlRunner::new(client.clone(), test_options(dir.path())));
        let mut opts = WorkerOptions::local("r1", cfg.tasks.clone());
        opts.task_retry = crawler::worker::retry::RetryPolicy {
            max_retries: 2,
            base: Duration::from_millis(100),
        };
        let worker = Worker::start(opts, client.clone(), runner)
            .await
            .expect("worker");
        let mine = format!("{}|{}", worker.node_id(), worker.advertise_address());
        put_resource(&client, &resource("later", "601", &mine)).await;
        put_resource(&client, &resource("never", "602", &mine)).await;
        let row = |name: &'static str| {
            let w = worker.http_addr();
            async move {
                http::tasks_json(w)
                    .await
                    .into_iter()
                    .find(|r| r["name"] == name)
            }
        };
        eventually("later finishes on its second retry", WAIT, || async {
            row("later").await.is_some_and(|r| r["status"] == "finished")
        })
        .await;
        let later = row("later").await.expect("row");
        assert_eq!(later["retries"], 2, "{later}");
        assert!(
            later["last_error"].as_str().is_some_and(|e| e.contains("no page could be fetched")),
            "{later}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3, "one request per attempt");
        eventually("never gives up after two retries", WAIT, || async {
            row("never")
                .await
                .is_some_and(|r| r["status"] == "failed" && r["retries"] == 2)
        })
        .await;
        // No third retry comes.
        let before = never_hits.load(Ordering::SeqCst);
        assert_eq!(before, 3, "first run and two retries");
        let quiet = tokio::time::Instant::now();
        eventually("a while with no further attempt", WAIT, || async {
            quiet.elapsed() > Duration::from_millis(800)
        })
        .await;
        assert_eq!(never_hits.load(Ordering::SeqCst), before);
        worker.shutdown().await.expect("worker shutdown");
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_never_answers_times_out_after_its_retries() {
    run(async {
        let store = OurStore::start().await;
        let client = store.local();
        let hang = Hang::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[[Tasks]]\nName = \"mute\"\nURLs = [\"http://{}/hang\"]\nRobots = false\nTimeout = 0.3\nRetries = 1\n",
            hang.addr
        );
        let task = Config::parse(&text, "test.toml").expect("config").tasks[0].clone();
        let res = resource("mute", "301", "n|h:1");
        put_resource(&client, &res).await;
        let runner = CrawlRunner::new(client.clone(), test_options(dir.path()));
        let h = runner
            .start(TaskSpec { resource: res, task })
            .await
            .expect("start");
        // Nothing could be fetched: the run failed, and is not marked done (a later run tries
        // again).
        assert_eq!(wait_state(h.as_ref(), "timeout").await, TaskState::Failed);
        let r = h.report();
        assert_eq!(r.stats["errors"], 1, "{r:?}");
        assert_eq!(r.stats["retries"], 1, "{r:?}");
        assert_eq!(hang.requests.load(Ordering::SeqCst), 2, "one try and one retry");
        h.stop().await;
        assert!(client
            .get(CheckpointStore::done_key("mute"))
            .await
            .expect("get")
            .body
            .is_none());
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_are_used_in_turn() {
    run(async {
        let store = OurStore::start().await;
        let client = store.local();
        // Two fixture sites acting as HTTP proxies for a host that does not exist.
        let p1 = Site::start(1, 3, false).await;
        let p2 = Site::start(1, 3, false).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = format!(
            "Robots = false\nProxies = [\"{}\", \"{}\"]",
            p1.base(),
            p2.base()
        );
        let text = shop_config("proxied", "http://shop.invalid", &extra);
        let task = Config::parse(&text, "test.toml").expect("config").tasks[0].clone();
        let res = resource("proxied", "401", "n|h:1");
        put_resource(&client, &res).await;
        let runner = CrawlRunner::new(client.clone(), test_options(dir.path()));
        let h = runner
            .start(TaskSpec {
                resource: res,
                task,
            })
            .await
            .expect("start");
        assert_eq!(wait_state(h.as_ref(), "proxied").await, TaskState::Finished);
        h.stop().await;
        // The list, items 1 to 3 and the footer's same-site link: five requests, in turn.
        assert_eq!(p1.pages.load(Ordering::SeqCst), 3, "{:?}", p1.counts());
        assert_eq!(p2.pages.load(Ordering::SeqCst), 2, "{:?}", p2.counts());
        let items = read_items(&dir.path().join("proxied.jsonl"));
        // Fetched concurrently: in any order.
        let mut urls: Vec<&str> = items.iter().filter_map(|v| v["url"].as_str()).collect();
        urls.sort_unstable();
        assert_eq!(
            urls,
            vec![
                "http://shop.invalid/item/1",
                "http://shop.invalid/item/2",
                "http://shop.invalid/item/3"
            ]
        );
        store.stop().await;
    })
    .await;
}

// ---- checkpoints --------------------------------------------------------------------------------

/// Keys under a task's key space, as text.
async fn task_keys(client: &Arc<dyn KvClient>, task: &str) -> Vec<String> {
    client
        .get_prefix(CheckpointStore::prefix(task))
        .await
        .expect("get")
        .body
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// Checkpoints on a store: a chunked base, then deltas, folded once they add up to the base;
/// resumable; fenced by the resource's assignment.
async fn checkpoints_are_chunked_and_fenced(client: Arc<dyn KvClient>) {
    let res = resource("fenced", "501", "go.micro.server.worker-1|h:1");
    put_resource(&client, &res).await;
    let cs = CheckpointStore::new(
        client.clone(),
        "fenced",
        "/resources/fenced".into(),
        "w1".into(),
    );
    let guard = cs.guard(&res).await.expect("owner");
    let mut cp = Checkpointer::new(cs.clone(), "501", None);

    // Large enough for several chunks, even deflated: paths carry 64 random-looking bits.
    let mut f = Frontier::new(false);
    let push = |f: &mut Frontier, from: usize, to: usize| {
        for i in from..to {
            let h = crawler::crawl::frontier::fingerprint_of(&i.to_string());
            let u = url::Url::parse(&format!("http://h/page/{h:016x}?x={i}")).expect("url");
            f.push(&u, 1, Some("item".into()));
        }
    };
    push(&mut f, 0, 30_000);
    let mut counters = Counters {
        pages: 7,
        items: 5,
        errors: 1,
    };
    let p = cp.prepare(&mut f, counters).expect("prepare");
    assert!(p.base, "the first checkpoint is a base");
    let m1 = cp.commit(&p, &guard).await.expect("save");
    assert!(m1.chunks > 2, "{m1:?}");
    let bases = task_keys(&client, "fenced").await;
    assert!(bases
        .iter()
        .filter(|k| k.contains("/base/"))
        .all(|k| k.contains(&m1.generation)));

    // Small changes: deltas proportional to the change, not to the frontier.
    let mut last = m1.clone();
    for round in 0..5 {
        let (t, _) = f.dispatch().expect("read").expect("a request");
        f.complete(t);
        push(&mut f, 20_000 + round * 10, 20_000 + round * 10 + 10);
        counters.pages += 1;
        let p = cp.prepare(&mut f, counters).expect("prepare");
        assert!(!p.base, "round {round}");
        assert!(p.bytes.len() < 4096, "{} bytes", p.bytes.len());
        last = cp.commit(&p, &guard).await.expect("delta");
    }
    assert_eq!((last.delta_first, last.delta_next), (0, 5));
    assert_eq!(last.generation, m1.generation);
    let loaded = cs.load("501").await.expect("load").expect("a checkpoint");
    assert_eq!(loaded.manifest, last);
    assert_eq!(loaded.deltas.len(), 5);
    let (g, c) = loaded.into_frontier(false, None);
    assert_eq!(c, counters);
    assert_eq!(
        g.snapshot("501", c).expect("snapshot"),
        f.snapshot("501", counters).expect("snapshot")
    );
    assert!(
        cs.load("999").await.expect("load").is_none(),
        "another resource's"
    );

    // A change as large as the base folds everything into a new base.
    push(&mut f, 40_000, 90_000);
    let p = cp.prepare(&mut f, counters).expect("prepare");
    assert!(p.base, "deltas as large as the base are folded");
    let m2 = cp.commit(&p, &guard).await.expect("fold");
    assert_ne!(m1.generation, m2.generation);
    assert_eq!((m2.delta_first, m2.delta_next), (5, 5));
    let keys = task_keys(&client, "fenced").await;
    assert!(
        keys.iter()
            .all(|k| k.ends_with("/manifest") || k.contains(&m2.generation)),
        "only the new base is left: {keys:?}"
    );
    let (g, _) = cs
        .load("501")
        .await
        .expect("load")
        .expect("a checkpoint")
        .into_frontier(false, None);
    assert_eq!(
        g.snapshot("501", counters).expect("snapshot"),
        f.snapshot("501", counters).expect("snapshot")
    );

    // Moved to another worker: this run's writes are refused, the checkpoint is kept.
    put_resource(
        &client,
        &resource("fenced", "501", "go.micro.server.worker-2|h:2"),
    )
    .await;
    push(&mut f, 95_000, 95_001);
    let p = cp.prepare(&mut f, counters).expect("prepare");
    assert!(matches!(
        cp.commit(&p, &guard).await,
        Err(CheckpointError::NotOwner)
    ));
    assert!(matches!(
        cs.mark_done(counters, "501", &guard).await,
        Err(CheckpointError::NotOwner)
    ));
    assert!(matches!(
        cs.guard(&res).await,
        Err(CheckpointError::NotOwner)
    ));
    // Deleted: refused too.
    client
        .delete_key("/resources/fenced")
        .await
        .expect("delete");
    assert!(matches!(
        cp.commit(&p, &guard).await,
        Err(CheckpointError::NotOwner)
    ));
    assert_eq!(
        cs.load("501").await.expect("load").map(|l| l.manifest),
        Some(m2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_checkpoints_are_chunked_and_fenced() {
    run(async {
        let store = OurStore::start().await;
        checkpoints_are_chunked_and_fenced(store.local()).await;
        store.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_checkpoints_are_chunked_and_fenced() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_checkpoints_are_chunked_and_fenced").await
    else {
        return;
    };
    run(async {
        let mut cfg = RemoteConfig::new([etcd.endpoint.clone()]);
        cfg.request_timeout = Duration::from_secs(5);
        let client: Arc<dyn KvClient> = Arc::new(RemoteKvClient::new(cfg).expect("client"));
        checkpoints_are_chunked_and_fenced(client).await;
    })
    .await;
}

// ---- resume after kill -9 -----------------------------------------------------------------------

fn write_worker_config(dir: &Path, name: &str, base: &str, results: &Path) -> PathBuf {
    let text = format!(
        "logLevel = \"warn\"\nDataDir = \"{}\"\n{}\n[GRPCServer]\nRegisterTTL = 2\n",
        results.display(),
        shop_config(
            name,
            base,
            "Concurrency = 1\nCheckpointPages = 3\nCheckpointInterval = 600"
        )
    );
    Config::parse(&text, "worker.toml").expect("valid worker config");
    let path = dir.join(format!(
        "{}.toml",
        results.display().to_string().replace('/', "_")
    ));
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_kill_9_on_another_worker() {
    run(async {
        const TASK: &str = "resume";
        // 5 list pages of 6 items: 35 pages. The 11th page request is held, so that the first
        // worker is killed with a known progress: 10 pages fetched, one in flight.
        let site = Site::start(5, 6, false).await;
        site.hold_after.store(10, Ordering::SeqCst);
        let store = OurStore::start().await;
        let client = store.local();
        let dir = tempfile::tempdir().expect("tempdir");
        let results_a = dir.path().join("results-a");
        let results_b = dir.path().join("results-b");
        let cfg_a = write_worker_config(dir.path(), TASK, &site.base(), &results_a);
        let cfg_b = write_worker_config(dir.path(), TASK, &site.base(), &results_b);

        let mut mc = MasterConfig::new(1, "127.0.0.1:0".parse().expect("addr"));
        mc.seeds = vec![TASK.to_string()];
        let master = Master::start(mc, client.clone()).await.expect("master");
        assert!(master.wait_ready(WAIT).await, "master ready");

        let mut a = WorkerProcess::spawn("a", &store.endpoint(), 2, &cfg_a);
        eventually("worker a is held at its 11th page", WAIT, || {
            let n = site.pages.load(Ordering::SeqCst);
            async move { n >= 11 }
        })
        .await;
        let manifest = client
            .get(CheckpointStore::manifest_key(TASK))
            .await
            .expect("get")
            .body
            .expect("a checkpoint before the kill");
        let manifest: Manifest = serde_json::from_slice(&manifest.value).expect("manifest JSON");
        assert_eq!(manifest.writer, "go.micro.server.worker-a");
        // Checkpoints every 3 requests (the robots-disallowed one included): the last one
        // before the kill counted 8 pages.
        let checkpointed = manifest.pages + manifest.errors;
        assert_eq!(checkpointed, 8, "{manifest:?}");

        a.child.kill().expect("kill -9");
        let _ = a.child.wait();
        let before = site.counts();
        let fetched_by_a = before.keys().filter(|k| *k != "/robots.txt").count();
        assert_eq!(fetched_by_a, 11);
        site.hold_after.store(usize::MAX, Ordering::SeqCst);
        site.release.send_replace(true);

        let _b = WorkerProcess::spawn("b", &store.endpoint(), 2, &cfg_b);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let done = loop {
            if let Ok(r) = client.get(CheckpointStore::done_key(TASK)).await {
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
        assert_eq!(
            (done.pages, done.items, done.errors),
            (35, 30, 0),
            "{done:?}"
        );

        // Pages fetched again: only those fetched after the last checkpoint.
        let after = site.counts();
        let refetched: BTreeSet<&String> = before
            .iter()
            .filter(|(k, n)| *k != "/robots.txt" && after.get(*k).copied().unwrap_or(0) > **n)
            .map(|(k, _)| k)
            .collect();
        assert!(
            refetched.len() as u64 <= fetched_by_a as u64 - checkpointed,
            "refetched {refetched:?}; checkpoint had {checkpointed} of {fetched_by_a}"
        );
        for k in 1..=30 {
            assert!(
                after.contains_key(&format!("/item/{k}")),
                "item {k} fetched"
            );
        }
        assert!(after.values().all(|n| *n <= 2), "{after:?}");

        // Every item, across both workers' files (at least once).
        let mut urls: BTreeSet<String> = BTreeSet::new();
        for f in [
            results_a.join("resume.jsonl"),
            results_b.join("resume.jsonl"),
        ] {
            for v in read_items(&f) {
                let u = v["url"].as_str().expect("url").to_string();
                let k: usize = u
                    .rsplit('/')
                    .next()
                    .and_then(|k| k.parse().ok())
                    .expect("k");
                assert_eq!(
                    v,
                    product(
                        TASK,
                        &u,
                        &format!("Item {k}"),
                        &format!("{k}.50"),
                        Some(&format!("{u}/more"))
                    )
                );
                urls.insert(u);
            }
        }
        let want: BTreeSet<String> = (1..=30)
            .map(|k| format!("{}/item/{k}", site.base()))
            .collect();
        assert_eq!(urls, want);
        let items_b = read_items(&results_b.join("resume.jsonl")).len();
        assert!(
            items_b < 30,
            "worker b resumed instead of starting over ({items_b} items)"
        );

        master.shutdown().await;
        store.stop().await;
    })
    .await;
}
