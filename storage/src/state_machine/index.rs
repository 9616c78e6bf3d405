//! In-memory key index: for every key, the revisions of its stored versions (like etcd's keyIndex).
//!
//! Only the newest live version of each key is kept in memory (writes need it for create
//! revision, version, lease and prev_kv, and most reads are at the current revision); older
//! versions are read from sled on demand. Generations are implicit: a tombstone entry ends one,
//! the next put starts another.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::types::KeyValue;

/// A revision: `main` is the store revision, `sub` orders the changes inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Rev {
    pub main: i64,
    pub sub: i64,
}

/// One stored version of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdxEntry {
    pub rev: Rev,
    pub tombstone: bool,
}

/// All stored versions of one key, ascending by revision.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyIndex {
    pub revs: Vec<IdxEntry>,
    /// Lease of the current version (0 if none or if the key is deleted).
    pub lease: i64,
    /// The newest version's key-value when it is live (`None` after a delete).
    pub cur: Option<Arc<KeyValue>>,
}

impl KeyIndex {
    /// The newest entry with `main <= at`.
    pub fn at(&self, at: i64) -> Option<IdxEntry> {
        let n = self.revs.partition_point(|e| e.rev.main <= at);
        n.checked_sub(1).map(|i| self.revs[i])
    }

    /// Revision of the version visible at `at`, if the key exists then.
    pub fn live_at(&self, at: i64) -> Option<Rev> {
        self.at(at).filter(|e| !e.tombstone).map(|e| e.rev)
    }

    /// The in-memory copy of the version at `rev`, if `rev` is the newest, live version.
    pub fn cached(&self, rev: Rev) -> Option<&KeyValue> {
        match (self.revs.last(), &self.cur) {
            (Some(e), Some(kv)) if e.rev == rev && !e.tombstone => Some(kv),
            _ => None,
        }
    }

    /// True when the newest entry is a live version.
    pub fn is_live(&self) -> bool {
        self.revs.last().is_some_and(|e| !e.tombstone)
    }

    /// The entry just before `rev`.
    pub fn before(&self, rev: Rev) -> Option<IdxEntry> {
        let n = self.revs.partition_point(|e| e.rev < rev);
        n.checked_sub(1).map(|i| self.revs[i])
    }

    /// Drop history not needed to read at revisions >= `at`: keep the newest entry <= `at`
    /// unless it is a tombstone, drop everything older. Dropped revisions go to `removed`.
    pub fn compact(&mut self, at: i64, removed: &mut Vec<Rev>) {
        let n = self.revs.partition_point(|e| e.rev.main <= at);
        if n == 0 {
            return;
        }
        let keep_from = if self.revs[n - 1].tombstone { n } else { n - 1 };
        removed.extend(self.revs.drain(..keep_from).map(|e| e.rev));
    }
}

/// The key index.
pub(crate) type Index = BTreeMap<Vec<u8>, KeyIndex>;

/// Lower and upper bound of a key range.
pub(crate) type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Bounds of an etcd key range: empty `end` = the single key; `[0]` = every key >= `key`;
/// otherwise `[key, end)`. `None` when the range is empty (`end <= key`).
pub(crate) fn range_bounds(key: &[u8], end: &[u8]) -> Option<KeyBounds> {
    if end.is_empty() {
        Some((Bound::Included(key.to_vec()), Bound::Included(key.to_vec())))
    } else if end == [0] {
        Some((Bound::Included(key.to_vec()), Bound::Unbounded))
    } else if end <= key {
        None
    } else {
        Some((Bound::Included(key.to_vec()), Bound::Excluded(end.to_vec())))
    }
}

/// True when `k` lies in the etcd range `(key, end)`.
pub(crate) fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

/// Iterate the index entries of an etcd key range.
pub(crate) fn range_iter<'a>(
    index: &'a Index,
    key: &[u8],
    end: &[u8],
) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyIndex)> + 'a {
    range_bounds(key, end)
        .into_iter()
        .flat_map(move |b| index.range::<Vec<u8>, _>(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(main: i64, sub: i64, tombstone: bool) -> IdxEntry {
        IdxEntry {
            rev: Rev { main, sub },
            tombstone,
        }
    }

    #[test]
    fn compact_keeps_latest_live() {
        let mut ki = KeyIndex {
            revs: vec![
                e(2, 0, false),
                e(3, 0, false),
                e(4, 0, true),
                e(6, 0, false),
            ],
            lease: 0,
            cur: None,
        };
        let mut removed = vec![];
        ki.compact(3, &mut removed);
        assert_eq!(removed, vec![Rev { main: 2, sub: 0 }]);
        removed.clear();
        ki.compact(5, &mut removed);
        assert_eq!(removed.len(), 2);
        assert_eq!(ki.revs, vec![e(6, 0, false)]);
    }

    #[test]
    fn bounds() {
        assert!(range_bounds(b"b", b"a").is_none());
        assert!(in_range(b"zz", b"a", &[0]));
        assert!(!in_range(b"b", b"a", b"b"));
    }
}
