//! What the member knows of the cluster: raft status, log positions and the member list
//! (also the `Members` rpc's answer).

use std::collections::BTreeSet;

use crate::wire::{MembersReply, WireMember};
use crate::{MemberInfo, NodeId, PeerNode, RaftStatus};

use super::inner::Inner;

impl Inner {
    /// Current raft state for headers and `Status`.
    pub(crate) fn status(&self) -> RaftStatus {
        let m = self.raft.metrics();
        let b = m.borrow();
        let applied = b.last_applied.map(|l| l.index).unwrap_or(0);
        let is_learner = !b
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id);
        RaftStatus {
            term: b.current_term,
            leader: b.current_leader,
            // openraft 0.9 metrics do not expose the commit index; applied <= committed and is
            // what reads observe.
            commit_index: applied,
            applied_index: applied,
            is_learner,
        }
    }

    /// Log and snapshot positions from the metrics.
    pub(crate) fn log_state(&self) -> crate::LogState {
        let m = self.raft.metrics();
        let b = m.borrow();
        crate::LogState {
            last_log_index: b.last_log_index.unwrap_or(0),
            purged_index: b.purged.map(|l| l.index),
            snapshot_index: b.snapshot.map(|l| l.index),
        }
    }

    /// Voters and learners with their published attributes.
    pub(crate) fn members(&self) -> Vec<MemberInfo> {
        let (nodes, voters): (Vec<(NodeId, PeerNode)>, BTreeSet<NodeId>) = {
            let m = self.raft.metrics();
            let b = m.borrow();
            let mem = b.membership_config.membership();
            (
                mem.nodes().map(|(id, n)| (*id, n.clone())).collect(),
                mem.voter_ids().collect(),
            )
        };
        let attrs = self.reader.member_attrs();
        let mut out: Vec<MemberInfo> = nodes
            .into_iter()
            .map(|(id, node)| {
                let a = attrs.get(&id);
                let mut name = a.map(|a| a.name.clone()).unwrap_or_default();
                let mut client_urls = a.map(|a| a.client_urls.clone()).unwrap_or_default();
                if id == self.id && a.is_none() {
                    name = self.cfg.name.clone();
                    client_urls = self.cfg.advertise_client_urls.clone();
                }
                if name.is_empty() && a.is_none() {
                    // Not started yet: etcd shows an empty name; we know the initial one, if any.
                    name = node.name.clone();
                }
                MemberInfo {
                    id,
                    name,
                    peer_urls: node.peer_urls,
                    client_urls,
                    is_learner: !voters.contains(&id),
                }
            })
            .collect();
        if out.is_empty() {
            // Not part of a cluster yet (joining): show at least ourselves.
            out.push(MemberInfo {
                id: self.id,
                name: self.cfg.name.clone(),
                peer_urls: self.cfg.advertise_peer_urls.clone(),
                client_urls: self.cfg.advertise_client_urls.clone(),
                is_learner: true,
            });
        }
        out
    }

    /// Answer of the `Members` rpc.
    pub(crate) fn members_reply(&self) -> MembersReply {
        MembersReply {
            cluster_id: self.cluster_id,
            leader: self.current_leader(),
            members: self.members().into_iter().map(WireMember::from).collect(),
        }
    }
}
