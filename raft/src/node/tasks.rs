//! The member's background loops: mirroring the current leader into a watch channel, and
//! publishing the member's attributes once it has joined a cluster with a leader.

use std::sync::Arc;
use std::time::Duration;

use crawler_storage::{Command, MemberAttrs};
use openraft::Raft;
use tokio::sync::watch;

use crate::{NodeId, TypeConfig};

use super::inner::Inner;
use super::leader::LeaderOp;

/// Mirror `current_leader` from the metrics into a watch channel of its own.
pub(crate) async fn leader_watch_loop(
    raft: Raft<TypeConfig>,
    tx: Arc<watch::Sender<Option<NodeId>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    loop {
        // The borrow ends with this statement: never held across an await.
        let leader = metrics.borrow_and_update().current_leader;
        tx.send_if_modified(|cur| {
            if *cur != leader {
                *cur = leader;
                true
            } else {
                false
            }
        });
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    tx.send_if_modified(|cur| cur.take().is_some());
}

/// Publish this member's name and client URLs once it is part of a cluster with a leader.
pub(crate) async fn publish_loop(inner: Arc<Inner>) {
    let attrs = MemberAttrs {
        name: inner.cfg.name.clone(),
        client_urls: inner.cfg.advertise_client_urls.clone(),
    };
    let mut shutdown = inner.shutdown_tx.subscribe();
    let mut metrics = inner.raft.metrics();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let ready = {
            let m = metrics.borrow_and_update();
            m.current_leader.is_some()
                && m.membership_config
                    .membership()
                    .get_node(&inner.id)
                    .is_some()
        };
        if ready {
            // Restart with unchanged flags: the store already has our attributes.
            if inner.reader.member_attrs().get(&inner.id) == Some(&attrs) {
                return;
            }
            let cmd = Command::PublishMember {
                id: inner.id,
                attrs: attrs.clone(),
            };
            match inner.run_on_leader(LeaderOp::Write(cmd)).await {
                Ok(_) => {
                    tracing::info!(
                        id = format_args!("{:x}", inner.id),
                        "published member attributes"
                    );
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            // Metrics closed: raft is gone, nothing left to publish to.
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
