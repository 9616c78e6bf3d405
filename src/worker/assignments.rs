//! The worker's assignment loop: a snapshot of `/resources/` and `/crawler/specs/` then a watch
//! of both from the next revision, keeping the runs in line with what is assigned here and with
//! their specs; failed runs are retried; progress is published.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::progress;
use super::registration::{registration_alive, registration_lost, RegState};
use super::retry::{self, MAX_BACKOFF};
use super::specs::SpecBook;
use super::table::{Entry, Shared, HEALTH_SERVICE};
use crate::client::{
    prefix_range_end, EventType, KeyValue, KvClient, KvClientExt, KvError, RangeRequest, RequestOp,
    ResponseOp, TxnRequest, WatchSpec,
};
use crate::model::resource::{is_assigned_to, Resource};
use crate::model::runner::{TaskRunner, TaskSpec};
use crate::model::spec::SPEC_PREFIX;

/// Follows `/resources/` and `/crawler/specs/` and keeps the runs in line with the assignments
/// and their specs.
pub(super) struct Assigner {
    pub(super) client: Arc<dyn KvClient>,
    pub(super) prefix: String,
    pub(super) retry: retry::RetryPolicy,
    pub(super) specs: SpecBook,
    pub(super) runner: Arc<dyn TaskRunner>,
    pub(super) shared: Arc<Shared>,
    pub(super) health: tonic_health::server::HealthReporter,
}

/// Why a watch session ended.
enum SessionEnd {
    Stopped,
    Restart,
}

impl Assigner {
    pub(super) async fn run(
        self,
        mut stop: watch::Receiver<bool>,
        mut registered: watch::Receiver<RegState>,
    ) {
        let mut backoff = Duration::from_millis(100);
        // Losses already acted on.
        let mut seen = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            let end = self.session(&mut stop, &mut registered, &mut seen).await;
            // Between sessions the assignments are not watched.
            self.shared.watching.store(false, Ordering::Release);
            match end {
                Ok(SessionEnd::Stopped) => break,
                Ok(SessionEnd::Restart) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "worker: reading assignments failed, retrying");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = registration_lost(&mut registered, seen) => self.on_registration_lost().await,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        self.stop_all("worker stopping").await;
    }

    /// Our registration lease is gone or presumed gone: the master has reassigned (or will) our
    /// resources, so running them on would duplicate work. Everything stops; the next session
    /// waits until the registry has re-registered, then starts what is still ours.
    async fn on_registration_lost(&self) {
        self.shared.watching.store(false, Ordering::Release);
        self.health
            .set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::NotServing)
            .await;
        self.stop_all("registration lease lost").await;
    }

    /// One snapshot + watch session; `Restart` when the watch ended and a new snapshot is needed.
    async fn session(
        &self,
        stop: &mut watch::Receiver<bool>,
        registered: &mut watch::Receiver<RegState>,
        seen: &mut u64,
    ) -> Result<SessionEnd, KvError> {
        let state = *registered.borrow_and_update();
        if !state.alive || state.losses > *seen {
            self.on_registration_lost().await;
            tokio::select! {
                _ = stop.changed() => return Ok(SessionEnd::Stopped),
                _ = registration_alive(registered) => {}
            }
        }
        *seen = registered.borrow().losses;
        let seen = *seen;
        let (revision, kvs, specs) = tokio::select! {
            _ = stop.changed() => return Ok(SessionEnd::Stopped),
            _ = registration_lost(registered, seen) => {
                self.on_registration_lost().await;
                return Ok(SessionEnd::Restart);
            }
            snap = self.snapshot() => snap?,
        };
        self.specs.load(&specs);
        self.reconcile(kvs).await;
        self.shared
            .synced_revision
            .fetch_max(revision, Ordering::AcqRel);
        self.health
            .set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::Serving)
            .await;
        self.shared.watching.store(true, Ordering::Release);
        tracing::info!(
            revision,
            running = self.shared.table.lock().len(),
            "worker: assignments loaded"
        );

        let spec = WatchSpec::prefix(self.prefix.clone()).from_revision(revision + 1);
        let mut stream = self.client.watch(spec).await?;
        let spec = WatchSpec::prefix(SPEC_PREFIX).from_revision(revision + 1);
        let mut spec_stream = self.client.watch(spec).await?;
        let mut retry_tick = tokio::time::interval(self.retry.tick());
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress_tick = tokio::time::interval(progress::TICK);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let item = tokio::select! {
                _ = stop.changed() => return Ok(SessionEnd::Stopped),
                _ = retry_tick.tick() => {
                    self.retry_failed().await;
                    continue;
                }
                _ = progress_tick.tick() => {
                    self.publish_progress().await;
                    continue;
                }
                item = spec_stream.next() => {
                    match item {
                        Some(Ok(batch)) => {
                            for ev in &batch.events {
                                match ev.kind {
                                    EventType::Put => {
                                        if let Some(name) = self.specs.put(&ev.kv) {
                                            self.on_spec_changed(&name).await;
                                        }
                                    }
                                    EventType::Delete => self.specs.delete(&ev.kv.key),
                                }
                            }
                            continue;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "worker: spec watch ended; reloading assignments");
                            return Ok(SessionEnd::Restart);
                        }
                        None => {
                            tracing::warn!("worker: spec watch closed; reloading assignments");
                            return Ok(SessionEnd::Restart);
                        }
                    }
                }
                _ = registration_lost(registered, seen) => {
                self.on_registration_lost().await;
                return Ok(SessionEnd::Restart);
            }
                item = stream.next() => item,
            };
            match item {
                Some(Ok(batch)) => {
                    for ev in &batch.events {
                        let Some(name) = self.key_name(&ev.kv.key) else {
                            continue;
                        };
                        match ev.kind {
                            EventType::Put => self.on_put(name, &ev.kv).await,
                            EventType::Delete => self.stop_one(&name, "resource deleted").await,
                        }
                    }
                    let rev = batch
                        .events
                        .last()
                        .map_or(batch.revision, |e| e.kv.mod_revision);
                    self.shared.synced_revision.fetch_max(rev, Ordering::AcqRel);
                }
                Some(Err(KvError::Compacted { compact_revision })) => {
                    tracing::warn!(
                        compact_revision,
                        "worker: watch fell behind a compaction; reloading assignments"
                    );
                    return Ok(SessionEnd::Restart);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "worker: resource watch ended; reloading assignments");
                    return Ok(SessionEnd::Restart);
                }
                None => {
                    tracing::warn!("worker: resource watch closed; reloading assignments");
                    return Ok(SessionEnd::Restart);
                }
            }
        }
    }

    /// Every resource and every spec, and the revision they were read at, in one consistent
    /// read.
    async fn snapshot(&self) -> Result<(i64, Vec<KeyValue>, Vec<KeyValue>), KvError> {
        let range = |prefix: &[u8]| {
            RequestOp::Range(RangeRequest {
                range_end: prefix_range_end(prefix),
                key: prefix.to_vec(),
                ..RangeRequest::default()
            })
        };
        let txn = TxnRequest {
            compare: Vec::new(),
            success: vec![range(self.prefix.as_bytes()), range(SPEC_PREFIX.as_bytes())],
            failure: Vec::new(),
        };
        let reply = self.client.txn(txn).await?;
        let mut ranges = reply.body.responses.into_iter().map(|r| match r {
            ResponseOp::Range(r) => r.kvs,
            _ => Vec::new(),
        });
        let kvs = ranges.next().unwrap_or_default();
        let specs = ranges.next().unwrap_or_default();
        Ok((reply.revision, kvs, specs))
    }

    /// `/resources/<name>` → `<name>`.
    fn key_name(&self, key: &[u8]) -> Option<String> {
        let name = key.strip_prefix(self.prefix.as_bytes())?;
        if name.is_empty() {
            return None;
        }
        Some(String::from_utf8_lossy(name).into_owned())
    }

    fn decode(&self, name: &str, kv: &KeyValue) -> Option<Resource> {
        match serde_json::from_slice::<Resource>(&kv.value) {
            Ok(mut r) => {
                if r.name.is_empty() {
                    r.name = name.to_string();
                }
                Some(r)
            }
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "worker: undecodable resource");
                None
            }
        }
    }

    /// Bring the runs in line with a full list of resources.
    async fn reconcile(&self, kvs: Vec<KeyValue>) {
        let mut mine: BTreeMap<String, (Resource, i64)> = BTreeMap::new();
        for kv in &kvs {
            let Some(name) = self.key_name(&kv.key) else {
                continue;
            };
            if let Some(r) = self.decode(&name, kv) {
                if is_assigned_to(&r, &self.shared.node_id) {
                    mine.insert(name, (r, kv.mod_revision));
                }
            }
        }
        let gone: Vec<String> = self
            .shared
            .table
            .lock()
            .keys()
            .filter(|k| !mine.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            self.stop_one(&name, "no longer assigned here").await;
        }
        for (name, (r, rev)) in mine {
            self.ensure_running(name, r, rev).await;
        }
    }

    async fn on_put(&self, name: String, kv: &KeyValue) {
        match self.decode(&name, kv) {
            Some(r) if is_assigned_to(&r, &self.shared.node_id) => {
                self.ensure_running(name, r, kv.mod_revision).await
            }
            Some(r) if r.assigned_node.is_empty() => self.stop_one(&name, "unassigned").await,
            Some(_) => self.stop_one(&name, "moved to another worker").await,
            None => self.stop_one(&name, "resource value unreadable").await,
        }
    }

    async fn ensure_running(&self, name: String, r: Resource, mod_revision: i64) {
        let current = self
            .shared
            .table
            .lock()
            .get(&name)
            .map(|e| e.resource.id.clone());
        match current {
            Some(id) if id == r.id => {
                // Same run; keep the latest value (the address part may have changed).
                if let Some(e) = self.shared.table.lock().get_mut(&name) {
                    e.resource = r;
                    e.mod_revision = mod_revision;
                }
                // A spec that changed while the watch was down (this is a reload).
                self.on_spec_changed(&name).await;
                return;
            }
            Some(_) => {
                self.stop_one(&name, "resource recreated with a new ID")
                    .await
            }
            None => {}
        }
        let entry = self.start_entry(r, mod_revision).await;
        tracing::info!(task = %entry.resource.name, resource = %entry.resource.id, "worker: resource assigned here");
        self.shared.table.lock().insert(name, entry);
    }

    /// Start the run of `r` (an entry recording the error if it cannot start).
    async fn start_entry(&self, r: Resource, mod_revision: i64) -> Entry {
        // The spec and the resource of a new task are written in one txn but come through two
        // watches: a resource seen first reads its spec from the store.
        let task = match self.specs.stored(&r.name) {
            Some(t) => Some(t),
            None => {
                self.fetch_spec(&r.name).await;
                self.specs.get(&r.name)
            }
        };
        let mut entry = Entry {
            resource: r,
            started: SystemTime::now(),
            handle: None,
            error: None,
            retry: retry::RetryState::default(),
            task: task.clone(),
            mod_revision,
            published: None,
        };
        let r = &entry.resource;
        match task {
            None => {
                let msg = format!(
                    "no spec for task {:?}: none in the store ({SPEC_PREFIX}{}) nor in this worker's [[Tasks]]; add one with `crawler task add`",
                    r.name, r.name
                );
                tracing::error!(resource = %r.id, "{msg}");
                entry.error = Some(msg);
            }
            Some(task) => {
                let spec = TaskSpec {
                    resource: r.clone(),
                    task,
                };
                match self.runner.start(spec).await {
                    Ok(h) => entry.handle = Some(h),
                    Err(e) => {
                        tracing::error!(task = %r.name, resource = %r.id, error = %e, "task failed to start");
                        entry.error = Some(e.to_string());
                    }
                }
            }
        }
        entry
    }

    /// Read the spec of `name` from the store into the book (errors: the watch brings it).
    async fn fetch_spec(&self, name: &str) {
        match self.client.get(crate::model::spec::spec_key(name)).await {
            Ok(reply) => {
                if let Some(kv) = reply.body {
                    self.specs.put(&kv);
                }
            }
            Err(e) => tracing::debug!(task = %name, error = %e, "worker: reading the spec failed"),
        }
    }

    /// The spec of `name` changed (or appeared): a run of it starts again with the new spec,
    /// from its checkpoint (the resource, and so the checkpoint's ID, is unchanged).
    async fn on_spec_changed(&self, name: &str) {
        let want = self.specs.get(name);
        let old = {
            let mut table = self.shared.table.lock();
            match table.get(name) {
                Some(e) if e.task != want && want.is_some() => table.remove(name),
                _ => None,
            }
        };
        let Some(old) = old else {
            return;
        };
        tracing::info!(task = %name, resource = %old.resource.id, "worker: task spec changed; restarting the run from its checkpoint");
        if let Some(h) = old.handle {
            h.stop().await;
        }
        let entry = self.start_entry(old.resource, old.mod_revision).await;
        self.shared.table.lock().insert(name.to_string(), entry);
    }

    /// Publish the progress of every run whose report is due.
    async fn publish_progress(&self) {
        let now = tokio::time::Instant::now().into_std();
        let due: Vec<(String, i64, crate::model::spec::TaskProgress)> = self
            .shared
            .table
            .lock()
            .iter()
            .filter_map(|(name, e)| {
                progress::due(e, &self.shared.node_id, now)
                    .map(|p| (name.clone(), e.mod_revision, p))
            })
            .collect();
        for (name, rev, p) in due {
            let key = format!("{}{name}", self.prefix);
            match progress::publish(self.client.as_ref(), &key, rev, &name, &p).await {
                Ok(true) => {
                    if let Some(e) = self.shared.table.lock().get_mut(&name) {
                        if e.resource.id == p.resource_id {
                            progress::mark(e, &p, now);
                        }
                    }
                }
                // The resource changed since: the watch brings the new revision.
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(task = %name, error = %e, "worker: publishing progress failed");
                    return;
                }
            }
        }
    }

    /// Start failed runs again once their backoff is over, at most `retry.max_retries` times;
    /// a task without a spec is not retried (it starts when its spec appears).
    async fn retry_failed(&self) {
        let now = tokio::time::Instant::now();
        let mut due = Vec::new();
        for (name, e) in self.shared.table.lock().iter_mut() {
            if e.task.is_none() || e.retry.retries >= self.retry.max_retries {
                continue;
            }
            let Some(error) = e.failure() else {
                continue;
            };
            match e.retry.next {
                None => {
                    let delay = self.retry.delay(e.retry.retries);
                    tracing::warn!(task = %e.resource.name, resource = %e.resource.id, %error, retry_in = ?delay, "task failed; will retry");
                    e.retry.last_error = Some(error);
                    e.retry.next = Some(now + delay);
                }
                Some(at) if at <= now => due.push(name.clone()),
                Some(_) => {}
            }
        }
        for name in due {
            let Some(old) = self.shared.table.lock().remove(&name) else {
                continue;
            };
            if let Some(h) = old.handle {
                h.stop().await;
            }
            let mut entry = self.start_entry(old.resource, old.mod_revision).await;
            entry.retry = retry::RetryState {
                retries: old.retry.retries + 1,
                next: None,
                last_error: old.retry.last_error,
            };
            tracing::info!(task = %entry.resource.name, resource = %entry.resource.id, retry = entry.retry.retries, "task started again");
            self.shared.table.lock().insert(name, entry);
        }
    }

    async fn stop_one(&self, name: &str, why: &str) {
        let entry = self.shared.table.lock().remove(name);
        if let Some(e) = entry {
            tracing::info!(task = %e.resource.name, resource = %e.resource.id, reason = why, "worker: stopping task");
            if let Some(h) = e.handle {
                h.stop().await;
            }
        }
    }

    async fn stop_all(&self, why: &str) {
        let names: Vec<String> = self.shared.table.lock().keys().cloned().collect();
        for name in names {
            self.stop_one(&name, why).await;
        }
    }
}
