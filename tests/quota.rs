//! The space quota against a real `crawler store` driven by etcdctl 3.4: past
//! `--quota-backend-bytes` a put fails with `database space exceeded`, the NOSPACE alarm is
//! listed (and survives a restart), reads and deletes still work, then compaction, defrag and
//! `alarm disarm` clear it: while the db is still over the quota the next put raises it again
//! (sled does not shrink its file, see the README's "Quotas"), and with a larger quota writes
//! work again.

mod support;

use std::time::Duration;

use support::cluster::Cluster;
use support::etcdctl::{etcdctl, fails, ok};
use support::scrape::{scrape, value};

/// The quota the member runs with.
const QUOTA: u64 = 8 * 1024 * 1024;
/// Size of each value written to fill the db.
const VALUE_BYTES: usize = 64 * 1024;
/// Keys the filling cycles over (rewritten, so compaction frees the old versions).
const KEYS: usize = 8;

fn db_size(client: &str) -> f64 {
    value(&scrape(client), "etcd_mvcc_db_total_size_in_bytes", &[]).expect("db size metric")
}

#[test]
fn quota_alarm_compaction_disarm() {
    let quota = QUOTA.to_string();
    let mut c = Cluster::start_with(1, &["--quota-backend-bytes", &quota]);
    let ep = c.endpoints();
    let client = c
        .node(0)
        .client_url()
        .trim_start_matches("http://")
        .to_string();
    let value_text = "x".repeat(VALUE_BYTES);

    // Fill until a put is refused.
    let mut refused = None;
    for i in 0..2000 {
        let key = format!("fill{}", i % KEYS);
        let out = etcdctl(&ep, &["put", &key, &value_text]);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).to_string());
            break;
        }
    }
    let err = refused.expect("no put was refused");
    assert!(
        err.contains("etcdserver: mvcc: database space exceeded"),
        "{err}"
    );
    assert!(db_size(&client) >= QUOTA as f64);

    // The alarm is listed and replicated; it blocks puts, txn puts and lease grants.
    let listed = ok(&ep, &["alarm", "list"]);
    assert!(listed.contains("alarm:NOSPACE"), "{listed}");
    assert!(listed.starts_with("memberID:"), "{listed}");
    let err = fails(&ep, &["put", "small", "v"]);
    assert!(err.contains("database space exceeded"), "{err}");
    let err = fails(&ep, &["lease", "grant", "60"]);
    assert!(err.contains("database space exceeded"), "{err}");

    // The alarm survives a restart of the member.
    c.node(0).terminate(Duration::from_secs(10));
    c.node(0).start();
    c.wait_healthy(Duration::from_secs(30));
    let listed = ok(&ep, &["alarm", "list"]);
    assert!(listed.contains("alarm:NOSPACE"), "after restart: {listed}");
    let err = fails(&ep, &["put", "small", "v"]);
    assert!(
        err.contains("database space exceeded"),
        "after restart: {err}"
    );

    // Reads and deletes still work.
    let got = ok(&ep, &["get", "fill0", "--print-value-only"]);
    assert_eq!(got.trim().len(), VALUE_BYTES);
    let deleted = ok(&ep, &["del", "--prefix", "fill"]);
    assert_eq!(deleted.trim(), KEYS.to_string());

    // Compaction and defrag work under the alarm; disarm clears it.
    let rev = support::etcdctl::revision(&ep);
    ok(&ep, &["compaction", &rev.to_string()]);
    let defrag = ok(&ep, &["defrag"]);
    assert!(defrag.contains("Finished defragmenting"), "{defrag}");
    let disarmed = ok(&ep, &["alarm", "disarm"]);
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(ok(&ep, &["alarm", "list"]).trim(), "");
    // Still over the quota (sled keeps its file): the next put raises the alarm again.
    let size = db_size(&client);
    assert!(size >= QUOTA as f64, "db shrank to {size} bytes");
    let err = fails(&ep, &["put", "small", "v"]);
    assert!(err.contains("database space exceeded"), "{err}");
    let listed = ok(&ep, &["alarm", "list"]);
    assert!(listed.contains("alarm:NOSPACE"), "raised again: {listed}");

    // The recovery: restart with a larger quota, disarm, write.
    c.node(0).terminate(Duration::from_secs(10));
    c.node(0).extra_args = vec!["--quota-backend-bytes".into(), (8 * QUOTA).to_string()];
    c.node(0).start();
    c.wait_healthy(Duration::from_secs(30));
    assert!(ok(&ep, &["alarm", "list"]).contains("alarm:NOSPACE"));
    ok(&ep, &["alarm", "disarm"]);
    ok(&ep, &["put", "small", "v"]);
    ok(&ep, &["lease", "grant", "60"]);
    assert_eq!(ok(&ep, &["get", "small", "--print-value-only"]).trim(), "v");
    assert_eq!(ok(&ep, &["alarm", "list"]).trim(), "");
}
