//! State shared by every gRPC service of one member, and the helpers each handler needs:
//! response headers, read guards, replicated writes and request size checks.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crawler_proto::etcdserverpb::ResponseHeader;
use crawler_raft::RaftNode;
use crawler_storage::{Command, CommandResult};
use tonic::Status;

use super::error;
use crate::server::lessor::Lessor;
use crate::server::limits::Limits;
use crate::server::metrics::StoreMetrics;
use crate::server::quota::Quota;
use crate::server::watch_hub::WatchHub;

/// Handles of one member that the API layer works on. Cheap to clone.
#[derive(Clone)]
pub struct ApiContext {
    /// The member's raft side (writes, linearizable reads, membership, store reader).
    pub raft: RaftNode,
    /// The member's watch hub.
    pub hub: Arc<WatchHub>,
    /// The member's lease clock keeper.
    pub lessor: Arc<Lessor>,
    /// Client request limits.
    pub limits: Limits,
    /// The member's counters (`/metrics`).
    pub metrics: Arc<StoreMetrics>,
    /// The space quota and the last measured db size.
    pub quota: Arc<Quota>,
}

impl ApiContext {
    /// Bundle a member's handles.
    pub fn new(raft: RaftNode, hub: Arc<WatchHub>, lessor: Arc<Lessor>, limits: Limits) -> Self {
        let quota = Arc::new(Quota::new(limits.quota_backend_bytes));
        Self {
            raft,
            hub,
            lessor,
            limits,
            metrics: Arc::default(),
            quota,
        }
    }

    /// The same handles counting into `metrics` (the member's, shared with its apply observer).
    pub(crate) fn with_metrics(mut self, metrics: Arc<StoreMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// etcd's quota check in front of a write: over the quota, a write that adds data raises
    /// the NOSPACE alarm and is refused with `etcdserver: mvcc: database space exceeded`.
    pub(crate) fn check_quota(&self, cmd: &Command) -> Result<(), Status> {
        if self.quota.exceeded() && cmd.adds_data() {
            self.quota.raise_alarm(&self.raft);
            return Err(error::no_space());
        }
        Ok(())
    }

    /// A response header at the store's current revision.
    pub(crate) fn header(&self) -> ResponseHeader {
        self.header_with_revision(self.raft.store().current_revision())
    }

    /// A response header carrying `revision` (e.g. the revision a write was applied at).
    pub(crate) fn header_with_revision(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.raft.cluster_id(),
            member_id: self.raft.id(),
            revision,
            raft_term: self.raft.status().term,
        }
    }

    /// Make a following read of the local store linearizable, unless the client asked for a
    /// serializable (possibly stale, local) read.
    pub(crate) async fn read_guard(&self, serializable: bool) -> Result<(), Status> {
        if serializable {
            return Ok(());
        }
        self.raft
            .read_barrier()
            .await
            .map_err(|e| error::status_from_raft(&e))
    }

    /// Replicate `cmd` through raft and return the revision after it applied with its result.
    pub(crate) async fn write(&self, cmd: Command) -> Result<(i64, CommandResult), Status> {
        let pending = &self.metrics.proposals_pending;
        pending.fetch_add(1, Ordering::Relaxed);
        let resp = self.raft.write(cmd).await;
        pending.fetch_sub(1, Ordering::Relaxed);
        let resp = resp.map_err(|e| {
            self.metrics
                .proposals_failed
                .fetch_add(1, Ordering::Relaxed);
            error::status_from_raft(&e)
        })?;
        match resp.result {
            Ok(result) => Ok((resp.revision, result)),
            Err(e) => Err(error::status_from_apply(&e)),
        }
    }

    /// `etcdserver: request is too large` when the encoded request exceeds `--max-request-bytes`.
    pub(crate) fn check_request_size(&self, msg: &impl prost::Message) -> Result<(), Status> {
        if msg.encoded_len() > self.limits.max_request_bytes {
            return Err(error::request_too_large());
        }
        Ok(())
    }
}

/// A command result of an unexpected kind: a bug between layers, reported rather than panicking.
pub(crate) fn unexpected_result(what: &str, got: &CommandResult) -> Status {
    Status::internal(format!(
        "etcdserver: unexpected apply result for {what}: {got:?}"
    ))
}
