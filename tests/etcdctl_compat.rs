//! Drives the real `etcdctl` 3.4 against `crawler store`: one node, and each member of a
//! three-node cluster. Expected outputs are etcdctl's exact texts (checked against etcd 3.4 by
//! running with `CRAWLER_TEST_SERVER=/usr/bin/etcd`).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::cluster::*;
use support::etcdctl::*;
use support::process::*;
use support::wait::must_wait;

const T: Duration = Duration::from_secs(15);

/// Lines of an output, without the trailing empty line.
fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_string).collect()
}

fn v(strs: &[&str]) -> Vec<String> {
    strs.iter().map(|s| s.to_string()).collect()
}

/// Revision in the header of a `-w json` answer.
fn header_rev(v: &Value) -> i64 {
    v["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no header.revision in {v}"))
}

/// `put -w json` and return the revision of the write.
fn put_rev(ep: &str, key: &str, val: &str) -> i64 {
    header_rev(&json(ep, &["put", key, val]))
}

/// Lease id (hex) from "lease 694d77aa9e38260f granted with TTL(60s)".
fn grant(ep: &str, ttl: &str) -> String {
    let out = ok(ep, &["lease", "grant", ttl]);
    let mut it = out.split_whitespace();
    assert_eq!(it.next(), Some("lease"), "lease grant output: {out}");
    let id = it.next().expect("lease id").to_string();
    assert!(
        out.trim_end()
            .ends_with(&format!("granted with TTL({ttl}s)")),
        "lease grant output: {out}"
    );
    id
}

// ---------------------------------------------------------------------------------------------
// Checks that run against any endpoint pair: writes go to `w`, reads to `r`, keys under `p`.

fn check_put_get(w: &str, r: &str, p: &str) {
    let k = format!("{p}foo");
    assert_eq!(ok(w, &["put", &k, "bar"]), "OK\n");
    assert_eq!(lines(&ok(r, &["get", &k])), v(&[&k, "bar"]));

    let j = json(r, &["get", &k]);
    let kv1 = kvs(&j);
    assert_eq!(kv1.len(), 1, "{j}");
    assert_eq!(kv1[0].key, k);
    assert_eq!(kv1[0].value, "bar");
    assert_eq!(kv1[0].version, 1);
    assert_eq!(kv1[0].create, kv1[0].modr);
    assert!(header_rev(&j) >= kv1[0].modr);
    assert_eq!(j["count"].as_i64(), Some(1), "{j}");

    let rev2 = put_rev(w, &k, "baz");
    assert!(rev2 > kv1[0].modr);
    let kv2 = kvs(&json(r, &["get", &k]));
    assert_eq!(kv2[0].value, "baz");
    assert_eq!(kv2[0].version, 2);
    assert_eq!(
        kv2[0].create, kv1[0].create,
        "create_revision kept across updates"
    );
    assert_eq!(kv2[0].modr, rev2, "mod_revision = revision of the put");

    // Read at the old revision.
    let old = kv1[0].modr.to_string();
    assert_eq!(lines(&ok(r, &["get", &k, "--rev", &old])), v(&[&k, "bar"]));
    assert_eq!(ok(r, &["get", &k, "--print-value-only"]), "baz\n");
    assert_eq!(lines(&ok(r, &["get", &k, "--keys-only"]))[0], k);
    // Missing key: no output, success.
    assert_eq!(ok(r, &["get", &format!("{p}missing")]), "");
    // Serializable read on the member written through sees the write.
    assert_eq!(
        ok(w, &["get", &k, "--consistency=s", "--print-value-only"]),
        "baz\n"
    );
}

fn check_prefix_limit_sort(w: &str, r: &str, p: &str) {
    let pre = format!("{p}s/");
    // Values chosen so that value order differs from key order.
    let data = [("a", "5"), ("b", "3"), ("c", "4"), ("d", "1"), ("e", "2")];
    for (k, val) in data {
        ok(w, &["put", &format!("{pre}{k}"), val]);
    }
    // Update c twice so that versions differ.
    ok(w, &["put", &format!("{pre}c"), "4"]);
    ok(w, &["put", &format!("{pre}c"), "4"]);
    let key = |k: &str| format!("{pre}{k}");

    let all = lines(&ok(r, &["get", "--prefix", &pre]));
    let mut expect = Vec::new();
    for (k, val) in data {
        expect.push(key(k));
        expect.push(val.to_string());
    }
    assert_eq!(all, expect, "get --prefix in key order");

    // --limit: first two by key; json says more=true and count=5.
    assert_eq!(
        lines(&ok(
            r,
            &["get", "--prefix", &pre, "--limit", "2", "--keys-only"]
        ))
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>(),
        v(&[&key("a"), &key("b")])
    );
    let j = json(r, &["get", "--prefix", &pre, "--limit", "2"]);
    assert_eq!(kvs(&j).len(), 2, "{j}");
    assert_eq!(j["more"].as_bool(), Some(true), "{j}");
    assert_eq!(j["count"].as_i64(), Some(5), "{j}");

    let sorted = |by: &str, order: &str| -> Vec<String> {
        lines(&ok(
            r,
            &[
                "get",
                "--prefix",
                &pre,
                "--print-value-only",
                &format!("--sort-by={by}"),
                &format!("--order={order}"),
            ],
        ))
    };
    assert_eq!(sorted("KEY", "DESCEND"), v(&["2", "1", "4", "3", "5"]));
    assert_eq!(sorted("VALUE", "ASCEND"), v(&["1", "2", "3", "4", "5"]));
    assert_eq!(sorted("VALUE", "DESCEND"), v(&["5", "4", "3", "2", "1"]));
    assert_eq!(sorted("CREATE", "ASCEND"), v(&["5", "3", "4", "1", "2"]));
    assert_eq!(sorted("MODIFY", "DESCEND")[0], "4", "c modified last");
    assert_eq!(sorted("VERSION", "DESCEND")[0], "4", "c has version 3");

    // Sort, then limit.
    let top = lines(&ok(
        r,
        &[
            "get",
            "--prefix",
            &pre,
            "--print-value-only",
            "--sort-by=VALUE",
            "--order=DESCEND",
            "--limit=2",
        ],
    ));
    assert_eq!(top, v(&["5", "4"]));

    // Explicit range [b, d) and --from-key.
    assert_eq!(
        lines(&ok(r, &["get", &key("b"), &key("d")])),
        v(&[&key("b"), "3", &key("c"), "4"])
    );
    let from = lines(&ok(r, &["get", "--from-key", &key("d"), "--keys-only"]));
    assert!(from.contains(&key("d")) && from.contains(&key("e")));
    assert!(!from.contains(&key("c")));
}

fn check_delete(w: &str, r: &str, p: &str) {
    let pre = format!("{p}d/");
    for i in 0..4 {
        ok(w, &["put", &format!("{pre}{i}"), &format!("v{i}")]);
    }
    let k0 = format!("{pre}0");
    assert_eq!(ok(w, &["del", &k0]), "1\n");
    assert_eq!(ok(r, &["get", &k0]), "");
    // Deleting nothing does not raise the revision.
    let before = header_rev(&json(r, &["get", &k0]));
    assert_eq!(ok(w, &["del", &k0]), "0\n");
    let after = header_rev(&json(r, &["get", &k0]));
    assert_eq!(
        before, after,
        "a delete that matches nothing keeps the revision"
    );

    let k1 = format!("{pre}1");
    assert_eq!(
        lines(&ok(w, &["del", "--prev-kv", &k1])),
        v(&["1", &k1, "v1"])
    );
    assert_eq!(ok(w, &["del", "--prefix", &pre]), "2\n");
    assert_eq!(ok(r, &["get", "--prefix", &pre]), "");

    // A re-created key starts a new generation.
    let rev = put_rev(w, &k0, "again");
    let kv = kvs(&json(r, &["get", &k0]));
    assert_eq!((kv[0].version, kv[0].create, kv[0].modr), (1, rev, rev));
}

fn check_txn(w: &str, r: &str, p: &str) {
    let k = format!("{p}t/key");
    let flag = format!("{p}t/flag");
    ok(w, &["put", &k, "bar"]);
    // Success branch: compare on value, ops put + get.
    let input = format!("value(\"{k}\") = \"bar\"\n\nput {flag} yes\nget {k}\n\nput {flag} no\n\n");
    let out = assert_ok(&etcdctl_stdin(w, &["txn"], &input), &["txn"]);
    assert_eq!(lines(&out), v(&["SUCCESS", "", "OK", "", &k, "bar"]));
    assert_eq!(ok(r, &["get", &flag, "--print-value-only"]), "yes\n");

    // Failure branch: create("missing") > "0" is false for a missing key.
    let input =
        format!("create(\"{p}t/missing\") > \"0\"\n\nput {flag} yes2\n\nput {flag} no2\n\n");
    let out = assert_ok(&etcdctl_stdin(w, &["txn"], &input), &["txn"]);
    assert_eq!(lines(&out), v(&["FAILURE", "", "OK"]));
    assert_eq!(ok(r, &["get", &flag, "--print-value-only"]), "no2\n");

    // mod/version compares: version("k") = "1" holds, mod("k") < "1" does not.
    let kv = kvs(&json(r, &["get", &k]));
    let input = format!(
        "version(\"{k}\") = \"1\"\nmod(\"{k}\") = \"{}\"\n\nput {flag} v3\n\n\n",
        kv[0].modr
    );
    let out = assert_ok(&etcdctl_stdin(w, &["txn"], &input), &["txn"]);
    assert_eq!(lines(&out), v(&["SUCCESS", "", "OK"]));
    let input = format!("mod(\"{k}\") < \"1\"\n\nput {flag} v4\n\n\n");
    let out = assert_ok(&etcdctl_stdin(w, &["txn"], &input), &["txn"]);
    assert_eq!(lines(&out), v(&["FAILURE"]));
    assert_eq!(ok(r, &["get", &flag, "--print-value-only"]), "v3\n");

    // A txn with several writes raises the revision by exactly one.
    let before = header_rev(&json(r, &["get", &k]));
    let input = format!("\nput {p}t/a 1\nput {p}t/b 2\ndel {k}\n\n\n");
    assert_ok(&etcdctl_stdin(w, &["txn"], &input), &["txn"]);
    let j = json(r, &["get", "--prefix", &format!("{p}t/")]);
    assert_eq!(header_rev(&j), before + 1, "one revision per txn: {j}");
    let kv = kvs(&j);
    let a = kv.iter().find(|x| x.key.ends_with("t/a")).expect("t/a");
    let b = kv.iter().find(|x| x.key.ends_with("t/b")).expect("t/b");
    assert_eq!((a.modr, b.modr), (before + 1, before + 1));
    assert!(!kv.iter().any(|x| x.key == k), "deleted in the txn");
}

fn check_watch(w: &str, r: &str, p: &str) {
    let pre = format!("{p}w/");
    let k = format!("{pre}k");
    let start = revision(w) + 1;
    // Watch from a revision (no race with the puts), with prev_kv.
    let watch = Bg::etcdctl(
        r,
        &[
            "watch",
            "--prefix",
            &pre,
            "--prev-kv",
            "--rev",
            &start.to_string(),
        ],
    );
    ok(w, &["put", &k, "a"]);
    ok(w, &["put", &k, "b"]);
    ok(w, &["del", &k]);
    ok(w, &["put", &format!("{p}outside"), "x"]);
    let got = watch.wait_lines(11, T);
    assert_eq!(
        got,
        v(&["PUT", &k, "a", "PUT", &k, "a", &k, "b", "DELETE", &k, "b"])
    );
    // DELETE event: prev kv (k, b), then the deleted key with an empty value.
    let got = watch.wait_lines(13, T);
    assert_eq!(got[11..], v(&[&k, ""])[..]);
    drop(watch);

    // Watch without prev_kv, replaying history from `start`.
    let watch = Bg::etcdctl(r, &["watch", &k, "--rev", &start.to_string()]);
    let got = watch.wait_lines(9, T);
    assert_eq!(got, v(&["PUT", &k, "a", "PUT", &k, "b", "DELETE", &k, ""]));
    drop(watch);

    // Watch from "now": keep writing a sentinel until the watcher sees one, then the
    // next events must follow in order.
    let watch = Bg::etcdctl(r, &["watch", "--prefix", &pre]);
    let sentinel = format!("{pre}sentinel");
    must_wait(T, "watch from now sees a sentinel put", || {
        ok(w, &["put", &sentinel, "s"]);
        (watch.lines().len() >= 3).then_some(())
    });
    ok(w, &["put", &k, "after"]);
    must_wait(T, "watch from now sees the put after the sentinel", || {
        let l = watch.lines();
        l.windows(3)
            .any(|x| x[0] == "PUT" && x[1] == k && x[2] == "after")
            .then_some(())
    });
}

fn check_lease(w: &str, r: &str, p: &str) {
    let id = grant(w, "60");
    let k = format!("{p}l/k");
    assert_eq!(ok(w, &["put", "--lease", &id, &k, "v"]), "OK\n");
    let kv = kvs(&json(r, &["get", &k]));
    assert_eq!(
        format!("{:x}", kv[0].lease),
        id.trim_start_matches('0'),
        "key carries the lease"
    );

    let list = lines(&ok(r, &["lease", "list"]));
    assert!(list[0].starts_with("found "), "{list:?}");
    assert!(list.contains(&id), "lease list {list:?} lacks {id}");

    let ka = ok(w, &["lease", "keep-alive", "--once", &id]);
    assert_eq!(ka.trim_end(), format!("lease {id} keepalived with TTL(60)"));

    let ttl = ok(r, &["lease", "timetolive", "--keys", &id]);
    let prefix = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(ttl.starts_with(&prefix), "timetolive: {ttl}");
    assert!(
        ttl.trim_end()
            .ends_with(&format!("s), attached keys([{k}])")),
        "timetolive: {ttl}"
    );
    let ttl = ok(r, &["lease", "timetolive", &id]);
    assert!(
        ttl.starts_with(&prefix) && ttl.trim_end().ends_with("s)"),
        "{ttl}"
    );

    assert_eq!(
        ok(w, &["lease", "revoke", &id]).trim_end(),
        format!("lease {id} revoked")
    );
    assert_eq!(ok(r, &["get", &k]), "", "key vanished with its lease");
    assert_eq!(
        ok(r, &["lease", "timetolive", &id]).trim_end(),
        format!("lease {id} already expired")
    );
    assert!(!lines(&ok(r, &["lease", "list"])).contains(&id));

    // A short lease expires by itself and takes its key along.
    let id = grant(w, "3");
    let k2 = format!("{p}l/short");
    ok(w, &["put", "--lease", &id, &k2, "v"]);
    assert_eq!(ok(r, &["get", &k2, "--print-value-only"]), "v\n");
    must_wait(
        Duration::from_secs(30),
        "short lease expiry deletes key",
        || ok(r, &["get", &k2]).is_empty().then_some(()),
    );
}

fn check_error_texts(w: &str, p: &str) {
    let err = fails(w, &["get", &format!("{p}foo"), "--rev", "999999"]);
    assert!(
        err.contains("Error: etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
    let err = fails(w, &["put", "--lease=1234", &format!("{p}x"), "y"]);
    assert!(
        err.contains("Error: etcdserver: requested lease not found"),
        "{err}"
    );
}

fn check_elect(a: &str, b: &str, c: &str, p: &str) {
    let name = format!("{p}election");
    let mut first = Bg::etcdctl(a, &["elect", &name, "p1"]);
    let l = first.wait_lines(2, T);
    assert!(l[0].starts_with(&format!("{name}/")), "{l:?}");
    assert_eq!(l[1], "p1");
    let first_key = l[0].clone();

    let observer = Bg::etcdctl(b, &["elect", "-l", &name]);
    assert_eq!(observer.wait_lines(2, T), v(&[&first_key, "p1"]));

    let mut second = Bg::etcdctl(c, &["elect", &name, "p2"]);
    // The second candidate has campaigned (its key exists) but is not leader.
    must_wait(T, "second candidate key exists", || {
        (lines(&ok(
            b,
            &["get", "--prefix", &format!("{name}/"), "--keys-only"],
        ))
        .iter()
        .filter(|l| !l.is_empty())
        .count()
            == 2)
            .then_some(())
    });
    // One more round trip, then the second must still be waiting.
    ok(c, &["get", &name]);
    assert!(
        second.lines().is_empty(),
        "second elected while first holds: {:?}",
        second.lines()
    );
    assert!(
        second.exited().is_none(),
        "second exited: {}",
        second.stderr()
    );

    // SIGTERM makes etcdctl close its session (revoke the lease): leadership moves.
    first.terminate(T);
    let l = second.wait_lines(2, T);
    assert_eq!(l[1], "p2");
    assert_ne!(l[0], first_key);
    observer.wait_line("p2", T);
    second.terminate(T);
}

fn check_lock(a: &str, b: &str, p: &str) {
    let name = format!("{p}lock");
    // With a command: runs it holding the lock, passes the key in the environment.
    let out = ok(
        a,
        &[
            "lock",
            &name,
            "--",
            "sh",
            "-c",
            "echo held; echo key=$ETCD_LOCK_KEY",
        ],
    );
    let l = lines(&out);
    assert_eq!(l[0], "held");
    assert!(l[1].starts_with(&format!("key={name}/")), "{l:?}");
    // Released after the command: nothing left under the lock prefix.
    assert_eq!(ok(b, &["get", "--prefix", &format!("{name}/")]), "");

    // A holder without a command prints its key and keeps the lock.
    let mut holder = Bg::etcdctl(a, &["lock", &name]);
    let hl = holder.wait_lines(1, T);
    assert!(hl[0].starts_with(&format!("{name}/")), "{hl:?}");
    let mut waiter = Bg::etcdctl(b, &["lock", &name, "--", "echo", "acquired"]);
    must_wait(T, "waiter key exists", || {
        (lines(&ok(
            b,
            &["get", "--prefix", &format!("{name}/"), "--keys-only"],
        ))
        .iter()
        .filter(|l| !l.is_empty())
        .count()
            == 2)
            .then_some(())
    });
    ok(b, &["get", &name]);
    assert!(
        waiter.lines().is_empty(),
        "lock not exclusive: {:?}",
        waiter.lines()
    );
    holder.terminate(T);
    waiter.wait_line("acquired", T);
    assert!(waiter.wait_exit(T).success(), "{}", waiter.stderr());
}

/// Three commands contend for one lock; their critical sections must not interleave.
fn check_lock_exclusion(eps: &[String], p: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("order");
    write_file(&file, "");
    let name = format!("{p}excl");
    let script = format!(
        "echo start >> {f}; sleep 0.3; echo end >> {f}",
        f = file.display()
    );
    let mut procs: Vec<Bg> = (0..3)
        .map(|i| {
            Bg::etcdctl(
                &eps[i % eps.len()],
                &["lock", &name, "--", "sh", "-c", &script],
            )
        })
        .collect();
    for pr in procs.iter_mut() {
        assert!(
            pr.wait_exit(Duration::from_secs(30)).success(),
            "{}",
            pr.stderr()
        );
    }
    let text = std::fs::read_to_string(&file).expect("read order file");
    assert_eq!(
        lines(&text),
        v(&["start", "end", "start", "end", "start", "end"]),
        "critical sections interleaved"
    );
}

fn check_compaction(w: &str, r: &str, p: &str) {
    let k = format!("{p}c/k");
    let r1 = put_rev(w, &k, "1");
    let r2 = put_rev(w, &k, "2");
    let r3 = put_rev(w, &k, "3");
    assert_eq!(
        ok(w, &["compaction", &r2.to_string()]).trim_end(),
        format!("compacted revision {r2}")
    );
    let err = fails(r, &["get", &k, "--rev", &r1.to_string()]);
    assert!(
        err.contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    // The compaction revision itself is still readable, and so is everything above.
    assert_eq!(
        ok(
            r,
            &["get", &k, "--rev", &r2.to_string(), "--print-value-only"]
        ),
        "2\n"
    );
    assert_eq!(
        ok(
            r,
            &["get", &k, "--rev", &r3.to_string(), "--print-value-only"]
        ),
        "3\n"
    );
    // A watch from a compacted revision is canceled with the compact revision.
    let mut watch = Bg::etcdctl(r, &["watch", &k, "--rev", &r1.to_string()]);
    watch.wait_stderr(
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)",
        T,
    );
    watch.wait_exit(T);
    // Compacting again at or below the point fails.
    let err = fails(w, &["compaction", &r1.to_string()]);
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
}

fn check_status_health(eps: &[String]) {
    let all = eps.join(",");
    let out = etcdctl(&all, &["endpoint", "health"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "endpoint health: {text}");
    for ep in eps {
        assert!(text.contains(&format!("{ep} is healthy")), "{text}");
    }
    // First with schemeless endpoints (`127.0.0.1:port`), then with the `http://` form, for
    // which etcdctl 3.4 sends `:authority: http://127.0.0.1:port` on Status.
    let bare: Vec<String> = eps
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    check_status(&bare.join(","), eps.len());
    check_status(&all, eps.len());
}

fn check_status(all: &str, n: usize) {
    let st = json(all, &["endpoint", "status"]);
    let arr = st.as_array().expect("status array");
    assert_eq!(arr.len(), n, "{st}");
    let leader = arr[0]["Status"]["leader"].as_u64().unwrap_or(0);
    assert_ne!(leader, 0, "{st}");
    let mut members = Vec::new();
    for e in arr {
        let s = &e["Status"];
        assert_eq!(
            s["leader"].as_u64(),
            Some(leader),
            "all agree on the leader: {st}"
        );
        assert!(s["raftTerm"].as_u64().unwrap_or(0) > 0, "raftTerm: {st}");
        assert!(s["raftIndex"].as_u64().unwrap_or(0) > 0, "raftIndex: {st}");
        assert!(s["dbSize"].as_i64().unwrap_or(0) > 0, "dbSize: {st}");
        assert!(
            s["version"].as_str().is_some_and(|x| !x.is_empty()),
            "version: {st}"
        );
        assert!(s["header"]["revision"].as_i64().unwrap_or(0) > 0, "{st}");
        members.push(s["header"]["member_id"].as_u64());
    }
    assert!(
        members.contains(&Some(leader)),
        "leader is one of the members: {st}"
    );
}

fn check_member_list(c: &Cluster, ep: &str) {
    let j = json(ep, &["member", "list"]);
    let ms = j["members"].as_array().expect("members");
    assert_eq!(ms.len(), c.nodes.len(), "{j}");
    for n in &c.nodes {
        let m = ms
            .iter()
            .find(|m| m["name"].as_str() == Some(n.name.as_str()))
            .unwrap_or_else(|| panic!("member {} missing: {j}", n.name));
        assert_eq!(m["peerURLs"], serde_json::json!([n.peer_url()]), "{j}");
        assert_eq!(m["clientURLs"], serde_json::json!([n.client_url()]), "{j}");
        assert!(m["ID"].as_u64().unwrap_or(0) != 0, "{j}");
    }
    let simple = ok(ep, &["member", "list"]);
    for n in &c.nodes {
        assert!(
            simple.contains(&format!(
                ", started, {}, {}, {}",
                n.name,
                n.peer_url(),
                n.client_url()
            )),
            "{simple}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Single node

#[test]
fn single_put_get_exact_revisions() {
    let c = Cluster::start(1);
    let ep = c.ep(0);
    // A fresh store is at revision 1; each write raises it by one.
    assert_eq!(revision(&ep), 1);
    assert_eq!(ok(&ep, &["put", "foo", "bar"]), "OK\n");
    let j = json(&ep, &["get", "foo"]);
    assert_eq!(header_rev(&j), 2, "{j}");
    let kv = kvs(&j);
    assert_eq!(
        (kv[0].create, kv[0].modr, kv[0].version, kv[0].lease),
        (2, 2, 1, 0),
        "{j}"
    );
    assert_eq!(put_rev(&ep, "foo", "baz"), 3);
    let kv = kvs(&json(&ep, &["get", "foo"]));
    assert_eq!((kv[0].create, kv[0].modr, kv[0].version), (2, 3, 2));
    // Header revision is the current one even for a read in the past.
    let j = json(&ep, &["get", "foo", "--rev", "2"]);
    assert_eq!(header_rev(&j), 3);
    assert_eq!(kvs(&j)[0].value, "bar");
    // A read-only txn leaves the revision alone.
    assert_ok(&etcdctl_stdin(&ep, &["txn"], "\nget foo\n\n\n"), &["txn"]);
    assert_eq!(revision(&ep), 3);
    check_put_get(&ep, &ep, "p/");
}

#[test]
fn single_prefix_limit_sort() {
    let c = Cluster::start(1);
    check_prefix_limit_sort(&c.ep(0), &c.ep(0), "");
}

#[test]
fn single_delete() {
    let c = Cluster::start(1);
    check_delete(&c.ep(0), &c.ep(0), "");
}

#[test]
fn single_txn() {
    let c = Cluster::start(1);
    check_txn(&c.ep(0), &c.ep(0), "");
}

#[test]
fn single_compaction() {
    let c = Cluster::start(1);
    check_compaction(&c.ep(0), &c.ep(0), "");
}

#[test]
fn single_watch() {
    let c = Cluster::start(1);
    check_watch(&c.ep(0), &c.ep(0), "");
}

#[test]
fn single_lease() {
    let c = Cluster::start(1);
    check_lease(&c.ep(0), &c.ep(0), "");
}

#[test]
fn single_elect() {
    let c = Cluster::start(1);
    let ep = c.ep(0);
    check_elect(&ep, &ep, &ep, "");
}

#[test]
fn single_lock() {
    let c = Cluster::start(1);
    check_lock(&c.ep(0), &c.ep(0), "");
    check_lock_exclusion(&[c.ep(0)], "");
}

#[test]
fn single_status_health_members_errors() {
    let c = Cluster::start(1);
    check_member_list(&c, &c.ep(0));
    check_error_texts(&c.ep(0), "");
    check_status_health(&[c.ep(0)]);
}

// ---------------------------------------------------------------------------------------------
// Three nodes: every check through every member, reading through another member.

#[test]
fn cluster_kv_through_each_member() {
    let c = Cluster::start(3);
    for i in 0..3 {
        let (w, r) = (c.ep(i), c.ep((i + 1) % 3));
        let p = format!("m{i}/");
        check_put_get(&w, &r, &p);
        check_prefix_limit_sort(&w, &r, &p);
        check_delete(&w, &r, &p);
        check_txn(&w, &r, &p);
        check_error_texts(&w, &p);
    }
}

#[test]
fn cluster_watch_lease_through_each_member() {
    let c = Cluster::start(3);
    for i in 0..3 {
        let (w, r) = (c.ep(i), c.ep((i + 1) % 3));
        let p = format!("m{i}/");
        check_watch(&w, &r, &p);
        check_lease(&w, &r, &p);
    }
}

#[test]
fn cluster_compaction() {
    let c = Cluster::start(3);
    check_compaction(&c.ep(0), &c.ep(1), "");
    // Every member refuses the compacted revision.
    let err = fails(&c.ep(2), &["get", "c/k", "--rev", "1"]);
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
}

#[test]
fn cluster_elect_and_lock_across_members() {
    let c = Cluster::start(3);
    check_elect(&c.ep(0), &c.ep(1), &c.ep(2), "");
    check_lock(&c.ep(1), &c.ep(2), "");
    let eps: Vec<String> = (0..3).map(|i| c.ep(i)).collect();
    check_lock_exclusion(&eps, "");
}

#[test]
fn cluster_status_health_member_list() {
    let c = Cluster::start(3);
    let eps: Vec<String> = (0..3).map(|i| c.ep(i)).collect();
    for ep in &eps {
        check_member_list(&c, ep);
    }
    check_status_health(&eps);
}

/// Run a membership change. etcd refuses reconfiguration ("unhealthy cluster") until all
/// members have been connected for a few seconds; retry that one error.
fn reconfigure(ep: &str, args: &[&str]) -> String {
    must_wait(Duration::from_secs(30), "reconfiguration accepted", || {
        let out = etcdctl(ep, args);
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).to_string());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unhealthy cluster"),
            "etcdctl {args:?} failed: {err}"
        );
        None
    })
}

#[test]
fn cluster_member_add_and_remove() {
    let mut c = Cluster::start(3);
    let ep0 = c.ep(0);
    let mut n4 = c.new_node("n4");
    let peer = format!("--peer-urls={}", n4.peer_url());
    let out = reconfigure(&ep0, &["member", "add", "n4", &peer]);
    let l = lines(&out);
    assert!(
        l[0].starts_with("Member ") && l[0].contains(" added to cluster "),
        "{out}"
    );
    let id = l[0]
        .split_whitespace()
        .nth(1)
        .expect("member id")
        .to_string();
    let initial = l
        .iter()
        .find_map(|x| x.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out}"))
        .to_string();
    assert!(initial.contains(&n4.cluster_entry()), "{initial}");
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    // Listed (unstarted) right away.
    assert!(ok(&ep0, &["member", "list"]).contains(&n4.peer_url()));

    n4.initial_cluster = initial;
    n4.cluster_state = "existing".to_string();
    n4.start();
    n4.wait_healthy(START_DEADLINE);
    let ep4 = n4.ep();
    c.nodes.push(n4);

    // Started and named in every member's list.
    for i in 0..4 {
        let ep = c.ep(i);
        must_wait(T, "n4 listed as started with its name", || {
            let j = json(&ep, &["member", "list"]);
            let ms = j["members"].as_array().cloned().unwrap_or_default();
            (ms.len() == 4
                && ms.iter().any(|m| {
                    m["name"].as_str() == Some("n4")
                        && m["clientURLs"] == serde_json::json!([ep4.clone()])
                }))
            .then_some(())
        });
    }
    // Data written before the join is there; writes through n4 reach the others.
    ok(&ep0, &["put", "before", "1"]);
    assert_eq!(ok(&ep4, &["get", "before", "--print-value-only"]), "1\n");
    assert_eq!(ok(&ep4, &["put", "via4", "x"]), "OK\n");
    for i in 0..3 {
        assert_eq!(ok(&c.ep(i), &["get", "via4", "--print-value-only"]), "x\n");
    }

    // Remove it.
    let out = reconfigure(&ep0, &["member", "remove", &id]);
    // etcdctl prints ids with %16x: space-padded when they have leading zero digits.
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words[..5],
        ["Member", id.as_str(), "removed", "from", "cluster"],
        "{out}"
    );
    let j = json(&ep0, &["member", "list"]);
    let ms = j["members"].as_array().expect("members");
    assert_eq!(ms.len(), 3, "{j}");
    assert!(!ms.iter().any(|m| m["name"].as_str() == Some("n4")), "{j}");
    c.nodes[3].kill();
    // The remaining three still take writes.
    assert_eq!(ok(&c.ep(1), &["put", "after-remove", "y"]), "OK\n");
    assert_eq!(
        ok(&c.ep(2), &["get", "after-remove", "--print-value-only"]),
        "y\n"
    );
}
