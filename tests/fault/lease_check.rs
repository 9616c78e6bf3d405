//! Lease checks.
//!
//! - *Keepers* (one per chosen member position) hold a lease with an attached key and keep it
//!   alive once a second. When the lease is lost anyway (keep-alives failed for longer than the
//!   TTL, so the lease legitimately expired) they start a new generation.
//! - An *expirer* keeps granting short leases with a key, sends 0–2 keep-alives and abandons
//!   them.
//!
//! Checks: (1) a lease's key is never deleted before `TTL` has passed since the send time of the
//! last successful keep-alive (or grant), unless we revoked it; the deletion time is when the
//! first watcher saw the DELETE, an upper bound of the real time. (2) After the run every lease
//! we created (or may have created: grants of unknown outcome) is gone from every member's lease
//! table and its key is absent on every member. (3) Every lease key that was put is deleted in
//! the history, at the same revision on every member.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::lease_client::LeaseClient;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::cluster::{channel, req, Topology};
use super::history::{fmt_time, Recorder};
use super::watch_check::SeenEvent;

/// Per-call deadline of lease RPCs.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Lease workload parameters.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Key prefix (under the watched prefix).
    pub prefix: String,
    /// TTL of kept leases (s).
    pub keep_ttl: i64,
    /// TTL of abandoned leases (s).
    pub expire_ttl: i64,
    /// Member positions running a keeper.
    pub keepers: Vec<usize>,
    /// Seed for lease ids and timing.
    pub seed: u64,
}

/// Which task created a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseKind {
    /// Kept alive until the lease is lost or the run ends.
    Kept,
    /// Abandoned after a few keep-alives.
    Expiring,
}

/// Everything known about one lease.
#[derive(Clone, Debug)]
pub struct LeaseRecord {
    /// Lease id (chosen by the client, so that grants of unknown outcome are tracked too).
    pub id: i64,
    /// Attached key.
    pub key: String,
    /// Granted TTL (s); the requested one until a grant answer arrives.
    pub ttl: i64,
    /// Which task owns it.
    pub kind: LeaseKind,
    /// Member position used.
    pub position: usize,
    /// Whether the grant was acknowledged.
    pub granted: bool,
    /// Whether the key put was acknowledged.
    pub put_ok: bool,
    /// Send times (recorder ns) of the grant and keep-alives answered with TTL > 0.
    pub successes: Vec<u64>,
    /// Keep-alives sent.
    pub keepalives_sent: usize,
    /// Time a keep-alive was answered with TTL 0 (lease gone).
    pub lost_at: Option<u64>,
    /// Time we sent a revoke.
    pub revoke_sent: Option<u64>,
}

/// Running lease tasks.
pub struct LeaseWorkload {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    records: Arc<Mutex<Vec<LeaseRecord>>>,
}

impl LeaseWorkload {
    /// Start keepers and the expirer.
    pub fn spawn(cfg: LeaseConfig, topology: Topology, recorder: Recorder) -> LeaseWorkload {
        let (stop, rx) = watch::channel(false);
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, &pos) in cfg.keepers.iter().enumerate() {
            let ctx = Ctx {
                cfg: cfg.clone(),
                topology: topology.clone(),
                recorder: recorder.clone(),
                records: records.clone(),
                rng: StdRng::seed_from_u64(cfg.seed ^ (0x1EA5E + i as u64)),
                stop: rx.clone(),
            };
            tasks.push(tokio::spawn(keeper(ctx, pos, i)));
        }
        let ctx = Ctx {
            cfg: cfg.clone(),
            topology,
            recorder,
            records: records.clone(),
            rng: StdRng::seed_from_u64(cfg.seed ^ 0x0E4B_12E5),
            stop: rx,
        };
        tasks.push(tokio::spawn(expirer(ctx)));
        LeaseWorkload {
            stop,
            tasks,
            records,
        }
    }

    /// Stop the tasks (keepers revoke their current lease) and return all records.
    pub async fn stop(self) -> Vec<LeaseRecord> {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let r = self.records.lock().clone();
        r
    }
}

struct Ctx {
    cfg: LeaseConfig,
    topology: Topology,
    recorder: Recorder,
    records: Arc<Mutex<Vec<LeaseRecord>>>,
    rng: StdRng,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn update(&self, idx: usize, f: impl FnOnce(&mut LeaseRecord)) {
        if let Some(r) = self.records.lock().get_mut(idx) {
            f(r);
        }
    }

    fn lease_client(&self, position: usize) -> Option<LeaseClient<Channel>> {
        channel(&self.topology.url(position))
            .ok()
            .map(LeaseClient::new)
    }

    fn kv_client(&self, position: usize) -> Option<KvClient<Channel>> {
        channel(&self.topology.url(position))
            .ok()
            .map(KvClient::new)
    }

    /// Grant a lease with a fresh id and record it; returns the record index and whether the
    /// grant was acknowledged.
    async fn grant(&mut self, kind: LeaseKind, position: usize, key: String, ttl: i64) -> usize {
        let id = self.rng.gen_range(1..i64::MAX / 2);
        let idx = {
            let mut recs = self.records.lock();
            recs.push(LeaseRecord {
                id,
                key,
                ttl,
                kind,
                position,
                granted: false,
                put_ok: false,
                successes: Vec::new(),
                keepalives_sent: 0,
                lost_at: None,
                revoke_sent: None,
            });
            recs.len() - 1
        };
        let Some(mut lc) = self.lease_client(position) else {
            return idx;
        };
        let sent = self.recorder.now();
        let r = tokio::time::timeout(
            RPC_TIMEOUT,
            lc.lease_grant(req(pb::LeaseGrantRequest { ttl, id }, RPC_TIMEOUT)),
        )
        .await;
        if let Ok(Ok(resp)) = r {
            let resp = resp.into_inner();
            self.update(idx, |rec| {
                rec.granted = true;
                rec.ttl = resp.ttl.max(ttl);
                rec.successes.push(sent);
            });
        }
        idx
    }

    /// Put the record's key attached to its lease; true when acknowledged.
    async fn put_key(&self, idx: usize) -> bool {
        let (id, key, position) = {
            let recs = self.records.lock();
            let r = &recs[idx];
            (r.id, r.key.clone(), r.position)
        };
        let Some(mut kv) = self.kv_client(position) else {
            return false;
        };
        let put = pb::PutRequest {
            key: key.into_bytes(),
            value: format!("lease-{id:x}").into_bytes(),
            lease: id,
            ..Default::default()
        };
        let r = tokio::time::timeout(RPC_TIMEOUT, kv.put(req(put, RPC_TIMEOUT))).await;
        let ok = matches!(r, Ok(Ok(_)));
        if ok {
            self.update(idx, |rec| rec.put_ok = true);
        }
        ok
    }

    /// One keep-alive on a fresh stream; `Some(ttl)` when answered.
    async fn keep_alive_once(&self, idx: usize) -> Option<i64> {
        let (id, position) = {
            let recs = self.records.lock();
            (recs[idx].id, recs[idx].position)
        };
        let mut lc = self.lease_client(position)?;
        let (tx, rx) = mpsc::channel(1);
        let sent = self.recorder.now();
        self.update(idx, |r| r.keepalives_sent += 1);
        tx.send(pb::LeaseKeepAliveRequest { id }).await.ok()?;
        let call = async {
            let mut stream = lc
                .lease_keep_alive(ReceiverStream::new(rx))
                .await
                .ok()?
                .into_inner();
            stream.message().await.ok().flatten()
        };
        let resp = tokio::time::timeout(RPC_TIMEOUT, call)
            .await
            .ok()
            .flatten()?;
        drop(tx);
        let now = self.recorder.now();
        self.update(idx, |r| {
            if resp.ttl > 0 {
                r.successes.push(sent);
            } else if r.lost_at.is_none() {
                r.lost_at = Some(now);
            }
        });
        Some(resp.ttl)
    }

    async fn revoke(&self, idx: usize) {
        let (id, position) = {
            let recs = self.records.lock();
            (recs[idx].id, recs[idx].position)
        };
        let sent = self.recorder.now();
        self.update(idx, |r| {
            r.revoke_sent.get_or_insert(sent);
        });
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            let Some(mut lc) = self.lease_client(position) else {
                return;
            };
            let r = tokio::time::timeout(
                RPC_TIMEOUT,
                lc.lease_revoke(req(pb::LeaseRevokeRequest { id }, RPC_TIMEOUT)),
            )
            .await;
            match r {
                Ok(Ok(_)) => return,
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => return,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn last_success(&self, idx: usize) -> Option<u64> {
        self.records.lock()[idx].successes.last().copied()
    }

    fn ttl_ns(&self, idx: usize) -> u64 {
        secs_ns(self.records.lock()[idx].ttl)
    }
}

fn secs_ns(s: i64) -> u64 {
    u64::try_from(s).unwrap_or(0).saturating_mul(1_000_000_000)
}

async fn keeper(mut ctx: Ctx, position: usize, keeper_no: usize) {
    let mut generation = 0;
    while !ctx.stopped() {
        generation += 1;
        let key = format!("{}keep{keeper_no}-g{generation}", ctx.cfg.prefix);
        let ttl = ctx.cfg.keep_ttl;
        let idx = ctx.grant(LeaseKind::Kept, position, key, ttl).await;
        if ctx.last_success(idx).is_none() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        // Attach the key; give up on this generation once the lease may have expired.
        let ttl_ns = ctx.ttl_ns(idx);
        let mut attached = false;
        while !ctx.stopped() {
            if ctx.put_key(idx).await {
                attached = true;
                break;
            }
            let alive_until = ctx.last_success(idx).unwrap_or(0) + ttl_ns;
            if ctx.recorder.now() > alive_until {
                break;
            }
            if let Some(0) = ctx.keep_alive_once(idx).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !attached {
            continue;
        }
        // Keep it alive until the run ends or the lease is gone.
        let mut lost = false;
        while !ctx.stopped() {
            let next = Instant::now() + Duration::from_millis(500);
            if let Some(0) = ctx.keep_alive_once(idx).await {
                lost = true;
                break;
            }
            let mut stop = ctx.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
        if !lost {
            ctx.revoke(idx).await;
        }
    }
}

async fn expirer(mut ctx: Ctx) {
    let mut n = 0usize;
    while !ctx.stopped() {
        n += 1;
        let position = ctx.rng.gen_range(0..ctx.topology.len().max(1));
        let key = format!("{}exp-{n}", ctx.cfg.prefix);
        let ttl = ctx.cfg.expire_ttl;
        let idx = ctx.grant(LeaseKind::Expiring, position, key, ttl).await;
        if ctx.last_success(idx).is_some() && ctx.put_key(idx).await {
            let keepalives = ctx.rng.gen_range(0..3);
            for _ in 0..keepalives {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = ctx.keep_alive_once(idx).await;
            }
        }
        let pause = ctx.rng.gen_range(1500..3000);
        let mut stop = ctx.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Counts for the report.
#[derive(Clone, Debug, Default)]
pub struct LeaseStats {
    /// Leases attempted (granted or unknown).
    pub leases: usize,
    /// Grants acknowledged.
    pub granted: usize,
    /// Keys attached.
    pub keys: usize,
    /// Keep-alives sent / answered with TTL > 0.
    pub keepalives: (usize, usize),
    /// Kept leases lost (keep-alives failed longer than the TTL).
    pub kept_lost: usize,
}

/// Summarize records.
pub fn stats(records: &[LeaseRecord]) -> LeaseStats {
    let mut s = LeaseStats {
        leases: records.len(),
        ..Default::default()
    };
    for r in records {
        s.granted += usize::from(r.granted);
        s.keys += usize::from(r.put_ok);
        s.keepalives.0 += r.keepalives_sent;
        s.keepalives.1 += r.successes.len().saturating_sub(usize::from(r.granted));
        if r.kind == LeaseKind::Kept && r.lost_at.is_some() {
            s.kept_lost += 1;
        }
    }
    s
}

/// Check (1): no lease key deleted while its lease must still be alive. `seen` are the events of
/// all live watchers (for first-observation times).
pub fn check_early_deletes(records: &[LeaseRecord], seen: &[&[SeenEvent]]) -> Vec<String> {
    let mut first_delete: HashMap<&str, u64> = HashMap::new();
    for evs in seen {
        for e in evs.iter().filter(|e| e.delete) {
            let t = first_delete.entry(e.key.as_str()).or_insert(e.at);
            *t = (*t).min(e.at);
        }
    }
    let mut v = Vec::new();
    for r in records {
        let Some(&deleted) = first_delete.get(r.key.as_str()) else {
            continue;
        };
        if r.revoke_sent.is_some_and(|t| t <= deleted) {
            continue;
        }
        let ttl = secs_ns(r.ttl);
        if let Some(&s) = r.successes.iter().rev().find(|&&s| deleted < s + ttl) {
            v.push(format!(
                "lease {:x} ({:?}, ttl {}s): key {} deleted (first seen at {}) before the lease \
                 could expire: a keep-alive sent at {} succeeded (alive until at least {})",
                r.id,
                r.kind,
                r.ttl,
                r.key,
                fmt_time(deleted),
                fmt_time(s),
                fmt_time(s + ttl)
            ));
        }
    }
    v
}

/// Check (2): after the run, every lease is gone from every member and its key absent there.
/// Polls until `timeout`; returns violations left at the deadline.
pub async fn check_cleanup(
    records: &[LeaseRecord],
    urls: &[String],
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut v = Vec::new();
        for url in urls {
            let Ok(ch) = channel(url) else {
                v.push(format!("{url}: bad url"));
                continue;
            };
            let mut lc = LeaseClient::new(ch.clone());
            let mut kv = KvClient::new(ch);
            let leases = tokio::time::timeout(
                RPC_TIMEOUT,
                lc.lease_leases(req(pb::LeaseLeasesRequest {}, RPC_TIMEOUT)),
            )
            .await;
            match leases {
                Ok(Ok(l)) => {
                    let ids: Vec<i64> = l.into_inner().leases.iter().map(|l| l.id).collect();
                    for r in records {
                        if ids.contains(&r.id) {
                            v.push(format!("{url}: lease {:x} ({}) still exists", r.id, r.key));
                        }
                    }
                }
                _ => v.push(format!("{url}: LeaseLeases failed")),
            }
            for r in records.iter().filter(|r| r.put_ok || r.granted) {
                let get = pb::RangeRequest {
                    key: r.key.clone().into_bytes(),
                    serializable: true,
                    ..Default::default()
                };
                match tokio::time::timeout(RPC_TIMEOUT, kv.range(req(get, RPC_TIMEOUT))).await {
                    Ok(Ok(resp)) if resp.get_ref().kvs.is_empty() => {}
                    Ok(Ok(_)) => v.push(format!("{url}: key {} still exists", r.key)),
                    _ => v.push(format!("{url}: range {} failed", r.key)),
                }
            }
        }
        if v.is_empty() || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Check (3): in every member's history, each lease key that was put is deleted, and at the same
/// revision everywhere.
pub fn check_delete_revisions(
    records: &[LeaseRecord],
    histories: &[(String, Vec<SeenEvent>)],
) -> Vec<String> {
    let mut v = Vec::new();
    let mut per_key: BTreeMap<&str, Vec<(String, Option<i64>)>> = BTreeMap::new();
    for (name, h) in histories {
        let mut put: HashMap<&str, bool> = HashMap::new();
        let mut del: HashMap<&str, i64> = HashMap::new();
        for e in h {
            if e.delete {
                del.insert(e.key.as_str(), e.rev);
            } else {
                put.insert(e.key.as_str(), true);
            }
        }
        for r in records {
            if put.contains_key(r.key.as_str()) {
                per_key
                    .entry(r.key.as_str())
                    .or_default()
                    .push((name.clone(), del.get(r.key.as_str()).copied()));
            }
        }
    }
    for (key, revs) in per_key {
        if revs.iter().any(|(_, r)| r.is_none()) {
            v.push(format!(
                "lease key {key} was never deleted on some member: {revs:?}"
            ));
            continue;
        }
        let first = revs[0].1;
        if revs.iter().any(|(_, r)| *r != first) {
            v.push(format!(
                "lease key {key} deleted at different revisions: {revs:?}"
            ));
        }
    }
    v
}
