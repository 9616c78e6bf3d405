//! Forwarding a follower's writes to the leader's `CrawlerMaster` gRPC service.
//!
//! Forwarded calls carry the [`FORWARDED`] metadata key, so the receiving master never forwards
//! them again (while leadership moves, two masters could otherwise bounce a call between them).
//! Every reply's status is checked before its body is looked at.

use std::collections::HashMap;
use std::time::Duration;

use crawler_proto::crawler::crawler_master_client::CrawlerMasterClient;
use crawler_proto::crawler::{ResourceSpec, TaskRequest};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::api::{AddOutcome, ApiError};
use super::task_api::{TaskCommand, TaskDetail};
use crate::coord::registry::Node;
use crate::model::resource::Resource;

/// Metadata key marking a call forwarded by another master.
pub const FORWARDED: &str = "x-crawler-forwarded";

/// Deadline for connecting to the leader.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one forwarded call (the leader may wait up to 5 s to become ready).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// gRPC clients to leaders, one lazily connected channel per address.
#[derive(Default)]
pub struct Forwarder {
    channels: Mutex<HashMap<String, Channel>>,
    /// `authorization` metadata for a leader that requires the masters' token.
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Forwarding with the masters' API token (if any).
    pub fn new(token: Option<String>) -> Self {
        Self {
            channels: Mutex::default(),
            auth: token.and_then(|t| format!("Bearer {t}").parse().ok()),
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        if let Some(a) = &self.auth {
            req.metadata_mut().insert("authorization", a.clone());
        }
        req.set_timeout(CALL_TIMEOUT);
        req
    }
}

/// A forwarded call's failure: a status from the leader passes through; a transport failure says
/// the leader could not be reached.
fn failed(addr: &str, s: tonic::Status) -> ApiError {
    let transport = std::error::Error::source(&s).is_some();
    if transport {
        ApiError::Unavailable(format!(
            "master leader at {addr} unreachable: {}",
            s.message()
        ))
    } else {
        ApiError::from(s)
    }
}

impl Forwarder {
    fn client(&self, addr: &str) -> Result<CrawlerMasterClient<Channel>, ApiError> {
        let mut map = self.channels.lock();
        if let Some(ch) = map.get(addr) {
            return Ok(CrawlerMasterClient::new(ch.clone()));
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ApiError::Unavailable(format!("bad master leader address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let ch = ep.connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(CrawlerMasterClient::new(ch))
    }

    /// Forward an add to the leader at `addr`.
    pub async fn add_resource(&self, addr: &str, name: &str) -> Result<AddOutcome, ApiError> {
        let mut c = self.client(addr)?;
        let reply = c
            .add_resource(self.request(ResourceSpec {
                name: name.to_string(),
                ..ResourceSpec::default()
            }))
            .await
            .map_err(|s| failed(addr, s))?
            .into_inner();
        let resource = reply.resource.ok_or_else(|| {
            ApiError::Internal(format!(
                "master leader at {addr} answered without the resource"
            ))
        })?;
        Ok(AddOutcome {
            resource: from_spec(resource),
            node: reply.node.map(|n| Node {
                id: n.id,
                address: n.address,
                ..Node::default()
            }),
        })
    }

    /// Forward a delete to the leader at `addr`.
    pub async fn delete_resource(&self, addr: &str, name: &str) -> Result<(), ApiError> {
        let mut c = self.client(addr)?;
        c.delete_resource(self.request(ResourceSpec {
            name: name.to_string(),
            ..ResourceSpec::default()
        }))
        .await
        .map_err(|s| failed(addr, s))?;
        Ok(())
    }
}

impl Forwarder {
    /// Forward a task command to the leader at `addr`.
    pub async fn task_command(
        &self,
        addr: &str,
        name: &str,
        cmd: &TaskCommand,
    ) -> Result<Option<TaskDetail>, ApiError> {
        let mut c = self.client(addr)?;
        let reply = c
            .task_command(
                self.request(TaskRequest {
                    name: name.to_string(),
                    action: cmd.action().to_string(),
                    spec_json: cmd
                        .spec()
                        .map(|t| serde_json::to_string(t).unwrap_or_default())
                        .unwrap_or_default(),
                    purge: matches!(cmd, TaskCommand::Delete { purge: true }),
                }),
            )
            .await
            .map_err(|s| failed(addr, s))?
            .into_inner();
        if matches!(cmd, TaskCommand::Delete { .. }) {
            return Ok(None);
        }
        serde_json::from_str(&reply.json).map(Some).map_err(|e| {
            ApiError::Internal(format!(
                "master leader at {addr} answered an unreadable task: {e}"
            ))
        })
    }
}

/// Protobuf resource → stored shape.
pub fn from_spec(s: ResourceSpec) -> Resource {
    Resource {
        id: s.id,
        name: s.name,
        assigned_node: s.assigned_node,
        creation_time: s.creation_time,
    }
}

/// Stored shape → protobuf resource.
pub fn to_spec(r: Resource) -> ResourceSpec {
    ResourceSpec {
        id: r.id,
        name: r.name,
        assigned_node: r.assigned_node,
        creation_time: r.creation_time,
    }
}
