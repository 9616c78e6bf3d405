//! Unit tests of the fault-test history model and linearizability checker (no server needed).

// Only the two modules under test, so that this target does not depend on the rest of the
// fault-test harness (tests/fault/{history,checker}.rs).
mod fault {
    #![allow(dead_code)]
    pub mod checker;
    pub mod history;
}

use std::io::Write as _;
use std::thread;

use fault::checker::{check, check_with, CheckConfig, CheckResult, Verdict};
use fault::history::{History, HistoryError, Op, OpKind, Outcome, Recorder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// History builders (times in arbitrary units; only their order matters)

fn op(process: u64, key: &str, kind: OpKind, invoke: u64, complete: u64) -> Op {
    Op {
        process,
        key: key.to_string(),
        kind,
        invoke,
        complete: Some(complete),
        outcome: Outcome::Ok,
    }
}

fn w(p: u64, key: &str, v: &str, inv: u64, ret: u64) -> Op {
    op(p, key, OpKind::write(v), inv, ret)
}

fn w_rev(p: u64, key: &str, v: &str, rev: u64, inv: u64, ret: u64) -> Op {
    let kind = OpKind::Write {
        value: v.to_string(),
        revision: Some(rev),
    };
    op(p, key, kind, inv, ret)
}

fn r(p: u64, key: &str, v: Option<&str>, inv: u64, ret: u64) -> Op {
    let kind = OpKind::Read {
        value: v.map(str::to_string),
        mod_revision: None,
    };
    op(p, key, kind, inv, ret)
}

fn r_rev(p: u64, key: &str, v: &str, rev: u64, inv: u64, ret: u64) -> Op {
    let kind = OpKind::Read {
        value: Some(v.to_string()),
        mod_revision: Some(rev),
    };
    op(p, key, kind, inv, ret)
}

#[allow(clippy::too_many_arguments)]
fn cas(p: u64, key: &str, exp: Option<&str>, new: &str, ok: bool, inv: u64, ret: u64) -> Op {
    let kind = OpKind::Cas {
        expected: exp.map(str::to_string),
        new: new.to_string(),
        succeeded: Some(ok),
        revision: None,
    };
    op(p, key, kind, inv, ret)
}

fn cas_rev(p: u64, key: &str, exp: u64, new: &str, ok: Option<u64>, inv: u64, ret: u64) -> Op {
    let kind = OpKind::CasRevision {
        expected_revision: exp,
        new: new.to_string(),
        succeeded: Some(ok.is_some()),
        revision: ok,
    };
    op(p, key, kind, inv, ret)
}

fn unknown(mut o: Op) -> Op {
    o.outcome = Outcome::Unknown;
    o.complete = None;
    o
}

fn failed(mut o: Op) -> Op {
    o.outcome = Outcome::Fail;
    o
}

fn run(ops: Vec<Op>) -> CheckResult {
    let h = History::new(ops);
    match check(&h) {
        Ok(res) => res,
        Err(e) => panic!("history rejected as malformed: {e}"),
    }
}

#[track_caller]
fn assert_ok(ops: Vec<Op>) {
    let res = run(ops);
    assert_eq!(
        res.verdict,
        Verdict::Linearizable,
        "expected linearizable:\n{}\n{}",
        res.summary(),
        res.counterexample.unwrap_or_default()
    );
    assert!(res.linearizable());
}

/// Asserts a violation and returns the counterexample text.
#[track_caller]
fn assert_bad(ops: Vec<Op>) -> String {
    let res = run(ops);
    assert_eq!(res.verdict, Verdict::NotLinearizable, "{}", res.summary());
    let cx = res
        .counterexample
        .expect("a violation comes with a counterexample");
    println!("{cx}");
    cx
}

// ---------------------------------------------------------------------------------------------
// Hand-written histories

#[test]
fn sequential_history_is_linearizable() {
    assert_ok(vec![
        r(1, "k", None, 0, 1),
        w(1, "k", "a", 2, 3),
        r(2, "k", Some("a"), 4, 5),
        cas(1, "k", Some("a"), "b", true, 6, 7),
        cas(2, "k", Some("a"), "c", false, 8, 9),
        r(3, "k", Some("b"), 10, 11),
        op(1, "k", OpKind::delete(), 12, 13),
        r(2, "k", None, 14, 15),
        cas(3, "k", None, "d", true, 16, 17),
        r(1, "k", Some("d"), 18, 19),
    ]);
}

#[test]
fn empty_history_is_linearizable() {
    assert_ok(vec![]);
}

#[test]
fn concurrent_writes_with_read_seeing_either() {
    for seen in ["1", "2"] {
        assert_ok(vec![
            w(1, "k", "1", 0, 10),
            w(2, "k", "2", 2, 12),
            r(3, "k", Some(seen), 15, 20),
        ]);
    }
    // A read overlapping both writes may also still see the initial absence.
    assert_ok(vec![
        w(1, "k", "1", 0, 10),
        w(2, "k", "2", 2, 12),
        r(3, "k", None, 1, 20),
    ]);
    // But two later reads cannot disagree once both writes are done.
    assert_bad(vec![
        w(1, "k", "1", 0, 10),
        w(2, "k", "2", 2, 12),
        r(3, "k", Some("1"), 15, 20),
        r(3, "k", Some("2"), 21, 22),
    ]);
}

#[test]
fn stale_read_is_rejected() {
    let cx = assert_bad(vec![
        w(1, "k", "0", 0, 5),
        w(1, "k", "1", 10, 20),
        r(2, "k", Some("0"), 30, 40),
    ]);
    assert!(cx.contains("key \"k\""), "{cx}");
    // The minimal window is the newer write and the stale read, from an arbitrary state.
    assert!(cx.contains("#1 "), "{cx}");
    assert!(cx.contains("#2 "), "{cx}");
    assert!(cx.contains("ANY register state"), "{cx}");
    assert!(
        !cx.contains("\n  #0 "),
        "the first write is not needed:\n{cx}"
    );
}

#[test]
fn lost_write_is_rejected() {
    let cx = assert_bad(vec![
        w(1, "k", "a", 0, 10),
        w(2, "k", "b", 20, 30),
        r(3, "k", Some("b"), 40, 50),
        r(3, "k", Some("b"), 60, 70),
        // A concurrent write was acknowledged, yet later reads never see it.
        w(1, "k", "lost", 35, 45),
        r(2, "k", Some("b"), 80, 90),
    ]);
    assert!(cx.contains("\"lost\""), "{cx}");
}

#[test]
fn lost_first_write_is_rejected_from_initial_state() {
    let cx = assert_bad(vec![w(1, "k", "a", 0, 10), r(2, "k", None, 20, 30)]);
    assert!(cx.contains("initial state"), "{cx}");
}

#[test]
fn unknown_writes_may_or_may_not_happen() {
    // One unknown write happened (it is read later), the other never did.
    assert_ok(vec![
        w(1, "k", "a", 0, 10),
        unknown(w(2, "k", "happened", 20, 0)),
        unknown(w(3, "k", "never", 21, 0)),
        r(1, "k", Some("happened"), 30, 40),
        r(1, "k", Some("happened"), 50, 60),
    ]);
    // Nothing observes the unknown writes at all.
    assert_ok(vec![
        w(1, "k", "a", 0, 10),
        unknown(w(2, "k", "x", 20, 0)),
        r(1, "k", Some("a"), 30, 40),
    ]);
}

#[test]
fn unknown_write_observed_long_after() {
    let mut ops = vec![w(1, "k", "a", 0, 10), unknown(w(2, "k", "late", 20, 0))];
    for i in 0..50 {
        ops.push(r(1, "k", Some("a"), 100 + 10 * i, 105 + 10 * i));
    }
    ops.push(r(3, "k", Some("late"), 10_000, 10_010));
    ops.push(r(1, "k", Some("late"), 10_020, 10_030));
    assert_ok(ops.clone());
    // It cannot take effect before it was invoked, nor flip back afterwards.
    ops.push(r(1, "k", Some("a"), 10_040, 10_050));
    assert_bad(ops);
    assert_bad(vec![
        r(1, "k", Some("early"), 0, 10),
        unknown(w(2, "k", "early", 20, 0)),
    ]);
}

#[test]
fn cas_success_and_failure_must_match_the_value() {
    assert_ok(vec![
        w(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", true, 20, 30),
        cas(3, "k", Some("a"), "c", false, 40, 50),
        r(1, "k", Some("b"), 60, 70),
    ]);
    // CAS succeeded although the value was different.
    let cx = assert_bad(vec![
        w(1, "k", "a", 0, 10),
        cas(2, "k", Some("z"), "b", true, 20, 30),
    ]);
    assert!(cx.contains("cas \"z\" -> \"b\" => true"), "{cx}");
    // CAS reported failure although the value matched and nothing else ran.
    assert_bad(vec![
        w(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", false, 20, 30),
    ]);
    // CAS on an absent key.
    assert_bad(vec![cas(2, "k", None, "b", false, 20, 30)]);
    assert_ok(vec![cas(2, "k", None, "b", true, 20, 30)]);
    // Two successful CASes from the same expected value cannot both win.
    assert_bad(vec![
        w(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", true, 20, 30),
        cas(3, "k", Some("a"), "c", true, 21, 31),
    ]);
    // A concurrent CAS sees the value before or after a concurrent write.
    assert_ok(vec![
        w(1, "k", "a", 0, 10),
        w(1, "k", "b", 20, 40),
        cas(2, "k", Some("a"), "c", true, 25, 30),
        r(3, "k", Some("b"), 50, 60),
    ]);
}

#[test]
fn unknown_cas_may_or_may_not_apply() {
    assert_ok(vec![
        w(1, "k", "a", 0, 10),
        unknown(cas(2, "k", Some("a"), "b", true, 20, 0)),
        r(1, "k", Some("b"), 30, 40),
    ]);
    assert_ok(vec![
        w(1, "k", "a", 0, 10),
        unknown(cas(2, "k", Some("a"), "b", true, 20, 0)),
        r(1, "k", Some("a"), 30, 40),
    ]);
    // Its comparison cannot hold here, so its value cannot appear.
    assert_bad(vec![
        w(1, "k", "a", 0, 10),
        unknown(cas(2, "k", Some("zz"), "b", true, 20, 0)),
        r(1, "k", Some("b"), 30, 40),
    ]);
}

#[test]
fn cas_on_mod_revision() {
    assert_ok(vec![
        w_rev(1, "k", "a", 5, 0, 10),
        cas_rev(2, "k", 5, "b", Some(6), 20, 30),
        cas_rev(3, "k", 5, "c", None, 40, 50),
        r_rev(1, "k", "b", 6, 60, 70),
        cas_rev(1, "k", 0, "d", None, 80, 90),
    ]);
    // CAS on revision 5 succeeded after another write had moved the key to revision 7.
    assert_bad(vec![
        w_rev(1, "k", "a", 5, 0, 10),
        w_rev(1, "k", "x", 7, 20, 30),
        cas_rev(2, "k", 5, "b", Some(8), 40, 50),
    ]);
    // Revision 0 compares against an absent key.
    assert_ok(vec![cas_rev(2, "k", 0, "b", Some(3), 20, 30)]);
    assert_bad(vec![cas_rev(2, "k", 0, "b", None, 20, 30)]);
    // A write of unknown revision: the first read pins it, a CAS may use it.
    assert_ok(vec![
        w(1, "k", "a", 0, 10),
        r_rev(2, "k", "a", 9, 20, 30),
        cas_rev(2, "k", 9, "b", Some(10), 40, 50),
    ]);
    assert_bad(vec![
        w(1, "k", "a", 0, 10),
        r_rev(2, "k", "a", 9, 20, 30),
        cas_rev(2, "k", 8, "b", Some(10), 40, 50),
    ]);
}

#[test]
fn revisions_must_increase_and_reads_must_match_them() {
    // The later write got a smaller revision than the earlier one.
    assert_bad(vec![
        w_rev(1, "k", "a", 5, 0, 10),
        w_rev(1, "k", "b", 4, 20, 30),
    ]);
    // Same value written twice: the revision tells which write a read saw.
    assert_bad(vec![
        w_rev(1, "k", "a", 5, 0, 10),
        w_rev(1, "k", "a", 6, 20, 30),
        r_rev(2, "k", "a", 5, 40, 50),
    ]);
    assert_ok(vec![
        w_rev(1, "k", "a", 5, 0, 10),
        w_rev(1, "k", "a", 6, 20, 30),
        r_rev(2, "k", "a", 6, 40, 50),
    ]);
}

#[test]
fn failed_op_must_not_be_observed() {
    let cx = assert_bad(vec![
        w(1, "k", "a", 0, 10),
        failed(w(2, "k", "ghost", 20, 30)),
        r(1, "k", Some("ghost"), 40, 50),
    ]);
    assert!(cx.contains("failed: must not take effect"), "{cx}");
    // A failed write that nobody observes is fine, and so is a failed read.
    assert_ok(vec![
        w(1, "k", "a", 0, 10),
        failed(w(2, "k", "ghost", 20, 30)),
        failed(r(3, "k", Some("nonsense"), 20, 30)),
        unknown(r(3, "k", Some("nonsense"), 31, 0)),
        r(1, "k", Some("a"), 40, 50),
    ]);
}

#[test]
fn keys_are_independent() {
    // The same values on different keys do not explain each other.
    assert_bad(vec![w(1, "a", "1", 0, 10), r(2, "b", Some("1"), 20, 30)]);
    let res = run(vec![
        w(1, "a", "1", 0, 10),
        w(2, "b", "2", 0, 10),
        r(3, "a", Some("1"), 20, 30),
        r(3, "b", Some("2"), 20, 30),
        w(1, "c", "x", 0, 10),
        w(1, "c", "y", 20, 30),
        r(2, "c", Some("x"), 40, 50),
    ]);
    assert_eq!(res.verdict, Verdict::NotLinearizable);
    let verdicts: Vec<(&str, Verdict)> = res
        .per_key
        .iter()
        .map(|k| (k.key.as_str(), k.verdict))
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("a", Verdict::Linearizable),
            ("b", Verdict::Linearizable),
            ("c", Verdict::NotLinearizable)
        ]
    );
    let cx = res.counterexample.unwrap_or_default();
    assert!(cx.contains("key \"c\""), "{cx}");
}

#[test]
fn budget_exhaustion_reports_unknown() {
    let h = simulate(&SimConfig {
        ops: 300,
        keys: 1,
        ..SimConfig::default()
    });
    let cfg = CheckConfig {
        max_steps_per_key: 10,
        ..CheckConfig::default()
    };
    let res = check_with(&h, &cfg).expect("valid history");
    assert_eq!(res.verdict, Verdict::Unknown, "{}", res.summary());
    assert!(!res.linearizable());
    assert!(res.summary().contains("budget"), "{}", res.summary());
}

#[test]
fn malformed_histories_are_errors() {
    let mut bad_time = w(1, "k", "a", 10, 5);
    bad_time.complete = Some(5);
    assert!(matches!(
        check(&History::new(vec![bad_time])),
        Err(HistoryError::Malformed { index: 0, .. })
    ));
    let mut no_result = cas(1, "k", Some("a"), "b", true, 0, 5);
    if let OpKind::Cas { succeeded, .. } = &mut no_result.kind {
        *succeeded = None;
    }
    assert!(check(&History::new(vec![no_result])).is_err());
    let mut no_complete = w(1, "k", "a", 0, 5);
    no_complete.complete = None;
    assert!(check(&History::new(vec![no_complete])).is_err());
}

// ---------------------------------------------------------------------------------------------
// Histories from a simulated linearizable register

struct SimConfig {
    seed: u64,
    ops: usize,
    keys: usize,
    processes: u64,
    p_unknown: f64,
    p_fail: f64,
    /// Longest operation duration; larger means more overlap.
    max_duration: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 7,
            ops: 400,
            keys: 3,
            processes: 6,
            p_unknown: 0.05,
            p_fail: 0.05,
            max_duration: 150,
        }
    }
}

/// Generates a history of a real sequential register: each operation takes effect atomically
/// at a random point of its interval (unknown ones possibly later or never, failed ones never),
/// so the result is linearizable by construction. Written values are unique.
fn simulate(cfg: &SimConfig) -> History {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut clock = vec![0u64; cfg.processes as usize];
    // (op, effect time if it takes effect)
    let mut ops: Vec<(Op, Option<u64>)> = Vec::with_capacity(cfg.ops);
    for _ in 0..cfg.ops {
        let p = rng.gen_range(0..cfg.processes);
        let invoke = clock[p as usize] + rng.gen_range(0..30);
        let complete = invoke + rng.gen_range(1..=cfg.max_duration);
        clock[p as usize] = complete;
        let key = format!("k{}", rng.gen_range(0..cfg.keys));
        let kind = match rng.gen_range(0..100) {
            0..=39 => OpKind::read(),
            40..=64 => OpKind::write(""),
            65..=69 => OpKind::delete(),
            70..=89 => OpKind::cas(None, ""),
            _ => OpKind::cas_revision(0, ""),
        };
        let roll: f64 = rng.gen();
        let (outcome, effect) = if roll < cfg.p_unknown {
            // Unknown: maybe never, maybe long after the client gave up.
            let effect = rng
                .gen_bool(0.5)
                .then(|| invoke + rng.gen_range(0..4 * cfg.max_duration));
            (Outcome::Unknown, effect)
        } else if roll < cfg.p_unknown + cfg.p_fail {
            (Outcome::Fail, None)
        } else {
            (Outcome::Ok, Some(rng.gen_range(invoke..=complete)))
        };
        let o = Op {
            process: p,
            key,
            kind,
            invoke,
            complete: (outcome != Outcome::Unknown).then_some(complete),
            outcome,
        };
        ops.push((o, effect));
    }
    // Apply in effect order; operations that never take effect still get request contents.
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].1.unwrap_or(u64::MAX), i));
    let mut regs: std::collections::HashMap<String, (Option<String>, u64)> = Default::default();
    let mut revision = 1u64;
    for (n, i) in order.into_iter().enumerate() {
        let (o, effect) = &mut ops[i];
        let applies = effect.is_some();
        let reg = regs.entry(o.key.clone()).or_insert((None, 0));
        let fresh = format!("{}-v{n}", o.key);
        match &mut o.kind {
            OpKind::Read {
                value,
                mod_revision,
            } => {
                *value = reg.0.clone();
                *mod_revision = reg.0.is_some().then_some(reg.1);
            }
            OpKind::Write {
                value,
                revision: rev,
            } => {
                *value = fresh;
                if applies {
                    revision += 1;
                    *reg = (Some(value.clone()), revision);
                    *rev = Some(revision);
                }
            }
            OpKind::Delete { revision: rev } => {
                if applies {
                    revision += 1;
                    *reg = (None, 0);
                    *rev = Some(revision);
                }
            }
            OpKind::Cas {
                expected,
                new,
                succeeded,
                revision: rev,
            } => {
                *expected = if rng.gen_bool(0.6) {
                    reg.0.clone()
                } else {
                    Some(format!("{}-other{}", o.key, rng.gen_range(0..3)))
                };
                *new = fresh;
                let holds = applies && *expected == reg.0;
                *succeeded = Some(holds);
                if holds {
                    revision += 1;
                    *reg = (Some(new.clone()), revision);
                    *rev = Some(revision);
                }
            }
            OpKind::CasRevision {
                expected_revision,
                new,
                succeeded,
                revision: rev,
            } => {
                *expected_revision = if rng.gen_bool(0.6) { reg.1 } else { reg.1 + 1 };
                *new = fresh;
                let holds = applies && *expected_revision == reg.1;
                *succeeded = Some(holds);
                if holds {
                    revision += 1;
                    *reg = (Some(new.clone()), revision);
                    *rev = Some(revision);
                }
            }
        }
    }
    let mut ops: Vec<Op> = ops.into_iter().map(|(o, _)| o).collect();
    ops.sort_by_key(|o| o.invoke);
    History::new(ops)
}

/// The value an acknowledged mutation wrote, if any.
fn written(o: &Op) -> Option<(&str, Option<u64>)> {
    if o.outcome != Outcome::Ok {
        return None;
    }
    match &o.kind {
        OpKind::Write { value, revision } => Some((value.as_str(), *revision)),
        OpKind::Cas {
            new,
            succeeded: Some(true),
            revision,
            ..
        }
        | OpKind::CasRevision {
            new,
            succeeded: Some(true),
            revision,
            ..
        } => Some((new.as_str(), *revision)),
        _ => None,
    }
}

/// Makes one acknowledged read certainly stale: it returns the value of a write W1 although
/// another acknowledged mutation W2 ran entirely after W1 and entirely before the read.
/// Written values are unique, so nothing else can explain it. Returns the read's index.
fn make_stale_read(h: &mut History) -> Option<usize> {
    let ops = &h.ops;
    for (ri, r) in ops.iter().enumerate().rev() {
        if r.outcome != Outcome::Ok || !matches!(r.kind, OpKind::Read { .. }) {
            continue;
        }
        let same_key = |o: &&Op| o.key == r.key && o.outcome == Outcome::Ok;
        let before_read = |o: &Op| o.complete.is_some_and(|c| c < r.invoke);
        for w2 in ops.iter().filter(same_key).filter(|o| before_read(o)) {
            if !w2.kind.is_mutation()
                || matches!(
                    w2.kind,
                    OpKind::Cas {
                        succeeded: Some(false),
                        ..
                    } | OpKind::CasRevision {
                        succeeded: Some(false),
                        ..
                    }
                )
            {
                continue;
            }
            let w1 = ops
                .iter()
                .filter(same_key)
                .find(|w1| written(w1).is_some() && w1.complete.is_some_and(|c| c < w2.invoke));
            if let Some((v, rev)) = w1.and_then(written) {
                let (v, rev) = (v.to_string(), rev);
                if let OpKind::Read {
                    value,
                    mod_revision,
                } = &mut h.ops[ri].kind
                {
                    *value = Some(v);
                    *mod_revision = rev;
                }
                return Some(ri);
            }
        }
    }
    None
}

#[test]
fn simulated_histories_pass_and_mutations_fail() {
    for seed in 0..20 {
        let h = simulate(&SimConfig {
            seed,
            ..SimConfig::default()
        });
        let res = check(&h).expect("valid history");
        assert_eq!(
            res.verdict,
            Verdict::Linearizable,
            "seed {seed}: {}\n{}",
            res.summary(),
            res.counterexample.unwrap_or_default()
        );

        let mut stale = h.clone();
        let ri = make_stale_read(&mut stale).expect("a read to make stale");
        let res = check(&stale).expect("valid history");
        assert_eq!(
            res.verdict,
            Verdict::NotLinearizable,
            "seed {seed}: stale read #{ri}"
        );
        let cx = res.counterexample.unwrap_or_default();
        assert!(
            cx.contains(&format!("#{ri} ")),
            "seed {seed}, read #{ri}:\n{cx}"
        );
        if seed == 0 {
            println!("{cx}");
        }

        // A read of a value nobody ever wrote.
        let mut bogus = h.clone();
        let Some(ri) = bogus
            .ops
            .iter()
            .rposition(|o| o.outcome == Outcome::Ok && matches!(o.kind, OpKind::Read { .. }))
        else {
            panic!("seed {seed}: no read")
        };
        bogus.ops[ri].kind = OpKind::Read {
            value: Some("never-written".into()),
            mod_revision: None,
        };
        let res = check(&bogus).expect("valid history");
        assert_eq!(res.verdict, Verdict::NotLinearizable, "seed {seed}");
        let cx = res.counterexample.unwrap_or_default();
        assert!(cx.contains("never-written"), "seed {seed}:\n{cx}");
    }
}

#[test]
fn heavily_concurrent_single_key_histories_pass() {
    for seed in 100..110 {
        let h = simulate(&SimConfig {
            seed,
            ops: 300,
            keys: 1,
            processes: 10,
            max_duration: 400,
            ..SimConfig::default()
        });
        let res = check(&h).expect("valid history");
        assert_eq!(
            res.verdict,
            Verdict::Linearizable,
            "seed {seed}: {}",
            res.summary()
        );
    }
}

#[test]
fn many_unknown_operations_on_one_hot_key() {
    for seed in 0..2 {
        let h = simulate(&SimConfig {
            seed,
            ops: 1000,
            keys: 1,
            processes: 10,
            p_unknown: 0.1,
            p_fail: 0.02,
            max_duration: 400,
        });
        let res = check(&h).expect("valid history");
        println!("seed {seed}: {} ({})", res.summary(), h.counts());
        assert_eq!(res.verdict, Verdict::Linearizable, "seed {seed}");

        let mut stale = h.clone();
        let ri = make_stale_read(&mut stale).expect("a read to make stale");
        let res = check(&stale).expect("valid history");
        println!("seed {seed} with stale read #{ri}: {}", res.summary());
        assert_eq!(res.verdict, Verdict::NotLinearizable, "seed {seed}");
    }
}

#[test]
fn exhausted_search_still_proves_a_local_violation() {
    let mut h = simulate(&SimConfig {
        ops: 600,
        keys: 1,
        ..SimConfig::default()
    });
    let ri = make_stale_read(&mut h).expect("a read to make stale");
    let cfg = CheckConfig {
        max_steps_per_key: 50,
        ..CheckConfig::default()
    };
    let res = check_with(&h, &cfg).expect("valid history");
    assert_eq!(res.verdict, Verdict::NotLinearizable, "{}", res.summary());
    let cx = res.counterexample.unwrap_or_default();
    println!("{cx}");
    assert!(cx.contains("gave up"), "{cx}");
    assert!(cx.contains(&format!("#{ri} ")), "{cx}");
}

/// Larger sweep over unknown-outcome rates and concurrency (about a minute in debug builds).
#[test]
#[ignore]
fn stress_sweep() {
    let cases = [
        (0.05, 5, 10, 150),
        (0.15, 5, 10, 150),
        (0.3, 5, 10, 150),
        (0.1, 1, 10, 400),
        (0.2, 2, 20, 300),
    ];
    for (p_unknown, keys, processes, max_duration) in cases {
        for seed in 0..3 {
            let h = simulate(&SimConfig {
                seed,
                ops: 2000,
                keys,
                processes,
                p_unknown,
                p_fail: 0.02,
                max_duration,
            });
            let res = check(&h).expect("valid history");
            let mut stale = h.clone();
            make_stale_read(&mut stale).expect("a read to make stale");
            let bad = check(&stale).expect("valid history");
            println!(
                "unknown {p_unknown}, {keys} keys, {processes} processes, seed {seed}: {:?} / \
                 stale: {:?}",
                res.elapsed, bad.elapsed
            );
            assert_eq!(res.verdict, Verdict::Linearizable, "{}", res.summary());
            assert_eq!(bad.verdict, Verdict::NotLinearizable, "{}", bad.summary());
        }
    }
}

#[test]
fn performance_sanity_2000_ops() {
    let h = simulate(&SimConfig {
        seed: 42,
        ops: 2000,
        keys: 5,
        processes: 10,
        p_unknown: 0.02,
        p_fail: 0.02,
        max_duration: 150,
    });
    let res = check(&h).expect("valid history");
    let steps: u64 = res.per_key.iter().map(|k| k.steps).sum();
    println!(
        "2000 ops / 5 keys / 10 processes: {} ({}), {steps} steps",
        res.summary(),
        h.counts()
    );
    assert_eq!(res.verdict, Verdict::Linearizable, "{}", res.summary());

    let mut stale = h.clone();
    let ri = make_stale_read(&mut stale).expect("a read to make stale");
    let res = check(&stale).expect("valid history");
    println!("with stale read #{ri}: {}", res.summary());
    assert_eq!(res.verdict, Verdict::NotLinearizable);
}

// ---------------------------------------------------------------------------------------------
// Cross-check against a brute-force reference on small random histories

/// Reference register state: value and mod revision, where an unrecorded revision is named
/// by the operation that produced it.
#[derive(Clone, Debug, PartialEq)]
enum RefRev {
    Known(u64),
    Unrecorded,
}

/// The checker's documented semantics, implemented directly and searched exhaustively (no
/// caching, no pruning). Only for tiny histories.
struct Reference<'a> {
    ops: Vec<&'a Op>,
    claimed: Vec<u64>,
}

impl<'a> Reference<'a> {
    fn new(h: &'a History) -> Self {
        let claimed = h
            .ops
            .iter()
            .filter(|o| o.outcome == Outcome::Ok)
            .filter_map(|o| match &o.kind {
                OpKind::Write { revision, .. } | OpKind::Delete { revision } => *revision,
                OpKind::Cas {
                    succeeded: Some(true),
                    revision,
                    ..
                }
                | OpKind::CasRevision {
                    succeeded: Some(true),
                    revision,
                    ..
                } => *revision,
                _ => None,
            })
            .collect();
        // Failed operations never happen; unknown reads constrain nothing.
        let ops = h
            .ops
            .iter()
            .filter(|o| match o.outcome {
                Outcome::Ok => true,
                Outcome::Fail => false,
                Outcome::Unknown => o.kind.is_mutation(),
            })
            .collect();
        Reference { ops, claimed }
    }

    fn rev_eq(&self, s: &RefRev, r: u64) -> Option<bool> {
        match s {
            RefRev::Known(k) => Some(*k == r),
            RefRev::Unrecorded if r == 0 || self.claimed.contains(&r) => Some(false),
            RefRev::Unrecorded => None,
        }
    }

    /// The state after `op`, or `None` if it cannot take effect now.
    fn apply(&self, s: &(Option<String>, RefRev), op: &Op) -> Option<(Option<String>, RefRev)> {
        let certain = op.outcome == Outcome::Ok;
        let result_rev = |r: &Option<u64>| match r {
            Some(r) if certain => RefRev::Known(*r),
            _ => RefRev::Unrecorded,
        };
        let rises = |new: &RefRev| match (new, &s.1) {
            (RefRev::Known(n), RefRev::Known(k)) => n > k,
            _ => true,
        };
        let cas = |holds: Option<bool>, succeeded: &Option<bool>, new: &str, rev: RefRev| {
            let succeeded = if certain { *succeeded } else { None };
            match (holds, succeeded) {
                (Some(true), Some(false)) => None,
                (_, Some(false)) => Some(s.clone()),
                (Some(false), Some(true)) => None,
                // Unknown outcome and the comparison fails: a no-op.
                (Some(false), None) => Some(s.clone()),
                _ => rises(&rev).then(|| (Some(new.to_string()), rev)),
            }
        };
        match &op.kind {
            OpKind::Read {
                value,
                mod_revision,
            } => {
                if *value != s.0 {
                    return None;
                }
                match mod_revision.map(|r| (r, self.rev_eq(&s.1, r))) {
                    None | Some((_, Some(true))) => Some(s.clone()),
                    Some((_, Some(false))) => None,
                    Some((r, None)) => Some((s.0.clone(), RefRev::Known(r))),
                }
            }
            OpKind::Write { value, revision } => {
                let rev = result_rev(revision);
                rises(&rev).then(|| (Some(value.clone()), rev))
            }
            OpKind::Delete { revision } => {
                rises(&result_rev(revision)).then_some((None, RefRev::Known(0)))
            }
            OpKind::Cas {
                expected,
                new,
                succeeded,
                revision,
            } => cas(Some(*expected == s.0), succeeded, new, result_rev(revision)),
            OpKind::CasRevision {
                expected_revision,
                new,
                succeeded,
                revision,
            } => cas(
                self.rev_eq(&s.1, *expected_revision),
                succeeded,
                new,
                result_rev(revision),
            ),
        }
    }

    fn linearizable(&self) -> bool {
        let mut done = vec![false; self.ops.len()];
        self.search(&mut done, (None, RefRev::Known(0)))
    }

    fn search(&self, done: &mut [bool], s: (Option<String>, RefRev)) -> bool {
        let ret = |o: &Op| (o.outcome == Outcome::Ok).then_some(o.complete).flatten();
        let frontier = (0..self.ops.len())
            .filter(|&i| !done[i])
            .filter_map(|i| ret(self.ops[i]))
            .min();
        let Some(frontier) = frontier else {
            return true;
        };
        for i in 0..self.ops.len() {
            if done[i] || self.ops[i].invoke > frontier {
                continue;
            }
            if let Some(ns) = self.apply(&s, self.ops[i]) {
                done[i] = true;
                let ok = self.search(done, ns);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
}

fn random_small_history(rng: &mut StdRng, max_ops: u64, unknown_percent: u32) -> History {
    const VALUES: [&str; 3] = ["a", "b", "c"];
    let value = |rng: &mut StdRng| VALUES[rng.gen_range(0..VALUES.len())].to_string();
    let maybe_value = |rng: &mut StdRng| rng.gen_bool(0.8).then(|| value(rng));
    let rev = |rng: &mut StdRng| rng.gen_bool(0.6).then(|| rng.gen_range(0..6u64));
    let n = rng.gen_range(1..=max_ops);
    let ops = (0..n)
        .map(|i| {
            let invoke = rng.gen_range(0..20u64);
            let complete = invoke + rng.gen_range(0..12u64);
            let kind = match rng.gen_range(0..6) {
                0 | 1 => OpKind::Read {
                    value: maybe_value(rng),
                    mod_revision: rev(rng),
                },
                2 => OpKind::Write {
                    // Sometimes a value nobody reads.
                    value: if rng.gen_bool(0.2) {
                        format!("x{i}")
                    } else {
                        value(rng)
                    },
                    revision: rev(rng),
                },
                3 => OpKind::Delete { revision: rev(rng) },
                4 => OpKind::Cas {
                    expected: maybe_value(rng),
                    new: value(rng),
                    succeeded: Some(rng.gen_bool(0.5)),
                    revision: rev(rng),
                },
                _ => OpKind::CasRevision {
                    expected_revision: rng.gen_range(0..6),
                    new: value(rng),
                    succeeded: Some(rng.gen_bool(0.5)),
                    revision: rev(rng),
                },
            };
            let roll = rng.gen_range(0..100u32);
            let outcome = if roll < unknown_percent {
                Outcome::Unknown
            } else if roll < unknown_percent + 10 {
                Outcome::Fail
            } else {
                Outcome::Ok
            };
            Op {
                process: i,
                key: "k".into(),
                kind,
                invoke,
                complete: (outcome != Outcome::Unknown).then_some(complete),
                outcome,
            }
        })
        .collect();
    History::new(ops)
}

/// Random tiny histories with random results (small value and revision domains, so that
/// coincidences happen): the checker must agree with the exhaustive reference, and every
/// violation must come with a counterexample.
#[test]
fn agrees_with_brute_force_reference() {
    let mut rng = StdRng::seed_from_u64(99);
    let (mut lin, mut not_lin) = (0, 0);
    for (cases, max_ops, unknown_percent) in [(3000, 7, 20), (1500, 9, 45)] {
        for case in 0..cases {
            let h = random_small_history(&mut rng, max_ops, unknown_percent);
            let expected = Reference::new(&h).linearizable();
            let res = check(&h).expect("valid history");
            let listing = || {
                h.ops
                    .iter()
                    .enumerate()
                    .map(|(i, o)| o.describe(i))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let got = match res.verdict {
                Verdict::Linearizable => true,
                Verdict::NotLinearizable => false,
                Verdict::Unknown => panic!("case {case}: budget exhausted:\n{}", listing()),
            };
            assert_eq!(
                got,
                expected,
                "case {case}: checker says {}, reference says {expected}\n{}\n{}",
                res.verdict,
                listing(),
                res.counterexample.unwrap_or_default()
            );
            if expected {
                lin += 1;
            } else {
                let cx = res.counterexample.unwrap_or_default();
                assert!(cx.contains("minimal window"), "case {case}:\n{cx}");
                not_lin += 1;
            }
        }
    }
    println!("{lin} linearizable, {not_lin} not");
    assert!(lin > 1000 && not_lin > 1000, "{lin} / {not_lin}");
}

// ---------------------------------------------------------------------------------------------
// Recorder and JSON

#[test]
fn recorder_json_round_trip() {
    let rec = Recorder::new();
    let threads: Vec<_> = (0..4u64)
        .map(|p| {
            let rec = rec.clone();
            thread::spawn(move || -> Result<(), HistoryError> {
                let key = format!("k{}", p % 2);
                let h = rec.invoke(p, key.clone(), OpKind::write(format!("v{p}")));
                rec.ok_write(h, Some(p + 1))?;
                let h = rec.invoke(p, key.clone(), OpKind::read());
                rec.ok_read(h, Some(format!("v{p}")), Some(p + 1))?;
                let h = rec.invoke(p, key.clone(), OpKind::cas(Some("x"), "y"));
                rec.ok_cas(h, false, None)?;
                let h = rec.invoke(p, key.clone(), OpKind::cas_revision(3, "z"));
                rec.unknown(h)?;
                let h = rec.invoke(p, key, OpKind::delete());
                rec.fail(h)?;
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("recorder thread").expect("recording");
    }
    // An operation whose client never returned stays unknown.
    let _pending = rec.invoke(9, "k0", OpKind::write("pending"));
    let h = rec.history();
    assert_eq!(h.ops.len(), 21);
    let c = h.counts();
    assert_eq!((c.ok, c.fail, c.unknown), (12, 4, 5), "{c}");
    assert!(h.ops.windows(2).all(|p| p[0].invoke <= p[1].invoke));
    for op in &h.ops {
        match op.outcome {
            Outcome::Unknown => assert_eq!(op.complete, None),
            _ => assert!(op.complete.is_some_and(|c| c >= op.invoke)),
        }
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.jsonl");
    h.save(&path).expect("save");
    let text = std::fs::read_to_string(&path).expect("read back");
    assert_eq!(text.lines().count(), h.ops.len());
    let loaded = History::load(&path).expect("load");
    assert_eq!(loaded, h);
    // The recorded history is checkable (other processes' values make it non-trivial).
    let res = check(&loaded).expect("valid history");
    println!("{} -> {}", loaded.counts(), res.summary());

    // A corrupt line is a typed error naming the line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    writeln!(f, "{{not json").expect("append");
    match History::load(&path) {
        Err(HistoryError::Parse { line, .. }) => assert_eq!(line, h.ops.len() + 1),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn recorder_rejects_misuse() {
    let rec = Recorder::new();
    let h = rec.invoke(1, "k", OpKind::write("a"));
    assert!(matches!(
        rec.ok_read(h, None, None),
        Err(HistoryError::Malformed { .. })
    ));
    rec.ok_write(h, None).expect("first completion");
    assert!(matches!(
        rec.ok_write(h, None),
        Err(HistoryError::AlreadyCompleted(0))
    ));
    let other = Recorder::new();
    let h2 = other.invoke(1, "k", OpKind::read());
    other.ok_read(h2, None, None).expect("ok");
    let h3 = other.invoke(1, "k", OpKind::read());
    let fresh = Recorder::new();
    assert!(matches!(fresh.fail(h3), Err(HistoryError::BadHandle(1))));
}
