//! The master's side of the protocol: an [`Election`] under a text prefix, campaigned with a
//! [`Session`]'s lease, and the [`Leadership`] it wins, watched until it is lost.
//!
//! Fencing: a leader guards its writes with [`Leadership::fence`] (its key still exists with its
//! create revision), so a deposed leader's late writes fail instead of overwriting its successor's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::ElectionError;
use super::observe::{LeaderInfo, Observer};
use super::protocol::{self, create_equals};
use super::session::Session;
use crate::client::keepalive::wait_lost;
use crate::client::{Compare, EventType, KvClient, RangeRequest, WatchSpec};

/// An election under one prefix.
#[derive(Clone)]
pub struct Election {
    client: Arc<dyn KvClient>,
    /// `<prefix>/`.
    key_prefix: String,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl Election {
    /// An election under `prefix` (etcd's `concurrency.NewElection(session, prefix)`).
    pub fn new(client: Arc<dyn KvClient>, prefix: &str) -> Self {
        Self {
            client,
            key_prefix: format!("{}/", prefix.trim_end_matches('/')),
        }
    }

    /// The key a session campaigns with.
    pub fn candidate_key(&self, session: &Session) -> String {
        let key = protocol::candidate_key(self.key_prefix.as_bytes(), session.lease_id());
        String::from_utf8_lossy(&key).into_owned()
    }

    /// Become leader with `value`: blocks until every earlier candidate is gone.
    ///
    /// Fails with `SessionExpired` if the session (or the candidate's key) is lost meanwhile.
    /// Dropping the future before it resolves withdraws the candidacy (its key is deleted in the
    /// background).
    pub async fn campaign(
        &self,
        session: &Session,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership, ElectionError> {
        if session.is_lost() {
            return Err(ElectionError::SessionExpired);
        }
        let value = value.into();
        let lease = session.lease_id();
        let lost = session.lost_signal();
        let won = protocol::campaign(
            &self.client,
            self.key_prefix.as_bytes(),
            lease,
            Some(&value),
            Some(lost.clone()),
        )
        .await?;
        let (lost_tx, lost_rx) = watch::channel(false);
        let task = tokio::spawn(monitor_leadership(
            self.client.clone(),
            won.key.clone(),
            won.create_revision,
            won.revision,
            lost,
            lost_tx,
        ));
        Ok(Leadership {
            client: self.client.clone(),
            key: won.key,
            create_revision: won.create_revision,
            lease,
            value,
            lost: lost_rx,
            task,
        })
    }

    /// The current leader, or `None` when nobody campaigns.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, ElectionError> {
        let (leader, _) = protocol::leader(&*self.client, self.key_prefix.as_bytes()).await?;
        Ok(leader.map(LeaderInfo::from_kv))
    }

    /// Follow the leader: yields the current leader at once, then each change of leader key or
    /// value. `None` = nobody campaigns at the moment.
    pub async fn observe(&self) -> Result<Observer, ElectionError> {
        Observer::start(self.client.clone(), self.key_prefix.as_bytes().to_vec()).await
    }
}

/// Flag `lost` when the leader key is deleted (or recreated) or the session is lost.
async fn monitor_leadership(
    client: Arc<dyn KvClient>,
    key: Vec<u8>,
    create_revision: i64,
    revision: i64,
    session_lost: watch::Receiver<bool>,
    lost: watch::Sender<bool>,
) {
    let key_gone = async {
        let mut from = revision + 1;
        loop {
            match client
                .watch(WatchSpec::key(key.clone()).from_revision(from))
                .await
            {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(batch) => {
                                if batch.events.iter().any(|e| {
                                    e.kind == EventType::Delete
                                        || e.kv.create_revision != create_revision
                                }) {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "election: leader key watch ended");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "election: cannot watch the leader key");
                }
            }
            // The watch ended (compacted, canceled, unreachable): decide from the key itself.
            match client
                .range(RangeRequest {
                    key: key.clone(),
                    ..RangeRequest::default()
                })
                .await
            {
                Ok(r) => match r.body.kvs.first() {
                    Some(kv) if kv.create_revision == create_revision => from = r.revision + 1,
                    _ => return,
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    tokio::select! {
        _ = key_gone => tracing::warn!(key = %String::from_utf8_lossy(&key), "election: leader key gone"),
        _ = wait_lost(session_lost) => tracing::warn!("election: session lost"),
        _ = lost.closed() => return,
    }
    let _ = lost.send(true);
}

/// Won leadership. Lost when the key is deleted (resign, revoke) or the session is lost.
pub struct Leadership {
    client: Arc<dyn KvClient>,
    key: Vec<u8>,
    create_revision: i64,
    lease: i64,
    value: Vec<u8>,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("create_revision", &self.create_revision)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The leader key, `<prefix>/<lease hex>`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The leader key's create revision: the fencing token.
    pub fn create_revision(&self) -> i64 {
        self.create_revision
    }

    /// The session lease the key is attached to.
    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    /// The value last campaigned or proclaimed with.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The compare that holds only while this leadership lasts (`CREATE(key) == create_revision`);
    /// add it to every write the leader must not make once deposed.
    pub fn fence(&self) -> Compare {
        create_equals(&self.key, self.create_revision)
    }

    /// True once leadership is known lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Resolves when leadership is lost.
    pub async fn lost(&self) {
        wait_lost(self.lost.clone()).await
    }

    /// A receiver that turns `true` (or closes) when leadership is lost.
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Publish a new value without losing the place; fails with `NotLeader` when deposed.
    pub async fn proclaim(&mut self, value: impl Into<Vec<u8>>) -> Result<(), ElectionError> {
        let value = value.into();
        protocol::proclaim(
            &*self.client,
            &self.key,
            self.create_revision,
            self.lease,
            &value,
        )
        .await?;
        self.value = value;
        Ok(())
    }

    /// Give up leadership: delete the key if it is still ours. The session stays usable.
    pub async fn resign(self) -> Result<(), ElectionError> {
        self.task.abort();
        protocol::resign(&*self.client, &self.key, self.create_revision).await?;
        Ok(())
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}
