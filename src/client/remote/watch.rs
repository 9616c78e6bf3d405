//! Watches over several endpoints: a watch runs on its own task and, when its stream breaks,
//! is re-created on the next endpoint from the last delivered revision + 1, so events are
//! neither duplicated nor dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::watch_client::WatchClient as PbWatchClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::failover::{classify, Failure, REQUIRE_LEADER_KEY};
use super::failover::{header_revision, malformed, map_status, Inner, MAX_DECODE_BYTES};
use crate::client::api::{KvError, KvResult, WatchBatch, WatchItem, WatchSpec, WatchStream};
use crate::server::grpc::convert;

/// Batches buffered between a watch's network task and its consumer.
const WATCH_BUFFER: usize = 64;
/// Longest pause between rounds of watch re-creation attempts.
const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Open a watch on the endpoint tried first (failing over like a read) and pump it on its own
/// task.
pub(super) async fn start(inner: Arc<Inner>, spec: WatchSpec) -> KvResult<WatchStream> {
    let start = inner.start_index();
    let conn = open_watch(&inner, &spec, spec.start_revision, start).await?;
    let created_revision = header_revision(&conn.first.header);
    // Resume point if the stream breaks before any event: right after creation.
    let next_rev = if spec.start_revision > 0 {
        spec.start_revision
    } else {
        created_revision + 1
    };
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(pump_watch(inner, spec, conn, next_rev, tx));
    Ok(WatchStream::new(rx, created_revision))
}

/// One open watch stream on one endpoint.
struct WatchConn {
    /// Index of the endpoint it runs on.
    idx: usize,
    /// Our half of the bidirectional stream; kept so the request side stays open.
    _requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
    /// The `created` response.
    first: pb::WatchResponse,
}

fn create_request(spec: &WatchSpec, start_revision: i64) -> pb::WatchRequest {
    use pb::watch_create_request::FilterType;
    let mut filters = Vec::new();
    if spec.no_put {
        filters.push(FilterType::Noput as i32);
    }
    if spec.no_delete {
        filters.push(FilterType::Nodelete as i32);
    }
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: spec.key.clone(),
                range_end: spec.range_end.clone(),
                start_revision,
                progress_notify: spec.progress_notify,
                filters,
                prev_kv: spec.prev_kv,
                watch_id: 0,
                fragment: false,
            },
        )),
    }
}

/// The error that ends a watch, if this response ends it.
fn watch_end(resp: &pb::WatchResponse) -> Option<KvError> {
    if resp.compact_revision > 0 {
        Some(KvError::Compacted {
            compact_revision: resp.compact_revision,
        })
    } else if resp.canceled {
        Some(KvError::WatchCanceled(resp.cancel_reason.clone()))
    } else {
        None
    }
}

/// Try to create the watch on each endpoint once, starting at `start_idx`.
async fn open_watch(
    inner: &Inner,
    spec: &WatchSpec,
    start_revision: i64,
    start_idx: usize,
) -> KvResult<WatchConn> {
    let n = inner.endpoints.len();
    let mut last = KvError::Unavailable("no endpoint tried".into());
    for attempt in 0..n {
        let idx = (start_idx + attempt) % n;
        let ep = &inner.endpoints[idx];
        let attempt_fut = async {
            let (tx, rx) = mpsc::channel(4);
            tx.send(create_request(spec, start_revision))
                .await
                .map_err(|_| Status::internal("watch request channel closed"))?;
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            request.metadata_mut().insert(
                REQUIRE_LEADER_KEY,
                tonic::metadata::MetadataValue::from_static("true"),
            );
            let mut responses = PbWatchClient::new(ep.channel.clone())
                .max_decoding_message_size(MAX_DECODE_BYTES)
                .watch(request)
                .await?
                .into_inner();
            let first = responses
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("watch stream ended before creation"))?;
            Ok::<_, Status>(WatchConn {
                idx,
                _requests: tx,
                responses,
                first,
            })
        };
        match tokio::time::timeout(inner.request_timeout, attempt_fut).await {
            Ok(Ok(conn)) => {
                if let Some(err) = watch_end(&conn.first) {
                    return Err(err);
                }
                if !conn.first.created {
                    tracing::warn!(endpoint = %ep.url, "first watch response is not `created`");
                }
                return Ok(conn);
            }
            Ok(Err(status)) => {
                let err = map_status(&status, &ep.url);
                if classify(&status) == Failure::Final {
                    return Err(err);
                }
                tracing::debug!(endpoint = %ep.url, error = %err, "watch create failed, trying next endpoint");
                last = err;
            }
            Err(_) => {
                last = KvError::Timeout(format!(
                    "watch create on {} did not finish within {:?}",
                    ep.url, inner.request_timeout
                ));
            }
        }
    }
    Err(last)
}

/// Whether a broken watch stream should be re-created (rather than end the watch).
fn stream_error_is_transient(status: &Status) -> bool {
    classify(status) != Failure::Final
        || matches!(
            status.code(),
            Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
        )
}

/// Forward a watch's responses to its consumer; re-create the stream when it breaks.
async fn pump_watch(
    inner: Arc<Inner>,
    spec: WatchSpec,
    mut conn: WatchConn,
    mut next_rev: i64,
    tx: mpsc::Sender<WatchItem>,
) {
    let mut pending = Some(std::mem::take(&mut conn.first));
    loop {
        // Receive until the stream breaks.
        let broken: String = loop {
            let msg = match pending.take() {
                Some(m) => Ok(Some(m)),
                None => tokio::select! {
                    _ = tx.closed() => return,
                    m = conn.responses.message() => m,
                },
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => break "stream closed by server".to_string(),
                Err(status) => {
                    let url = &inner.endpoints[conn.idx].url;
                    if stream_error_is_transient(&status) {
                        break format!("{url}: {status}");
                    }
                    let _ = tx.send(Err(map_status(&status, url))).await;
                    return;
                }
            };
            if let Some(err) = watch_end(&resp) {
                let _ = tx.send(Err(err)).await;
                return;
            }
            let revision = header_revision(&resp.header);
            let item = if !resp.events.is_empty() {
                let events: Vec<_> = match resp
                    .events
                    .into_iter()
                    .map(convert::event_from_proto)
                    .collect::<Result<_, _>>()
                {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(malformed(e))).await;
                        return;
                    }
                };
                if let Some(last) = events.last() {
                    next_rev = next_rev.max(last.kv.mod_revision + 1);
                }
                Some(WatchBatch { revision, events })
            } else if resp.created {
                None
            } else {
                // Progress notification: everything up to `revision` has been delivered.
                next_rev = next_rev.max(revision + 1);
                Some(WatchBatch {
                    revision,
                    events: Vec::new(),
                })
            };
            if let Some(batch) = item {
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
        };
        tracing::info!(reason = %broken, next_rev, "watch stream broken, re-creating");
        // Re-create on the next endpoint first: the current one just failed us.
        let mut start = conn.idx + 1;
        let mut backoff = Duration::from_millis(100);
        conn = loop {
            if tx.is_closed() {
                return;
            }
            match open_watch(&inner, &spec, next_rev, start).await {
                Ok(c) => break c,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, "watch re-creation failed, backing off");
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(WATCH_MAX_BACKOFF);
                    start = inner.start_index();
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        };
        inner.current.store(conn.idx, Ordering::Relaxed);
        pending = Some(std::mem::take(&mut conn.first));
    }
}
