//! Shared read-index rounds.
//!
//! openraft 0.9 runs one heartbeat round to every voter per `get_read_log_id` call, so each
//! linearizable read and each keep-alive cost a quorum round of their own (and, on a follower, a
//! forwarded RPC each). Here every request that arrives while a round is running waits for the
//! next round, and all requests waiting for one round share its answer. A round starts only after
//! all of its requests arrived, so the read index it returns is at least the commit index at each
//! request's arrival: sharing it keeps reads linearizable (etcd batches its ReadIndex requests the
//! same way). Used twice: on the leader around `get_read_log_id`, and on every member around the
//! whole read-index step of the read barrier (local or forwarded to the leader).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{CheckIsLeaderError, RaftError as OrRaftError};
use openraft::Raft;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::wire::{fatal_to_wire, WireError};
use crate::TypeConfig;

struct State<T> {
    /// A driver task is running rounds.
    running: bool,
    /// Requests for the next round (they arrived after the running round started).
    next: Vec<oneshot::Sender<T>>,
}

/// Coalesces requests into shared rounds; `T` is a round's answer.
pub(crate) struct Coalescer<T> {
    state: Arc<Mutex<State<T>>>,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                running: false,
                next: Vec::new(),
            })),
        }
    }
}

impl<T: Clone + Send + 'static> Coalescer<T> {
    /// The answer of a round that starts after this call. `round` makes one round; it is used
    /// when this call has to start the driver (concurrent callers pass equivalent rounds).
    /// `None` only when the driver was dropped unanswered (the runtime is stopping).
    pub(crate) async fn call<F>(&self, round: F) -> Option<T>
    where
        F: Fn() -> BoxFuture<'static, T> + Send + Sync + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.state.lock();
            st.next.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(drive(Arc::clone(&self.state), round));
        }
        rx.await.ok()
    }
}

/// Run rounds until nobody waits for the next one.
async fn drive<T, F>(state: Arc<Mutex<State<T>>>, round: F)
where
    T: Clone,
    F: Fn() -> BoxFuture<'static, T>,
{
    loop {
        let waiters = {
            let mut st = state.lock();
            if st.next.is_empty() {
                st.running = false;
                return;
            }
            std::mem::take(&mut st.next)
        };
        let answer = round().await;
        for w in waiters {
            // A waiter that gave up (timed out) is gone; nothing to tell it.
            let _ = w.send(answer.clone());
        }
    }
}

/// Leader-side read index: the answer of one shared round.
pub(crate) type ReadIndex = Coalescer<Result<u64, WireError>>;

impl ReadIndex {
    /// Confirm leadership with a quorum in a round that starts after this call, and return the
    /// index a linearizable read must wait for. Each round gets `round_timeout`; the caller's
    /// own wait is bounded by `timeout`.
    pub(crate) async fn read_index(
        &self,
        raft: &Raft<TypeConfig>,
        timeout: Duration,
        round_timeout: Duration,
    ) -> Result<u64, WireError> {
        let raft = raft.clone();
        let answer = self.call(move || Box::pin(one_round(raft.clone(), round_timeout)));
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(WireError::QuorumLost),
            Ok(Some(answer)) => answer,
            Ok(None) => Err(WireError::Stopped),
        }
    }
}

/// One `get_read_log_id`, its errors mapped as the leader-side read index maps them.
async fn one_round(raft: Raft<TypeConfig>, timeout: Duration) -> Result<u64, WireError> {
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
