//! How a worker runs a task: the [`TaskRunner`] interface the crawl engine implements, and
//! [`LoggingRunner`], a runner that crawls nothing but honestly logs and tracks what it was
//! asked to run (until the crawl engine exists).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::BoxFuture;
use crate::model::runner::{RunnerError, TaskHandle, TaskReport, TaskRunner, TaskSpec, TaskState};

/// One run as the [`LoggingRunner`] tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRun {
    /// Task name.
    pub name: String,
    /// Resource id.
    pub resource_id: String,
    /// When it started.
    pub started: SystemTime,
}

/// A runner with no crawl engine: it logs each start and stop, logs a heartbeat per run at a
/// steady cadence, and keeps the set of runs in progress. Its reports say plainly that nothing
/// is fetched.
#[derive(Clone, Debug)]
pub struct LoggingRunner {
    runs: Arc<Mutex<BTreeMap<String, LoggedRun>>>,
    heartbeat: Duration,
}

impl Default for LoggingRunner {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl LoggingRunner {
    /// A runner logging a heartbeat per run every `heartbeat`.
    pub fn new(heartbeat: Duration) -> Self {
        Self {
            runs: Arc::default(),
            heartbeat: heartbeat.max(Duration::from_millis(10)),
        }
    }

    /// Runs in progress, by resource id.
    pub fn running(&self) -> Vec<LoggedRun> {
        self.runs.lock().values().cloned().collect()
    }
}

struct LoggingHandle {
    runs: Arc<Mutex<BTreeMap<String, LoggedRun>>>,
    resource_id: String,
    name: String,
    beats: Arc<std::sync::atomic::AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TaskHandle for LoggingHandle {
    fn report(&self) -> TaskReport {
        TaskReport {
            state: TaskState::Running,
            detail: Some("logging runner: no crawl engine yet, nothing is fetched".into()),
            stats: serde_json::json!({
                "heartbeats": self.beats.load(std::sync::atomic::Ordering::Relaxed),
            }),
        }
    }

    fn stop(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let _ = (&mut self.task).await;
            self.runs.lock().remove(&self.resource_id);
            tracing::info!(task = %self.name, resource = %self.resource_id, "task stopped");
        })
    }
}

impl Drop for LoggingHandle {
    fn drop(&mut self) {
        // A handle dropped without `stop` (worker task aborted) must not leave a ghost run.
        self.task.abort();
        self.runs.lock().remove(&self.resource_id);
    }
}

impl TaskRunner for LoggingRunner {
    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<Box<dyn TaskHandle>, RunnerError>> {
        Box::pin(async move {
            let name = spec.task.name.clone();
            let resource_id = spec.resource.id.clone();
            tracing::info!(
                task = %name,
                resource = %resource_id,
                urls = ?spec.task.urls,
                "task started (logging runner: no crawl engine, nothing is fetched)"
            );
            self.runs.lock().insert(
                resource_id.clone(),
                LoggedRun {
                    name: name.clone(),
                    resource_id: resource_id.clone(),
                    started: SystemTime::now(),
                },
            );
            let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
            let beats = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let every = self.heartbeat;
            let (n, r, b) = (name.clone(), resource_id.clone(), beats.clone());
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        _ = tick.tick() => {
                            b.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!(task = %n, resource = %r, "task running");
                        }
                    }
                }
            });
            Ok(Box::new(LoggingHandle {
                runs: self.runs.clone(),
                resource_id,
                name,
                beats,
                stop: Some(stop_tx),
                task,
            }) as Box<dyn TaskHandle>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resource::Resource;
    use crate::model::task::TaskConfig;

    #[tokio::test]
    async fn logging_runner_tracks_runs() {
        let runner = LoggingRunner::new(Duration::from_millis(10));
        let spec = TaskSpec {
            resource: Resource {
                id: "1".into(),
                name: "t".into(),
                ..Resource::default()
            },
            task: TaskConfig::named("t"),
        };
        let h = runner.start(spec).await.expect("start");
        assert_eq!(runner.running().len(), 1);
        assert_eq!(h.report().state, TaskState::Running);
        h.stop().await;
        assert!(runner.running().is_empty());
    }
}
