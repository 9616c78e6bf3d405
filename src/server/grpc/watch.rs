//! etcd's Watch service: one bidirectional stream per client connection, many watchers on it.
//!
//! Each stream is served by one task that reads the client's requests, multiplexes the hub
//! receivers of the stream's watchers and writes every response into one bounded channel that
//! tonic drains into the gRPC stream. A client that stops reading blocks only its own task; the
//! hub then finds that stream's watchers' buffers full and catches them up from history later,
//! so writers are never held up.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use crawler_proto::etcdserverpb::watch_create_request::FilterType;
use crawler_proto::etcdserverpb::watch_request::RequestUnion;
use crawler_proto::etcdserverpb::watch_server::Watch;
use crawler_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use futures::Stream;
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{StreamExt, StreamMap};
use tonic::{Request, Response, Status, Streaming};

use super::context::ApiContext;
use super::convert::event_to_proto;
use crate::server::watch_hub::{Delivery, WatchSpec};

/// etcd's default interval between progress notifications of idle `progress_notify` watchers.
pub(crate) const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

/// etcd's lower bound for the progress notification interval.
const MIN_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_millis(100);

/// Environment variable overriding the progress notification interval (milliseconds), for tests.
pub(crate) const PROGRESS_NOTIFY_INTERVAL_ENV: &str = "CRAWLER_PROGRESS_NOTIFY_INTERVAL_MS";

/// How often a deferred `WatchProgressRequest` is retried while some watcher is still unsynced.
const PROGRESS_RETRY: Duration = Duration::from_millis(50);

/// Responses buffered per stream before its task waits for the client to read.
const STREAM_BUFFER: usize = 64;

/// `clientv3.InvalidWatchID`: watch id of responses that belong to no watcher.
const INVALID_WATCH_ID: i64 = -1;

/// etcd's `mvcc.ErrEmptyWatcherRange`.
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's `mvcc.ErrWatcherDuplicateID`.
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's `rpctypes.ErrCompacted` text, the cancel reason of a negative start revision.
const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

/// The Watch gRPC service of one member.
pub struct WatchService {
    ctx: ApiContext,
    progress_interval: Duration,
}

impl WatchService {
    /// A watch service over the member's hub; the progress interval comes from
    /// `CRAWLER_PROGRESS_NOTIFY_INTERVAL_MS` or defaults to etcd's 10 minutes.
    pub fn new(ctx: ApiContext) -> Self {
        let progress_interval = std::env::var(PROGRESS_NOTIFY_INTERVAL_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_PROGRESS_NOTIFY_INTERVAL);
        Self {
            ctx,
            progress_interval: progress_interval.max(MIN_PROGRESS_NOTIFY_INTERVAL),
        }
    }

    /// Override the progress notification interval (etcd clamps it to at least 100 ms).
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval.max(MIN_PROGRESS_NOTIFY_INTERVAL);
        self
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let incoming = request.into_inner();
        let (out, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = WatchStream {
            ctx: self.ctx.clone(),
            out,
            watchers: HashMap::new(),
            receivers: StreamMap::new(),
            next_auto_id: 0,
            progress_all_pending: false,
        };
        tokio::spawn(stream.run(incoming, self.progress_interval));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watcher of a stream, as the stream task knows it.
struct StreamWatcher {
    /// The hub's id of the watcher.
    hub_id: u64,
    start_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// An event response went out since the last progress tick (etcd then skips one notification).
    sent_since_tick: bool,
}

/// The stream's output is gone (client disconnected).
struct Closed;

/// State of one Watch stream, owned by its task.
struct WatchStream {
    ctx: ApiContext,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    /// Watchers by client-visible watch id.
    watchers: HashMap<i64, StreamWatcher>,
    /// Hub receivers by client-visible watch id.
    receivers: StreamMap<i64, ReceiverStream<Delivery>>,
    /// Next automatically assigned id (etcd starts at 0 and skips ids the client chose).
    next_auto_id: i64,
    /// A `WatchProgressRequest` waits for every watcher of the stream to be synced.
    progress_all_pending: bool,
}

impl WatchStream {
    async fn run(mut self, mut incoming: Streaming<WatchRequest>, progress_interval: Duration) {
        let jitter_ms = (progress_interval.as_millis() as u64 / 10).max(1);
        let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..jitter_ms));
        let period = progress_interval + jitter;
        let mut progress_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_tick = tokio::time::interval(PROGRESS_RETRY);
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut incoming_open = true;

        loop {
            let step = tokio::select! {
                _ = self.out.closed() => Err(Closed),
                req = incoming.message(), if incoming_open => match req {
                    Ok(Some(req)) => self.handle_request(req).await,
                    // The client half-closed: like etcd, keep sending until it goes away.
                    Ok(None) => {
                        incoming_open = false;
                        Ok(())
                    }
                    Err(status) => {
                        tracing::debug!("watch stream receive failed: {status}");
                        Err(Closed)
                    }
                },
                Some((id, delivery)) = self.receivers.next(), if !self.receivers.is_empty() => {
                    self.handle_delivery(id, delivery).await
                }
                _ = progress_tick.tick() => self.progress_tick().await,
                _ = retry_tick.tick(), if self.progress_all_pending => self.try_progress_all().await,
            };
            if step.is_err() {
                break;
            }
        }
        // Dropping the receivers cancels every watcher of the stream in the hub.
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(resp)).await.map_err(|_| Closed)
    }

    async fn handle_request(&mut self, req: WatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // etcd answers only a cancel of an existing watcher.
                if self.remove(cancel.watch_id) {
                    let resp = WatchResponse {
                        header: Some(self.ctx.header()),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_all_pending = true;
                self.try_progress_all().await
            }
            // An empty or unknown request must not end the stream (etcd ignores it).
            None => Ok(()),
        }
    }

    /// A created-and-canceled answer to a create that made no watcher (etcd's shape).
    fn rejected(&self, reason: &str) -> WatchResponse {
        WatchResponse {
            header: Some(self.ctx.header()),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        }
    }

    async fn create(&mut self, mut req: WatchCreateRequest) -> Result<(), Closed> {
        if req.key.is_empty() {
            // \x00 is the smallest key.
            req.key = vec![0];
        }
        if req.start_revision < 0 {
            return self.send(self.rejected(ERR_COMPACTED)).await;
        }
        let from_key = req.range_end == [0];
        if !req.range_end.is_empty() && !from_key && req.key >= req.range_end {
            return self.send(self.rejected(ERR_EMPTY_RANGE)).await;
        }
        let id = if req.watch_id == 0 {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            let id = self.next_auto_id;
            self.next_auto_id += 1;
            id
        } else if self.watchers.contains_key(&req.watch_id) {
            return self.send(self.rejected(ERR_DUPLICATE_ID)).await;
        } else {
            req.watch_id
        };

        let mut spec = WatchSpec {
            key: req.key,
            range_end: req.range_end,
            start_revision: req.start_revision,
            prev_kv: req.prev_kv,
            no_put: false,
            no_delete: false,
        };
        for filter in &req.filters {
            match FilterType::try_from(*filter) {
                Ok(FilterType::Noput) => spec.no_put = true,
                Ok(FilterType::Nodelete) => spec.no_delete = true,
                // etcd ignores filters it does not know.
                Err(_) => {}
            }
        }

        match self.ctx.hub.watch(spec) {
            Ok(watcher) => {
                let hub_id = watcher.id();
                // Everything after this revision reaches the watcher (start 0 = "from now").
                let created_rev = if req.start_revision == 0 {
                    self.ctx.hub.notified_revision()
                } else {
                    self.ctx.raft.store().current_revision()
                };
                self.watchers.insert(
                    id,
                    StreamWatcher {
                        hub_id,
                        start_revision: req.start_revision,
                        prev_kv: req.prev_kv,
                        progress_notify: req.progress_notify,
                        fragment: req.fragment,
                        sent_since_tick: false,
                    },
                );
                self.receivers.insert(id, ReceiverStream::new(watcher.rx));
                let resp = WatchResponse {
                    header: Some(self.ctx.header_with_revision(created_rev)),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                };
                self.send(resp).await
            }
            Err(_) => {
                // etcd creates the watcher, then cancels it with the compaction point.
                let created = WatchResponse {
                    header: Some(self.ctx.header()),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                };
                self.send(created).await?;
                let compact_revision = self.ctx.raft.store().compact_revision();
                self.send(self.compacted(id, compact_revision)).await
            }
        }
    }

    fn compacted(&self, id: i64, compact_revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.ctx.header()),
            watch_id: id,
            canceled: true,
            compact_revision,
            ..Default::default()
        }
    }

    /// Forget watcher `id`; false if the stream has no such watcher.
    fn remove(&mut self, id: i64) -> bool {
        self.receivers.remove(&id);
        self.watchers.remove(&id).is_some()
    }

    async fn handle_delivery(&mut self, id: i64, delivery: Delivery) -> Result<(), Closed> {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        match delivery {
            Delivery::Events(events) => {
                let Some(last_rev) = events.last().map(|ev| ev.kv.mod_revision) else {
                    return Ok(());
                };
                w.sent_since_tick = true;
                let prev_kv = w.prev_kv;
                let fragment = w.fragment;
                let resp = WatchResponse {
                    header: Some(self.ctx.header_with_revision(last_rev)),
                    watch_id: id,
                    events: events
                        .into_iter()
                        .map(|ev| event_to_proto(ev, prev_kv))
                        .collect(),
                    ..Default::default()
                };
                if fragment {
                    for part in fragments(resp, self.ctx.limits.max_request_bytes) {
                        self.send(part).await?;
                    }
                    Ok(())
                } else {
                    self.send(resp).await
                }
            }
            Delivery::Compacted { compact_revision } => {
                self.remove(id);
                self.send(self.compacted(id, compact_revision)).await
            }
        }
    }

    /// Forward what `ids`' receivers already hold up to revision `rev`, so that a progress
    /// notification at `rev` never overtakes an event at or below it. Later deliveries are
    /// returned to be sent after the notification.
    async fn flush_upto(&mut self, ids: &[i64], rev: i64) -> Result<Vec<(i64, Delivery)>, Closed> {
        let mut held = Vec::new();
        for &id in ids {
            loop {
                let next = self
                    .receivers
                    .iter_mut()
                    .find(|(k, _)| *k == id)
                    .and_then(|(_, rx)| rx.as_mut().try_recv().ok());
                let Some(delivery) = next else {
                    break;
                };
                let later = match &delivery {
                    Delivery::Events(evs) => evs.first().is_some_and(|ev| ev.kv.mod_revision > rev),
                    Delivery::Compacted { .. } => false,
                };
                if later {
                    held.push((id, delivery));
                    break;
                }
                self.handle_delivery(id, delivery).await?;
            }
        }
        Ok(held)
    }

    /// Answer a pending `WatchProgressRequest` once every watcher of the stream is synced.
    async fn try_progress_all(&mut self) -> Result<(), Closed> {
        let hub_ids: Vec<u64> = self.watchers.values().map(|w| w.hub_id).collect();
        let Some(rev) = self.ctx.hub.progress_revision(&hub_ids) else {
            return Ok(());
        };
        self.progress_all_pending = false;
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        let held = self.flush_upto(&ids, rev).await?;
        let resp = WatchResponse {
            header: Some(self.ctx.header_with_revision(rev)),
            watch_id: INVALID_WATCH_ID,
            ..Default::default()
        };
        self.send(resp).await?;
        for (id, delivery) in held {
            self.handle_delivery(id, delivery).await?;
        }
        Ok(())
    }

    /// Periodic progress: every idle `progress_notify` watcher that is synced gets an empty
    /// response carrying the revision it has seen everything up to.
    async fn progress_tick(&mut self) -> Result<(), Closed> {
        let mut due = Vec::new();
        for (&id, w) in self.watchers.iter_mut() {
            if w.progress_notify && !w.sent_since_tick {
                due.push((id, w.hub_id, w.start_revision));
            }
            w.sent_since_tick = false;
        }
        for (id, hub_id, _start) in due {
            let Some(rev) = self.ctx.hub.progress_revision(&[hub_id]) else {
                continue;
            };
            let held = self.flush_upto(&[id], rev).await?;
            if !self.watchers.contains_key(&id) {
                continue;
            }
            let resp = WatchResponse {
                header: Some(self.ctx.header_with_revision(rev)),
                watch_id: id,
                ..Default::default()
            };
            self.send(resp).await?;
            for (id, delivery) in held {
                self.handle_delivery(id, delivery).await?;
            }
        }
        Ok(())
    }
}

/// Split an event response whose encoding exceeds `limit` into fragments (etcd's
/// `sendFragments`): every part but the last has `fragment` set; a single event is never split.
fn fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < limit || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut parts = Vec::new();
    let mut events = resp.events.into_iter().peekable();
    while events.peek().is_some() {
        let mut cur = WatchResponse {
            header: resp.header,
            watch_id: resp.watch_id,
            created: resp.created,
            canceled: resp.canceled,
            compact_revision: resp.compact_revision,
            cancel_reason: resp.cancel_reason.clone(),
            fragment: true,
            events: Vec::new(),
        };
        while let Some(ev) = events.peek() {
            if !cur.events.is_empty() && cur.encoded_len() + ev.encoded_len() + 8 >= limit {
                break;
            }
            if let Some(ev) = events.next() {
                cur.events.push(ev);
            }
        }
        parts.push(cur);
    }
    if let Some(last) = parts.last_mut() {
        last.fragment = false;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crawler_proto::mvccpb;

    fn event(i: usize, size: usize) -> mvccpb::Event {
        mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: format!("k{i}").into_bytes(),
                mod_revision: 7,
                value: vec![b'v'; size],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_split_big_responses_without_losing_events() {
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| event(i, 1000)).collect(),
            ..Default::default()
        };
        assert_eq!(fragments(resp.clone(), 1 << 20).len(), 1, "small: one part");
        let parts = fragments(resp.clone(), 2500);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        let (last, init) = parts.split_last().expect("parts");
        assert!(init.iter().all(|p| p.fragment) && !last.fragment);
        assert!(parts
            .iter()
            .all(|p| p.watch_id == 3 && !p.events.is_empty()));
        let events: Vec<mvccpb::Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(events, resp.events);
        // A single event is never split, however large.
        let one = WatchResponse {
            events: vec![event(0, 10_000)],
            ..Default::default()
        };
        assert_eq!(fragments(one, 100).len(), 1);
    }
}
