//! Shared read-index rounds on the leader.
//!
//! openraft 0.9 runs one heartbeat round to every voter per `get_read_log_id` call, so each
//! linearizable read and each keep-alive cost a quorum round of their own. Here every request
//! that arrives while a round is running waits for the next round, and all requests waiting for
//! one round share its answer. A round starts only after all of its requests arrived, so the read
//! index it returns is at least the commit index at each request's arrival: sharing it keeps
//! reads linearizable (etcd batches its ReadIndex requests the same way).

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError as OrRaftError};
use openraft::Raft;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::node::fatal_to_wire;
use crate::wire::WireError;
use crate::TypeConfig;

/// The answer of one round: the index a read must wait for.
type Answer = Result<u64, WireError>;

#[derive(Default)]
struct State {
    /// A driver task is running rounds.
    running: bool,
    /// Requests for the next round (they arrived after the running round started).
    next: Vec<oneshot::Sender<Answer>>,
}

/// Coalesces read-index requests into shared rounds.
#[derive(Clone, Default)]
pub(crate) struct ReadIndex {
    state: Arc<Mutex<State>>,
}

impl ReadIndex {
    /// Confirm leadership with a quorum in a round that starts after this call, and return the
    /// index a linearizable read must wait for. Each round gets `round_timeout`; the caller's
    /// own wait is bounded by `timeout`.
    pub(crate) async fn read_index(
        &self,
        raft: &Raft<TypeConfig>,
        timeout: Duration,
        round_timeout: Duration,
    ) -> Answer {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.state.lock();
            st.next.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            let state = Arc::clone(&self.state);
            let raft = raft.clone();
            tokio::spawn(drive(state, raft, round_timeout));
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(WireError::QuorumLost),
            Ok(Ok(answer)) => answer,
            // The driver dropped the request without an answer: only when the runtime stops.
            Ok(Err(_)) => Err(WireError::Stopped),
        }
    }
}

/// Run rounds until nobody waits for the next one.
async fn drive(state: Arc<Mutex<State>>, raft: Raft<TypeConfig>, round_timeout: Duration) {
    loop {
        let waiters = {
            let mut st = state.lock();
            if st.next.is_empty() {
                st.running = false;
                return;
            }
            std::mem::take(&mut st.next)
        };
        let answer = one_round(&raft, round_timeout).await;
        for w in waiters {
            // A waiter that gave up (timed out) is gone; nothing to tell it.
            let _ = w.send(answer.clone());
        }
    }
}

/// One `get_read_log_id`, its errors mapped as the leader-side read index maps them.
async fn one_round(raft: &Raft<TypeConfig>, timeout: Duration) -> Answer {
    match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
        Err(_) => Err(WireError::QuorumLost),
        Ok(Ok((read, _applied))) => Ok(read.map(|l| l.index).unwrap_or(0)),
        Ok(Err(OrRaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(WireError::NotLeader(f.leader_id))
        }
        Ok(Err(OrRaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
            Err(WireError::QuorumLost)
        }
        Ok(Err(OrRaftError::Fatal(f))) => Err(fatal_to_wire(f)),
    }
}
