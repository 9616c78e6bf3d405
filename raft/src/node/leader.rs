//! Leader-side operations: the drive loop that waits for a leader and retries, running an
//! operation locally when this member leads or forwarding it to the leader otherwise, and the
//! leader's own write, read-index and read-barrier steps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_storage::{ApplyResponse, Command};

use crate::network::{CallError, Rpc};
use crate::wire::{
    decode, encode, AdminOk, AdminOp, AdminRequest, ForwardWriteRequest, ReadIndexRequest,
    WireError,
};
use crate::{NodeId, RaftError};

use super::inner::Inner;

/// The retry loop shared by every leader-side operation: wait for a leader, try `$attempt`, and
/// retry what is safe to retry until `$deadline`. A macro rather than an async fn taking a
/// closure: async closures borrowing `self` lose `Send` under `tokio::spawn`.
macro_rules! drive_loop {
    ($this:ident, $deadline:expr, |$leader:ident, $remaining:ident| $attempt:block) => {{
        let deadline: Instant = $deadline;
        let short = $this.short_pause();
        let mut last = RaftError::NoLeader;
        loop {
            if $this.is_stopped() {
                break Err(RaftError::Stopped);
            }
            let $remaining = deadline.saturating_duration_since(Instant::now());
            if $remaining.is_zero() {
                break Err(last);
            }
            let Some($leader) = $this.current_leader() else {
                last = RaftError::NoLeader;
                $this.pause($remaining).await;
                continue;
            };
            let res: Result<LeaderOk, WireError> = $attempt;
            match res {
                Ok(v) => break Ok(v),
                Err(WireError::NotLeader(_)) | Err(WireError::NoLeader) => {
                    last = RaftError::NoLeader;
                    $this.pause($remaining.min(short)).await;
                }
                Err(WireError::QuorumLost) => {
                    last = RaftError::Timeout;
                    tokio::time::sleep($remaining.min(short)).await;
                }
                Err(WireError::InProgress) => {
                    last = RaftError::from(WireError::InProgress);
                    tokio::time::sleep($remaining.min(short)).await;
                }
                Err(e) => break Err(e.into()),
            }
        }
    }};
}

/// A leader-side operation, run locally on the leader or forwarded to it.
#[derive(Clone, Debug)]
pub(crate) enum LeaderOp {
    Write(Command),
    ReadIndex,
    Admin(AdminOp),
}

/// Result of a `LeaderOp`.
#[derive(Debug)]
pub(crate) enum LeaderOk {
    Write(ApplyResponse),
    ReadIndex(u64),
    Admin(AdminOk),
}

impl Inner {
    pub(crate) fn peer_url_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let b = m.borrow();
        b.membership_config
            .membership()
            .get_node(&id)
            .and_then(|n| n.peer_urls.first().cloned())
    }

    /// Wait up to `max` for the known leader to change.
    async fn pause(&self, max: Duration) {
        let mut rx = self.leader_tx.subscribe();
        let mut shutdown = self.shutdown_tx.subscribe();
        tokio::select! {
            _ = rx.changed() => {},
            _ = tokio::time::sleep(max) => {},
            _ = shutdown.wait_for(|s| *s) => {},
        }
    }

    /// Run `op` on the leader (here or forwarded), waiting for a leader and retrying what is
    /// safe to retry until the request deadline.
    pub(crate) async fn run_on_leader(&self, op: LeaderOp) -> Result<LeaderOk, RaftError> {
        self.run_on_leader_until(op, Instant::now() + self.request_timeout())
            .await
    }

    pub(crate) async fn run_on_leader_until(
        &self,
        op: LeaderOp,
        deadline: Instant,
    ) -> Result<LeaderOk, RaftError> {
        drive_loop!(self, deadline, |leader, remaining| {
            if leader == self.id {
                self.on_leader(&op, remaining).await
            } else {
                self.forward(leader, &op, remaining).await
            }
        })
    }

    /// Like `run_on_leader` for a plain write; used from inside leader-side admin operations,
    /// which `run_on_leader` itself runs (a shared async fn would make the future recursive).
    pub(crate) async fn write_anywhere(&self, cmd: Command) -> Result<ApplyResponse, RaftError> {
        let op = LeaderOp::Write(cmd.clone());
        let deadline = Instant::now() + self.request_timeout();
        let res = drive_loop!(self, deadline, |leader, remaining| {
            if leader == self.id {
                self.write_on_leader(cmd.clone(), remaining)
                    .await
                    .map(LeaderOk::Write)
            } else {
                self.forward(leader, &op, remaining).await
            }
        })?;
        match res {
            LeaderOk::Write(r) => Ok(r),
            other => Err(RaftError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Retry pause after a retryable failure.
    fn short_pause(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_interval_ms.clamp(10, 100))
    }

    async fn on_leader(&self, op: &LeaderOp, timeout: Duration) -> Result<LeaderOk, WireError> {
        match op {
            LeaderOp::Write(cmd) => self
                .write_on_leader(cmd.clone(), timeout)
                .await
                .map(LeaderOk::Write),
            LeaderOp::ReadIndex => self
                .read_index_on_leader(timeout)
                .await
                .map(LeaderOk::ReadIndex),
            LeaderOp::Admin(a) => self
                .admin_on_leader(a.clone(), timeout)
                .await
                .map(LeaderOk::Admin),
        }
    }

    /// Send `op` to `leader`; connect failures and "not leader" answers come back retryable.
    async fn forward(
        &self,
        leader: NodeId,
        op: &LeaderOp,
        timeout: Duration,
    ) -> Result<LeaderOk, WireError> {
        let Some(url) = self.peer_url_of(leader) else {
            return Err(WireError::NotLeader(None));
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let (rpc, payload) = match op {
            LeaderOp::Write(cmd) => (
                Rpc::ForwardWrite,
                encode(&ForwardWriteRequest {
                    timeout_ms,
                    cmd: cmd.clone(),
                }),
            ),
            LeaderOp::ReadIndex => (Rpc::ReadIndex, encode(&ReadIndexRequest { timeout_ms })),
            LeaderOp::Admin(a) => (
                Rpc::Admin,
                encode(&AdminRequest {
                    timeout_ms,
                    op: a.clone(),
                }),
            ),
        };
        let payload = payload.map_err(WireError::Other)?;
        // A little slack so the leader's own timeout answers first.
        let bytes = match self
            .clients
            .call(&url, rpc, payload, timeout + Duration::from_millis(200))
            .await
        {
            Ok(b) => b,
            Err(CallError::NotDelivered(e)) => {
                tracing::debug!(leader = format_args!("{leader:x}"), error = %e, "leader unreachable");
                return Err(WireError::NotLeader(None));
            }
            Err(CallError::Timeout) => return Err(WireError::Timeout),
            Err(CallError::Failed(e)) => {
                return Err(match op {
                    // Reads are idempotent: try again (the leader may have just died).
                    LeaderOp::ReadIndex => WireError::NotLeader(None),
                    _ => WireError::Other(format!("forwarding to leader failed: {e}")),
                });
            }
        };
        let bad = |e: String| WireError::Other(format!("bad reply from leader: {e}"));
        match op {
            LeaderOp::Write(_) => decode::<Result<ApplyResponse, WireError>>(&bytes)
                .map_err(bad)?
                .map(LeaderOk::Write),
            LeaderOp::ReadIndex => decode::<Result<u64, WireError>>(&bytes)
                .map_err(bad)?
                .map(LeaderOk::ReadIndex),
            LeaderOp::Admin(_) => decode::<Result<AdminOk, WireError>>(&bytes)
                .map_err(bad)?
                .map(LeaderOk::Admin),
        }
    }

    /// `client_write` on this member, which must be the leader; concurrent writes are grouped
    /// into one log entry by the batcher (results and errors stay per write).
    pub(crate) async fn write_on_leader(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<ApplyResponse, WireError> {
        self.batcher.write(cmd, timeout).await
    }

    /// Confirm leadership with a quorum and return the index a linearizable read must wait for.
    pub(crate) async fn read_index_on_leader(&self, timeout: Duration) -> Result<u64, WireError> {
        // With most voters known unreachable the leadership check can only time out, and
        // openraft logs an ERROR per unreachable voter for each one: fail at once instead.
        if self.quorum_unreachable() {
            return Err(WireError::QuorumLost);
        }
        self.read_index
            .read_index(&self.raft, timeout, self.request_timeout())
            .await
    }

    /// True when this member and the voters not marked unreachable are no majority.
    fn quorum_unreachable(&self) -> bool {
        let voters: Vec<NodeId> = {
            let m = self.raft.metrics();
            let b = m.borrow();
            b.membership_config.membership().voter_ids().collect()
        };
        let reachable = voters
            .iter()
            .filter(|id| {
                **id == self.id
                    || self
                        .peer_url_of(**id)
                        .is_some_and(|url| !self.clients.is_down(&url))
            })
            .count();
        reachable * 2 <= voters.len()
    }

    /// Linearizable read barrier (see `RaftNode::read_barrier`).
    ///
    /// The read-index step is shared by the barriers waiting at one moment (one local round or
    /// one forwarded RPC for all of them; see `read_index`).
    pub(crate) async fn read_barrier(self: &Arc<Self>) -> Result<(), RaftError> {
        let deadline = Instant::now() + self.request_timeout();
        let inner = Arc::clone(self);
        let shared = self.barrier_rounds.call(move || {
            let inner = Arc::clone(&inner);
            Box::pin(async move {
                let deadline = Instant::now() + inner.request_timeout();
                match inner
                    .run_on_leader_until(LeaderOp::ReadIndex, deadline)
                    .await
                {
                    Ok(LeaderOk::ReadIndex(i)) => Ok(i),
                    Ok(other) => Err(RaftError::Internal(format!("unexpected reply {other:?}"))),
                    Err(e) => Err(e),
                }
            })
        });
        let index = match tokio::time::timeout_at(deadline.into(), shared).await {
            Err(_) => return Err(RaftError::Timeout),
            Ok(None) => return Err(RaftError::Stopped),
            Ok(Some(Ok(i))) => i,
            Ok(Some(Err(e))) => return Err(e),
        };
        if index == 0 {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining.max(Duration::from_millis(1))))
            .applied_index_at_least(Some(index), "read_barrier")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => RaftError::Timeout,
                openraft::metrics::WaitError::ShuttingDown => RaftError::Stopped,
            })
    }
}
