//! Reads of the MVCC store, following etcd's mvcc and apply semantics: range, compare, the
//! read-only side of txn (compare path and checks, also used by writes) and event history.
//!
//! Reads go through a [`View`]: the index and the rows in sled, plus the rows applied but not yet
//! written to sled.

use std::cmp::Ordering;

use crate::error::{ApplyError, StoreError};
use crate::types::*;

use super::codec::{self, Row};
use super::fault::Fault;
use super::index::{in_range, range_iter, KeyIndex, Rev};
use super::state::State;

/// A read view: the state plus sled, at view revision `cur`.
pub(crate) struct View<'a> {
    pub st: &'a State,
    pub tree: &'a sled::Tree,
    /// The revision a read at "revision 0" sees.
    pub cur: i64,
}

impl View<'_> {
    /// The row stored at `rev`.
    pub(crate) fn row(&self, rev: Rev) -> Result<Row, StoreError> {
        if let Some(r) = self.st.pending.get(&rev) {
            return Ok(r.clone());
        }
        match self.tree.get(codec::row_key(rev))? {
            Some(v) => codec::decode(&v),
            None => Err(StoreError::Corrupt(format!("missing row {rev:?}"))),
        }
    }

    pub(crate) fn kv(&self, rev: Rev) -> Result<KeyValue, StoreError> {
        Ok(self.row(rev)?.kv)
    }

    /// The version of `ki`'s key at `rev`: from memory when it is the newest, else from sled.
    fn kv_of(&self, ki: &KeyIndex, rev: Rev) -> Result<KeyValue, StoreError> {
        match ki.cached(rev) {
            Some(kv) => Ok(kv.clone()),
            None => self.kv(rev),
        }
    }

    /// The version of `key` visible at `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>, StoreError> {
        let Some(ki) = self.st.index.get(key) else {
            return Ok(None);
        };
        match ki.live_at(at) {
            Some(rev) => self.kv_of(ki, rev).map(Some),
            None => Ok(None),
        }
    }

    /// Every live version in the etcd range at `at`, in key order.
    pub fn live_kvs(&self, key: &[u8], end: &[u8], at: i64) -> Result<Vec<KeyValue>, StoreError> {
        range_iter(&self.st.index, key, end)
            .filter_map(|(_, ki)| ki.live_at(at).map(|rev| (ki, rev)))
            .map(|(ki, rev)| self.kv_of(ki, rev))
            .collect()
    }

    /// etcd's Range (mvcc rangeKeys + the apply layer's filters, sort and limit).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Fault> {
        let mut at = req.revision;
        if at > self.cur {
            return Err(ApplyError::FutureRevision.into());
        }
        if at <= 0 {
            at = self.cur;
        }
        // etcd: a read exactly at the compaction point is still served.
        if at < self.st.compact {
            return Err(ApplyError::Compacted.into());
        }
        // Like etcd: with a sort order or a filter, fetch everything, then cut; else fetch one
        // more than the limit to know whether there is more.
        let fetch_all = req.sort_order != SortOrder::None
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let want = if fetch_all || req.limit <= 0 {
            usize::MAX
        } else {
            usize::try_from(req.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        };
        let mut count = 0i64;
        let mut revs = Vec::new();
        for (_, ki) in range_iter(&self.st.index, &req.key, &req.range_end) {
            if let Some(rev) = ki.live_at(at) {
                count += 1;
                if !req.count_only && revs.len() < want {
                    revs.push((ki, rev));
                }
            }
        }
        if req.count_only {
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        let mut kvs = revs
            .into_iter()
            .map(|(ki, r)| self.kv_of(ki, r))
            .collect::<Result<Vec<_>, _>>()?;
        if req.max_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
        }
        if req.min_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
        }
        if req.max_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
        }
        if req.min_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
        }
        // etcd: a non-key sort target without an order sorts ascending.
        let order = if req.sort_target != SortTarget::Key && req.sort_order == SortOrder::None {
            SortOrder::Ascend
        } else {
            req.sort_order
        };
        let target = req.sort_target;
        let cmp = move |a: &KeyValue, b: &KeyValue| -> Ordering {
            match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        match order {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by(cmp),
            SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        }
        let mut more = false;
        if req.limit > 0 {
            let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
            if kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }

    /// etcd's applyCompare: must hold for every key in range; an empty range compares as a zero
    /// KeyValue, except that a VALUE compare then fails.
    pub fn compare(&self, c: &Compare) -> Result<bool, StoreError> {
        let kvs = self.live_kvs(&c.key, &c.range_end, self.cur)?;
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    /// etcd's compareToPath: the branch taken by the txn and every nested txn on the chosen
    /// path, depth first, all evaluated against this (pre-txn) view.
    pub fn compare_to_path(
        &self,
        req: &TxnRequest,
        path: &mut Vec<bool>,
    ) -> Result<(), StoreError> {
        let mut ok = true;
        for c in &req.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let RequestOp::Txn(t) = op {
                self.compare_to_path(t, path)?;
            }
        }
        Ok(())
    }

    /// etcd's checkTxn: validate every op on the path before anything is written.
    pub fn check_txn(&self, req: &TxnRequest, path: &[bool], pos: &mut usize) -> Result<(), Fault> {
        let ok = path.get(*pos).copied().unwrap_or(false);
        *pos += 1;
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            match op {
                RequestOp::Range(r) => {
                    if r.revision != 0 {
                        if r.revision > self.cur {
                            return Err(ApplyError::FutureRevision.into());
                        }
                        if r.revision < self.st.compact {
                            return Err(ApplyError::Compacted.into());
                        }
                    }
                }
                RequestOp::Put(p) => {
                    if (p.ignore_value || p.ignore_lease) && self.get(&p.key, self.cur)?.is_none() {
                        return Err(ApplyError::KeyNotFound.into());
                    }
                    if p.lease != 0 && !self.st.leases.contains(p.lease) {
                        return Err(ApplyError::LeaseNotFound.into());
                    }
                }
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => self.check_txn(t, path, pos)?,
            }
        }
        Ok(())
    }

    /// Evaluate a txn without writes.
    pub fn txn_read_only(&self, req: &TxnRequest) -> Result<TxnResponse, Fault> {
        let mut path = Vec::new();
        self.compare_to_path(req, &mut path)?;
        self.check_txn(req, &path, &mut 0)?;
        self.exec_read(req, &path, &mut 0)
    }

    fn exec_read(
        &self,
        req: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
    ) -> Result<TxnResponse, Fault> {
        let ok = path.get(*pos).copied().unwrap_or(false);
        *pos += 1;
        let ops = if ok { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.exec_read(t, path, pos)?),
                // Callers only send read-only txns here; a write is skipped, never applied.
                RequestOp::Put(_) => {
                    tracing::warn!("read-only txn evaluation skipped a put");
                    ResponseOp::Put(PutResponse::default())
                }
                RequestOp::DeleteRange(_) => {
                    tracing::warn!("read-only txn evaluation skipped a delete");
                    ResponseOp::DeleteRange(DeleteRangeResponse::default())
                }
            });
        }
        Ok(TxnResponse {
            succeeded: ok,
            responses,
        })
    }

    /// History of the etcd range with revisions in `start..=end`, from the stored rows.
    pub fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        start: i64,
        end: i64,
        max_events: usize,
    ) -> Result<Vec<Event>, Fault> {
        // Revision 1 is the empty store: nothing is missing below it unless compacted.
        let start = start.max(1);
        if start <= self.st.compact {
            return Err(ApplyError::Compacted.into());
        }
        let last = end.min(self.st.current);
        if start > last {
            return Ok(Vec::new());
        }
        let lo = codec::row_key(Rev {
            main: start,
            sub: 0,
        });
        let hi = codec::row_key(Rev {
            main: last.saturating_add(1),
            sub: 0,
        });
        let stored = self.tree.range(lo..hi).map(|item| {
            let (k, v) = item?;
            let rev = codec::parse_row_key(&k)
                .ok_or_else(|| StoreError::Corrupt("bad row key".into()))?;
            Ok::<_, StoreError>((rev, codec::decode::<Row>(&v)?))
        });
        let pending_lo = Rev {
            main: start,
            sub: 0,
        };
        let pending_hi = Rev {
            main: last.saturating_add(1),
            sub: 0,
        };
        // Rows not yet in sled all come after the stored ones.
        let pending = self
            .st
            .pending
            .range(pending_lo..pending_hi)
            .map(|(rev, row)| Ok((*rev, row.clone())));
        let mut out: Vec<Event> = Vec::new();
        for item in stored.chain(pending) {
            let (rev, row) = item?;
            if max_events > 0
                && out.len() >= max_events
                && out.last().is_some_and(|e| e.kv.mod_revision != rev.main)
            {
                break;
            }
            if !in_range(&row.kv.key, key, range_end) {
                continue;
            }
            let prev = match self.st.index.get(&row.kv.key).and_then(|ki| ki.before(rev)) {
                Some(e) if !e.tombstone => Some(self.kv(e.rev)?),
                _ => None,
            };
            out.push(Event {
                kind: if row.tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                },
                kv: row.kv,
                prev_kv: prev,
            });
        }
        Ok(out)
    }
}

/// etcd's compareKV.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
