//! The KV client abstraction the master, worker, registry and election are built on.
//!
//! One object-safe trait, [`KvClient`], covers what they need of an etcd-compatible store: range, put,
//! delete, txn, compact, watch and leases. It speaks the store's own request/response types
//! (`crawler_storage::types`), which mirror etcd's messages without any gRPC dependency, so an
//! in-process implementation on the local member needs no protobuf translation at all.
//!
//! Why object-safe (boxed futures) rather than generic: the master picks the implementation at
//! runtime (in-process member or remote endpoints) and passes `Arc<dyn KvClient>` to the registry,
//! election and resource code. One heap allocation per call is noise next to a network round trip or
//! a raft commit.
//!
//! Implementations: [`remote::RemoteKvClient`] (etcd gRPC over a list of endpoints with failover);
//! [`local::LocalClient`] on the store member running in the same process (no network hop).

mod api;
pub mod keepalive;
pub mod local;
pub mod remote;

pub use api::{
    prefix_range_end, BoxFuture, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Event, EventType, KeyValue, KvClient, KvClientExt, KvError, KvResult,
    LeaseGrant, LeaseKeepAlive, LeaseTimeToLive, PutRequest, PutResponse, RangeRequest,
    RangeResponse, Reply, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
    WatchBatch, WatchItem, WatchSpec, WatchStream,
};
pub use keepalive::LeaseKeeper;
pub use remote::{RemoteConfig, RemoteKvClient};
