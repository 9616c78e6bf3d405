//! INTERFACE STUB — the API helper implements it. Signatures are the contract.
//!
//! The embeddable store member: storage, raft and etcd's gRPC services inside any process.

use std::net::SocketAddr;

use crawler_raft::NodeConfig;

/// Limits enforced on client requests (etcd's defaults).
#[derive(Clone, Debug)]
pub struct Limits {
    /// `--max-request-bytes`, default 1.5 MiB.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`, default 128.
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
        }
    }
}

/// Configuration of one member.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub node: NodeConfig,
    /// Address the etcd gRPC API binds (port 0 allowed).
    pub listen_client: SocketAddr,
    pub limits: Limits,
}

/// A running member. Dropping it does not stop it; call `shutdown`.
pub struct Member {}

impl Member {
    /// Start a member and serve etcd's API.
    pub async fn start(_cfg: MemberConfig) -> anyhow::Result<Member> {
        todo!()
    }
    /// Address the client API actually bound.
    pub fn client_addr(&self) -> SocketAddr {
        todo!()
    }
    /// The raft handle (for in-process clients).
    pub fn raft(&self) -> &crawler_raft::RaftNode {
        todo!()
    }
    /// Stop serving and shut raft down cleanly.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        todo!()
    }
}
