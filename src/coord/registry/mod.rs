//! Service registry in go-micro's etcd layout, so go-micro services and tools interoperate.
//!
//! Each node of a service is one key, `/micro/registry/<service>/<node id>` (a `/` inside a name
//! becomes `-`), whose value is the JSON of the service with exactly that node:
//! `{"name":"go.micro.server.worker","version":"latest","metadata":null,"endpoints":[],
//! "nodes":[{"id":"go.micro.server.worker-2","address":"192.168.0.107:9089","metadata":{...}}]}`.
//!
//! A registration puts its keys on a lease with the registration TTL, each only if the key is
//! free: a node id held by another live process is refused (after waiting one TTL, in case the
//! holder is this node's own previous, dead run; a key held at this node's own address is that
//! dead run's and is taken over at once). A background task renews the lease (keepalive
//! every interval, a third of the TTL by default), re-puts a key that went missing, and
//! re-grants the lease and re-puts every key when the lease is gone (store restart, partition
//! longer than the TTL, revoked behind our back). A key found held by another lease means
//! another process took the node id: the registration stops and reports it
//! ([`Registration::taken_by`]) instead of fighting over the key. Watch results are `create` (PUT with
//! `create_revision == mod_revision`), `update` (other PUTs) and `delete` (decoded from `prev_kv`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Mutex};

use crate::client::{EventType, KeyValue, KvClient, KvClientExt, WatchSpec, WatchStream};

mod error;
mod registration;
mod service;

pub use error::RegistryError;
pub use registration::Registration;
use registration::{key_of, registration_loop, Shared, TAKEN_RETRY};
pub use service::{Endpoint, Node, Service, Value, TASKS_METADATA};

/// go-micro's registry key prefix.
pub const DEFAULT_PREFIX: &str = "/micro/registry/";

/// What a watch result reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A node key appeared.
    Create,
    /// A node key was rewritten.
    Update,
    /// A node key was deleted (or its lease expired).
    Delete,
}

impl Action {
    /// go-micro's name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One watch result: the action and the service with the node concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryEvent {
    /// What happened.
    pub action: Action,
    /// The service with exactly the node concerned.
    pub service: Service,
    /// Store revision of the change.
    pub revision: i64,
}

/// How to register.
#[derive(Clone, Copy, Debug)]
pub struct RegisterOptions {
    /// Lease TTL: how long the registration outlives its process.
    pub ttl: Duration,
    /// How often the lease is renewed and the keys checked (default: a third of the TTL).
    pub interval: Option<Duration>,
}

impl RegisterOptions {
    /// Register with this TTL, renewing every third of it.
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            interval: None,
        }
    }
}

impl Default for RegisterOptions {
    fn default() -> Self {
        Self::ttl(Duration::from_secs(10))
    }
}

/// The registry on a KV client.
#[derive(Clone)]
pub struct Registry {
    client: Arc<dyn KvClient>,
    prefix: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Registry {
    /// A registry under go-micro's prefix `/micro/registry/`.
    pub fn new(client: Arc<dyn KvClient>) -> Self {
        Self::with_prefix(client, DEFAULT_PREFIX)
    }

    /// A registry under another prefix (a trailing `/` is added when missing).
    pub fn with_prefix(client: Arc<dyn KvClient>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { client, prefix }
    }

    /// Key of one node: `<prefix><service>/<node id>`, with `/` in names replaced by `-`.
    pub fn node_key(&self, service: &str, node_id: &str) -> String {
        key_of(&self.prefix, service, node_id)
    }

    /// Prefix of every node key of a service (ends with `/`).
    pub fn service_prefix(&self, service: &str) -> String {
        format!("{}{}/", self.prefix, service.replace('/', "-"))
    }

    /// Register every node of `service` on a fresh lease and keep the registration alive until
    /// [`Registration::deregister`] (or until the handle is dropped: the keys then expire with
    /// the lease).
    pub async fn register(
        &self,
        service: &Service,
        opts: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        if service.nodes.is_empty() {
            return Err(RegistryError::NoNodes);
        }
        let mut entries = Vec::with_capacity(service.nodes.len());
        for node in &service.nodes {
            let one = Service {
                nodes: vec![node.clone()],
                ..service.clone()
            };
            entries.push((
                self.node_key(&service.name, &node.id),
                serde_json::to_vec(&one)?,
            ));
        }
        let ttl_s = (opts.ttl.as_secs_f64().ceil() as i64).max(1);
        let interval = opts
            .interval
            .unwrap_or(opts.ttl / 3)
            .max(Duration::from_millis(100));
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            entries: std::sync::Mutex::new(entries),
            prefix: self.prefix.clone(),
            ttl: ttl_s,
            lease: Mutex::new(0),
            taken_by: std::sync::Mutex::new(None),
        });
        // A key still held may be this node's own previous run, dead but not yet expired: give
        // it one TTL to go before refusing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(ttl_s as u64 + 1);
        loop {
            match shared.put_all_on_new_lease().await {
                Ok(()) => break,
                Err(RegistryError::Taken { key, holder })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!(
                        key,
                        holder,
                        "registry: node id taken; waiting for it to expire"
                    );
                    tokio::time::sleep(TAKEN_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(registration_loop(shared.clone(), interval, stop_rx));
        Ok(Registration {
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Delete the keys of every node of `service` (also those registered by another process).
    pub async fn deregister(&self, service: &Service) -> Result<(), RegistryError> {
        if service.nodes.is_empty() {
            return Err(RegistryError::NoNodes);
        }
        for node in &service.nodes {
            self.client
                .delete_key(self.node_key(&service.name, &node.id))
                .await?;
        }
        Ok(())
    }

    /// Every registered version of the service named `name`, nodes merged per version; empty when
    /// no node is registered.
    pub async fn get_service(&self, name: &str) -> Result<Vec<Service>, RegistryError> {
        Ok(self.get_service_with_revision(name).await?.0)
    }

    /// [`Registry::get_service`] and the store revision it was read at (to watch from the next one).
    pub async fn get_service_with_revision(
        &self,
        name: &str,
    ) -> Result<(Vec<Service>, i64), RegistryError> {
        let reply = self.client.get_prefix(self.service_prefix(name)).await?;
        Ok((merge(&reply.body), reply.revision))
    }

    /// Every registered service, one entry per name and version with its nodes merged.
    pub async fn list_services(&self) -> Result<Vec<Service>, RegistryError> {
        let reply = self.client.get_prefix(self.prefix.clone()).await?;
        Ok(merge(&reply.body))
    }

    /// Watch every service (`None`) or one, from now (`start_revision` 0) or from a revision.
    pub async fn watch(
        &self,
        service: Option<&str>,
        start_revision: i64,
    ) -> Result<RegistryWatcher, RegistryError> {
        let prefix = match service {
            Some(s) => self.service_prefix(s),
            None => self.prefix.clone(),
        };
        let spec = WatchSpec::prefix(prefix)
            .with_prev_kv()
            .from_revision(start_revision);
        let stream = self.client.watch(spec).await?;
        Ok(RegistryWatcher {
            stream,
            pending: VecDeque::new(),
        })
    }
}

/// Group decoded node values by name and version, merging their nodes, in key order.
fn merge(kvs: &[KeyValue]) -> Vec<Service> {
    let mut out: Vec<Service> = Vec::new();
    for kv in kvs {
        let Some(s) = decode(&kv.value, &kv.key) else {
            continue;
        };
        match out
            .iter_mut()
            .find(|o| o.name == s.name && o.version == s.version)
        {
            Some(o) => o.nodes.extend(s.nodes),
            None => out.push(s),
        }
    }
    out
}

/// Decode a node value; a malformed one is logged and skipped (as go-micro does).
fn decode(value: &[u8], key: &[u8]) -> Option<Service> {
    match serde_json::from_slice::<Service>(value) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "registry: undecodable service value");
            None
        }
    }
}

/// A stream of registry changes.
#[derive(Debug)]
pub struct RegistryWatcher {
    stream: WatchStream,
    pending: VecDeque<RegistryEvent>,
}

impl RegistryWatcher {
    /// The next change; `None` once the watch has ended, `Err` for the error that ended it.
    pub async fn next(&mut self) -> Option<Result<RegistryEvent, RegistryError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            let batch = match self.stream.next().await? {
                Ok(b) => b,
                Err(e) => return Some(Err(e.into())),
            };
            for ev in batch.events {
                let (action, service) = match ev.kind {
                    EventType::Put => {
                        let action = if ev.kv.create_revision == ev.kv.mod_revision {
                            Action::Create
                        } else {
                            Action::Update
                        };
                        (action, decode(&ev.kv.value, &ev.kv.key))
                    }
                    EventType::Delete => {
                        let service = ev.prev_kv.as_ref().and_then(|p| decode(&p.value, &p.key));
                        if service.is_none() {
                            tracing::warn!(key = %String::from_utf8_lossy(&ev.kv.key), "registry: delete without a decodable prev_kv");
                        }
                        (Action::Delete, service)
                    }
                };
                if let Some(service) = service {
                    self.pending.push_back(RegistryEvent {
                        action,
                        service,
                        revision: ev.kv.mod_revision,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn json_matches_go_micro() {
        let mut md = BTreeMap::new();
        md.insert("k".to_string(), "v".to_string());
        let s = Service::with_node(
            "go.micro.server.worker",
            Node {
                id: "go.micro.server.worker-2".into(),
                address: "192.168.0.107:9089".into(),
                metadata: md,
            },
        );
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"name":"go.micro.server.worker","version":"latest","metadata":null,"endpoints":[],"nodes":[{"id":"go.micro.server.worker-2","address":"192.168.0.107:9089","metadata":{"k":"v"}}]}"#
        );
    }

    #[test]
    fn decodes_go_nulls() {
        let go = r#"{"name":"svc","version":"latest","metadata":null,"endpoints":null,
            "nodes":[{"id":"n1","address":"a:1","metadata":null}]}"#;
        let s: Service = serde_json::from_str(go).unwrap();
        assert_eq!(s.nodes[0].id, "n1");
        assert!(s.endpoints.is_empty());
        assert!(s.nodes[0].metadata.is_empty());
        let ep = r#"{"name":"S.M","request":{"name":"r","type":"Req","values":null},"response":null,"metadata":{"stream":"false"}}"#;
        let e: Endpoint = serde_json::from_str(ep).unwrap();
        assert_eq!(e.request.unwrap().kind, "Req");
    }

    #[test]
    fn merges_nodes_per_version() {
        let enc = |name: &str, ver: &str, id: &str| KeyValue {
            key: format!("/micro/registry/{name}/{id}").into_bytes(),
            value: serde_json::to_vec(&Service {
                version: ver.into(),
                ..Service::with_node(
                    name,
                    Node {
                        id: id.into(),
                        ..Node::default()
                    },
                )
            })
            .unwrap(),
            ..KeyValue::default()
        };
        let kvs = vec![
            enc("a", "1", "a1"),
            enc("a", "1", "a2"),
            enc("a", "2", "a3"),
            KeyValue {
                value: b"garbage".to_vec(),
                ..KeyValue::default()
            },
        ];
        let m = merge(&kvs);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].nodes.len(), 2);
        assert_eq!(m[1].nodes[0].id, "a3");
    }
}
