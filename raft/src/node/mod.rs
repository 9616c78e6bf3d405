//! The running member: startup, leader-side operations, forwarding and background tasks.
//!
//! This file only wires the rooms together: `inner` holds the member's shared state, `start` and
//! `identity` bring it up, `leader` runs operations on the leader (here or forwarded), `tasks`
//! are its background loops, `peer` serves the peer service, `status` answers what the member
//! knows, `handoff` hands leadership over and `shutdown` stops it. Membership changes are in `crate::membership`.

mod handoff;
mod identity;
mod inner;
mod leader;
mod peer;
mod shutdown;
mod start;
mod status;
mod tasks;

pub(crate) use identity::new_cluster_ids;
pub(crate) use inner::Inner;
pub(crate) use leader::{LeaderOk, LeaderOp};
pub(crate) use start::start;
