//! etcd v3 gRPC services: thin translation between protobuf and the store's own types.
//!
//! `context.rs` (shared ApiContext + headers), `error.rs` (etcd's status catalogue),
//! `convert.rs` (proto ⇄ store types), one file per service.

pub(crate) mod cluster;
pub mod context;
pub(crate) mod convert;
pub(crate) mod error;
pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod maintenance;
pub(crate) mod validate;
pub mod watch;

pub use context::ApiContext;

use crawler_proto::etcdserverpb::cluster_server::ClusterServer;
use crawler_proto::etcdserverpb::kv_server::KvServer;
use crawler_proto::etcdserverpb::lease_server::LeaseServer;
use crawler_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crawler_proto::etcdserverpb::watch_server::WatchServer;

/// Extra bytes gRPC may decode beyond `--max-request-bytes` (etcd's `grpcOverheadBytes`), so an
/// oversized request reaches the handler and gets etcd's "request is too large" instead of a
/// transport error.
pub(crate) const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// etcd's core services of one member (KV, Watch, Lease, Cluster, Maintenance), ready to be
/// served by tonic; Election and Lock are added by `crate::services`.
pub(crate) fn router(ctx: ApiContext) -> tonic::service::Routes {
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
        MaintenanceServer::new(maintenance::MaintenanceService::new(ctx))
            .max_decoding_message_size(max),
    )
}
