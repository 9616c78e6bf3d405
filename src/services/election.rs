//! etcd's Election service (`v3electionpb.Election`), with the key layout of etcd's Go
//! `concurrency` package so that server-side and client-side elections interoperate: a candidate
//! is the key `<name>/<lease id in lowercase hex>`, the leader is the key under `<name>/` with the
//! smallest create revision, and every guarded operation compares that create revision.
//!
//! Waiting (Campaign, Lock, Observe) is driven by the member's watch hub, never by polling.

use std::pin::Pin;

use crawler_proto::etcdserverpb::ResponseHeader;
use crawler_proto::v3electionpb as epb;
use crawler_proto::v3electionpb::election_server::Election;
use crawler_storage::{
    Command, CommandResult, Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventType,
    KeyValue, PutRequest, RangeRequest, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest,
    TxnResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::server::grpc::context::{unexpected_result, ApiContext};
use crate::server::grpc::{convert, error};
use crate::server::watch_hub::{Delivery, WatchSpec, Watcher};

/// TTL of the lease etcd's server grants when a Campaign or Lock names no lease (lease 0): the
/// `concurrency` package's default session TTL.
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// etcd's `concurrency.ErrElectionNotLeader`.
pub const ERR_NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`.
pub const ERR_NO_LEADER: &str = "election: no leader";
/// etcd's `v3election.ErrMissingLeaderKey`.
pub const ERR_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
/// The candidate's key vanished (its lease expired or was revoked) while it waited for its turn.
pub const ERR_ELECTION_SESSION_EXPIRED: &str = "election: session is expired";

/// Observe responses buffered before the stream's task waits for the client.
const OBSERVE_BUFFER: usize = 16;

type ObserveStream =
    Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send + 'static>>;

/// The Election service of one member.
#[derive(Clone)]
pub struct ElectionService {
    ctx: ApiContext,
}

impl ElectionService {
    /// An Election service over `ctx`.
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let r = request.into_inner();
        let ctx = &self.ctx;
        let lease = ensure_lease(ctx, r.lease).await?;
        let mut prefix = r.name.clone();
        prefix.push(b'/');
        let key = candidate_key(&r.name, lease);

        // Txn(if CREATE(key) == 0 then Put(key, value, lease) else Get(key)).
        let (rev, resp) = txn(
            ctx,
            TxnRequest {
                compare: vec![create_equals(&key, 0)],
                success: vec![RequestOp::Put(PutRequest {
                    key: key.clone(),
                    value: r.value.clone(),
                    lease,
                    ..Default::default()
                })],
                failure: vec![RequestOp::Range(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })],
            },
        )
        .await?;
        let mut my_rev = rev;
        // From here on a failure or a vanished client withdraws the candidacy, as etcd does.
        let mut guard = Withdraw::new(ctx, key.clone(), my_rev);
        if !resp.succeeded {
            let existing = first_range_kv(&resp)
                .ok_or_else(|| Status::unknown(ERR_ELECTION_SESSION_EXPIRED))?;
            my_rev = existing.create_revision;
            guard.rev = my_rev;
            if existing.value != r.value {
                // Same lease campaigning again with a new value: proclaim it.
                proclaim(ctx, &key, my_rev, lease, r.value.clone()).await?;
            }
        }

        wait_turn(ctx, &prefix, &key, my_rev, ERR_ELECTION_SESSION_EXPIRED).await?;
        guard.disarm();
        Ok(Response::new(epb::CampaignResponse {
            header: Some(ctx.header_with_revision(rev)),
            leader: Some(epb::LeaderKey {
                name: r.name,
                key,
                rev: my_rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let r = request.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
        let rev = proclaim(&self.ctx, &leader.key, leader.rev, leader.lease, r.value).await?;
        Ok(Response::new(epb::ProclaimResponse {
            header: Some(self.ctx.header_with_revision(rev)),
        }))
    }

    async fn leader(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let r = request.into_inner();
        let mut prefix = r.name;
        prefix.push(b'/');
        self.ctx.read_guard(false).await?;
        let header = self.ctx.header();
        match first_created(&self.ctx, &prefix)? {
            Some(kv) => Ok(Response::new(epb::LeaderResponse {
                header: Some(header),
                kv: Some(convert::kv_to_proto(kv)),
            })),
            None => Err(Status::unknown(ERR_NO_LEADER)),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let r = request.into_inner();
        let mut prefix = r.name;
        prefix.push(b'/');
        // Register before the first read so that no change after it is missed.
        let watcher = watch_prefix(&self.ctx, &prefix)?;
        self.ctx.read_guard(false).await?;
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut obs = Observer {
                ctx,
                prefix,
                tx,
                current: None,
            };
            if let Err(status) = obs.run(watcher).await {
                let _ = obs.tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let r = request.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
        // etcd answers success whether or not the compare held.
        let rev = delete_if_created(&self.ctx, &leader.key, leader.rev).await?;
        Ok(Response::new(epb::ResignResponse {
            header: Some(self.ctx.header_with_revision(rev)),
        }))
    }
}

/// Streams the leader of one election: the current one first, then every new value of the
/// leader key and every new leader.
struct Observer {
    ctx: ApiContext,
    prefix: Vec<u8>,
    tx: mpsc::Sender<Result<epb::LeaderResponse, Status>>,
    /// The leader version last sent (dedups events already reflected by a store read).
    current: Option<KeyValue>,
}

impl Observer {
    /// Runs until the client goes away (`Ok`) or the watch breaks (`Err`).
    async fn run(&mut self, mut watcher: Watcher) -> Result<(), Status> {
        if !self.refresh().await {
            return Ok(());
        }
        loop {
            let delivery = tokio::select! {
                d = watcher.rx.recv() => d,
                _ = self.tx.closed() => return Ok(()),
            };
            let events = match delivery {
                Some(Delivery::Events(events)) => events,
                Some(Delivery::Compacted { .. }) => {
                    // Fell behind a compaction: start over from the current state.
                    watcher = watch_prefix(&self.ctx, &self.prefix)?;
                    if !self.refresh().await {
                        return Ok(());
                    }
                    continue;
                }
                None => return Err(error::stopped()),
            };
            for ev in events {
                let on_leader = self
                    .current
                    .as_ref()
                    .map(|cur| cur.key == ev.kv.key && ev.kv.mod_revision > cur.mod_revision);
                let alive = match (on_leader, ev.kind) {
                    // No leader yet: the first candidate may just have arrived.
                    (None, EventType::Put) => self.refresh().await,
                    // The leader proclaimed a new value.
                    (Some(true), EventType::Put) => {
                        let header = self.ctx.header_with_revision(ev.kv.mod_revision);
                        self.send(ev.kv, header).await
                    }
                    // The leader left: the next candidate (if any) leads now.
                    (Some(true), EventType::Delete) => {
                        self.current = None;
                        self.refresh().await
                    }
                    _ => true,
                };
                if !alive {
                    return Ok(());
                }
            }
        }
    }

    /// Sends the store's current leader unless it was already sent; false when the client left.
    async fn refresh(&mut self) -> bool {
        let header = self.ctx.header();
        match first_created(&self.ctx, &self.prefix) {
            Ok(Some(kv)) => {
                let seen = self
                    .current
                    .as_ref()
                    .is_some_and(|cur| cur.key == kv.key && cur.mod_revision >= kv.mod_revision);
                if seen {
                    true
                } else {
                    self.send(kv, header).await
                }
            }
            Ok(None) => {
                self.current = None;
                true
            }
            Err(status) => {
                let _ = self.tx.send(Err(status)).await;
                false
            }
        }
    }

    async fn send(&mut self, kv: KeyValue, header: ResponseHeader) -> bool {
        self.current = Some(kv.clone());
        let resp = epb::LeaderResponse {
            header: Some(header),
            kv: Some(convert::kv_to_proto(kv)),
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }
}

/// `<name>/<lease in lowercase hex>`, formatted like Go's `%x` of an int64.
pub fn candidate_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    key.extend_from_slice(hex.as_bytes());
    key
}

/// etcd's `GetPrefixRangeEnd`: the smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    // All 0xff (or empty): every key from `prefix` on.
    vec![0]
}

/// The lease a Campaign or Lock runs under: the given one, or (lease 0) a fresh lease with the
/// default session TTL, like etcd's server-side session.
pub(crate) async fn ensure_lease(ctx: &ApiContext, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let (id, _) = ctx
        .lessor
        .grant(0, DEFAULT_SESSION_TTL)
        .await
        .map_err(|e| error::status_from_lease(&e))?;
    Ok(id)
}

/// `CREATE(key) == rev`.
pub(crate) fn create_equals(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(rev),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

/// Runs a txn through raft; returns the revision after it and its response.
pub(crate) async fn txn(ctx: &ApiContext, t: TxnRequest) -> Result<(i64, TxnResponse), Status> {
    match ctx.write(Command::Txn(t)).await? {
        (rev, CommandResult::Txn(resp)) => Ok((rev, resp)),
        (_, other) => Err(unexpected_result("txn", &other)),
    }
}

/// The first kv of the first (range) response of a txn branch.
pub(crate) fn first_range_kv(resp: &TxnResponse) -> Option<KeyValue> {
    match resp.responses.first() {
        Some(ResponseOp::Range(r)) => r.kvs.first().cloned(),
        _ => None,
    }
}

/// Txn(if CREATE(key) == rev then Put(key, value, lease)); "election: not leader" otherwise.
async fn proclaim(
    ctx: &ApiContext,
    key: &[u8],
    rev: i64,
    lease: i64,
    value: Vec<u8>,
) -> Result<i64, Status> {
    let (rev, resp) = txn(
        ctx,
        TxnRequest {
            compare: vec![create_equals(key, rev)],
            success: vec![RequestOp::Put(PutRequest {
                key: key.to_vec(),
                value,
                lease,
                ..Default::default()
            })],
            failure: vec![],
        },
    )
    .await?;
    if !resp.succeeded {
        return Err(Status::unknown(ERR_NOT_LEADER));
    }
    Ok(rev)
}

/// Txn(if CREATE(key) == rev then Delete(key)); returns the revision after it.
pub(crate) async fn delete_if_created(
    ctx: &ApiContext,
    key: &[u8],
    rev: i64,
) -> Result<i64, Status> {
    let (rev, _) = txn(
        ctx,
        TxnRequest {
            compare: vec![create_equals(key, rev)],
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })],
            failure: vec![],
        },
    )
    .await?;
    Ok(rev)
}

/// Reads the local store (the caller made it current): the key under `prefix` with the smallest
/// create revision.
pub(crate) fn first_created(ctx: &ApiContext, prefix: &[u8]) -> Result<Option<KeyValue>, Status> {
    let resp = ctx
        .raft
        .store()
        .range(&RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            ..Default::default()
        })
        .map_err(|e| error::status_from_apply(&e))?;
    Ok(resp.kvs.into_iter().next())
}

/// A watcher of every change under `prefix`, from the next revision on.
fn watch_prefix(ctx: &ApiContext, prefix: &[u8]) -> Result<Watcher, Status> {
    ctx.hub
        .watch(WatchSpec {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision: 0,
            ..Default::default()
        })
        .map_err(|e| error::status_from_apply(&e))
}

/// Waits until no key under `prefix` has a create revision below `my_rev` (every earlier
/// candidate is gone). Fails with `expired` when `my_key` (created at `my_rev`) disappears first,
/// i.e. the candidate's lease expired or was revoked.
pub(crate) async fn wait_turn(
    ctx: &ApiContext,
    prefix: &[u8],
    my_key: &[u8],
    my_rev: i64,
    expired: &str,
) -> Result<(), Status> {
    // Register before reading: a delete after the read is then always delivered.
    let mut watcher = watch_prefix(ctx, prefix)?;
    // The candidate's own write may have been applied on the leader only: catch up first.
    ctx.read_guard(false).await?;
    loop {
        if !still_mine(ctx, my_key, my_rev)? {
            return Err(Status::unknown(expired.to_string()));
        }
        if !has_predecessor(ctx, prefix, my_rev)? {
            return Ok(());
        }
        // Only a delete can end the wait; puts cannot add keys older than ours.
        loop {
            match watcher.rx.recv().await {
                Some(Delivery::Events(events)) => {
                    if events.iter().any(|e| e.kind == EventType::Delete) {
                        break;
                    }
                }
                Some(Delivery::Compacted { .. }) => {
                    watcher = watch_prefix(ctx, prefix)?;
                    break;
                }
                None => return Err(error::stopped()),
            }
        }
    }
}

/// Whether `key` still exists with create revision `rev`.
fn still_mine(ctx: &ApiContext, key: &[u8], rev: i64) -> Result<bool, Status> {
    let resp = ctx
        .raft
        .store()
        .range(&RangeRequest {
            key: key.to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .map_err(|e| error::status_from_apply(&e))?;
    Ok(resp.kvs.first().is_some_and(|kv| kv.create_revision == rev))
}

/// Whether some key under `prefix` was created before `rev`.
fn has_predecessor(ctx: &ApiContext, prefix: &[u8], rev: i64) -> Result<bool, Status> {
    if rev <= 1 {
        return Ok(false);
    }
    let resp = ctx
        .raft
        .store()
        .range(&RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            keys_only: true,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Create,
            max_create_revision: rev - 1,
            ..Default::default()
        })
        .map_err(|e| error::status_from_apply(&e))?;
    // Checked by hand too, in case a filter is ignored for keys-only reads.
    Ok(resp.kvs.iter().any(|kv| kv.create_revision < rev))
}

/// Withdraws a candidacy (guarded delete of its key) when dropped armed: the request failed or
/// the client went away while waiting, as etcd resigns/unlocks on a cancelled wait.
pub(crate) struct Withdraw {
    ctx: ApiContext,
    key: Vec<u8>,
    /// Create revision of the candidate key.
    pub(crate) rev: i64,
    armed: bool,
}

impl Withdraw {
    /// An armed guard for `key` created at `rev`.
    pub fn new(ctx: &ApiContext, key: Vec<u8>, rev: i64) -> Self {
        Self {
            ctx: ctx.clone(),
            key,
            rev,
            armed: true,
        }
    }

    /// The candidacy succeeded: keep the key.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ctx = self.ctx.clone();
        let key = std::mem::take(&mut self.key);
        let rev = self.rev;
        handle.spawn(async move {
            if let Err(e) = delete_if_created(&ctx, &key, rev).await {
                tracing::warn!(error = %e, "could not withdraw an abandoned candidacy");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcd_layout() {
        assert_eq!(candidate_key(b"e", 0x694d7a1b2c), b"e/694d7a1b2c".to_vec());
        assert_eq!(candidate_key(b"e", -1), b"e/-1".to_vec());
        assert_eq!(prefix_end(b"e/"), b"e0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
