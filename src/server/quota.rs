//! The space quota (`--quota-backend-bytes`, etcd's `server/storage/quota.go`): the db size is
//! sampled in the background into an atomic, so the check in front of each write is one load.
//! A write that would add data while the db is over the quota raises the NOSPACE alarm through
//! raft and is refused; the alarm then caps every member's apply (see `crawler_storage`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crawler_raft::RaftNode;
use crawler_storage::{AlarmType, Command};
use tokio::task::JoinHandle;

/// etcd's default quota: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// How often the db size is read from disk.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A member's quota and its last measured db size.
#[derive(Debug)]
pub struct Quota {
    limit: u64,
    db_size: AtomicU64,
    /// An alarm proposal is on its way (one at a time).
    raising: AtomicBool,
}

impl Quota {
    /// A quota of `bytes` (0 = etcd's default 2 GiB).
    pub fn new(bytes: u64) -> Self {
        Quota {
            limit: if bytes == 0 {
                DEFAULT_QUOTA_BACKEND_BYTES
            } else {
                bytes
            },
            db_size: AtomicU64::new(0),
            raising: AtomicBool::new(false),
        }
    }

    /// The quota in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The db size at the last sample, bytes.
    pub fn db_size(&self) -> u64 {
        self.db_size.load(Ordering::Relaxed)
    }

    /// Whether the db is over the quota (etcd: `size + cost >= quota`; the cost of one request
    /// is small next to the sampling error, so it is left out).
    pub fn exceeded(&self) -> bool {
        self.db_size() >= self.limit
    }

    /// Sample `raft`'s db size now and every [`SAMPLE_EVERY`].
    pub(crate) fn start_sampler(self: &Arc<Self>, raft: RaftNode) -> JoinHandle<()> {
        let me = self.clone();
        me.db_size.store(raft.store().db_size(), Ordering::Relaxed);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let store = raft.store().clone();
                let size = tokio::task::spawn_blocking(move || store.db_size())
                    .await
                    .unwrap_or(0);
                me.db_size.store(size, Ordering::Relaxed);
            }
        })
    }

    /// Over the quota: make sure the NOSPACE alarm of this member is raised (etcd proposes an
    /// `AlarmRequest` ACTIVATE from its quota check). Returns at once; the proposal runs
    /// behind, one at a time.
    pub(crate) fn raise_alarm(self: &Arc<Self>, raft: &RaftNode) {
        let id = raft.id();
        let active = raft
            .store()
            .alarms()
            .iter()
            .any(|a| a.alarm == AlarmType::NoSpace && a.member == id);
        if active || self.raising.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let raft = raft.clone();
        tokio::spawn(async move {
            tracing::warn!(
                quota = me.limit,
                db_size = me.db_size(),
                "database space exceeded: raising the NOSPACE alarm"
            );
            let cmd = Command::Alarm {
                activate: true,
                member: id,
                alarm: AlarmType::NoSpace,
            };
            if let Err(e) = raft.write(cmd).await {
                tracing::warn!(error = %e, "cannot raise the NOSPACE alarm");
            }
            me.raising.store(false, Ordering::Release);
        });
    }
}
