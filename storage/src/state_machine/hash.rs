//! `Hash` and `HashKV`: a digest of the MVCC history every member computes identically.
//!
//! Algorithm (fixed, so members of any build agree): XXH3-64 (seed 0) over the canonical
//! encoding of every stored version of every key with revision <= the hashed revision, keys in
//! byte order and each key's versions in revision order; one version is key length u32, key,
//! main and sub revision i64, tombstone u8, create revision, mod revision, version and lease i64,
//! value length u32, value (all big-endian). Which versions are stored depends only on the
//! compaction revision, which is replicated, so equal (revision, compact revision) gives equal
//! hashes. `Hash` continues the same digest over the current revision with every lease (id, TTL).
//! The 64-bit digest is folded to the protocol's 32 bits as `hi ^ lo`.

use xxhash_rust::xxh3::Xxh3;

use crate::error::ApplyError;

use super::fault::Fault;
use super::read::View;

/// Feed every version with revision <= `at` into `h`.
fn hash_versions(view: &View<'_>, at: i64, h: &mut Xxh3) -> Result<(), Fault> {
    for (key, ki) in view.st.index.iter() {
        for e in ki.revs.iter().take_while(|e| e.rev.main <= at) {
            let kv = match ki.cached(e.rev) {
                Some(kv) => kv.clone(),
                None => view.row(e.rev)?.kv,
            };
            h.update(&(key.len() as u32).to_be_bytes());
            h.update(key);
            h.update(&e.rev.main.to_be_bytes());
            h.update(&e.rev.sub.to_be_bytes());
            h.update(&[u8::from(e.tombstone)]);
            for v in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                h.update(&v.to_be_bytes());
            }
            h.update(&(kv.value.len() as u32).to_be_bytes());
            h.update(&kv.value);
        }
    }
    Ok(())
}

fn fold(h: &Xxh3) -> u32 {
    let d = h.digest();
    ((d >> 32) ^ (d & 0xffff_ffff)) as u32
}

/// The revision `HashKV` hashes for a requested one (0 = current), with etcd's errors.
fn hash_revision(view: &View<'_>, revision: i64) -> Result<i64, ApplyError> {
    if revision > view.cur {
        return Err(ApplyError::FutureRevision);
    }
    if revision > 0 && revision <= view.st.compact {
        return Err(ApplyError::Compacted);
    }
    Ok(if revision <= 0 { view.cur } else { revision })
}

/// `HashKV`: (hash, compact revision, hashed revision).
pub(crate) fn hash_kv(view: &View<'_>, revision: i64) -> Result<(u32, i64, i64), Fault> {
    let at = hash_revision(view, revision)?;
    let mut h = Xxh3::new();
    hash_versions(view, at, &mut h)?;
    Ok((fold(&h), view.st.compact, at))
}

/// `Hash`: every version at the current revision, then every lease.
pub(crate) fn hash_all(view: &View<'_>) -> Result<u32, Fault> {
    let mut h = Xxh3::new();
    hash_versions(view, view.cur, &mut h)?;
    for l in view.st.leases.list() {
        h.update(&l.id.to_be_bytes());
        h.update(&l.ttl.to_be_bytes());
    }
    Ok(fold(&h))
}
