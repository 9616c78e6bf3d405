//! Membership changes, run on the leader (followers forward them through the `Admin` rpc).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crawler_storage::Command;
use openraft::ChangeMembers;

use crate::ids::normalize_url;
use crate::node::Inner;
use crate::wire::{write_err_to_wire, AdminOk, AdminOp, WireError, WireMember};
use crate::{ids, NodeId, PeerNode};

/// A learner whose matched index is below this share of the leader's log is not ready to vote
/// (etcd's `readyPercent`).
const LEARNER_READY_PERCENT: f64 = 0.9;

/// The leader's view of the membership, copied out of the metrics.
struct View {
    nodes: BTreeMap<NodeId, PeerNode>,
    voters: BTreeSet<NodeId>,
    /// Matched log index per replication target (leader only).
    matched: BTreeMap<NodeId, Option<u64>>,
    last_log_index: u64,
}

impl View {
    /// Voters that have ever answered replication, plus the leader.
    fn started_voters(&self, leader: NodeId, excluding: Option<NodeId>) -> usize {
        self.voters
            .iter()
            .filter(|v| Some(**v) != excluding)
            .filter(|v| **v == leader || matches!(self.matched.get(v), Some(Some(_))))
            .count()
    }
}

fn quorum(n: usize) -> usize {
    n / 2 + 1
}

impl Inner {
    fn view(&self) -> View {
        let m = self.raft.metrics();
        let b = m.borrow();
        let mem = b.membership_config.membership();
        View {
            nodes: mem.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            voters: mem.voter_ids().collect(),
            matched: b
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                        .collect()
                })
                .unwrap_or_default(),
            last_log_index: b.last_log_index.unwrap_or(0),
        }
    }

    /// Run a membership operation; this member must be the leader.
    pub(crate) async fn admin_on_leader(
        &self,
        op: AdminOp,
        timeout: Duration,
    ) -> Result<AdminOk, WireError> {
        if let AdminOp::Campaign = op {
            return self.campaign_now().await.map(|()| AdminOk::Done);
        }
        let leader = self.current_leader();
        if leader != Some(self.id) {
            return Err(WireError::NotLeader(leader));
        }
        let fut = async {
            match op {
                AdminOp::Add { peer_urls, learner } => self
                    .add_on_leader(peer_urls, learner)
                    .await
                    .map(AdminOk::Added),
                AdminOp::Remove { id } => self.remove_on_leader(id).await.map(|()| AdminOk::Done),
                AdminOp::Promote { id } => self.promote_on_leader(id).await.map(|()| AdminOk::Done),
                AdminOp::Campaign => Ok(AdminOk::Done),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(WireError::Timeout))
    }

    async fn add_on_leader(
        &self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<WireMember, WireError> {
        let urls: Vec<String> = peer_urls.iter().map(|u| normalize_url(u)).collect();
        if urls.is_empty() || urls.iter().any(|u| u.is_empty()) {
            return Err(WireError::Other(
                "member peer urls must not be empty".into(),
            ));
        }
        let view = self.view();
        let taken = view
            .nodes
            .values()
            .any(|n| n.peer_urls.iter().any(|u| urls.contains(&normalize_url(u))));
        if taken {
            return Err(WireError::PeerUrlExists);
        }
        if !learner {
            // The new voter is not started yet: the rest must still form a quorum without it.
            let n = view.voters.len() + 1;
            if view.started_voters(self.id, None) < quorum(n) {
                return Err(WireError::NotEnoughStartedMembers);
            }
        }
        let mut nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = loop {
            let id = ids::added_member_id(&urls, &self.cfg.cluster_token, nanos);
            if !view.nodes.contains_key(&id) {
                break id;
            }
            nanos += 1;
        };
        let node = PeerNode {
            name: String::new(),
            peer_urls: urls.clone(),
        };
        self.raft
            .add_learner(id, node, false)
            .await
            .map_err(write_err_to_wire)?;
        if !learner {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(write_err_to_wire)?;
        }
        tracing::info!(id = format_args!("{id:x}"), ?urls, learner, "added member");
        Ok(WireMember {
            id,
            name: String::new(),
            peer_urls: urls,
            client_urls: Vec::new(),
            is_learner: learner,
        })
    }

    async fn remove_on_leader(&self, id: NodeId) -> Result<(), WireError> {
        let view = self.view();
        if !view.nodes.contains_key(&id) {
            return Err(WireError::MemberNotFound);
        }
        if view.voters.contains(&id) {
            let n = view.voters.len() - 1;
            if n == 0 {
                return Err(WireError::Other(
                    "cannot remove the only voting member".into(),
                ));
            }
            if view.started_voters(self.id, Some(id)) < quorum(n) {
                return Err(WireError::NotEnoughStartedMembers);
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                .await
                .map_err(write_err_to_wire)?;
        } else {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                .await
                .map_err(write_err_to_wire)?;
        }
        tracing::info!(id = format_args!("{id:x}"), "removed member");
        // Drop its published attributes; if we removed ourselves, this goes to the new leader.
        // The removal itself is done: a failure here must not make the caller retry it.
        if let Err(e) = self.write_anywhere(Command::ForgetMember { id }).await {
            tracing::warn!(id = format_args!("{id:x}"), error = %e, "could not forget removed member's attributes");
        }
        Ok(())
    }

    async fn promote_on_leader(&self, id: NodeId) -> Result<(), WireError> {
        let view = self.view();
        if !view.nodes.contains_key(&id) {
            return Err(WireError::MemberNotFound);
        }
        if view.voters.contains(&id) {
            return Err(WireError::NotLearner);
        }
        let matched = view.matched.get(&id).copied().flatten();
        let ready = match matched {
            Some(m) => (m as f64) >= (view.last_log_index as f64) * LEARNER_READY_PERCENT,
            None => false,
        };
        if !ready {
            return Err(WireError::LearnerNotReady);
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
            .await
            .map_err(write_err_to_wire)?;
        tracing::info!(id = format_args!("{id:x}"), "promoted learner");
        Ok(())
    }
}
