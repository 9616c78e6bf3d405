//! Why a backup file cannot be read or restored.

use std::path::PathBuf;

use super::format::FormatError;

/// Why a backup cannot be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(
        "snapshot file is truncated at byte {at}: its header and records need at least {need} bytes"
    )]
    Truncated { at: u64, need: u64 },
    #[error("snapshot file checksum mismatch: the file says sha256 {stored}, its data hashes to {actual} (the file is corrupt)")]
    ChecksumMismatch { stored: String, actual: String },
    #[error("snapshot file is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot restore: {0}")]
    Target(String),
    #[error(transparent)]
    Store(#[from] crate::error::StoreError),
}

impl From<sled::Error> for BackupError {
    fn from(e: sled::Error) -> Self {
        BackupError::Store(e.into())
    }
}
