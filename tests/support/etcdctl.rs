//! The real `etcdctl` (v3 API) run against test servers: one-shot commands, their JSON output,
//! and long-running ones (watch, elect, lock) in the background.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::process::Bg;

/// Default etcdctl command timeout.
pub const COMMAND_TIMEOUT: &str = "5s";
/// Path of the etcdctl binary under test.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

fn etcdctl_command(endpoints: &str, command_timeout: &str, args: &[&str]) -> Command {
    let mut c = Command::new(ETCDCTL);
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=2s")
        .arg(format!("--command-timeout={command_timeout}"))
        .args(args);
    c
}

/// Run etcdctl against `endpoints` with the default command timeout.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_t(endpoints, COMMAND_TIMEOUT, args)
}

/// Run etcdctl with an explicit `--command-timeout`.
pub fn etcdctl_t(endpoints: &str, command_timeout: &str, args: &[&str]) -> Output {
    etcdctl_command(endpoints, command_timeout, args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

/// Run etcdctl with `input` on stdin (for `txn`).
pub fn etcdctl_stdin(endpoints: &str, args: &[&str], input: &str) -> Output {
    let mut child = etcdctl_command(endpoints, COMMAND_TIMEOUT, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait etcdctl")
}

/// Run etcdctl and return its stdout, panicking (with stderr) if it failed.
pub fn ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    assert_ok(&out, args)
}

/// Stdout of a successful etcdctl run; panics with both streams otherwise.
pub fn assert_ok(out: &Output, args: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

/// Run etcdctl expecting failure; returns stderr (panics if it succeeded).
pub fn fails(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "etcdctl {args:?} unexpectedly succeeded:\nstdout: {stdout}\nstderr: {stderr}"
    );
    stderr
}

/// Run etcdctl with `-w json` and parse stdout.
pub fn json(endpoints: &str, args: &[&str]) -> Value {
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-w", "json"]);
    let out = ok(endpoints, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl {a:?}: bad json {e}: {out}"))
}

/// Current store revision as seen by `endpoint` (header of a serializable get).
pub fn revision(endpoint: &str) -> i64 {
    let v = json(endpoint, &["get", "--consistency=s", "revision-probe-key"]);
    v["header"]["revision"].as_i64().expect("header.revision")
}

/// One key-value from `get -w json`, with key and value base64-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// create_revision.
    pub create: i64,
    /// mod_revision.
    pub modr: i64,
    /// version.
    pub version: i64,
    /// lease id (0 = none).
    pub lease: i64,
}

/// The `kvs` of a `get -w json` answer.
pub fn kvs(v: &Value) -> Vec<Kv> {
    let Some(arr) = v["kvs"].as_array() else {
        return Vec::new();
    };
    arr.iter()
        .map(|kv| Kv {
            key: b64s(kv["key"].as_str().unwrap_or("")),
            value: b64s(kv["value"].as_str().unwrap_or("")),
            create: kv["create_revision"].as_i64().unwrap_or(0),
            modr: kv["mod_revision"].as_i64().unwrap_or(0),
            version: kv["version"].as_i64().unwrap_or(0),
            lease: kv["lease"].as_i64().unwrap_or(0),
        })
        .collect()
}

/// Decode standard base64 (as Go's encoding/json writes []byte) into a lossy UTF-8 string.
pub fn b64s(s: &str) -> String {
    String::from_utf8_lossy(&b64(s)).to_string()
}

/// Decode standard base64 with padding.
pub fn b64(s: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s.as_bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

impl Bg {
    /// Spawn etcdctl with `args` against `endpoints` (no command timeout: these run long).
    pub fn etcdctl(endpoints: &str, args: &[&str]) -> Bg {
        let mut cmd = etcdctl_command(endpoints, "30s", args);
        Bg::spawn(&mut cmd, format!("etcdctl {args:?}"))
    }
}
