//! Linearizability checker for a per-key register with get, put, delete and compare-and-set
//! (on value or on mod revision), tolerating operations of unknown outcome.
//!
//! The search is Wing & Gong's algorithm with Lowe's memoization, as in Porcupine's
//! `checkSingle`: walk a list of call/return entries in time order, tentatively linearize calls
//! whose effect fits the model state, backtrack when a return is reached whose operation is not
//! linearized yet, and skip (bitset of linearized operations, state) configurations already
//! seen. Keys are independent registers, so each key is checked on its own.
//!
//! Semantics (see [`super::history`]): an `Ok` operation takes effect between invoke and
//! complete; a `Fail` operation never takes effect; an `Unknown` operation has its return at
//! +infinity, so it may take effect at any time after invoke or, by being placed after every
//! operation with a known outcome, never. Reads of unknown outcome constrain nothing and are
//! ignored. An unknown compare-and-set whose comparison does not hold is a no-op.
//!
//! The register state is (value, mod revision). Writes with a recorded revision must raise the
//! key's mod revision, as etcd's do, and reads that recorded a mod revision must match it. A
//! write whose revision was not recorded (or whose outcome is unknown) gets an "unrecorded"
//! revision: some value above 0 that no acknowledged operation recorded; the first read of it
//! pins it. Where the state does not decide a comparison (an unrecorded revision compared with
//! a revision nobody recorded, or the arbitrary state at the start of a shrunk window), the
//! checker is permissive: it only ever accepts more histories, so a rejection is always a real
//! violation.
//!
//! Pruning, on top of the cache (each is exact; see the comments in `search`): a cached
//! configuration also covers those with the same known operations and state and a superset of
//! linearized unknown operations; a read that fits the current state without changing it is
//! linearized at once without trying other orders; unknown operations are tried last;
//! interchangeable unknown blind writes (all deletes, all writes of values nobody observes) are
//! used in one canonical order.
//!
//! On a violation the checker shrinks the key's history to a small window that is still not
//! linearizable, using only transformations that weaken the history (drop observations, turn
//! acknowledged mutations into unknown ones, start from an arbitrary state after a cut), so the
//! window is a genuine counterexample; then it prints the window with its longest linearizable
//! prefix and why no pending operation can extend it. If the full search runs out of budget,
//! the same windows, taken around where it got stuck, can still prove a violation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use super::history::{fmt_time, History, HistoryError, Op, OpKind, Outcome};

/// Limits on the search, so that a hard history yields `Unknown` instead of hanging.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Search steps allowed per key before giving up with [`Verdict::Unknown`] (a search also
    /// gives up when its cache passes about 1 GiB).
    pub max_steps_per_key: u64,
    /// Wall-clock budget for the whole check (all keys, shrinking included), if any.
    pub time_budget: Option<Duration>,
    /// Whether to shrink a violation to a minimal window (costs extra searches; also needed to
    /// prove a violation after the full search ran out of budget).
    pub shrink: bool,
    /// Steps allowed for each search made while shrinking.
    pub shrink_steps: u64,
    /// Maximum number of searches made while shrinking one key.
    pub shrink_max_checks: usize,
    /// Wall-clock budget for shrinking one key.
    pub shrink_time: Duration,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            max_steps_per_key: 5_000_000,
            time_budget: Some(Duration::from_secs(120)),
            shrink: true,
            shrink_steps: 200_000,
            shrink_max_checks: 400,
            shrink_time: Duration::from_secs(20),
        }
    }
}

/// The checker's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists.
    NotLinearizable,
    /// The search budget ran out before an answer.
    Unknown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "NOT linearizable",
            Verdict::Unknown => "unknown (search budget exhausted)",
        })
    }
}

/// Result for one key.
#[derive(Clone, Debug)]
pub struct KeyResult {
    /// The key.
    pub key: String,
    /// Operations recorded on the key (any outcome).
    pub ops: usize,
    /// Verdict for this key.
    pub verdict: Verdict,
    /// Search steps spent on the main search.
    pub steps: u64,
    /// Time spent on this key, shrinking included.
    pub elapsed: Duration,
    /// Rendered minimal counterexample when not linearizable.
    pub counterexample: Option<String>,
}

/// Result of checking a whole history.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// Overall verdict: any violation wins, then any unknown.
    pub verdict: Verdict,
    /// Per-key results, in key order.
    pub per_key: Vec<KeyResult>,
    /// Counterexample of the first key that is not linearizable.
    pub counterexample: Option<String>,
    /// Total checking time.
    pub elapsed: Duration,
}

impl CheckResult {
    /// True only when the verdict is [`Verdict::Linearizable`].
    pub fn linearizable(&self) -> bool {
        self.verdict == Verdict::Linearizable
    }

    /// One-paragraph summary: verdict, time, and per-key verdicts that are not linearizable.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "checker verdict: {} ({} keys, {:.3?})",
            self.verdict,
            self.per_key.len(),
            self.elapsed
        );
        for k in &self.per_key {
            if k.verdict != Verdict::Linearizable {
                s.push_str(&format!(
                    "\n  key {:?}: {} ({} ops, {} steps, {:.3?})",
                    k.key, k.verdict, k.ops, k.steps, k.elapsed
                ));
            }
        }
        s
    }
}

/// Checks a history with the default budget.
pub fn check(history: &History) -> Result<CheckResult, HistoryError> {
    check_with(history, &CheckConfig::default())
}

/// Checks a history: validates it, then checks every key independently.
pub fn check_with(history: &History, cfg: &CheckConfig) -> Result<CheckResult, HistoryError> {
    history.validate()?;
    let start = Instant::now();
    let deadline = cfg.time_budget.map(|b| start + b);
    let mut keys: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        keys.entry(op.key.as_str()).or_default().push(i);
    }
    let claimed = claimed_revisions(history);
    let mut per_key = Vec::with_capacity(keys.len());
    for (key, mut idxs) in keys {
        idxs.sort_by_key(|&i| (history.ops[i].invoke, i));
        per_key.push(check_key(history, key, idxs, &claimed, cfg, deadline));
    }
    let verdict = if per_key
        .iter()
        .any(|k| k.verdict == Verdict::NotLinearizable)
    {
        Verdict::NotLinearizable
    } else if per_key.iter().any(|k| k.verdict == Verdict::Unknown) {
        Verdict::Unknown
    } else {
        Verdict::Linearizable
    };
    let counterexample = per_key.iter().find_map(|k| k.counterexample.clone());
    Ok(CheckResult {
        verdict,
        per_key,
        counterexample,
        elapsed: start.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------------
// Model

/// Value id meaning "any value" (state not known yet).
const ANY_VAL: u32 = u32::MAX;
/// Value id of the absent key.
const ABSENT: u32 = 0;
/// Value id shared by all values nobody ever reads or compares against: states holding
/// any of them are indistinguishable, so merging them lets the cache see that.
const UNOBSERVED_VAL: u32 = u32::MAX - 1;
/// Revision meaning "any revision".
const ANY_REV: u64 = u64::MAX;
/// Unrecorded revision shared by writes of unobserved values (nothing can pin it).
const UNOBSERVED_REV: u64 = u64::MAX - 1;
/// Revisions from here up to `ANY_REV` stand for "the unrecorded revision of history
/// operation #(rev - UNRECORDED)": some revision above 0 that no other operation recorded.
const UNRECORDED: u64 = 1 << 62;

fn is_recorded(rev: u64) -> bool {
    rev < UNRECORDED
}

/// Register state: interned value and mod revision (0 when absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    val: u32,
    rev: u64,
}

const INITIAL: State = State {
    val: ABSENT,
    rev: 0,
};
const ANY_STATE: State = State {
    val: ANY_VAL,
    rev: ANY_REV,
};

/// A revision a client observed or compared against.
#[derive(Clone, Copy, Debug)]
struct Obs {
    rev: u64,
    /// Some acknowledged mutation recorded this revision as its own, so an unrecorded
    /// revision of another operation cannot be equal to it.
    claimed: bool,
}

#[derive(Clone, Copy, Debug)]
enum Cond {
    Value(u32),
    Revision(Obs),
}

/// What an operation does to / asserts about the register, as the search sees it. Mutations
/// carry their resulting revision: the recorded one, or their `UNRECORDED` tag.
#[derive(Clone, Copy, Debug)]
enum Act {
    Read {
        val: u32,
        rev: Option<Obs>,
    },
    Put {
        val: u32,
        rev: u64,
    },
    Delete {
        rev: u64,
    },
    /// A compare-and-set that reported its comparison false: a pure observation.
    CasFalse(Cond),
    /// A compare-and-set that succeeded (certain) or may have (unknown).
    Cas {
        cond: Cond,
        new: u32,
        rev: u64,
    },
}

/// An operation lowered for the search.
#[derive(Clone, Copy, Debug)]
struct SOp {
    /// Index in the history.
    idx: usize,
    call: u64,
    /// `None`: unknown outcome, returns at +infinity.
    ret: Option<u64>,
    act: Act,
}

/// Whether the state's revision equals an observed one; `None` when not determined.
fn rev_eq(state_rev: u64, o: Obs) -> Option<bool> {
    if state_rev == ANY_REV {
        None
    } else if is_recorded(state_rev) {
        Some(state_rev == o.rev)
    } else if o.claimed || o.rev == 0 {
        Some(false)
    } else {
        None
    }
}

/// Evaluates a comparison; `None` when the state does not determine it.
fn eval(s: State, c: Cond) -> Option<bool> {
    match c {
        Cond::Value(v) => (s.val != ANY_VAL).then_some(s.val == v),
        Cond::Revision(o) => rev_eq(s.rev, o),
    }
}

/// True for a mutation whose effect does not depend on the state (a put or delete whose
/// revision is not recorded, so there is nothing to compare).
fn is_blind(act: &Act) -> bool {
    match *act {
        Act::Put { rev, .. } | Act::Delete { rev } => !is_recorded(rev),
        _ => false,
    }
}

/// A mutation with a recorded revision must raise a recorded mod revision.
fn rev_ok(s: State, rev: u64) -> bool {
    !(is_recorded(rev) && is_recorded(s.rev)) || rev > s.rev
}

/// Applies an operation; `None` when it cannot take effect in state `s`.
fn step(s: State, act: &Act, certain: bool) -> Option<State> {
    match *act {
        Act::Read { val, rev } => {
            let mut s = s;
            if s.val == ANY_VAL {
                s.val = val;
            } else if s.val != val {
                return None;
            }
            if let Some(o) = rev {
                match rev_eq(s.rev, o) {
                    Some(true) => {}
                    Some(false) => return None,
                    // The first observation pins a revision that was not known.
                    None => s.rev = o.rev,
                }
            }
            Some(s)
        }
        Act::Put { val, rev } => rev_ok(s, rev).then_some(State { val, rev }),
        Act::Delete { rev } => rev_ok(s, rev).then_some(State {
            val: ABSENT,
            rev: 0,
        }),
        Act::CasFalse(c) => (eval(s, c) != Some(true)).then_some(s),
        Act::Cas { cond, new, rev } => {
            if eval(s, cond) == Some(false) {
                // An unknown CAS whose comparison fails is a no-op; a certain one cannot be here.
                return (!certain).then_some(s);
            }
            rev_ok(s, rev).then_some(State { val: new, rev })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-key data

/// Interned register values of one key (id 0 = absent).
struct Values {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Values {
    fn new() -> Self {
        Values {
            ids: HashMap::new(),
            names: vec![String::new()],
        }
    }

    fn id(&mut self, v: &Option<String>) -> u32 {
        let Some(v) = v else { return ABSENT };
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        // Never reaches ANY_VAL in practice: that would need 4 billion distinct values.
        let id = u32::try_from(self.names.len()).unwrap_or(UNOBSERVED_VAL - 1);
        self.names.push(v.clone());
        self.ids.insert(v.clone(), id);
        id
    }

    fn name(&self, id: u32) -> String {
        match id {
            ANY_VAL => "any value".to_string(),
            UNOBSERVED_VAL => "a value nobody observed".to_string(),
            ABSENT => "absent".to_string(),
            id => format!(
                "{:?}",
                self.names.get(id as usize).cloned().unwrap_or_default()
            ),
        }
    }

    fn state(&self, s: State) -> String {
        let rev = match s.rev {
            ANY_REV => "any".to_string(),
            UNOBSERVED_REV => "unrecorded".to_string(),
            r if !is_recorded(r) => format!("unrecorded, of #{}", r - UNRECORDED),
            r => r.to_string(),
        };
        format!("{} (mod rev {rev})", self.name(s.val))
    }
}

/// How an operation enters a (possibly shrunk) history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// As recorded.
    Keep,
    /// Weakened: observations dropped, mutations of unknown outcome.
    Relax,
    /// Left out: completed before a prefix cut, absorbed into an arbitrary start state.
    Drop,
}

struct KeyHist<'a> {
    history: &'a History,
    /// History indices of this key's operations, in invocation order.
    idxs: Vec<usize>,
    /// Interned values of the key.
    values: Values,
    /// Lowered actions, per position in `idxs`.
    acts: Vec<LoweredOp>,
}

/// An operation's action when kept as recorded and when weakened.
#[derive(Clone, Copy)]
struct LoweredOp {
    /// Action when the recorded outcome holds (`None` for failed operations and unknown reads).
    certain: Option<Act>,
    /// Action when of unknown outcome (`None` for reads).
    unknown: Option<Act>,
}

impl<'a> KeyHist<'a> {
    fn new(history: &'a History, idxs: Vec<usize>, claimed: &HashSet<u64>) -> Self {
        let mut values = Values::new();
        let mut observed = HashSet::new();
        for &i in &idxs {
            match &history.ops[i].kind {
                OpKind::Read { value: Some(v), .. }
                | OpKind::Cas {
                    expected: Some(v), ..
                } => {
                    observed.insert(v.as_str());
                }
                _ => {}
            }
        }
        let ctx = LowerCtx {
            claimed,
            observed: &observed,
        };
        let acts = idxs
            .iter()
            .map(|&i| lower(&history.ops[i], i, &mut values, &ctx))
            .collect();
        KeyHist {
            history,
            idxs,
            values,
            acts,
        }
    }

    fn op(&self, pos: usize) -> &'a Op {
        &self.history.ops[self.idxs[pos]]
    }

    /// The search input for a window: per-position modes and whether it starts in any state.
    fn sops(&self, modes: &[Mode]) -> Vec<SOp> {
        let mut out = Vec::with_capacity(self.idxs.len());
        for (pos, &mode) in modes.iter().enumerate() {
            let op = self.op(pos);
            let lowered = self.acts[pos];
            let certain = op.outcome == Outcome::Ok && mode == Mode::Keep;
            let act = match (mode, op.outcome) {
                (Mode::Drop, _) => None,
                (Mode::Keep, Outcome::Fail) => None,
                _ if certain => lowered.certain,
                // A relaxed CAS that reported false is a pure observation: just drop it.
                (Mode::Relax, Outcome::Ok) if matches!(lowered.certain, Some(Act::CasFalse(_))) => {
                    None
                }
                _ => lowered.unknown,
            };
            if let Some(act) = act {
                out.push(SOp {
                    idx: self.idxs[pos],
                    call: op.invoke,
                    ret: if certain { op.complete } else { None },
                    act,
                });
            }
        }
        // Unknown operations invoked after every known return can always go last: drop them.
        let last = out.iter().filter_map(|o| o.ret).max();
        out.retain(|o| o.ret.is_some() || last.is_some_and(|l| o.call <= l));
        out
    }
}

/// Revisions recorded by acknowledged mutations (of any key: revisions are global).
fn claimed_revisions(history: &History) -> HashSet<u64> {
    history
        .ops
        .iter()
        .filter(|op| op.outcome == Outcome::Ok)
        .filter_map(|op| match &op.kind {
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
        .collect()
}

/// What lowering needs to know about the whole history.
struct LowerCtx<'c> {
    /// Revisions recorded by acknowledged mutations.
    claimed: &'c HashSet<u64>,
    /// Values of this key that some operation reads or compares against.
    observed: &'c HashSet<&'c str>,
}

fn lower(op: &Op, idx: usize, values: &mut Values, ctx: &LowerCtx<'_>) -> LoweredOp {
    let ok = op.outcome == Outcome::Ok;
    let claimed = ctx.claimed;
    let tag = UNRECORDED
        .saturating_add(idx as u64)
        .min(UNOBSERVED_REV - 1);
    // A written value with an unrecorded revision that nobody observes: only "some other
    // value" matters, so all of them become one state.
    let written = |values: &mut Values, v: &str, rev: u64| {
        if is_recorded(rev) || ctx.observed.contains(v) {
            (values.id(&Some(v.to_string())), rev)
        } else {
            (UNOBSERVED_VAL, UNOBSERVED_REV)
        }
    };
    // Only acknowledged operations' revisions mean anything; relaxed ones keep theirs.
    let result_rev = |r: &Option<u64>| match r {
        Some(r) if ok && is_recorded(*r) => *r,
        _ => tag,
    };
    let obs = |rev: u64| Obs {
        rev,
        claimed: claimed.contains(&rev),
    };
    let (certain, unknown) = match &op.kind {
        OpKind::Read {
            value,
            mod_revision,
        } => (
            Some(Act::Read {
                val: values.id(value),
                rev: mod_revision.map(obs),
            }),
            None,
        ),
        OpKind::Write { value, revision } => {
            let (val, rev) = written(values, value, result_rev(revision));
            let act = Act::Put { val, rev };
            (Some(act), Some(act))
        }
        OpKind::Delete { revision } => {
            let act = Act::Delete {
                rev: result_rev(revision),
            };
            (Some(act), Some(act))
        }
        OpKind::Cas {
            expected,
            new,
            succeeded,
            revision,
        } => {
            let cond = Cond::Value(values.id(expected));
            let (new, rev) = written(values, new, result_rev(revision));
            cas_acts(cond, new, *succeeded, rev)
        }
        OpKind::CasRevision {
            expected_revision,
            new,
            succeeded,
            revision,
        } => {
            let cond = Cond::Revision(obs(*expected_revision));
            let (new, rev) = written(values, new, result_rev(revision));
            cas_acts(cond, new, *succeeded, rev)
        }
    };
    LoweredOp {
        certain: if ok { certain } else { None },
        unknown,
    }
}

fn cas_acts(cond: Cond, new: u32, succeeded: Option<bool>, rev: u64) -> (Option<Act>, Option<Act>) {
    let certain = match succeeded {
        Some(true) => Some(Act::Cas { cond, new, rev }),
        Some(false) => Some(Act::CasFalse(cond)),
        None => None,
    };
    (certain, Some(Act::Cas { cond, new, rev }))
}

// ---------------------------------------------------------------------------------------------
// Search

struct Budget {
    steps: u64,
    max_steps: u64,
    deadline: Option<Instant>,
}

impl Budget {
    fn new(max_steps: u64, deadline: Option<Instant>) -> Self {
        Budget {
            steps: 0,
            max_steps,
            deadline,
        }
    }

    /// Counts one step; false once the budget is spent.
    fn tick(&mut self) -> bool {
        self.steps += 1;
        if self.steps > self.max_steps {
            return false;
        }
        // Reading the clock every step would dominate the search.
        if self.steps.is_multiple_of(1024) {
            if let Some(d) = self.deadline {
                if Instant::now() >= d {
                    return false;
                }
            }
        }
        true
    }
}

/// The deepest point the search reached: a linearizable prefix that could not be extended.
#[derive(Clone, Debug)]
struct Partial {
    /// Known-outcome operations in the prefix.
    known: usize,
    /// Unknown-outcome operations in the prefix.
    unknown: usize,
    /// Positions (in the search's op slice) of the prefix, in linearization order.
    order: Vec<usize>,
    /// State after the prefix.
    state: State,
    /// The operation whose return was reached while it was still not linearized.
    stuck: usize,
    /// Operations invoked before that return and not linearized (the candidates).
    pending: Vec<usize>,
}

enum Search {
    Linearizable,
    Violation(Option<Partial>),
    /// Budget spent; carries the deepest point reached, if tracked.
    Exhausted(Option<Partial>),
}

const NIL: usize = usize::MAX;
/// A search whose cache grows beyond this gives up (verdict unknown) rather than swap.
const MAX_CACHE_BYTES: usize = 1 << 30;
/// Windows larger than this are not shrunk operation by operation (too many searches).
const MAX_GREEDY_WINDOW: usize = 150;
/// Counterexamples list at most this many unknown-outcome operations in full.
const MAX_LISTED_UNKNOWN: usize = 12;
/// Search phases over the candidate list (see `search`).
const FORCED: u8 = 0;
const KNOWN: u8 = 1;
const UNKNOWN: u8 = 2;

/// Explored configurations: known-outcome bitset -> state -> antichain of unknown bitsets.
#[derive(Default)]
struct Cache {
    map: HashMap<Vec<u64>, HashMap<State, Vec<Vec<u64>>>>,
    /// Rough memory held, to give up before exhausting the machine.
    bytes: usize,
}

impl Cache {
    /// Records a configuration; false if it (or one that subsumes it) was seen before.
    fn visit(&mut self, known: &[u64], state: State, unknown: &[u64]) -> bool {
        let subset = |a: &[u64], b: &[u64]| a.iter().zip(b).all(|(x, y)| x & !y == 0);
        let by_state = match self.map.get_mut(known) {
            Some(m) => m,
            None => {
                self.bytes += 64 + 8 * known.len();
                self.map.entry(known.to_vec()).or_default()
            }
        };
        let sets = by_state.entry(state).or_default();
        if sets.iter().any(|u| subset(u, unknown)) {
            return false;
        }
        sets.retain(|u| !subset(unknown, u));
        sets.push(unknown.to_vec());
        self.bytes += 64 + 8 * unknown.len();
        true
    }
}

/// Wing–Gong search with memoization over the call/return entries of `ops`.
fn search(ops: &[SOp], init: State, budget: &mut Budget, track: bool) -> Search {
    let n = ops.len();
    let mut remaining = ops.iter().filter(|o| o.ret.is_some()).count();
    if remaining == 0 {
        return Search::Linearizable;
    }
    // Entries sorted by time; at equal times calls come first, so touching operations count as
    // concurrent (the permissive choice).
    let mut ents: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        ents.push((op.call, false, i));
        if let Some(r) = op.ret {
            ents.push((r, true, i));
        }
    }
    ents.sort_unstable();
    // Doubly linked list over nodes 1..=m, node 0 is the head sentinel.
    let m = ents.len();
    let mut next = vec![NIL; m + 1];
    let mut prev = vec![NIL; m + 1];
    let mut node_op = vec![0usize; m + 1];
    let mut node_is_ret = vec![false; m + 1];
    let mut call_node = vec![NIL; n];
    let mut ret_node = vec![NIL; n];
    for (k, &(_, is_ret, i)) in ents.iter().enumerate() {
        let node = k + 1;
        prev[node] = k;
        next[k] = node;
        node_op[node] = i;
        node_is_ret[node] = is_ret;
        if is_ret {
            ret_node[i] = node;
        } else {
            call_node[i] = node;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        next[prev[x]] = next[x];
        if next[x] != NIL {
            prev[next[x]] = prev[x];
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        next[prev[x]] = x;
        if next[x] != NIL {
            prev[next[x]] = x;
        }
    };

    // Linearized sets, split so that unknown operations can be compared by subset: a
    // configuration whose unknown operations are a superset of an already explored one (same
    // known operations, same state) can do nothing more, since unknown operations are never
    // forced to take effect. This keeps histories with many unknown operations tractable.
    let mut slot = vec![0usize; n];
    let (mut n_known, mut n_unknown) = (0usize, 0usize);
    for (i, op) in ops.iter().enumerate() {
        let counter = if op.ret.is_some() {
            &mut n_known
        } else {
            &mut n_unknown
        };
        slot[i] = *counter;
        *counter += 1;
    }
    let mut known = vec![0u64; n_known.div_ceil(64)];
    let mut unknown = vec![0u64; n_unknown.div_ceil(64)];
    let flip = |known: &mut Vec<u64>, unknown: &mut Vec<u64>, i: usize| {
        let bits = if ops[i].ret.is_some() { known } else { unknown };
        bits[slot[i] / 64] ^= 1 << (slot[i] % 64);
    };
    // Blind unknown operations with the same effect (all deletes; all writes of unobserved
    // values) are interchangeable once invoked: only the earliest-invoked unused one of each
    // class may be linearized, which removes the symmetric orders.
    let mut class_of = vec![NIL; n];
    let mut rank_of = vec![0usize; n];
    let mut class_size: Vec<usize> = Vec::new();
    {
        let mut classes: HashMap<State, usize> = HashMap::new();
        let mut blind: Vec<usize> = (0..n)
            .filter(|&i| ops[i].ret.is_none() && is_blind(&ops[i].act))
            .collect();
        blind.sort_by_key(|&i| (ops[i].call, i));
        for i in blind {
            let Some(effect) = step(INITIAL, &ops[i].act, false) else {
                continue;
            };
            let next_class = classes.len();
            let c = *classes.entry(effect).or_insert(next_class);
            if c == class_size.len() {
                class_size.push(0);
            }
            class_of[i] = c;
            rank_of[i] = class_size[c];
            class_size[c] += 1;
        }
    }
    let mut class_used = vec![0usize; class_size.len()];
    let mut cache = Cache::default();
    let mut state = init;
    cache.visit(&known, state, &unknown);
    // Candidates are the calls before the first pending return, scanned in three phases:
    // - FORCED: a known-outcome read (or failed CAS) that fits without changing the state is
    //   linearized at once and never reordered: any linearization placing it later can place
    //   it now instead. If that leads nowhere, the configuration is a dead end.
    // - KNOWN: other known-outcome operations.
    // - UNKNOWN: unknown operations last, so "not yet" is explored before "now" and the
    //   subset cache prunes the larger sets.
    let mut stack: Vec<(usize, State, u8)> = Vec::new();
    let mut best: Option<Partial> = None;
    let mut node = next[0];
    let mut phase = FORCED;
    loop {
        if !budget.tick() || cache.bytes > MAX_CACHE_BYTES {
            return Search::Exhausted(best);
        }
        if node == NIL {
            // Unreachable while a known return is pending; treat defensively as a dead end.
            return Search::Violation(best);
        }
        if node_is_ret[node] {
            if phase != UNKNOWN {
                phase += 1;
                node = next[0];
                continue;
            }
            // Operation i must have taken effect by now but could not be placed.
            let i = node_op[node];
            let known_done = n_known - remaining;
            let unknown_done = stack.len() - known_done;
            if track
                && best
                    .as_ref()
                    .is_none_or(|b| (known_done, b.unknown) > (b.known, unknown_done))
            {
                let mut pending = Vec::new();
                let mut x = next[0];
                while x != NIL && x != node {
                    if !node_is_ret[x] {
                        pending.push(node_op[x]);
                    }
                    x = next[x];
                }
                best = Some(Partial {
                    known: known_done,
                    unknown: unknown_done,
                    order: stack.iter().map(|&(j, _, _)| j).collect(),
                    state,
                    stuck: i,
                    pending,
                });
            }
        } else {
            let i = node_op[node];
            let op = &ops[i];
            let certain = op.ret.is_some();
            let eligible = match phase {
                FORCED => certain && matches!(op.act, Act::Read { .. } | Act::CasFalse(_)),
                KNOWN => certain,
                // Two unknown operations in a row where the second overwrites the register
                // without looking at it: the first one's effect is unobservable, and the same
                // configuration minus it is reached by trying the second one directly.
                _ => {
                    !certain
                        && !(is_blind(&op.act)
                            && (stack.last().is_some_and(|&(j, _, _)| ops[j].ret.is_none())
                                || (class_of[i] != NIL && rank_of[i] != class_used[class_of[i]])))
                }
            };
            let mut dead = false;
            if let Some(ns) = eligible.then(|| step(state, &op.act, certain)).flatten() {
                if phase != FORCED || ns == state {
                    flip(&mut known, &mut unknown, i);
                    if cache.visit(&known, ns, &unknown) {
                        stack.push((i, state, phase));
                        state = ns;
                        if class_of[i] != NIL {
                            class_used[class_of[i]] += 1;
                        }
                        unlink(&mut next, &mut prev, call_node[i]);
                        if ret_node[i] != NIL {
                            unlink(&mut next, &mut prev, ret_node[i]);
                            remaining -= 1;
                            if remaining == 0 {
                                return Search::Linearizable;
                            }
                        }
                        node = next[0];
                        phase = FORCED;
                        continue;
                    }
                    flip(&mut known, &mut unknown, i);
                    // The forced successor was explored already and failed, so this fails too.
                    dead = phase == FORCED;
                }
            }
            if !dead {
                node = next[node];
                continue;
            }
        }
        // Dead end: undo the last choice; a forced choice makes its parent a dead end too.
        loop {
            let Some((j, s, ph)) = stack.pop() else {
                return Search::Violation(best);
            };
            flip(&mut known, &mut unknown, j);
            state = s;
            if class_of[j] != NIL {
                class_used[class_of[j]] -= 1;
            }
            if ret_node[j] != NIL {
                relink(&mut next, &mut prev, ret_node[j]);
                remaining += 1;
            }
            relink(&mut next, &mut prev, call_node[j]);
            if ph != FORCED {
                node = next[call_node[j]];
                phase = ph;
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-key check and counterexamples

fn check_key(
    history: &History,
    key: &str,
    idxs: Vec<usize>,
    claimed: &HashSet<u64>,
    cfg: &CheckConfig,
    deadline: Option<Instant>,
) -> KeyResult {
    let start = Instant::now();
    let kh = KeyHist::new(history, idxs, claimed);
    let modes = vec![Mode::Keep; kh.idxs.len()];
    let sops = kh.sops(&modes);
    let mut budget = Budget::new(cfg.max_steps_per_key, deadline);
    let (verdict, counterexample) = match search(&sops, INITIAL, &mut budget, true) {
        Search::Linearizable => (Verdict::Linearizable, None),
        Search::Violation(partial) => {
            let text = counterexample(&kh, key, &sops, partial.as_ref(), cfg, deadline, true);
            (Verdict::NotLinearizable, text)
        }
        // The full search gave up, but a failing window (a weakening of the history) near
        // where it got stuck still proves a violation.
        Search::Exhausted(partial) => {
            match counterexample(&kh, key, &sops, partial.as_ref(), cfg, deadline, false) {
                Some(text) => (Verdict::NotLinearizable, Some(text)),
                None => (Verdict::Unknown, None),
            }
        }
    };
    KeyResult {
        key: key.to_string(),
        ops: kh.idxs.len(),
        verdict,
        steps: budget.steps,
        elapsed: start.elapsed(),
        counterexample,
    }
}

/// A candidate shrunk history of one key.
#[derive(Clone)]
struct Window {
    modes: Vec<Mode>,
    any_start: bool,
}

struct Shrinker<'a, 'b> {
    kh: &'b KeyHist<'a>,
    cfg: &'b CheckConfig,
    deadline: Instant,
    checks: usize,
    /// True once a limit stopped shrinking early.
    truncated: bool,
}

impl Shrinker<'_, '_> {
    /// True when `w` is verifiably not linearizable within the shrink budget.
    fn fails(&mut self, w: &Window) -> bool {
        self.check(w) == Some(true)
    }

    /// Whether `w` is not linearizable; `None` when the budget ran out.
    fn check(&mut self, w: &Window) -> Option<bool> {
        if self.checks >= self.cfg.shrink_max_checks || Instant::now() >= self.deadline {
            self.truncated = true;
            return None;
        }
        self.checks += 1;
        let init = if w.any_start { ANY_STATE } else { INITIAL };
        let mut budget = Budget::new(self.cfg.shrink_steps, Some(self.deadline));
        match search(&self.kh.sops(&w.modes), init, &mut budget, false) {
            Search::Violation(_) => Some(true),
            Search::Linearizable => Some(false),
            Search::Exhausted(_) => {
                self.truncated = true;
                None
            }
        }
    }

    /// Weakens everything that completed by `t` into an arbitrary start state. Operations
    /// pending at `t` are relaxed, because they may have taken effect before the cut.
    fn prefix_cut(&self, base: &Window, t: u64) -> Window {
        let mut w = base.clone();
        w.any_start = true;
        for (pos, mode) in w.modes.iter_mut().enumerate() {
            let op = self.kh.op(pos);
            if op.outcome != Outcome::Ok || *mode == Mode::Drop {
                continue;
            }
            if op.complete.is_some_and(|c| c <= t) {
                *mode = Mode::Drop;
            } else if op.invoke <= t {
                *mode = Mode::Relax;
            }
        }
        w
    }

    /// Relaxes every acknowledged operation invoked after `t`.
    fn suffix_cut(&self, base: &Window, t: u64) -> Window {
        let mut w = base.clone();
        for (pos, mode) in w.modes.iter_mut().enumerate() {
            let op = self.kh.op(pos);
            if op.outcome == Outcome::Ok && *mode == Mode::Keep && op.invoke > t {
                *mode = Mode::Relax;
            }
        }
        w
    }

    /// Shrinks a failing key; returns the window and, per position, failed operations whose
    /// "did not happen" matters to the violation. `stuck_ret` is the return time of the
    /// operation the full search could not place: the violation is usually just before it.
    /// `verified`: the whole history is known to fail; otherwise only a failing window proves
    /// a violation, and shrinking stops early when none is found near the stuck point.
    /// The window is verified to fail unless it is still the whole, unweakened history.
    fn shrink(&mut self, stuck_ret: Option<u64>, verified: bool) -> (Window, Vec<bool>) {
        let mut verified = verified;
        let n = self.kh.idxs.len();
        let mut w = Window {
            modes: vec![Mode::Keep; n],
            any_start: false,
        };
        let mut relevant_fail = vec![false; n];

        // 1. Relax everything invoked after the stuck operation returned, if that still fails.
        let mut suffix_done = false;
        if let Some(b) = stuck_ret {
            let cand = self.suffix_cut(&w, b);
            if self.fails(&cand) {
                w = cand;
                suffix_done = true;
                verified = true;
            }
        }

        // 2. Latest prefix cut that still fails (a later cut is weaker, so failing is
        //    monotone). Gallop backwards from the end, where windows are small and cheap.
        let completes = self.sorted_times(&w, |op| op.complete);
        let m = completes.len();
        let mut pass = m; // smallest index known (or assumed) not to fail
        let mut fail = None; // largest index known to fail
        let mut stride = 1;
        while stride <= m {
            let i = m - stride;
            let cand = self.prefix_cut(&w, completes[i]);
            if self.fails(&cand) {
                fail = Some((i, cand));
                break;
            }
            pass = i;
            stride *= 2;
        }
        let mut lo = fail.as_ref().map_or(0, |(i, _)| i + 1);
        let mut hi = pass;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let cand = self.prefix_cut(&w, completes[mid]);
            if self.fails(&cand) {
                fail = Some((mid, cand));
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if let Some((_, cand)) = fail {
            w = cand;
            verified = true;
        }
        if !verified {
            return (w, relevant_fail);
        }

        // 3. Earliest suffix cut that still fails, unless step 1 already cut there.
        if !suffix_done {
            let invokes = self.sorted_times(&w, |op| Some(op.invoke));
            let (mut lo, mut hi) = (0, invokes.len());
            let mut best = None;
            while lo < hi {
                let mid = (lo + hi) / 2;
                let cand = self.suffix_cut(&w, invokes[mid]);
                if self.fails(&cand) {
                    best = Some(cand);
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            if let Some(b) = best {
                w = b;
            }
        }

        // 4. Relax each remaining acknowledged operation on its own if the window still fails;
        //    find the failed operations whose absence the violation depends on.
        let shown: HashSet<usize> = self.kh.sops(&w.modes).iter().map(|o| o.idx).collect();
        if shown.len() > MAX_GREEDY_WINDOW {
            self.truncated = true;
            return (w, relevant_fail);
        }
        let live: Vec<usize> = (0..n)
            .filter(|&p| shown.contains(&self.kh.idxs[p]) || self.in_range(&w, p))
            .collect();
        for p in live {
            let op = self.kh.op(p);
            let mut cand = w.clone();
            cand.modes[p] = Mode::Relax;
            match (op.outcome, w.modes[p]) {
                (Outcome::Ok, Mode::Keep) if self.fails(&cand) => w = cand,
                (Outcome::Fail, Mode::Keep) if op.kind.is_mutation() => {
                    relevant_fail[p] = self.check(&cand) == Some(false);
                }
                _ => {}
            }
        }
        (w, relevant_fail)
    }

    /// Distinct times (by `f`) of the window's acknowledged, unrelaxed operations, ascending.
    fn sorted_times(&self, w: &Window, f: impl Fn(&Op) -> Option<u64>) -> Vec<u64> {
        let mut t: Vec<u64> = (0..self.kh.idxs.len())
            .filter(|&p| w.modes[p] == Mode::Keep && self.kh.op(p).outcome == Outcome::Ok)
            .filter_map(|p| f(self.kh.op(p)))
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Whether a failed operation overlaps the time range of the window's known operations.
    fn in_range(&self, w: &Window, p: usize) -> bool {
        let op = self.kh.op(p);
        if op.outcome != Outcome::Fail {
            return false;
        }
        let sops = self.kh.sops(&w.modes);
        let first = sops
            .iter()
            .filter(|o| o.ret.is_some())
            .map(|o| o.call)
            .min();
        let last = sops.iter().filter_map(|o| o.ret).max();
        match (first, last) {
            (Some(f), Some(l)) => op.complete.is_some_and(|c| c >= f) && op.invoke <= l,
            _ => false,
        }
    }
}

/// Shrinks and renders a violation of one key. `full_failed`: the full search proved the
/// violation; otherwise it ran out of budget and only a failing window proves it (`None` if
/// none is found).
fn counterexample(
    kh: &KeyHist<'_>,
    key: &str,
    full: &[SOp],
    full_partial: Option<&Partial>,
    cfg: &CheckConfig,
    deadline: Option<Instant>,
    full_failed: bool,
) -> Option<String> {
    let counts =
        History::new(kh.idxs.iter().map(|&i| kh.history.ops[i].clone()).collect()).counts();
    let mut out = format!("key {key:?} is NOT linearizable ({counts})\n");
    if let Some(p) = full_partial {
        let stuck = &full[p.stuck];
        out.push_str(&format!(
            "full search{}: longest linearizable prefix places {} of {} acknowledged ops; #{} \
             could not be placed before it completed at {}\n",
            if full_failed {
                ""
            } else {
                " (gave up: budget exhausted)"
            },
            p.known,
            full.iter().filter(|o| o.ret.is_some()).count(),
            stuck.idx,
            stuck.ret.map(fmt_time).unwrap_or_else(|| "?".into())
        ));
    }
    if !cfg.shrink {
        if let (true, Some(p)) = (full_failed, full_partial) {
            out.push_str(&explain(kh, full, p, INITIAL));
        }
        return full_failed.then_some(out);
    }
    let shrink_deadline = Instant::now() + cfg.shrink_time;
    let mut sh = Shrinker {
        kh,
        cfg,
        deadline: deadline.map_or(shrink_deadline, |d| d.min(shrink_deadline)),
        checks: 0,
        truncated: false,
    };
    let stuck_ret = full_partial.and_then(|p| full[p.stuck].ret);
    let (w, relevant_fail) = sh.shrink(stuck_ret, full_failed);
    let whole = !w.any_start && w.modes.iter().all(|&m| m == Mode::Keep);
    if whole && !full_failed {
        return None;
    }
    let sops = kh.sops(&w.modes);
    let init = if w.any_start { ANY_STATE } else { INITIAL };
    out.push_str(&format!(
        "minimal window ({} ops, {}){}:\n",
        sops.len(),
        if w.any_start {
            "starting from ANY register state: earlier operations are left out"
        } else {
            "starting from the initial state: key absent"
        },
        if sh.truncated {
            "; shrinking hit its budget, so it may not be minimal"
        } else {
            ""
        }
    ));
    let mut shown: Vec<(usize, &str)> = Vec::new();
    let mut unknown_ops: Vec<usize> = Vec::new();
    for o in &sops {
        match (kh.history.ops[o.idx].outcome, o.ret) {
            (Outcome::Ok, None) => shown.push((o.idx, "  (relaxed: treated as unknown)")),
            (_, None) => unknown_ops.push(o.idx),
            _ => shown.push((o.idx, "")),
        }
    }
    for (p, &rel) in relevant_fail.iter().enumerate() {
        if rel {
            shown.push((kh.idxs[p], "  (failed: must not take effect)"));
        }
    }
    // Operations of unknown outcome cannot be dropped without strengthening the window; list
    // them in full only when there are few.
    if unknown_ops.len() <= MAX_LISTED_UNKNOWN {
        shown.extend(unknown_ops.iter().map(|&i| (i, "")));
    }
    shown.sort_by_key(|&(i, _)| (kh.history.ops[i].invoke, i));
    for (i, note) in shown {
        out.push_str(&format!("  {}{note}\n", kh.history.ops[i].describe(i)));
    }
    if unknown_ops.len() > MAX_LISTED_UNKNOWN {
        out.push_str(&format!(
            "  plus {} operations of unknown outcome (each may take effect at any time after it \
             was invoked, or never): {}\n",
            unknown_ops.len(),
            index_list(&unknown_ops)
        ));
    }
    let mut budget = Budget::new(cfg.shrink_steps, None);
    match search(&sops, init, &mut budget, true) {
        Search::Violation(Some(p)) => out.push_str(&explain(kh, &sops, &p, init)),
        _ => {
            if let (true, Some(p)) = (full_failed, full_partial) {
                out.push_str(
                    "(window search inconclusive; partial linearization of the full key)\n",
                );
                out.push_str(&explain(kh, full, p, INITIAL));
            }
        }
    }
    Some(out)
}

/// `#1, #5, #9` for a list of history indices.
fn index_list(idxs: &[usize]) -> String {
    idxs.iter()
        .map(|i| format!("#{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a partial linearization and why no pending operation extends it.
fn explain(kh: &KeyHist<'_>, sops: &[SOp], p: &Partial, init: State) -> String {
    let mut out = String::new();
    let ops = &kh.history.ops;
    out.push_str(&format!(
        "longest linearizable prefix ({} ops) from {}:\n",
        p.order.len(),
        kh.values.state(init)
    ));
    for &j in &p.order {
        out.push_str(&format!(
            "    {}\n",
            ops[sops[j].idx].describe_kind_with_index(sops[j].idx)
        ));
    }
    out.push_str(&format!(
        "  register then holds {}\n",
        kh.values.state(p.state)
    ));
    if p.state.val == UNOBSERVED_VAL {
        // Values nobody observes are merged for the search; name the write that produced it.
        let mut s = init;
        let mut writer = None;
        for &j in &p.order {
            let o = &sops[j];
            if let Some(ns) = step(s, &o.act, o.ret.is_some()) {
                if ns != s && ns.val == UNOBSERVED_VAL {
                    writer = Some(o.idx);
                }
                s = ns;
            }
        }
        if let Some(i) = writer {
            out.push_str(&format!("  (the value written by #{i})\n"));
        }
    }
    let stuck = &sops[p.stuck];
    out.push_str(&format!(
        "  #{} must take effect by {} but no pending operation can go next:\n",
        stuck.idx,
        stuck.ret.map(fmt_time).unwrap_or_else(|| "?".into())
    ));
    let mut unknown_pending = Vec::new();
    for &j in &p.pending {
        let o = &sops[j];
        if o.ret.is_none() && p.pending.len() > MAX_LISTED_UNKNOWN {
            unknown_pending.push(o.idx);
            continue;
        }
        let why = match step(p.state, &o.act, o.ret.is_some()) {
            None => "does not fit this state",
            Some(_) => "fits, but every continuation dead-ends",
        };
        let unknown = if o.ret.is_none() {
            " [unknown outcome]"
        } else {
            ""
        };
        out.push_str(&format!(
            "    {}{unknown}: {why}\n",
            ops[o.idx].describe_kind_with_index(o.idx)
        ));
    }
    if !unknown_pending.is_empty() {
        out.push_str(&format!(
            "    {} operations of unknown outcome could go next, but every continuation \
             dead-ends: {}\n",
            unknown_pending.len(),
            index_list(&unknown_pending)
        ));
    }
    out
}
