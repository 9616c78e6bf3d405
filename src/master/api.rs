//! What the master's API answers: the results and errors the gRPC and HTTP front ends and the
//! forwarder share.

use crate::client::KvError;
use crate::coord::registry::Node;
use crate::model::resource::Resource;

/// Message when no master leads.
pub const NO_LEADER: &str = "no master leader";

/// An API error, mapped to a gRPC code and an HTTP status by the front ends.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Bad input (gRPC InvalidArgument, HTTP 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// The resource exists (gRPC AlreadyExists, HTTP 409).
    #[error("{0}")]
    AlreadyExists(String),
    /// The resource does not exist (gRPC NotFound, HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// No leader, leader unreachable or not ready, store unavailable (gRPC Unavailable, HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (gRPC Internal, HTTP 500).
    #[error("{0}")]
    Internal(String),
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        ApiError::Unavailable(format!("store: {e}"))
    }
}

impl From<tonic::Status> for ApiError {
    /// A forwarded call's status, code by code.
    fn from(s: tonic::Status) -> Self {
        let msg = s.message().to_string();
        match s.code() {
            tonic::Code::InvalidArgument => ApiError::InvalidArgument(msg),
            tonic::Code::AlreadyExists => ApiError::AlreadyExists(msg),
            tonic::Code::NotFound => ApiError::NotFound(msg),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ApiError::Unavailable(msg),
            _ => ApiError::Internal(msg),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ApiError::AlreadyExists(m) => tonic::Status::already_exists(m),
            ApiError::NotFound(m) => tonic::Status::not_found(m),
            ApiError::Unavailable(m) => tonic::Status::unavailable(m),
            ApiError::Internal(m) => tonic::Status::internal(m),
        }
    }
}

/// Result of an add: the stored resource and the worker it went to (none while no worker lives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddOutcome {
    /// The resource as stored.
    pub resource: Resource,
    /// The assigned worker.
    pub node: Option<Node>,
}

/// The current leader as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    /// Election value, `master<id>-<address>`.
    pub value: String,
    /// Master id from the value (0 when the value is not in the master format).
    pub master_id: u64,
    /// Advertised gRPC address from the value.
    pub address: String,
    /// The election key's create revision.
    pub create_revision: i64,
    /// Whether the answering master is the leader.
    pub is_self: bool,
}

/// Split an election value `master<id>-<address>` into id and address.
pub fn parse_value(value: &str) -> Option<(u64, &str)> {
    let rest = value.strip_prefix("master")?;
    let (id, addr) = rest.split_once('-')?;
    let id = id.parse().ok()?;
    (!addr.is_empty()).then_some((id, addr))
}
