//! The live worker set, kept from the registry (`GetService` then `Watch`), and its diff log line.
//!
//! Every master keeps the set and logs `worker joined: [...], leaved: [...], changed: [...]` when
//! it changes (the Go lesson's line); only the leader acts on it. The set remembers the store
//! revision it reflects, so a full refresh and the watch can run concurrently without an older
//! event undoing a newer snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::coord::registry::{Action, Node, Registry, RegistryError, RegistryEvent};

/// Pause before listing and watching again after the registry watch failed.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

/// What changed between two worker sets, node ids in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerDiff {
    /// Nodes that appeared.
    pub joined: Vec<String>,
    /// Nodes that disappeared.
    pub leaved: Vec<String>,
    /// Nodes whose registration changed (address, metadata).
    pub changed: Vec<String>,
}

impl WorkerDiff {
    /// The difference from `old` to `new`.
    pub fn between(old: &BTreeMap<String, Node>, new: &BTreeMap<String, Node>) -> Self {
        let mut d = Self::default();
        for (id, node) in new {
            match old.get(id) {
                Some(o) if o != node => d.changed.push(id.clone()),
                Some(_) => {}
                None => d.joined.push(id.clone()),
            }
        }
        d.leaved = old
            .keys()
            .filter(|id| !new.contains_key(*id))
            .cloned()
            .collect();
        d
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.leaved.is_empty() && self.changed.is_empty()
    }
}

/// Go's `%v` of a string slice: `[a b c]`.
struct GoList<'a>(&'a [String]);

impl fmt::Display for GoList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.0.join(" "))
    }
}

impl fmt::Display for WorkerDiff {
    /// `worker joined: [a b], leaved: [], changed: []`, as the Go master logs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker joined: {}, leaved: {}, changed: {}",
            GoList(&self.joined),
            GoList(&self.leaved),
            GoList(&self.changed)
        )
    }
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    /// Store revision the set reflects.
    revision: i64,
}

/// The live workers of one service, as this master last saw them.
pub struct WorkerSet {
    registry: Registry,
    service: String,
    state: Mutex<State>,
    /// Bumped on every change, so the leader can react.
    generation: watch::Sender<u64>,
}

impl fmt::Debug for WorkerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerSet")
            .field("service", &self.service)
            .field("nodes", &self.state.lock().nodes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WorkerSet {
    /// An empty set for `service` in `registry`; call [`WorkerSet::refresh`] or run
    /// [`WorkerSet::run`] to fill it.
    pub fn new(registry: Registry, service: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            service: service.into(),
            state: Mutex::new(State::default()),
            generation: watch::channel(0).0,
        })
    }

    /// The current set, by node id.
    pub fn snapshot(&self) -> BTreeMap<String, Node> {
        self.state.lock().nodes.clone()
    }

    /// A receiver whose value changes whenever the set does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Read the whole set from the registry (`GetService`) and adopt it; returns its revision.
    pub async fn refresh(&self) -> Result<i64, RegistryError> {
        let (services, revision) = self
            .registry
            .get_service_with_revision(&self.service)
            .await?;
        // Every version of the service counts (go-micro may hold several).
        let nodes: BTreeMap<String, Node> = services
            .into_iter()
            .flat_map(|s| s.nodes)
            .map(|n| (n.id.clone(), n))
            .collect();
        let mut st = self.state.lock();
        if revision >= st.revision {
            let old = std::mem::replace(&mut st.nodes, nodes);
            st.revision = revision;
            let diff = WorkerDiff::between(&old, &st.nodes);
            drop(st);
            self.changed(&diff);
        }
        Ok(revision)
    }

    /// Apply one watch event unless the set already reflects a later revision.
    ///
    /// Events of the revision the set is at are applied: one txn or one lease revoke changes
    /// several registrations at a single revision, and applying an event the set already
    /// reflects is harmless (same node inserted or removed again).
    fn apply(&self, ev: RegistryEvent) {
        let mut st = self.state.lock();
        if ev.revision < st.revision {
            return;
        }
        let old = st.nodes.clone();
        for node in ev.service.nodes {
            match ev.action {
                Action::Create | Action::Update => {
                    st.nodes.insert(node.id.clone(), node);
                }
                Action::Delete => {
                    st.nodes.remove(&node.id);
                }
            }
        }
        st.revision = ev.revision;
        let diff = WorkerDiff::between(&old, &st.nodes);
        drop(st);
        self.changed(&diff);
    }

    fn changed(&self, diff: &WorkerDiff) {
        if diff.is_empty() {
            return;
        }
        tracing::info!("{diff}");
        self.generation.send_modify(|g| *g += 1);
    }

    /// Keep the set current forever: list, then watch from the next revision; start over when
    /// the watch ends (compaction, cancel).
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.follow().await {
                tracing::warn!(error = %e, service = %self.service, "watching workers failed; listing again");
            }
            tokio::time::sleep(REWATCH_PAUSE).await;
        }
    }

    async fn follow(&self) -> Result<(), RegistryError> {
        let revision = self.refresh().await?;
        let mut watcher = self
            .registry
            .watch(Some(&self.service), revision + 1)
            .await?;
        while let Some(item) = watcher.next().await {
            self.apply(item?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, addr: &str) -> Node {
        Node {
            id: id.into(),
            address: addr.into(),
            ..Node::default()
        }
    }

    fn set(nodes: &[Node]) -> BTreeMap<String, Node> {
        nodes.iter().map(|n| (n.id.clone(), n.clone())).collect()
    }

    fn event(action: Action, n: Node, revision: i64) -> RegistryEvent {
        RegistryEvent {
            action,
            service: crate::coord::registry::Service {
                name: "go.micro.server.worker".into(),
                nodes: vec![n],
                ..Default::default()
            },
            revision,
        }
    }

    /// One revision can carry several registrations (a txn, a lease revoke): all are applied,
    /// and nothing older than the set's revision is.
    #[tokio::test]
    async fn events_sharing_a_revision_all_apply() {
        // `apply` never talks to the store; the client only has to exist.
        let client =
            crate::client::remote::RemoteKvClient::new(crate::client::remote::RemoteConfig::new([
                "127.0.0.1:1",
            ]))
            .expect("client");
        let set_ = WorkerSet::new(Registry::new(Arc::new(client)), "go.micro.server.worker");
        set_.apply(event(Action::Create, node("w1", "a:1"), 5));
        set_.apply(event(Action::Create, node("w2", "a:2"), 5));
        set_.apply(event(Action::Create, node("w3", "a:3"), 6));
        assert_eq!(
            set_.snapshot().keys().cloned().collect::<Vec<_>>(),
            ["w1", "w2", "w3"]
        );
        set_.apply(event(Action::Delete, node("w1", "a:1"), 4));
        assert!(
            set_.snapshot().contains_key("w1"),
            "a stale event is ignored"
        );
        set_.apply(event(Action::Delete, node("w1", "a:1"), 7));
        set_.apply(event(Action::Delete, node("w2", "a:2"), 7));
        assert_eq!(set_.snapshot().keys().cloned().collect::<Vec<_>>(), ["w3"]);
    }

    #[test]
    fn diff_line_is_the_go_line() {
        let a = set(&[node("w1", "a:1"), node("w2", "a:2")]);
        let b = set(&[node("w2", "a:3"), node("w3", "a:4"), node("w4", "a:5")]);
        let d = WorkerDiff::between(&a, &b);
        assert_eq!(
            d.to_string(),
            "worker joined: [w3 w4], leaved: [w1], changed: [w2]"
        );
        let d = WorkerDiff::between(
            &BTreeMap::new(),
            &set(&[node("go.micro.server.worker-2", "x")]),
        );
        assert_eq!(
            d.to_string(),
            "worker joined: [go.micro.server.worker-2], leaved: [], changed: []"
        );
        assert!(WorkerDiff::between(&a, &a).is_empty());
    }
}
