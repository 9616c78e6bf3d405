//! Latency recording (HDR histogram) and the report of one `crawler bench` run.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks exactly (1 hour, in microseconds); larger values
/// saturate to it.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// How many distinct error messages a recorder keeps as samples for the report.
const MAX_ERROR_SAMPLES: usize = 5;

/// Per-client (then merged) record of op latencies, error counts and extra counters.
#[derive(Clone, Debug)]
pub struct Recorder {
    hist: Histogram<u64>,
    /// Ops that completed successfully.
    pub ops: u64,
    /// Ops that failed (and, per workload, missing or duplicate watch events).
    pub errors: u64,
    /// Workload-specific counters (`retries`, `missing`, `duplicates`, ...).
    pub extra: BTreeMap<String, u64>,
    error_samples: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder with microsecond resolution and 3 significant digits.
    pub fn new() -> Recorder {
        // Constant, valid bounds: creation cannot fail.
        let hist = Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
            .expect("constant histogram bounds are valid");
        Recorder {
            hist,
            ops: 0,
            errors: 0,
            extra: BTreeMap::new(),
            error_samples: Vec::new(),
        }
    }

    /// Record one successful op that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.clamp(1, MAX_TRACKED_US));
        self.ops += 1;
    }

    /// Record one failed op; the first few distinct messages are kept as samples.
    pub fn error(&mut self, msg: impl fmt::Display) {
        self.errors += 1;
        self.sample_error(msg.to_string());
    }

    /// Count `n` errors of one kind at once (e.g. missing watch events).
    pub fn errors_n(&mut self, n: u64, msg: impl fmt::Display) {
        if n == 0 {
            return;
        }
        self.errors += n;
        self.sample_error(msg.to_string());
    }

    fn sample_error(&mut self, msg: String) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&msg) {
            self.error_samples.push(msg);
        }
    }

    /// Add `n` to the workload counter `name`.
    pub fn add(&mut self, name: &str, n: u64) {
        *self.extra.entry(name.to_string()).or_insert(0) += n;
    }

    /// Fold another recorder (another client's) into this one.
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms share the same fixed bounds, so adding cannot go out of range;
        // should it ever, the saturating fallback keeps the counts.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.ops += other.ops;
        self.errors += other.errors;
        for (k, v) in &other.extra {
            *self.extra.entry(k.clone()).or_insert(0) += v;
        }
        for s in &other.error_samples {
            self.sample_error(s.clone());
        }
    }

    /// Latency at quantile `q` (0..=1) in milliseconds; 0 when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        us_to_ms(self.hist.value_at_quantile(q))
    }

    /// Build the final report of a run that measured for `elapsed`.
    pub fn report(&self, workload: &str, setup: RunSetup, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64();
        let qps = if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        };
        let (mean, max) = if self.hist.is_empty() {
            (0.0, 0.0)
        } else {
            (self.hist.mean() / 1000.0, us_to_ms(self.hist.max()))
        };
        Report {
            workload: workload.to_string(),
            endpoints: setup.endpoints,
            conns: setup.conns,
            clients: setup.clients,
            ops: self.ops,
            errors: self.errors,
            elapsed_s: round3(secs),
            qps: round3(qps),
            mean_ms: round3(mean),
            p50_ms: round3(self.quantile_ms(0.50)),
            p90_ms: round3(self.quantile_ms(0.90)),
            p99_ms: round3(self.quantile_ms(0.99)),
            p999_ms: round3(self.quantile_ms(0.999)),
            max_ms: round3(max),
            extra: self.extra.clone(),
            error_samples: self.error_samples.clone(),
        }
    }
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Round to 3 decimals so the JSON line stays short.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// How the run was set up (echoed in the report).
#[derive(Clone, Debug, Default)]
pub struct RunSetup {
    /// Endpoints the clients used.
    pub endpoints: Vec<String>,
    /// Number of gRPC connections.
    pub conns: usize,
    /// Number of concurrent clients.
    pub clients: usize,
}

/// The outcome of one run; printed for people and as one JSON line for scripts.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Workload name (`put`, `range`, ...).
    pub workload: String,
    /// Endpoints the clients used.
    pub endpoints: Vec<String>,
    /// Number of gRPC connections.
    pub conns: usize,
    /// Number of concurrent clients.
    pub clients: usize,
    /// Successful ops (watch-latency: events received).
    pub ops: u64,
    /// Failed ops plus missing/duplicate events.
    pub errors: u64,
    /// Measured wall time in seconds.
    pub elapsed_s: f64,
    /// `ops / elapsed_s`.
    pub qps: f64,
    /// Mean latency in milliseconds.
    pub mean_ms: f64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile latency in milliseconds.
    pub p90_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile latency in milliseconds.
    pub p999_ms: f64,
    /// Largest latency in milliseconds.
    pub max_ms: f64,
    /// Workload-specific counters.
    #[serde(flatten)]
    pub extra: BTreeMap<String, u64>,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
}

impl Report {
    /// The report as one JSON line (the last line of `crawler bench` output).
    pub fn json_line(&self) -> String {
        // Serializing plain numbers, strings and maps of them cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workload {}: {} clients over {} connections to {}",
            self.workload,
            self.clients,
            self.conns,
            self.endpoints.join(",")
        )?;
        writeln!(f, "  ops      {}", self.ops)?;
        writeln!(f, "  errors   {}", self.errors)?;
        writeln!(f, "  elapsed  {:.3} s", self.elapsed_s)?;
        writeln!(f, "  qps      {:.1}", self.qps)?;
        writeln!(
            f,
            "  latency  mean {:.3} ms, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            self.mean_ms, self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )?;
        for (k, v) in &self.extra {
            writeln!(f, "  {k:<8} {v}")?;
        }
        for s in &self.error_samples {
            writeln!(f, "  error: {s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> RunSetup {
        RunSetup {
            endpoints: vec!["127.0.0.1:2379".to_string()],
            conns: 1,
            clients: 2,
        }
    }

    #[test]
    fn percentiles_qps_and_merge() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        // 1..=100 ms split over two clients.
        for ms in 1..=100u64 {
            let r = if ms % 2 == 0 { &mut a } else { &mut b };
            r.record(Duration::from_millis(ms));
        }
        a.error("boom");
        b.error("boom");
        b.error("bang");
        a.add("retries", 3);
        b.add("retries", 4);
        a.merge(&b);
        assert_eq!(a.ops, 100);
        assert_eq!(a.errors, 3);
        assert_eq!(a.extra.get("retries"), Some(&7));

        let r = a.report("put", setup(), Duration::from_secs(4));
        assert_eq!(r.ops, 100);
        assert!((r.qps - 25.0).abs() < 1e-9, "{}", r.qps);
        // 3 significant digits: values are exact to within 0.1%.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(r.p50_ms, 50.0), "p50 {}", r.p50_ms);
        assert!(close(r.p90_ms, 90.0), "p90 {}", r.p90_ms);
        assert!(close(r.p99_ms, 99.0), "p99 {}", r.p99_ms);
        assert!(close(r.max_ms, 100.0), "max {}", r.max_ms);
        assert!(close(r.mean_ms, 50.5), "mean {}", r.mean_ms);
        assert_eq!(
            r.error_samples,
            vec!["boom".to_string(), "bang".to_string()]
        );
    }

    #[test]
    fn empty_run_reports_zeros() {
        let r = Recorder::new().report("range", setup(), Duration::ZERO);
        assert_eq!(r.ops, 0);
        assert_eq!(r.qps, 0.0);
        assert_eq!(r.p99_ms, 0.0);
        assert_eq!(r.max_ms, 0.0);
    }

    #[test]
    fn sub_microsecond_and_huge_latencies_saturate() {
        let mut r = Recorder::new();
        r.record(Duration::from_nanos(10));
        r.record(Duration::from_secs(10 * 3600));
        assert_eq!(r.ops, 2);
        assert!(r.quantile_ms(0.0) >= 0.001);
        assert!(r.quantile_ms(1.0) <= 3_600_000.0 * 1.001);
    }

    #[test]
    fn json_line_has_the_script_fields() {
        let mut rec = Recorder::new();
        rec.record(Duration::from_micros(1500));
        rec.add("missing", 0);
        rec.errors_n(2, "missing events");
        let r = rec.report("watch-latency", setup(), Duration::from_millis(500));
        let line = r.json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert_eq!(v["workload"], "watch-latency");
        assert_eq!(v["ops"], 1);
        assert_eq!(v["errors"], 2);
        assert_eq!(v["qps"], 2.0);
        assert_eq!(v["p50_ms"], 1.5);
        assert_eq!(v["missing"], 0);
        for k in ["p90_ms", "p99_ms", "max_ms", "elapsed_s", "mean_ms"] {
            assert!(v[k].is_number(), "{k} missing in {line}");
        }
        assert!(r.to_string().contains("p99"));
    }
}
