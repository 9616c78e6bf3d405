//! Layout of the state machine's sled tree: row keys, meta keys and value encodings.
//!
//! One tree holds everything the state machine persists, so that one `sled::Batch` can change it
//! atomically. Prefixes: `k` + main (8B BE) + sub (8B BE) → [`Row`]; `m` + name → meta;
//! `l` + id (8B, order-preserving) → lease TTL; `a` + member id (8B BE) → member attributes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::types::KeyValue;

use super::index::Rev;

/// Name of the sled tree holding the rows.
pub(crate) const TREE: &str = "sm";
/// Prefix of MVCC rows.
pub(crate) const ROW: u8 = b'k';
/// Prefix of meta values.
pub(crate) const META: u8 = b'm';
/// Prefix of leases.
pub(crate) const LEASE: u8 = b'l';
/// Prefix of member attributes.
pub(crate) const MEMBER: u8 = b'a';

/// Meta name of the last applied log id.
pub(crate) const META_APPLIED: &str = "applied";
/// Meta name of the last applied membership (encoded by the generic raft layer).
pub(crate) const META_MEMBERSHIP: &str = "membership";
/// Meta name of the current revision (needed when compaction removed the newest rows).
pub(crate) const META_REVISION: &str = "revision";
/// Meta name of the compact revision.
pub(crate) const META_COMPACT: &str = "compact";
/// Meta name of the active alarms (a sorted list of [`crate::types::AlarmMember`]).
pub(crate) const META_ALARMS: &str = "alarms";

/// One stored version of a key. A tombstone ends the key's generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Row {
    pub kv: KeyValue,
    pub tombstone: bool,
}

/// Sled key of the row at `rev`.
pub(crate) fn row_key(rev: Rev) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = ROW;
    k[1..9].copy_from_slice(&(rev.main as u64).to_be_bytes());
    k[9..17].copy_from_slice(&(rev.sub as u64).to_be_bytes());
    k
}

/// The revision a row key names, if it is a well-formed row key.
pub(crate) fn parse_row_key(k: &[u8]) -> Option<Rev> {
    if k.len() != 17 || k[0] != ROW {
        return None;
    }
    let main = u64::from_be_bytes(k[1..9].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
    Some(Rev { main, sub })
}

/// Sled key of a meta value.
pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(META);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Sled key of a lease; the sign bit is flipped so that byte order is numeric order.
pub(crate) fn lease_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEASE;
    k[1..9].copy_from_slice(&((id as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// The lease id a lease key names.
pub(crate) fn parse_lease_key(k: &[u8]) -> Option<i64> {
    if k.len() != 9 || k[0] != LEASE {
        return None;
    }
    Some((u64::from_be_bytes(k[1..9].try_into().ok()?) ^ (1 << 63)) as i64)
}

/// Sled key of a member's attributes.
pub(crate) fn member_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = MEMBER;
    k[1..9].copy_from_slice(&id.to_be_bytes());
    k
}

/// The member id a member key names.
pub(crate) fn parse_member_key(k: &[u8]) -> Option<u64> {
    if k.len() != 9 || k[0] != MEMBER {
        return None;
    }
    Some(u64::from_be_bytes(k[1..9].try_into().ok()?))
}

/// Encode an i64 meta value.
pub(crate) fn encode_i64(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Decode an i64 meta value.
pub(crate) fn decode_i64(b: &[u8]) -> Result<i64, StoreError> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("bad i64 value of {} bytes", b.len())))?;
    Ok(i64::from_be_bytes(arr))
}

/// Serialize internal data (bincode 2 + serde, standard config).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .map_err(|e| StoreError::Other(format!("encode: {e}")))
}

/// Deserialize internal data; trailing bytes or bad input are corruption.
pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    let (v, n) = bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map_err(|e| StoreError::Corrupt(format!("decode: {e}")))?;
    if n != b.len() {
        return Err(StoreError::Corrupt(format!(
            "decode: {} trailing bytes",
            b.len() - n
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort() {
        let a = row_key(Rev { main: 2, sub: 7 });
        let b = row_key(Rev { main: 10, sub: 0 });
        assert!(a < b);
        assert_eq!(parse_row_key(&a), Some(Rev { main: 2, sub: 7 }));
        assert!(lease_key(-5) < lease_key(3));
        assert_eq!(parse_lease_key(&lease_key(-5)), Some(-5));
        assert_eq!(parse_member_key(&member_key(42)), Some(42));
    }
}
