//! The backup file format (ours, not etcd's bbolt): a fixed header, one record per live key, the
//! leases, then the sha256 of everything before it (the 32 bytes etcd's `Maintenance.Snapshot`
//! also appends, so `etcdctl snapshot save` stores a file this module can verify).
//!
//! All integers are big-endian.
//!
//! | Part | Layout |
//! |---|---|
//! | header (64 bytes) | magic `CRWLBKUP`, version u32, flags u32 (0), revision i64, compact revision i64, key count u64, lease count u64, cluster id u64, member id u64 |
//! | record (per key, key order) | key length u32, key, value length u32, value, create revision i64, mod revision i64, version i64, lease i64, sub revision i64 |
//! | lease (per lease, id order) | id i64, TTL seconds i64 |
//! | padding | zero bytes up to a multiple of 512 |
//! | trailer | sha256 of all bytes above |
//!
//! The padding is there for `etcdctl snapshot save`, which refuses a stream whose size is not
//! 32 more than a multiple of 512 ("sha256 checksum not found"): bbolt files are whole pages.

use crate::types::KeyValue;

/// First 8 bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"CRWLBKUP";
/// The format this build writes and reads.
pub const VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: u64 = 64;
/// Size of the sha256 trailer.
pub const CHECKSUM_LEN: u64 = 32;
/// The data (everything before the checksum) is padded to a multiple of this.
pub const ALIGN: u64 = 512;
/// Fixed part of a record (two lengths and five i64s).
pub(crate) const RECORD_FIXED: u64 = 4 + 4 + 5 * 8;
/// Size of one lease entry.
pub(crate) const LEASE_LEN: u64 = 16;

/// What a backup file's header says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    /// The store revision the image was taken at.
    pub revision: i64,
    /// The source's compaction revision at that moment (history below is not in the file anyway).
    pub compact_revision: i64,
    /// Live keys in the file.
    pub key_count: u64,
    /// Leases in the file.
    pub lease_count: u64,
    /// Cluster the image was taken from.
    pub cluster_id: u64,
    /// Member that streamed it.
    pub member_id: u64,
}

impl Header {
    /// The 64 header bytes.
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_be_bytes());
        // 12..16: flags, zero.
        b[16..24].copy_from_slice(&self.revision.to_be_bytes());
        b[24..32].copy_from_slice(&self.compact_revision.to_be_bytes());
        b[32..40].copy_from_slice(&self.key_count.to_be_bytes());
        b[40..48].copy_from_slice(&self.lease_count.to_be_bytes());
        b[48..56].copy_from_slice(&self.cluster_id.to_be_bytes());
        b[56..64].copy_from_slice(&self.member_id.to_be_bytes());
        b
    }

    /// Parse the 64 header bytes.
    pub(crate) fn decode(b: &[u8; HEADER_LEN as usize]) -> Result<Header, FormatError> {
        if &b[0..8] != MAGIC {
            return Err(FormatError::NotOurs);
        }
        let version = u32::from_be_bytes(word(b, 8));
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let i = |at: usize| i64::from_be_bytes(word(b, at));
        let u = |at: usize| u64::from_be_bytes(word(b, at));
        Ok(Header {
            revision: i(16),
            compact_revision: i(24),
            key_count: u(32),
            lease_count: u(40),
            cluster_id: u(48),
            member_id: u(56),
        })
    }
}

/// `N` bytes of `b` from `at` (the callers index inside a fixed-size array).
fn word<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// Why header bytes are not a backup this build reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "not a crawler snapshot file (bad magic; etcd's bbolt snapshots cannot be read by crawler)"
    )]
    NotOurs,
    #[error("snapshot file format version {0} is not supported (this build reads version 1)")]
    Version(u32),
}

/// One key's live version plus the sub revision that orders it inside its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kv: KeyValue,
    pub sub: i64,
}

/// Zero bytes that follow `len` bytes of records and leases.
pub(crate) fn padding(len: u64) -> u64 {
    (ALIGN - len % ALIGN) % ALIGN
}

/// Encoded size of the record of `kv`.
pub(crate) fn record_len(kv: &KeyValue) -> u64 {
    RECORD_FIXED + kv.key.len() as u64 + kv.value.len() as u64
}

/// Append the record of `kv` at sub revision `sub` to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, kv: &KeyValue, sub: i64) {
    out.extend_from_slice(&(kv.key.len() as u32).to_be_bytes());
    out.extend_from_slice(&kv.key);
    out.extend_from_slice(&(kv.value.len() as u32).to_be_bytes());
    out.extend_from_slice(&kv.value);
    for v in [
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease,
        sub,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Append a lease entry to `out`.
pub(crate) fn encode_lease(out: &mut Vec<u8>, id: i64, ttl: i64) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
}
