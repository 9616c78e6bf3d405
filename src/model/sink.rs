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

/// What a DSN's password is shown as in the task API.
pub const REDACTED: &str = "***";

/// `dsn` with its password replaced by [`REDACTED`] (unchanged when it has none or is no URL).
pub fn redact_dsn(dsn: &str) -> String {
    match url::Url::parse(dsn) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(REDACTED));
            u.to_string()
        }
        _ => dsn.to_string(),
    }
}

impl SinkConfig {
    /// The same settings with the DSN's password hidden (what the API shows).
    pub fn redacted(&self) -> Self {
        Self {
            dsn: self.dsn.as_deref().map(redact_dsn),
            ..self.clone()
        }
    }

    /// A DSN submitted with a [`REDACTED`] password (as the API showed it) takes the password
    /// of `stored`, when that DSN is the same but for the password.
    pub fn restore_password(&mut self, stored: &SinkConfig) {
        let (Some(new), Some(old)) = (self.dsn.as_deref(), stored.dsn.as_deref()) else {
            return;
        };
        let (Ok(mut n), Ok(o)) = (url::Url::parse(new), url::Url::parse(old)) else {
            return;
        };
        if n.password() != Some(REDACTED) || redact_dsn(old) != new {
            return;
        }
        if n.set_password(o.password()).is_ok() {
            self.dsn = Some(n.to_string());
        }
    }

    /// The table items go to.
    pub fn table(&self) -> &str {
        self.table.as_deref().unwrap_or(DEFAULT_SINK_TABLE)
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_restored() {
        let stored = SinkConfig {
            kind: SinkKind::Postgres,
            dsn: Some("postgres://u:secret@127.0.0.1:5432/db".into()),
            table: None,
        };
        let shown = stored.redacted();
        assert_eq!(
            shown.dsn.as_deref(),
            Some("postgres://u:***@127.0.0.1:5432/db")
        );
        let mut back = shown.clone();
        back.restore_password(&stored);
        assert_eq!(back, stored);
        // Another host keeps what was submitted.
        let mut other = SinkConfig {
            dsn: Some("postgres://u:***@10.0.0.1:5432/db".into()),
            ..stored.clone()
        };
        other.restore_password(&stored);
        assert_eq!(
            other.dsn.as_deref(),
            Some("postgres://u:***@10.0.0.1:5432/db")
        );
    }
}
