//! Jepsen-style fault runner for the store (test target `fault`, `harness = false`).
//!
//! ```text
//! cargo test --test fault                                  # short CI schedule (3 seeds × 30 s)
//! cargo test --test fault -- --time 300 --seed 7           # one long run
//! cargo test --test fault -- --seeds 1,2,3 --faults kill,partition --nodes 5 --keep
//! cargo test --test fault -- --master --seed 1 --time 60  # master checks (master_check.rs)
//! ```
//!
//! Per seed: start a cluster whose peer links go through fault proxies, run the KV workload,
//! watchers and lease tasks while the nemesis injects faults, heal everything, require every
//! client to recover and a quiet window without errors, then check the history
//! (linearizability), the watch streams and the leases. See TESTING.md.

#[path = "mod.rs"]
mod fault;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fault::checker::{check_with, CheckConfig, Verdict};
use fault::cluster::{write_sentinel, ClusterConfig, FaultCluster};
use fault::history::{fmt_time, History, Outcome, Recorder};
use fault::lease_check::{self, LeaseConfig, LeaseWorkload};
use fault::master_check::{self, MasterRunConfig};
use fault::nemesis::{FaultKind, Nemesis};
use fault::report::{op_stats, Check, RunReport};
use fault::watch_check::{self, Watcher};
use fault::workload::{client_of, is_shadow, Workload, WorkloadConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;

/// Watched prefix; KV keys and lease keys live under it.
const PREFIX: &str = "/fault/";
const KV_PREFIX: &str = "/fault/kv/";
const LEASE_PREFIX: &str = "/fault/lease/";
/// Written last, so that watchers and history fetches know where the history ends.
const SENTINEL_KEY: &str = "/fault/zz-end";

/// Raft timing of the nodes (etcd's defaults).
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MS: u64 = 1000;
/// After the heal, every client must have completed an operation within this bound.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// Then, for this long, every operation must succeed.
const QUIET_WINDOW: Duration = Duration::from_secs(3);

/// Command line.
#[derive(Clone, Debug)]
struct Opts {
    time: Duration,
    seeds: Vec<u64>,
    faults: Vec<FaultKind>,
    nodes: usize,
    clients_per_node: usize,
    keys: usize,
    snapshot_count: u64,
    keep: bool,
    out: PathBuf,
    checker_budget: Duration,
    max_hold: Duration,
    /// Run the master checks instead of the store checks.
    master: bool,
    /// Worker processes in master mode.
    workers: usize,
    /// The plain CI invocation (no `--time`, `--seed(s)`, `--master`): after the store seeds,
    /// one short master seed ([`CI_MASTER_SEED`], [`CI_MASTER_TIME`]).
    ci_master: bool,
}

/// The master seed of the plain CI invocation.
const CI_MASTER_SEED: u64 = 1;
/// Its fault time.
const CI_MASTER_TIME: Duration = Duration::from_secs(20);

impl Default for Opts {
    fn default() -> Self {
        Opts {
            time: Duration::from_secs(30),
            seeds: vec![1, 2, 3],
            faults: FaultKind::ALL.to_vec(),
            nodes: 3,
            clients_per_node: 2,
            keys: 4,
            snapshot_count: 500,
            keep: false,
            out: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault"),
            checker_budget: Duration::from_secs(60),
            max_hold: Duration::from_secs(5),
            master: false,
            workers: 3,
            ci_master: true,
        }
    }
}

const USAGE: &str = "usage: cargo test --test fault -- [--time SECS] [--seed N | --seeds A,B,C] \
[--faults kill,pause,partition,membership|none] [--nodes N] [--clients-per-node N] [--keys N] \
[--snapshot-count N] [--max-hold SECS] [--checker-budget SECS] [--out DIR] [--keep] \
[--master [--workers N]]";

/// What to do, after parsing.
enum Action {
    Run(Opts),
    /// Print this and exit successfully (e.g. `--list`, or a test filter that excludes us).
    Exit(String),
}

fn parse_args(args: &[String]) -> Result<Action, String> {
    let mut o = Opts::default();
    let mut filters: Vec<String> = Vec::new();
    let mut i = 0;
    // libtest flags cargo may pass to every test target; ignored (value-taking ones skip it).
    const IGNORED_WITH_VALUE: [&str; 6] = [
        "--test-threads",
        "--color",
        "--format",
        "--logfile",
        "--skip",
        "-Z",
    ];
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (args[i].clone(), None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let num = |s: String| -> Result<u64, String> {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("not a number: {s:?}"))
        };
        match flag.as_str() {
            "--time" => {
                o.time = Duration::from_secs(num(value()?)?);
                o.ci_master = false;
            }
            "--seed" => {
                o.seeds = vec![num(value()?)?];
                o.ci_master = false;
            }
            "--seeds" => {
                o.ci_master = false;
                o.seeds = value()?
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| num(s.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--faults" => {
                let v = value()?;
                o.faults = if v.trim() == "none" {
                    Vec::new()
                } else {
                    v.split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| FaultKind::parse(s).ok_or(format!("unknown fault {s:?}")))
                        .collect::<Result<_, _>>()?
                };
            }
            "--nodes" => o.nodes = num(value()?)? as usize,
            "--clients-per-node" => o.clients_per_node = num(value()?)? as usize,
            "--keys" => o.keys = num(value()?)? as usize,
            "--snapshot-count" => o.snapshot_count = num(value()?)?,
            "--checker-budget" => o.checker_budget = Duration::from_secs(num(value()?)?),
            "--max-hold" => o.max_hold = Duration::from_secs(num(value()?)?),
            "--out" => o.out = PathBuf::from(value()?),
            "--keep" => o.keep = true,
            "--master" => {
                o.master = true;
                o.ci_master = false;
            }
            "--workers" => o.workers = num(value()?)? as usize,
            "--help" | "-h" => return Ok(Action::Exit(USAGE.to_string())),
            "--list" => return Ok(Action::Exit("fault: test".to_string())),
            "--ignored" | "--include-ignored" => {
                return Ok(Action::Exit(
                    "fault: not an ignored test; 0 passed, 0 failed".into(),
                ))
            }
            f if IGNORED_WITH_VALUE.contains(&f) => {
                if inline.is_none() {
                    i += 1;
                }
            }
            f if f.starts_with('-') => {} // other libtest flags (--nocapture, -q, --exact ...)
            f => filters.push(f.to_string()),
        }
        i += 1;
    }
    if !filters.is_empty() && !filters.iter().any(|f| "fault".contains(f.as_str())) {
        return Ok(Action::Exit(
            "fault: filtered out; 0 passed, 0 failed".to_string(),
        ));
    }
    if o.nodes < 1 || o.seeds.is_empty() || o.clients_per_node < 1 || o.keys < 1 {
        return Err(format!("nothing to run\n{USAGE}"));
    }
    Ok(Action::Run(o))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(Action::Run(o)) => o,
        Ok(Action::Exit(msg)) => {
            println!("{msg}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "fault runner: seeds {:?}, {:?} of faults each ({}), {} nodes, {} clients per node",
        opts.seeds,
        opts.time,
        opts.faults
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(","),
        opts.nodes,
        opts.clients_per_node
    );
    let mut passed = 0;
    let mut failed = 0;
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut total_ops = 0;
    let mut runs: Vec<(u64, Duration, bool)> = opts
        .seeds
        .iter()
        .map(|&s| (s, opts.time, opts.master))
        .collect();
    if opts.ci_master {
        runs.push((CI_MASTER_SEED, CI_MASTER_TIME, true));
    }
    for (seed, time, master) in runs {
        let report = if master {
            rt.block_on(master_check::run_seed(&MasterRunConfig {
                seed,
                time,
                faults: opts.faults.clone(),
                max_hold: opts.max_hold,
                nodes: opts.nodes,
                workers: opts.workers,
                clients: opts.clients_per_node,
                snapshot_count: opts.snapshot_count,
                out: opts.out.clone(),
                keep: opts.keep,
            }))
        } else {
            rt.block_on(run_seed(&opts, seed))
        };
        println!("{}", report.render());
        for (k, v) in &report.faults {
            *totals.entry(k.clone()).or_default() += v;
        }
        total_ops += report.ops.total.ok + report.ops.total.fail + report.ops.total.unknown;
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    let faults: Vec<String> = totals.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "total: {total_ops} ops, {} faults ({})",
        totals.values().sum::<usize>(),
        faults.join(", ")
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One seed's run; never panics on store misbehaviour, it reports it.
async fn run_seed(opts: &Opts, seed: u64) -> RunReport {
    let wall = Instant::now();
    let run_dir = opts.out.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut report = RunReport {
        seed,
        time: opts.time,
        run_dir: run_dir.clone(),
        ..Default::default()
    };
    println!("--- seed {seed}: run dir {}", run_dir.display());
    let cfg = ClusterConfig {
        nodes: opts.nodes,
        spare_slots: 2,
        heartbeat_ms: HEARTBEAT_MS,
        election_ms: ELECTION_MS,
        snapshot_count: opts.snapshot_count,
        dir: run_dir.join("data"),
        bin: PathBuf::from(env!("CARGO_BIN_EXE_crawler")),
    };
    let mut cluster = match FaultCluster::start(cfg).await {
        Ok(c) => c,
        Err(e) => {
            report.checks.push(Check::new(
                "startup",
                "cluster start".into(),
                vec![e.to_string()],
            ));
            return report;
        }
    };
    let recorder = Recorder::new();
    let topology = cluster.topology();
    let (until_tx, until_rx) = watch::channel::<Option<i64>>(None);
    let mut watchers: Vec<Watcher> = (0..opts.nodes)
        .map(|p| {
            Watcher::spawn(
                p,
                topology.clone(),
                PREFIX.to_string(),
                recorder.clone(),
                until_rx.clone(),
            )
        })
        .collect();
    let clients = opts.nodes * opts.clients_per_node;
    let workload = Workload::spawn(
        WorkloadConfig {
            clients,
            keys: opts.keys,
            prefix: KV_PREFIX.to_string(),
            op_timeout: Duration::from_millis(1500),
            seed,
        },
        topology.clone(),
        recorder.clone(),
    );
    let leases = LeaseWorkload::spawn(
        LeaseConfig {
            prefix: LEASE_PREFIX.to_string(),
            keep_ttl: 2,
            expire_ttl: 2,
            keepers: (0..opts.nodes.min(2)).collect(),
            seed,
        },
        topology.clone(),
        recorder.clone(),
    );

    // Faults.
    let mut nemesis = Nemesis::new(
        StdRng::seed_from_u64(seed),
        opts.faults.clone(),
        recorder.clone(),
    );
    nemesis.max_hold_ms = u64::try_from(opts.max_hold.as_millis()).unwrap_or(5000);
    nemesis
        .run(&mut cluster, tokio::time::Instant::now() + opts.time)
        .await;
    let healed_at = recorder.now();
    report.faults = nemesis.counts.clone();

    // Recovery: every member serves reads again, every client completes an operation, then a
    // quiet window in which nothing fails.
    let mut liveness = Vec::new();
    for s in cluster.member_slots() {
        if let Err(e) = cluster.wait_ready(s, RECOVERY_BOUND).await {
            liveness.push(format!("after heal: {e}"));
        }
    }
    let recovered_at = wait_clients_recovered(&recorder, clients, healed_at, &mut liveness).await;
    tokio::time::sleep(QUIET_WINDOW).await;
    workload.stop().await;
    let quiet_end = recovered_at + dur_ns(QUIET_WINDOW);
    let mut history = recorder.history();
    // A shadow read whose CAS did not report false constrains nothing: drop it.
    history
        .ops
        .retain(|op| !(is_shadow(op.process) && op.outcome == Outcome::Unknown));
    liveness.extend(quiet_failures(&history, recovered_at, quiet_end));
    let lease_records = leases.stop().await;

    // Leases must all be gone everywhere (bounded).
    let member_urls = topology.urls();
    let cleanup = lease_check::check_cleanup(
        &lease_records,
        &member_urls,
        Duration::from_secs(4 * 2 + 2 * ELECTION_MS / 1000 + 10),
    )
    .await;

    // End of history: a sentinel write, then watchers and reference histories up to it.
    let until_rev = match write_sentinel(&topology, SENTINEL_KEY).await {
        Ok(r) => r,
        Err(e) => {
            liveness.push(format!("sentinel write failed: {e}"));
            0
        }
    };
    until_tx.send_replace(Some(until_rev));
    let mut references: Vec<(String, Vec<watch_check::SeenEvent>)> = Vec::new();
    let mut watch_violations = Vec::new();
    if until_rev > 0 {
        for s in cluster.member_slots() {
            let name = cluster.slot(s).name.clone();
            let url = cluster.slot(s).client_url();
            match watch_check::fetch_history(
                &url,
                PREFIX,
                until_rev,
                &recorder,
                Duration::from_secs(20),
            )
            .await
            {
                Ok(h) => references.push((name, h)),
                Err(e) => liveness.push(format!("history of {name}: {e}")),
            }
        }
    }
    let mut watcher_events = 0;
    let mut resumes = 0;
    for w in watchers.iter_mut() {
        if !w.finish(Duration::from_secs(20)).await {
            let next = w.state.lock().next_rev;
            liveness.push(format!(
                "watcher {} did not reach revision {until_rev} (at {})",
                w.position,
                next - 1
            ));
        }
    }
    if let Some((_, reference)) = references.first() {
        for w in &watchers {
            let st = w.state.lock();
            watcher_events += st.events.len();
            resumes += st.streams.saturating_sub(1);
            let name = format!("watcher {}", w.position);
            watch_violations.extend(st.violations.iter().map(|v| format!("{name}: {v}")));
            watch_violations.extend(watch_check::check_watcher(&name, &st.events, reference));
        }
        watch_violations.extend(watch_check::check_members_agree(&references));
    }
    let write_violations = match references.first() {
        Some((_, r)) => watch_check::check_writes(&history, r, KV_PREFIX),
        None => Vec::new(),
    };

    // Leases.
    let seen: Vec<Vec<watch_check::SeenEvent>> = watchers
        .iter()
        .map(|w| w.state.lock().events.clone())
        .collect();
    let seen_refs: Vec<&[watch_check::SeenEvent]> = seen.iter().map(|v| v.as_slice()).collect();
    let mut lease_violations = lease_check::check_early_deletes(&lease_records, &seen_refs);
    lease_violations.extend(cleanup);
    lease_violations.extend(lease_check::check_delete_revisions(
        &lease_records,
        &references,
    ));
    let ls = lease_check::stats(&lease_records);

    // Crashes: any member process that exited on its own.
    let crashes = cluster.crashed();
    cluster.shutdown();

    // History file and linearizability.
    let history_path = run_dir.join("history.jsonl");
    match history.save(&history_path) {
        Ok(()) => report.history_path = Some(history_path),
        Err(e) => report.notes.push(format!("saving history failed: {e}")),
    }
    let nemesis_log: String = nemesis
        .events
        .iter()
        .map(|e| format!("{} {}\n", fmt_time(e.at), e.what))
        .collect();
    let _ = std::fs::write(run_dir.join("nemesis.log"), nemesis_log);
    dump_debug_files(&run_dir, &references, &seen, &lease_records);
    report.ops = op_stats(&history);
    let cfg = CheckConfig {
        time_budget: Some(opts.checker_budget),
        ..Default::default()
    };
    let mut checker_violations = Vec::new();
    match check_with(&history, &cfg) {
        Ok(res) => {
            report.checker = res.summary();
            report.linearizable = res.linearizable();
            report.counterexample = res.counterexample.clone();
            match res.verdict {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable => {
                    checker_violations.push("history is not linearizable".to_string())
                }
                Verdict::Unknown => {
                    checker_violations.push("checker ran out of budget (no verdict)".to_string())
                }
            }
        }
        Err(e) => {
            report.checker = format!("checker verdict: error: {e}");
            checker_violations.push(format!("history rejected: {e}"));
        }
    }
    report.checks.push(Check::new(
        "linearizable",
        format!("{} keys, register model", opts.keys),
        checker_violations,
    ));
    report.checks.push(Check::new(
        "writes",
        "acknowledged writes present once at their revision, no phantom writes".into(),
        write_violations,
    ));
    report.checks.push(Check::new(
        "watch",
        format!(
            "{} watchers, {watcher_events} events, {resumes} resumes; {} member histories \
             compared ({} events up to revision {until_rev})",
            watchers.len(),
            references.len(),
            references.first().map(|r| r.1.len()).unwrap_or(0)
        ),
        watch_violations,
    ));
    report.checks.push(Check::new(
        "lease",
        format!(
            "{} leases ({} granted, {} keys), keep-alives {} sent / {} ok, {} kept leases lost",
            ls.leases, ls.granted, ls.keys, ls.keepalives.0, ls.keepalives.1, ls.kept_lost
        ),
        lease_violations,
    ));
    report.checks.push(Check::new(
        "liveness",
        format!(
            "recovery after heal {}; quiet window {:?} without errors",
            fmt_time(recovered_at.saturating_sub(healed_at)),
            QUIET_WINDOW
        ),
        liveness,
    ));
    let mut problems = nemesis.problems.clone();
    problems.extend(crashes);
    report.checks.push(Check::new(
        "nemesis",
        "faults applied and healed as planned, no member crashed".into(),
        problems,
    ));
    report.wall = wall.elapsed();
    let _ = std::fs::write(run_dir.join("report.txt"), report.render());
    if report.passed() && !opts.keep {
        let _ = std::fs::remove_dir_all(run_dir.join("data"));
    }
    drop(cluster);
    report
}

/// Reference history, watcher streams and lease records as text, for post-mortems.
fn dump_debug_files(
    run_dir: &std::path::Path,
    references: &[(String, Vec<watch_check::SeenEvent>)],
    seen: &[Vec<watch_check::SeenEvent>],
    leases: &[lease_check::LeaseRecord],
) {
    let line = |e: &watch_check::SeenEvent| {
        format!(
            "{} rev={} {} {} value={:?} create={} version={} lease={:x} response={}\n",
            fmt_time(e.at),
            e.rev,
            if e.delete { "DELETE" } else { "PUT" },
            e.key,
            e.value,
            e.create_rev,
            e.version,
            e.lease,
            e.response
        )
    };
    if let Some((name, r)) = references.first() {
        let text: String = r.iter().map(line).collect();
        let _ = std::fs::write(run_dir.join(format!("history-{name}.txt")), text);
    }
    for (i, evs) in seen.iter().enumerate() {
        let text: String = evs.iter().map(line).collect();
        let _ = std::fs::write(run_dir.join(format!("watcher-{i}.txt")), text);
    }
    let text: String = leases
        .iter()
        .map(|r| {
            format!(
                "lease {:x} {:?} key={} ttl={} pos={} granted={} put={} ka_sent={} lost={:?} \
                 revoke={:?} successes=[{}]\n",
                r.id,
                r.kind,
                r.key,
                r.ttl,
                r.position,
                r.granted,
                r.put_ok,
                r.keepalives_sent,
                r.lost_at.map(fmt_time),
                r.revoke_sent.map(fmt_time),
                r.successes
                    .iter()
                    .map(|t| fmt_time(*t))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    let _ = std::fs::write(run_dir.join("leases.txt"), text);
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Wait until every client has completed an `Ok` operation invoked after `healed_at`; returns
/// the time the last one did (or now, after the bound, with a liveness violation).
async fn wait_clients_recovered(
    recorder: &Recorder,
    clients: usize,
    healed_at: u64,
    liveness: &mut Vec<String>,
) -> u64 {
    let deadline = Instant::now() + RECOVERY_BOUND;
    loop {
        let h = recorder.history();
        let mut first_ok: Vec<Option<u64>> = vec![None; clients];
        for op in &h.ops {
            if op.outcome == Outcome::Ok && op.invoke >= healed_at && !is_shadow(op.process) {
                let c = client_of(op.process, clients);
                let t = op.complete.unwrap_or(op.invoke);
                if first_ok[c].is_none_or(|x| t < x) {
                    first_ok[c] = Some(t);
                }
            }
        }
        if first_ok.iter().all(Option::is_some) {
            return first_ok
                .iter()
                .flatten()
                .copied()
                .max()
                .unwrap_or(healed_at);
        }
        if Instant::now() >= deadline {
            let stuck: Vec<usize> = (0..clients).filter(|&c| first_ok[c].is_none()).collect();
            liveness.push(format!(
                "clients {stuck:?} completed no operation within {RECOVERY_BOUND:?} after heal"
            ));
            return recorder.now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Operations invoked in the quiet window that did not succeed.
fn quiet_failures(history: &History, from: u64, to: u64) -> Vec<String> {
    history
        .ops
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            !is_shadow(op.process)
                && op.invoke >= from
                && op.invoke < to
                && op.outcome != Outcome::Ok
        })
        .map(|(i, op)| format!("quiet window: {}", op.describe(i)))
        .collect()
}
