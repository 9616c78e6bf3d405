//! Group proposal on the leader: concurrent writes share one raft log entry.
//!
//! openraft 0.9 appends one log entry per `client_write` and waits for its flush inside its core
//! loop, and the state machine persists once per `apply` call, so per-write cost does not shrink
//! with concurrency. The proposer task gathers queued writes (bounded by count and size) and
//! proposes them as one `Command::Batch`; each caller gets its own `ApplyResponse` back. A lone
//! writer waits for nothing but its own commit; under load the queue that builds up while a
//! proposal is in flight becomes the next batch.

use std::time::{Duration, Instant};

use crawler_storage::{ApplyResponse, Command, CommandResult, RequestOp, TxnRequest};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::wire::{write_err_to_wire, WireError};
use crate::TypeConfig;

/// Most commands in one proposal.
const MAX_BATCH_COMMANDS: usize = 1024;
/// A proposal stops taking commands once their estimated encoded size reaches this.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Proposals submitted to raft and not yet answered.
const MAX_IN_FLIGHT: usize = 2;
/// A proposal is made while another is in flight only once it holds this many commands.
const PIPELINE_MIN_COMMANDS: usize = 32;
/// Writes queued for the proposer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 4096;

/// The answer one caller gets.
type Reply = Result<ApplyResponse, WireError>;

/// One caller's write waiting for a proposal.
struct Pending {
    cmd: Command,
    /// The caller gives up at this instant; a proposal runs until its latest caller's deadline.
    deadline: Instant,
    tx: oneshot::Sender<Reply>,
}

/// Handle on the proposer task; writes on the leader go through it.
pub(crate) struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Start the proposer task for `raft`; it stops when `shutdown` turns true (queued writes are
    /// then answered `Stopped`).
    pub(crate) fn spawn(
        raft: Raft<TypeConfig>,
        shutdown: watch::Receiver<bool>,
    ) -> (Batcher, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(proposer(raft, rx, shutdown));
        (Batcher { tx }, task)
    }

    /// Propose `cmd` (possibly together with other writes) on this member, which should be the
    /// leader, and wait up to `timeout` for its own result. Errors are those of a plain
    /// `client_write`: `NotLeader` when this member does not lead, `Timeout` when the outcome is
    /// unknown at the deadline.
    pub(crate) async fn write(&self, cmd: Command, timeout: Duration) -> Reply {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let submit = async {
            self.tx
                .send(Pending { cmd, deadline, tx })
                .await
                .map_err(|_| WireError::Stopped)?;
            // Dropped unanswered only when the proposer stopped before proposing it.
            rx.await.map_err(|_| WireError::Stopped)?
        };
        match tokio::time::timeout(timeout, submit).await {
            Err(_) => Err(WireError::Timeout),
            Ok(res) => res,
        }
    }
}

/// The batch being gathered for the next proposal.
#[derive(Default)]
struct Gathering {
    batch: Vec<Pending>,
    bytes: usize,
    /// Takes no more commands (full, or it holds a caller's own batch command).
    closed: bool,
}

impl Gathering {
    /// Add `p` if it fits; otherwise close the batch and hand `p` back.
    fn offer(&mut self, p: Pending) -> Option<Pending> {
        let size = approx_size(&p.cmd);
        // A batch command from a caller is proposed alone: batches never nest.
        let alone = matches!(p.cmd, Command::Batch(_));
        if self.batch.is_empty() {
            self.closed = alone;
        } else if self.closed || alone || self.bytes + size > MAX_BATCH_BYTES {
            self.closed = true;
            return Some(p);
        }
        self.bytes += size;
        self.batch.push(p);
        if self.batch.len() >= MAX_BATCH_COMMANDS || self.bytes >= MAX_BATCH_BYTES {
            self.closed = true;
        }
        None
    }
}

/// The proposer loop.
///
/// openraft 0.9 appends and flushes one `client_write` at a time inside its core loop, so many
/// small proposals in flight only queue there, one flush each. The proposer therefore proposes
/// when raft is idle (nothing of ours in flight), and makes a second, overlapping proposal only
/// once the writes that queued meanwhile fill a sizeable batch (so one flush overlaps the
/// previous proposal's apply). Everything else waits and joins the next batch.
async fn proposer(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Pending>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut in_flight = 0usize;
    // A write taken from the queue that did not fit the gathering batch.
    let mut carry: Option<Pending> = None;
    let mut next = Gathering::default();
    let mut queue_open = true;
    loop {
        if let Some(p) = carry.take() {
            carry = next.offer(p);
        }
        while carry.is_none() && !next.closed {
            match rx.try_recv() {
                Ok(p) => carry = next.offer(p),
                Err(_) => break,
            }
        }
        // Callers that already gave up (timed out, cancelled) have an unknown outcome either
        // way: not proposing their writes saves work under overload.
        next.batch.retain(|p| !p.tx.is_closed());
        let ready = !next.batch.is_empty()
            && (in_flight == 0
                || (in_flight < MAX_IN_FLIGHT
                    && (next.closed || next.batch.len() >= PIPELINE_MIN_COMMANDS)));
        if ready {
            let batch = std::mem::take(&mut next).batch;
            in_flight += 1;
            let raft = raft.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                propose(&raft, batch).await;
                let _ = done.send(());
            });
            continue;
        }
        if !queue_open && next.batch.is_empty() && carry.is_none() && in_flight == 0 {
            return;
        }
        let take_more = queue_open && carry.is_none() && !next.closed;
        tokio::select! {
            _ = done_rx.recv() => in_flight = in_flight.saturating_sub(1),
            p = rx.recv(), if take_more => match p {
                Some(p) => carry = next.offer(p),
                None => queue_open = false,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Propose `batch` as one entry and answer every caller with its own result.
async fn propose(raft: &Raft<TypeConfig>, mut batch: Vec<Pending>) {
    let deadline = batch
        .iter()
        .map(|p| p.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let timeout = deadline.saturating_duration_since(Instant::now());
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let res = client_write(raft, p.cmd, timeout).await;
            let _ = p.tx.send(res);
        }
        return;
    }
    let (cmds, txs): (Vec<Command>, Vec<oneshot::Sender<Reply>>) =
        batch.into_iter().map(|p| (p.cmd, p.tx)).unzip();
    let n = cmds.len();
    match client_write(raft, Command::Batch(cmds), timeout).await {
        Ok(ApplyResponse {
            result: Ok(CommandResult::Batch(responses)),
            ..
        }) if responses.len() == n => {
            for (tx, r) in txs.into_iter().zip(responses) {
                let _ = tx.send(Ok(r));
            }
        }
        // The whole entry failed deterministically: every command failed with it.
        Ok(whole @ ApplyResponse { result: Err(_), .. }) => {
            for tx in txs {
                let _ = tx.send(Ok(whole.clone()));
            }
        }
        Ok(other) => {
            let e = WireError::Other(format!(
                "unexpected result for a batch of {n} commands: {other:?}"
            ));
            for tx in txs {
                let _ = tx.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for tx in txs {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// One `client_write`, its errors mapped as every leader-side write maps them.
async fn client_write(raft: &Raft<TypeConfig>, cmd: Command, timeout: Duration) -> Reply {
    match tokio::time::timeout(timeout, raft.client_write(cmd)).await {
        Err(_) => Err(WireError::Timeout),
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(e)) => Err(write_err_to_wire(e)),
    }
}

/// A cheap estimate of a command's encoded size (payload bytes plus a little per field).
fn approx_size(cmd: &Command) -> usize {
    const FIXED: usize = 32;
    match cmd {
        Command::Put(p) => FIXED + p.key.len() + p.value.len(),
        Command::DeleteRange(d) => FIXED + d.key.len() + d.range_end.len(),
        Command::Txn(t) => txn_size(t),
        Command::Batch(cmds) => FIXED + cmds.iter().map(approx_size).sum::<usize>(),
        Command::PublishMember { attrs, .. } => {
            FIXED + attrs.name.len() + attrs.client_urls.iter().map(String::len).sum::<usize>()
        }
        Command::Compact { .. }
        | Command::LeaseGrant { .. }
        | Command::LeaseRevoke { .. }
        | Command::LeaseExpire { .. }
        | Command::ForgetMember { .. }
        | Command::Alarm { .. } => FIXED,
    }
}

fn txn_size(t: &TxnRequest) -> usize {
    let compares: usize = t
        .compare
        .iter()
        .map(|c| {
            let operand = match &c.target {
                crawler_storage::CompareTarget::Value(v) => v.len(),
                _ => 8,
            };
            16 + c.key.len() + c.range_end.len() + operand
        })
        .sum();
    let op_size = |op: &RequestOp| match op {
        RequestOp::Range(r) => 32 + r.key.len() + r.range_end.len(),
        RequestOp::Put(p) => 32 + p.key.len() + p.value.len(),
        RequestOp::DeleteRange(d) => 32 + d.key.len() + d.range_end.len(),
        RequestOp::Txn(t) => txn_size(t),
    };
    let ops: usize = t.success.iter().chain(&t.failure).map(op_size).sum();
    32 + compares + ops
}
