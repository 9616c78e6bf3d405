//! Items in a PostgreSQL or MySQL/MariaDB table, through sqlx.
//!
//! `write` only buffers; `sync` (before each checkpoint) creates the table when missing, then
//! inserts the buffer in multi-row INSERTs inside one transaction, and empties the buffer only
//! once the transaction committed. A failed sync keeps the buffer for the next try, so nothing
//! is lost while the database is down.
//!
//! Delivery is exactly once: a page processed again (after a worker crash, or by the next owner
//! of a moved task) yields the same (task, url, item index) keys, and a row whose key exists is
//! skipped (`ON CONFLICT DO NOTHING` on PostgreSQL, a no-op `ON DUPLICATE KEY UPDATE` on MySQL:
//! unlike `INSERT IGNORE`, it does not also hide truncation and other data errors).
//!
//! Pools are opened lazily (a database that is down does not stop a task from starting) and
//! shared by every task writing to the same DSN.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{Executor as _, QueryBuilder};

use super::api::{Item, OrderedFields, Sink, SinkError};
use crate::client::BoxFuture;
use crate::model::sink::{SinkConfig, SinkKind};

/// Connections per database (shared by the worker's tasks; each sync holds one).
const POOL_CONNECTIONS: u32 = 4;
/// How long a sync waits for a connection: a database that is down fails the sync this soon.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one sync may take (a database that hangs fails it instead of stalling the run).
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows per INSERT: 7 parameters a row, far below both servers' 65535 placeholders.
const BATCH_ROWS: usize = 500;
/// Encoded bytes per INSERT, well below MariaDB's default `max_allowed_packet` (16 MiB).
const BATCH_BYTES: usize = 4 << 20;

/// A database pool of either kind.
#[derive(Clone, Debug)]
enum Pool {
    Pg(PgPool),
    My(MySqlPool),
}

/// The SQL sinks of a worker: one pool per (kind, DSN).
pub struct SqlSinks {
    worker: String,
    pools: Mutex<HashMap<(SinkKind, String), Pool>>,
}

impl std::fmt::Debug for SqlSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSinks")
            .field("worker", &self.worker)
            .field("pools", &self.pools.lock().len())
            .finish()
    }
}

/// `dsn` without its password (and query), for messages.
fn redact(dsn: &str) -> String {
    match url::Url::parse(dsn) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<unparsable DSN>".to_string(),
    }
}

impl SqlSinks {
    /// Sinks recording `worker` (the node id) with every row.
    pub fn new(worker: impl Into<String>) -> Self {
        Self {
            worker: worker.into(),
            pools: Mutex::new(HashMap::new()),
        }
    }

    fn pool(&self, kind: SinkKind, dsn: &str) -> Result<Pool, SinkError> {
        let mut pools = self.pools.lock();
        if let Some(p) = pools.get(&(kind, dsn.to_string())) {
            return Ok(p.clone());
        }
        let bad = |e: sqlx::Error| SinkError::Config(format!("DSN {}: {e}", redact(dsn)));
        let pool = match kind {
            SinkKind::Postgres => Pool::Pg(
                PgPoolOptions::new()
                    .max_connections(POOL_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(PgConnectOptions::from_str(dsn).map_err(bad)?),
            ),
            SinkKind::Mysql => Pool::My(
                MySqlPoolOptions::new()
                    .max_connections(POOL_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(MySqlConnectOptions::from_str(dsn).map_err(bad)?),
            ),
            SinkKind::Jsonl => return Err(SinkError::Config("jsonl is not a SQL sink".into())),
        };
        pools.insert((kind, dsn.to_string()), pool.clone());
        Ok(pool)
    }

    /// The sink of task `task` with settings `cfg` (a SQL kind). Does not connect.
    pub fn open<'a>(
        &'a self,
        cfg: &'a SinkConfig,
        task: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn Sink>, SinkError>> {
        Box::pin(async move {
            let dsn = cfg
                .dsn
                .as_deref()
                .ok_or_else(|| SinkError::Config(format!("Kind {:?} needs a DSN", cfg.kind)))?;
            let pool = self.pool(cfg.kind, dsn)?;
            Ok(Arc::new(SqlSink {
                pool,
                table: cfg.table().to_string(),
                target: format!("{} table {}", redact(dsn), cfg.table()),
                task: task.to_string(),
                worker: self.worker.clone(),
                ready: AtomicBool::new(false),
                buffer: tokio::sync::Mutex::new(Vec::new()),
            }) as Arc<dyn Sink>)
        })
    }
}

/// One buffered item, encoded.
#[derive(Debug)]
struct Row {
    url: String,
    index: i32,
    kind: String,
    /// The fields as a JSON object.
    fields: String,
    /// RFC 3339 UTC, milliseconds.
    fetched_at: String,
}

impl Row {
    fn bytes(&self) -> usize {
        self.url.len() + self.kind.len() + self.fields.len() + 64
    }
}

/// One task's table.
pub struct SqlSink {
    pool: Pool,
    table: String,
    /// For messages: DSN without password, and table.
    target: String,
    task: String,
    worker: String,
    /// The table is known to exist.
    ready: AtomicBool,
    buffer: tokio::sync::Mutex<Vec<Row>>,
}

impl std::fmt::Debug for SqlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSink")
            .field("target", &self.target)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

/// PostgreSQL's table: the key is the item's identity, as is.
fn pg_create(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (\
         task TEXT NOT NULL, \
         url TEXT NOT NULL, \
         item_index INTEGER NOT NULL, \
         item TEXT NOT NULL, \
         fields JSONB NOT NULL, \
         fetched_at TIMESTAMPTZ NOT NULL, \
         worker TEXT NOT NULL, \
         PRIMARY KEY (task, url, item_index))"
    )
}

/// MariaDB/MySQL's table. InnoDB keys are at most 3072 bytes and utf8mb4 takes 4 bytes a
/// character, so a URL (often longer than the 768 characters that would fit) cannot be in the
/// key: the key holds `url_hash`, the 128-bit XXH3 of the URL (computed here, not by a
/// generated column: MariaDB does not allow those in a primary key), and `url` is plain TEXT.
/// `task` is at most 255 characters (checked with the config). `fetched_at` is UTC.
fn my_create(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (\
         task VARCHAR(255) NOT NULL, \
         url_hash BINARY(16) NOT NULL, \
         url TEXT NOT NULL, \
         item_index INT NOT NULL, \
         item TEXT NOT NULL, \
         fields JSON NOT NULL, \
         fetched_at DATETIME(3) NOT NULL, \
         worker TEXT NOT NULL, \
         PRIMARY KEY (task, url_hash, item_index)\
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )
}

/// The key hash of a URL in the MySQL table.
pub fn url_hash(url: &str) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(url.as_bytes()).to_be_bytes()
}

/// `2022-12-12T10:34:28.798Z` as MySQL's `2022-12-12 10:34:28.798`.
fn mysql_datetime(rfc3339: &str) -> String {
    rfc3339.trim_end_matches('Z').replacen('T', " ", 1)
}

/// Consecutive slices of `rows`, each within [`BATCH_ROWS`] and (but for a single huge row)
/// [`BATCH_BYTES`].
fn batches(rows: &[Row]) -> Vec<&[Row]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in rows.iter().enumerate() {
        if i > start && (i - start >= BATCH_ROWS || bytes + r.bytes() > BATCH_BYTES) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += r.bytes();
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

impl SqlSink {
    fn db_err(&self) -> impl Fn(sqlx::Error) -> SinkError + '_ {
        move |source| {
            let target = self.target.clone();
            // Connection-level failures say "unavailable": the operator's cue to look at the
            // server, not at the data.
            match source {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed => SinkError::Unavailable { target, source },
                source => SinkError::Database { target, source },
            }
        }
    }

    async fn insert_pg(&self, pool: &PgPool, rows: &[Row]) -> Result<(), SinkError> {
        let err = self.db_err();
        if !self.ready.load(Ordering::Relaxed) {
            pool.execute(pg_create(&self.table).as_str())
                .await
                .map_err(&err)?;
            self.ready.store(true, Ordering::Relaxed);
        }
        let mut tx = pool.begin().await.map_err(&err)?;
        for batch in batches(rows) {
            let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
                "INSERT INTO \"{}\" (task, url, item_index, item, fields, fetched_at, worker) ",
                self.table
            ));
            q.push_values(batch, |mut b, r| {
                b.push_bind(self.task.clone())
                    .push_bind(r.url.clone())
                    .push_bind(r.index)
                    .push_bind(r.kind.clone())
                    .push_bind(r.fields.clone())
                    .push_unseparated("::jsonb")
                    .push_bind(r.fetched_at.clone())
                    .push_unseparated("::timestamptz")
                    .push_bind(self.worker.clone());
            });
            q.push(" ON CONFLICT (task, url, item_index) DO NOTHING");
            q.build().execute(&mut *tx).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    async fn insert_my(&self, pool: &MySqlPool, rows: &[Row]) -> Result<(), SinkError> {
        let err = self.db_err();
        if !self.ready.load(Ordering::Relaxed) {
            pool.execute(my_create(&self.table).as_str())
                .await
                .map_err(&err)?;
            self.ready.store(true, Ordering::Relaxed);
        }
        let mut tx = pool.begin().await.map_err(&err)?;
        for batch in batches(rows) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(format!(
                "INSERT INTO `{}` (task, url_hash, url, item_index, item, fields, fetched_at, \
                 worker) ",
                self.table
            ));
            q.push_values(batch, |mut b, r| {
                b.push_bind(self.task.clone())
                    .push_bind(url_hash(&r.url).to_vec())
                    .push_bind(r.url.clone())
                    .push_bind(r.index)
                    .push_bind(r.kind.clone())
                    .push_bind(r.fields.clone())
                    .push_bind(mysql_datetime(&r.fetched_at))
                    .push_bind(self.worker.clone());
            });
            q.push(" ON DUPLICATE KEY UPDATE item_index = item_index");
            q.build().execute(&mut *tx).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }
}

impl Sink for SqlSink {
    fn write<'a>(&'a self, items: &'a [Item]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if items.is_empty() {
                return Ok(());
            }
            let mut rows = Vec::with_capacity(items.len());
            for it in items {
                let fields = serde_json::to_string(&OrderedFields(&it.fields))
                    .map_err(|e| SinkError::Encode(e.to_string()))?;
                let index = i32::try_from(it.index)
                    .map_err(|_| SinkError::Encode(format!("item index {} too large", it.index)))?;
                rows.push(Row {
                    url: it.url.clone(),
                    index,
                    kind: it.kind.clone(),
                    fields,
                    fetched_at: crate::util::time::rfc3339(it.fetched_at),
                });
            }
            self.buffer.lock().await.extend(rows);
            Ok(())
        })
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let mut buffer = self.buffer.lock().await;
            if buffer.is_empty() {
                return Ok(());
            }
            let insert = async {
                match &self.pool {
                    Pool::Pg(p) => self.insert_pg(p, &buffer).await,
                    Pool::My(p) => self.insert_my(p, &buffer).await,
                }
            };
            // An abandoned transaction is rolled back by the server; the rows stay buffered.
            let r = match tokio::time::timeout(SYNC_TIMEOUT, insert).await {
                Ok(Ok(())) => {
                    buffer.clear();
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(_) => SinkError::Timeout {
                    target: self.target.clone(),
                    secs: SYNC_TIMEOUT.as_secs(),
                },
            };
            // The next try checks the table again (it may have been dropped meanwhile).
            self.ready.store(false, Ordering::Relaxed);
            Err(r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bytes: usize) -> Row {
        Row {
            url: String::new(),
            index: 0,
            kind: String::new(),
            fields: "x".repeat(bytes),
            fetched_at: String::new(),
        }
    }

    #[test]
    fn sink_batches_bound_rows_and_bytes() {
        let rows: Vec<Row> = (0..1201).map(|_| row(10)).collect();
        let sizes: Vec<usize> = batches(&rows).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![500, 500, 201]);
        let big: Vec<Row> = (0..5).map(|_| row(BATCH_BYTES / 2)).collect();
        let sizes: Vec<usize> = batches(&big).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1, 1, 1]);
        let huge = vec![row(BATCH_BYTES * 2)];
        assert_eq!(batches(&huge).len(), 1);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn sink_dsn_password_is_never_shown() {
        let r = redact("postgres://user:s3cret@127.0.0.1:5432/db?password=s3cret");
        assert_eq!(r, "postgres://user@127.0.0.1:5432/db");
        assert_eq!(
            mysql_datetime("2022-12-12T10:34:28.798Z"),
            "2022-12-12 10:34:28.798"
        );
        assert_ne!(url_hash("http://a/1"), url_hash("http://a/2"));
    }
}
