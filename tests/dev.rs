//! `crawler dev` end to end: one process with a store, a master and a worker; the real `etcdctl`
//! sees the seed lesson's layout (worker registration, the sample resources assigned to
//! worker-1 in the exact JSON shape, the election key), the worker's `GET /tasks` lists them,
//! the `demo_books` task crawls the demo site the process serves itself (its twelve items appear
//! under the data dir, the task is marked done in the store, with no network), and SIGTERM stops
//! it cleanly.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::ports::free_port;

const ETCDCTL: &str = "/usr/bin/etcdctl";
/// Deadline for the process to print its ready line and for the store to show the layout.
const WAIT: Duration = Duration::from_secs(60);

/// The child, killed on drop.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `etcdctl get --prefix /` as (key, value) pairs.
fn etcdctl_get_all(endpoint: &str) -> Option<BTreeMap<String, String>> {
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--command-timeout",
            "5s",
            "get",
            "--prefix",
            "/",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect(),
    )
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The resource JSON must be exactly the seed's shape; returns its ID.
fn check_resource(value: &str, name: &str, assigned: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(value).expect("resource JSON");
    let id = v["ID"].as_str().expect("ID is a string").to_string();
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "ID {id:?}"
    );
    let created = v["CreationTime"]
        .as_i64()
        .expect("CreationTime is a number");
    assert!(created > 1_600_000_000_000_000_000, "unix nanos: {created}");
    assert_eq!(
        value,
        format!(
            r#"{{"ID":"{id}","Name":"{name}","AssignedNode":"{assigned}","CreationTime":{created}}}"#
        ),
        "field names, order and shape as in the seed"
    );
    id
}

#[test]
fn dev_mode_shows_the_seed_layout() {
    if !Path::new(ETCDCTL).exists() {
        eprintln!("SKIPPED dev_mode_shows_the_seed_layout: no {ETCDCTL}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let client = free_port();
    let peer = free_port();
    let master_http = format!("127.0.0.1:{}", free_port());
    let master_grpc = format!("127.0.0.1:{}", free_port());
    let worker_http = format!("127.0.0.1:{}", free_port());
    let worker_grpc = format!("127.0.0.1:{}", free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_crawler"))
        .current_dir(dir.path())
        .args([
            "dev",
            "--listen-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--master-http",
            &master_http,
            "--master-grpc",
            &master_grpc,
            "--worker-http",
            &worker_http,
            "--worker-grpc",
            &worker_grpc,
        ])
        .env_remove("CRAWLER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crawler dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut dev = Dev(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = loop {
        match rx.recv_timeout(WAIT) {
            Ok(line) if line.starts_with("crawler dev ready:") => break line,
            Ok(_) => continue,
            Err(_) => panic!("crawler dev printed no ready line within {WAIT:?}"),
        }
    };
    assert!(ready.contains(&client_url), "{ready}");
    assert!(ready.contains(&format!("http://{worker_http}")), "{ready}");
    assert!(ready.contains(&format!("http://{master_http}")), "{ready}");
    // The default data dir is ./crawler-dev.data.
    assert!(dir.path().join("crawler-dev.data").is_dir());

    // Registry key, both resources assigned to worker-1 and the election key, as in the seed.
    let assigned = format!("go.micro.server.worker-1|{worker_grpc}");
    let deadline = Instant::now() + WAIT;
    let all = loop {
        let all = etcdctl_get_all(&client_url).unwrap_or_default();
        let done = ["demo_books", "douban_book_list", "douban_movie_top250"]
            .iter()
            .all(|n| {
                all.get(&format!("/resources/{n}"))
                    .is_some_and(|v| v.contains(&assigned))
            });
        if done {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "layout not reached; etcdctl shows {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let reg = all
        .get("/micro/registry/go.micro.server.worker/go.micro.server.worker-1")
        .expect("worker registration key");
    assert_eq!(
        reg,
        &format!(
            r#"{{"name":"go.micro.server.worker","version":"latest","metadata":null,"endpoints":[],"nodes":[{{"id":"go.micro.server.worker-1","address":"{worker_grpc}","metadata":{{"broker":"http","protocol":"grpc","registry":"etcd","server":"grpc","transport":"grpc"}}}}]}}"#
        )
    );
    let book = check_resource(
        &all["/resources/douban_book_list"],
        "douban_book_list",
        &assigned,
    );
    let movie = check_resource(
        &all["/resources/douban_movie_top250"],
        "douban_movie_top250",
        &assigned,
    );
    let demo = check_resource(&all["/resources/demo_books"], "demo_books", &assigned);
    assert_ne!(book, movie, "distinct snowflake IDs");
    assert_ne!(book, demo, "distinct snowflake IDs");
    let elections: Vec<(&String, &String)> = all
        .iter()
        .filter(|(k, _)| k.starts_with("/crawler/election/"))
        .collect();
    assert_eq!(elections.len(), 1, "one election key: {all:#?}");
    assert_eq!(elections[0].1, &format!("master1-{master_grpc}"));
    assert!(
        !all.keys().any(|k| k.starts_with("/resources/election")),
        "no election key inside the resource prefix"
    );

    // The worker lists the three runs; the demo task finishes with its twelve books. (The douban
    // tasks need the network: running, or failed without it.)
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        if let Some((200, body)) = http_get(&worker_http, "/tasks") {
            let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("JSON");
            let demo_done = rows
                .iter()
                .any(|r| r["name"] == "demo_books" && r["status"] == "finished");
            if rows.len() == 3 && demo_done {
                break rows;
            }
        }
        assert!(
            Instant::now() < deadline,
            "GET /tasks never listed the three tasks with demo_books finished"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["resource_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("demo_books".into(), demo),
            ("douban_book_list".into(), book),
            ("douban_movie_top250".into(), movie),
        ]
    );
    for r in &rows {
        let status = r["status"].as_str().unwrap_or_default();
        assert!(["running", "finished", "failed"].contains(&status), "{r}");
    }
    let demo_row = rows
        .iter()
        .find(|r| r["name"] == "demo_books")
        .expect("demo row");
    // 3 list pages and 12 detail pages; the robots-disallowed page and the other site skipped.
    assert_eq!(demo_row["stats"]["pages_fetched"], 15, "{demo_row}");
    assert_eq!(demo_row["stats"]["items"], 12, "{demo_row}");
    assert_eq!(demo_row["stats"]["robots_denied"], 1, "{demo_row}");
    assert_eq!(demo_row["stats"]["errors"], 0, "{demo_row}");

    // The items are under the data dir, one JSON line per book.
    let results = dir.path().join("crawler-dev.data/results/demo_books.jsonl");
    let text = std::fs::read_to_string(&results).expect("demo results file");
    let mut titles: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            assert_eq!(v["task"], "demo_books");
            assert_eq!(v["item"], "book");
            v["fields"]["title"].as_str().expect("title").to_string()
        })
        .collect();
    titles.sort();
    let mut want: Vec<String> = crawler::crawl::demo_site::BOOKS
        .iter()
        .map(|b| b.0.to_string())
        .collect();
    want.sort();
    assert_eq!(titles, want);
    let all = etcdctl_get_all(&client_url).unwrap_or_default();
    let done: serde_json::Value = serde_json::from_str(
        all.get("/crawler/tasks/demo_books/done")
            .expect("done mark"),
    )
    .expect("done JSON");
    assert_eq!(done["items"], 12, "{done}");

    // SIGTERM: a clean, prompt exit.
    let pid = dev.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = dev.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "crawler dev did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
}
