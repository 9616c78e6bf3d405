//! One task run: resume, the loop that keeps up to `Concurrency` visits in flight, checkpoints,
//! and the done mark.
//!
//! 1. reads the resource key and keeps its value as the guard of every store write
//!    ([`OwnerGuard`]); a task already marked done for this resource is not run again;
//! 2. resumes from the latest checkpoint of this resource (base + deltas), else starts from the
//!    seeds;
//! 3. hands requests out to visits (up to `Concurrency` at once; each waits for its host's
//!    politeness), and as each completes: items to the sink, links (in the allowed domains,
//!    within `MaxDepth`, not seen before unless `Reload`) to the frontier;
//! 4. checkpoints every `CheckpointPages` requests or `CheckpointInterval` seconds: the sink is
//!    synced first, so a checkpoint never counts items that are not durable (a failing sync is
//!    retried with backoff, and no checkpoint is written until it succeeds); requests still in
//!    flight stay pending in it;
//! 5. when nothing is pending or in flight, marks the task done.
//!
//! Stop (resource deleted or moved away, worker stopping) cancels the visits in flight, writes
//! a last guarded checkpoint (bounded in time) and ends. After a crash, the next owner fetches
//! again what was in flight or done after the last checkpoint: at most `Concurrency` +
//! `CheckpointPages` requests, or `CheckpointInterval` seconds of crawling.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use url::Url;

use super::checkpoint::{CheckpointError, CheckpointStore, Checkpointer, OwnerGuard};
use super::frontier::{Counters, Frontier, Ticket};
use super::request::Request;
use super::scope::host_allowed;
use super::sink::Sink;
use super::status::Status;
use super::visit::{Outcome, Visitor};
use crate::model::resource::Resource;
use crate::model::runner::TaskState;

/// Pause between attempts to reach the store.
const STORE_RETRY: Duration = Duration::from_millis(500);
/// Longest one checkpoint or done write may take.
const STORE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause before syncing the results sink again after a failure (doubles per failure)...
const SINK_RETRY_FIRST: Duration = Duration::from_secs(1);
/// ...up to this.
const SINK_RETRY_MAX: Duration = Duration::from_secs(10);

/// How a run ended.
enum End {
    /// The frontier is empty (or `MaxPages` reached).
    Finished,
    /// Finished earlier (by this or another worker).
    AlreadyDone(String),
    /// Asked to stop.
    Stopped,
    /// The resource is no longer this run's.
    NotOwner,
    /// Could not go on.
    Failed(String),
}

/// Resolves when a stop was asked for (or the handle is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One task run.
pub struct Run {
    pub visitor: Arc<Visitor>,
    pub resource: Resource,
    pub sink: Arc<dyn Sink>,
    pub store: CheckpointStore,
    pub checkpointer: Checkpointer,
    pub frontier: Frontier,
    pub allowed: Vec<String>,
    pub counters: Counters,
    /// Requests completed since the last checkpoint.
    pub since_checkpoint: u64,
    pub last_checkpoint: Instant,
    pub stop_grace: Duration,
    /// Where this run's frontier spills its pending requests.
    pub spill: std::path::PathBuf,
}

impl Run {
    fn status(&self) -> &Status {
        &self.visitor.status
    }

    fn name(&self) -> &str {
        &self.visitor.task.name
    }

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let name = self.name().to_string();
        let end = self.crawl(&mut stop).await;
        self.refresh_status();
        let c = self.counters;
        match end {
            End::Finished => {
                let detail = format!(
                    "finished: {} pages, {} items, {} errors",
                    c.pages, c.items, c.errors
                );
                tracing::info!(task = %name, pages = c.pages, items = c.items, errors = c.errors, "crawl finished");
                self.status().set_state(TaskState::Finished, detail);
            }
            End::AlreadyDone(d) => {
                tracing::info!(task = %name, "{d}");
                self.status().set_state(TaskState::Finished, d);
            }
            End::Stopped => {
                if self.since_checkpoint > 0 {
                    // Bounded: a stop must be prompt even with the store unreachable.
                    let _ =
                        tokio::time::timeout(self.stop_grace, self.checkpoint_quietly(&mut stop))
                            .await;
                }
                self.status()
                    .set_state(TaskState::Running, Some("stopping".into()));
            }
            End::NotOwner => {
                let d = "the resource is no longer assigned to this worker; crawl stopped";
                tracing::warn!(task = %name, "{d}");
                self.status().set_state(TaskState::Failed, Some(d.into()));
            }
            End::Failed(e) => {
                tracing::error!(task = %name, error = %e, "crawl failed");
                self.status().set_state(TaskState::Failed, e);
            }
        }
        self.status().log_progress(&name);
    }

    /// A store read retried while the store is unreachable; `None` when stopped meanwhile.
    async fn store_read<T, F, Fut>(
        stop: &mut watch::Receiver<bool>,
        what: &str,
        mut f: F,
    ) -> Option<Result<T, CheckpointError>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CheckpointError>>,
    {
        loop {
            let r = tokio::select! {
                _ = stopped(stop) => return None,
                r = f() => r,
            };
            match r {
                Err(CheckpointError::Kv(e)) if e.is_retryable() => {
                    tracing::warn!(error = %e, "crawl: {what}: store unreachable, retrying");
                    tokio::select! {
                        _ = stopped(stop) => return None,
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                    }
                }
                other => return Some(other),
            }
        }
    }

    /// Guard, done mark, checkpoint: where this run starts. `Err` ends the run.
    async fn resume(&mut self, stop: &mut watch::Receiver<bool>) -> Result<OwnerGuard, End> {
        let store = self.store.clone();
        let resource = self.resource.clone();
        let guard = match Self::store_read(stop, "checking the assignment", || {
            store.guard(&resource)
        })
        .await
        {
            None => return Err(End::Stopped),
            Some(Ok(g)) => g,
            Some(Err(CheckpointError::NotOwner)) => return Err(End::NotOwner),
            Some(Err(e)) => return Err(End::Failed(format!("checking the assignment: {e}"))),
        };
        match Self::store_read(stop, "reading the done mark", || store.done()).await {
            None => return Err(End::Stopped),
            Some(Ok(Some(d))) if d.resource_id == resource.id => {
                self.counters = Counters {
                    pages: d.pages,
                    items: d.items,
                    errors: d.errors,
                };
                return Err(End::AlreadyDone(format!(
                    "already finished at {} by {}: {} pages, {} items, {} errors; not run again",
                    crate::util::time::rfc3339(
                        SystemTime::UNIX_EPOCH + Duration::from_millis(d.time_unix_ms)
                    ),
                    d.writer,
                    d.pages,
                    d.items,
                    d.errors
                )));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(End::Failed(format!("reading the done mark: {e}"))),
        }
        let id = resource.id.clone();
        let reload = self.visitor.task.reload;
        match Self::store_read(stop, "loading the checkpoint", || store.load(&id)).await {
            None => return Err(End::Stopped),
            Some(Ok(Some(loaded))) => {
                tracing::info!(
                    task = %self.name(),
                    pages = loaded.manifest.pages,
                    pending = loaded.manifest.pending,
                    seen = loaded.manifest.seen,
                    deltas = loaded.deltas.len(),
                    "crawl resumes from its checkpoint"
                );
                let manifest = loaded.manifest.clone();
                let (frontier, counters) = loaded.into_frontier(reload, Some(self.spill.clone()));
                self.counters = counters;
                self.frontier = frontier;
                self.checkpointer = Checkpointer::new(store.clone(), &id, Some(manifest));
                self.status().resumed.store(true, Ordering::Relaxed);
                self.status().checkpointed(self.counters.pages);
            }
            Some(Ok(None)) => {}
            Some(Err(e)) => {
                tracing::warn!(task = %self.name(), error = %e, "checkpoint ignored; starting from the seeds");
            }
        }
        // Seeds not seen yet (all of them on a fresh start; new ones after a config change).
        for s in &self.visitor.task.urls {
            if let Ok(u) = Url::parse(s) {
                if !self.frontier.has_seen(&u) {
                    self.frontier.push(&u, 0, None);
                }
            }
        }
        Ok(guard)
    }

    async fn crawl(&mut self, stop: &mut watch::Receiver<bool>) -> End {
        let mut guard = match self.resume(stop).await {
            Ok(g) => g,
            Err(end) => return end,
        };
        let detail = if self.status().resumed.load(Ordering::Relaxed) {
            format!("crawling (resumed at {} pages)", self.counters.pages)
        } else {
            "crawling".to_string()
        };
        self.status().set_state(TaskState::Running, detail);
        self.refresh_status();
        self.last_checkpoint = Instant::now();
        let task = self.visitor.task.clone();
        let every = Duration::from_secs_f64(task.checkpoint_interval.max(0.001));
        let concurrency = task.concurrency.max(1) as usize;
        // Dropping the set (any return below) cancels every visit in flight; their requests
        // stay pending in the frontier and so in the next checkpoint.
        let mut visits: JoinSet<(Ticket, Request, Outcome)> = JoinSet::new();

        loop {
            if *stop.borrow() {
                return End::Stopped;
            }
            while visits.len() < concurrency {
                let in_flight = visits.len() as u64;
                if task.max_pages > 0 && self.counters.pages + in_flight >= task.max_pages {
                    break;
                }
                let (ticket, req) = match self.frontier.dispatch() {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(e) => return End::Failed(format!("pending requests: {e}")),
                };
                let v = self.visitor.clone();
                visits.spawn(async move {
                    let o = v.visit(&req).await;
                    (ticket, req, o)
                });
            }
            let joined = tokio::select! {
                _ = stopped(stop) => return End::Stopped,
                j = visits.join_next() => j,
            };
            let Some(joined) = joined else {
                break; // nothing pending, nothing in flight
            };
            let (ticket, req, outcome) = match joined {
                Ok(v) => v,
                Err(e) => return End::Failed(format!("a request task failed: {e}")),
            };
            match outcome {
                Outcome::Page {
                    items,
                    links,
                    final_url,
                } => {
                    // Items first: if this write is lost, so is the page's completion (it stays
                    // pending), and the next owner fetches it again.
                    if let Err(e) = self.sink.write(&items).await {
                        return End::Failed(format!("writing results: {e}"));
                    }
                    self.counters.pages += 1;
                    self.counters.items += items.len() as u64;
                    if final_url.as_str() != req.url {
                        // A redirect target is not fetched again through another link.
                        self.frontier.mark_seen(&final_url);
                    }
                    self.follow(&req, links);
                }
                Outcome::Denied => Status::bump(&self.status().robots_denied),
                Outcome::Error(e) => {
                    self.counters.errors += 1;
                    tracing::warn!(task = %self.name(), url = %req.url, error = %e, "fetch failed");
                }
            }
            self.counters.errors += self.visitor.take_robots_failures();
            self.frontier.complete(ticket);
            self.since_checkpoint += 1;
            self.refresh_status();
            if self.since_checkpoint >= u64::from(task.checkpoint_pages)
                || self.last_checkpoint.elapsed() >= every
            {
                match self.checkpoint(&mut guard, stop).await {
                    Ok(()) => {}
                    Err(CheckpointError::NotOwner) => return End::NotOwner,
                    Err(e) => {
                        tracing::warn!(task = %self.name(), error = %e, "checkpoint failed; retrying later")
                    }
                }
            }
        }
        self.counters.errors += self.visitor.take_robots_failures();
        self.finish(stop, guard).await
    }

    /// Queue the links of a page processed at `req`'s depth.
    fn follow(&mut self, req: &Request, links: Vec<(Url, Option<String>)>) {
        let next = req.depth.saturating_add(1);
        let max_depth = self.visitor.task.max_depth;
        if max_depth > 0 && next > max_depth {
            return;
        }
        for (u, rule) in links {
            if !host_allowed(&self.allowed, &u) {
                Status::bump(&self.status().offsite);
                continue;
            }
            self.frontier.push(&u, next, rule);
        }
    }

    /// Nothing left: mark the task done (guarded), retrying while the store is unreachable.
    async fn finish(&mut self, stop: &mut watch::Receiver<bool>, mut guard: OwnerGuard) -> End {
        // A task that could not fetch a single page failed (and may be retried later); it is
        // not marked done.
        if self.counters.pages == 0 && self.counters.errors > 0 {
            return End::Failed(format!(
                "no page could be fetched ({} errors); see the log",
                self.counters.errors
            ));
        }
        if !self.sync_sink(stop).await {
            return End::Stopped;
        }
        let counters = self.counters;
        let id = self.resource.id.clone();
        loop {
            let r = tokio::select! {
                _ = stopped(stop) => return End::Stopped,
                r = tokio::time::timeout(
                    STORE_WRITE_TIMEOUT,
                    self.store.mark_done(counters, &id, &guard),
                ) => r,
            };
            match r {
                Ok(Ok(_)) => return End::Finished,
                // The resource value changed: still ours (refresh the guard), or moved away.
                Ok(Err(CheckpointError::NotOwner)) => {
                    match self.store.guard(&self.resource).await {
                        Ok(g) => guard = g,
                        Err(CheckpointError::NotOwner) => return End::NotOwner,
                        Err(e) => {
                            tracing::warn!(task = %self.name(), error = %e, "cannot check the assignment; retrying");
                            tokio::select! {
                                _ = stopped(stop) => return End::Stopped,
                                _ = tokio::time::sleep(STORE_RETRY) => {}
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(task = %self.name(), error = %e, "cannot mark the task done yet; retrying");
                    tokio::select! {
                        _ = stopped(stop) => return End::Stopped,
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                    }
                }
                Err(_) => {
                    tracing::warn!(task = %self.name(), "marking the task done timed out; retrying")
                }
            }
        }
    }

    /// Sync the sink until it succeeds: a failed sync keeps the sink's buffer, so it is retried
    /// with backoff, the status detail saying why, and nothing is checkpointed meanwhile (the
    /// visits in flight go on). `false` when stopped before it succeeded.
    async fn sync_sink(&self, stop: &mut watch::Receiver<bool>) -> bool {
        let mut pause = SINK_RETRY_FIRST;
        let mut before: Option<Option<String>> = None;
        loop {
            match self.sink.sync().await {
                Ok(()) => {
                    if let Some(detail) = before {
                        tracing::info!(task = %self.name(), "results stored again; crawl resumes");
                        self.status().set_state(TaskState::Running, detail);
                    }
                    return true;
                }
                Err(e) => {
                    let detail = format!(
                        "results not stored: {e}; retrying in {}s (no checkpoint until then)",
                        pause.as_secs_f64()
                    );
                    tracing::warn!(task = %self.name(), error = %e, "{detail}");
                    before.get_or_insert_with(|| self.status().detail());
                    self.status().set_state(TaskState::Running, detail);
                    if *stop.borrow() {
                        return false;
                    }
                    tokio::select! {
                        _ = stopped(stop) => return false,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(SINK_RETRY_MAX);
                }
            }
        }
    }

    /// Sync the sink, then write what changed (guarded). A changed-but-still-ours resource value
    /// (e.g. the master rewrote it) refreshes the guard and tries again.
    async fn checkpoint(
        &mut self,
        guard: &mut OwnerGuard,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), CheckpointError> {
        let synced = self.sync_sink(stop).await;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        if !synced {
            // Stopping: what this interval changed is not written (its items are not durable);
            // only a whole image is right next.
            self.checkpointer.need_base();
            return Ok(());
        }
        let prepared = self
            .checkpointer
            .prepare(&mut self.frontier, self.counters)?;
        for attempt in 0..2 {
            let r = tokio::time::timeout(
                STORE_WRITE_TIMEOUT,
                self.checkpointer.commit(&prepared, guard),
            )
            .await
            .unwrap_or_else(|_| {
                // Abandoned midway: it may or may not have landed.
                self.checkpointer.need_base();
                Err(CheckpointError::Kv(crate::client::KvError::Timeout(
                    "checkpoint write".into(),
                )))
            });
            match r {
                Ok(m) => {
                    self.status().checkpointed(m.pages);
                    self.status()
                        .checkpoint_bytes
                        .fetch_add(prepared.bytes.len() as u64, Ordering::Relaxed);
                    tracing::debug!(task = %self.name(), pages = m.pages, pending = m.pending, base = prepared.base, bytes = prepared.bytes.len(), "checkpoint written");
                    return Ok(());
                }
                Err(CheckpointError::NotOwner) if attempt == 0 => {
                    *guard = self.store.guard(&self.resource).await?;
                }
                Err(e) => {
                    self.checkpointer.need_base();
                    return Err(e);
                }
            }
        }
        Err(CheckpointError::NotOwner)
    }

    /// The last checkpoint of a stopping run: errors are only logged.
    async fn checkpoint_quietly(&mut self, stop: &mut watch::Receiver<bool>) {
        let store = self.store.clone();
        let Ok(mut guard) = store.guard_at_stop(&self.resource).await else {
            return;
        };
        if let Err(e) = self.checkpoint(&mut guard, stop).await {
            tracing::debug!(task = %self.name(), error = %e, "no checkpoint at stop");
        }
    }

    fn refresh_status(&self) {
        let s = self.status();
        Status::set(&s.pages, self.counters.pages);
        Status::set(&s.items, self.counters.items);
        Status::set(&s.errors, self.counters.errors);
        Status::set(&s.frontier, self.frontier.pending_len() as u64);
        Status::set(&s.seen, self.frontier.seen_len() as u64);
    }
}
