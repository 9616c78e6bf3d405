//! Backups and corruption checks against real `crawler store` processes and the real `etcdctl`:
//! `etcdctl snapshot save` from a 3-member cluster under write load, `crawler snapshot status`,
//! `crawler snapshot restore` into a new 3-member cluster (new ports, new token) that serves
//! every key with the same value, create and mod revision and version; corrupt and truncated
//! files refused; `etcdctl endpoint hashkv --cluster` equal on every member.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use support::cluster::*;
use support::etcdctl::*;
use support::wait::must_wait;

const T: Duration = Duration::from_secs(20);

fn crawler(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crawler"))
        .args(args)
        .output()
        .expect("run crawler")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Puts (and some deletes) through etcdctl until stopped; counts what it wrote.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(endpoints: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let handle = thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let key = format!("load/{:03}", i % 40);
                let val = format!("value-{i}");
                let args: Vec<&str> = if i % 13 == 12 {
                    vec!["del", &key]
                } else {
                    vec!["put", &key, &val]
                };
                if etcdctl(&endpoints, &args).status.success() {
                    d.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
        Writer {
            stop,
            done,
            handle: Some(handle),
        }
    }

    fn wait_for(&self, n: u64) {
        must_wait(T * 3, "background writes", || {
            (self.done.load(Ordering::Relaxed) >= n).then_some(())
        });
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `get "" --prefix` at `rev` (0 = current) from one endpoint, as (header revision, kvs).
fn all_at(ep: &str, rev: i64) -> (i64, Vec<Kv>) {
    let rev = rev.to_string();
    let v = json(ep, &["get", "", "--prefix", "--rev", &rev]);
    (v["header"]["revision"].as_i64().unwrap_or(0), kvs(&v))
}

/// Wait until every endpoint's serializable revision is the same; returns it.
fn converged(c: &mut Cluster) -> i64 {
    let eps: Vec<String> = (0..c.nodes.len()).map(|i| c.ep(i)).collect();
    must_wait(T, "members at one revision", || {
        let revs: Vec<i64> = eps.iter().map(|e| revision(e)).collect();
        revs.windows(2).all(|w| w[0] == w[1]).then_some(revs[0])
    })
}

/// `endpoint hashkv --cluster` (at `rev`, 0 = current): (endpoint, hash, compact revision).
fn hashkv_cluster(ep: &str, rev: i64) -> Vec<(String, u64, i64)> {
    let rev = rev.to_string();
    let v = json(ep, &["endpoint", "hashkv", "--cluster", "--rev", &rev]);
    v.as_array()
        .unwrap_or_else(|| panic!("hashkv answer {v}"))
        .iter()
        .map(|e| {
            (
                e["Endpoint"].as_str().unwrap_or("").to_string(),
                e["HashKV"]["hash"].as_u64().unwrap_or(0),
                e["HashKV"]["compact_revision"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn assert_equal_hashes(ep: &str, rev: i64, members: usize) -> u64 {
    let hs = hashkv_cluster(ep, rev);
    assert_eq!(hs.len(), members, "{hs:?}");
    assert!(hs.iter().all(|h| h.1 == hs[0].1 && h.1 != 0), "{hs:?}");
    hs[0].1
}

fn status_json(file: &Path) -> Value {
    let out = crawler(&["snapshot", "status", &file.to_string_lossy(), "-w", "json"]);
    assert!(out.status.success(), "status: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// A corrupt copy (one flipped byte) and a truncated copy of `file` are refused by `status` and
/// `restore`, with what is wrong, and restore leaves no data dir behind.
fn refuses_damaged(file: &Path, dir: &Path) {
    let bytes = std::fs::read(file).expect("read snapshot");
    let flipped = dir.join("flipped.db");
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&flipped, &b).expect("write");
    let cut = bytes.len() - 1000.min(bytes.len() / 3);
    let truncated = dir.join("truncated.db");
    std::fs::write(&truncated, &bytes[..cut]).expect("write");

    for (f, want) in [
        (&flipped, "checksum mismatch".to_string()),
        (&truncated, format!("truncated at byte {cut}")),
    ] {
        let f = f.to_string_lossy();
        let out = crawler(&["snapshot", "status", &f]);
        // Exit code 1 with the reason: a panic would exit with 101.
        assert_eq!(out.status.code(), Some(1), "status {f}: {}", text(&out));
        assert!(text(&out).contains(&want), "status {f}: {}", text(&out));
        let target = dir.join("never.etcd");
        let t = target.to_string_lossy();
        let out = crawler(&["snapshot", "restore", &f, "--name", "x", "--data-dir", &t]);
        assert_eq!(out.status.code(), Some(1), "restore {f}: {}", text(&out));
        assert!(text(&out).contains(&want), "restore {f}: {}", text(&out));
        assert!(!target.exists(), "a refused restore left {t}");
    }
}

#[test]
fn save_under_load_restore_into_new_cluster() {
    let mut src = Cluster::start(3);
    let eps = src.endpoints();
    // A lease with a key, keys written once (create == mod) and keys rewritten and deleted.
    let lease = ok(&src.ep(0), &["lease", "grant", "600"]);
    let lease_id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ok(&eps, &["put", "leased", "v", "--lease", &lease_id]);
    for i in 0..20 {
        ok(&eps, &["put", &format!("fixed/{i:02}"), &format!("f{i}")]);
    }
    let writer = Writer::start(eps.clone());
    writer.wait_for(60);

    // Saved from a follower... or whichever member: any one member streams its own state.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let f = file.to_string_lossy().to_string();
    let out = etcdctl_t(&src.ep(1), "60s", &["snapshot", "save", &f]);
    let saved = assert_ok(&out, &["snapshot", "save"]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    writer.wait_for(writer.done.load(Ordering::Relaxed) + 20);
    writer.stop();

    let st = status_json(&file);
    let rev = st["revision"].as_i64().expect("revision");
    let size = std::fs::metadata(&file).expect("stat").len();
    assert_eq!(st["totalSize"].as_u64(), Some(size), "{st}");
    assert_eq!(st["checksum"], "ok", "{st}");
    let (_, want) = all_at(&src.ep(0), rev);
    assert_eq!(st["totalKey"].as_u64(), Some(want.len() as u64), "{st}");
    assert!(want.iter().any(|kv| kv.key == "leased" && kv.lease != 0));
    assert!(
        want.iter().any(|kv| kv.create != kv.modr),
        "history in {want:?}"
    );
    assert!(
        revision(&src.ep(0)) > rev,
        "writes went on after the snapshot"
    );
    let simple = crawler(&["snapshot", "status", &f]);
    assert!(simple.status.success() && text(&simple).contains("checksum ok"));

    // (c) on the source: equal hashes now and at the snapshot's revision.
    converged(&mut src);
    assert_equal_hashes(&src.ep(0), 0, 3);
    let hash_at_rev = assert_equal_hashes(&src.ep(0), rev, 3);
    assert_ne!(hash_at_rev, assert_equal_hashes(&src.ep(0), rev - 1, 3));

    // (b) damaged files.
    refuses_damaged(&file, dir.path());
    drop(src);

    // Restore into three new data dirs of a new cluster (new ports, new token).
    let new_dir = tempfile::Builder::new()
        .prefix("crawler-test-restored-")
        .tempdir()
        .expect("tempdir");
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::new(new_dir.path(), &format!("r{i}")))
        .collect();
    let initial: Vec<String> = nodes.iter().map(|n| n.cluster_entry()).collect();
    let initial = initial.join(",");
    for n in nodes.iter_mut() {
        n.initial_cluster = initial.clone();
        n.token = "restored-token".into();
        let out = crawler(&[
            "snapshot",
            "restore",
            &f,
            "--name",
            &n.name,
            "--data-dir",
            &n.data_dir.to_string_lossy(),
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            &n.token,
            "--initial-advertise-peer-urls",
            &n.peer_url(),
        ]);
        assert!(out.status.success(), "restore {}: {}", n.name, text(&out));
        assert!(
            text(&out).contains(&format!("revision {rev}")),
            "{}",
            text(&out)
        );
    }
    // Restoring over an existing data dir is refused.
    let again = crawler(&[
        "snapshot",
        "restore",
        &f,
        "--name",
        "r1",
        "--data-dir",
        &nodes[0].data_dir.to_string_lossy(),
        "--initial-cluster",
        &initial,
        "--initial-advertise-peer-urls",
        &nodes[0].peer_url(),
    ]);
    assert!(!again.status.success() && text(&again).contains("exists"));

    let mut dst = Cluster::start_prepared(new_dir, nodes);
    dst.wait_leader(T);
    for i in 0..3 {
        let (header_rev, got) = all_at(&dst.ep(i), 0);
        assert_eq!(header_rev, rev, "member {i} revision");
        assert_eq!(
            got, want,
            "member {i}: every key, value, create and mod revision"
        );
        assert_eq!(all_at(&dst.ep(i), rev).1, want);
    }
    // A new cluster identity.
    let members = json(&dst.ep(0), &["member", "list"]);
    let names: Vec<&str> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{members}");
    assert!(names.iter().all(|n| n.starts_with('r')), "{members}");
    // The lease is kept, its TTL granted anew.
    let leases = ok(&dst.ep(0), &["lease", "list"]);
    assert!(leases.contains(&lease_id), "{leases} lacks {lease_id}");
    let ttl = ok(&dst.ep(0), &["lease", "timetolive", &lease_id]);
    assert!(ttl.contains("granted with TTL(600s)"), "{ttl}");
    // Writes go on from the snapshot's revision; hashes agree on the new cluster too.
    ok(&dst.endpoints(), &["put", "after-restore", "x"]);
    let v = json(&dst.ep(0), &["get", "after-restore"]);
    assert_eq!(kvs(&v)[0].modr, rev + 1, "{v}");
    converged(&mut dst);
    assert_equal_hashes(&dst.ep(0), 0, 3);
}
