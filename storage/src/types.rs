//! The store's own request, response and event types.
//!
//! They mirror etcd's v3 messages field by field so that the gRPC layer is a thin translation, but they
//! carry no protobuf or gRPC dependency. Commands are serialized into the raft log with serde.

use serde::{Deserialize, Serialize};

/// One version of one key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
}

/// Kind of a change event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Put,
    Delete,
}

/// One change to one key at one revision, as etcd's `mvccpb.Event`.
///
/// For a delete, `kv` holds the key, `mod_revision` = the deletion revision and everything else zero.
/// `prev_kv` is always filled by the store when a previous version exists; watchers that did not ask
/// for it drop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventType,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// Result ordering of a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

/// Field a range is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd `RangeRequest`. `range_end` empty = the single key; `[0]` = every key >= `key`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// etcd `RangeResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

/// etcd `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

/// etcd `PutResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

/// etcd `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

/// etcd `DeleteRangeResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// Comparison operator of a txn compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a txn compare looks at, with the operand to compare against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

/// etcd `Compare`: holds for every key in `[key, range_end)` (or the single key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// One operation of a txn branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

/// The result of one txn operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

/// etcd `TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

impl TxnRequest {
    /// True when neither branch (nor any nested txn) writes.
    pub fn is_read_only(&self) -> bool {
        fn ro(ops: &[RequestOp]) -> bool {
            ops.iter().all(|op| match op {
                RequestOp::Range(_) => true,
                RequestOp::Txn(t) => t.is_read_only(),
                _ => false,
            })
        }
        ro(&self.success) && ro(&self.failure)
    }
}

/// etcd `TxnResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

/// A lease as the state machine knows it (expiry clocks live on the leader, not here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: i64,
    /// TTL in seconds as granted.
    pub ttl: i64,
    /// Keys attached to the lease, sorted.
    pub keys: Vec<Vec<u8>>,
}

/// Attributes a member publishes about itself once it runs (etcd's "publish" request).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// A replicated state change: the payload of every application raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Compact history at or below `revision`.
    Compact {
        revision: i64,
    },
    /// Create lease `id` (chosen by the proposer, > 0) with `ttl` seconds.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Delete lease `id` and every key attached to it, in one revision.
    LeaseRevoke {
        id: i64,
    },
    /// Record a member's name and client URLs.
    PublishMember {
        id: u64,
        attrs: MemberAttrs,
    },
    /// Forget a removed member's attributes.
    ForgetMember {
        id: u64,
    },
    /// Several commands proposed as one log entry (group proposal). Each is applied in order
    /// exactly as if it were its own entry (own revision, own result or error); a batch inside
    /// a batch is rejected.
    Batch(Vec<Command>),
    /// The leader's lessor expiring lease `id`: a `LeaseRevoke` that takes effect only in a log
    /// entry of `term`, the raft term whose clocks decided the expiry. A decision that reaches
    /// the log in a later term (queued or retried across a change of leadership) changes
    /// nothing, since the new term restarted every lease's clock. (Last variant: the log's
    /// encoding of the others is unchanged.)
    LeaseExpire {
        id: i64,
        term: u64,
    },
    /// Raise (`activate`) or clear an alarm of member `member` (etcd's `AlarmRequest`); a
    /// `member` of 0 with `activate: false` clears that alarm on every member. Appended last,
    /// so the log's encoding of the other commands is unchanged.
    Alarm {
        activate: bool,
        member: u64,
        alarm: AlarmType,
    },
}

/// An alarm kind, numbered as etcd's `AlarmType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    /// The database passed `--quota-backend-bytes`: writes that add data are refused.
    NoSpace,
    /// A corruption check found members disagreeing.
    Corrupt,
}

/// One active alarm: which member raised it and what kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    pub member: u64,
    pub alarm: AlarmType,
}

impl Command {
    /// Whether etcd's capped applier refuses this command while a NOSPACE alarm is active:
    /// puts, txns that may put, lease grants (deletes, compaction, revokes go on).
    pub fn adds_data(&self) -> bool {
        fn ops_put(ops: &[RequestOp]) -> bool {
            ops.iter().any(|op| match op {
                RequestOp::Put(_) => true,
                RequestOp::Txn(t) => ops_put(&t.success) || ops_put(&t.failure),
                _ => false,
            })
        }
        match self {
            Command::Put(_) | Command::LeaseGrant { .. } => true,
            Command::Txn(t) => ops_put(&t.success) || ops_put(&t.failure),
            _ => false,
        }
    }
}

/// The result of applying one command, decided deterministically on every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke,
    /// Membership entries, blank entries and member attribute updates.
    Done,
    /// One response per command of a `Command::Batch`, in order.
    Batch(Vec<ApplyResponse>),
}

/// What the state machine answers for one applied log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// The store's revision right after this entry was applied.
    pub revision: i64,
    /// The command's result, or the etcd error it failed with (a failed command changes nothing).
    pub result: Result<CommandResult, crate::error::ApplyError>,
}

impl Default for ApplyResponse {
    fn default() -> Self {
        Self {
            revision: 0,
            result: Ok(CommandResult::Done),
        }
    }
}
