//! The worker's watch over its registration lease: a loss stops every run (the master
//! reassigns them), and another process taking the worker's id ends the worker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::client::KvClient;
use crate::coord::registry::Registration;

/// What the registration guard knows about the registration lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RegState {
    /// How many times the lease was found lost (gone, replaced by a re-registration, or
    /// unconfirmed for a whole TTL).
    pub(super) losses: u64,
    /// The current lease is confirmed alive.
    pub(super) alive: bool,
    /// Another process registered this worker's id: the registration gave up for good.
    pub(super) taken: bool,
}

/// Watches over the registration lease. A loss (the lease gone or unconfirmed for a whole TTL, or
/// replaced because the registry had to re-register) means the worker's key was deleted or is
/// about to be: the master reassigns its resources on that, so running them on would duplicate
/// work. The assignment loop stops every run on a loss and starts again from a fresh snapshot
/// once a lease is confirmed alive.
pub(super) async fn guard_registration(
    client: Arc<dyn KvClient>,
    registration: Arc<Registration>,
    ttl: Duration,
    state: watch::Sender<RegState>,
    mut stop: watch::Receiver<bool>,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut known = registration.lease_id().await;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if let Some(e) = registration.taken_by() {
            tracing::error!(error = %e, "worker: stopping every run: this worker id now belongs to another process");
            state.send_modify(|s| {
                s.alive = false;
                s.losses += 1;
                s.taken = true;
            });
            return;
        }
        let lease = registration.lease_id().await;
        if lease != known {
            tracing::warn!(
                old = known,
                new = lease,
                "worker: registered again on a new lease; restarting runs"
            );
            known = lease;
            state.send_modify(|s| s.losses += 1);
        }
        let alive =
            match tokio::time::timeout(period, client.lease_time_to_live(lease, false)).await {
                Ok(Ok(r)) => Some(r.body.ttl > 0),
                Ok(Err(_)) | Err(_) => None,
            };
        let why = match alive {
            Some(true) => {
                last_ok = tokio::time::Instant::now();
                if state.send_if_modified(|s| !std::mem::replace(&mut s.alive, true)) {
                    tracing::info!(lease, "worker: registration confirmed again");
                }
                continue;
            }
            Some(false) => "registration lease no longer exists",
            None if last_ok.elapsed() >= ttl => "registration lease not confirmed for a whole TTL",
            None => continue,
        };
        let newly_lost = state.send_if_modified(|s| {
            let was = std::mem::replace(&mut s.alive, false);
            if was {
                s.losses += 1;
            }
            was
        });
        if newly_lost {
            tracing::warn!(
                lease,
                reason = why,
                "worker: stopping every run until registered again"
            );
        }
    }
}

/// Resolves once a loss newer than `seen` happened or the lease is not alive (never, if the
/// guard is gone).
pub(super) async fn registration_lost(rx: &mut watch::Receiver<RegState>, seen: u64) {
    // The borrow guard is not `Send`: keep it inside this function.
    if rx.wait_for(|s| !s.alive || s.losses > seen).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves once the lease is confirmed alive (never, if the guard is gone).
pub(super) async fn registration_alive(rx: &mut watch::Receiver<RegState>) {
    if rx.wait_for(|s| s.alive).await.is_err() {
        std::future::pending::<()>().await;
    }
}
