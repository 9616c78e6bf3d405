//! The per-task frontier: pending requests, requests in flight, and the dedup set of URL
//! fingerprints; plus the changes since the last checkpoint ([`Delta`]), so that a checkpoint
//! writes what changed, not everything seen so far (see [`super::checkpoint`]).
//!
//! The seen set holds 64-bit fingerprints (XXH3) of normalised URLs, 8 bytes a URL plus the
//! hash table's slack, instead of whole strings. Two distinct URLs share a fingerprint with
//! probability about n²/2⁶⁵ over n URLs (3·10⁻⁸ for a million): such a URL would be skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;

use serde::ser::SerializeSeq as _;
use serde::{Deserialize, Serialize};
use url::Url;

use super::queue::{PendingQueue, SpillError};
pub use super::request::{fingerprint_of, normalise, Request};

/// Fingerprints are already uniformly distributed: hash them as they are.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in for correctness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A set of fingerprints.
pub type FingerprintSet = HashSet<u64, BuildHasherDefault<IdentityHasher>>;

/// Counters carried across workers in checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Pages fetched and processed.
    pub pages: u64,
    /// Items written.
    pub items: u64,
    /// Requests that failed for good.
    pub errors: u64,
}

/// A full image of a frontier: the base a checkpoint's deltas apply to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The resource (run) it belongs to: a resource recreated under the same name starts over.
    pub resource_id: String,
    /// Fingerprints seen, sorted.
    pub seen: Vec<u64>,
    /// Requests not yet done (in flight first, then pending), in order.
    pub pending: Vec<Request>,
    /// Counters so far.
    pub counters: Counters,
}

/// A [`Snapshot`] borrowing the frontier's queue: encodes exactly as the snapshot would, without
/// copying every pending request first (a fold of a large frontier would double its memory).
#[derive(Serialize)]
pub struct SnapshotRef<'a> {
    resource_id: &'a str,
    seen: Vec<u64>,
    pending: PendingRef<'a>,
    counters: Counters,
}

/// In flight, then pending, as one sequence.
struct PendingRef<'a>(&'a Frontier);

/// A spill file that could not be read, or the serializer's own error.
enum VisitError<E> {
    Spill(SpillError),
    Ser(E),
}

impl<E> From<SpillError> for VisitError<E> {
    fn from(e: SpillError) -> Self {
        Self::Spill(e)
    }
}

impl Serialize for PendingRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut seq = s.serialize_seq(Some(f.in_flight.len() + f.pending.len()))?;
        for r in f.in_flight.values() {
            seq.serialize_element(r)?;
        }
        match f
            .pending
            .try_for_each(|r| seq.serialize_element(r).map_err(VisitError::Ser))
        {
            Ok(()) => seq.end(),
            Err(VisitError::Ser(e)) => Err(e),
            Err(VisitError::Spill(e)) => Err(serde::ser::Error::custom(e)),
        }
    }
}

/// What changed since the previous checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Requests queued, in order (their fingerprints join the seen set).
    pub added: Vec<Request>,
    /// Fingerprints seen without being queued (redirect targets).
    pub seen: Vec<u64>,
    /// Fingerprints of requests done (fetched, failed for good, or denied by robots.txt).
    pub done: Vec<u64>,
    /// Counters at this checkpoint (absolute).
    pub counters: Counters,
}

impl Delta {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.seen.is_empty() && self.done.is_empty()
    }
}

/// A request handed out by [`Frontier::dispatch`], to give back to [`Frontier::complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

/// Dedup set, pending queue and requests in flight of one task.
#[derive(Debug, Default)]
pub struct Frontier {
    seen: FingerprintSet,
    /// Spilled to disk past a few thousand requests when given a directory.
    pending: PendingQueue,
    /// Handed out, not yet complete: still "pending" in every checkpoint (fetched again after
    /// a crash), in the order they were handed out.
    in_flight: BTreeMap<Ticket, Request>,
    next_ticket: u64,
    reload: bool,
    delta: Delta,
}

impl Frontier {
    /// An empty frontier; with `reload`, URLs are queued again even when seen before.
    pub fn new(reload: bool) -> Self {
        Self {
            reload,
            ..Self::default()
        }
    }

    /// An empty frontier whose pending queue spills to files under `dir`.
    pub fn spilling(reload: bool, dir: PathBuf) -> Self {
        Self {
            reload,
            pending: PendingQueue::new(Some(dir)),
            ..Self::default()
        }
    }

    /// Queue `url` unless already seen (or with `reload`). True when queued.
    pub fn push(&mut self, url: &Url, depth: u32, rule: Option<String>) -> bool {
        let key = normalise(url);
        let new = self.seen.insert(fingerprint_of(&key));
        if !new && !self.reload {
            return false;
        }
        let req = Request {
            url: key,
            depth,
            rule,
        };
        self.delta.added.push(req.clone());
        self.pending.push_back(req);
        true
    }

    /// Hand out the next request; it stays in every checkpoint until [`Frontier::complete`].
    /// `Err` when spilled requests cannot be read back.
    pub fn dispatch(&mut self) -> Result<Option<(Ticket, Request)>, SpillError> {
        let Some(req) = self.pending.pop_front()? else {
            return Ok(None);
        };
        let t = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.in_flight.insert(t, req.clone());
        Ok(Some((t, req)))
    }

    /// The request of `ticket` is done (whatever its outcome).
    pub fn complete(&mut self, ticket: Ticket) {
        if let Some(req) = self.in_flight.remove(&ticket) {
            self.delta.done.push(req.fingerprint());
        }
    }

    /// Pending requests, those in flight included.
    pub fn pending_len(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    /// Requests handed out and not complete.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Distinct URLs seen.
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    /// Record `url` as seen without queueing it (the target of a followed redirect).
    pub fn mark_seen(&mut self, url: &Url) {
        let fp = fingerprint_of(&normalise(url));
        if self.seen.insert(fp) {
            self.delta.seen.push(fp);
        }
    }

    /// Whether `url` was seen.
    pub fn has_seen(&self, url: &Url) -> bool {
        self.seen.contains(&fingerprint_of(&normalise(url)))
    }

    /// The changes since the last call (or since the frontier was built), with `counters`.
    pub fn take_delta(&mut self, counters: Counters) -> Delta {
        let mut d = std::mem::take(&mut self.delta);
        d.counters = counters;
        d
    }

    /// Forget the changes recorded so far (a full snapshot was written instead).
    pub fn clear_delta(&mut self) {
        self.delta = Delta::default();
    }

    /// The full image (in flight first: they were handed out before anything still queued).
    pub fn snapshot(&self, resource_id: &str, counters: Counters) -> Result<Snapshot, SpillError> {
        let mut seen: Vec<u64> = self.seen.iter().copied().collect();
        seen.sort_unstable();
        let mut pending: Vec<Request> = self.in_flight.values().cloned().collect();
        self.pending.try_for_each(|r| {
            pending.push(r.clone());
            Ok::<_, SpillError>(())
        })?;
        Ok(Snapshot {
            resource_id: resource_id.to_string(),
            seen,
            pending,
            counters,
        })
    }

    /// The full image, borrowed (see [`SnapshotRef`]).
    pub fn snapshot_ref<'a>(&'a self, resource_id: &'a str, counters: Counters) -> SnapshotRef<'a> {
        let mut seen: Vec<u64> = self.seen.iter().copied().collect();
        seen.sort_unstable();
        SnapshotRef {
            resource_id,
            seen,
            pending: PendingRef(self),
            counters,
        }
    }

    /// Rebuild from a base and the deltas written after it, in order, spilling to `spill` if
    /// given. Returns the counters of the newest of them.
    pub fn restore(
        base: Snapshot,
        deltas: Vec<Delta>,
        reload: bool,
        spill: Option<PathBuf>,
    ) -> (Self, Counters) {
        let mut seen: FingerprintSet = base.seen.into_iter().collect();
        let mut counters = base.counters;
        let mut done: HashMap<u64, usize> = HashMap::new();
        let mut queue: Vec<Request> = base.pending;
        for d in deltas {
            for r in &d.added {
                seen.insert(r.fingerprint());
            }
            seen.extend(d.seen);
            queue.extend(d.added);
            for fp in d.done {
                *done.entry(fp).or_default() += 1;
            }
            counters = d.counters;
        }
        // A done request leaves the queue once per completion (with `Reload` a URL can be
        // queued twice): the earliest copy goes.
        let mut pending = PendingQueue::new(spill);
        for r in queue {
            match done.get_mut(&r.fingerprint()) {
                Some(n) if *n > 0 => *n -= 1,
                _ => pending.push_back(r),
            }
        }
        let f = Self {
            seen,
            pending,
            reload,
            ..Self::default()
        };
        (f, counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    fn urls(f: &Frontier) -> Vec<String> {
        f.snapshot("x", Counters::default())
            .expect("snapshot")
            .pending
            .into_iter()
            .map(|r| r.url)
            .collect()
    }

    #[test]
    fn normalised_dedup() {
        assert_eq!(
            normalise(&url("HTTP://Example.COM:80/a/./b/../c?z=1&a=2#frag")),
            "http://example.com/a/c?a=2&z=1"
        );
        assert_eq!(normalise(&url("http://h/x?")), "http://h/x");
        let mut f = Frontier::new(false);
        assert!(f.push(&url("http://h/a?b=1&a=2"), 0, None));
        assert!(!f.push(&url("http://H/a?a=2&b=1#x"), 1, None));
        assert!(f.push(&url("http://h/b"), 1, Some("r".into())));
        assert_eq!(f.pending_len(), 2);
        let snap = f.snapshot("7", Counters::default()).expect("snapshot");
        let (g, _) = Frontier::restore(snap.clone(), Vec::new(), false, None);
        assert_eq!(
            g.snapshot("7", Counters::default()).expect("snapshot"),
            snap
        );
        assert_eq!(urls(&g), ["http://h/a?a=2&b=1", "http://h/b"]);

        let mut r = Frontier::new(true);
        assert!(r.push(&url("http://h/a"), 0, None));
        assert!(r.push(&url("http://h/a"), 1, None), "reload queues again");
    }

    #[test]
    fn in_flight_requests_stay_in_checkpoints_until_complete() {
        let mut f = Frontier::new(false);
        for p in ["a", "b", "c"] {
            f.push(&url(&format!("http://h/{p}")), 0, None);
        }
        let (ta, _) = f.dispatch().expect("read").expect("a");
        let (tb, b) = f.dispatch().expect("read").expect("b");
        assert_eq!(b.url, "http://h/b");
        assert_eq!(f.pending_len(), 3);
        assert_eq!(urls(&f), ["http://h/a", "http://h/b", "http://h/c"]);
        f.complete(tb);
        assert_eq!(urls(&f), ["http://h/a", "http://h/c"]);
        f.complete(ta);
        f.complete(ta); // twice: no effect
        assert_eq!(urls(&f), ["http://h/c"]);
        assert_eq!(f.in_flight_len(), 0);
    }

    #[test]
    fn base_plus_deltas_equals_the_live_frontier() {
        let c = |pages| Counters {
            pages,
            items: 0,
            errors: 0,
        };
        let mut live = Frontier::new(false);
        live.push(&url("http://h/0"), 0, None);
        let base = live.snapshot("r", c(0)).expect("snapshot");
        live.clear_delta();
        let mut deltas = Vec::new();
        let mut pages = 0;
        for round in 0..5 {
            // Two requests out, one back, new links, one redirect target.
            let Some((t1, r1)) = live.dispatch().expect("read") else {
                break;
            };
            let second = live.dispatch().expect("read");
            let d = r1.depth + 1;
            for k in 0..3 {
                live.push(&url(&format!("http://h/{round}-{k}")), d, None);
            }
            live.push(&url("http://h/0"), d, None); // seen: not queued again
            live.mark_seen(&url(&format!("http://h/redirected-{round}")));
            live.complete(t1);
            pages += 1;
            if round % 2 == 0 {
                if let Some((t2, _)) = second {
                    live.complete(t2);
                    pages += 1;
                }
            }
            deltas.push(live.take_delta(c(pages)));
        }
        let (restored, counters) = Frontier::restore(base, deltas, false, None);
        assert_eq!(counters, c(pages));
        assert_eq!(urls(&restored), urls(&live));
        assert_eq!(restored.seen_len(), live.seen_len());
        assert!(restored.has_seen(&url("http://h/redirected-3")));
        assert!(restored.has_seen(&url("http://h/0")));
    }

    #[test]
    fn a_spilling_frontier_checkpoints_and_restores_the_same_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = Frontier::spilling(false, dir.path().join("a"));
        for i in 0..30_000 {
            f.push(&url(&format!("http://h/{i}")), 1, None);
        }
        let _ = f.dispatch().expect("read");
        let snap = f.snapshot("s", Counters::default()).expect("snapshot");
        assert_eq!(snap.pending.len(), 30_000);
        let cfg = bincode::config::standard();
        let owned = bincode::serde::encode_to_vec(&snap, cfg).expect("encode");
        let borrowed = bincode::serde::encode_to_vec(f.snapshot_ref("s", Counters::default()), cfg)
            .expect("encode");
        assert_eq!(owned, borrowed);
        let (g, _) = Frontier::restore(snap.clone(), Vec::new(), false, Some(dir.path().join("b")));
        assert!(
            dir.path().join("b").exists(),
            "the restored queue spills too"
        );
        assert_eq!(
            g.snapshot("s", Counters::default()).expect("snapshot"),
            snap
        );
    }

    #[test]
    fn the_borrowed_snapshot_encodes_as_the_snapshot() {
        let mut f = Frontier::new(false);
        for i in 0..50 {
            f.push(
                &url(&format!("http://h/{i}")),
                1,
                (i % 2 == 0).then(|| "r".into()),
            );
        }
        let _ = f.dispatch().expect("read");
        let _ = f.dispatch().expect("read");
        let c = Counters {
            pages: 3,
            items: 2,
            errors: 1,
        };
        let cfg = bincode::config::standard();
        let owned = bincode::serde::encode_to_vec(f.snapshot("id", c).expect("snapshot"), cfg)
            .expect("encode");
        let borrowed = bincode::serde::encode_to_vec(f.snapshot_ref("id", c), cfg).expect("encode");
        assert_eq!(owned, borrowed);
    }

    #[test]
    fn reload_completions_remove_one_copy_each() {
        let mut f = Frontier::new(true);
        let base = f.snapshot("r", Counters::default()).expect("snapshot");
        f.push(&url("http://h/a"), 0, None);
        f.push(&url("http://h/a"), 1, None);
        let (t, _) = f.dispatch().expect("read").expect("first copy");
        f.complete(t);
        let d = f.take_delta(Counters::default());
        let (g, _) = Frontier::restore(base, vec![d], true, None);
        let snap = g.snapshot("r", Counters::default()).expect("snapshot");
        assert_eq!(snap.pending.len(), 1);
        assert_eq!(snap.pending[0].depth, 1);
    }

    #[test]
    fn a_million_fingerprints_fit_in_tens_of_megabytes() {
        // Each fingerprint is 8 bytes; the table keeps a power-of-two capacity at 7/8 load.
        let mut s = FingerprintSet::default();
        for i in 0..1_000_000u64 {
            s.insert(fingerprint_of(&format!("http://example.com/page/{i}")));
        }
        assert_eq!(s.len(), 1_000_000, "no collision among a million URLs");
        // hashbrown: buckets = capacity · 8/7 rounded up to a power of two, 8 + 1 bytes each.
        let buckets = (s.capacity() * 8 / 7).next_power_of_two();
        let bytes = buckets * (std::mem::size_of::<u64>() + 1);
        eprintln!("1M fingerprints: {buckets} buckets, {} MiB", bytes >> 20);
        assert!(bytes < 40 << 20, "{bytes}");
    }
}
