//! Snowflake IDs: 41-bit millisecond timestamp since a fixed epoch, 10-bit node, 12-bit sequence.
//!
//! The layout and epoch are those of `github.com/bwmarrin/snowflake` (Twitter's epoch), which the
//! Go crawler used, so IDs minted by either sort together: `1602250527540776960` decodes to
//! node 1, 2022-12-12T10:34:28.798Z.
//!
//! IDs from one generator are unique and strictly increasing, also across threads. When the clock
//! steps back the generator waits until it has caught up with the last timestamp used rather than
//! risk a repeat (up to [`Snowflake::max_backward_wait`], then it reports an error instead of
//! blocking indefinitely).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Milliseconds since the Unix epoch at which snowflake time 0 starts (Twitter's epoch).
pub const EPOCH_MS: u64 = 1_288_834_974_657;
/// Bits of the node number.
pub const NODE_BITS: u32 = 10;
/// Bits of the per-millisecond sequence.
pub const SEQUENCE_BITS: u32 = 12;
/// Bits of the timestamp.
pub const TIME_BITS: u32 = 41;
/// Largest node number (1023).
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;
const MAX_SEQUENCE: u16 = (1 << SEQUENCE_BITS) - 1;
const MAX_TIME: u64 = (1 << TIME_BITS) - 1;

/// A source of wall-clock time, injectable so tests can step it.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Block the calling thread for about `d` (a test clock may advance itself instead).
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 reads as 0, which is before the epoch and reported as an error.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Why no ID could be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnowflakeError {
    /// The node number does not fit in 10 bits.
    #[error("snowflake: node {0} out of range 0..=1023")]
    NodeOutOfRange(u64),
    /// The clock reads before the snowflake epoch or after its 41-bit range ends.
    #[error("snowflake: clock {0} ms is outside the snowflake time range")]
    ClockOutOfRange(u64),
    /// The clock stepped back further than the generator is willing to wait.
    #[error("snowflake: clock moved back by {0} ms, more than the allowed wait")]
    ClockMovedBack(u64),
}

/// A snowflake ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnowflakeId(pub i64);

impl SnowflakeId {
    /// Milliseconds since the Unix epoch when the ID was made.
    pub fn unix_ms(self) -> u64 {
        ((self.0 as u64) >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS
    }

    /// The node (master id) that made it.
    pub fn node(self) -> u16 {
        (((self.0 as u64) >> SEQUENCE_BITS) & MAX_NODE as u64) as u16
    }

    /// Its sequence number within its millisecond.
    pub fn sequence(self) -> u16 {
        ((self.0 as u64) & MAX_SEQUENCE as u64) as u16
    }
}

impl std::fmt::Display for SnowflakeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug)]
struct State {
    /// Timestamp (ms since the snowflake epoch) of the last ID made.
    last: u64,
    /// Sequence of the last ID made within `last`.
    seq: u16,
    /// Whether any ID was made yet.
    started: bool,
}

/// A snowflake ID generator for one node.
pub struct Snowflake {
    node: u16,
    clock: Arc<dyn Clock>,
    max_backward_wait: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for Snowflake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snowflake")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Snowflake {
    /// A generator for `node` (0..=1023) on the system clock.
    pub fn new(node: u64) -> Result<Self, SnowflakeError> {
        Self::with_clock(node, Arc::new(SystemClock))
    }

    /// A generator for `node` on the given clock.
    pub fn with_clock(node: u64, clock: Arc<dyn Clock>) -> Result<Self, SnowflakeError> {
        if node > MAX_NODE as u64 {
            return Err(SnowflakeError::NodeOutOfRange(node));
        }
        Ok(Self {
            node: node as u16,
            clock,
            max_backward_wait: Duration::from_secs(10),
            state: Mutex::new(State {
                last: 0,
                seq: 0,
                started: false,
            }),
        })
    }

    /// Set how far back (default 10 s) the clock may step before [`Snowflake::next_id`] errors
    /// instead of waiting for it to catch up.
    pub fn max_backward_wait(mut self, d: Duration) -> Self {
        self.max_backward_wait = d;
        self
    }

    /// The node number.
    pub fn node(&self) -> u16 {
        self.node
    }

    fn now(&self) -> Result<u64, SnowflakeError> {
        let ms = self.clock.now_ms();
        match ms.checked_sub(EPOCH_MS) {
            Some(t) if t <= MAX_TIME => Ok(t),
            _ => Err(SnowflakeError::ClockOutOfRange(ms)),
        }
    }

    /// Wait until the clock reads at least `target` (snowflake ms); returns the reading.
    fn wait_until(&self, target: u64) -> Result<u64, SnowflakeError> {
        let mut now = self.now()?;
        if target.saturating_sub(now) > self.max_backward_wait.as_millis() as u64 {
            return Err(SnowflakeError::ClockMovedBack(target - now));
        }
        while now < target {
            self.clock
                .sleep(Duration::from_millis((target - now).min(10)));
            now = self.now()?;
        }
        Ok(now)
    }

    /// The next ID: unique and greater than every ID this generator made before.
    ///
    /// Blocks (briefly) when 4096 IDs were made within one millisecond, or while the clock is behind
    /// the last timestamp used.
    pub fn next_id(&self) -> Result<SnowflakeId, SnowflakeError> {
        let mut st = self.state.lock();
        let mut now = self.now()?;
        if st.started && now < st.last {
            tracing::warn!(
                back_ms = st.last - now,
                "snowflake: clock moved back, waiting"
            );
            now = self.wait_until(st.last)?;
        }
        if st.started && now == st.last {
            if st.seq == MAX_SEQUENCE {
                now = self.wait_until(st.last + 1)?;
                st.seq = 0;
            } else {
                st.seq += 1;
            }
        } else {
            st.seq = 0;
        }
        st.last = now;
        st.started = true;
        let id = (now << (NODE_BITS + SEQUENCE_BITS))
            | ((self.node as u64) << SEQUENCE_BITS)
            | st.seq as u64;
        Ok(SnowflakeId(id as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock that only moves when told to, or by the generator's own sleeps.
    struct ManualClock {
        now: AtomicU64,
        slept_ms: AtomicU64,
    }

    impl ManualClock {
        fn at(ms: u64) -> Arc<Self> {
            Arc::new(Self {
                now: AtomicU64::new(ms),
                slept_ms: AtomicU64::new(0),
            })
        }
        fn set(&self, ms: u64) {
            self.now.store(ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.now.load(Ordering::SeqCst)
        }
        fn sleep(&self, d: Duration) {
            let ms = d.as_millis().max(1) as u64;
            self.slept_ms.fetch_add(ms, Ordering::SeqCst);
            self.now.fetch_add(ms, Ordering::SeqCst);
        }
    }

    #[test]
    fn decodes_the_go_crawlers_id() {
        let id = SnowflakeId(1_602_250_527_540_776_960);
        assert_eq!(id.unix_ms(), 1_670_841_268_798);
        assert_eq!(id.node(), 1);
        assert_eq!(id.sequence(), 0);
    }

    #[test]
    fn layout_round_trips() {
        let clock = ManualClock::at(EPOCH_MS + 123_456);
        let g = Snowflake::with_clock(1023, clock.clone()).unwrap();
        let a = g.next_id().unwrap();
        let b = g.next_id().unwrap();
        assert_eq!(a.unix_ms(), EPOCH_MS + 123_456);
        assert_eq!(a.node(), 1023);
        assert_eq!((a.sequence(), b.sequence()), (0, 1));
        assert!(b > a);
    }

    #[test]
    fn node_out_of_range() {
        assert_eq!(
            Snowflake::new(1024).err(),
            Some(SnowflakeError::NodeOutOfRange(1024))
        );
    }

    #[test]
    fn clock_before_epoch_is_an_error() {
        let g = Snowflake::with_clock(1, ManualClock::at(EPOCH_MS - 1)).unwrap();
        assert!(matches!(
            g.next_id(),
            Err(SnowflakeError::ClockOutOfRange(_))
        ));
    }

    #[test]
    fn sequence_overflow_moves_to_next_millisecond() {
        let clock = ManualClock::at(EPOCH_MS + 1000);
        let g = Snowflake::with_clock(5, clock.clone()).unwrap();
        let mut last = None;
        for _ in 0..=MAX_SEQUENCE {
            let id = g.next_id().unwrap();
            assert_eq!(id.unix_ms(), EPOCH_MS + 1000);
            last = Some(id);
        }
        let next = g.next_id().unwrap();
        assert_eq!(next.unix_ms(), EPOCH_MS + 1001);
        assert_eq!(next.sequence(), 0);
        assert!(Some(next) > last);
        assert_eq!(clock.slept_ms.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn clock_step_back_waits_and_never_repeats() {
        let clock = ManualClock::at(EPOCH_MS + 10_000);
        let g = Snowflake::with_clock(7, clock.clone()).unwrap();
        let a = g.next_id().unwrap();
        let b = g.next_id().unwrap();
        // Step back 50 ms: the generator must wait (sleeping on the clock) until it reaches
        // 10_000 again and continue the sequence there.
        clock.set(EPOCH_MS + 9_950);
        let c = g.next_id().unwrap();
        assert!(c > b && b > a);
        assert_eq!(c.unix_ms(), EPOCH_MS + 10_000);
        assert_eq!(c.sequence(), 2);
        assert_eq!(clock.slept_ms.load(Ordering::SeqCst), 50);
    }

    #[test]
    fn large_step_back_is_an_error_not_a_repeat() {
        let clock = ManualClock::at(EPOCH_MS + 100_000);
        let g = Snowflake::with_clock(7, clock.clone())
            .unwrap()
            .max_backward_wait(Duration::from_secs(1));
        let a = g.next_id().unwrap();
        clock.set(EPOCH_MS + 50_000);
        assert_eq!(g.next_id(), Err(SnowflakeError::ClockMovedBack(50_000)));
        clock.set(EPOCH_MS + 100_001);
        assert!(g.next_id().unwrap() > a);
    }

    #[test]
    fn unique_and_increasing_across_threads() {
        let g = Arc::new(Snowflake::new(3).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::with_capacity(20_000);
                    for _ in 0..20_000 {
                        ids.push(g.next_id().unwrap());
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            let ids = t.join().unwrap();
            // Each thread sees strictly increasing IDs.
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            for id in ids {
                assert_eq!(id.node(), 3);
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 80_000);
    }
}
