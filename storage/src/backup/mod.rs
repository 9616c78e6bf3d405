//! Backups of the state machine: the file format (`format`), streaming an image of the store
//! into it (`writer`), and checking and reading a file (`reader`). Restoring a file into a data
//! dir's state machine is `crate::state_machine::restore_backup`.

mod error;
pub mod format;
pub mod reader;
pub mod writer;

pub use error::BackupError;
pub use format::{FormatError, Header, Record};
pub use reader::{verify, Records, Verified};
pub use writer::{Chunk, Chunks, Image};
