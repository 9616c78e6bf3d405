//! A lease kept alive for as long as a campaign or a leadership needs it (etcd's
//! `concurrency.Session`): the master's side of the protocol supplies its lease from here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::error::ElectionError;
use crate::client::{KvClient, LeaseKeeper};

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
