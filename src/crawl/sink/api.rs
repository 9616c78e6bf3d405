//! The sink interface: [`Item`], [`Sink`] (one task's destination), [`SinkFactory`] (opens it
//! when the task's run starts) and [`SinkError`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::client::BoxFuture;
use crate::model::task::TaskConfig;

/// One extracted item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Task name.
    pub task: String,
    /// Item kind (`Items.Name` of the rule).
    pub kind: String,
    /// URL of the page it was found on.
    pub url: String,
    /// Position among the items of its page (0-based): with the task and URL, what identifies
    /// the item when the page is processed again.
    pub index: u32,
    /// Fields in configured order; `None` = not found on the page.
    pub fields: Vec<(String, Option<String>)>,
    /// When the page was fetched.
    pub fetched_at: SystemTime,
}

/// Fields as a JSON object in configured order.
pub(crate) struct OrderedFields<'a>(pub(crate) &'a [(String, Option<String>)]);

impl Serialize for OrderedFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

// The JSON lines format predates the item index and is kept as it was.
impl Serialize for Item {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("task", &self.task)?;
        m.serialize_entry("item", &self.kind)?;
        m.serialize_entry("url", &self.url)?;
        m.serialize_entry("fields", &OrderedFields(&self.fields))?;
        m.serialize_entry("fetched_at", &crate::util::time::rfc3339(self.fetched_at))?;
        m.end()
    }
}

/// Why a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Disk I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The item could not be encoded.
    #[error("cannot encode an item: {0}")]
    Encode(String),
    /// The results database could not be reached (down, refusing, no connection in time).
    #[error("results database unavailable: {target}: {source}")]
    Unavailable {
        /// The database (DSN without its password) and table.
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The results database refused a statement.
    #[error("results database {target}: {source}")]
    Database {
        /// The database (DSN without its password) and table.
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The results database did not answer in time.
    #[error("results database {target}: no answer within {secs} s")]
    Timeout {
        /// The database (DSN without its password) and table.
        target: String,
        /// The bound.
        secs: u64,
    },
    /// The sink's settings cannot be used (normally caught when the config is loaded).
    #[error("results sink: {0}")]
    Config(String),
}

/// A task's results destination.
pub trait Sink: Send + Sync {
    /// Take the items of one page (they may wait in a buffer until [`Sink::sync`]).
    fn write<'a>(&'a self, items: &'a [Item]) -> BoxFuture<'a, Result<(), SinkError>>;
    /// Make everything written so far durable (called before every checkpoint). On an error
    /// nothing written is lost: a later `sync` tries again.
    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// Opens the sink of a task when its run starts.
pub trait SinkFactory: Send + Sync + 'static {
    /// The sink for `task`.
    fn open<'a>(&'a self, task: &'a TaskConfig) -> BoxFuture<'a, Result<Arc<dyn Sink>, SinkError>>;
}
