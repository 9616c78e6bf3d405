//! Fixtures shared by the storage test binaries.

use std::path::Path;
use std::time::{Duration, Instant};

/// Open the sled database in `dir`, waiting (bounded) for the directory lock: the flusher thread
/// of a just-dropped Db may hold it a moment longer.
pub fn open_db_when_free(dir: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match crawler_storage::open_db(dir) {
            Ok(db) => return db,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(Instant::now() < deadline, "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
}
