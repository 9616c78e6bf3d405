//! Group commit: one background thread makes many pending writes durable with a single sled
//! flush.
//!
//! A dedicated OS thread (not a tokio task) is used so that the store works from any runtime (the
//! openraft Suite builds a fresh runtime per case) and so that dropping the store can wait for the
//! thread: the thread holds a `sled::Db` handle, and sled refuses to reopen a directory while any
//! handle is alive. `Db::flush_async` is not used: it deadlocks under concurrency in sled 0.34.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

/// Told the outcome of the flush that covered the writes made before it was submitted.
pub(super) type Done = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// Handle to the flusher thread. Dropping it closes the queue and joins the thread.
pub(super) struct Flusher {
    tx: Option<mpsc::Sender<Done>>,
    thread: Option<thread::JoinHandle<()>>,
    flushes: Arc<AtomicU64>,
}

impl Flusher {
    /// Start the flusher thread for `db`; with `sync_file`, each flush is followed by its
    /// `fdatasync`.
    pub(super) fn spawn(db: sled::Db, sync_file: Option<std::fs::File>) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Done>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&flushes);
        let thread = thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || run(&db, sync_file.as_ref(), &rx, &counter))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            flushes,
        })
    }

    /// Queue `done`; it is called after a flush that started after this call.
    ///
    /// Writes made (to any tree of the Db) before calling this are durable when `done` gets
    /// `Ok`. If the flusher is gone, `done` is told so at once.
    pub(super) fn submit(&self, done: Done) {
        match &self.tx {
            Some(tx) => {
                if let Err(mpsc::SendError(done)) = tx.send(done) {
                    done(Err(stopped()));
                }
            }
            None => done(Err(stopped())),
        }
    }

    /// Wait until every write made before this call is durable.
    pub(super) async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |res| {
            // The waiter may have been cancelled; nothing to tell then.
            let _ = tx.send(res);
        }));
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Number of `db.flush()` calls made so far.
    pub(super) fn count(&self) -> u64 {
        self.flushes.load(Ordering::Acquire)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the queue ends the thread after it has served what is already queued.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // Never join ourselves (a callback on the flusher thread dropping the last handle).
            if thread.thread().id() != thread::current().id() && thread.join().is_err() {
                tracing::error!("raft log flusher thread panicked");
            }
        }
    }
}

/// The flusher loop: take everything queued, flush once, then answer all of it.
fn run(
    db: &sled::Db,
    sync_file: Option<&std::fs::File>,
    rx: &mpsc::Receiver<Done>,
    flushes: &AtomicU64,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let res = db
            .flush()
            .map_err(|e| e.to_string())
            .and_then(|_| match sync_file {
                Some(f) => f.sync_data().map_err(|e| format!("fdatasync: {e}")),
                None => Ok(()),
            });
        crate::metrics::WAL_FSYNC.observe(started.elapsed());
        flushes.fetch_add(1, Ordering::AcqRel);
        match res {
            Ok(_) => batch.into_iter().for_each(|done| done(Ok(()))),
            Err(e) => {
                tracing::error!(error = %e, waiters = batch.len(), "raft log flush failed");
                let msg = e;
                batch
                    .into_iter()
                    .for_each(|done| done(Err(io::Error::other(msg.clone()))));
            }
        }
    }
}

/// The error given when the flusher thread is no longer running.
fn stopped() -> io::Error {
    io::Error::other("raft log flusher stopped")
}
