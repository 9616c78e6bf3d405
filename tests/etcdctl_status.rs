//! etcdctl 3.4 with `--endpoints=http://127.0.0.1:P`: for `endpoint status`, `endpoint hashkv`,
//! `defrag` and `snapshot save` it sends `:authority: http://127.0.0.1:P`, which the server's
//! HTTP/2 stack rejects unless the `:authority` shim (src/server/transport/) rewrites it.

mod support;

use std::time::Duration;

use support::cluster::*;
use support::etcdctl::*;
use support::process::*;
use support::wait::must_wait;

const T: Duration = Duration::from_secs(15);

/// Both streams of an etcdctl run, for assertions on error texts.
fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A failure, if any, must come from the server's handler, never from HTTP/2 framing.
fn assert_not_protocol_error(args: &[&str], out: &std::process::Output) {
    let t = text(out);
    assert!(
        !t.contains("PROTOCOL_ERROR") && !t.contains("RST_STREAM") && !t.contains("Internal"),
        "etcdctl {args:?}: {t}"
    );
}

#[test]
fn status_hashkv_defrag_with_url_endpoint() {
    let c = Cluster::start(1);
    let url = c.ep(0);
    assert!(url.starts_with("http://"), "{url}");
    ok(&url, &["put", "k", "v"]);

    let st = json(&url, &["endpoint", "status"]);
    let arr = st.as_array().expect("status array");
    assert_eq!(arr.len(), 1, "{st}");
    assert_eq!(arr[0]["Endpoint"].as_str(), Some(url.as_str()), "{st}");
    let s = &arr[0]["Status"];
    assert_ne!(s["leader"].as_u64().unwrap_or(0), 0, "{st}");
    assert_eq!(s["leader"], s["header"]["member_id"], "{st}");
    assert!(s["header"]["revision"].as_i64().unwrap_or(0) >= 2, "{st}");

    // The calls must reach the handler (tests/backup.rs checks what they answer).
    for args in [
        &["endpoint", "hashkv"][..],
        &["endpoint", "hashkv", "-w", "json"],
        &["defrag"],
    ] {
        let out = etcdctl(&url, args);
        assert_not_protocol_error(args, &out);
    }
    let snap = c.dir.path().join("snap.db");
    let snap = snap.to_string_lossy();
    let args = ["snapshot", "save", &snap];
    assert_not_protocol_error(&args, &etcdctl(&url, &args));

    // The same through several endpoints in URL form at once (status dials each one).
    let st = json(&format!("{url},{url}"), &["endpoint", "status"]);
    assert_eq!(st.as_array().map(Vec::len), Some(2), "{st}");
}

#[test]
fn put_get_watch_with_url_endpoint() {
    let c = Cluster::start(1);
    let url = c.ep(0);
    let bare = url.trim_start_matches("http://").to_string();

    let watch = Bg::etcdctl(&url, &["watch", "--prefix", "w/"]);
    must_wait(T, "watcher sees a sentinel put", || {
        ok(&url, &["put", "w/sentinel", "s"]);
        (watch.lines().len() >= 3).then_some(())
    });
    for (i, ep) in [&url, &bare, &url].into_iter().enumerate() {
        let key = format!("w/k{i}");
        let val = format!("v{i}");
        assert_eq!(ok(ep, &["put", &key, &val]), "OK\n");
        assert_eq!(ok(ep, &["get", &key]), format!("{key}\n{val}\n"));
        // Reads through the other endpoint form see the write too.
        let other = if *ep == url { &bare } else { &url };
        assert_eq!(
            ok(other, &["get", &key, "--print-value-only"]),
            format!("{val}\n")
        );
    }
    must_wait(T, "watcher sees all three puts", || {
        let l = watch.lines();
        (0..3)
            .all(|i| {
                l.windows(3)
                    .any(|x| x[0] == "PUT" && x[1] == format!("w/k{i}") && x[2] == format!("v{i}"))
            })
            .then_some(())
    });
    drop(watch);

    // A transaction (several header blocks on one connection) and a delete.
    let out = etcdctl_stdin(&url, &["txn"], "\nput w/t 1\nget w/t\n\n\n");
    let t = assert_ok(&out, &["txn"]);
    assert!(t.starts_with("SUCCESS\n"), "{t}");
    assert_eq!(ok(&url, &["del", "w/", "--prefix"]), "5\n");
}
