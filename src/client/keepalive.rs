//! Keeping a lease alive in the background, and knowing when it is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::api::{KvClient, KvResult};

/// Shortest pause between keepalives, whatever the TTL.
const MIN_PERIOD: Duration = Duration::from_millis(100);
/// Pause before retrying a keepalive that failed for a transient reason.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// A lease renewed by a background task every third of its TTL (as etcd's Go client does).
///
/// The lease counts as lost when the store says it no longer exists, or when its last known
/// expiry passes without a successful renewal (the store may have expired it while we could not
/// reach it). Once lost it stays lost: grant a new lease. Dropping the keeper stops the renewals
/// (the lease then expires on its own); [`LeaseKeeper::revoke`] ends it at once.
pub struct LeaseKeeper {
    client: Arc<dyn KvClient>,
    id: i64,
    ttl: i64,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LeaseKeeper {
    /// Grant a lease of `ttl` seconds and start keeping it alive.
    pub async fn grant(client: Arc<dyn KvClient>, ttl: i64) -> KvResult<Self> {
        let granted = client.lease_grant(ttl, 0).await?.body;
        Ok(Self::spawn(client, granted.id, granted.ttl))
    }

    /// Start keeping lease `id` alive; `ttl` is its TTL in seconds, just granted or renewed.
    pub fn spawn(client: Arc<dyn KvClient>, id: i64, ttl: i64) -> Self {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(keep_alive_loop(client.clone(), id, ttl, tx));
        Self {
            client,
            id,
            ttl,
            lost: rx,
            task,
        }
    }

    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL in seconds the lease was granted with.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// True once the lease is known or presumed gone.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// A receiver that turns `true` (or closes) when the lease is lost.
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        wait_lost(self.lost.clone()).await
    }

    /// Stop the renewals and revoke the lease (deleting its keys). A lease already gone is fine.
    pub async fn revoke(self) -> KvResult<()> {
        self.task.abort();
        match self.client.lease_revoke(self.id).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves when a lost signal (from [`LeaseKeeper::lost_signal`]) turns true or its keeper is gone.
pub async fn wait_lost(mut rx: watch::Receiver<bool>) {
    // An error means the keeper task ended or was dropped: renewals stopped, so the lease is lost.
    let _ = rx.wait_for(|lost| *lost).await;
}

async fn keep_alive_loop(client: Arc<dyn KvClient>, id: i64, ttl: i64, lost: watch::Sender<bool>) {
    let ttl_d = Duration::from_secs(ttl.max(1) as u64);
    let period = (ttl_d / 3).max(MIN_PERIOD);
    // Conservative: the lease was granted or renewed at the latest now.
    let mut expires = Instant::now() + ttl_d;
    let mut pause = period;
    loop {
        tokio::time::sleep(pause).await;
        let sent = Instant::now();
        match tokio::time::timeout_at(expires, client.lease_keep_alive_once(id)).await {
            Ok(Ok(reply)) => {
                expires = sent + Duration::from_secs(reply.body.ttl.max(0) as u64);
                pause = period;
            }
            Ok(Err(e)) if e.is_not_found() => {
                tracing::warn!(lease = id, "lease no longer exists");
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = id, error = %e, "lease keepalive failed, retrying");
                pause = RETRY_PAUSE.min(period);
            }
            Err(_) => {}
        }
        if Instant::now() >= expires {
            tracing::warn!(lease = id, "lease expiry passed without a renewal");
            break;
        }
    }
    let _ = lost.send(true);
}
