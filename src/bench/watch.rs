//! `watch-latency`: W watchers on one prefix; putters write values carrying their send time and
//! a sequence number; each watcher measures put-send → event-receipt latency and checks that it
//! sees every acknowledged put exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::watch_client::WatchClient;
use crawler_proto::etcdserverpb::watch_request::RequestUnion;
use crawler_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use crawler_proto::mvccpb::event::EventType;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::ctx::{status_text, with_timeout, BenchError, Ctx};
use super::stats::{Recorder, Report};

/// Sequence numbers above this are malformed (they would make the seen-set huge).
const MAX_SEQ: u64 = 1 << 28;
/// How long all watchers may take to be created.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Parameters of the watch-latency workload.
pub(super) struct WatchParams {
    /// Number of watchers.
    pub watchers: usize,
    /// Total puts per second over all putters (0 = unlimited).
    pub put_rate: u64,
    /// Value size (≥ 16).
    pub val_size: usize,
    /// How long watchers wait for missing events once putting is over.
    pub drain: Duration,
}

/// A growable bit set of sequence numbers.
#[derive(Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// Insert `seq`; false if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let had = self.words[w] & (1 << b) != 0;
        self.words[w] |= 1 << b;
        !had
    }

    /// Whether `seq` is present.
    #[cfg(test)]
    pub(crate) fn contains(&self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        w < self.words.len() && self.words[w] & (1 << (seq % 64)) != 0
    }

    /// Number of members.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Number of members of `self` also in `other`.
    pub fn intersection_len(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| u64::from((a & b).count_ones()))
            .sum()
    }
}

/// The smallest key greater than every key with this prefix (etcd's `--prefix` range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Encode send time (ns since `base`) and sequence number at the front of the value.
fn encode_value(sent_ns: u64, seq: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(16));
    v.extend_from_slice(&sent_ns.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.resize(size.max(16), b'w');
    v
}

fn decode_value(v: &[u8]) -> Option<(u64, u64)> {
    let sent = u64::from_be_bytes(v.get(0..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((sent, seq))
}

fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Open a watch stream on the prefix and wait for its `created` response.
async fn create_watch(
    channel: Channel,
    prefix: Vec<u8>,
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), String> {
    let (tx, rx) = mpsc::channel(4);
    let range_end = prefix_end(&prefix);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix,
            range_end,
            ..Default::default()
        })),
    };
    // Queue the create request first: the server may send headers only with its first reply.
    tx.send(create)
        .await
        .map_err(|_| "watch request channel closed".to_string())?;
    let mut stream = with_timeout(WatchClient::new(channel).watch(ReceiverStream::new(rx)))
        .await
        .map_err(|s| format!("watch: {}", status_text(&s)))?;
    loop {
        match tokio::time::timeout(CREATE_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(r))) if r.created && !r.canceled => return Ok((tx, stream)),
            Ok(Ok(Some(r))) if r.canceled => {
                return Err(format!("watch canceled: {}", r.cancel_reason));
            }
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Err("watch stream ended before created".into()),
            Ok(Err(s)) => return Err(format!("watch: {}", status_text(&s))),
            Err(_) => return Err("watch not created in time".into()),
        }
    }
}

/// One watcher: record each event's latency until every acknowledged put was seen (or the
/// drain time after the end of putting has passed).
async fn run_watcher(
    mut stream: Streaming<WatchResponse>,
    _keep_open: mpsc::Sender<WatchRequest>,
    base: Instant,
    mut acked: watch::Receiver<Option<Arc<SeqSet>>>,
    drain: Duration,
) -> Recorder {
    let mut rec = Recorder::new();
    let mut seen = SeqSet::default();
    let mut duplicates = 0u64;
    let mut expected: Option<(Arc<SeqSet>, tokio::time::Instant)> = None;
    loop {
        if let Some((exp, _)) = &expected {
            if seen.intersection_len(exp) == exp.len() {
                break;
            }
        }
        let deadline = expected.as_ref().map(|(_, d)| *d);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    let now_ns = nanos_since(base);
                    if resp.canceled {
                        rec.error(format!("watch canceled: {}", resp.cancel_reason));
                        break;
                    }
                    for ev in resp.events {
                        if ev.r#type != EventType::Put as i32 {
                            continue;
                        }
                        let Some(kv) = ev.kv else {
                            rec.error("event without kv");
                            continue;
                        };
                        match decode_value(&kv.value) {
                            Some((sent, seq)) if seq < MAX_SEQ && sent <= now_ns => {
                                if seen.insert(seq) {
                                    rec.record(Duration::from_nanos(now_ns - sent));
                                } else {
                                    duplicates += 1;
                                }
                            }
                            _ => rec.error("malformed event value"),
                        }
                    }
                }
                Ok(None) => {
                    rec.error("watch stream ended");
                    break;
                }
                Err(s) => {
                    rec.error(format!("watch: {}", status_text(&s)));
                    break;
                }
            },
            changed = acked.changed(), if expected.is_none() => {
                if changed.is_err() {
                    break;
                }
                if let Some(set) = acked.borrow_and_update().clone() {
                    expected = Some((set, tokio::time::Instant::now() + drain));
                }
            },
            _ = sleep => break,
        }
    }
    let missing = match &expected {
        Some((exp, _)) => exp.len() - seen.intersection_len(exp),
        None => 0,
    };
    rec.add("missing", missing);
    rec.add("duplicates", duplicates);
    rec.errors_n(missing, "missing watch events");
    rec.errors_n(duplicates, "duplicate watch events");
    rec
}

/// `watch-latency`: ops are events received by watchers; `--total` counts puts.
pub(super) async fn watch_latency(ctx: &Ctx, p: WatchParams) -> Result<Report, BenchError> {
    if p.watchers == 0 {
        return Err(BenchError::Config("--watchers must be positive".into()));
    }
    if p.val_size < 16 {
        return Err(BenchError::Config(
            "--val-size must be at least 16 for watch-latency".into(),
        ));
    }
    let prefix = format!("bench-watch/{:016x}/", rand::random::<u64>()).into_bytes();
    let base = Instant::now();

    // Watchers first; putting starts only once every watch is created.
    let (acked_tx, acked_rx) = watch::channel::<Option<Arc<SeqSet>>>(None);
    let mut creating = Vec::with_capacity(p.watchers);
    for w in 0..p.watchers {
        creating.push(tokio::spawn(create_watch(ctx.channel(w), prefix.clone())));
    }
    let mut watchers = Vec::with_capacity(p.watchers);
    for c in creating {
        let (tx, stream) = c.await?.map_err(BenchError::Setup)?;
        watchers.push(tokio::spawn(run_watcher(
            stream,
            tx,
            base,
            acked_rx.clone(),
            p.drain,
        )));
    }

    let budget = ctx.budget();
    let start = Instant::now();
    // Each putter paces itself to its share of the total rate.
    let interval =
        (p.put_rate > 0).then(|| Duration::from_secs_f64(ctx.clients as f64 / p.put_rate as f64));
    let mut putters = Vec::with_capacity(ctx.clients);
    for c in 0..ctx.clients {
        let mut client = KvClient::new(ctx.channel(c));
        let budget = budget.clone();
        let prefix = prefix.clone();
        let val_size = p.val_size;
        putters.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut acked = Vec::new();
            let mut ticker = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let Some(seq) = budget.take() else { break };
                if seq >= MAX_SEQ {
                    break;
                }
                let mut key = prefix.clone();
                key.extend_from_slice(seq.to_string().as_bytes());
                let req = PutRequest {
                    key,
                    value: encode_value(nanos_since(base), seq, val_size),
                    ..Default::default()
                };
                match with_timeout(client.put(req)).await {
                    Ok(_) => acked.push(seq),
                    Err(s) => rec.error(format!("put: {}", status_text(&s))),
                }
            }
            (rec, acked)
        }));
    }
    let mut total = Recorder::new();
    let mut acked = SeqSet::default();
    for h in putters {
        let (rec, seqs) = h.await?;
        total.merge(&rec);
        for s in seqs {
            acked.insert(s);
        }
    }
    total.add("puts", acked.len());
    total.add("watchers", p.watchers as u64);
    // Receivers may all be gone already (every watch failed); that is counted by them.
    let _ = acked_tx.send(Some(Arc::new(acked)));
    for h in watchers {
        total.merge(&h.await?);
    }
    Ok(total.report("watch-latency", ctx.setup.clone(), start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set() {
        let mut a = SeqSet::default();
        assert!(a.insert(3));
        assert!(!a.insert(3));
        assert!(a.insert(130));
        assert!(a.contains(130) && !a.contains(129) && !a.contains(10_000));
        assert_eq!(a.len(), 2);
        let mut b = SeqSet::default();
        b.insert(3);
        b.insert(4);
        assert_eq!(a.intersection_len(&b), 1);
        assert_eq!(b.intersection_len(&a), 1);
    }

    #[test]
    fn values_round_trip() {
        let v = encode_value(123, 45, 256);
        assert_eq!(v.len(), 256);
        assert_eq!(decode_value(&v), Some((123, 45)));
        assert_eq!(encode_value(1, 2, 3).len(), 16);
        assert_eq!(decode_value(b"short"), None);
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }
}
