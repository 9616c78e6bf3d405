//! A registered service as go-micro stores it: JSON under `<prefix><service>/<node id>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Decode JSON `null` (what Go writes for a nil slice or map) as the type's default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A service and some of its nodes (go-micro's `registry.Service`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Service name, e.g. `go.micro.server.worker`.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Version; go-micro's default is `latest`.
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    /// Service metadata; `None` is written as `null` like Go's nil map.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The service's RPC endpoints.
    #[serde(default, deserialize_with = "null_default")]
    pub endpoints: Vec<Endpoint>,
    /// Nodes running the service.
    #[serde(default, deserialize_with = "null_default")]
    pub nodes: Vec<Node>,
}

/// One running instance of a service (go-micro's `registry.Node`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node id, unique within the service, e.g. `go.micro.server.worker-2`.
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    /// Address it serves on, `host:port`.
    #[serde(default, deserialize_with = "null_default")]
    pub address: String,
    /// Node metadata.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: BTreeMap<String, String>,
}

/// Node metadata key listing the tasks a crawler worker can run, comma-separated. A node without
/// it (a plain go-micro service) is not limited.
pub const TASKS_METADATA: &str = "tasks";

impl Node {
    /// Whether this node can run `task` (see [`TASKS_METADATA`]).
    pub fn can_run(&self, task: &str) -> bool {
        match self.metadata.get(TASKS_METADATA) {
            None => true,
            Some(list) => list.split(',').any(|t| t == task),
        }
    }
}

/// An RPC endpoint of a service (go-micro's `registry.Endpoint`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `Service.Method`.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Request type description.
    #[serde(default)]
    pub request: Option<Value>,
    /// Response type description.
    #[serde(default)]
    pub response: Option<Value>,
    /// Endpoint metadata.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A type description of an endpoint's argument (go-micro's `registry.Value`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Field name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Type name.
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    /// Nested fields.
    #[serde(default, deserialize_with = "null_default")]
    pub values: Vec<Value>,
}

impl Service {
    /// A service with go-micro's default version `latest` and one node.
    pub fn with_node(name: impl Into<String>, node: Node) -> Self {
        Self {
            name: name.into(),
            version: "latest".into(),
            metadata: None,
            endpoints: Vec::new(),
            nodes: vec![node],
        }
    }
}
