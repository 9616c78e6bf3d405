//! `crawler bench`: a load generator speaking etcd's v3 gRPC API, used to compare our store with
//! a real etcd under the same load.
//!
//! K clients are spread round-robin over C tonic channels (one HTTP/2 connection each), which
//! are spread round-robin over the endpoints. Each client runs its workload's op in a loop until
//! `--total` ops were started or `--duration` passed. It talks through the generated etcd gRPC
//! clients directly, so it measures the server and not our client abstraction.

mod args;
mod ctx;
mod kv;
mod lease;
pub(crate) mod stats;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

pub use args::{parse_duration, BenchArgs, Consistency, KeyArgs, Workload};
pub use ctx::BenchError;
pub use stats::{Recorder, Report, RunSetup};

use ctx::{connect, Ctx};

/// Run one benchmark and return its report.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(BenchError::Config("--endpoints is empty".into()));
    }
    if args.conns == 0 || args.clients == 0 {
        return Err(BenchError::Config(
            "--conns and --clients must be positive".into(),
        ));
    }
    if args.total == Some(0) {
        return Err(BenchError::Config("--total must be positive".into()));
    }
    let channels = connect(&endpoints, args.conns).await?;
    let ctx = Ctx {
        channels,
        clients: args.clients,
        setup: RunSetup {
            endpoints,
            conns: args.conns,
            clients: args.clients,
        },
        total: match (args.total, args.duration) {
            (None, None) => Some(10_000),
            (t, _) => t,
        },
        duration: args.duration,
    };
    match &args.workload {
        Workload::Put {
            keys,
            sequential_keys,
        } => kv::put(&ctx, keys, *sequential_keys).await,
        Workload::Range {
            keys,
            consistency,
            prefill,
        } => kv::range(&ctx, keys, *consistency, *prefill).await,
        Workload::TxnCas { keys, max_retries } => kv::txn_cas(&ctx, keys, *max_retries).await,
        Workload::WatchLatency {
            watchers,
            put_rate,
            val_size,
            drain_ms,
        } => {
            watch::watch_latency(
                &ctx,
                watch::WatchParams {
                    watchers: *watchers,
                    put_rate: *put_rate,
                    val_size: *val_size,
                    drain: Duration::from_millis(*drain_ms),
                },
            )
            .await
        }
        Workload::LeaseKeepalive { ttl } => lease::keepalive(&ctx, *ttl).await,
    }
}

/// Entry point of `crawler bench`: run, print the report and its JSON line.
pub fn main(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crawler bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            print!("{report}");
            println!("{}", report.json_line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crawler bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::ctx::Budget;
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "x", "0", "-1", "5h", "1e9"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn budget_by_total() {
        let b = Budget::new(Some(3), None);
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), Some(1));
        assert_eq!(b.take(), Some(2));
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
    }

    #[test]
    fn args_parse_with_global_flags_after_the_workload() {
        let a = BenchArgs::try_parse_from([
            "bench",
            "range",
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "--consistency",
            "s",
            "--clients",
            "4",
            "--duration",
            "3s",
            "--prefill",
        ])
        .expect("parse");
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.clients, 4);
        assert_eq!(a.duration, Some(Duration::from_secs(3)));
        assert!(matches!(
            a.workload,
            Workload::Range {
                consistency: Consistency::S,
                prefill: true,
                ..
            }
        ));
        assert!(
            BenchArgs::try_parse_from(["bench", "--total", "5", "--duration", "1s", "put"])
                .is_err()
        );
    }
}
