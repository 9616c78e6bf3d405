//! Leader election in the layout of etcd's Go `concurrency` package, so `etcdctl elect` and the
//! store's Election service interoperate with it.
//!
//! A [`Session`] is a lease kept alive. A candidate's key is `<prefix>/<session lease id in
//! lowercase hex>`, put with `Txn(if CREATE(key) == 0 then Put(key, value, lease) else Get(key))`;
//! its create revision is its place in the queue. The leader is the key with the smallest create
//! revision; a candidate waits for the deletion of each key created before its own. Proclaim and
//! resign are Txns guarded by `CREATE(key) == my create revision`.
//!
//! Fencing: a leader guards its writes with [`Leadership::fence`] (its key still exists with its
//! create revision), so a deposed leader's late writes fail instead of overwriting its successor's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::client::keepalive::wait_lost;
use crate::client::{
    prefix_range_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventType,
    KeyValue, KvClient, KvError, LeaseKeeper, PutRequest, RangeRequest, RequestOp, ResponseOp,
    SortOrder, SortTarget, TxnRequest, WatchSpec,
};

/// The master's election prefix.
pub const DEFAULT_PREFIX: &str = "/crawler/election";
/// The master's session TTL.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(5);

/// The value a master campaigns with: `master<id>-<advertised grpc address>`.
pub fn master_value(id: u64, grpc_addr: &str) -> String {
    format!("master{id}-{grpc_addr}")
}

/// Why an election call failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The store call failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The session's lease is gone; start a new session.
    #[error("election: session expired")]
    SessionExpired,
    /// The candidate's key was deleted or replaced: this leadership is over.
    #[error("election: not leader")]
    NotLeader,
}

/// A lease kept alive for as long as the session lives (etcd's `concurrency.Session`).
#[derive(Debug)]
pub struct Session {
    keeper: LeaseKeeper,
}

impl Session {
    /// Grant a lease of `ttl` (rounded up to whole seconds) and keep it alive.
    pub async fn new(client: Arc<dyn KvClient>, ttl: Duration) -> Result<Self, ElectionError> {
        let ttl_s = (ttl.as_secs_f64().ceil() as i64).max(1);
        Ok(Self {
            keeper: LeaseKeeper::grant(client, ttl_s).await?,
        })
    }

    /// The session's lease id.
    pub fn lease_id(&self) -> i64 {
        self.keeper.id()
    }

    /// True once the lease is known or presumed expired.
    pub fn is_lost(&self) -> bool {
        self.keeper.is_lost()
    }

    /// Resolves when the session's lease is lost.
    pub async fn lost(&self) {
        self.keeper.lost().await
    }

    /// A receiver that turns `true` (or closes) when the session is lost.
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.keeper.lost_signal()
    }

    /// End the session: revoke its lease, deleting every key it holds (candidacies included).
    pub async fn close(self) -> Result<(), ElectionError> {
        Ok(self.keeper.revoke().await?)
    }
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
    fn from_kv(kv: KeyValue) -> Self {
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

fn create_equals(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(rev),
        key: key.to_vec(),
        range_end: Vec::new(),
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
        format!("{}{:x}", self.key_prefix, session.lease_id())
    }

    /// Become leader with `value`: blocks until every earlier candidate is gone.
    ///
    /// Fails with `SessionExpired` if the session is lost meanwhile. Dropping the future before it
    /// resolves withdraws the candidacy (its key is deleted in the background).
    pub async fn campaign(
        &self,
        session: &Session,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership, ElectionError> {
        if session.is_lost() {
            return Err(ElectionError::SessionExpired);
        }
        let value = value.into();
        let key = self.candidate_key(session).into_bytes();
        let lease = session.lease_id();
        let txn = TxnRequest {
            compare: vec![create_equals(&key, 0)],
            success: vec![RequestOp::Put(PutRequest {
                key: key.clone(),
                value: value.clone(),
                lease,
                ..PutRequest::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })],
        };
        let reply = self.client.txn(txn).await?;
        let mut my_rev = reply.revision;
        let mut existing_value = None;
        if !reply.body.succeeded {
            // Already a candidate with this session: keep our place in the queue.
            let kv = match reply.body.responses.into_iter().next() {
                Some(ResponseOp::Range(r)) => r.kvs.into_iter().next(),
                _ => None,
            };
            let Some(kv) = kv else {
                // Deleted between the compare and now; cannot happen in one txn, but be safe.
                return Err(ElectionError::NotLeader);
            };
            my_rev = kv.create_revision;
            existing_value = Some(kv.value);
        }
        let mut guard = CandidacyGuard {
            client: Some(self.client.clone()),
            key: key.clone(),
            rev: my_rev,
        };
        if existing_value.is_some_and(|v| v != value) {
            self.proclaim_at(&key, my_rev, lease, &value).await?;
        }
        let lost = session.lost_signal();
        tokio::select! {
            r = self.wait_predecessors(my_rev) => r?,
            _ = wait_lost(lost.clone()) => return Err(ElectionError::SessionExpired),
        }
        // The key may have gone with the session while we waited: check we still hold it.
        let still = self
            .client
            .range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })
            .await?;
        match still.body.kvs.first() {
            Some(kv) if kv.create_revision == my_rev => {}
            _ => return Err(ElectionError::NotLeader),
        }
        guard.disarm();
        let (lost_tx, lost_rx) = watch::channel(false);
        let task = tokio::spawn(monitor_leadership(
            self.client.clone(),
            key.clone(),
            my_rev,
            still.revision,
            lost,
            lost_tx,
        ));
        Ok(Leadership {
            client: self.client.clone(),
            key,
            create_revision: my_rev,
            lease,
            value,
            lost: lost_rx,
            task,
        })
    }

    /// Wait until no key under the prefix has a create revision below `my_rev`.
    async fn wait_predecessors(&self, my_rev: i64) -> Result<(), ElectionError> {
        let prefix = self.key_prefix.as_bytes().to_vec();
        let range_end = prefix_range_end(&prefix);
        loop {
            // The last-created key before ours (etcd: WithLastCreate + WithMaxCreateRev).
            let r = self
                .client
                .range(RangeRequest {
                    key: prefix.clone(),
                    range_end: range_end.clone(),
                    limit: 1,
                    sort_order: SortOrder::Descend,
                    sort_target: SortTarget::Create,
                    max_create_revision: my_rev - 1,
                    ..RangeRequest::default()
                })
                .await?;
            let Some(pred) = r.body.kvs.into_iter().next() else {
                return Ok(());
            };
            self.wait_delete(&pred.key, r.revision).await?;
        }
    }

    /// Wait for the deletion of `key`, which existed at `revision`.
    async fn wait_delete(&self, key: &[u8], revision: i64) -> Result<(), ElectionError> {
        let mut from = revision + 1;
        loop {
            let mut stream = self
                .client
                .watch(WatchSpec::key(key.to_vec()).from_revision(from))
                .await?;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(batch) => {
                        if batch.events.iter().any(|e| e.kind == EventType::Delete) {
                            return Ok(());
                        }
                    }
                    Err(KvError::Compacted { .. }) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            // The watch ended (compacted): look again whether the key still exists.
            let r = self
                .client
                .range(RangeRequest {
                    key: key.to_vec(),
                    ..RangeRequest::default()
                })
                .await?;
            if r.body.kvs.is_empty() {
                return Ok(());
            }
            from = r.revision + 1;
        }
    }

    async fn proclaim_at(
        &self,
        key: &[u8],
        rev: i64,
        lease: i64,
        value: &[u8],
    ) -> Result<(), ElectionError> {
        proclaim(&*self.client, key, rev, lease, value).await
    }

    /// The current leader, or `None` when nobody campaigns.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, ElectionError> {
        Ok(self.leader_with_revision().await?.0)
    }

    async fn leader_with_revision(&self) -> Result<(Option<LeaderInfo>, i64), ElectionError> {
        let prefix = self.key_prefix.as_bytes().to_vec();
        let range_end = prefix_range_end(&prefix);
        let r = self
            .client
            .range(RangeRequest {
                key: prefix,
                range_end,
                limit: 1,
                sort_order: SortOrder::Ascend,
                sort_target: SortTarget::Create,
                ..RangeRequest::default()
            })
            .await?;
        Ok((
            r.body.kvs.into_iter().next().map(LeaderInfo::from_kv),
            r.revision,
        ))
    }

    /// Follow the leader: yields the current leader at once, then each change of leader key or
    /// value. `None` = nobody campaigns at the moment.
    pub async fn observe(&self) -> Result<Observer, ElectionError> {
        let (first, revision) = self.leader_with_revision().await?;
        let prefix = self.key_prefix.as_bytes().to_vec();
        let stream = self
            .client
            .watch(WatchSpec::prefix(prefix).from_revision(revision + 1))
            .await?;
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.try_send(Ok(first.clone()));
        let task = tokio::spawn(observe_loop(self.clone(), stream, first, tx));
        Ok(Observer { rx, task })
    }
}

async fn proclaim(
    client: &dyn KvClient,
    key: &[u8],
    rev: i64,
    lease: i64,
    value: &[u8],
) -> Result<(), ElectionError> {
    let txn = TxnRequest {
        compare: vec![create_equals(key, rev)],
        success: vec![RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    };
    if client.txn(txn).await?.body.succeeded {
        Ok(())
    } else {
        Err(ElectionError::NotLeader)
    }
}

/// Deletes a candidate's key if `campaign` is abandoned before it wins.
struct CandidacyGuard {
    client: Option<Arc<dyn KvClient>>,
    key: Vec<u8>,
    rev: i64,
}

impl CandidacyGuard {
    fn disarm(&mut self) {
        self.client = None;
    }
}

impl Drop for CandidacyGuard {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let rev = self.rev;
        handle.spawn(async move {
            if let Err(e) = resign(&*client, &key, rev).await {
                tracing::warn!(error = %e, "election: withdrawing an abandoned candidacy failed");
            }
        });
    }
}

async fn resign(client: &dyn KvClient, key: &[u8], rev: i64) -> Result<(), ElectionError> {
    let txn = TxnRequest {
        compare: vec![create_equals(key, rev)],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        })],
        failure: Vec::new(),
    };
    client.txn(txn).await?;
    Ok(())
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
        proclaim(
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
        resign(&*self.client, &self.key, self.create_revision).await
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream of leader changes from [`Election::observe`].
pub struct Observer {
    rx: mpsc::Receiver<Result<Option<LeaderInfo>, ElectionError>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

impl Observer {
    /// The next leader state; `None` once observation ended (after an `Err`).
    pub async fn next(&mut self) -> Option<Result<Option<LeaderInfo>, ElectionError>> {
        self.rx.recv().await
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

async fn observe_loop(
    election: Election,
    mut stream: crate::client::WatchStream,
    mut current: Option<LeaderInfo>,
    tx: mpsc::Sender<Result<Option<LeaderInfo>, ElectionError>>,
) {
    loop {
        let batch = match stream.next().await {
            Some(Ok(b)) => b,
            Some(Err(KvError::Compacted { .. })) | None => {
                // Start over from the current state.
                match election.leader_with_revision().await {
                    Ok((leader, rev)) => {
                        if !same_leader(&leader, &current) {
                            current = leader.clone();
                            if tx.send(Ok(leader)).await.is_err() {
                                return;
                            }
                        }
                        match election
                            .client
                            .watch(
                                WatchSpec::prefix(election.key_prefix.as_bytes().to_vec())
                                    .from_revision(rev + 1),
                            )
                            .await
                        {
                            Ok(s) => stream = s,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
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
        // Only changes to the leader key, or any change while there is no leader, can change the
        // answer; then ask the store which key leads now.
        let relevant = batch.events.iter().any(|e| match &current {
            Some(l) => e.kv.key == l.key,
            None => true,
        });
        if !relevant {
            continue;
        }
        let leader = match election.leader().await {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if !same_leader(&leader, &current) {
            current = leader.clone();
            if tx.send(Ok(leader)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_value_format() {
        assert_eq!(master_value(2, "10.0.0.1:9091"), "master2-10.0.0.1:9091");
    }
}
