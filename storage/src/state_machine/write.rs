//! Writes to the MVCC store, following etcd's mvcc and apply semantics: put, delete, txn,
//! compaction, leases and member attributes.
//!
//! Writes go through a [`WriteCtx`], one per command: it records an undo log so that a command
//! failing half-way (e.g. a txn whose later op fails) changes nothing.

use std::sync::Arc;

use crate::error::{ApplyError, StoreError};
use crate::types::*;

use super::codec::{self, Row};
use super::fault::Fault;
use super::index::{IdxEntry, Rev};
use super::lease::LeaseEntry;
use super::read::View;
use super::state::{BatchOp, State};

/// One in-memory change, recorded so that a failed command can be rolled back.
enum Undo {
    /// An entry was pushed to `key`'s index; its lease and current value were these.
    Index {
        key: Vec<u8>,
        old_lease: i64,
        old_cur: Option<Arc<KeyValue>>,
    },
    Attached {
        id: i64,
        key: Vec<u8>,
    },
    Detached {
        id: i64,
        key: Vec<u8>,
    },
    Pending(Rev),
    Granted(i64),
    Revoked(i64, LeaseEntry),
    Member(u64, Option<MemberAttrs>),
    Alarms(std::collections::BTreeSet<AlarmMember>),
}

/// The outcome of one successful command.
pub(crate) struct Committed {
    pub main: i64,
    /// True when the command wrote at least one key (the revision goes up).
    pub changed: bool,
    pub events: Vec<Event>,
    pub ops: Vec<BatchOp>,
}

/// The execution context of one write command; all its key writes share revision `main`.
pub(crate) struct WriteCtx<'a> {
    st: &'a mut State,
    tree: &'a sled::Tree,
    /// Raft term of the log entry being applied (for `Command::LeaseExpire`).
    term: u64,
    main: i64,
    sub: i64,
    events: Vec<Event>,
    undo: Vec<Undo>,
    ops: Vec<BatchOp>,
}

impl<'a> WriteCtx<'a> {
    /// Start a command, from a log entry of raft term `term`, on top of `st`.
    pub fn new(st: &'a mut State, tree: &'a sled::Tree, term: u64) -> WriteCtx<'a> {
        let main = st.current + 1;
        WriteCtx {
            st,
            tree,
            term,
            main,
            sub: 0,
            events: Vec::new(),
            undo: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// A view that sees this command's writes so far.
    fn view(&self) -> View<'_> {
        View {
            st: self.st,
            tree: self.tree,
            cur: if self.sub > 0 {
                self.main
            } else {
                self.main - 1
            },
        }
    }

    fn next_rev(&mut self) -> Rev {
        let rev = Rev {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        rev
    }

    /// Store a new version of `row.kv.key` at `rev` and index it.
    fn write_row(&mut self, rev: Rev, row: Row, lease: i64) -> Result<(), StoreError> {
        self.ops
            .push((codec::row_key(rev).to_vec(), Some(codec::encode(&row)?)));
        let key = row.kv.key.clone();
        let tombstone = row.tombstone;
        self.undo.push(Undo::Pending(rev));
        let cur = (!tombstone).then(|| Arc::new(row.kv.clone()));
        self.st.pending.insert(rev, row);
        let ki = self.st.index.entry(key.clone()).or_default();
        let old_lease = ki.lease;
        ki.revs.push(IdxEntry { rev, tombstone });
        ki.lease = lease;
        let old_cur = std::mem::replace(&mut ki.cur, cur);
        self.undo.push(Undo::Index {
            key: key.clone(),
            old_lease,
            old_cur,
        });
        // Move the key from its old lease to the new one.
        if old_lease != 0 && self.st.leases.detach(old_lease, &key) {
            self.undo.push(Undo::Detached {
                id: old_lease,
                key: key.clone(),
            });
        }
        if lease != 0 && self.st.leases.attach(lease, &key) {
            self.undo.push(Undo::Attached { id: lease, key });
        }
        Ok(())
    }

    /// etcd's Put.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Fault> {
        if req.lease != 0 && !self.st.leases.contains(req.lease) {
            return Err(ApplyError::LeaseNotFound.into());
        }
        let view = self.view();
        let prev = view.get(&req.key, view.cur)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(ApplyError::KeyNotFound.into());
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let rev = self.next_rev();
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
            mod_revision: rev.main,
            version: prev.as_ref().map_or(0, |p| p.version) + 1,
            value,
            lease,
        };
        self.write_row(
            rev,
            Row {
                kv: kv.clone(),
                tombstone: false,
            },
            lease,
        )?;
        self.events.push(Event {
            kind: EventType::Put,
            kv,
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    /// Delete the live key `prev.key` (its current version is `prev`).
    fn delete_key(&mut self, prev: KeyValue) -> Result<(), StoreError> {
        let rev = self.next_rev();
        let kv = KeyValue {
            key: prev.key.clone(),
            mod_revision: rev.main,
            ..KeyValue::default()
        };
        self.write_row(
            rev,
            Row {
                kv: kv.clone(),
                tombstone: true,
            },
            0,
        )?;
        self.events.push(Event {
            kind: EventType::Delete,
            kv,
            prev_kv: Some(prev),
        });
        Ok(())
    }

    /// etcd's DeleteRange.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Fault> {
        let view = self.view();
        let kvs = view.live_kvs(&req.key, &req.range_end, view.cur)?;
        let deleted = kvs.len() as i64;
        let prev_kvs = if req.prev_kv { kvs.clone() } else { Vec::new() };
        for kv in kvs {
            self.delete_key(kv)?;
        }
        Ok(DeleteRangeResponse { deleted, prev_kvs })
    }

    /// etcd's Txn: compares and checks against the pre-txn state, then the ops in order.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, Fault> {
        let mut path = Vec::new();
        {
            let view = self.view();
            view.compare_to_path(req, &mut path)?;
            view.check_txn(req, &path, &mut 0)?;
        }
        self.exec_txn(req, &path, &mut 0)
    }

    fn exec_txn(
        &mut self,
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
                RequestOp::Range(r) => ResponseOp::Range(self.view().range(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.exec_txn(t, path, pos)?),
            });
        }
        Ok(TxnResponse {
            succeeded: ok,
            responses,
        })
    }

    /// Create lease `id`.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<CommandResult, Fault> {
        if self.st.leases.contains(id) {
            return Err(ApplyError::LeaseExists.into());
        }
        self.st.leases.grant(id, ttl);
        self.undo.push(Undo::Granted(id));
        self.ops.push((
            codec::lease_key(id).to_vec(),
            Some(codec::encode_i64(ttl).to_vec()),
        ));
        Ok(CommandResult::LeaseGrant { id, ttl })
    }

    /// Delete lease `id` and every key attached to it, in key order, in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<CommandResult, Fault> {
        let keys: Vec<Vec<u8>> = match self.st.leases.get(id) {
            Some(l) => l.keys.iter().cloned().collect(),
            None => return Err(ApplyError::LeaseNotFound.into()),
        };
        for key in keys {
            let prev = {
                let view = self.view();
                view.get(&key, view.cur)?
            };
            match prev {
                Some(prev) => self.delete_key(prev)?,
                None => tracing::warn!("lease {id} lists a key that does not exist"),
            }
        }
        if let Some(entry) = self.st.leases.remove(id) {
            self.undo.push(Undo::Revoked(id, entry));
        }
        self.ops.push((codec::lease_key(id).to_vec(), None));
        Ok(CommandResult::LeaseRevoke)
    }

    /// Drop history not needed to read at revisions >= `revision`.
    pub fn compact(&mut self, revision: i64) -> Result<CommandResult, Fault> {
        if revision > self.st.current {
            return Err(ApplyError::FutureRevision.into());
        }
        if revision <= self.st.compact {
            return Err(ApplyError::Compacted.into());
        }
        // Nothing below can fail, so no undo is recorded.
        let mut removed = Vec::new();
        self.st.index.retain(|_, ki| {
            ki.compact(revision, &mut removed);
            !ki.revs.is_empty()
        });
        for rev in removed {
            self.st.pending.remove(&rev);
            self.ops.push((codec::row_key(rev).to_vec(), None));
        }
        self.st.compact = revision;
        Ok(CommandResult::Compact)
    }

    /// Record a member's attributes.
    pub fn publish_member(&mut self, id: u64, attrs: &MemberAttrs) -> Result<CommandResult, Fault> {
        let old = self.st.members.insert(id, attrs.clone());
        self.undo.push(Undo::Member(id, old));
        self.ops
            .push((codec::member_key(id).to_vec(), Some(codec::encode(attrs)?)));
        Ok(CommandResult::Done)
    }

    /// Forget a member's attributes.
    pub fn forget_member(&mut self, id: u64) -> Result<CommandResult, Fault> {
        let old = self.st.members.remove(&id);
        self.undo.push(Undo::Member(id, old));
        self.ops.push((codec::member_key(id).to_vec(), None));
        Ok(CommandResult::Done)
    }

    /// Raise or clear an alarm (etcd's alarm store: persisted, the same on every member).
    pub fn alarm(
        &mut self,
        activate: bool,
        member: u64,
        alarm: AlarmType,
    ) -> Result<CommandResult, Fault> {
        let old = self.st.alarms.clone();
        if activate {
            self.st.alarms.insert(AlarmMember { member, alarm });
        } else {
            self.st
                .alarms
                .retain(|a| !(a.alarm == alarm && (member == 0 || a.member == member)));
        }
        if self.st.alarms != old {
            let list: Vec<AlarmMember> = self.st.alarms.iter().copied().collect();
            self.ops.push((
                codec::meta_key(codec::META_ALARMS),
                Some(codec::encode(&list)?),
            ));
        }
        self.undo.push(Undo::Alarms(old));
        Ok(CommandResult::Done)
    }

    /// Execute one command.
    pub fn command(&mut self, cmd: &Command) -> Result<CommandResult, Fault> {
        match cmd {
            Command::Put(r) => self.put(r).map(CommandResult::Put),
            Command::DeleteRange(r) => self.delete_range(r).map(CommandResult::DeleteRange),
            Command::Txn(r) => self.txn(r).map(CommandResult::Txn),
            Command::Compact { revision } => self.compact(*revision),
            Command::LeaseGrant { id, ttl } => self.lease_grant(*id, *ttl),
            Command::LeaseRevoke { id } => self.lease_revoke(*id),
            Command::LeaseExpire { id, term } if *term == self.term => self.lease_revoke(*id),
            Command::LeaseExpire { .. } => Err(ApplyError::StaleExpiry.into()),
            Command::PublishMember { id, attrs } => self.publish_member(*id, attrs),
            Command::ForgetMember { id } => self.forget_member(*id),
            Command::Alarm {
                activate,
                member,
                alarm,
            } => self.alarm(*activate, *member, *alarm),
            // `apply_entries` unpacks batches; one reaching here was nested in another.
            Command::Batch(_) => Err(ApplyError::Internal("nested batch command".into()).into()),
        }
    }

    /// Keep the command's changes.
    pub fn finish(self) -> Committed {
        Committed {
            main: self.main,
            changed: self.sub > 0,
            events: self.events,
            ops: self.ops,
        }
    }

    /// Undo every in-memory change of the command.
    pub fn rollback(mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Index {
                    key,
                    old_lease,
                    old_cur,
                } => {
                    let now_empty = match self.st.index.get_mut(&key) {
                        Some(ki) => {
                            ki.revs.pop();
                            ki.lease = old_lease;
                            ki.cur = old_cur;
                            ki.revs.is_empty()
                        }
                        None => false,
                    };
                    if now_empty {
                        self.st.index.remove(&key);
                    }
                }
                Undo::Attached { id, key } => {
                    self.st.leases.detach(id, &key);
                }
                Undo::Detached { id, key } => {
                    self.st.leases.attach(id, &key);
                }
                Undo::Pending(rev) => {
                    self.st.pending.remove(&rev);
                }
                Undo::Granted(id) => {
                    self.st.leases.remove(id);
                }
                Undo::Revoked(id, entry) => self.st.leases.restore(id, entry),
                Undo::Alarms(old) => self.st.alarms = old,
                Undo::Member(id, old) => match old {
                    Some(a) => {
                        self.st.members.insert(id, a);
                    }
                    None => {
                        self.st.members.remove(&id);
                    }
                },
            }
        }
    }
}
