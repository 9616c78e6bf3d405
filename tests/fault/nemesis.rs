//! The nemesis: a seeded random schedule of faults against a [`FaultCluster`].
//!
//! One fault at a time: pick a fault type among the enabled ones, apply it, hold it for a random
//! 1–5 s (`--max-hold`), heal it, pause 0.5–1.5 s, repeat until the deadline; then heal everything.
//!
//! Fault types:
//! - `kill`: `kill -9` a member (the leader half of the time), restart it with the same data dir;
//!   one time in five, `kill -9` every member at once and restart them all (durability).
//! - `pause`: `SIGSTOP` a member (the leader half of the time), `SIGCONT` it.
//! - `partition`: on the peer proxies, one of: isolate the leader; a random majority/minority
//!   split; a bridge (two halves that only talk through one member); slow links (every link
//!   delayed 20–200 ms). Cut links either drop (black hole) or refuse connections.
//! - `membership`: remove a random member (possibly the leader) with `MemberRemove`, kill it,
//!   add a brand-new member (fresh name, data dir and ports) with `MemberAdd` and start it with
//!   `--initial-cluster-state existing`, all under load.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

use super::cluster::{ClusterError, FaultCluster};
use super::history::{fmt_time, Recorder};
use super::proxy::LinkMode;

/// Fault families that can be enabled with `--faults`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// kill -9 and restart.
    Kill,
    /// SIGSTOP / SIGCONT.
    Pause,
    /// Network faults on peer links.
    Partition,
    /// Remove a member and add a new one.
    Membership,
}

impl FaultKind {
    /// All fault families.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Membership,
    ];

    /// Parse a `--faults` element.
    pub fn parse(s: &str) -> Option<FaultKind> {
        match s.trim() {
            "kill" => Some(FaultKind::Kill),
            "pause" => Some(FaultKind::Pause),
            "partition" => Some(FaultKind::Partition),
            "membership" => Some(FaultKind::Membership),
            _ => None,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Membership => "membership",
        })
    }
}

/// A fault currently applied, with what is needed to heal it.
enum Active {
    Killed(usize),
    KilledAll(Vec<usize>),
    Paused(usize),
    Links,
    None,
}

/// One line of the nemesis log, timestamped on the history clock.
#[derive(Clone, Debug)]
pub struct NemesisEvent {
    /// Recorder time (ns).
    pub at: u64,
    /// What happened.
    pub what: String,
}

/// Fault schedule runner.
pub struct Nemesis {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    recorder: Recorder,
    /// Everything the nemesis did, in order.
    pub events: Vec<NemesisEvent>,
    /// Faults injected, by detailed type (e.g. `partition/isolate-leader`).
    pub counts: BTreeMap<String, usize>,
    /// Faults that could not be applied or healed as planned (reported, not fatal).
    pub problems: Vec<String>,
    /// Longest time a fault is held (ms); the shortest is 1 s.
    pub max_hold_ms: u64,
}

impl Nemesis {
    /// A nemesis with its own random stream.
    pub fn new(rng: StdRng, kinds: Vec<FaultKind>, recorder: Recorder) -> Nemesis {
        Nemesis {
            rng,
            kinds,
            recorder,
            events: Vec::new(),
            counts: BTreeMap::new(),
            problems: Vec::new(),
            max_hold_ms: 5000,
        }
    }

    fn log(&mut self, what: String) {
        let at = self.recorder.now();
        println!("  [{:>10} {}] nemesis: {what}", fmt_time(at), utc_now());
        self.events.push(NemesisEvent { at, what });
    }

    fn count(&mut self, kind: &str) {
        *self.counts.entry(kind.to_string()).or_default() += 1;
    }

    /// Inject faults until `until`, then heal everything.
    pub async fn run(&mut self, cluster: &mut FaultCluster, until: Instant) {
        if self.kinds.is_empty() {
            tokio::time::sleep_until(until).await;
            return;
        }
        while Instant::now() < until {
            let pause = self.rng.gen_range(500..1500);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if Instant::now() >= until {
                break;
            }
            let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
            let active = match self.apply(cluster, kind).await {
                Ok(a) => a,
                Err(e) => {
                    let msg = format!("{kind} failed: {e}");
                    self.log(msg.clone());
                    self.problems.push(msg);
                    Active::None
                }
            };
            if !matches!(active, Active::None) {
                let hold = self.rng.gen_range(1000..=self.max_hold_ms.max(1000));
                let hold_until = (Instant::now() + Duration::from_millis(hold)).min(until);
                tokio::time::sleep_until(hold_until).await;
            }
            if let Err(e) = self.heal(cluster, active) {
                let msg = format!("heal failed: {e}");
                self.log(msg.clone());
                self.problems.push(msg);
            }
            self.note_crashes(cluster);
        }
        self.heal_all(cluster);
    }

    /// A member slot: the leader with probability 1/2, else a random one.
    async fn pick_target(&mut self, cluster: &mut FaultCluster) -> Option<usize> {
        let members = cluster.member_slots();
        if self.rng.gen_bool(0.5) {
            if let Some(l) = cluster.leader().await {
                return Some(l);
            }
        }
        members.choose(&mut self.rng).copied()
    }

    async fn apply(
        &mut self,
        cluster: &mut FaultCluster,
        kind: FaultKind,
    ) -> Result<Active, ClusterError> {
        match kind {
            FaultKind::Kill if self.rng.gen_bool(0.2) => {
                // Whole-cluster crash: acknowledged writes must survive on disk.
                let members = cluster.member_slots();
                for &m in &members {
                    cluster.kill(m);
                }
                self.count("kill-all");
                self.log(format!(
                    "kill -9 all members {:?}",
                    names(cluster, &members)
                ));
                Ok(Active::KilledAll(members))
            }
            FaultKind::Kill => {
                let Some(t) = self.pick_target(cluster).await else {
                    return Ok(Active::None);
                };
                cluster.kill(t);
                self.count("kill");
                self.log(format!("kill -9 {} (slot {t})", cluster.slot(t).name));
                Ok(Active::Killed(t))
            }
            FaultKind::Pause => {
                let Some(t) = self.pick_target(cluster).await else {
                    return Ok(Active::None);
                };
                cluster.pause(t);
                self.count("pause");
                self.log(format!("SIGSTOP {} (slot {t})", cluster.slot(t).name));
                Ok(Active::Paused(t))
            }
            FaultKind::Partition => self.partition(cluster).await,
            FaultKind::Membership => {
                let members = cluster.member_slots();
                let victim = if self.rng.gen_bool(0.3) {
                    cluster.leader().await
                } else {
                    None
                };
                let Some(victim) = victim.or_else(|| members.choose(&mut self.rng).copied()) else {
                    return Ok(Active::None);
                };
                self.count("membership");
                self.log(format!(
                    "membership: replacing {} (slot {victim})",
                    cluster.slot(victim).name
                ));
                let mut lines = Vec::new();
                let rec = self.recorder.clone();
                let res = cluster
                    .replace_member(victim, &mut self.rng, &mut |l| {
                        let at = rec.now();
                        println!(
                            "  [{:>10} {}] nemesis: membership: {l}",
                            fmt_time(at),
                            utc_now()
                        );
                        lines.push(NemesisEvent {
                            at,
                            what: format!("membership: {l}"),
                        });
                    })
                    .await;
                self.events.extend(lines);
                let new = res?;
                self.log(format!(
                    "membership: {} (slot {new}) is ready",
                    cluster.slot(new).name
                ));
                Ok(Active::None)
            }
        }
    }

    async fn partition(&mut self, cluster: &mut FaultCluster) -> Result<Active, ClusterError> {
        let mut members = cluster.member_slots();
        members.shuffle(&mut self.rng);
        let cut = if self.rng.gen_bool(0.7) {
            LinkMode::Drop
        } else {
            LinkMode::Refuse
        };
        let n = members.len();
        let variant = self.rng.gen_range(0..4);
        match variant {
            0 => {
                let leader = cluster.leader().await;
                let Some(l) = leader.or_else(|| members.first().copied()) else {
                    return Ok(Active::None);
                };
                for &m in &members {
                    if m != l {
                        cluster.set_both(l, m, cut);
                    }
                }
                self.count("partition/isolate-leader");
                self.log(format!(
                    "partition: isolate leader {} (slot {l}), links {cut}",
                    cluster.slot(l).name
                ));
            }
            1 => {
                // members is shuffled: the first minority-size members form the minority.
                let minority = (n - 1) / 2;
                let minority = minority.max(1);
                let (a, b) = members.split_at(minority);
                for &x in a {
                    for &y in b {
                        cluster.set_both(x, y, cut);
                    }
                }
                self.count("partition/majority-minority");
                self.log(format!(
                    "partition: minority {:?} | majority {:?}, links {cut}",
                    names(cluster, a),
                    names(cluster, b)
                ));
            }
            2 if n >= 3 => {
                // Bridge: left and right halves cannot talk; the bridge member talks to both.
                let bridge = members[0];
                let rest = &members[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                for &x in left {
                    for &y in right {
                        cluster.set_both(x, y, cut);
                    }
                }
                self.count("partition/bridge");
                self.log(format!(
                    "partition: bridge {} between {:?} and {:?}, links {cut}",
                    cluster.slot(bridge).name,
                    names(cluster, left),
                    names(cluster, right)
                ));
            }
            _ => {
                let d = Duration::from_millis(self.rng.gen_range(20..200));
                for &x in &members {
                    for &y in &members {
                        if x != y {
                            cluster.set_link(x, y, LinkMode::Delay(d));
                        }
                    }
                }
                self.count("partition/slow-links");
                self.log(format!("partition: all links delayed {}ms", d.as_millis()));
            }
        }
        Ok(Active::Links)
    }

    fn heal(&mut self, cluster: &mut FaultCluster, active: Active) -> Result<(), ClusterError> {
        match active {
            Active::Killed(t) => {
                cluster.restart(t)?;
                self.log(format!("restart {} (slot {t})", cluster.slot(t).name));
            }
            Active::KilledAll(members) => {
                for &t in &members {
                    cluster.restart(t)?;
                }
                self.log(format!(
                    "restart all members {:?}",
                    names(cluster, &members)
                ));
            }
            Active::Paused(t) => {
                cluster.resume(t);
                self.log(format!("SIGCONT {} (slot {t})", cluster.slot(t).name));
            }
            Active::Links => {
                cluster.heal_links();
                self.log("partition healed".into());
            }
            Active::None => {}
        }
        Ok(())
    }

    /// Record member processes that exited without being killed by the nemesis.
    fn note_crashes(&mut self, cluster: &mut FaultCluster) {
        for c in cluster.crashed() {
            let msg = format!("member crashed: {c}");
            self.log(msg.clone());
            self.problems.push(msg);
        }
    }

    /// Resume every paused member, restart every member that is down, heal every link.
    pub fn heal_all(&mut self, cluster: &mut FaultCluster) {
        self.note_crashes(cluster);
        cluster.heal_links();
        for i in cluster.member_slots() {
            if cluster.slot(i).paused {
                cluster.resume(i);
            }
            if !cluster.is_running(i) {
                if let Err(e) = cluster.restart(i) {
                    let msg = format!("restart of slot {i} at heal failed: {e}");
                    self.problems.push(msg.clone());
                    self.log(msg);
                }
            }
        }
        self.log("all faults healed".into());
    }
}

/// Wall-clock time of day (UTC, `HH:MM:SS.mmm`), to line the nemesis up with node logs.
pub fn utc_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn names(cluster: &FaultCluster, slots: &[usize]) -> Vec<String> {
    slots
        .iter()
        .map(|&s| cluster.slot(s).name.clone())
        .collect()
}
