//! The etcd-compatible store member: raft and storage behind etcd's gRPC services, the watch hub,
//! the lessor, the auto-compactor and the transport shim.

pub mod compactor;
pub mod grpc;
pub mod lessor;
pub mod limits;
pub mod member;
pub mod restore;
pub(crate) mod transport;
pub mod watch_hub;
