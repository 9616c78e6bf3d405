//! Producing a backup: an [`Image`] of the store at one revision, encoded lazily into chunks of
//! the file format (then its sha256), so a large store is never encoded into memory at once.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::format::{self, Header, HEADER_LEN, LEASE_LEN};
use crate::types::KeyValue;

/// A consistent image of the store at `header.revision`: every live key (shared with the live
/// state, not copied) with its sub revision, and every lease.
pub struct Image {
    pub header: Header,
    pub(crate) keys: Vec<(Arc<KeyValue>, i64)>,
    pub(crate) leases: Vec<(i64, i64)>,
}

/// One piece of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// File bytes; `remaining` is what is left after them, checksum excluded (etcd's
    /// `remaining_bytes`).
    Data { bytes: Vec<u8>, remaining: u64 },
    /// The sha256 of all data bytes: the file's last 32 bytes.
    Checksum([u8; 32]),
}

impl Image {
    /// Size of the file's data (everything but the 32-byte checksum).
    pub fn data_len(&self) -> u64 {
        let len = self.unpadded_len();
        len + format::padding(len)
    }

    fn unpadded_len(&self) -> u64 {
        HEADER_LEN
            + self
                .keys
                .iter()
                .map(|(kv, _)| format::record_len(kv))
                .sum::<u64>()
            + self.leases.len() as u64 * LEASE_LEN
    }

    /// Encode the file in chunks of about `chunk_size` bytes (a record is never split, so a chunk
    /// may be larger by one record), ending with the checksum.
    pub fn into_chunks(self, chunk_size: usize) -> Chunks {
        let remaining = self.data_len();
        Chunks {
            header: Some(self.header),
            keys: self.keys.into_iter(),
            leases: self.leases.into_iter(),
            chunk_size: chunk_size.max(1),
            finished: false,
            remaining,
            written: 0,
            padded: false,
            hasher: Sha256::new(),
        }
    }
}

/// Iterator over an [`Image`]'s chunks (see [`Image::into_chunks`]).
pub struct Chunks {
    header: Option<Header>,
    /// Consumed as sent: a key overwritten meanwhile frees its old value once it is out.
    keys: std::vec::IntoIter<(Arc<KeyValue>, i64)>,
    leases: std::vec::IntoIter<(i64, i64)>,
    chunk_size: usize,
    finished: bool,
    remaining: u64,
    /// Data bytes produced so far.
    written: u64,
    padded: bool,
    hasher: Sha256,
}

impl Iterator for Chunks {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.finished {
            return None;
        }
        let mut out = Vec::with_capacity(self.chunk_size.min(1 << 20));
        if let Some(h) = self.header.take() {
            out.extend_from_slice(&h.encode());
        }
        while out.len() < self.chunk_size {
            if let Some((kv, sub)) = self.keys.next() {
                format::encode_record(&mut out, &kv, sub);
            } else if let Some((id, ttl)) = self.leases.next() {
                format::encode_lease(&mut out, id, ttl);
            } else {
                if !self.padded {
                    let pad = format::padding(self.written + out.len() as u64);
                    out.resize(out.len() + pad as usize, 0);
                    self.padded = true;
                }
                break;
            }
        }
        if out.is_empty() {
            self.finished = true;
            let sum = std::mem::take(&mut self.hasher).finalize();
            return Some(Chunk::Checksum(sum.into()));
        }
        self.hasher.update(&out);
        self.written += out.len() as u64;
        self.remaining = self.remaining.saturating_sub(out.len() as u64);
        Some(Chunk::Data {
            bytes: out,
            remaining: self.remaining,
        })
    }
}
