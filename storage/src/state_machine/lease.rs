//! The lease table: granted leases and the keys attached to them.
//!
//! Expiry clocks live on the leader (the lessor); this table only knows what the log decided.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::LeaseInfo;

/// One granted lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseEntry {
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// Every granted lease by id.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseTable {
    map: BTreeMap<i64, LeaseEntry>,
}

impl LeaseTable {
    /// True when lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.map.contains_key(&id)
    }

    /// The lease `id`.
    pub fn get(&self, id: i64) -> Option<&LeaseEntry> {
        self.map.get(&id)
    }

    /// Add lease `id` (the caller checked it is new).
    pub fn grant(&mut self, id: i64, ttl: i64) {
        self.map.insert(
            id,
            LeaseEntry {
                ttl,
                keys: BTreeSet::new(),
            },
        );
    }

    /// Put back a lease removed earlier (undo).
    pub fn restore(&mut self, id: i64, entry: LeaseEntry) {
        self.map.insert(id, entry);
    }

    /// Remove lease `id`.
    pub fn remove(&mut self, id: i64) -> Option<LeaseEntry> {
        self.map.remove(&id)
    }

    /// Attach `key` to lease `id`; true if it was not attached before.
    pub fn attach(&mut self, id: i64, key: &[u8]) -> bool {
        match self.map.get_mut(&id) {
            Some(l) => l.keys.insert(key.to_vec()),
            None => false,
        }
    }

    /// Detach `key` from lease `id`; true if it was attached.
    pub fn detach(&mut self, id: i64, key: &[u8]) -> bool {
        match self.map.get_mut(&id) {
            Some(l) => l.keys.remove(key),
            None => false,
        }
    }

    /// Lease `id` with its keys, sorted.
    pub fn info(&self, id: i64) -> Option<LeaseInfo> {
        self.map.get(&id).map(|l| LeaseInfo {
            id,
            ttl: l.ttl,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    /// Every lease, keys left empty.
    pub fn list(&self) -> Vec<LeaseInfo> {
        self.map
            .iter()
            .map(|(&id, l)| LeaseInfo {
                id,
                ttl: l.ttl,
                keys: Vec::new(),
            })
            .collect()
    }
}
