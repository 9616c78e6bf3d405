//! Snapshot payload: the raw rows of the state machine tree, framed.
//!
//! The rows' values are already bincode; the container is a plain length-prefixed framing so that
//! building and reading a large snapshot is a copy, and a corrupt length can never make us
//! allocate more than the input holds.

use crate::error::StoreError;

/// Magic prefix of a snapshot payload.
const MAGIC: &[u8; 8] = b"CRWLSNAP";
/// Current payload format.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Encode rows (key, value) into a snapshot payload.
pub(crate) fn encode_rows<K, V>(rows: &[(K, V)]) -> Vec<u8>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let size: usize = rows
        .iter()
        .map(|(k, v)| 8 + k.as_ref().len() + v.as_ref().len())
        .sum();
    let mut out = Vec::with_capacity(20 + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(rows.len() as u64).to_be_bytes());
    for (k, v) in rows {
        let (k, v) = (k.as_ref(), v.as_ref());
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// One raw (key, value) row borrowed from a payload.
pub(crate) type RawRow<'a> = (&'a [u8], &'a [u8]);

/// Decode a snapshot payload into borrowed rows.
pub(crate) fn decode_rows(data: &[u8]) -> Result<Vec<RawRow<'_>>, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("snapshot: {what}"));
    let mut r = Reader { data, pos: 0 };
    if r.take(8).ok_or_else(|| bad("too short"))? != MAGIC {
        return Err(bad("bad magic"));
    }
    let version = u32::from_be_bytes(r.array().ok_or_else(|| bad("too short"))?);
    if version != FORMAT_VERSION {
        return Err(bad(&format!("unsupported format {version}")));
    }
    let count = u64::from_be_bytes(r.array().ok_or_else(|| bad("too short"))?);
    // Each row takes at least 8 bytes: never reserve more than the input can hold.
    let cap = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(data.len() / 8);
    let mut rows = Vec::with_capacity(cap);
    for _ in 0..count {
        let klen = u32::from_be_bytes(r.array().ok_or_else(|| bad("truncated"))?) as usize;
        let k = r.take(klen).ok_or_else(|| bad("truncated"))?;
        let vlen = u32::from_be_bytes(r.array().ok_or_else(|| bad("truncated"))?) as usize;
        let v = r.take(vlen).ok_or_else(|| bad("truncated"))?;
        rows.push((k, v));
    }
    if r.pos != data.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(rows)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let rows = vec![(b"k1".to_vec(), b"v1".to_vec()), (b"k2".to_vec(), vec![])];
        let data = encode_rows(&rows);
        let back = decode_rows(&data).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], (&b"k1"[..], &b"v1"[..]));
        assert!(decode_rows(&data[..data.len() - 1]).is_err());
        assert!(decode_rows(b"garbage").is_err());
        let mut huge = data[..12].to_vec();
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(decode_rows(&huge).is_err());
    }
}
