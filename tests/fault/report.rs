//! Per-run report of the fault runner: what was injected, what was recorded, what the checks
//! concluded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::history::{History, OpKind, Outcome, OutcomeCounts};

/// Counts of operations by type and outcome.
#[derive(Clone, Debug, Default)]
pub struct OpStats {
    /// All operations (shadow reads of failed CAS included).
    pub total: OutcomeCounts,
    /// Per operation type: (ok, fail, unknown).
    pub by_type: BTreeMap<String, OutcomeCounts>,
}

/// Count a history's operations.
pub fn op_stats(history: &History) -> OpStats {
    let mut s = OpStats {
        total: history.counts(),
        ..Default::default()
    };
    for op in &history.ops {
        let name = match &op.kind {
            OpKind::Cas {
                succeeded: Some(false),
                ..
            }
            | OpKind::CasRevision {
                succeeded: Some(false),
                ..
            } if op.outcome == Outcome::Ok => format!("{}(false)", op.kind.name()),
            // Reads taken from a failed compare-and-set's failure branch.
            OpKind::Read { .. } if op.process >= super::workload::SHADOW_BASE => {
                "read(cas)".to_string()
            }
            k => k.name().to_string(),
        };
        let c = s.by_type.entry(name).or_default();
        match op.outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Unknown => c.unknown += 1,
        }
    }
    s
}

/// A named check and its violations (empty = passed).
#[derive(Clone, Debug, Default)]
pub struct Check {
    /// Check name.
    pub name: String,
    /// One-line summary of what was checked.
    pub summary: String,
    /// Violations found.
    pub violations: Vec<String>,
}

impl Check {
    /// A check with its summary and violations.
    pub fn new(name: &str, summary: String, violations: Vec<String>) -> Check {
        Check {
            name: name.to_string(),
            summary,
            violations,
        }
    }

    /// True when no violation was found.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Everything one seed's run produced.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Nemesis time.
    pub time: Duration,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Directory with history, logs and (with `--keep`) data dirs.
    pub run_dir: PathBuf,
    /// History file (JSON lines).
    pub history_path: Option<PathBuf>,
    /// Faults injected by type.
    pub faults: BTreeMap<String, usize>,
    /// Operation counts.
    pub ops: OpStats,
    /// Checker verdict line and time.
    pub checker: String,
    /// Whether the checker proved linearizability.
    pub linearizable: bool,
    /// Minimal counterexample, if any.
    pub counterexample: Option<String>,
    /// All checks (checker, watch, lease, liveness, ...).
    pub checks: Vec<Check>,
    /// Free-form lines (stats) printed in the report.
    pub notes: Vec<String>,
}

impl RunReport {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::ok)
    }

    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "=== seed {}: {} ({:.1?} of faults, {:.1?} wall) ===",
            self.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.time,
            self.wall
        );
        let _ = writeln!(s, "run dir:  {}", self.run_dir.display());
        if let Some(h) = &self.history_path {
            let _ = writeln!(s, "history:  {}", h.display());
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let total: usize = self.faults.values().sum();
        let _ = writeln!(s, "faults:   {total} ({})", faults.join(", "));
        let _ = writeln!(s, "ops:      {}", self.ops.total);
        for (k, c) in &self.ops.by_type {
            let _ = writeln!(
                s,
                "          {k:<14} ok {:>6}  fail {:>5}  unknown {:>5}",
                c.ok, c.fail, c.unknown
            );
        }
        let _ = writeln!(s, "{}", self.checker);
        for n in &self.notes {
            let _ = writeln!(s, "{n}");
        }
        for c in &self.checks {
            let verdict = if c.ok() {
                "ok".to_string()
            } else {
                format!("{} VIOLATION(S)", c.violations.len())
            };
            let _ = writeln!(s, "check {:<12} {verdict}: {}", c.name, c.summary);
            for v in c.violations.iter().take(20) {
                let _ = writeln!(s, "    - {v}");
            }
            if c.violations.len() > 20 {
                let _ = writeln!(s, "    ... and {} more", c.violations.len() - 20);
            }
        }
        if let Some(cx) = &self.counterexample {
            let _ = writeln!(s, "counterexample:\n{cx}");
        }
        s
    }
}
