//! Reading a backup file: [`verify`] checks it whole (checksum, structure, size) before anything
//! is restored from it; [`Records`] then streams its records and leases one at a time.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::BackupError;
use super::format::{self, FormatError, Header, Record, CHECKSUM_LEN, HEADER_LEN, LEASE_LEN};
use crate::types::KeyValue;

/// A backup file whose checksum and structure are good.
#[derive(Clone, Debug)]
pub struct Verified {
    pub path: PathBuf,
    pub header: Header,
    /// File size in bytes, checksum included.
    pub size: u64,
    /// The sha256 trailer (hex).
    pub sha256: String,
}

fn io(path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Check `path`: header, sha256 of the data against the trailer, and that the records and leases
/// the header announces end exactly where the trailer starts. A file cut short is `Truncated`, a
/// changed byte `ChecksumMismatch`.
pub fn verify(path: &Path) -> Result<Verified, BackupError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let size = file.metadata().map_err(|e| io(path, e))?.len();
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let header = read_header(&mut r, path, size)?;
    if size < HEADER_LEN + CHECKSUM_LEN {
        return Err(BackupError::Truncated {
            at: size,
            need: HEADER_LEN + CHECKSUM_LEN,
        });
    }
    // Pass 1: the checksum of everything before the trailer.
    r.seek(SeekFrom::Start(0)).map_err(|e| io(path, e))?;
    let data_len = size - CHECKSUM_LEN;
    let mut hasher = Sha256::new();
    let mut left = data_len;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n]).map_err(|e| io(path, e))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let actual: [u8; 32] = hasher.finalize().into();
    let mut stored = [0u8; 32];
    r.read_exact(&mut stored).map_err(|e| io(path, e))?;
    // Pass 2: where the announced records and leases end.
    let end = structure_end(&mut r, path, &header, size)?;
    let checksum_ok = actual == stored;
    match end {
        Some(end) if end + CHECKSUM_LEN > size => Err(BackupError::Truncated {
            at: size,
            need: end + CHECKSUM_LEN,
        }),
        None => Err(BackupError::Truncated {
            at: size,
            need: size.saturating_add(1),
        }),
        _ if !checksum_ok => Err(BackupError::ChecksumMismatch {
            stored: hex(&stored),
            actual: hex(&actual),
        }),
        Some(end) if end + CHECKSUM_LEN < size => Err(BackupError::Corrupt(format!(
            "{} bytes after the padding (the header announces {} keys and {} leases)",
            size - end - CHECKSUM_LEN,
            header.key_count,
            header.lease_count
        ))),
        Some(_) => Ok(Verified {
            path: path.to_path_buf(),
            header,
            size,
            sha256: hex(&stored),
        }),
    }
}

fn read_header(r: &mut impl Read, path: &Path, size: u64) -> Result<Header, BackupError> {
    let mut h = [0u8; HEADER_LEN as usize];
    let have = (size.min(HEADER_LEN)) as usize;
    r.read_exact(&mut h[..have]).map_err(|e| io(path, e))?;
    let magic_len = have.min(format::MAGIC.len());
    if h[..magic_len] != format::MAGIC[..magic_len] || (have == 0) {
        return Err(FormatError::NotOurs.into());
    }
    if have < HEADER_LEN as usize {
        return Err(BackupError::Truncated {
            at: size,
            need: HEADER_LEN + CHECKSUM_LEN,
        });
    }
    Ok(Header::decode(&h)?)
}

/// Offset where the header's records, leases and padding end, walking the record lengths; `None` when
/// the walk runs past the end of the file.
fn structure_end<R: Read + Seek>(
    r: &mut BufReader<R>,
    path: &Path,
    header: &Header,
    size: u64,
) -> Result<Option<u64>, BackupError> {
    let mut pos = HEADER_LEN;
    r.seek(SeekFrom::Start(pos)).map_err(|e| io(path, e))?;
    for _ in 0..header.key_count {
        // Each record is at least RECORD_FIXED bytes: the loop ends within size / 48 rounds.
        if pos + format::RECORD_FIXED > size {
            return Ok(None);
        }
        let klen = read_u32(r, path)? as u64;
        r.seek_relative(klen as i64).map_err(|e| io(path, e))?;
        if pos + 4 + klen + 4 > size {
            return Ok(None);
        }
        let vlen = read_u32(r, path)? as u64;
        pos += format::RECORD_FIXED + klen + vlen;
        if pos > size {
            return Ok(None);
        }
        r.seek(SeekFrom::Start(pos)).map_err(|e| io(path, e))?;
    }
    let end = header
        .lease_count
        .checked_mul(LEASE_LEN)
        .and_then(|l| pos.checked_add(l));
    Ok(end.map(|e| e + format::padding(e)))
}

fn read_u32(r: &mut impl Read, path: &Path) -> Result<u32, BackupError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|e| io(path, e))?;
    Ok(u32::from_be_bytes(b))
}

fn read_i64(r: &mut impl Read, path: &Path) -> Result<i64, BackupError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(|e| io(path, e))?;
    Ok(i64::from_be_bytes(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sequential reader of a verified file's records, then its leases.
pub struct Records {
    path: PathBuf,
    r: BufReader<File>,
    size: u64,
    keys_left: u64,
    leases_left: u64,
}

impl Records {
    /// Open `v` positioned at its first record.
    pub fn open(v: &Verified) -> Result<Records, BackupError> {
        let mut file = File::open(&v.path).map_err(|e| io(&v.path, e))?;
        file.seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| io(&v.path, e))?;
        Ok(Records {
            path: v.path.clone(),
            r: BufReader::with_capacity(256 * 1024, file),
            size: v.size,
            keys_left: v.header.key_count,
            leases_left: v.header.lease_count,
        })
    }

    fn bytes(&mut self) -> Result<Vec<u8>, BackupError> {
        let len = read_u32(&mut self.r, &self.path)?;
        // The file was verified, so the length lies inside it, unless it changed since.
        if u64::from(len) > self.size {
            return Err(BackupError::Corrupt(format!(
                "a length of {len} bytes in a file of {} (did it change after the check?)",
                self.size
            )));
        }
        let mut b = vec![0u8; len as usize];
        self.r.read_exact(&mut b).map_err(|e| io(&self.path, e))?;
        Ok(b)
    }

    /// The next record, `None` after the last.
    pub fn next_record(&mut self) -> Result<Option<Record>, BackupError> {
        if self.keys_left == 0 {
            return Ok(None);
        }
        self.keys_left -= 1;
        let key = self.bytes()?;
        let value = self.bytes()?;
        let mut n = [0i64; 5];
        for v in &mut n {
            *v = read_i64(&mut self.r, &self.path)?;
        }
        Ok(Some(Record {
            kv: KeyValue {
                key,
                create_revision: n[0],
                mod_revision: n[1],
                version: n[2],
                value,
                lease: n[3],
            },
            sub: n[4],
        }))
    }

    /// The next lease `(id, ttl)`, once every record was read; `None` after the last.
    pub fn next_lease(&mut self) -> Result<Option<(i64, i64)>, BackupError> {
        if self.keys_left != 0 || self.leases_left == 0 {
            return Ok(None);
        }
        self.leases_left -= 1;
        let id = read_i64(&mut self.r, &self.path)?;
        let ttl = read_i64(&mut self.r, &self.path)?;
        Ok(Some((id, ttl)))
    }
}
