//! The worker's task table: one entry per resource it is responsible for, what `GET /tasks`
//! shows of it, and the health name that says the table is loaded.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

use super::retry::RetryState;
use crate::model::resource::Resource;
use crate::model::runner::{TaskHandle, TaskState};
use crate::model::task::TaskConfig;

/// Name of the worker in its gRPC health service.
pub const HEALTH_SERVICE: &str = "crawler.Worker";

/// One row of `GET /tasks`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskView {
    /// Task (resource) name.
    pub name: String,
    /// Resource id.
    pub resource_id: String,
    /// `AssignedNode` of the resource.
    pub assigned_node: String,
    /// Resource creation time, unix nanoseconds.
    pub creation_time: i64,
    /// When this worker started the run, RFC 3339 UTC.
    pub started: String,
    /// Same, unix milliseconds.
    pub started_unix_ms: u64,
    /// `running`, `finished` or `failed`.
    pub status: TaskState,
    /// Detail (error of a failed run, what the runner does).
    pub detail: Option<String>,
    /// Runner counters.
    pub stats: serde_json::Value,
    /// Times this run was started again after failing.
    pub retries: u32,
    /// The error that made the last retry necessary (or the pending one).
    pub last_error: Option<String>,
}

impl Entry {
    /// The run's error if it failed (ended failed, or could not start).
    pub(super) fn failure(&self) -> Option<String> {
        match &self.handle {
            Some(h) => {
                let r = h.report();
                (r.state == TaskState::Failed).then(|| r.detail.unwrap_or_else(|| "failed".into()))
            }
            None => Some(
                self.error
                    .clone()
                    .unwrap_or_else(|| "could not start".into()),
            ),
        }
    }
}

/// A resource this worker is responsible for.
pub(super) struct Entry {
    pub(super) resource: Resource,
    pub(super) started: SystemTime,
    /// `None` when the run could not start (`error` says why).
    pub(super) handle: Option<Box<dyn TaskHandle>>,
    pub(super) error: Option<String>,
    pub(super) retry: RetryState,
    /// The spec the run was started with (`None`: no spec was found).
    pub(super) task: Option<TaskConfig>,
    /// Mod revision of the resource key as last seen (guards progress reports).
    pub(super) mod_revision: i64,
    /// What was last published about the run.
    pub(super) published: Option<Published>,
}

impl Entry {
    pub(super) fn view(&self) -> TaskView {
        let (status, detail, stats) = match &self.handle {
            Some(h) => {
                let r = h.report();
                (r.state, r.detail, r.stats)
            }
            None => (
                TaskState::Failed,
                self.error.clone(),
                serde_json::Value::Null,
            ),
        };
        let ms = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        TaskView {
            name: self.resource.name.clone(),
            resource_id: self.resource.id.clone(),
            assigned_node: self.resource.assigned_node.clone(),
            creation_time: self.resource.creation_time,
            started: crate::util::time::rfc3339(self.started),
            started_unix_ms: ms,
            status,
            detail,
            stats,
            retries: self.retry.retries,
            last_error: self.retry.last_error.clone(),
        }
    }
}

/// What was last published for a run.
#[derive(Clone, Debug)]
pub(super) struct Published {
    pub(super) at: std::time::Instant,
    pub(super) pages: u64,
    pub(super) state: String,
    pub(super) detail: Option<String>,
}

/// State shared by the worker handle, its assignment loop and its HTTP API.
pub struct Shared {
    pub(super) node_id: String,
    pub(super) advertise: String,
    /// Runs by resource key suffix (`/resources/<key>`).
    pub(super) table: Mutex<BTreeMap<String, Entry>>,
    /// Highest store revision whose resource changes have been applied (0 before the first
    /// snapshot).
    pub(super) synced_revision: AtomicI64,
    /// Registered, assignments loaded and watched: what `GET /readyz` reports.
    pub(super) watching: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(super) fn views(&self) -> Vec<TaskView> {
        self.table.lock().values().map(Entry::view).collect()
    }
}
