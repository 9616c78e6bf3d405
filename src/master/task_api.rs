//! The task API's requests and answers, shared by the HTTP and gRPC front ends, the forwarder
//! and the operations ([`super::tasks`]).

use serde::{Deserialize, Serialize};

use super::api::ApiError;
use super::resources::validate_name;
use crate::crawl::validate::parse_spec_json;
use crate::model::task::TaskConfig;

/// A change to a task.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskCommand {
    /// Add a new task (spec and resource).
    Add(Box<TaskConfig>),
    /// Replace the spec of a task.
    Put(Box<TaskConfig>),
    /// Stop and remove a task; `purge` also removes its checkpoints.
    Delete {
        /// Remove the checkpoints too.
        purge: bool,
    },
    /// Stop a task, keeping its checkpoint, until resumed.
    Pause,
    /// Run a paused task again.
    Resume,
    /// Forget the progress (checkpoints, done mark) and start over.
    Recrawl,
}

impl TaskCommand {
    /// The command's name on the wire (gRPC).
    pub fn action(&self) -> &'static str {
        match self {
            TaskCommand::Add(_) => "add",
            TaskCommand::Put(_) => "put",
            TaskCommand::Delete { .. } => "delete",
            TaskCommand::Pause => "pause",
            TaskCommand::Resume => "resume",
            TaskCommand::Recrawl => "recrawl",
        }
    }

    /// The spec a command carries.
    pub fn spec(&self) -> Option<&TaskConfig> {
        match self {
            TaskCommand::Add(t) | TaskCommand::Put(t) => Some(t),
            _ => None,
        }
    }

    /// Decode a command from its wire form (`spec_json` for add and put).
    pub fn decode(action: &str, spec_json: &[u8], purge: bool) -> Result<Self, ApiError> {
        Ok(match action {
            "add" => TaskCommand::Add(Box::new(parse_spec(spec_json)?)),
            "put" => TaskCommand::Put(Box::new(parse_spec(spec_json)?)),
            "delete" => TaskCommand::Delete { purge },
            "pause" => TaskCommand::Pause,
            "resume" => TaskCommand::Resume,
            "recrawl" => TaskCommand::Recrawl,
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "unknown task action {other:?}"
                )))
            }
        })
    }
}

/// A submitted spec, decoded and checked: a 400 naming the field otherwise.
pub fn parse_spec(json: &[u8]) -> Result<TaskConfig, ApiError> {
    let t = parse_spec_json(json).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    validate_name(&t.name).map_err(|e| ApiError::InvalidArgument(format!("Name: {e}")))?;
    Ok(t)
}

/// A task as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Task name.
    pub name: String,
    /// `running`, `finished`, `failed`, `paused`, `assigned` (waiting for the worker's first
    /// report), `unassigned` (no live worker), `no_spec` or `stopped` (a spec without resource).
    pub state: String,
    /// Why, or what the run does.
    pub detail: Option<String>,
    /// Node id of the worker it is assigned to.
    pub worker: Option<String>,
    /// Resource ID.
    pub resource_id: Option<String>,
    /// Pages fetched.
    pub pages: u64,
    /// Items extracted.
    pub items: u64,
    /// Requests failed for good.
    pub errors: u64,
    /// Requests pending.
    pub frontier: u64,
    /// Pages per second over the last report interval.
    pub pages_per_sec: f64,
    /// When the last checkpoint was written.
    pub last_checkpoint: Option<String>,
    /// When the worker last reported.
    pub updated_at: Option<String>,
}

/// A task's spec and status (`GET /crawler/tasks/<name>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The spec (`None` for a resource added without one).
    pub spec: Option<TaskConfig>,
    /// Its status.
    pub status: TaskStatus,
}
