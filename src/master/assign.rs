//! Least-loaded assignment of resources to workers.
//!
//! Load is counted from the store (each stored resource's `AssignedNode`), never from a master's
//! memory, so a new leader starts from the truth. Ties go to the smallest node id, so the outcome
//! is deterministic: 3 workers and 30 resources added one by one end at 10 each.

use std::collections::{BTreeMap, HashMap};

use crate::coord::registry::Node;
use crate::model::resource::Resource;

/// Resources per live worker, counted from stored resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    counts: HashMap<String, usize>,
}

impl Load {
    /// Count the resources assigned to each of `workers` (assignments to other nodes are ignored).
    pub fn count<'a>(
        resources: impl IntoIterator<Item = &'a Resource>,
        workers: &BTreeMap<String, Node>,
    ) -> Self {
        let mut counts: HashMap<String, usize> = workers.keys().map(|id| (id.clone(), 0)).collect();
        for r in resources {
            if let Some(n) = r.assigned_id().and_then(|id| counts.get_mut(id)) {
                *n += 1;
            }
        }
        Self { counts }
    }

    /// Resources currently counted for `node_id`.
    pub fn of(&self, node_id: &str) -> usize {
        self.counts.get(node_id).copied().unwrap_or(0)
    }

    /// Record one more resource on `node_id`.
    pub fn add(&mut self, node_id: &str) {
        *self.counts.entry(node_id.to_string()).or_insert(0) += 1;
    }

    /// Record one resource less on `node_id`.
    #[cfg(test)]
    pub fn remove(&mut self, node_id: &str) {
        if let Some(n) = self.counts.get_mut(node_id) {
            *n = n.saturating_sub(1);
        }
    }

    /// The worker with the fewest resources, the smallest id among equals; `None` without workers.
    #[cfg(test)]
    pub fn least_loaded<'w>(&self, workers: &'w BTreeMap<String, Node>) -> Option<&'w Node> {
        // BTreeMap iterates in id order and min_by_key keeps the first minimum: ties → smallest id.
        workers
            .iter()
            .min_by_key(|(id, _)| self.of(id))
            .map(|(_, n)| n)
    }

    /// [`Load::least_loaded`] among the workers that can run `task` ([`Node::can_run`]).
    pub fn least_loaded_for<'w>(
        &self,
        workers: &'w BTreeMap<String, Node>,
        task: &str,
    ) -> Option<&'w Node> {
        workers
            .iter()
            .filter(|(_, n)| n.can_run(task))
            .min_by_key(|(id, _)| self.of(id))
            .map(|(_, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resource::format_assigned;

    fn workers(ids: &[&str]) -> BTreeMap<String, Node> {
        ids.iter()
            .map(|id| {
                (
                    id.to_string(),
                    Node {
                        id: id.to_string(),
                        address: format!("{id}:1"),
                        ..Node::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn spreads_evenly_and_deterministically() {
        let ws = workers(&["w3", "w1", "w2"]);
        let mut stored: Vec<Resource> = Vec::new();
        for i in 0..30 {
            let load = Load::count(&stored, &ws);
            let n = load.least_loaded(&ws).unwrap();
            if i == 0 {
                assert_eq!(n.id, "w1");
            }
            stored.push(Resource {
                name: format!("r{i}"),
                assigned_node: format_assigned(&n.id, &n.address),
                ..Resource::default()
            });
        }
        let load = Load::count(&stored, &ws);
        for id in ["w1", "w2", "w3"] {
            assert_eq!(load.of(id), 10);
        }
    }

    #[test]
    fn ignores_dead_and_unassigned() {
        let ws = workers(&["w1", "w2"]);
        let rs = vec![
            Resource {
                assigned_node: "dead|x".into(),
                ..Resource::default()
            },
            Resource::default(),
            Resource {
                assigned_node: "w1|w1:1".into(),
                ..Resource::default()
            },
        ];
        let mut load = Load::count(&rs, &ws);
        assert_eq!(load.of("w1"), 1);
        assert_eq!(load.of("dead"), 0);
        assert_eq!(load.least_loaded(&ws).unwrap().id, "w2");
        load.add("w2");
        load.add("w2");
        assert_eq!(load.least_loaded(&ws).unwrap().id, "w1");
        load.remove("w2");
        assert_eq!(load.least_loaded(&ws).unwrap().id, "w1");
        assert!(load.least_loaded(&BTreeMap::new()).is_none());
        // Only workers that list the task (or list nothing) are candidates.
        let mut limited = ws.clone();
        if let Some(w1) = limited.get_mut("w1") {
            w1.metadata
                .insert(crate::coord::registry::TASKS_METADATA.into(), "a,b".into());
        }
        assert_eq!(load.least_loaded_for(&limited, "b").unwrap().id, "w1");
        assert_eq!(load.least_loaded_for(&limited, "c").unwrap().id, "w2");
        limited.remove("w2");
        limited.remove("w3");
        assert!(load.least_loaded_for(&limited, "c").is_none());
    }
}
