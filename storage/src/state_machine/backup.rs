//! Backups at the state machine: the consistent [`Image`] a `Maintenance.Snapshot` streams, and
//! writing a verified backup file into a fresh state machine database ([`restore_backup`]).
//!
//! The image is taken under the state's read lock at the current revision R: every live key's
//! newest version is the one the key index already holds in memory (an `Arc` shared with the
//! live state, so taking the image copies no value), read from sled only in the rare case it
//! is not cached. Writes after R replace the index's `Arc`s, not the image's, so the stream stays
//! at R while the store moves on; compaction cannot touch it either.

use std::sync::Arc;

use crate::backup::{format::Header, BackupError, Image, Records, Verified};
use crate::error::StoreError;

use super::codec::{self, Row};
use super::index::Rev;
use super::read::View;
use super::state::State;

/// Rows written per sled batch while restoring.
const RESTORE_BATCH: usize = 10_000;

/// The image of `st` at its current revision.
pub(crate) fn image(
    st: &State,
    tree: &sled::Tree,
    cluster_id: u64,
    member_id: u64,
) -> Result<Image, StoreError> {
    let view = View {
        st,
        tree,
        cur: st.current,
    };
    let mut keys = Vec::with_capacity(st.index.len());
    for ki in st.index.values() {
        let Some(last) = ki.revs.last().filter(|e| !e.tombstone) else {
            continue;
        };
        let kv = match ki.cached(last.rev) {
            Some(_) => ki.cur.clone(),
            None => None,
        };
        let kv = match kv {
            Some(kv) => kv,
            None => Arc::new(view.kv(last.rev)?),
        };
        keys.push((kv, last.rev.sub));
    }
    let leases: Vec<(i64, i64)> = st.leases.list().iter().map(|l| (l.id, l.ttl)).collect();
    Ok(Image {
        header: Header {
            revision: st.current,
            compact_revision: st.compact,
            key_count: keys.len() as u64,
            lease_count: leases.len() as u64,
            cluster_id,
            member_id,
        },
        keys,
        leases,
    })
}

/// What a restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    pub revision: i64,
    pub keys: u64,
    pub leases: u64,
}

/// Write the keys and leases of `file` into the (empty) state machine of `db`: each key's version
/// at its own revision, the store's revision and compaction point at the file's revision (the
/// history before it is not in the file), no applied log id and no membership (the member's
/// first start bootstraps raft on top of it). Refuses a `db` whose state machine holds anything.
pub fn restore_backup(file: &Verified, db: &sled::Db) -> Result<RestoreSummary, BackupError> {
    let tree = db.open_tree(codec::TREE)?;
    if !tree.is_empty() {
        return Err(BackupError::Target(
            "the state machine database is not empty".into(),
        ));
    }
    let revision = file.header.revision;
    if revision < 1 {
        return Err(BackupError::Corrupt(format!("revision {revision}")));
    }
    let mut records = Records::open(file)?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut prev_key: Option<Vec<u8>> = None;
    let mut seen = std::collections::HashSet::new();
    let mut keys = 0u64;
    while let Some(rec) = records.next_record()? {
        let kv = &rec.kv;
        let bad = |what: &str| {
            BackupError::Corrupt(format!(
                "key {:?}: {what}",
                String::from_utf8_lossy(&kv.key)
            ))
        };
        if prev_key.as_ref().is_some_and(|p| *p >= kv.key) {
            return Err(bad("keys out of order"));
        }
        if kv.mod_revision < 1
            || kv.mod_revision > revision
            || kv.create_revision < 1
            || kv.create_revision > kv.mod_revision
            || kv.version < 1
            || rec.sub < 0
        {
            return Err(bad(&format!(
                "bad revisions (create {}, mod {}, version {}, sub {}) for snapshot revision {revision}",
                kv.create_revision, kv.mod_revision, kv.version, rec.sub
            )));
        }
        let rev = Rev {
            main: kv.mod_revision,
            sub: rec.sub,
        };
        if !seen.insert(rev) {
            return Err(bad("two keys at the same revision"));
        }
        prev_key = Some(kv.key.clone());
        let row = Row {
            kv: rec.kv,
            tombstone: false,
        };
        batch.insert(&codec::row_key(rev), codec::encode(&row)?);
        in_batch += 1;
        keys += 1;
        if in_batch >= RESTORE_BATCH {
            tree.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    let mut leases = 0u64;
    while let Some((id, ttl)) = records.next_lease()? {
        batch.insert(&codec::lease_key(id), &codec::encode_i64(ttl));
        leases += 1;
    }
    batch.insert(
        codec::meta_key(codec::META_REVISION),
        &codec::encode_i64(revision),
    );
    batch.insert(
        codec::meta_key(codec::META_COMPACT),
        &codec::encode_i64(revision),
    );
    tree.apply_batch(batch)?;
    db.flush()?;
    // Read it back the way a start does: a file that passes here starts.
    let st = State::load(&tree)?;
    if st.current != revision {
        return Err(BackupError::Corrupt(format!(
            "restored revision {} differs from the file's {revision}",
            st.current
        )));
    }
    Ok(RestoreSummary {
        revision,
        keys,
        leases,
    })
}
