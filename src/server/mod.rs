//! The etcd-compatible store member: raft and storage behind etcd's gRPC services, the watch hub,
//! the lessor and the auto-compactor.

pub mod compactor;
pub mod grpc;
pub mod h2_authority;
pub mod lessor;
pub mod limits;
pub mod member;
pub mod watch_hub;
