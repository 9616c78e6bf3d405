//! Which sink a task's items go to: the task's `Sink`, else the config's `[Sink]`, else JSON
//! lines.

use std::path::PathBuf;
use std::sync::Arc;

use super::api::{Sink, SinkError, SinkFactory};
use super::jsonl::JsonlSinks;
use super::sql::SqlSinks;
use crate::client::BoxFuture;
use crate::model::sink::SinkConfig;
use crate::model::task::TaskConfig;

/// The engine's factory: per task, the task's `Sink`, else the default (`[Sink]`), else JSON
/// lines under the data dir. Database pools are shared by every task with the same DSN.
pub struct RoutingSinks {
    jsonl: JsonlSinks,
    default: Option<SinkConfig>,
    sql: SqlSinks,
}

impl std::fmt::Debug for RoutingSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the default's DSN: it may hold a password.
        f.debug_struct("RoutingSinks")
            .field("jsonl", &self.jsonl)
            .field("default", &self.default.as_ref().map(|s| s.kind))
            .finish_non_exhaustive()
    }
}

impl RoutingSinks {
    /// JSON lines under `data_dir` unless a task or `default` says otherwise; `worker` (the
    /// node id) is recorded with every row written to a database.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        default: Option<SinkConfig>,
        worker: impl Into<String>,
    ) -> Self {
        Self {
            jsonl: JsonlSinks::new(data_dir),
            default,
            sql: SqlSinks::new(worker),
        }
    }

    /// The sink settings `task` runs with (`None`: JSON lines).
    pub fn settings_for<'a>(&'a self, task: &'a TaskConfig) -> Option<&'a SinkConfig> {
        task.sink.as_ref().or(self.default.as_ref())
    }
}

impl SinkFactory for RoutingSinks {
    fn open<'a>(&'a self, task: &'a TaskConfig) -> BoxFuture<'a, Result<Arc<dyn Sink>, SinkError>> {
        match self.settings_for(task) {
            Some(s) if s.kind.is_sql() => self.sql.open(s, &task.name),
            _ => self.jsonl.open(task),
        }
    }
}
