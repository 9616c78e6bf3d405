//! etcd's request checks (`v3rpc/key.go`: same checks, same order, same texts) on the store's
//! own request types, shared by the gRPC KV service and the in-process client.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use crawler_storage::types as st;
use tonic::Status;

use super::error;

/// etcd's `checkRangeRequest`.
pub(crate) fn check_range(r: &st::RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(error::empty_key());
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
pub(crate) fn check_put(r: &st::PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(error::empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(error::value_provided());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(error::lease_provided());
    }
    Ok(())
}

/// etcd's `checkDeleteRequest`.
pub(crate) fn check_delete(r: &st::DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(error::empty_key());
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: op counts per branch (nested txns get what the parent left),
/// non-empty keys everywhere, no empty ops.
pub(crate) fn check_txn(r: &st::TxnRequest, max_txn_ops: usize) -> Result<(), Status> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(error::too_many_ops());
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(error::empty_key());
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        check_request_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_request_op(op: &st::RequestOp, max_txn_ops: usize) -> Result<(), Status> {
    match op {
        st::RequestOp::Range(r) => check_range(r),
        st::RequestOp::Put(r) => check_put(r),
        st::RequestOp::DeleteRange(r) => check_delete(r),
        st::RequestOp::Txn(t) => check_txn(t, max_txn_ops),
    }
}

/// etcd's `isTxnSerializable`: every top-level op of both branches is a serializable range.
pub(crate) fn txn_is_serializable(r: &st::TxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .all(|op| matches!(op, st::RequestOp::Range(rr) if rr.serializable))
}

/// A set of half-open key intervals kept as disjoint merged intervals, so that "is this key
/// inside any deleted range" is a logarithmic lookup (etcd uses an interval tree for the same).
#[derive(Default)]
struct IntervalSet {
    /// begin → end, disjoint.
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl IntervalSet {
    fn insert(&mut self, mut begin: Vec<u8>, mut end: Vec<u8>) {
        if begin >= end {
            return;
        }
        if let Some((b, e)) = self
            .map
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(begin.as_slice())))
            .next_back()
        {
            if *e >= begin {
                let (b, e) = (b.clone(), e.clone());
                self.map.remove(&b);
                begin = b;
                if e > end {
                    end = e;
                }
            }
        }
        let covered: Vec<Vec<u8>> = self
            .map
            .range::<[u8], _>((
                Bound::Included(begin.as_slice()),
                Bound::Included(end.as_slice()),
            ))
            .map(|(b, _)| b.clone())
            .collect();
        for b in covered {
            if let Some(e) = self.map.remove(&b) {
                if e > end {
                    end = e;
                }
            }
        }
        self.map.insert(begin, end);
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.map
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, e)| e.as_slice() > key)
    }

    fn union(&mut self, other: IntervalSet) {
        for (b, e) in other.map {
            self.insert(b, e);
        }
    }
}

/// etcd's `checkIntervals`: inside one branch (nested txns included) a key may not be put twice
/// nor put and deleted; the two branches of a nested txn may put the same key.
///
/// Like etcd, a delete's `range_end` is taken literally as an interval end, so `"\0"` (all keys
/// from `key`) yields an empty interval and is not checked against puts.
pub(crate) fn check_intervals(reqs: &[st::RequestOp]) -> Result<HashSet<Vec<u8>>, Status> {
    check_intervals_inner(reqs).map(|(puts, _)| puts)
}

fn check_intervals_inner(
    reqs: &[st::RequestOp],
) -> Result<(HashSet<Vec<u8>>, IntervalSet), Status> {
    let mut dels = IntervalSet::default();
    for req in reqs {
        if let st::RequestOp::DeleteRange(d) = req {
            if d.range_end.is_empty() {
                let mut end = d.key.clone();
                end.push(0);
                dels.insert(d.key.clone(), end);
            } else {
                dels.insert(d.key.clone(), d.range_end.clone());
            }
        }
    }

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for req in reqs {
        let st::RequestOp::Txn(t) = req else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals_inner(&t.success)?;
        let (puts_else, dels_else) = check_intervals_inner(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.contains(k) {
                return Err(error::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            // The branches are exclusive, so the same key in both is fine.
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.contains(&k) {
                return Err(error::duplicate_key());
            }
            puts.insert(k);
        }
        dels.union(dels_then);
        dels.union(dels_else);
    }

    for req in reqs {
        let st::RequestOp::Put(p) = req else {
            continue;
        };
        if puts.contains(&p.key) || dels.contains(&p.key) {
            return Err(error::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> st::RequestOp {
        st::RequestOp::Put(st::PutRequest {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        })
    }

    fn del(k: &str, end: &str) -> st::RequestOp {
        st::RequestOp::DeleteRange(st::DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            ..Default::default()
        })
    }

    fn txn(success: Vec<st::RequestOp>, failure: Vec<st::RequestOp>) -> st::RequestOp {
        st::RequestOp::Txn(st::TxnRequest {
            compare: vec![],
            success,
            failure,
        })
    }

    #[test]
    fn intervals_like_etcd() {
        assert!(check_intervals(&[put("a"), put("b")]).is_ok());
        assert!(check_intervals(&[put("a"), put("a")]).is_err());
        assert!(check_intervals(&[put("a"), del("a", "")]).is_err());
        assert!(check_intervals(&[put("b"), del("a", "c")]).is_err());
        assert!(check_intervals(&[put("c"), del("a", "c")]).is_ok());
        // etcd quirk: "\0" end is an empty interval.
        assert!(check_intervals(&[put("b"), del("a", "\0")]).is_ok());
        // Nested: both branches may put the same key...
        assert!(check_intervals(&[txn(vec![put("a")], vec![put("a")])]).is_ok());
        // ...but not together with the parent.
        assert!(check_intervals(&[txn(vec![put("a")], vec![]), put("a")]).is_err());
        assert!(check_intervals(&[txn(vec![del("a", "z")], vec![]), put("b")]).is_err());
        assert!(check_intervals(&[del("a", "z"), txn(vec![], vec![put("b")])]).is_err());
    }

    #[test]
    fn interval_set_merges() {
        let mut s = IntervalSet::default();
        s.insert(b"b".to_vec(), b"d".to_vec());
        s.insert(b"f".to_vec(), b"h".to_vec());
        s.insert(b"c".to_vec(), b"g".to_vec());
        assert_eq!(s.map.len(), 1);
        assert!(s.contains(b"b") && s.contains(b"e") && s.contains(b"g\xff"));
        assert!(!s.contains(b"h") && !s.contains(b"a"));
    }

    #[test]
    fn too_many_ops() {
        let ops: Vec<_> = (0..5).map(|i| put(&format!("k{i}"))).collect();
        let r = st::TxnRequest {
            compare: vec![],
            success: ops,
            failure: vec![],
        };
        assert!(check_txn(&r, 5).is_ok());
        assert_eq!(
            check_txn(&r, 4).expect_err("too many").message(),
            "etcdserver: too many operations in txn request"
        );
    }
}
