//! Handing leadership over before a leader stops, as etcd does on a clean stop: the most
//! up-to-date voter is told to campaign at once, so the cluster is without a leader for one
//! election round instead of a whole election timeout.
//!
//! openraft 0.9 has no leadership transfer. Ours: the leader picks a voter whose log matches its
//! own and sends it an `Admin` `Campaign`; that voter calls `trigger().elect()`. The stopping
//! leader grants the vote once its own vote lease (one lease after it was elected) is over, or
//! once the campaign's higher term has made it step down; the other voters may still refuse it
//! within their lease; two votes of three are a majority. The voter is asked again every
//! [`RETRY`] until leadership moves. If it does not within one election timeout the member
//! simply stops, as before: the others elect after their election timeout.

use std::time::{Duration, Instant};

use crate::network::Rpc;
use crate::wire::{encode, AdminOp, AdminRequest};
use crate::NodeId;

use super::inner::Inner;

/// Longest a stopping leader waits for a voter to catch up before asking it to campaign.
const CATCH_UP: Duration = Duration::from_millis(300);
/// How long one request to campaign is given before it is sent again.
const RETRY: Duration = Duration::from_millis(150);

impl Inner {
    /// If this member leads, hand leadership to an up-to-date voter, waiting at most about one
    /// election timeout. Returns the new leader, if leadership moved.
    pub(crate) async fn hand_off_leadership(&self) -> Option<NodeId> {
        if self.current_leader() != Some(self.id) {
            return None;
        }
        let others = {
            let m = self.raft.metrics().borrow().clone();
            let n = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != self.id)
                .count();
            n
        };
        if others == 0 {
            return None;
        }
        let deadline =
            Instant::now() + Duration::from_millis(self.cfg.election_timeout_ms.max(100));
        let catch_up = deadline.min(Instant::now() + CATCH_UP);
        let target = loop {
            if let Some(t) = self.up_to_date_voter() {
                break t;
            }
            if Instant::now() >= catch_up {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let url = self.peer_url_of(target)?;
        let mut metrics = self.raft.metrics();
        // A vote can be refused within a lease (this member's, if it was elected moments ago,
        // or the other voters'); the voter is asked again until leadership moves.
        let moved = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break None;
            }
            let timeout_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
            let payload = encode(&AdminRequest {
                timeout_ms,
                op: AdminOp::Campaign,
            })
            .ok()?;
            if let Err(e) = self
                .clients
                .call(&url, Rpc::Admin, payload, remaining)
                .await
            {
                tracing::debug!(target = format_args!("{target:x}"), error = %e, "leadership hand-off refused");
                return None;
            }
            let round = (Instant::now() + RETRY).min(deadline);
            let seen = tokio::time::timeout_at(round.into(), async {
                loop {
                    let leader = metrics.borrow_and_update().current_leader;
                    if leader.is_some() && leader != Some(self.id) {
                        return leader;
                    }
                    if metrics.changed().await.is_err() {
                        return None;
                    }
                }
            })
            .await;
            if let Ok(l) = seen {
                break l;
            }
        };
        if let Some(l) = moved {
            tracing::info!(
                to = format_args!("{l:x}"),
                "leadership handed over before stopping"
            );
        }
        moved
    }

    /// A voter other than this member whose replicated log matches this member's last entry.
    fn up_to_date_voter(&self) -> Option<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index?;
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let replication = m.replication?;
        voters.into_iter().filter(|id| *id != self.id).find(|id| {
            replication
                .get(id)
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.index >= last)
        })
    }

    /// Campaign now (a leader handing over asked for it).
    pub(crate) async fn campaign_now(&self) -> Result<(), crate::wire::WireError> {
        if self.current_leader() == Some(self.id) {
            return Ok(());
        }
        // A member that is stopping too must not take leadership over.
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::wire::WireError::Stopped);
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| crate::wire::WireError::Other(format!("campaign: {e}")))
    }
}
