//! Master checks (`cargo test --test fault -- --master`): three `crawler master` processes, each
//! embedding one store member whose peer links go through the fault proxies, several
//! `crawler worker` processes, HTTP clients adding and deleting resources through any master,
//! the store nemesis against the masters plus `kill -9` / restart of workers.
//!
//! Checks, after every fault is healed:
//! - **fencing** — from the store's full event history (a watch from revision 1): the writes of
//!   every revision with a write under `/resources/` were made by the leader of that revision.
//!   Each master write is one txn guarded by the master's fence (`CREATE(own election key) ==
//!   its create revision`) whose success branch also re-puts that election key with
//!   `ignore_value`/`ignore_lease` (the writer tag), so the revision holds a PUT of the writer's
//!   key. The check requires exactly one election-key PUT in every such revision, of a key that
//!   existed before the revision with the tag's create revision and that was the leader then
//!   (the smallest create revision under `/crawler/election/`). Violations: an untagged write,
//!   a write tagged by a live key that is not the leader (a candidate's, or a deposed master's
//!   campaigning again under a new key; the former check attributed such a write to the leader),
//!   a tag of a key that did not exist (a write while no election key existed), several tags.
//! - **resources** — every acknowledged add is in the history with the ID the client got and, if
//!   no delete was sent for it, in the final state with that ID; every acknowledged delete is
//!   gone; no resource key is deleted without a delete request, re-created, or written with
//!   another ID (IDs never change on reassignment); no two resources share an ID; nothing appears
//!   that was never added.
//! - **assignment** — within [`ASSIGN_BOUND`] of the heal every resource is assigned to a worker
//!   that is registered and whose process runs.
//! - **liveness / nemesis** — a ready master leader after the heal; no process exited by itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::kv_client::KvClient;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::cluster::{
    channel, free_port, req, write_sentinel, ClusterConfig, FaultCluster, Topology,
};
use super::history::{fmt_time, OutcomeCounts, Recorder};
use super::nemesis::{utc_now, FaultKind, Nemesis};
use super::report::{Check, RunReport};
use super::watch_check::{self, prefix_end, SeenEvent};

/// Resource keys.
const RESOURCE_PREFIX: &str = "/resources/";
/// The masters' election prefix (with the separator).
const ELECTION_PREFIX: &str = "/crawler/election/";
/// Registry keys of workers.
const WORKER_PREFIX: &str = "/micro/registry/go.micro.server.worker/";
/// Written last: the end of the fetched history.
const SENTINEL_KEY: &str = "/fault/zz-master-end";
/// After the heal every resource must be assigned to a live worker within this bound.
pub const ASSIGN_BOUND: Duration = Duration::from_secs(30);
/// After the heal a master must be ready leader within this bound.
const LEADER_BOUND: Duration = Duration::from_secs(30);
/// The masters' election session TTL (seconds), short so that pauses outlive sessions.
const SESSION_TTL: u64 = 3;
/// Workers' registration TTL (seconds): how long a killed worker stays listed.
const REGISTER_TTL: u64 = 3;
/// Per-request deadline of the HTTP clients.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// What one master run does.
#[derive(Clone, Debug)]
pub struct MasterRunConfig {
    /// Seed of the fault schedule and the clients.
    pub seed: u64,
    /// How long faults are injected.
    pub time: Duration,
    /// Store fault types against the masters (`membership` is ignored: master ids follow slots).
    pub faults: Vec<FaultKind>,
    /// Longest hold of a fault.
    pub max_hold: Duration,
    /// Number of masters.
    pub nodes: usize,
    /// Number of worker processes.
    pub workers: usize,
    /// Number of HTTP clients adding and deleting resources.
    pub clients: usize,
    /// `--snapshot-count` of the embedded members.
    pub snapshot_count: u64,
    /// Where run directories go.
    pub out: PathBuf,
    /// Keep data dirs and logs of passing runs.
    pub keep: bool,
}

/// How a client request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// One client request.
#[derive(Clone, Debug)]
struct ResOp {
    client: usize,
    name: String,
    add: bool,
    invoke: u64,
    complete: u64,
    outcome: Outcome,
    /// HTTP status or error text.
    status: String,
    /// The ID an acknowledged add returned.
    id: Option<String>,
}

/// A `crawler worker` process slot.
struct WorkerProc {
    id: usize,
    http_port: u16,
    grpc_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// The worker processes.
struct Workers {
    bin: PathBuf,
    registry: String,
    procs: Vec<WorkerProc>,
}

impl Workers {
    fn node_id(id: usize) -> String {
        format!("go.micro.server.worker-{id}")
    }

    fn spawn(&mut self, k: usize) -> Result<(), String> {
        let w = &mut self.procs[k];
        if w.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&w.log)
            .map_err(|e| format!("open {:?}: {e}", w.log))?;
        let log_err = log.try_clone().map_err(|e| format!("clone log: {e}"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("worker")
            .arg(format!("--id={}", w.id))
            .arg(format!("--http=127.0.0.1:{}", w.http_port))
            .arg(format!("--grpc=127.0.0.1:{}", w.grpc_port))
            .arg(format!("--registry={}", self.registry))
            .arg(format!("--register-ttl={REGISTER_TTL}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().map_err(|e| format!("spawn worker: {e}"))?;
        w.child = Some(child);
        Ok(())
    }

    fn kill(&mut self, k: usize) {
        if let Some(mut c) = self.procs[k].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&self, k: usize) -> bool {
        self.procs[k].child.is_some()
    }

    /// Workers that exited on their own (reaped).
    fn crashed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for w in &mut self.procs {
            if let Some(Ok(Some(st))) = w.child.as_mut().map(|c| c.try_wait()) {
                w.child = None;
                out.push(format!("worker {} exited on its own with {st}", w.id));
            }
        }
        out
    }

    /// Restart workers that exited at startup because the registry could not be reached (the
    /// worker does not retry its first registration; a supervisor restarts it). Returns how
    /// many were restarted; other exits stay for [`Workers::crashed`].
    fn supervise(&mut self) -> usize {
        let mut restarted = 0;
        for k in 0..self.procs.len() {
            let w = &mut self.procs[k];
            let Some(Ok(Some(_))) = w.child.as_mut().map(|c| c.try_wait()) else {
                continue;
            };
            let tail = super::cluster::tail(&w.log, 3);
            if tail.contains("cannot register in the registry") {
                w.child = None;
                if self.spawn(k).is_ok() {
                    restarted += 1;
                }
            }
        }
        restarted
    }

    /// Node ids of running workers.
    fn live(&self) -> BTreeSet<String> {
        self.procs
            .iter()
            .filter(|w| w.child.is_some())
            .map(|w| Workers::node_id(w.id))
            .collect()
    }

    fn shutdown(&mut self) {
        for k in 0..self.procs.len() {
            self.kill(k);
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Log a nemesis line on stdout and into `events`.
fn log_event(recorder: &Recorder, events: &Mutex<Vec<String>>, what: String) {
    let at = recorder.now();
    println!("  [{:>10} {}] workers: {what}", fmt_time(at), utc_now());
    events
        .lock()
        .push(format!("{} workers: {what}", fmt_time(at)));
}

/// `kill -9` a random worker, restart it 1–4 s later, until `stop`; then restart every worker.
async fn worker_nemesis(
    workers: Arc<Mutex<Workers>>,
    mut rng: StdRng,
    recorder: Recorder,
    events: Arc<Mutex<Vec<String>>>,
    until: tokio::time::Instant,
) -> (usize, usize, Vec<String>) {
    let mut kills = 0;
    let mut restarts = 0;
    let mut problems = Vec::new();
    let n = workers.lock().procs.len();
    while tokio::time::Instant::now() < until && n > 0 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
        if tokio::time::Instant::now() >= until {
            break;
        }
        restarts += workers.lock().supervise();
        let k = rng.gen_range(0..n);
        workers.lock().kill(k);
        kills += 1;
        log_event(&recorder, &events, format!("kill -9 worker {}", k + 1));
        let hold = Duration::from_millis(rng.gen_range(1000..4000));
        tokio::time::sleep_until((tokio::time::Instant::now() + hold).min(until)).await;
        let r = workers.lock().spawn(k);
        match r {
            Ok(()) => log_event(&recorder, &events, format!("restart worker {}", k + 1)),
            Err(e) => problems.push(format!("restart of worker {} failed: {e}", k + 1)),
        }
    }
    let mut w = workers.lock();
    restarts += w.supervise();
    for k in 0..n {
        if let Err(e) = w.spawn(k) {
            problems.push(format!("restart of worker {} at heal failed: {e}", k + 1));
        }
    }
    (kills, restarts, problems)
}

/// The HTTP answer of a master, or why there is none.
enum Http {
    Status(u16, serde_json::Value),
    /// Nothing was sent (connection refused).
    NotSent(String),
    /// The request may have been delivered.
    Lost(String),
}

async fn http(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: String,
) -> Http {
    let r = client
        .request(method, url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(b) => Http::Status(
                    status,
                    serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
                ),
                Err(e) => Http::Lost(format!("{status} body lost: {e}")),
            }
        }
        Err(e) if e.is_connect() => Http::NotSent(e.to_string()),
        Err(e) => Http::Lost(e.to_string()),
    }
}

/// One client: adds unique names (70 %) and deletes acknowledged ones (30 %) through random
/// masters until `stop`.
async fn client_loop(
    c: usize,
    seed: u64,
    masters: Vec<String>,
    recorder: Recorder,
    ops: Arc<Mutex<Vec<ResOp>>>,
    stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7919).wrapping_add(c as u64));
    let Ok(client) = reqwest::Client::builder()
        .timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .build()
    else {
        return;
    };
    let mut acked: Vec<String> = Vec::new();
    let mut n = 0usize;
    while !*stop.borrow() {
        let m = masters[rng.gen_range(0..masters.len())].clone();
        let add = acked.is_empty() || rng.gen_bool(0.7);
        let name = if add {
            n += 1;
            format!("c{c}-r{n}")
        } else {
            let i = rng.gen_range(0..acked.len());
            acked.swap_remove(i)
        };
        let body = serde_json::json!({ "name": name }).to_string();
        let method = if add {
            reqwest::Method::POST
        } else {
            reqwest::Method::DELETE
        };
        let invoke = recorder.now();
        let r = http(&client, method, format!("{m}/crawler/resource"), body).await;
        let complete = recorder.now();
        let (outcome, status, id) = match r {
            Http::Status(200, v) => {
                let id = v["resource"]["ID"].as_str().map(str::to_string);
                (Outcome::Ok, "200".to_string(), id)
            }
            // Validation answer: nothing was done.
            Http::Status(400, v) => (Outcome::Fail, format!("400 {v}"), None),
            // 409 on a fresh name or 404 on an acknowledged one (a forwarded request retried
            // after its answer was lost), 503, 5xx: the request may have taken effect; the
            // history decides.
            Http::Status(s, v) => (Outcome::Unknown, format!("{s} {v}"), None),
            Http::NotSent(e) => (Outcome::Fail, e, None),
            Http::Lost(e) => (Outcome::Unknown, e, None),
        };
        if add && outcome == Outcome::Ok {
            acked.push(name.clone());
        }
        ops.lock().push(ResOp {
            client: c,
            name,
            add,
            invoke,
            complete,
            outcome,
            status,
            id,
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..200))).await;
    }
}

/// `GET /health` of every master; the index of a ready leader.
async fn ready_leader(masters: &[String], within: Duration) -> Option<usize> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let deadline = Instant::now() + within;
    loop {
        for (i, m) in masters.iter().enumerate() {
            if let Http::Status(200, v) = http(
                &client,
                reqwest::Method::GET,
                format!("{m}/health"),
                String::new(),
            )
            .await
            {
                if v["leader"].as_bool() == Some(true) && v["ready"].as_bool() == Some(true) {
                    return Some(i);
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Linearizable range of a prefix on any member: (revision, key → value).
async fn range_prefix(
    topology: &Topology,
    prefix: &str,
) -> Result<(i64, BTreeMap<String, String>), String> {
    let mut last = String::new();
    for attempt in 0..topology.len().max(1) * 3 {
        let Ok(ch) = channel(&topology.url(attempt)) else {
            continue;
        };
        let mut kv = KvClient::new(ch);
        let t = Duration::from_secs(2);
        let r = pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        };
        match tokio::time::timeout(t, kv.range(req(r, t))).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                let rev = resp.header.map(|h| h.revision).unwrap_or(0);
                let map = resp
                    .kvs
                    .into_iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(&kv.key).to_string(),
                            String::from_utf8_lossy(&kv.value).to_string(),
                        )
                    })
                    .collect();
                return Ok((rev, map));
            }
            Ok(Err(s)) => last = format!("{:?} {}", s.code(), s.message()),
            Err(_) => last = "timeout".into(),
        }
    }
    Err(last)
}

/// `ID` and `AssignedNode` of a stored resource value.
fn decode_resource(value: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(value).ok()?;
    Some((
        v["ID"].as_str()?.to_string(),
        v["AssignedNode"].as_str().unwrap_or("").to_string(),
    ))
}

/// Leader epochs seen by the fencing check.
#[derive(Debug, Default)]
pub struct FencingStats {
    /// Writes under `/resources/` checked.
    pub writes: usize,
    /// `(writer's election key, its value, first write revision, writes)` per run of writes by
    /// one writer, in revision order.
    pub epochs: Vec<(String, String, i64, usize)>,
}

/// The fencing check over a full event history (revision order). Every master write under
/// `/resources/` re-puts the writer's own election key in the same txn (the writer tag), so every
/// revision with a resource write must hold a PUT of exactly one election key, and that key must
/// be the leader on the state before the revision: the live key under the election prefix with
/// the smallest create revision, with the create revision the tag carries.
pub fn check_fencing(history: &[SeenEvent]) -> (FencingStats, Vec<String>) {
    let mut stats = FencingStats::default();
    let mut violations = Vec::new();
    // key → (create revision, value)
    let mut election: HashMap<String, (i64, String)> = HashMap::new();
    let name = |key: &str, value: &str| format!("{key} ({value})");
    let mut i = 0;
    while i < history.len() {
        let rev = history[i].rev;
        if i > 0 && history[i - 1].rev > rev {
            violations.push(format!(
                "history out of order: revision {rev} after {}",
                history[i - 1].rev
            ));
        }
        let mut j = i;
        while j < history.len() && history[j].rev == rev {
            j += 1;
        }
        let group = &history[i..j];
        let writes: Vec<&SeenEvent> = group
            .iter()
            .filter(|e| e.key.starts_with(RESOURCE_PREFIX))
            .collect();
        if !writes.is_empty() {
            // The fence is evaluated on the state before the revision: the leader then.
            let leader = election
                .iter()
                .min_by_key(|(_, (c, _))| *c)
                .map(|(k, (c, v))| (k.clone(), *c, v.clone()));
            let tags: Vec<&SeenEvent> = group
                .iter()
                .filter(|e| e.key.starts_with(ELECTION_PREFIX) && !e.delete)
                .collect();
            let what = writes
                .iter()
                .map(|e| format!("{} of {}", if e.delete { "DELETE" } else { "PUT" }, e.key))
                .collect::<Vec<_>>()
                .join(", ");
            let leader_text = leader
                .as_ref()
                .map(|(k, c, v)| format!("{} created at {c}", name(k, v)))
                .unwrap_or_else(|| "none (no election key existed)".into());
            stats.writes += writes.len();
            match tags.as_slice() {
                [] => violations.push(format!(
                    "{what} at revision {rev} carries no writer tag (no election-key PUT in the \
                     same revision); leader then: {leader_text}"
                )),
                [tag] => {
                    let writer = name(&tag.key, &tag.value);
                    match election.get(&tag.key) {
                        None => violations.push(format!(
                            "{what} at revision {rev} tagged by {writer}, a key that did not \
                             exist before the revision; leader then: {leader_text}"
                        )),
                        Some((created, _)) if *created != tag.create_rev => {
                            violations.push(format!(
                                "{what} at revision {rev} tagged by {writer} with create revision \
                                 {}, but the live key was created at {created}",
                                tag.create_rev
                            ))
                        }
                        Some(_) => match &leader {
                            Some((key, _, _)) if *key == tag.key => match stats.epochs.last_mut() {
                                Some((k, _, _, n)) if *k == tag.key => *n += writes.len(),
                                _ => stats.epochs.push((
                                    tag.key.clone(),
                                    tag.value.clone(),
                                    rev,
                                    writes.len(),
                                )),
                            },
                            _ => violations.push(format!(
                                "{what} at revision {rev} committed by {writer}, which was not \
                                 the leader; leader then: {leader_text}"
                            )),
                        },
                    }
                }
                many => violations.push(format!(
                    "{what} at revision {rev} tagged by {} election keys: {}",
                    many.len(),
                    many.iter()
                        .map(|e| name(&e.key, &e.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        for e in group.iter().filter(|e| e.key.starts_with(ELECTION_PREFIX)) {
            if e.delete {
                election.remove(&e.key);
            } else {
                election.insert(e.key.clone(), (e.create_rev, e.value.clone()));
            }
        }
        i = j;
    }
    (stats, violations)
}

/// The resource check: client records against the history and the final state.
fn check_resources(
    ops: &[ResOp],
    history: &[SeenEvent],
    final_state: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut v = Vec::new();
    let added: BTreeSet<&str> = ops
        .iter()
        .filter(|o| o.add)
        .map(|o| o.name.as_str())
        .collect();
    let delete_sent: BTreeSet<&str> = ops
        .iter()
        .filter(|o| !o.add && o.outcome != Outcome::Fail)
        .map(|o| o.name.as_str())
        .collect();
    // Per name: incarnations (IDs) from the history.
    let mut incarnations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    let mut id_owner: HashMap<String, String> = HashMap::new();
    for e in history
        .iter()
        .filter(|e| e.key.starts_with(RESOURCE_PREFIX))
    {
        let name = e.key[RESOURCE_PREFIX.len()..].to_string();
        if e.delete {
            if live.remove(&name).is_none() {
                v.push(format!("rev {}: DELETE of absent resource {name}", e.rev));
            }
            if !delete_sent.contains(name.as_str()) {
                v.push(format!(
                    "rev {}: resource {name} deleted but no delete was sent (lost)",
                    e.rev
                ));
            }
            continue;
        }
        let Some((id, _)) = decode_resource(&e.value) else {
            v.push(format!(
                "rev {}: undecodable resource {name}: {:?}",
                e.rev, e.value
            ));
            continue;
        };
        match live.get(&name) {
            Some(old) if *old != id => v.push(format!(
                "rev {}: resource {name} changed ID {old} → {id}",
                e.rev
            )),
            Some(_) => {}
            None => {
                if !added.contains(name.as_str()) {
                    v.push(format!("rev {}: resource {name} was never added", e.rev));
                }
                let inc = incarnations.entry(name.clone()).or_default();
                if !inc.is_empty() {
                    v.push(format!(
                        "rev {}: resource {name} created again (IDs {:?} then {id})",
                        e.rev, inc
                    ));
                }
                inc.push(id.clone());
                if let Some(other) = id_owner.insert(id.clone(), name.clone()) {
                    if other != name {
                        v.push(format!(
                            "rev {}: ID {id} of {name} also used by {other}",
                            e.rev
                        ));
                    }
                }
                live.insert(name.clone(), id);
            }
        }
    }
    for o in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        if o.add {
            let id = o.id.clone().unwrap_or_default();
            let first = incarnations.get(&o.name).and_then(|i| i.first());
            if first != Some(&id) {
                v.push(format!(
                    "acknowledged add of {} (ID {id}) created {:?} in the history",
                    o.name, first
                ));
            }
            if !delete_sent.contains(o.name.as_str()) {
                let key = format!("{RESOURCE_PREFIX}{}", o.name);
                match final_state.get(&key).and_then(|val| decode_resource(val)) {
                    Some((fid, _)) if fid == id => {}
                    Some((fid, _)) => v.push(format!(
                        "resource {} has ID {fid} at the end, {id} when added",
                        o.name
                    )),
                    None => v.push(format!("acknowledged resource {} lost", o.name)),
                }
            }
        } else {
            let key = format!("{RESOURCE_PREFIX}{}", o.name);
            if final_state.contains_key(&key) {
                v.push(format!(
                    "resource {} still present after its acknowledged delete",
                    o.name
                ));
            }
        }
    }
    // Final state agrees with the history and has unique IDs.
    let mut ids: HashMap<String, String> = HashMap::new();
    for (key, val) in final_state {
        let name = key[RESOURCE_PREFIX.len()..].to_string();
        match decode_resource(val) {
            Some((id, _)) => {
                if live.get(&name) != Some(&id) {
                    v.push(format!("final {name} (ID {id}) disagrees with the history"));
                }
                if let Some(other) = ids.insert(id.clone(), name.clone()) {
                    v.push(format!("final: ID {id} held by {other} and {name}"));
                }
            }
            None => v.push(format!("final {name}: undecodable {val:?}")),
        }
    }
    v
}

/// Node ids registered under the worker prefix.
fn registered_ids(registry: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for (key, val) in registry {
        let from_value = serde_json::from_str::<serde_json::Value>(val)
            .ok()
            .and_then(|v| {
                v["nodes"].as_array().map(|ns| {
                    ns.iter()
                        .filter_map(|n| n["id"].as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
            })
            .unwrap_or_default();
        if from_value.is_empty() {
            if let Some(last) = key.rsplit('/').next() {
                ids.insert(last.to_string());
            }
        }
        ids.extend(from_value);
    }
    ids
}

/// Wait until every resource is assigned to a registered, running worker; the time it took.
async fn wait_assigned(
    topology: &Topology,
    workers: &Mutex<Workers>,
    restarts: &mut usize,
    bound: Duration,
) -> Result<(Duration, usize, usize), String> {
    let t0 = Instant::now();
    let mut last: String;
    loop {
        let live_workers = {
            let mut w = workers.lock();
            *restarts += w.supervise();
            w.live()
        };
        match (
            range_prefix(topology, RESOURCE_PREFIX).await,
            range_prefix(topology, WORKER_PREFIX).await,
        ) {
            (Ok((_, res)), Ok((_, reg))) => {
                let registered = registered_ids(&reg);
                let bad: Vec<String> = res
                    .iter()
                    .filter_map(|(k, val)| {
                        let (_, assigned) = decode_resource(val)?;
                        let id = assigned.split('|').next().unwrap_or("").to_string();
                        (!(registered.contains(&id) && live_workers.contains(&id)))
                            .then(|| format!("{k} → {assigned:?}"))
                    })
                    .collect();
                if bad.is_empty() {
                    return Ok((t0.elapsed(), res.len(), live_workers.len()));
                }
                last = format!(
                    "{} of {} resources not on a live worker (registered {registered:?}), e.g. {:?}",
                    bad.len(),
                    res.len(),
                    &bad[..bad.len().min(5)]
                );
            }
            (Err(e), _) | (_, Err(e)) => last = e,
        }
        if t0.elapsed() >= bound {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn counts<'a>(ops: impl Iterator<Item = &'a ResOp>) -> OutcomeCounts {
    let mut c = OutcomeCounts::default();
    for o in ops {
        match o.outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Unknown => c.unknown += 1,
        }
    }
    c
}

/// One seed of the master checks.
pub async fn run_seed(cfg: &MasterRunConfig) -> RunReport {
    let wall = Instant::now();
    let seed = cfg.seed;
    let run_dir = cfg.out.join(format!("master-seed-{seed}"));
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut report = RunReport {
        seed,
        time: cfg.time,
        run_dir: run_dir.clone(),
        ..Default::default()
    };
    println!("--- master seed {seed}: run dir {}", run_dir.display());
    let self_test_failures = self_test();
    if !self_test_failures.is_empty() {
        report.checks.push(Check::new(
            "self-test",
            "the master checks reject broken histories".into(),
            self_test_failures,
        ));
        return report;
    }
    let data = run_dir.join("data");
    if let Err(e) = std::fs::create_dir_all(&data) {
        report
            .checks
            .push(Check::new("startup", "run dir".into(), vec![e.to_string()]));
        return report;
    }
    let config = data.join("crawler.toml");
    if let Err(e) = std::fs::write(
        &config,
        format!("logLevel = \"info\"\n\n[MasterServer]\nSessionTTL = {SESSION_TTL}\n"),
    ) {
        report
            .checks
            .push(Check::new("startup", "config".into(), vec![e.to_string()]));
        return report;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_crawler"));
    let ccfg = ClusterConfig {
        nodes: cfg.nodes,
        spare_slots: 0,
        heartbeat_ms: 100,
        election_ms: 1000,
        snapshot_count: cfg.snapshot_count,
        dir: data.clone(),
        bin: bin.clone(),
    };
    let mut cluster = match FaultCluster::start_masters(ccfg, config).await {
        Ok(c) => c,
        Err(e) => {
            report.checks.push(Check::new(
                "startup",
                "master cluster start".into(),
                vec![e.to_string()],
            ));
            return report;
        }
    };
    let topology = cluster.topology();
    let masters: Vec<String> = cluster
        .member_slots()
        .iter()
        .map(|&s| format!("http://127.0.0.1:{}", cluster.slot(s).http_port))
        .collect();
    let registry = cluster
        .member_slots()
        .iter()
        .map(|&s| format!("127.0.0.1:{}", cluster.slot(s).client_port))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for k in 0..cfg.workers {
        let (Ok(h), Ok(g)) = (free_port(), free_port()) else {
            report.checks.push(Check::new(
                "startup",
                "ports".into(),
                vec!["no free port".into()],
            ));
            return report;
        };
        procs.push(WorkerProc {
            id: k + 1,
            http_port: h,
            grpc_port: g,
            log: data.join(format!("worker{}.log", k + 1)),
            child: None,
        });
    }
    let workers = Arc::new(Mutex::new(Workers {
        bin,
        registry,
        procs,
    }));
    let mut startup = Vec::new();
    for k in 0..cfg.workers {
        if let Err(e) = workers.lock().spawn(k) {
            startup.push(e);
        }
    }
    if ready_leader(&masters, LEADER_BOUND).await.is_none() {
        startup.push(format!("no ready master leader within {LEADER_BOUND:?}"));
    }
    if !startup.is_empty() {
        report
            .checks
            .push(Check::new("startup", "masters and workers".into(), startup));
        return report;
    }

    let recorder = Recorder::new();
    let ops: Arc<Mutex<Vec<ResOp>>> = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients: Vec<_> = (0..cfg.clients)
        .map(|c| {
            tokio::spawn(client_loop(
                c,
                seed,
                masters.clone(),
                recorder.clone(),
                ops.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let until = tokio::time::Instant::now() + cfg.time;
    let worker_events = Arc::new(Mutex::new(Vec::new()));
    let worker_faults = cfg.faults.contains(&FaultKind::Kill);
    let wn = tokio::spawn(worker_nemesis(
        workers.clone(),
        StdRng::seed_from_u64(seed ^ 0x5eed_0f0b),
        recorder.clone(),
        worker_events.clone(),
        if worker_faults {
            until
        } else {
            tokio::time::Instant::now()
        },
    ));
    let kinds: Vec<FaultKind> = cfg
        .faults
        .iter()
        .copied()
        .filter(|k| *k != FaultKind::Membership)
        .collect();
    let mut nemesis = Nemesis::new(StdRng::seed_from_u64(seed), kinds, recorder.clone());
    nemesis.max_hold_ms = u64::try_from(cfg.max_hold.as_millis()).unwrap_or(5000);
    nemesis.run(&mut cluster, until).await;
    let (worker_kills, mut worker_restarts, worker_problems) = match wn.await {
        Ok(r) => r,
        Err(e) => (0, 0, vec![format!("worker nemesis task: {e}")]),
    };
    let healed = Instant::now();
    report.faults = nemesis.counts.clone();
    if worker_kills > 0 {
        report.faults.insert("worker-kill".into(), worker_kills);
    }

    // Recovery: a ready leader, members serving reads; the clients go on meanwhile.
    let mut liveness = Vec::new();
    for s in cluster.member_slots() {
        if let Err(e) = cluster.wait_ready(s, LEADER_BOUND).await {
            liveness.push(format!("after heal: {e}"));
        }
    }
    let leader_after = ready_leader(&masters, LEADER_BOUND).await;
    if leader_after.is_none() {
        liveness.push(format!(
            "no ready master leader within {LEADER_BOUND:?} of the heal"
        ));
    }
    // A few seconds of load after the heal, then stop the clients.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send_replace(true);
    for c in clients {
        let _ = c.await;
    }
    let ops: Vec<ResOp> = ops.lock().clone();
    let healed_ns = recorder.now() - u64::try_from(healed.elapsed().as_nanos()).unwrap_or(0);
    if !ops
        .iter()
        .any(|o| o.add && o.outcome == Outcome::Ok && o.invoke >= healed_ns)
    {
        liveness.push("no add succeeded after the heal".into());
    }

    // Assignment bound.
    let started = healed.elapsed();
    let remaining = ASSIGN_BOUND.saturating_sub(started);
    let assigned = wait_assigned(&topology, &workers, &mut worker_restarts, remaining).await;
    let (assign_summary, mut assign_violations) = match assigned {
        Ok((d, n, live)) => (
            format!(
                "{n} resources on {live} live workers {:.1?} after the heal (bound {ASSIGN_BOUND:?})",
                started + d,
            ),
            Vec::new(),
        ),
        Err(e) => (
            format!("not all assigned within {ASSIGN_BOUND:?} of the heal"),
            vec![e],
        ),
    };

    let live = workers.lock().live().len();
    if live < cfg.workers {
        assign_violations.push(format!(
            "only {live} of {} workers running at the end",
            cfg.workers
        ));
    }
    if worker_restarts > 0 {
        report.notes.push(format!(
            "workers restarted after exiting at startup (registry unreachable): {worker_restarts}"
        ));
    }

    // Final state and the full history.
    let mut fetch_problems = Vec::new();
    let final_state = match range_prefix(&topology, RESOURCE_PREFIX).await {
        Ok((_, m)) => Some(m),
        Err(e) => {
            fetch_problems.push(format!("final range failed: {e}"));
            None
        }
    };
    let history = match write_sentinel(&topology, SENTINEL_KEY).await {
        Ok(until_rev) => {
            let url = topology.url(0);
            match watch_check::fetch_history(
                &url,
                "/",
                until_rev,
                &recorder,
                Duration::from_secs(30),
            )
            .await
            {
                Ok(h) => Some(h),
                Err(e) => {
                    fetch_problems.push(format!("history: {e}"));
                    None
                }
            }
        }
        Err(e) => {
            fetch_problems.push(format!("sentinel write failed: {e}"));
            None
        }
    };

    let mut crashes = cluster.crashed();
    crashes.extend(workers.lock().crashed());
    cluster.shutdown();
    workers.lock().shutdown();

    // Files.
    let ops_text: String = ops
        .iter()
        .map(|o| {
            format!(
                "{} {} client={} {} {} {:?} id={:?} {}\n",
                fmt_time(o.invoke),
                fmt_time(o.complete),
                o.client,
                if o.add { "add" } else { "delete" },
                o.name,
                o.outcome,
                o.id,
                o.status
            )
        })
        .collect();
    let _ = std::fs::write(run_dir.join("ops.txt"), ops_text);
    let mut nem: Vec<String> = nemesis
        .events
        .iter()
        .map(|e| format!("{} {}", fmt_time(e.at), e.what))
        .collect();
    nem.extend(worker_events.lock().iter().cloned());
    let _ = std::fs::write(run_dir.join("nemesis.log"), nem.join("\n") + "\n");
    if let Some(h) = &history {
        let text: String = h
            .iter()
            .map(|e| {
                format!(
                    "rev={} {} {} create={} lease={:x} {}\n",
                    e.rev,
                    if e.delete { "DELETE" } else { "PUT" },
                    e.key,
                    e.create_rev,
                    e.lease,
                    e.value
                )
            })
            .collect();
        let _ = std::fs::write(run_dir.join("history.txt"), text);
    }

    // Checks.
    let adds = counts(ops.iter().filter(|o| o.add));
    let deletes = counts(ops.iter().filter(|o| !o.add));
    report.ops.total = counts(ops.iter());
    report.ops.by_type.insert("add".into(), adds);
    report.ops.by_type.insert("delete".into(), deletes);
    report.checker = format!(
        "master checks: {} masters, {} workers",
        cfg.nodes, cfg.workers
    );
    match &history {
        Some(h) => {
            let (stats, violations) = check_fencing(h);
            let leaders: Vec<String> = stats
                .epochs
                .iter()
                .map(|(_, v, r, n)| format!("{v}@{r}:{n}"))
                .collect();
            report.checks.push(Check::new(
                "fencing",
                format!(
                    "{} writes under {RESOURCE_PREFIX} in {} leader epochs [{}]; each tagged \
                     by its writer's election key, the leader of its revision",
                    stats.writes,
                    stats.epochs.len(),
                    leaders.join(" ")
                ),
                violations,
            ));
        }
        None => report.checks.push(Check::new(
            "fencing",
            "no history".into(),
            vec!["history unavailable".into()],
        )),
    }
    let res_violations = match (&history, &final_state) {
        (Some(h), Some(f)) => check_resources(&ops, h, f),
        _ => vec!["history or final state unavailable".into()],
    };
    report.checks.push(Check::new(
        "resources",
        format!(
            "{} resources at the end; adds {adds}, deletes {deletes}; none lost, duplicated, \
             resurrected or re-identified",
            final_state.as_ref().map(BTreeMap::len).unwrap_or(0)
        ),
        res_violations,
    ));
    report
        .checks
        .push(Check::new("assignment", assign_summary, assign_violations));
    liveness.extend(fetch_problems);
    report.checks.push(Check::new(
        "liveness",
        format!(
            "ready leader after heal: {}",
            leader_after
                .map(|i| format!("master {}", i + 1))
                .unwrap_or_else(|| "none".into())
        ),
        liveness,
    ));
    let mut problems = nemesis.problems.clone();
    problems.extend(worker_problems);
    problems.extend(crashes);
    report.checks.push(Check::new(
        "nemesis",
        "faults applied and healed as planned, no master or worker crashed".into(),
        problems,
    ));
    report.wall = wall.elapsed();
    let _ = std::fs::write(run_dir.join("report.txt"), report.render());
    if report.passed() && !cfg.keep {
        let _ = std::fs::remove_dir_all(&data);
    }
    drop(cluster);
    report
}

/// The checks' own tests, run before every master seed: histories that must pass and histories
/// that must be rejected. Returns what went wrong (empty: the checks work).
pub fn self_test() -> Vec<String> {
    let ev = |rev: i64, key: &str, delete: bool, create_rev: i64, value: &str| SeenEvent {
        rev,
        key: key.to_string(),
        delete,
        value: value.to_string(),
        create_rev,
        version: 1,
        lease: 0,
        at: 0,
        response: 0,
    };
    let res = |id: &str, node: &str| {
        format!(r#"{{"ID":"{id}","Name":"x","AssignedNode":"{node}","CreationTime":1}}"#)
    };
    let op = |name: &str, add: bool, outcome: Outcome, id: Option<&str>| ResOp {
        client: 0,
        name: name.to_string(),
        add,
        invoke: 0,
        complete: 0,
        outcome,
        status: String::new(),
        id: id.map(str::to_string),
    };
    let mut failures = Vec::new();
    let mut expect = |what: &str, violations: Vec<String>, want_ok: bool| {
        if violations.is_empty() != want_ok {
            failures.push(format!(
                "self-test {what}: expected {}, got {violations:?}",
                if want_ok {
                    "no violation"
                } else {
                    "a violation"
                }
            ));
        }
    };
    let e1 = "/crawler/election/1";
    let e2 = "/crawler/election/2";
    // Each resource write carries its writer tag: a PUT of the writer's election key (same value
    // and create revision) at the same revision.
    let good = vec![
        ev(2, e1, false, 2, "master1"),
        ev(3, e2, false, 3, "master2"),
        ev(4, "/resources/a", false, 4, &res("10", "w1|x")),
        ev(4, e1, false, 2, "master1"),
        ev(5, e1, true, 0, ""),
        // master2 leads now; reassignment keeps the ID.
        ev(6, "/resources/a", false, 4, &res("10", "w2|x")),
        ev(6, e2, false, 3, "master2"),
        ev(7, "/resources/b", false, 7, &res("11", "w2|x")),
        ev(7, e2, false, 3, "master2"),
        ev(8, "/resources/b", true, 0, ""),
        ev(8, e2, false, 3, "master2"),
    ];
    let (stats, v) = check_fencing(&good);
    expect("fencing, two leaders", v, true);
    let epochs_ok = stats.epochs.len() == 2
        && stats.writes == 4
        && stats.epochs[0] == (e1.to_string(), "master1".to_string(), 4, 1)
        && stats.epochs[1] == (e2.to_string(), "master2".to_string(), 6, 3);
    expect(
        "fencing epochs",
        if epochs_ok {
            Vec::new()
        } else {
            vec![format!("{stats:?}")]
        },
        true,
    );
    // A write by a live election key that is not the leader (master2 writing while master1
    // still leads): the weak check attributed it to master1 and passed it.
    let mut deposed = good.clone();
    deposed[3] = ev(4, e2, false, 3, "master2");
    let (_, v) = check_fencing(&deposed);
    let names_both = v.iter().any(|m| {
        ["revision 4", e1, e2, "master1", "master2"]
            .iter()
            .all(|w| m.contains(w))
    });
    expect("fencing, write by a non-leader key", v.clone(), false);
    expect(
        "fencing, the violation names writer, leader and revision",
        if names_both { Vec::new() } else { v },
        true,
    );
    // An untagged write.
    let mut untagged = good.clone();
    untagged.remove(6);
    expect("fencing, untagged write", check_fencing(&untagged).1, false);
    // Writes after every election key vanished (a deposed master whose session expired), tagged
    // with its deleted key (as it was, or re-created by the tag) or untagged.
    let gone = |tag: Option<SeenEvent>| {
        let mut h = good[..7].to_vec();
        h.push(ev(7, e2, true, 0, ""));
        h.push(ev(8, "/resources/b", false, 8, &res("11", "w2|x")));
        h.extend(tag);
        h
    };
    for (what, tag) in [
        ("stale tag", Some(ev(8, e2, false, 3, "master2"))),
        ("re-created key", Some(ev(8, e2, false, 8, "master2"))),
        ("untagged", None),
    ] {
        expect(
            &format!("fencing, write without any election key ({what})"),
            check_fencing(&gone(tag)).1,
            false,
        );
    }
    // Two writer tags in one revision.
    let mut two = good.clone();
    two.insert(4, ev(4, e2, false, 3, "master2"));
    expect("fencing, two writer tags", check_fencing(&two).1, false);
    let ops = vec![
        op("a", true, Outcome::Ok, Some("10")),
        op("b", true, Outcome::Ok, Some("11")),
        op("b", false, Outcome::Ok, None),
    ];
    let mut fin = BTreeMap::new();
    fin.insert("/resources/a".to_string(), res("10", "w2|x"));
    expect("resources, good", check_resources(&ops, &good, &fin), true);
    // Lost: an acknowledged resource missing at the end.
    expect(
        "resources, lost at end",
        check_resources(&ops, &good, &BTreeMap::new()),
        false,
    );
    // Re-identified: reassignment changed the ID.
    let mut changed = good.clone();
    changed[5] = ev(6, "/resources/a", false, 4, &res("12", "w2|x"));
    expect(
        "resources, ID changed",
        check_resources(&ops, &changed, &fin),
        false,
    );
    // Deleted without a delete request.
    let no_delete = vec![
        op("a", true, Outcome::Ok, Some("10")),
        op("b", true, Outcome::Ok, Some("11")),
    ];
    expect(
        "resources, deleted without request",
        check_resources(&no_delete, &good, &fin),
        false,
    );
    // Duplicated: two resources with one ID.
    let mut dup_fin = fin.clone();
    dup_fin.insert("/resources/b".to_string(), res("10", "w2|x"));
    expect(
        "resources, duplicate ID",
        check_resources(&ops, &good, &dup_fin),
        false,
    );
    // Phantom: a resource never added.
    let mut phantom = good.clone();
    phantom.push(ev(9, "/resources/zz", false, 9, &res("13", "w2|x")));
    expect(
        "resources, phantom",
        check_resources(&ops, &phantom, &fin),
        false,
    );
    failures
}
