//! Stopping a member: raft, the peer server, the background tasks, then a storage flush.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::RaftError;

use super::inner::Inner;

impl Inner {
    /// Stop raft, the peer server and background tasks; flush storage. Idempotent. With
    /// `hand_off`, a leader first hands leadership over.
    pub(crate) async fn shutdown(&self, hand_off: bool) -> Result<(), RaftError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // Hand leadership over first, while the peer server still answers the new leader's vote
        // request.
        if hand_off {
            self.hand_off_leadership().await;
        }
        let _ = self.shutdown_tx.send(true);
        let raft_res = self.raft.shutdown().await;
        let server = self.server.lock().take();
        if let Some(mut h) = server {
            // Graceful stop waits for open peer connections, which peers keep open: raft is
            // stopped, so there is nothing left for them; don't wait long.
            if tokio::time::timeout(Duration::from_millis(200), &mut h)
                .await
                .is_err()
            {
                h.abort();
            }
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        for mut t in tasks {
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        let dbs = self.dbs.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            dbs.iter().try_for_each(|db| db.flush().map(|_| ()))
        })
        .await
        .map_err(|e| RaftError::Internal(format!("flush task: {e}")))?;
        flushed.map_err(|e| RaftError::Storage(crawler_storage::StoreError::Sled(e)))?;
        raft_res.map_err(|e| RaftError::Internal(format!("raft shutdown: {e}")))?;
        Ok(())
    }
}
