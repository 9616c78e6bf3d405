//! [`KvClient`] on the store member running in this process: no network hop; protobuf only to
//! measure a write against the request size limit.
//!
//! Same semantics as the remote client against our gRPC API, because it goes through the same
//! member handles the gRPC services use: writes are raft commands (`ApiContext::write`, forwarded
//! to the leader when this member follows), reads are linearizable through a read barrier
//! (`ApiContext::read_guard`) unless `serializable`, watches are registered with the member's
//! watch hub, leases go through the lessor (which forwards clock questions to the leader).
//! Requests are validated by the same checks the gRPC layer makes (`api::validate`), so an
//! empty key or a duplicate key in a txn fails here exactly as it fails remotely.

use std::time::Duration;

use crawler_storage::{Command, CommandResult};
use tokio::sync::mpsc;
use tonic::Status;

use super::api::{
    BoxFuture, DeleteRangeRequest, DeleteRangeResponse, KvClient, KvError, KvResult, LeaseGrant,
    LeaseKeepAlive, LeaseTimeToLive, PutRequest, PutResponse, RangeRequest, RangeResponse, Reply,
    RequestOp, ResponseOp, TxnRequest, TxnResponse, WatchBatch, WatchItem, WatchSpec, WatchStream,
};
use super::remote::map_status;
use crate::server::grpc::{self as api, convert, validate, ApiContext};
use crate::server::lessor::LeaseError;
use crate::server::member::Member;
use crate::server::watch_hub::{self, Delivery};

/// Batches buffered between the hub receiver task and the consumer of a watch.
const WATCH_BUFFER: usize = 64;
/// Name used for this "endpoint" in error texts.
const LOCAL: &str = "local member";
/// etcd's text for a watch over an empty key range.
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's compacted text, the cancel reason of a watch with a negative start revision.
const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// An in-process client of one store member. Cheap to clone.
#[derive(Clone)]
pub struct LocalClient {
    ctx: ApiContext,
    progress_interval: Duration,
}

impl std::fmt::Debug for LocalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClient")
            .field("member", &format_args!("{:x}", self.ctx.raft.id()))
            .finish()
    }
}

fn err(status: Status) -> KvError {
    map_status(&status, LOCAL)
}

fn lease_err(e: &LeaseError) -> KvError {
    err(api::error::status_from_lease(e))
}

fn unexpected(what: &str, got: &CommandResult) -> KvError {
    err(api::context::unexpected_result(what, got))
}

impl LocalClient {
    /// A client on a member's API context (`Member::context()`).
    pub fn new(ctx: ApiContext) -> Self {
        // Same knob as the gRPC watch service, so tests can shorten both at once.
        let progress_interval = std::env::var(api::watch::PROGRESS_NOTIFY_INTERVAL_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(api::watch::DEFAULT_PROGRESS_NOTIFY_INTERVAL)
            .max(Duration::from_millis(100));
        Self {
            ctx,
            progress_interval,
        }
    }

    /// A client on `member`.
    pub fn from_member(member: &Member) -> Self {
        Self::new(member.context().clone())
    }

    /// Interval of progress notifications for watches that ask for them (default etcd's 10 min).
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Read-only txn evaluated on the local store after the read guard; returns the revision
    /// it was read at (consistent with the data, unlike a later header).
    async fn read_txn(&self, txn: &TxnRequest, serializable: bool) -> KvResult<(i64, TxnResponse)> {
        self.ctx.read_guard(serializable).await.map_err(err)?;
        self.ctx
            .raft
            .store()
            .txn_read_only(txn)
            .map_err(|e| err(api::error::status_from_apply(&e)))
    }
}

impl KvClient for LocalClient {
    fn range(&self, req: RangeRequest) -> BoxFuture<'_, KvResult<Reply<RangeResponse>>> {
        Box::pin(async move {
            validate::check_range(&req).map_err(err)?;
            let serializable = req.serializable;
            // One range inside a read-only txn: the store reports the revision it read at.
            let txn = TxnRequest {
                compare: Vec::new(),
                success: vec![RequestOp::Range(req)],
                failure: Vec::new(),
            };
            let (revision, resp) = self.read_txn(&txn, serializable).await?;
            match resp.responses.into_iter().next() {
                Some(ResponseOp::Range(body)) => Ok(Reply { revision, body }),
                other => Err(KvError::Other {
                    code: "Internal".into(),
                    message: format!("range answered with {other:?}"),
                }),
            }
        })
    }

    fn put(&self, req: PutRequest) -> BoxFuture<'_, KvResult<Reply<PutResponse>>> {
        Box::pin(async move {
            validate::check_put(&req).map_err(err)?;
            // The size limit is the encoded gRPC request's, as for a remote client.
            let size = convert::put_to_proto(req.clone());
            self.ctx.check_request_size(&size).map_err(err)?;
            let (revision, result) = self.ctx.write(Command::Put(req)).await.map_err(err)?;
            match result {
                CommandResult::Put(body) => Ok(Reply { revision, body }),
                other => Err(unexpected("put", &other)),
            }
        })
    }

    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> BoxFuture<'_, KvResult<Reply<DeleteRangeResponse>>> {
        Box::pin(async move {
            validate::check_delete(&req).map_err(err)?;
            let size = convert::delete_to_proto(req.clone());
            self.ctx.check_request_size(&size).map_err(err)?;
            let (revision, result) = self
                .ctx
                .write(Command::DeleteRange(req))
                .await
                .map_err(err)?;
            match result {
                CommandResult::DeleteRange(body) => Ok(Reply { revision, body }),
                other => Err(unexpected("delete range", &other)),
            }
        })
    }

    fn txn(&self, req: TxnRequest) -> BoxFuture<'_, KvResult<Reply<TxnResponse>>> {
        Box::pin(async move {
            validate::check_txn(&req, self.ctx.limits.max_txn_ops).map_err(err)?;
            validate::check_intervals(&req.success).map_err(err)?;
            validate::check_intervals(&req.failure).map_err(err)?;
            let size = convert::txn_to_proto(req.clone());
            self.ctx.check_request_size(&size).map_err(err)?;
            if req.is_read_only() {
                // Like the gRPC service (and etcd): a read-only txn never enters the log.
                let serializable = validate::txn_is_serializable(&req);
                let (revision, body) = self.read_txn(&req, serializable).await?;
                return Ok(Reply { revision, body });
            }
            let (revision, result) = self.ctx.write(Command::Txn(req)).await.map_err(err)?;
            match result {
                CommandResult::Txn(body) => Ok(Reply { revision, body }),
                other => Err(unexpected("txn", &other)),
            }
        })
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, KvResult<Reply<()>>> {
        Box::pin(async move {
            let (revision, result) = self
                .ctx
                .write(Command::Compact { revision })
                .await
                .map_err(err)?;
            match result {
                CommandResult::Compact => Ok(Reply { revision, body: () }),
                other => Err(unexpected("compact", &other)),
            }
        })
    }

    fn watch(&self, spec: WatchSpec) -> BoxFuture<'_, KvResult<WatchStream>> {
        Box::pin(async move {
            let mut key = spec.key.clone();
            if key.is_empty() {
                // As the gRPC service: "\0" is the smallest key.
                key = vec![0];
            }
            if spec.start_revision < 0 {
                // The gRPC service rejects it at creation with etcd's compacted text.
                return Err(KvError::WatchCanceled(ERR_COMPACTED.into()));
            }
            let from_key = spec.range_end == [0];
            if !spec.range_end.is_empty() && !from_key && key >= spec.range_end {
                return Err(KvError::WatchCanceled(ERR_EMPTY_RANGE.into()));
            }
            let hub_spec = watch_hub::WatchSpec {
                key,
                range_end: spec.range_end.clone(),
                start_revision: spec.start_revision,
                prev_kv: spec.prev_kv,
                no_put: spec.no_put,
                no_delete: spec.no_delete,
            };
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let watcher = match self.ctx.hub.watch(hub_spec) {
                Ok(w) => w,
                Err(_) => {
                    // As over gRPC (and etcd): the watch is created, then canceled with the
                    // compaction point, so the error is the stream's first item.
                    let compact_revision = self.ctx.raft.store().compact_revision();
                    let _ = tx.try_send(Err(KvError::Compacted { compact_revision }));
                    let current = self.ctx.raft.store().current_revision();
                    return Ok(WatchStream::new(rx, current));
                }
            };
            // Everything after this revision reaches the watcher (as the gRPC service answers).
            let created_revision = if spec.start_revision == 0 {
                self.ctx.hub.notified_revision()
            } else {
                self.ctx.raft.store().current_revision()
            };
            let progress = spec.progress_notify.then_some(self.progress_interval);
            tokio::spawn(pump(self.ctx.clone(), watcher, tx, progress));
            Ok(WatchStream::new(rx, created_revision))
        })
    }

    fn lease_grant(&self, ttl: i64, id: i64) -> BoxFuture<'_, KvResult<Reply<LeaseGrant>>> {
        Box::pin(async move {
            let (id, ttl) = self
                .ctx
                .lessor
                .grant(id, ttl)
                .await
                .map_err(|e| lease_err(&e))?;
            Ok(Reply {
                revision: self.ctx.raft.store().current_revision(),
                body: LeaseGrant { id, ttl },
            })
        })
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, KvResult<Reply<()>>> {
        Box::pin(async move {
            self.ctx
                .lessor
                .revoke(id)
                .await
                .map_err(|e| lease_err(&e))?;
            Ok(Reply {
                revision: self.ctx.raft.store().current_revision(),
                body: (),
            })
        })
    }

    fn lease_keep_alive_once(&self, id: i64) -> BoxFuture<'_, KvResult<Reply<LeaseKeepAlive>>> {
        Box::pin(async move {
            let revision = self.ctx.raft.store().current_revision();
            match self.ctx.lessor.keep_alive(id).await {
                Ok(ttl) if ttl > 0 => Ok(Reply {
                    revision,
                    body: LeaseKeepAlive { id, ttl },
                }),
                // TTL 0 is how etcd answers a keepalive of an unknown lease.
                Ok(_) | Err(LeaseError::NotFound) => Err(lease_err(&LeaseError::NotFound)),
                Err(e) => Err(lease_err(&e)),
            }
        })
    }

    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> BoxFuture<'_, KvResult<Reply<LeaseTimeToLive>>> {
        Box::pin(async move {
            let revision = self.ctx.raft.store().current_revision();
            match self.ctx.lessor.time_to_live(id, keys).await {
                Ok(t) => Ok(Reply {
                    revision,
                    body: LeaseTimeToLive {
                        id: t.id,
                        ttl: t.ttl,
                        granted_ttl: t.granted_ttl,
                        keys: t.keys,
                    },
                }),
                // etcd answers a missing lease with TTL -1 rather than an error.
                Err(LeaseError::NotFound) => Ok(Reply {
                    revision,
                    body: LeaseTimeToLive {
                        id,
                        ttl: -1,
                        granted_ttl: 0,
                        keys: Vec::new(),
                    },
                }),
                Err(e) => Err(lease_err(&e)),
            }
        })
    }
}

/// Forward one hub watcher's deliveries to its consumer until either side goes away; send a
/// progress notification every `progress` of idle time when asked for.
async fn pump(
    ctx: ApiContext,
    mut watcher: watch_hub::Watcher,
    tx: mpsc::Sender<WatchItem>,
    progress: Option<Duration>,
) {
    let period = progress.unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_since_tick = false;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            d = watcher.rx.recv() => {
                let Some(d) = d else {
                    // The hub is gone (member shut down): end the watch like a broken server.
                    let _ = tx
                        .send(Err(KvError::Unavailable(format!("{LOCAL}: watch hub stopped"))))
                        .await;
                    return;
                };
                sent_since_tick = true;
                if !forward(&tx, d).await {
                    return;
                }
            }
            _ = tick.tick(), if progress.is_some() => {
                if std::mem::take(&mut sent_since_tick) {
                    continue;
                }
                let Some(rev) = ctx.hub.progress_revision(&[watcher.id()]) else {
                    continue;
                };
                // Everything up to `rev` is already queued: deliver it before announcing `rev`.
                let mut held = None;
                while let Ok(d) = watcher.rx.try_recv() {
                    let later = matches!(&d, Delivery::Events(evs)
                        if evs.first().is_some_and(|e| e.kv.mod_revision > rev));
                    if later {
                        held = Some(d);
                        break;
                    }
                    if !forward(&tx, d).await {
                        return;
                    }
                }
                let batch = WatchBatch { revision: rev, events: Vec::new() };
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
                if let Some(d) = held {
                    if !forward(&tx, d).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Send one delivery on; false when the watch is over (consumer gone or watch ended).
async fn forward(tx: &mpsc::Sender<WatchItem>, d: Delivery) -> bool {
    match d {
        Delivery::Events(events) => {
            let Some(revision) = events.last().map(|e| e.kv.mod_revision) else {
                return true;
            };
            tx.send(Ok(WatchBatch { revision, events })).await.is_ok()
        }
        Delivery::Compacted { compact_revision } => {
            let _ = tx.send(Err(KvError::Compacted { compact_revision })).await;
            false
        }
    }
}
