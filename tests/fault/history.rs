//! Operation histories of a KV workload: what each client asked, when, and what came back.
//!
//! Times are nanoseconds since the [`Recorder`] was created, from one monotonic clock shared by
//! every client of the test process, so real-time order between operations is exact.
//!
//! Result semantics, as the checker reads them:
//! - [`Outcome::Ok`]: the operation took effect exactly once between `invoke` and `complete`,
//!   and its observed results (read value, CAS success, revisions) are those recorded. A CAS
//!   whose comparison did not hold is `Ok` with `succeeded: Some(false)`.
//! - [`Outcome::Fail`]: the operation definitely did not take effect.
//! - [`Outcome::Unknown`]: it may have taken effect at any time after `invoke`, or never
//!   (timeouts, dropped connections); `complete` is `None`.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Errors from recording, saving, loading or validating a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing the history file failed.
    #[error("history file {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of a history file is not a valid operation.
    #[error("history file {path} line {line}: {source}")]
    Parse {
        /// The file involved.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// An operation cannot be serialized.
    #[error("serializing operation #{index}: {source}")]
    Serialize {
        /// Index of the operation in the history.
        index: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A handle does not name an operation of this recorder.
    #[error("unknown operation handle {0}")]
    BadHandle(usize),
    /// An operation is completed twice.
    #[error("operation #{0} completed twice")]
    AlreadyCompleted(usize),
    /// An operation's record is inconsistent (wrong result kind, missing result, bad times).
    #[error("operation #{index} is malformed: {reason}")]
    Malformed {
        /// Index of the operation in the history.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Took effect between invoke and complete, with the recorded results.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// May or may not have taken effect, at any time after invoke.
    Unknown,
}

/// What an operation asked for, plus (filled in on completion) what it observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpKind {
    /// Linearizable get; `value` is the observed value on `Ok` (`None` = key absent).
    Read {
        /// Observed value (`None` = absent).
        value: Option<String>,
        /// Observed mod revision, when the client recorded it.
        mod_revision: Option<u64>,
    },
    /// Unconditional put.
    Write {
        /// Value written.
        value: String,
        /// Revision of the put (response header revision), when known.
        revision: Option<u64>,
    },
    /// Delete of the key; afterwards it is absent with mod revision 0.
    Delete {
        /// Revision of the delete, when known.
        revision: Option<u64>,
    },
    /// Compare-and-set on the value: put `new` iff the current value equals `expected`
    /// (`expected: None` means "key absent").
    Cas {
        /// Required current value (`None` = absent).
        expected: Option<String>,
        /// Value written when the comparison holds.
        new: String,
        /// On `Ok`: whether the comparison held and `new` was written.
        succeeded: Option<bool>,
        /// Revision of the write, when it succeeded and the client recorded it.
        revision: Option<u64>,
    },
    /// Compare-and-set on the mod revision: put `new` iff the key's mod revision equals
    /// `expected_revision` (0 = key absent, as etcd compares a missing key).
    CasRevision {
        /// Required current mod revision (0 = absent).
        expected_revision: u64,
        /// Value written when the comparison holds.
        new: String,
        /// On `Ok`: whether the comparison held and `new` was written.
        succeeded: Option<bool>,
        /// Revision of the write, when it succeeded and the client recorded it.
        revision: Option<u64>,
    },
}

impl OpKind {
    /// A read request.
    pub fn read() -> Self {
        OpKind::Read {
            value: None,
            mod_revision: None,
        }
    }

    /// A put request.
    pub fn write(value: impl Into<String>) -> Self {
        OpKind::Write {
            value: value.into(),
            revision: None,
        }
    }

    /// A delete request.
    pub fn delete() -> Self {
        OpKind::Delete { revision: None }
    }

    /// A compare-value-and-set request (`expected: None` = key must be absent).
    pub fn cas(expected: Option<&str>, new: impl Into<String>) -> Self {
        OpKind::Cas {
            expected: expected.map(str::to_string),
            new: new.into(),
            succeeded: None,
            revision: None,
        }
    }

    /// A compare-mod-revision-and-set request (`expected_revision: 0` = key must be absent).
    pub fn cas_revision(expected_revision: u64, new: impl Into<String>) -> Self {
        OpKind::CasRevision {
            expected_revision,
            new: new.into(),
            succeeded: None,
            revision: None,
        }
    }

    /// Short name of the operation type.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Read { .. } => "read",
            OpKind::Write { .. } => "write",
            OpKind::Delete { .. } => "delete",
            OpKind::Cas { .. } => "cas",
            OpKind::CasRevision { .. } => "cas-rev",
        }
    }

    /// True for operations that may change the register (everything but reads).
    pub fn is_mutation(&self) -> bool {
        !matches!(self, OpKind::Read { .. })
    }
}

/// Results a client reports when an operation returns `Ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// Nothing to report (failed or unknown operations).
    Nothing,
    /// A read observed this value (`None` = absent) and mod revision.
    Read {
        /// Observed value.
        value: Option<String>,
        /// Observed mod revision, if recorded.
        mod_revision: Option<u64>,
    },
    /// A write or delete succeeded at this revision (if recorded).
    Written {
        /// Revision of the mutation.
        revision: Option<u64>,
    },
    /// A compare-and-set returned whether its comparison held, and the revision if it wrote.
    Cas {
        /// Whether the comparison held.
        succeeded: bool,
        /// Revision of the write, if recorded.
        revision: Option<u64>,
    },
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Logical client that issued the operation.
    pub process: u64,
    /// The key operated on.
    pub key: String,
    /// Request and observed results.
    pub kind: OpKind,
    /// Invocation time, ns since the recorder started.
    pub invoke: u64,
    /// Completion time for `Ok` and `Fail`; `None` when unknown or never returned.
    pub complete: Option<u64>,
    /// How the operation ended.
    pub outcome: Outcome,
}

impl Op {
    /// Checks that the record is self-consistent; `index` is only used in the error.
    pub fn validate(&self, index: usize) -> Result<(), HistoryError> {
        let bad = |reason: &str| HistoryError::Malformed {
            index,
            reason: reason.to_string(),
        };
        match self.outcome {
            Outcome::Ok | Outcome::Fail => match self.complete {
                None => return Err(bad("ok/fail operation without completion time")),
                Some(c) if c < self.invoke => return Err(bad("completes before it is invoked")),
                Some(_) => {}
            },
            Outcome::Unknown => {}
        }
        if self.outcome == Outcome::Ok {
            match &self.kind {
                OpKind::Cas {
                    succeeded: None, ..
                }
                | OpKind::CasRevision {
                    succeeded: None, ..
                } => return Err(bad("ok compare-and-set without its result")),
                _ => {}
            }
        }
        Ok(())
    }

    /// Renders the operation on one line; `index` is its position in the history.
    pub fn describe(&self, index: usize) -> String {
        let ret = match self.complete {
            Some(c) if self.outcome != Outcome::Unknown => fmt_time(c),
            _ => "?".to_string(),
        };
        format!(
            "#{index:<5} p{:<3} [{} .. {}] {:<7} {}",
            self.process,
            fmt_time(self.invoke),
            ret,
            format!("{:?}", self.outcome).to_lowercase(),
            self.describe_kind()
        )
    }

    /// `#index kind` for compact listings.
    pub fn describe_kind_with_index(&self, index: usize) -> String {
        format!("#{index} {}", self.describe_kind())
    }

    /// Renders request and results, e.g. `cas "1" -> "2" => true @rev 7`.
    pub fn describe_kind(&self) -> String {
        let ok = self.outcome == Outcome::Ok;
        let rev = |r: &Option<u64>| match r {
            Some(r) if ok => format!(" @rev {r}"),
            _ => String::new(),
        };
        match &self.kind {
            OpKind::Read {
                value,
                mod_revision,
            } => {
                if ok {
                    format!("read => {}{}", fmt_value(value), rev(mod_revision))
                } else {
                    "read".to_string()
                }
            }
            OpKind::Write { value, revision } => format!("write {value:?}{}", rev(revision)),
            OpKind::Delete { revision } => format!("delete{}", rev(revision)),
            OpKind::Cas {
                expected,
                new,
                succeeded,
                revision,
            } => format!(
                "cas {} -> {new:?}{}{}",
                fmt_value(expected),
                fmt_succeeded(ok, succeeded),
                rev(revision)
            ),
            OpKind::CasRevision {
                expected_revision,
                new,
                succeeded,
                revision,
            } => format!(
                "cas-rev {expected_revision} -> {new:?}{}{}",
                fmt_succeeded(ok, succeeded),
                rev(revision)
            ),
        }
    }
}

fn fmt_succeeded(ok: bool, succeeded: &Option<bool>) -> String {
    match succeeded {
        Some(s) if ok => format!(" => {s}"),
        _ => String::new(),
    }
}

/// Renders a register value: quoted string, or `absent`.
pub fn fmt_value(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "absent".to_string(),
    }
}

/// Renders a recorder timestamp (ns) as milliseconds with µs precision.
pub fn fmt_time(ns: u64) -> String {
    format!("{}.{:06}ms", ns / 1_000_000, ns % 1_000_000)
}

/// Operation counts by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Operations that returned `Ok`.
    pub ok: usize,
    /// Operations that definitely failed.
    pub fail: usize,
    /// Operations with unknown outcome.
    pub unknown: usize,
}

impl fmt::Display for OutcomeCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops: {} ok, {} fail, {} unknown",
            self.ok + self.fail + self.unknown,
            self.ok,
            self.fail,
            self.unknown
        )
    }
}

/// A complete history: operations in invocation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The operations; an operation's index is its identity in reports.
    pub ops: Vec<Op>,
}

impl History {
    /// Wraps a list of operations.
    pub fn new(ops: Vec<Op>) -> Self {
        History { ops }
    }

    /// Counts operations by outcome.
    pub fn counts(&self) -> OutcomeCounts {
        let mut c = OutcomeCounts::default();
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Fail => c.fail += 1,
                Outcome::Unknown => c.unknown += 1,
            }
        }
        c
    }

    /// Validates every operation.
    pub fn validate(&self) -> Result<(), HistoryError> {
        self.ops
            .iter()
            .enumerate()
            .try_for_each(|(i, op)| op.validate(i))
    }

    /// Writes the history as JSON lines, one operation per line.
    pub fn save(&self, path: &Path) -> Result<(), HistoryError> {
        let io = |source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut w = BufWriter::new(File::create(path).map_err(io)?);
        for (index, op) in self.ops.iter().enumerate() {
            let line = serde_json::to_string(op)
                .map_err(|source| HistoryError::Serialize { index, source })?;
            writeln!(w, "{line}").map_err(io)?;
        }
        w.flush().map_err(io)
    }

    /// Reads a history written by [`History::save`]; blank lines are skipped.
    pub fn load(path: &Path) -> Result<History, HistoryError> {
        let io = |source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let r = BufReader::new(File::open(path).map_err(io)?);
        let mut ops = Vec::new();
        for (i, line) in r.lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?;
            ops.push(op);
        }
        Ok(History { ops })
    }
}

/// Names a recorded operation so its client can complete it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpHandle(usize);

impl OpHandle {
    /// Index of the operation in the history.
    pub fn index(self) -> usize {
        self.0
    }
}

struct RecorderInner {
    start: Instant,
    ops: Mutex<Vec<(Op, bool)>>,
}

/// Thread-safe history recorder shared by all clients of a test (clone it freely).
///
/// Operations never completed (a client task that died) stay `Unknown`.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Starts a new, empty history; time zero is now.
    pub fn new() -> Self {
        Recorder {
            inner: Arc::new(RecorderInner {
                start: Instant::now(),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Current time on the recorder's clock (ns).
    pub fn now(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records the invocation of an operation; call it before sending the request.
    pub fn invoke(&self, process: u64, key: impl Into<String>, kind: OpKind) -> OpHandle {
        let key = key.into();
        let mut ops = self.inner.ops.lock();
        // Timestamp under the lock so indices follow invocation order.
        let op = Op {
            process,
            key,
            kind,
            invoke: self.now(),
            complete: None,
            outcome: Outcome::Unknown,
        };
        ops.push((op, false));
        OpHandle(ops.len() - 1)
    }

    /// Records the completion of an operation; call it after the response (or error) arrived.
    ///
    /// For `Ok`, `ret` must match the operation type (`Ret::Read` for reads, `Ret::Written`
    /// for writes and deletes, `Ret::Cas` for compare-and-sets); it is ignored otherwise.
    pub fn complete(&self, h: OpHandle, outcome: Outcome, ret: Ret) -> Result<(), HistoryError> {
        let now = self.now();
        let mut ops = self.inner.ops.lock();
        let (op, done) = ops.get_mut(h.0).ok_or(HistoryError::BadHandle(h.0))?;
        if *done {
            return Err(HistoryError::AlreadyCompleted(h.0));
        }
        if outcome == Outcome::Ok {
            let kind_name = op.kind.name();
            let mismatch = || HistoryError::Malformed {
                index: h.0,
                reason: format!("result {ret:?} does not fit a {kind_name} operation"),
            };
            match (&mut op.kind, &ret) {
                (
                    OpKind::Read {
                        value,
                        mod_revision,
                    },
                    Ret::Read {
                        value: v,
                        mod_revision: r,
                    },
                ) => {
                    *value = v.clone();
                    *mod_revision = *r;
                }
                (OpKind::Write { revision, .. }, Ret::Written { revision: r })
                | (OpKind::Delete { revision }, Ret::Written { revision: r }) => *revision = *r,
                (
                    OpKind::Cas {
                        succeeded,
                        revision,
                        ..
                    },
                    Ret::Cas {
                        succeeded: s,
                        revision: r,
                    },
                )
                | (
                    OpKind::CasRevision {
                        succeeded,
                        revision,
                        ..
                    },
                    Ret::Cas {
                        succeeded: s,
                        revision: r,
                    },
                ) => {
                    *succeeded = Some(*s);
                    *revision = if *s { *r } else { None };
                }
                _ => return Err(mismatch()),
            }
        }
        op.outcome = outcome;
        op.complete = match outcome {
            Outcome::Unknown => None,
            Outcome::Ok | Outcome::Fail => Some(now.max(op.invoke)),
        };
        *done = true;
        Ok(())
    }

    /// Completes a read with `Ok` and the observed value and mod revision.
    pub fn ok_read(
        &self,
        h: OpHandle,
        value: Option<String>,
        mod_revision: Option<u64>,
    ) -> Result<(), HistoryError> {
        self.complete(
            h,
            Outcome::Ok,
            Ret::Read {
                value,
                mod_revision,
            },
        )
    }

    /// Completes a write or delete with `Ok` and its revision (if known).
    pub fn ok_write(&self, h: OpHandle, revision: Option<u64>) -> Result<(), HistoryError> {
        self.complete(h, Outcome::Ok, Ret::Written { revision })
    }

    /// Completes a compare-and-set with `Ok`, whether it succeeded, and its revision.
    pub fn ok_cas(
        &self,
        h: OpHandle,
        succeeded: bool,
        revision: Option<u64>,
    ) -> Result<(), HistoryError> {
        self.complete(
            h,
            Outcome::Ok,
            Ret::Cas {
                succeeded,
                revision,
            },
        )
    }

    /// Completes an operation that definitely did not take effect.
    pub fn fail(&self, h: OpHandle) -> Result<(), HistoryError> {
        self.complete(h, Outcome::Fail, Ret::Nothing)
    }

    /// Completes an operation whose effect is unknown (timeout, lost connection).
    pub fn unknown(&self, h: OpHandle) -> Result<(), HistoryError> {
        self.complete(h, Outcome::Unknown, Ret::Nothing)
    }

    /// A snapshot of the history recorded so far (pending operations are `Unknown`).
    pub fn history(&self) -> History {
        History {
            ops: self
                .inner
                .ops
                .lock()
                .iter()
                .map(|(op, _)| op.clone())
                .collect(),
        }
    }
}
