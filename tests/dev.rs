//! `crawler dev` end to end: one process with a store, a master and a worker; the real `etcdctl`
//! sees the seed lesson's layout (worker registration, both sample resources assigned to
//! worker-1 in the exact JSON shape, the election key), the worker's `GET /tasks` lists both,
//! and SIGTERM stops it cleanly.

#[path = "support/etcd.rs"]
mod etcd_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_support::free_port;

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
        let done = ["douban_book_list", "douban_movie_top250"].iter().all(|n| {
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
    assert_ne!(book, movie, "distinct snowflake IDs");
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

    // The worker lists both runs.
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        if let Some((200, body)) = http_get(&worker_http, "/tasks") {
            let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("JSON");
            if rows.len() == 2 {
                break rows;
            }
        }
        assert!(Instant::now() < deadline, "GET /tasks never listed both");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["resource_id"].as_str().unwrap_or_default().to_string(),
                r["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("douban_book_list".into(), book, "running".into()),
            ("douban_movie_top250".into(), movie, "running".into()),
        ]
    );

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
