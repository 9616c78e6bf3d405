//! Watch checks: a watcher per member position over the test prefix, resumed from the last
//! revision + 1 after every error, compared at the end against the full event history that each
//! member reports (a watch from revision 1 after the run).
//!
//! Per watcher: events are in revision order, never repeated, without gaps (every revision of
//! the reference up to the last one the watcher saw is there), whole per revision (all events of
//! a revision arrive in one response) and identical to the reference. Across members: every
//! member's history is the same. Against the KV history: every acknowledged write is in the
//! history at its revision, every value is written at most once, and no write appears that was
//! never attempted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::watch_client::WatchClient;
use crawler_proto::etcdserverpb::watch_request::RequestUnion;
use crawler_proto::mvccpb;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::cluster::{channel, Topology};
use super::history::{History, OpKind, Outcome, Recorder};

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenEvent {
    /// Revision of the event (the key's mod revision; for deletes the delete's revision).
    pub rev: i64,
    /// Key.
    pub key: String,
    /// True for DELETE.
    pub delete: bool,
    /// Value (empty for deletes).
    pub value: String,
    /// create_revision of the key-value.
    pub create_rev: i64,
    /// version of the key-value.
    pub version: i64,
    /// Lease id attached.
    pub lease: i64,
    /// Recorder time (ns) when it was received.
    pub at: u64,
    /// Which response of this watcher carried it (0-based).
    pub response: u64,
}

impl SeenEvent {
    fn same_as(&self, o: &SeenEvent) -> bool {
        self.rev == o.rev
            && self.key == o.key
            && self.delete == o.delete
            && self.value == o.value
            && self.create_rev == o.create_rev
            && self.version == o.version
            && self.lease == o.lease
    }

    fn describe(&self) -> String {
        if self.delete {
            format!("@{} DELETE {}", self.rev, self.key)
        } else {
            format!(
                "@{} PUT {}={:?} (create {}, version {}, lease {:x})",
                self.rev, self.key, self.value, self.create_rev, self.version, self.lease
            )
        }
    }
}

/// `range_end` covering every key with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn convert(e: &mvccpb::Event, at: u64, response: u64) -> Option<SeenEvent> {
    let kv = e.kv.as_ref()?;
    Some(SeenEvent {
        rev: kv.mod_revision,
        key: String::from_utf8_lossy(&kv.key).to_string(),
        delete: e.r#type == mvccpb::event::EventType::Delete as i32,
        value: String::from_utf8_lossy(&kv.value).to_string(),
        create_rev: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
        at,
        response,
    })
}

/// What a watcher collected.
#[derive(Default)]
pub struct WatcherState {
    /// Events in arrival order.
    pub events: Vec<SeenEvent>,
    /// Next revision to watch from.
    pub next_rev: i64,
    /// Streams opened (1 + resumes).
    pub streams: usize,
    /// Responses received.
    pub responses: u64,
    /// Errors that caused resumes, and protocol problems (cancel, compaction).
    pub errors: Vec<String>,
    /// Protocol violations noticed while running (e.g. a response with events of a revision
    /// below one already delivered).
    pub violations: Vec<String>,
}

/// A running watcher bound to a member position.
pub struct Watcher {
    /// Member position.
    pub position: usize,
    /// Collected state.
    pub state: Arc<Mutex<WatcherState>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Start watching `prefix` from revision 1 on the member at `position`. The watcher runs
    /// until `until` holds a revision it has reached.
    pub fn spawn(
        position: usize,
        topology: Topology,
        prefix: String,
        recorder: Recorder,
        until: watch::Receiver<Option<i64>>,
    ) -> Watcher {
        let state = Arc::new(Mutex::new(WatcherState {
            next_rev: 1,
            ..Default::default()
        }));
        let task = tokio::spawn(watch_loop(
            position,
            topology,
            prefix,
            recorder,
            until,
            state.clone(),
        ));
        Watcher {
            position,
            state,
            task,
        }
    }

    /// Wait up to `timeout` for the watcher to reach its target; false if it did not.
    pub async fn finish(&mut self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(_) => true,
            Err(_) => {
                self.task.abort();
                false
            }
        }
    }
}

fn reached(state: &Mutex<WatcherState>, until: &watch::Receiver<Option<i64>>) -> bool {
    match *until.borrow() {
        Some(target) => state.lock().next_rev > target,
        None => false,
    }
}

async fn watch_loop(
    position: usize,
    topology: Topology,
    prefix: String,
    recorder: Recorder,
    mut until: watch::Receiver<Option<i64>>,
    state: Arc<Mutex<WatcherState>>,
) {
    loop {
        if reached(&state, &until) {
            return;
        }
        let url = topology.url(position);
        let err = watch_once(
            &url, &topology, position, &prefix, &recorder, &mut until, &state,
        )
        .await;
        match err {
            None => return,
            Some(e) => {
                state.lock().errors.push(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One watch stream; `None` when the target was reached, else why the stream ended.
async fn watch_once(
    url: &str,
    topology: &Topology,
    position: usize,
    prefix: &str,
    recorder: &Recorder,
    until: &mut watch::Receiver<Option<i64>>,
    state: &Mutex<WatcherState>,
) -> Option<String> {
    let ch = match channel(url) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let mut client = WatchClient::new(ch);
    let (tx, rx) = mpsc::channel(4);
    let start = {
        let mut s = state.lock();
        s.streams += 1;
        s.next_rev
    };
    let create = pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            start_revision: start,
            ..Default::default()
        })),
    };
    if tx.send(create).await.is_err() {
        return Some("request channel closed".into());
    }
    let opened = tokio::time::timeout(
        Duration::from_secs(2),
        client.watch(ReceiverStream::new(rx)),
    )
    .await;
    let mut stream = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return Some(format!("watch: {:?} {}", s.code(), s.message())),
        Err(_) => return Some("watch: open timed out".into()),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Some("stream ended".into()),
                    Err(s) => return Some(format!("stream: {:?} {}", s.code(), s.message())),
                };
                if resp.canceled {
                    return Some(format!(
                        "watch canceled (compact revision {}): {}",
                        resp.compact_revision, resp.cancel_reason
                    ));
                }
                if resp.events.is_empty() {
                    continue;
                }
                let at = recorder.now();
                let mut s = state.lock();
                let idx = s.responses;
                s.responses += 1;
                let mut last = s.next_rev - 1;
                for e in &resp.events {
                    let Some(ev) = convert(e, at, idx) else {
                        s.violations.push(format!("response {idx}: event without kv"));
                        continue;
                    };
                    if ev.rev < last {
                        s.violations.push(format!(
                            "response {idx}: {} after revision {last}",
                            ev.describe()
                        ));
                    }
                    last = last.max(ev.rev);
                    s.events.push(ev);
                }
                s.next_rev = last + 1;
                drop(s);
                if reached(state, until) {
                    return None;
                }
            }
            _ = until.changed() => {
                if reached(state, until) {
                    return None;
                }
            }
            _ = tick.tick() => {
                // Follow a membership change of this position.
                if topology.url(position) != url {
                    return Some(format!("member at position {position} replaced"));
                }
            }
        }
    }
}

/// The full event history of `prefix` on the member at `url`, up to and including revision
/// `until` (a watch from revision 1).
pub async fn fetch_history(
    url: &str,
    prefix: &str,
    until: i64,
    recorder: &Recorder,
    timeout: Duration,
) -> Result<Vec<SeenEvent>, String> {
    let topology_free = async {
        let ch = channel(url).map_err(|e| e.to_string())?;
        let mut client = WatchClient::new(ch);
        let (tx, rx) = mpsc::channel(4);
        let create = pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                start_revision: 1,
                ..Default::default()
            })),
        };
        tx.send(create)
            .await
            .map_err(|_| "request channel closed".to_string())?;
        let mut stream = client
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("watch: {:?} {}", s.code(), s.message()))?
            .into_inner();
        let mut out: Vec<SeenEvent> = Vec::new();
        let mut idx = 0;
        loop {
            let resp = stream
                .message()
                .await
                .map_err(|s| format!("stream: {:?} {}", s.code(), s.message()))?
                .ok_or_else(|| "stream ended".to_string())?;
            if resp.canceled {
                return Err(format!("watch canceled: {}", resp.cancel_reason));
            }
            let at = recorder.now();
            for e in &resp.events {
                if let Some(ev) = convert(e, at, idx) {
                    out.push(ev);
                }
            }
            idx += 1;
            if out.last().is_some_and(|e| e.rev >= until) {
                // Keep tx alive until here so the server does not see the stream closing.
                drop(tx);
                return Ok(out);
            }
        }
    };
    match tokio::time::timeout(timeout, topology_free).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "history of {url} did not reach revision {until} in {timeout:?}"
        )),
    }
}

/// Compare one watcher's events with the reference history; returns violations.
pub fn check_watcher(name: &str, seen: &[SeenEvent], reference: &[SeenEvent]) -> Vec<String> {
    let mut v = Vec::new();
    let mut by_rev: BTreeMap<i64, Vec<&SeenEvent>> = BTreeMap::new();
    for e in reference {
        by_rev.entry(e.rev).or_default().push(e);
    }
    let mut seen_by_rev: BTreeMap<i64, Vec<&SeenEvent>> = BTreeMap::new();
    let mut keys = HashSet::new();
    let mut prev = 0i64;
    for e in seen {
        if e.rev < prev {
            v.push(format!(
                "{name}: out of order: {} after revision {prev}",
                e.describe()
            ));
        }
        prev = prev.max(e.rev);
        if !keys.insert((e.rev, e.key.clone())) {
            v.push(format!("{name}: duplicate event {}", e.describe()));
        }
        seen_by_rev.entry(e.rev).or_default().push(e);
    }
    for (rev, evs) in &seen_by_rev {
        let responses: HashSet<u64> = evs.iter().map(|e| e.response).collect();
        if responses.len() > 1 {
            v.push(format!(
                "{name}: revision {rev} split over responses {responses:?}"
            ));
        }
        match by_rev.get(rev) {
            None => v.push(format!(
                "{name}: revision {rev} not in the reference history: {}",
                evs[0].describe()
            )),
            Some(want) => {
                let same = want.len() == evs.len()
                    && want.iter().zip(evs.iter()).all(|(a, b)| a.same_as(b));
                if !same && responses.len() <= 1 && !has_duplicates(evs) {
                    v.push(format!(
                        "{name}: revision {rev} differs: got [{}], reference [{}]",
                        list(evs),
                        list(want)
                    ));
                }
            }
        }
    }
    let last = seen.iter().map(|e| e.rev).max().unwrap_or(0);
    let missing: Vec<i64> = by_rev
        .keys()
        .copied()
        .filter(|r| *r <= last && !seen_by_rev.contains_key(r))
        .collect();
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(10).map(|r| r.to_string()).collect();
        v.push(format!(
            "{name}: {} revision(s) missing (gap), e.g. {}",
            missing.len(),
            shown.join(", ")
        ));
    }
    v
}

fn has_duplicates(evs: &[&SeenEvent]) -> bool {
    let mut keys = HashSet::new();
    evs.iter().any(|e| !keys.insert(e.key.clone()))
}

fn list(evs: &[&SeenEvent]) -> String {
    evs.iter()
        .map(|e| e.describe())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every member's history must be identical; returns violations.
pub fn check_members_agree(histories: &[(String, Vec<SeenEvent>)]) -> Vec<String> {
    let mut v = Vec::new();
    let Some((first_name, first)) = histories.first() else {
        return v;
    };
    for (name, h) in &histories[1..] {
        let n = first.len().min(h.len());
        if let Some(i) = (0..n).find(|&i| !first[i].same_as(&h[i])) {
            v.push(format!(
                "history of {name} differs from {first_name} at event {i}: {} vs {}",
                h[i].describe(),
                first[i].describe()
            ));
        } else if first.len() != h.len() {
            v.push(format!(
                "history of {name} has {} events, {first_name} has {}",
                h.len(),
                first.len()
            ));
        }
    }
    v
}

/// Acknowledged writes against the reference history: each acknowledged put / successful CAS is
/// there with its value at its revision; no value is written twice; every written value was
/// attempted by some client. Only keys under `prefix` are considered.
pub fn check_writes(history: &History, reference: &[SeenEvent], prefix: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut puts: HashMap<(&str, &str), Vec<&SeenEvent>> = HashMap::new();
    for e in reference.iter().filter(|e| e.key.starts_with(prefix)) {
        if !e.delete {
            puts.entry((e.key.as_str(), e.value.as_str()))
                .or_default()
                .push(e);
        }
    }
    let mut attempted: HashSet<(&str, &str)> = HashSet::new();
    for (i, op) in history.ops.iter().enumerate() {
        let (value, rev, acked) = match &op.kind {
            OpKind::Write { value, revision } => (value, *revision, op.outcome == Outcome::Ok),
            OpKind::Cas {
                new,
                succeeded,
                revision,
                ..
            }
            | OpKind::CasRevision {
                new,
                succeeded,
                revision,
                ..
            } => (
                new,
                *revision,
                op.outcome == Outcome::Ok && *succeeded == Some(true),
            ),
            _ => continue,
        };
        if op.outcome != Outcome::Fail {
            attempted.insert((op.key.as_str(), value.as_str()));
        }
        let found = puts.get(&(op.key.as_str(), value.as_str()));
        if acked {
            match found {
                None => v.push(format!("acknowledged write lost: {}", op.describe(i))),
                Some(evs) => {
                    if let Some(r) = rev {
                        if !evs.iter().any(|e| e.rev as u64 == r) {
                            v.push(format!(
                                "acknowledged write at revision {r} but history has it at {:?}: {}",
                                evs.iter().map(|e| e.rev).collect::<Vec<_>>(),
                                op.describe(i)
                            ));
                        }
                    }
                }
            }
        }
        if op.outcome == Outcome::Fail && found.is_some() {
            v.push(format!(
                "operation reported as failed took effect: {}",
                op.describe(i)
            ));
        }
        if (op.outcome == Outcome::Ok && !acked) && found.is_some() {
            v.push(format!(
                "compare-and-set reported false but its value was written: {}",
                op.describe(i)
            ));
        }
    }
    for ((key, value), evs) in &puts {
        if evs.len() > 1 {
            v.push(format!(
                "value {value:?} written {} times to {key} (revisions {:?})",
                evs.len(),
                evs.iter().map(|e| e.rev).collect::<Vec<_>>()
            ));
        }
        if !attempted.contains(&(*key, *value)) {
            v.push(format!(
                "{key}={value:?} appears in the history but was never attempted"
            ));
        }
    }
    v
}
