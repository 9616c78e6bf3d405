//! Tasks as data: where a task's spec, pause mark and published progress live in the store, and
//! the progress document workers publish for any master to read.
//!
//! - `/crawler/specs/<name>`: the spec, a `[[Tasks]]` table as JSON (same field names);
//! - `/crawler/paused/<name>`: present while the task is paused (its resource is unassigned);
//! - `/crawler/status/<name>`: the [`TaskProgress`] of the worker running it, rewritten at the
//!   checkpoint cadence.
//!
//! All three are written or deleted by the master leader in the same fenced txn as the resource,
//! except the progress, which the worker running the task writes guarded by the resource key.

use serde::{Deserialize, Serialize};

/// Prefix of the spec keys.
pub const SPEC_PREFIX: &str = "/crawler/specs/";
/// Prefix of the pause marks.
pub const PAUSED_PREFIX: &str = "/crawler/paused/";
/// Prefix of the published progress documents.
pub const STATUS_PREFIX: &str = "/crawler/status/";

/// `/crawler/specs/<name>`.
pub fn spec_key(name: &str) -> String {
    format!("{SPEC_PREFIX}{name}")
}

/// `/crawler/paused/<name>`.
pub fn paused_key(name: &str) -> String {
    format!("{PAUSED_PREFIX}{name}")
}

/// `/crawler/status/<name>`.
pub fn status_key(name: &str) -> String {
    format!("{STATUS_PREFIX}{name}")
}

/// What the worker running a task publishes about it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// `running`, `finished` or `failed`.
    pub state: String,
    /// What the run is doing, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Node id of the worker.
    pub worker: String,
    /// Resource ID of the run.
    pub resource_id: String,
    /// Pages fetched (a resumed run counts its predecessors').
    #[serde(default)]
    pub pages: u64,
    /// Items extracted.
    #[serde(default)]
    pub items: u64,
    /// Requests failed for good.
    #[serde(default)]
    pub errors: u64,
    /// Requests pending.
    #[serde(default)]
    pub frontier: u64,
    /// Pages per second since the previous report of this run.
    #[serde(default)]
    pub pages_per_sec: f64,
    /// When the last checkpoint was written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<String>,
    /// When this report was written (RFC 3339).
    pub updated_at: String,
}

impl TaskProgress {
    /// The JSON stored in the value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}
