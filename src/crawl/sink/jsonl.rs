//! JSON lines under a directory: `<dir>/<task>.jsonl`, one file per task, buffered in memory
//! (whole lines, [`JSONL_BUFFER_BYTES`] at most) and flushed and synced to disk before each
//! checkpoint, so a checkpoint never counts items that are not on disk.
//!
//! Delivery is at least once: a page processed after the last checkpoint of a worker that died
//! is processed again by the next one, so its items can appear twice (in each worker's file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;

use super::api::{Item, Sink, SinkError, SinkFactory};
use crate::client::BoxFuture;
use crate::model::task::TaskConfig;

/// Bytes of JSON lines a task's file buffers before writing them out.
pub const JSONL_BUFFER_BYTES: usize = 256 * 1024;

/// JSON lines under a directory: `<dir>/<task>.jsonl`.
#[derive(Clone, Debug)]
pub struct JsonlSinks {
    dir: PathBuf,
}

impl JsonlSinks {
    /// Sinks writing under `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of `task`.
    pub fn path(dir: &Path, task: &str) -> PathBuf {
        dir.join(format!("{task}.jsonl"))
    }
}

impl SinkFactory for JsonlSinks {
    fn open<'a>(&'a self, task: &'a TaskConfig) -> BoxFuture<'a, Result<Arc<dyn Sink>, SinkError>> {
        Box::pin(async move {
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| SinkError::Io { path, source }
            };
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(io(&self.dir))?;
            let path = Self::path(&self.dir, &task.name);
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .map_err(io(&path))?;
            Ok(Arc::new(JsonlSink {
                path,
                file: tokio::sync::Mutex::new(tokio::io::BufWriter::with_capacity(
                    JSONL_BUFFER_BYTES,
                    file,
                )),
            }) as Arc<dyn Sink>)
        })
    }
}

/// One task's JSON lines file.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    file: tokio::sync::Mutex<tokio::io::BufWriter<tokio::fs::File>>,
}

impl Sink for JsonlSink {
    fn write<'a>(&'a self, items: &'a [Item]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if items.is_empty() {
                return Ok(());
            }
            let mut buf = Vec::new();
            for it in items {
                serde_json::to_writer(&mut buf, it)
                    .map_err(|e| SinkError::Encode(e.to_string()))?;
                buf.push(b'\n');
            }
            let mut f = self.file.lock().await;
            let io = |source| SinkError::Io {
                path: self.path.clone(),
                source,
            };
            // Whole lines only reach the file: a page's items are buffered together, and the
            // buffer writes out whole when full.
            if f.buffer().len() + buf.len() > JSONL_BUFFER_BYTES {
                f.flush().await.map_err(io)?;
            }
            f.write_all(&buf).await.map_err(io)
        })
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let mut f = self.file.lock().await;
            let io = |source| SinkError::Io {
                path: self.path.clone(),
                source,
            };
            f.flush().await.map_err(io)?;
            f.get_ref().sync_data().await.map_err(io)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[tokio::test]
    async fn appends_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sinks = JsonlSinks::new(dir.path().join("results"));
        let item = Item {
            task: "t".into(),
            kind: "book".into(),
            url: "http://h/1".into(),
            index: 0,
            fields: vec![("z".into(), Some("1".into())), ("a".into(), None)],
            fetched_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500),
        };
        for _ in 0..2 {
            let s = sinks.open(&TaskConfig::named("t")).await.expect("open");
            s.write(std::slice::from_ref(&item)).await.expect("write");
            s.sync().await.expect("sync");
        }
        let text = std::fs::read_to_string(dir.path().join("results/t.jsonl")).expect("read");
        let line = r#"{"task":"t","item":"book","url":"http://h/1","fields":{"z":"1","a":null},"fetched_at":"1970-01-01T00:00:01.500Z"}"#;
        assert_eq!(text, format!("{line}\n{line}\n"));
    }
}
