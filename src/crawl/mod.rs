//! The crawl engine: [`CrawlRunner`] runs a task for the worker (it implements
//! [`TaskRunner`]).
//!
//! A run, one page at a time (rate limits make a task's requests sequential anyway; tasks run
//! in parallel):
//! 1. reads the resource key and keeps its value as the guard of every store write
//!    ([`frontier::OwnerGuard`]); a task already marked done for this resource is not run again;
//! 2. resumes from the latest checkpoint of this resource, else starts from the seeds;
//! 3. for the front request: robots.txt (per origin, cached), the politeness delay (random up to
//!    `WaitTime`, at least the robots `Crawl-delay`), every rate limit, the fetch (with retries);
//!    then the page's rule: items to the sink, links (in the allowed domains, within
//!    `MaxDepth`, not seen before unless `Reload`) to the frontier;
//! 4. checkpoints every `CheckpointPages` requests or `CheckpointInterval` seconds (sink synced
//!    first, so a checkpoint never counts items that are not on disk);
//! 5. when the frontier is empty, marks the task done.
//!
//! Stop (resource deleted or moved away, worker stopping) cancels the request in flight, writes
//! a last guarded checkpoint (bounded in time) and ends.

pub mod demo_site;
pub mod fetch;
pub mod frontier;
pub mod limiter;
pub mod robots;
pub mod rules;
pub mod sink;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use url::Url;

use crate::config::TaskConfig;
use crate::kv_client::{BoxFuture, KvClient};
use crate::master::{Resource, RESOURCE_PREFIX};
use crate::worker::{RunnerError, TaskHandle, TaskReport, TaskRunner, TaskSpec, TaskState};

use fetch::{FetchError, Fetcher};
use frontier::{CheckpointError, CheckpointStore, Counters, Frontier, OwnerGuard};
use limiter::Limiter;
use robots::{AgentRules, Robots};
use rules::Rules;
use sink::{Item, JsonlSinks, Sink, SinkFactory};
use status::Status;

/// Results directory of `crawler worker` when the config sets no `DataDir`.
pub const DEFAULT_DATA_DIR: &str = "crawler-data";

/// Settings of the engine (not of a task).
#[derive(Clone, Debug)]
pub struct CrawlOptions {
    /// Where the default sink writes `<task>.jsonl`.
    pub data_dir: PathBuf,
    /// Cadence of the progress log line of each run.
    pub progress_every: Duration,
    /// Resource key prefix (the master's `/resources/`).
    pub resource_prefix: String,
    /// Who writes checkpoints (the worker's node id), recorded in them.
    pub writer: String,
    /// How long a stop may spend on the last checkpoint before the run is abandoned.
    pub stop_grace: Duration,
    /// First retry backoff of a fetch (doubles per attempt).
    pub backoff_base: Duration,
}

impl CrawlOptions {
    /// Defaults with results under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            progress_every: Duration::from_secs(30),
            resource_prefix: RESOURCE_PREFIX.to_string(),
            writer: format!("pid-{}", std::process::id()),
            stop_grace: Duration::from_secs(3),
            backoff_base: fetch::BACKOFF_BASE,
        }
    }
}

/// The worker's task runner that crawls.
#[derive(Clone)]
pub struct CrawlRunner {
    client: Arc<dyn KvClient>,
    sinks: Arc<dyn SinkFactory>,
    opts: Arc<CrawlOptions>,
}

impl std::fmt::Debug for CrawlRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrawlRunner")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl CrawlRunner {
    /// A runner checkpointing through `client`, writing JSON lines under `opts.data_dir`.
    pub fn new(client: Arc<dyn KvClient>, opts: CrawlOptions) -> Self {
        let sinks = Arc::new(JsonlSinks::new(opts.data_dir.clone()));
        Self::with_sinks(client, sinks, opts)
    }

    /// A runner writing results to `sinks`.
    pub fn with_sinks(
        client: Arc<dyn KvClient>,
        sinks: Arc<dyn SinkFactory>,
        opts: CrawlOptions,
    ) -> Self {
        Self {
            client,
            sinks,
            opts: Arc::new(opts),
        }
    }
}

impl TaskRunner for CrawlRunner {
    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<Box<dyn TaskHandle>, RunnerError>> {
        Box::pin(async move {
            let TaskSpec { resource, task } = spec;
            let name = task.name.clone();
            let rules = Rules::compile(&task)
                .map_err(|e| RunnerError(format!("task {name:?}: {}: {}", e.field, e.message)))?;
            let fetcher = Fetcher::new(&task)
                .map_err(|e| RunnerError(format!("task {name:?}: {e}")))?
                .with_backoff(self.opts.backoff_base);
            let sink = self
                .sinks
                .open(&name)
                .await
                .map_err(|e| RunnerError(format!("task {name:?}: results: {e}")))?;
            let store = CheckpointStore::new(
                self.client.clone(),
                &name,
                format!("{}{}", self.opts.resource_prefix, resource.name),
                self.opts.writer.clone(),
            );
            let status = Arc::new(Status::default());
            let (stop_tx, stop_rx) = watch::channel(false);
            let allowed = allowed_domains(&task);
            let run = Run {
                limiter: Limiter::new(&task.limits),
                frontier: Frontier::new(task.reload),
                agent: robots_agent(&task),
                task,
                resource: resource.clone(),
                rules,
                fetcher,
                sink,
                store,
                status: status.clone(),
                allowed,
                robots: HashMap::new(),
                counters: Counters::default(),
                since_checkpoint: 0,
                last_checkpoint: Instant::now(),
                stop_grace: self.opts.stop_grace,
            };
            tracing::info!(task = %name, resource = %resource.id, "crawl started");
            let runner = tokio::spawn(run.run(stop_rx));
            let every = self.opts.progress_every.max(Duration::from_millis(10));
            let (st, n) = (status.clone(), name.clone());
            let progress = tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    st.log_progress(&n);
                    if st.state() != TaskState::Running {
                        return;
                    }
                }
            });
            Ok(Box::new(CrawlHandle {
                status,
                stop: stop_tx,
                runner: Some(runner),
                progress,
                name,
                resource_id: resource.id,
                bound: self.opts.stop_grace + Duration::from_secs(2),
            }) as Box<dyn TaskHandle>)
        })
    }
}

/// A started crawl.
struct CrawlHandle {
    status: Arc<Status>,
    stop: watch::Sender<bool>,
    runner: Option<JoinHandle<()>>,
    progress: JoinHandle<()>,
    name: String,
    resource_id: String,
    /// Longest a stop waits for the run before abandoning it.
    bound: Duration,
}

impl TaskHandle for CrawlHandle {
    fn report(&self) -> TaskReport {
        self.status.report()
    }

    fn stop(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.stop.send(true);
            if let Some(mut runner) = self.runner.take() {
                if tokio::time::timeout(self.bound, &mut runner).await.is_err() {
                    tracing::warn!(task = %self.name, "crawl did not stop in time; abandoned");
                    runner.abort();
                }
            }
            self.progress.abort();
            tracing::info!(task = %self.name, resource = %self.resource_id, "crawl stopped");
        })
    }
}

impl Drop for CrawlHandle {
    fn drop(&mut self) {
        // Dropped without `stop` (worker aborted): no run may outlive its handle.
        if let Some(r) = self.runner.take() {
            r.abort();
        }
        self.progress.abort();
    }
}

/// The hosts a task may visit: `AllowedDomains`, else the seeds' hosts.
pub(crate) fn allowed_domains(task: &TaskConfig) -> Vec<String> {
    let mut out: Vec<String> = task
        .allowed_domains
        .iter()
        .map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase())
        .collect();
    if out.is_empty() {
        out = task
            .urls
            .iter()
            .filter_map(|u| Url::parse(u).ok())
            .filter_map(|u| u.host_str().map(str::to_ascii_lowercase))
            .collect();
    }
    out
}

/// The product token looked up in robots.txt: the configured `User-Agent`'s first token, else
/// ours.
fn robots_agent(task: &TaskConfig) -> String {
    task.user_agent
        .as_deref()
        .and_then(|ua| ua.split(['/', ' ']).next())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(fetch::ROBOTS_AGENT)
        .to_ascii_lowercase()
}

/// A host is allowed when it is an allowed domain or a subdomain of one.
pub(crate) fn host_allowed(allowed: &[String], url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    allowed
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// Resolves when a stop was asked for (or the handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

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

/// What happened to one request.
enum Outcome {
    /// Fetched and processed.
    Page {
        items: Vec<Item>,
        links: Vec<(Url, Option<String>)>,
        final_url: Url,
        retries: u32,
    },
    /// Not fetched: robots.txt disallows it.
    Denied,
    /// Failed for good.
    Error(String),
}

/// One task run.
struct Run {
    task: TaskConfig,
    resource: Resource,
    rules: Rules,
    fetcher: Fetcher,
    sink: Arc<dyn Sink>,
    store: CheckpointStore,
    status: Arc<Status>,
    limiter: Limiter,
    frontier: Frontier,
    allowed: Vec<String>,
    agent: String,
    /// robots.txt rules by origin.
    robots: HashMap<String, AgentRules>,
    counters: Counters,
    /// Requests processed since the last checkpoint.
    since_checkpoint: u64,
    last_checkpoint: Instant,
    stop_grace: Duration,
}

/// Pause between attempts to reach the store.
const STORE_RETRY: Duration = Duration::from_millis(500);
/// Longest one checkpoint or done write may take.
const STORE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl Run {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let name = self.task.name.clone();
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
                self.status.set_state(TaskState::Finished, detail);
            }
            End::AlreadyDone(d) => {
                tracing::info!(task = %name, "{d}");
                self.status.set_state(TaskState::Finished, d);
            }
            End::Stopped => {
                if self.since_checkpoint > 0 {
                    // Bounded: a stop must be prompt even with the store unreachable.
                    let _ = tokio::time::timeout(self.stop_grace, self.checkpoint_quietly()).await;
                }
                self.status
                    .set_state(TaskState::Running, Some("stopping".into()));
            }
            End::NotOwner => {
                let d = "the resource is no longer assigned to this worker; crawl stopped";
                tracing::warn!(task = %name, "{d}");
                self.status.set_state(TaskState::Failed, Some(d.into()));
            }
            End::Failed(e) => {
                tracing::error!(task = %name, error = %e, "crawl failed");
                self.status.set_state(TaskState::Failed, e);
            }
        }
        self.status.log_progress(&name);
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

    async fn crawl(&mut self, stop: &mut watch::Receiver<bool>) -> End {
        let store = self.store.clone();
        let resource = self.resource.clone();
        let guard = match Self::store_read(stop, "checking the assignment", || {
            store.guard(&resource)
        })
        .await
        {
            None => return End::Stopped,
            Some(Ok(g)) => g,
            Some(Err(CheckpointError::NotOwner)) => return End::NotOwner,
            Some(Err(e)) => return End::Failed(format!("checking the assignment: {e}")),
        };
        match Self::store_read(stop, "reading the done mark", || store.done()).await {
            None => return End::Stopped,
            Some(Ok(Some(d))) if d.resource_id == resource.id => {
                self.counters = Counters {
                    pages: d.pages,
                    items: d.items,
                    errors: d.errors,
                };
                return End::AlreadyDone(format!(
                    "already finished at {} by {}: {} pages, {} items, {} errors; not run again",
                    crate::worker::http::rfc3339(
                        SystemTime::UNIX_EPOCH + Duration::from_millis(d.time_unix_ms)
                    ),
                    d.writer,
                    d.pages,
                    d.items,
                    d.errors
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return End::Failed(format!("reading the done mark: {e}")),
        }
        let id = resource.id.clone();
        match Self::store_read(stop, "loading the checkpoint", || store.load(&id)).await {
            None => return End::Stopped,
            Some(Ok(Some(snap))) => {
                tracing::info!(
                    task = %self.task.name,
                    pages = snap.counters.pages,
                    pending = snap.pending.len(),
                    seen = snap.seen.len(),
                    "crawl resumes from its checkpoint"
                );
                self.counters = snap.counters;
                self.frontier = Frontier::restore(snap, self.task.reload);
                self.status
                    .resumed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.status.checkpointed(self.counters.pages);
            }
            Some(Ok(None)) => {}
            Some(Err(e)) => {
                tracing::warn!(task = %self.task.name, error = %e, "checkpoint ignored; starting from the seeds");
            }
        }
        // Seeds not seen yet (all of them on a fresh start; new ones after a config change).
        for s in &self.task.urls {
            if let Ok(u) = Url::parse(s) {
                if !self.frontier.has_seen(&u) {
                    self.frontier.push(&u, 0, None);
                }
            }
        }
        let detail = if self
            .status
            .resumed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            format!("crawling (resumed at {} pages)", self.counters.pages)
        } else {
            "crawling".to_string()
        };
        self.status.set_state(TaskState::Running, detail);
        self.refresh_status();
        let mut guard = guard;
        self.last_checkpoint = Instant::now();
        let every = Duration::from_secs_f64(self.task.checkpoint_interval.max(0.001));

        loop {
            if *stop.borrow() {
                return End::Stopped;
            }
            let max = self.task.max_pages;
            if max > 0 && self.counters.pages >= max {
                break;
            }
            let Some(req) = self.frontier.front().cloned() else {
                break;
            };
            let outcome = tokio::select! {
                _ = stopped(stop) => return End::Stopped,
                o = self.process(&req) => o,
            };
            match outcome {
                Outcome::Page {
                    items,
                    links,
                    final_url,
                    retries,
                } => {
                    // Items first: if this write is lost, so is the page's place in the
                    // frontier (it stays queued), and the next owner fetches it again.
                    if let Err(e) = self.sink.write(&items).await {
                        return End::Failed(format!("writing results: {e}"));
                    }
                    self.counters.pages += 1;
                    self.counters.items += items.len() as u64;
                    self.status
                        .retries
                        .fetch_add(u64::from(retries), std::sync::atomic::Ordering::Relaxed);
                    if final_url.as_str() != req.url {
                        // A redirect target is not fetched again through another link.
                        self.frontier.mark_seen(&final_url);
                    }
                    let next = req.depth.saturating_add(1);
                    let max_depth = self.task.max_depth;
                    for (u, rule) in links {
                        if max_depth > 0 && next > max_depth {
                            break;
                        }
                        if !host_allowed(&self.allowed, &u) {
                            Status::bump(&self.status.offsite);
                            continue;
                        }
                        self.frontier.push(&u, next, rule);
                    }
                }
                Outcome::Denied => Status::bump(&self.status.robots_denied),
                Outcome::Error(e) => {
                    self.counters.errors += 1;
                    tracing::warn!(task = %self.task.name, url = %req.url, error = %e, "fetch failed");
                }
            }
            self.frontier.pop();
            self.since_checkpoint += 1;
            self.refresh_status();
            if self.since_checkpoint >= u64::from(self.task.checkpoint_pages)
                || self.last_checkpoint.elapsed() >= every
            {
                match self.checkpoint(&mut guard).await {
                    Ok(()) => {}
                    Err(CheckpointError::NotOwner) => return End::NotOwner,
                    Err(e) => {
                        tracing::warn!(task = %self.task.name, error = %e, "checkpoint failed; retrying later")
                    }
                }
            }
        }

        // Done. A task that could not fetch a single page failed (and may be retried later);
        // it is not marked done.
        if self.counters.pages == 0 && self.counters.errors > 0 {
            return End::Failed(format!(
                "no page could be fetched ({} errors); see the log",
                self.counters.errors
            ));
        }
        if let Err(e) = self.sink.sync().await {
            return End::Failed(format!("syncing results: {e}"));
        }
        let counters = self.counters;
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
                Ok(Err(CheckpointError::NotOwner)) => match self.store.guard(&resource).await {
                    Ok(g) => guard = g,
                    Err(CheckpointError::NotOwner) => return End::NotOwner,
                    Err(e) => {
                        tracing::warn!(task = %self.task.name, error = %e, "cannot check the assignment; retrying");
                        tokio::select! {
                            _ = stopped(stop) => return End::Stopped,
                            _ = tokio::time::sleep(STORE_RETRY) => {}
                        }
                    }
                },
                Ok(Err(e)) => {
                    tracing::warn!(task = %self.task.name, error = %e, "cannot mark the task done yet; retrying");
                    tokio::select! {
                        _ = stopped(stop) => return End::Stopped,
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                    }
                }
                Err(_) => {
                    tracing::warn!(task = %self.task.name, "marking the task done timed out; retrying")
                }
            }
        }
    }

    /// Robots, politeness, rate limits, fetch, extraction. Cancel-safe: nothing is changed
    /// that a cancellation would leave half done (the robots cache at worst).
    async fn process(&mut self, req: &frontier::Request) -> Outcome {
        let url = match Url::parse(&req.url) {
            Ok(u) => u,
            Err(e) => return Outcome::Error(format!("bad URL: {e}")),
        };
        let mut delay = Duration::ZERO;
        if self.task.robots {
            let rules = self.robots_for(&url).await;
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            if !rules.allowed(&path) {
                tracing::debug!(task = %self.task.name, %url, "disallowed by robots.txt");
                return Outcome::Denied;
            }
            delay = rules.crawl_delay.unwrap_or_default();
        }
        let wait = self.task.wait_time;
        if wait > 0.0 {
            let r: f64 = rand::thread_rng().gen_range(0.0..=wait);
            delay = delay.max(Duration::from_secs_f64(r));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.limiter.acquire().await;
        let fetched_at = SystemTime::now();
        let page = match self.fetcher.get(&url).await {
            Ok(p) => p,
            Err(e) => {
                if e.is_transient() {
                    self.status.retries.fetch_add(
                        u64::from(self.task.retries),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                return Outcome::Error(e.to_string());
            }
        };
        let (items, links) = match &page.text {
            Some(text) => {
                let out = self
                    .rules
                    .apply(text, &page.url, req.depth, req.rule.as_deref());
                let items = out
                    .items
                    .into_iter()
                    .map(|x| Item {
                        task: self.task.name.clone(),
                        kind: x.name,
                        url: page.url.to_string(),
                        fields: x.fields,
                        fetched_at,
                    })
                    .collect();
                (items, out.links)
            }
            None => (Vec::new(), Vec::new()),
        };
        Outcome::Page {
            items,
            links,
            final_url: page.url,
            retries: page.attempts.saturating_sub(1),
        }
    }

    /// The robots.txt rules of `url`'s origin, fetched once per run.
    async fn robots_for(&mut self, url: &Url) -> AgentRules {
        let origin = url.origin().ascii_serialization();
        if let Some(r) = self.robots.get(&origin) {
            return r.clone();
        }
        let robots = match Url::parse(&format!("{origin}/robots.txt")) {
            Err(_) => Robots::allow_all(),
            Ok(robots_url) => {
                self.limiter.acquire().await;
                match self.fetcher.get(&robots_url).await {
                    Ok(p) => p.text.as_deref().map_or_else(Robots::allow_all, |t| {
                        let t = &t[..floor_char_boundary(t, robots::MAX_ROBOTS_BYTES)];
                        Robots::parse(t)
                    }),
                    // No robots.txt: everything is allowed (RFC 9309 "unavailable").
                    Err(FetchError::Status { status }) if (400..500).contains(&status) => {
                        Robots::allow_all()
                    }
                    // Unreachable: nothing is allowed (RFC 9309), for this run.
                    Err(e) => {
                        tracing::warn!(task = %self.task.name, %origin, error = %e, "robots.txt unreachable; the site is skipped");
                        self.counters.errors += 1;
                        Robots::disallow_all()
                    }
                }
            }
        };
        let rules = robots.for_agent(&self.agent);
        self.robots.insert(origin, rules.clone());
        rules
    }

    /// Sync the sink, then save the frontier (guarded). A changed-but-still-ours resource value
    /// (e.g. the master rewrote it) refreshes the guard and tries again.
    async fn checkpoint(&mut self, guard: &mut OwnerGuard) -> Result<(), CheckpointError> {
        self.since_checkpoint_reset();
        if let Err(e) = self.sink.sync().await {
            Status::bump(&self.status.errors);
            tracing::warn!(task = %self.task.name, error = %e, "syncing results failed; checkpoint skipped");
            return Ok(());
        }
        let snap = self.frontier.snapshot(&self.resource.id, self.counters);
        for attempt in 0..2 {
            let r = tokio::time::timeout(STORE_WRITE_TIMEOUT, self.store.save(&snap, guard))
                .await
                .unwrap_or_else(|_| {
                    Err(CheckpointError::Kv(crate::kv_client::KvError::Timeout(
                        "checkpoint write".into(),
                    )))
                });
            match r {
                Ok(m) => {
                    self.status.checkpointed(m.pages);
                    tracing::debug!(task = %self.task.name, pages = m.pages, pending = m.pending, bytes = m.bytes, "checkpoint written");
                    return Ok(());
                }
                Err(CheckpointError::NotOwner) if attempt == 0 => {
                    *guard = self.store.guard(&self.resource).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(CheckpointError::NotOwner)
    }

    fn since_checkpoint_reset(&mut self) {
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
    }

    /// The last checkpoint of a stopping run: errors are only logged.
    async fn checkpoint_quietly(&mut self) {
        let store = self.store.clone();
        let Ok(mut guard) = store.guard(&self.resource).await else {
            return;
        };
        if let Err(e) = self.checkpoint(&mut guard).await {
            tracing::debug!(task = %self.task.name, error = %e, "no checkpoint at stop");
        }
    }

    fn refresh_status(&self) {
        let s = &self.status;
        Status::set(&s.pages, self.counters.pages);
        Status::set(&s.items, self.counters.items);
        Status::set(&s.errors, self.counters.errors);
        Status::set(&s.frontier, self.frontier.pending_len() as u64);
        Status::set(&s.seen, self.frontier.seen_len() as u64);
    }
}

/// The largest index `<= max` on a char boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let mut t = TaskConfig::named("t");
        t.urls = vec!["http://Books.Example.com/x".into()];
        let a = allowed_domains(&t);
        assert_eq!(a, vec!["books.example.com".to_string()]);
        let u = |s: &str| Url::parse(s).expect("url");
        assert!(host_allowed(&a, &u("http://books.example.com:8080/y")));
        assert!(host_allowed(&a, &u("http://x.books.example.com/y")));
        assert!(!host_allowed(&a, &u("http://example.com/y")));
        assert!(!host_allowed(&a, &u("http://evilbooks.example.com/y")));
        t.allowed_domains = vec![".example.com".into()];
        assert!(host_allowed(
            &allowed_domains(&t),
            &u("http://example.com/")
        ));
        assert_eq!(robots_agent(&t), "crawler");
        t.user_agent = Some("MyBot/2.0 (+http://x)".into());
        assert_eq!(robots_agent(&t), "mybot");
        assert_eq!(floor_char_boundary("中文", 4), 3);
    }
}
