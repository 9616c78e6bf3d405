//! etcd v3 gRPC services: thin translation between protobuf and the store's own types.
//!
//! `context.rs` (shared ApiContext + headers), `error.rs` (etcd's status catalogue),
//! `convert.rs` (proto ⇄ store types), one file per service.

pub mod cluster;
pub mod context;
pub mod convert;
pub mod election;
pub mod error;
pub mod h2_authority;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

pub use context::ApiContext;

use crawler_proto::etcdserverpb::cluster_server::ClusterServer;
use crawler_proto::etcdserverpb::kv_server::KvServer;
use crawler_proto::etcdserverpb::lease_server::LeaseServer;
use crawler_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crawler_proto::etcdserverpb::watch_server::WatchServer;
use crawler_proto::v3electionpb::election_server::ElectionServer;
use crawler_proto::v3lockpb::lock_server::LockServer;

/// Extra bytes gRPC may decode beyond `--max-request-bytes` (etcd's `grpcOverheadBytes`), so an
/// oversized request reaches the handler and gets etcd's "request is too large" instead of a
/// transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// All of etcd's services of one member, ready to be served by tonic.
pub fn router(ctx: ApiContext) -> tonic::service::Routes {
    let max = ctx
        .limits
        .max_request_bytes
        .saturating_add(GRPC_OVERHEAD_BYTES);
    tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(ctx.clone())).max_decoding_message_size(max),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(ctx.clone())).max_decoding_message_size(max),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(ctx.clone())).max_decoding_message_size(max),
    )
    .add_service(
        ClusterServer::new(cluster::ClusterService::new(ctx.clone()))
            .max_decoding_message_size(max),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService::new(ctx.clone()))
            .max_decoding_message_size(max),
    )
    .add_service(
        ElectionServer::new(election::ElectionService::new(ctx.clone()))
            .max_decoding_message_size(max),
    )
    .add_service(LockServer::new(lock::LockService::new(ctx)).max_decoding_message_size(max))
}
