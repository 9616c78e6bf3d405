//! The pending queue of a frontier: first in, first out; the front and the back are kept in
//! memory (bounded), everything between is spilled to files of a run's own directory, so a
//! crawl with millions of URLs pending holds a few thousand of them in RAM.
//!
//! Spill files hold no state of record: the store's checkpoint (base + deltas) does. They are
//! removed when the queue is dropped, and a worker sweeps those of dead processes at start.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::request::Request;

/// Requests kept in memory at the front of the queue.
pub const HEAD_MAX: usize = 8192;
/// Requests per spill file (the back of the queue holds up to this many before it is written).
pub const SEGMENT_LEN: usize = 8192;

/// A spill file could not be written or read back.
#[derive(Debug, thiserror::Error)]
#[error("spill file {path}: {message}")]
pub struct SpillError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// One spilled batch of requests.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    len: usize,
}

/// A FIFO of requests that spills its middle to disk.
#[derive(Debug)]
pub struct PendingQueue {
    head: VecDeque<Request>,
    /// Spilled batches, oldest first: after `head`, before `tail`.
    segments: VecDeque<Segment>,
    tail: Vec<Request>,
    len: usize,
    /// Where to spill (`None`: everything stays in memory).
    dir: Option<PathBuf>,
    next_file: u64,
    head_max: usize,
    segment_len: usize,
    /// A spill failed: keep everything in memory from then on (one warning, not one per push).
    spill_failed: bool,
}

fn spill_error(path: &Path, e: impl std::fmt::Display) -> SpillError {
    SpillError {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl PendingQueue {
    /// A queue spilling into `dir` (created when first needed), or all in memory.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self::with_bounds(dir, HEAD_MAX, SEGMENT_LEN)
    }

    /// A queue with its own memory bounds (tests use small ones).
    pub fn with_bounds(dir: Option<PathBuf>, head_max: usize, segment_len: usize) -> Self {
        Self {
            head: VecDeque::new(),
            segments: VecDeque::new(),
            tail: Vec::new(),
            len: 0,
            dir,
            next_file: 0,
            head_max: head_max.max(1),
            segment_len: segment_len.max(1),
            spill_failed: false,
        }
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing queued.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Requests held in memory now.
    #[cfg(test)]
    pub fn in_memory(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Append a request. A failed spill keeps the batch in memory (logged), losing nothing.
    pub fn push_back(&mut self, req: Request) {
        self.len += 1;
        if self.segments.is_empty() && self.tail.is_empty() && self.head.len() < self.head_max {
            self.head.push_back(req);
            return;
        }
        self.tail.push(req);
        if self.tail.len() >= self.segment_len && !self.spill_failed {
            if let Err(e) = self.spill_tail() {
                tracing::warn!(error = %e, "cannot spill pending requests to disk; keeping them in memory");
                self.spill_failed = true;
            }
        }
    }

    fn spill_tail(&mut self) -> Result<(), SpillError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).map_err(|e| spill_error(dir, e))?;
        let path = dir.join(format!("{:012}.bin", self.next_file));
        let bytes = bincode::serde::encode_to_vec(&self.tail, bincode::config::standard())
            .map_err(|e| spill_error(&path, e))?;
        std::fs::write(&path, bytes).map_err(|e| spill_error(&path, e))?;
        self.next_file += 1;
        self.segments.push_back(Segment {
            path,
            len: self.tail.len(),
        });
        self.tail = Vec::new();
        Ok(())
    }

    fn read_segment(seg: &Segment) -> Result<Vec<Request>, SpillError> {
        let bytes = std::fs::read(&seg.path).map_err(|e| spill_error(&seg.path, e))?;
        let (reqs, _): (Vec<Request>, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .map_err(|e| spill_error(&seg.path, e))?;
        if reqs.len() != seg.len {
            return Err(spill_error(&seg.path, "truncated"));
        }
        Ok(reqs)
    }

    /// Take the front request. `Err` when a spill file cannot be read back (the checkpoint in
    /// the store still has those requests).
    pub fn pop_front(&mut self) -> Result<Option<Request>, SpillError> {
        if self.head.is_empty() {
            if let Some(seg) = self.segments.front() {
                let reqs = Self::read_segment(seg)?;
                let _ = std::fs::remove_file(&seg.path);
                self.segments.pop_front();
                self.head.extend(reqs);
            } else {
                self.head.extend(self.tail.drain(..));
            }
        }
        let r = self.head.pop_front();
        if r.is_some() {
            self.len -= 1;
        }
        Ok(r)
    }

    /// Visit every request in order (spilled ones read back batch by batch).
    pub fn try_for_each<E: From<SpillError>>(
        &self,
        mut f: impl FnMut(&Request) -> Result<(), E>,
    ) -> Result<(), E> {
        for r in &self.head {
            f(r)?;
        }
        for seg in &self.segments {
            for r in &Self::read_segment(seg)? {
                f(r)?;
            }
        }
        for r in &self.tail {
            f(r)?;
        }
        Ok(())
    }
}

impl Default for PendingQueue {
    /// All in memory.
    fn default() -> Self {
        Self::new(None)
    }
}

impl Drop for PendingQueue {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            if !self.segments.is_empty() || dir.exists() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Remove the spill directories under `root` left by processes that are gone (`<pid>-...`).
pub fn sweep_dead(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(i: usize) -> Request {
        Request {
            url: format!("http://h/{i}"),
            depth: (i % 7) as u32,
            rule: i.is_multiple_of(2).then(|| "r".to_string()),
        }
    }

    #[test]
    fn fifo_through_spill_files_with_bounded_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spill = dir.path().join("q");
        let mut q = PendingQueue::with_bounds(Some(spill.clone()), 100, 50);
        let mut popped = Vec::new();
        let mut most = 0;
        for i in 0..5_000 {
            q.push_back(req(i));
            most = most.max(q.in_memory());
            // Now and then take one from the front, as a crawl does.
            if i % 3 == 0 {
                popped.push(q.pop_front().expect("pop").expect("a request"));
            }
        }
        assert!(most <= 150, "{most} in memory");
        assert!(std::fs::read_dir(&spill).expect("spill dir").count() > 10);
        let mut listed = Vec::new();
        q.try_for_each(|r| {
            listed.push(r.clone());
            Ok::<_, SpillError>(())
        })
        .expect("list");
        assert_eq!(listed.len(), q.len());
        while let Some(r) = q.pop_front().expect("pop") {
            popped.push(r);
        }
        assert_eq!(popped, (0..5_000).map(req).collect::<Vec<_>>());
        assert_eq!(&popped[popped.len() - listed.len()..], &listed[..]);
        assert!(q.is_empty());
        drop(q);
        assert!(!spill.exists(), "the spill dir goes with the queue");
    }

    #[test]
    fn an_unreadable_spill_file_is_an_error_not_a_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spill = dir.path().join("q");
        let mut q = PendingQueue::with_bounds(Some(spill.clone()), 2, 2);
        for i in 0..10 {
            q.push_back(req(i));
        }
        for e in std::fs::read_dir(&spill).expect("dir").flatten() {
            std::fs::write(e.path(), b"garbage").expect("corrupt");
        }
        assert_eq!(
            q.pop_front().expect("head").map(|r| r.url),
            Some(req(0).url)
        );
        assert_eq!(
            q.pop_front().expect("head").map(|r| r.url),
            Some(req(1).url)
        );
        assert!(q.pop_front().is_err());
    }

    #[test]
    fn without_a_dir_everything_stays_in_memory() {
        let mut q = PendingQueue::with_bounds(None, 2, 2);
        for i in 0..10 {
            q.push_back(req(i));
        }
        assert_eq!(q.in_memory(), 10);
        for i in 0..10 {
            assert_eq!(q.pop_front().expect("pop"), Some(req(i)));
        }
    }

    #[test]
    fn sweeps_only_dead_processes_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mine = dir.path().join(format!("{}-t-1", std::process::id()));
        // A pid far above pid_max cannot be alive.
        let dead = dir.path().join("999999999-t-2");
        for d in [&mine, &dead] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        sweep_dead(dir.path());
        assert!(mine.exists());
        assert!(!dead.exists());
    }
}
