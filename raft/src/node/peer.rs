//! What the peer server asks of this member: [`PeerHandler`] (declared by the server so that it
//! need not know the member) implemented by [`Inner`], delegating to its inherent methods.

use std::time::Duration;

use crawler_storage::{ApplyResponse, Command};
use openraft::Raft;

use crate::server::PeerHandler;
use crate::wire::{AdminOk, AdminOp, MembersReply, WireError};
use crate::{NodeId, TypeConfig};

use super::inner::Inner;

/// The peer service serves this member; the inherent methods do the work.
#[tonic::async_trait]
impl PeerHandler for Inner {
    fn id(&self) -> NodeId {
        self.id
    }

    fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    fn request_timeout(&self) -> Duration {
        Inner::request_timeout(self)
    }

    async fn write_on_leader(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<ApplyResponse, WireError> {
        Inner::write_on_leader(self, cmd, timeout).await
    }

    async fn read_index_on_leader(&self, timeout: Duration) -> Result<u64, WireError> {
        Inner::read_index_on_leader(self, timeout).await
    }

    async fn admin_on_leader(&self, op: AdminOp, timeout: Duration) -> Result<AdminOk, WireError> {
        Inner::admin_on_leader(self, op, timeout).await
    }

    fn members_reply(&self) -> MembersReply {
        Inner::members_reply(self)
    }
}
