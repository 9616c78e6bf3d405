//! The member's metrics, under etcd's names so that etcd's dashboards work: counters kept as
//! atomics where things happen ([`StoreMetrics`], [`CountingObserver`], the gRPC layer in
//! `grpc_metrics.rs`), and a [`Collector`] that reads raft, store and quota state at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crawler_raft::RaftNode;
use crawler_storage::metrics::WAL_FSYNC;
use crawler_storage::{ApplyObserver, Event, EventType};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::server::grpc_metrics::GrpcCounters;
use crate::server::quota::Quota;

/// Counters of one member, bumped where things happen (one relaxed atomic add each).
#[derive(Debug, Default)]
pub struct StoreMetrics {
    pub(crate) leader_changes: AtomicU64,
    pub(crate) proposals_failed: AtomicU64,
    pub(crate) proposals_pending: AtomicI64,
    pub(crate) puts: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) grpc: Arc<GrpcCounters>,
}

impl StoreMetrics {
    /// Puts applied so far (`etcd_mvcc_put_total`).
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
    }
}

/// The watch hub's apply observer, wrapped to count applied puts and deletes on the way.
pub(crate) struct CountingObserver {
    pub(crate) metrics: Arc<StoreMetrics>,
    pub(crate) inner: Arc<dyn ApplyObserver>,
}

impl ApplyObserver for CountingObserver {
    fn on_apply(&self, revision: i64, events: &[Event]) {
        let puts = events.iter().filter(|e| e.kind == EventType::Put).count() as u64;
        let deletes = events.len() as u64 - puts;
        if puts > 0 {
            self.metrics.puts.fetch_add(puts, Ordering::Relaxed);
        }
        if deletes > 0 {
            self.metrics.deletes.fetch_add(deletes, Ordering::Relaxed);
        }
        self.inner.on_apply(revision, events);
    }

    fn on_restore(&self, revision: i64) {
        self.inner.on_restore(revision);
    }
}

/// Count leader changes as etcd does (`etcd_server_leader_changes_seen_total`): each time the
/// member learns of a leader other than the last one it knew.
pub(crate) fn spawn_leader_watch(raft: &RaftNode, metrics: Arc<StoreMetrics>) -> JoinHandle<()> {
    let mut rx = raft.leader_watch();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let now = *rx.borrow_and_update();
            if now.is_some() && now != last {
                metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
                last = now;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Reads the member at scrape time.
#[derive(Debug)]
struct MemberCollector {
    raft: RaftNode,
    metrics: Arc<StoreMetrics>,
    quota: Arc<Quota>,
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for MemberCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let st = self.raft.status();
        let m = &self.metrics;
        let store = self.raft.store();
        let leader = st.leader.unwrap_or(0);
        gauge(
            &mut enc,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            i64::from(leader != 0),
        )?;
        gauge(
            &mut enc,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            i64::from(leader != 0 && leader == self.raft.id()),
        )?;
        gauge(
            &mut enc,
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            i64::from(st.is_learner),
        )?;
        counter(
            &mut enc,
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            m.leader_changes.load(Ordering::Relaxed),
        )?;
        // etcd exports these two as gauges named `_total` (the raft indexes).
        gauge(
            &mut enc,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            to_i64(st.commit_index),
        )?;
        gauge(
            &mut enc,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            to_i64(st.applied_index),
        )?;
        gauge(
            &mut enc,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            m.proposals_pending.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen.",
            m.proposals_failed.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut enc,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            to_i64(self.quota.limit()),
        )?;
        let size = to_i64(self.quota.db_size());
        gauge(
            &mut enc,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            size,
        )?;
        gauge(
            &mut enc,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            size,
        )?;
        gauge(
            &mut enc,
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            i64::try_from(store.key_count()).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut enc,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            store.current_revision(),
        )?;
        gauge(
            &mut enc,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            store.compact_revision(),
        )?;
        counter(
            &mut enc,
            "etcd_mvcc_put",
            "Total number of puts seen by this member.",
            m.puts.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "etcd_mvcc_delete",
            "Total number of deletes seen by this member.",
            m.deletes.load(Ordering::Relaxed),
        )?;
        let h = WAL_FSYNC.snapshot();
        let mut fsync = enc.encode_descriptor(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            None,
            MetricType::Histogram,
        )?;
        fsync.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        m.grpc.encode(&mut enc)
    }
}

/// The registry served on `/metrics` of one member.
pub(crate) fn registry(raft: RaftNode, metrics: Arc<StoreMetrics>, quota: Arc<Quota>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(MemberCollector {
        raft,
        metrics,
        quota,
    }));
    r
}
