//! The crawl engine: [`CrawlRunner`] runs a task for the worker (it implements
//! [`TaskRunner`]). A run ([`run`]) keeps up to `Concurrency` requests in flight ([`visit`]),
//! each waiting for its host's politeness, which every task of the worker shares ([`hosts`]);
//! extraction runs on a bounded blocking pool. Progress is checkpointed to the store
//! incrementally ([`checkpoint`]), so a task moved to another worker resumes where it stopped.

pub mod checkpoint;
pub mod demo_site;
pub mod fetch;
pub mod frontier;
pub(crate) mod hosts;
pub(crate) mod limiter;
pub(crate) mod queue;
pub(crate) mod request;
pub(crate) mod robots;
pub(crate) mod rules;
mod run;
pub(crate) mod scope;
pub mod sink;
pub mod status;
pub mod synthetic_site;
pub mod validate;
mod visit;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{BoxFuture, KvClient};
use crate::model::resource::RESOURCE_PREFIX;
use crate::model::runner::{RunnerError, TaskHandle, TaskReport, TaskRunner, TaskSpec, TaskState};
use crate::model::sink::SinkConfig;

use checkpoint::{CheckpointStore, Checkpointer};
use fetch::Fetcher;
use frontier::{Counters, Frontier};
use hosts::HostPool;
use rules::Rules;
use scope::allowed_domains;
use sink::{RoutingSinks, SinkFactory};
use status::Status;

/// Results directory of `crawler worker` when the config sets no `DataDir`.
pub const DEFAULT_DATA_DIR: &str = "crawler-data";
/// Under the data dir: one directory per run for pending requests spilled to disk.
pub const SPILL_DIR: &str = "spill";

/// Settings of the engine (not of a task).
#[derive(Clone, Debug)]
pub struct CrawlOptions {
    /// Where the JSON lines sink writes `<task>.jsonl`.
    pub data_dir: PathBuf,
    /// Where a task without its own `Sink` writes (the config's `[Sink]`); none: JSON lines.
    pub sink: Option<SinkConfig>,
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
    /// Pages parsed at once (the blocking pool's share of the engine); default: the cores.
    pub parsers: usize,
}

impl CrawlOptions {
    /// Defaults with results under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            sink: None,
            progress_every: Duration::from_secs(30),
            resource_prefix: RESOURCE_PREFIX.to_string(),
            writer: format!("pid-{}", std::process::id()),
            stop_grace: Duration::from_secs(3),
            backoff_base: fetch::BACKOFF_BASE,
            parsers: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }
}

/// The worker's task runner that crawls. Its clones share the per-host politeness state and
/// the parser pool: every task of a worker counts against the same host budgets.
#[derive(Clone)]
pub struct CrawlRunner {
    client: Arc<dyn KvClient>,
    sinks: Arc<dyn SinkFactory>,
    opts: Arc<CrawlOptions>,
    hosts: HostPool,
    parsers: Arc<Semaphore>,
}

impl std::fmt::Debug for CrawlRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrawlRunner")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl CrawlRunner {
    /// A runner checkpointing through `client`, writing each task's items where its `Sink`
    /// says, else to `opts.sink`, else as JSON lines under `opts.data_dir`.
    pub fn new(client: Arc<dyn KvClient>, opts: CrawlOptions) -> Self {
        let sinks = Arc::new(RoutingSinks::new(
            opts.data_dir.clone(),
            opts.sink.clone(),
            opts.writer.clone(),
        ));
        Self::with_sinks(client, sinks, opts)
    }

    /// A runner writing results to `sinks`.
    pub fn with_sinks(
        client: Arc<dyn KvClient>,
        sinks: Arc<dyn SinkFactory>,
        opts: CrawlOptions,
    ) -> Self {
        queue::sweep_dead(&opts.data_dir.join(SPILL_DIR));
        Self {
            client,
            sinks,
            parsers: Arc::new(Semaphore::new(opts.parsers.max(1))),
            opts: Arc::new(opts),
            hosts: HostPool::new(),
        }
    }

    /// The per-host state every task of this runner shares.
    pub fn hosts(&self) -> &HostPool {
        &self.hosts
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
                .open(&task)
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
            // `<pid>-<task>-<nonce>`: a restarted worker sweeps the directories of dead pids.
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let spill = self.opts.data_dir.join(SPILL_DIR).join(format!(
                "{}-{safe}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let frontier = Frontier::spilling(task.reload, spill.clone());
            let visitor = visit::Visitor::new(
                task,
                rules,
                fetcher,
                status.clone(),
                self.hosts.clone(),
                self.parsers.clone(),
            );
            let run = run::Run {
                visitor: Arc::new(visitor),
                checkpointer: Checkpointer::new(store.clone(), &resource.id, None),
                resource: resource.clone(),
                sink,
                store,
                frontier,
                allowed,
                counters: Counters::default(),
                since_checkpoint: 0,
                last_checkpoint: Instant::now(),
                stop_grace: self.opts.stop_grace,
                spill,
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
