//! The etcd-compatible store member: raft and storage behind etcd's gRPC services, the watch hub,
//! the lessor, the auto-compactor, the transport shim, and monitoring (metrics, health, quota).

pub mod compactor;
pub mod grpc;
pub(crate) mod grpc_metrics;
pub(crate) mod http;
pub mod lessor;
pub mod limits;
pub(crate) mod listener;
pub mod member;
pub mod metrics;
pub mod quota;
pub mod restore;
pub(crate) mod transport;
pub mod watch_hub;
