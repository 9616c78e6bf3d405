//! Group proposal on the leader: concurrent writes share one raft log entry.
//!
//! openraft appends (and flushes) one log entry per `client_write`, and the state machine
//! persists once per `apply` call, so per-write cost does not shrink with concurrency. The
//! proposer task takes the first queued write, drains whatever else is already queued (bounded
//! by count and size) and proposes them as one `Command::Batch`; each caller gets its own
//! `ApplyResponse` back. Several proposals stay in flight, so a lone writer waits for nothing
//! but its own commit, and under load the queue that builds up while proposals are in flight
//! becomes the next batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_storage::{ApplyResponse, Command, CommandResult, RequestOp, TxnRequest};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::node::write_err_to_wire;
use crate::wire::WireError;
use crate::TypeConfig;

/// Most commands in one proposal.
const MAX_BATCH_COMMANDS: usize = 256;
/// A proposal stops taking commands once their estimated encoded size reaches this.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Proposals submitted to raft and not yet answered.
const MAX_IN_FLIGHT: usize = 8;
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

/// The proposer loop: one proposal per round, at most `MAX_IN_FLIGHT` unanswered.
async fn proposer(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Pending>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A write taken from the queue that did not fit the previous proposal.
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            },
        };
        // Waiting for a free slot is what lets the next batch grow under load.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let mut batch = vec![first];
        // A batch command from a caller is proposed alone: batches never nest.
        if !matches!(batch[0].cmd, Command::Batch(_)) {
            let mut bytes = approx_size(&batch[0].cmd);
            while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
                let Ok(p) = rx.try_recv() else { break };
                let size = approx_size(&p.cmd);
                if matches!(p.cmd, Command::Batch(_)) || bytes + size > MAX_BATCH_BYTES {
                    carry = Some(p);
                    break;
                }
                bytes += size;
                batch.push(p);
            }
        }
        // Callers that already gave up (timed out, cancelled) have an unknown outcome either
        // way: not proposing their writes saves work under overload.
        batch.retain(|p| !p.tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(permit);
        });
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
        | Command::ForgetMember { .. } => FIXED,
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
