//! Where a task's extracted items go: the `[Sink]` section of `crawler.toml` (the default of
//! every task) and the optional `Sink` table of a task (`[Tasks.Sink]`), which overrides it.
//! Checked by `crate::crawl::validate::check_sink`; opened by `crate::crawl::sink`.

use serde::{Deserialize, Serialize};

/// Table items go to when `Table` is not set.
pub const DEFAULT_SINK_TABLE: &str = "crawler_items";

/// Which kind of results sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// JSON lines files, `<DataDir>/<task>.jsonl`.
    #[default]
    Jsonl,
    /// A PostgreSQL table.
    Postgres,
    /// A MySQL or MariaDB table.
    Mysql,
}

impl SinkKind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Jsonl => "jsonl",
            SinkKind::Postgres => "postgres",
            SinkKind::Mysql => "mysql",
        }
    }

    /// Whether items go to a database (which needs a `DSN`).
    pub fn is_sql(self) -> bool {
        matches!(self, SinkKind::Postgres | SinkKind::Mysql)
    }
}

/// A results sink (`[Sink]`, `[Tasks.Sink]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `jsonl` (default), `postgres` or `mysql` (MySQL and MariaDB).
    #[serde(rename = "Kind", default)]
    pub kind: SinkKind,
    /// Database URL, e.g. `postgres://user:pass@127.0.0.1:5432/db` or
    /// `mysql://user:pass@127.0.0.1:3306/db` (the SQL kinds only; required there).
    #[serde(rename = "DSN", default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<String>,
    /// Table name (the SQL kinds only; default `crawler_items`), created when missing.
    #[serde(rename = "Table", default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

impl SinkConfig {
    /// The table items go to.
    pub fn table(&self) -> &str {
        self.table.as_deref().unwrap_or(DEFAULT_SINK_TABLE)
    }
}
