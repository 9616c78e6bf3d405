//! The interface between a worker and what runs its tasks (the crawl engine): what a run is
//! given, what it reports, and how it is stopped.

use serde::{Deserialize, Serialize};

use crate::client::BoxFuture;
use crate::model::resource::Resource;
use crate::model::task::TaskConfig;

/// What a runner is asked to run: the assigned resource and the task of that name.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// The resource as stored by the master.
    pub resource: Resource,
    /// The task configuration of `resource.name`.
    pub task: TaskConfig,
}

/// Life-cycle state of a task run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Running.
    Running,
    /// Ended by itself with success (nothing left to do).
    Finished,
    /// Could not start, or ended with an error.
    Failed,
}

/// A point-in-time report of one run, as `GET /tasks` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// State of the run.
    pub state: TaskState,
    /// Human-readable detail (the error of a failed run, what a runner does).
    pub detail: Option<String>,
    /// Runner-specific counters (pages, items, errors, frontier, last checkpoint...).
    pub stats: serde_json::Value,
}

/// A started run. The worker asks for reports at any time and stops the run when the resource
/// is deleted or moves away.
pub trait TaskHandle: Send + Sync {
    /// The run's current state; cheap and non-blocking (called under the worker's table lock).
    fn report(&self) -> TaskReport;
    /// Stop the run promptly and cleanly; resolves once it has stopped.
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Why a run could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RunnerError(pub String);

/// Starts task runs. Implemented by the crawl engine; [`LoggingRunner`] until then.
pub trait TaskRunner: Send + Sync + 'static {
    /// Start running `spec`; resolves once the run has started (not when it ends).
    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<Box<dyn TaskHandle>, RunnerError>>;
}
