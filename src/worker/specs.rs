//! The task specs a worker knows: those in the store (`/crawler/specs/`, followed by the
//! assignment loop's watch) first, then the worker's own `[[Tasks]]` as a fallback (a store
//! without specs, e.g. a master of an older version or a plain etcd seeded by hand).

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::client::KeyValue;
use crate::crawl::validate::parse_spec_json;
use crate::model::spec::SPEC_PREFIX;
use crate::model::task::TaskConfig;

/// Specs by task name.
pub(super) struct SpecBook {
    store: Mutex<HashMap<String, TaskConfig>>,
    local: HashMap<String, TaskConfig>,
}

impl SpecBook {
    /// A book with the worker's own tasks as the fallback.
    pub(super) fn new(local: HashMap<String, TaskConfig>) -> Self {
        Self {
            store: Mutex::default(),
            local,
        }
    }

    /// The spec to run `name` with: the store's, else the local one.
    pub(super) fn get(&self, name: &str) -> Option<TaskConfig> {
        self.stored(name).or_else(|| self.local.get(name).cloned())
    }

    /// The store's spec of `name`, as last seen.
    pub(super) fn stored(&self, name: &str) -> Option<TaskConfig> {
        self.store.lock().get(name).cloned()
    }

    /// Replace the store's specs with a full listing.
    pub(super) fn load(&self, kvs: &[KeyValue]) {
        let specs = kvs.iter().filter_map(decode).collect();
        *self.store.lock() = specs;
    }

    /// A spec key was written: the task's name when it holds a valid spec (the caller compares
    /// it with what runs).
    pub(super) fn put(&self, kv: &KeyValue) -> Option<String> {
        let (name, task) = decode(kv)?;
        self.store.lock().insert(name.clone(), task);
        Some(name)
    }

    /// A spec key was deleted. The run goes on with the spec it has: a deleted task's resource
    /// goes in the same txn, which stops it.
    pub(super) fn delete(&self, key: &[u8]) {
        if let Some(name) = name_of(key) {
            self.store.lock().remove(&name);
        }
    }
}

fn name_of(key: &[u8]) -> Option<String> {
    let name = key.strip_prefix(SPEC_PREFIX.as_bytes())?;
    (!name.is_empty() && !name.contains(&b'/')).then(|| String::from_utf8_lossy(name).into_owned())
}

/// A stored spec; `None` (logged) when it does not decode or names another task than its key.
fn decode(kv: &KeyValue) -> Option<(String, TaskConfig)> {
    let name = name_of(&kv.key)?;
    match parse_spec_json(&kv.value) {
        Ok(t) if t.name == name => Some((name, t)),
        Ok(t) => {
            tracing::warn!(key = %String::from_utf8_lossy(&kv.key), spec_name = %t.name, "worker: spec names another task than its key; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "worker: invalid spec in the store; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..KeyValue::default()
        }
    }

    #[test]
    fn store_spec_wins_over_local_and_changes_are_noticed() {
        let mut local = HashMap::new();
        let mut l = TaskConfig::named("a");
        l.max_pages = 1;
        local.insert("a".to_string(), l.clone());
        let book = SpecBook::new(local);
        assert_eq!(book.get("a"), Some(l));
        assert_eq!(
            book.put(&kv("/crawler/specs/a", r#"{"Name":"a","MaxPages":2}"#)),
            Some("a".into())
        );
        assert_eq!(book.get("a").map(|t| t.max_pages), Some(2));
        // Bad or mismatched specs are ignored.
        assert_eq!(book.put(&kv("/crawler/specs/a", r#"{"Name":"b"}"#)), None);
        assert_eq!(book.put(&kv("/crawler/specs/a", "{")), None);
        book.delete(b"/crawler/specs/a");
        assert_eq!(book.get("a").map(|t| t.max_pages), Some(1));
        book.load(&[kv("/crawler/specs/c", r#"{"Name":"c"}"#)]);
        assert!(book.get("c").is_some());
        assert!(book.get("zz").is_none());
    }
}
