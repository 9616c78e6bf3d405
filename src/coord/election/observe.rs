//! Following an election's leader (etcd's `Election.Observe`): one loop on the KV client that
//! yields the leader now, then every new version of the leader key and every change of leader.
//! The store's Observe service streams its states as they are; [`Observer`] narrows them to
//! changes of leader or value for the master and its tests.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::error::ElectionError;
use super::protocol::leader;
use crate::client::{EventType, KeyValue, KvClient, KvError, WatchSpec, WatchStream};

/// States buffered before the loop waits for its consumer.
const BUFFER: usize = 16;

/// One state of an election.
#[derive(Clone, Debug)]
pub(crate) struct LeaderState {
    /// The leader's key-value; `None` when nobody campaigns.
    pub(crate) leader: Option<KeyValue>,
    /// The revision this state was seen at.
    pub(crate) revision: i64,
}

/// What [`follow`] yields.
pub(crate) type StateItem = Result<LeaderState, ElectionError>;

/// Follow the leader under `prefix`: the current state at once, then each new leader version
/// (`None` when the last candidate left). Ends after an `Err`, or when the receiver is dropped.
pub(crate) async fn follow(
    client: Arc<dyn KvClient>,
    prefix: Vec<u8>,
) -> Result<(mpsc::Receiver<StateItem>, JoinHandle<()>), ElectionError> {
    let (first, stream) = start(&*client, &prefix).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let current = first.leader.clone();
    let _ = tx.try_send(Ok(first));
    let task = tokio::spawn(follow_loop(client, prefix, stream, current, tx));
    Ok((rx, task))
}

/// Read the state, then watch the prefix from the next revision, so that no change is missed.
async fn start(
    client: &dyn KvClient,
    prefix: &[u8],
) -> Result<(LeaderState, WatchStream), ElectionError> {
    let (leader, revision) = leader(client, prefix).await?;
    let stream = client
        .watch(WatchSpec::prefix(prefix.to_vec()).from_revision(revision + 1))
        .await?;
    Ok((LeaderState { leader, revision }, stream))
}

async fn follow_loop(
    client: Arc<dyn KvClient>,
    prefix: Vec<u8>,
    mut stream: WatchStream,
    mut current: Option<KeyValue>,
    tx: mpsc::Sender<StateItem>,
) {
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = tx.closed() => return,
        };
        let batch = match item {
            Some(Ok(batch)) => batch,
            Some(Err(KvError::Compacted { .. })) | None => {
                // Fell behind a compaction (or the watch ended): start over from the store.
                match start(&*client, &prefix).await {
                    Ok((state, s)) => {
                        stream = s;
                        if !offer(&tx, &mut current, state).await {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        for ev in batch.events {
            // Only a newer version of the leader key, or a put while nobody leads, can change
            // the answer; other candidates queueing or leaving cannot.
            let on_leader = current
                .as_ref()
                .map(|cur| cur.key == ev.kv.key && ev.kv.mod_revision > cur.mod_revision);
            let state = match (on_leader, ev.kind) {
                // The leader proclaimed: the event is the new version.
                (Some(true), EventType::Put) => LeaderState {
                    revision: ev.kv.mod_revision,
                    leader: Some(ev.kv),
                },
                // The first candidate arrived, or the leader left: ask who leads now.
                (None, EventType::Put) | (Some(true), EventType::Delete) => {
                    match leader(&*client, &prefix).await {
                        Ok((leader, revision)) => LeaderState { leader, revision },
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                _ => continue,
            };
            if !offer(&tx, &mut current, state).await {
                return;
            }
        }
    }
}

/// Send `state` unless it is the leader version last sent; false when the consumer is gone.
async fn offer(
    tx: &mpsc::Sender<StateItem>,
    current: &mut Option<KeyValue>,
    state: LeaderState,
) -> bool {
    let seen = match (current.as_ref(), state.leader.as_ref()) {
        (Some(cur), Some(kv)) => cur.key == kv.key && cur.mod_revision >= kv.mod_revision,
        (None, None) => true,
        _ => false,
    };
    if seen {
        return true;
    }
    current.clone_from(&state.leader);
    tx.send(Ok(state)).await.is_ok()
}

/// The current leader's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's key, `<prefix>/<lease hex>`.
    pub key: Vec<u8>,
    /// Its value (for masters, `master<id>-<addr>`).
    pub value: Vec<u8>,
    /// Its create revision (the fencing token).
    pub create_revision: i64,
    /// Its session lease.
    pub lease: i64,
}

impl LeaderInfo {
    pub(crate) fn from_kv(kv: KeyValue) -> Self {
        Self {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            lease: kv.lease,
        }
    }

    /// The value as text (lossy).
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// A stream of leader changes from [`Election::observe`](super::Election::observe): the
/// leader at once, then each change of leader key or value (`None` = nobody campaigns).
pub struct Observer {
    rx: mpsc::Receiver<StateItem>,
    task: JoinHandle<()>,
    /// The leader last returned; `None` before the first.
    last: Option<Option<LeaderInfo>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

impl Observer {
    /// Follow the leader under `prefix`.
    pub(crate) async fn start(
        client: Arc<dyn KvClient>,
        prefix: Vec<u8>,
    ) -> Result<Self, ElectionError> {
        let (rx, task) = follow(client, prefix).await?;
        Ok(Self {
            rx,
            task,
            last: None,
        })
    }

    /// The next leader state; `None` once observation ended (after an `Err`).
    pub async fn next(&mut self) -> Option<Result<Option<LeaderInfo>, ElectionError>> {
        loop {
            let state = match self.rx.recv().await? {
                Ok(state) => state,
                Err(e) => return Some(Err(e)),
            };
            let leader = state.leader.map(LeaderInfo::from_kv);
            // A new version with the same value is no change to the master.
            if self.last.as_ref().is_some_and(|l| same_leader(l, &leader)) {
                continue;
            }
            self.last = Some(leader.clone());
            return Some(Ok(leader));
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn same_leader(a: &Option<LeaderInfo>, b: &Option<LeaderInfo>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.key == b.key && a.create_revision == b.create_revision && a.value == b.value
        }
        _ => false,
    }
}
