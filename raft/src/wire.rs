//! Payloads of the peer RPCs (bincode 2 + serde inside `RaftPayload.data`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crawler_storage::Command;
use openraft::error::{ClientWriteError, Fatal};

use crate::{MemberInfo, NodeId, PeerNode, RaftError};

/// openraft's error type for its API calls.
pub(crate) type OrRaftError<E = std::convert::Infallible> = openraft::error::RaftError<NodeId, E>;

/// A fatal raft error as the peer protocol carries it.
pub(crate) fn fatal_to_wire(f: Fatal<NodeId>) -> WireError {
    match f {
        Fatal::Stopped => WireError::Stopped,
        other => WireError::Other(format!("raft failed: {other}")),
    }
}

/// A failed `client_write` as the peer protocol carries it.
pub(crate) fn write_err_to_wire(e: OrRaftError<ClientWriteError<NodeId, PeerNode>>) -> WireError {
    use openraft::error::ChangeMembershipError;
    match e {
        OrRaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            WireError::NotLeader(f.leader_id)
        }
        OrRaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => WireError::InProgress,
        OrRaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            WireError::Other(c.to_string())
        }
        OrRaftError::Fatal(f) => fatal_to_wire(f),
    }
}

/// Encode a value the way every peer payload is encoded.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(|e| e.to_string())
}

/// Decode a peer payload; trailing garbage or a malformed body is an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after payload",
            bytes.len() - used
        ));
    }
    Ok(v)
}

/// An openraft RPC addressed to one member, so a member reached at a reused address by mistake
/// refuses it instead of corrupting its log.
#[derive(Debug, Serialize, Deserialize)]
pub struct Addressed<T> {
    /// Intended receiver.
    pub target: NodeId,
    /// The openraft request.
    pub body: T,
}

/// Errors a leader-side operation reports back to the forwarding member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// The receiver is not the leader (it names the one it knows, if any); retry there.
    NotLeader(Option<NodeId>),
    /// The leader could not confirm its leadership with a quorum; retryable for reads.
    QuorumLost,
    NoLeader,
    Timeout,
    Stopped,
    MemberNotFound,
    PeerUrlExists,
    NotEnoughStartedMembers,
    NotLearner,
    LearnerNotReady,
    /// A membership change is still in progress; retryable.
    InProgress,
    Other(String),
}

impl From<WireError> for RaftError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotLeader(_) | WireError::NoLeader => RaftError::NoLeader,
            WireError::QuorumLost | WireError::Timeout => RaftError::Timeout,
            WireError::Stopped => RaftError::Stopped,
            WireError::MemberNotFound => RaftError::MemberNotFound,
            WireError::PeerUrlExists => RaftError::PeerUrlExists,
            WireError::NotEnoughStartedMembers => RaftError::NotEnoughStartedMembers,
            WireError::NotLearner => RaftError::NotLearner,
            WireError::LearnerNotReady => RaftError::LearnerNotReady,
            WireError::InProgress => {
                RaftError::Internal("a membership change is already in progress".into())
            }
            WireError::Other(s) => RaftError::Internal(s),
        }
    }
}

impl From<RaftError> for WireError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NoLeader => WireError::NoLeader,
            RaftError::Timeout => WireError::Timeout,
            RaftError::Stopped => WireError::Stopped,
            RaftError::MemberNotFound => WireError::MemberNotFound,
            RaftError::PeerUrlExists => WireError::PeerUrlExists,
            RaftError::NotEnoughStartedMembers => WireError::NotEnoughStartedMembers,
            RaftError::NotLearner => WireError::NotLearner,
            RaftError::LearnerNotReady => WireError::LearnerNotReady,
            other => WireError::Other(other.to_string()),
        }
    }
}

/// `ForwardWrite` request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardWriteRequest {
    /// How long the leader may spend on it.
    pub timeout_ms: u64,
    pub cmd: Command,
}

/// `ReadIndex` request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    pub timeout_ms: u64,
}

/// Membership operations forwarded to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminOp {
    Add {
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: NodeId,
    },
    Promote {
        id: NodeId,
    },
    /// Start an election now: the leader is stopping and hands leadership to this member.
    /// Runs on the member it is sent to, not on the leader.
    Campaign,
}

/// `Admin` request.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminRequest {
    pub timeout_ms: u64,
    pub op: AdminOp,
}

/// Successful `Admin` result.
#[derive(Debug, Serialize, Deserialize)]
pub enum AdminOk {
    Added(WireMember),
    Done,
}

/// A member as the `Members` rpc and `Admin` add report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMember {
    pub id: NodeId,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl From<WireMember> for MemberInfo {
    fn from(m: WireMember) -> Self {
        MemberInfo {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        }
    }
}

impl From<MemberInfo> for WireMember {
    fn from(m: MemberInfo) -> Self {
        WireMember {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        }
    }
}

/// `Members` reply: what a joining member needs to find its own id.
#[derive(Debug, Serialize, Deserialize)]
pub struct MembersReply {
    pub cluster_id: u64,
    pub leader: Option<NodeId>,
    pub members: Vec<WireMember>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PeerNode, TypeConfig};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};

    type AeResult = Result<AppendEntriesResponse<NodeId>, openraft::error::RaftError<NodeId>>;

    #[test]
    fn openraft_messages_roundtrip() -> Result<(), String> {
        let mut nodes = std::collections::BTreeMap::new();
        nodes.insert(
            1u64,
            PeerNode {
                name: "a".into(),
                peer_urls: vec!["http://x:1".into()],
            },
        );
        let membership = Membership::new(vec![[1u64].into_iter().collect()], nodes);
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), 7);
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id),
            leader_commit: Some(log_id),
            entries: vec![
                Entry {
                    log_id,
                    payload: EntryPayload::Membership(membership),
                },
                Entry {
                    log_id,
                    payload: EntryPayload::Normal(Command::Compact { revision: 4 }),
                },
                Entry {
                    log_id,
                    payload: EntryPayload::Blank,
                },
            ],
        };
        let bytes = encode(&Addressed {
            target: 9,
            body: req.clone(),
        })?;
        let back: Addressed<AppendEntriesRequest<TypeConfig>> = decode(&bytes)?;
        assert_eq!(back.target, 9);
        assert_eq!(back.body.entries.len(), 3);
        assert_eq!(back.body.entries[1].payload, req.entries[1].payload);

        let v = VoteRequest::new(Vote::new(4, 2), Some(log_id));
        let back: VoteRequest<NodeId> = decode(&encode(&v)?)?;
        assert_eq!(back, v);

        let errs: Vec<AeResult> = vec![
            Ok(AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::HigherVote(Vote::new(5, 3))),
            Err(openraft::error::RaftError::Fatal(
                openraft::error::Fatal::Stopped,
            )),
        ];
        for e in errs {
            let back: AeResult = decode(&encode(&e)?)?;
            assert_eq!(back, e);
        }
        Ok(())
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<MembersReply>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<MembersReply>(&[]).is_err());
    }
}
