//! One live registration: its keys claimed on a lease (only if free, or held at this node's
//! own address by its dead predecessor), kept alive by a background task, given up when another
//! process takes a key, deleted on a clean exit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;

use super::error::RegistryError;
use super::service::Service;
use crate::client::{
    Compare, CompareResult, CompareTarget, KeyValue, KvClient, PutRequest, RangeRequest, RequestOp,
    ResponseOp, TxnRequest,
};

/// State shared between a [`Registration`] handle and its background task.
pub(super) struct Shared {
    pub(super) client: Arc<dyn KvClient>,
    /// (key, JSON value) of each node.
    /// (Rewritten by [`Registration::update`].)
    pub(super) entries: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    /// The registry's key prefix.
    pub(super) prefix: String,
    pub(super) ttl: i64,
    /// Current lease id (0 before the first grant).
    pub(super) lease: Mutex<i64>,
    /// (key, holder address) once another process holds one of our keys: renewals stop.
    pub(super) taken_by: std::sync::Mutex<Option<(String, String)>>,
}

/// `<prefix><service>/<node id>`, a `/` inside a name becoming `-`.
pub(super) fn key_of(prefix: &str, service: &str, node_id: &str) -> String {
    format!(
        "{prefix}{}/{}",
        service.replace('/', "-"),
        node_id.replace('/', "-")
    )
}

/// Pause between attempts to claim a node id that is still held.
pub(super) const TAKEN_RETRY: Duration = Duration::from_millis(500);

/// `put key (on lease) if the key is free, else read it`.
pub(super) fn claim(key: &str, value: &[u8], lease: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create(0),
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            lease,
            ..PutRequest::default()
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        })],
    }
}

/// The key a failed claim read back, if any.
pub(super) fn held(responses: &[ResponseOp]) -> Option<&KeyValue> {
    match responses.first() {
        Some(ResponseOp::Range(r)) => r.kvs.first(),
        _ => None,
    }
}

/// The node address in a registration value, if it can be read.
pub(super) fn address_in(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<Service>(value)
        .ok()
        .and_then(|s| s.nodes.into_iter().next())
        .map(|n| n.address)
}

/// The node address in a registration value ("unknown" if it cannot be read).
pub(super) fn holder_address(kv: &KeyValue) -> String {
    address_in(&kv.value).unwrap_or_else(|| "unknown".to_string())
}

impl Shared {
    /// The (key, value) of every node, as last registered or updated.
    fn entries(&self) -> Vec<(String, Vec<u8>)> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Grant a new lease and put every key on it, each only if free (`Taken` otherwise, with
    /// nothing left registered).
    pub(super) async fn put_all_on_new_lease(&self) -> Result<(), RegistryError> {
        let mut lease = self.lease.lock().await;
        let granted = self.client.lease_grant(self.ttl, 0).await?.body;
        for (key, value) in self.entries() {
            let r = match self.client.txn(claim(&key, &value, granted.id)).await {
                Ok(r) => r,
                Err(e) => {
                    // Do not leave a half-registered lease behind.
                    let _ = self.client.lease_revoke(granted.id).await;
                    return Err(e.into());
                }
            };
            if !r.body.succeeded {
                let kv = held(&r.body.responses);
                // Held at our own address: our dead predecessor (no other live process can
                // serve that address), whose lease has not expired yet. Take the key over.
                if let Some(kv) = kv.filter(|kv| address_in(&kv.value) == address_in(&value)) {
                    let takeover = TxnRequest {
                        compare: vec![Compare {
                            result: CompareResult::Equal,
                            target: CompareTarget::Mod(kv.mod_revision),
                            key: key.as_bytes().to_vec(),
                            range_end: Vec::new(),
                        }],
                        success: vec![RequestOp::Put(PutRequest {
                            key: key.as_bytes().to_vec(),
                            value: value.clone(),
                            lease: granted.id,
                            ..PutRequest::default()
                        })],
                        failure: Vec::new(),
                    };
                    match self.client.txn(takeover).await {
                        Ok(t) if t.body.succeeded => {
                            tracing::info!(
                                key,
                                "registry: took over the key of this node's previous run"
                            );
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = self.client.lease_revoke(granted.id).await;
                            return Err(e.into());
                        }
                    }
                }
                let _ = self.client.lease_revoke(granted.id).await;
                let holder = kv.map_or_else(|| "unknown".into(), holder_address);
                return Err(RegistryError::Taken {
                    key: key.clone(),
                    holder,
                });
            }
        }
        *lease = granted.id;
        Ok(())
    }

    /// One round: renew the lease, re-register when it is gone, re-put keys that went missing.
    /// `Taken` when another lease holds one of our keys.
    async fn refresh(&self) -> Result<(), RegistryError> {
        let lease = *self.lease.lock().await;
        match self.client.lease_keep_alive_once(lease).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                tracing::warn!(
                    lease,
                    "registry: registration lease lost, registering again"
                );
                return self.put_all_on_new_lease().await;
            }
            Err(e) => return Err(e.into()),
        }
        for (key, value) in self.entries() {
            // Put only if the key is missing: a failed compare writes nothing.
            let r = self.client.txn(claim(&key, &value, lease)).await?;
            if r.body.succeeded {
                tracing::warn!(key, "registry: node key was missing, put it back");
            } else if let Some(kv) = held(&r.body.responses).filter(|kv| kv.lease != lease) {
                return Err(RegistryError::Taken {
                    key: key.clone(),
                    holder: holder_address(kv),
                });
            }
        }
        Ok(())
    }
}

pub(super) async fn registration_loop(
    shared: Arc<Shared>,
    interval: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut pause = interval;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(pause) => {}
        }
        // A failure (store unreachable) is retried sooner; a lease that expired meanwhile is found
        // by the next keepalive and re-registered.
        pause = match shared.refresh().await {
            Ok(()) => interval,
            Err(RegistryError::Taken { key, holder }) => {
                tracing::error!(
                    key,
                    holder,
                    "registry: another process registered this node id; giving the registration up"
                );
                if let Ok(mut t) = shared.taken_by.lock() {
                    *t = Some((key, holder));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "registry: refreshing registration failed");
                interval.min(Duration::from_millis(500))
            }
        };
    }
}

/// A live registration. Call [`Registration::deregister`] on a clean exit so the nodes disappear
/// at once; dropping the handle only stops the renewals (the keys expire with the lease).
pub struct Registration {
    pub(super) shared: Arc<Shared>,
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub(super) task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The node keys of this registration.
    pub fn keys(&self) -> Vec<String> {
        self.shared.entries().into_iter().map(|(k, _)| k).collect()
    }

    /// The lease currently holding the keys.
    pub async fn lease_id(&self) -> i64 {
        *self.shared.lease.lock().await
    }

    /// Rewrite the nodes of this registration (same ids, new address or metadata) on its own
    /// lease, as go-micro re-registers a running service; watchers see an update. Nodes this
    /// registration does not hold are refused (`Taken` if another process holds them).
    pub async fn update(&self, service: &Service) -> Result<(), RegistryError> {
        let lease = *self.shared.lease.lock().await;
        let mut entries = self.shared.entries();
        for node in &service.nodes {
            let key = key_of(&self.shared.prefix, &service.name, &node.id);
            let Some(slot) = entries.iter_mut().find(|(k, _)| *k == key) else {
                return Err(RegistryError::NoNodes);
            };
            let one = Service {
                nodes: vec![node.clone()],
                ..service.clone()
            };
            let value = serde_json::to_vec(&one)?;
            // Only while the key is still ours.
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Lease(lease),
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.clone(),
                    lease,
                    ..PutRequest::default()
                })],
                failure: vec![RequestOp::Range(RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..RangeRequest::default()
                })],
            };
            let r = self.shared.client.txn(txn).await?;
            if !r.body.succeeded {
                let holder =
                    held(&r.body.responses).map_or_else(|| "nobody".into(), holder_address);
                return Err(RegistryError::Taken { key, holder });
            }
            slot.1 = value;
        }
        if let Ok(mut e) = self.shared.entries.lock() {
            *e = entries;
        }
        Ok(())
    }

    /// Another process registered one of this registration's node ids (`Taken`, naming it):
    /// the registration stopped renewing and must not be used any more.
    pub fn taken_by(&self) -> Option<RegistryError> {
        let t = self.shared.taken_by.lock().ok()?;
        t.as_ref().map(|(key, holder)| RegistryError::Taken {
            key: key.clone(),
            holder: holder.clone(),
        })
    }

    /// Stop renewing, delete the keys (those still on our lease: never another process's) and
    /// revoke the lease.
    pub async fn deregister(mut self) -> Result<(), RegistryError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Let an in-flight refresh finish so it cannot re-put a key after the delete.
            let _ = task.await;
        }
        let lease = *self.shared.lease.lock().await;
        for (key, _) in self.shared.entries() {
            let mine = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Lease(lease),
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp::DeleteRange(crate::client::DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })],
                failure: Vec::new(),
            };
            self.shared.client.txn(mine).await?;
        }
        match self.shared.client.lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
