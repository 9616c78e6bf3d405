//! One request of a run: robots.txt (per origin, fetched once), the host's politeness (worker
//! wide, [`HostPool`]), the fetch (with retries), and extraction on the blocking pool so that
//! parsing never stalls the async runtime. Many visits of one run are in flight at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rand::Rng as _;
use tokio::sync::{OnceCell, Semaphore};
use url::Url;

use super::fetch::{FetchError, Fetcher};
use super::hosts::{HostPool, Politeness};
use super::request::Request;
use super::robots::{self, AgentRules, Robots};
use super::rules::Rules;
use super::sink::Item;
use super::status::Status;
use crate::model::task::TaskConfig;

/// What happened to one request.
pub enum Outcome {
    /// Fetched and processed.
    Page {
        items: Vec<Item>,
        links: Vec<(Url, Option<String>)>,
        final_url: Url,
    },
    /// Not fetched: robots.txt disallows it.
    Denied,
    /// Failed for good.
    Error(String),
}

/// What every visit of one run shares.
pub struct Visitor {
    pub task: TaskConfig,
    pub rules: Rules,
    pub fetcher: Fetcher,
    pub status: Arc<Status>,
    hosts: HostPool,
    /// Bounds parsing to the machine's cores.
    parsers: Arc<Semaphore>,
    /// The robots.txt product token.
    agent: String,
    /// robots.txt rules by origin, each fetched once however many visits ask at once.
    robots: Mutex<HashMap<String, Arc<OnceCell<AgentRules>>>>,
    /// Origins whose robots.txt was unreachable, not yet counted as run errors.
    robots_failures: AtomicU64,
}

impl Visitor {
    /// The shared part of a run of `task`.
    pub fn new(
        task: TaskConfig,
        rules: Rules,
        fetcher: Fetcher,
        status: Arc<Status>,
        hosts: HostPool,
        parsers: Arc<Semaphore>,
    ) -> Self {
        let agent = robots_agent(&task);
        Self {
            task,
            rules,
            fetcher,
            status,
            hosts,
            parsers,
            agent,
            robots: Mutex::new(HashMap::new()),
            robots_failures: AtomicU64::new(0),
        }
    }

    /// Unreachable robots.txt files since the last call (each counts as one error).
    pub fn take_robots_failures(&self) -> u64 {
        self.robots_failures.swap(0, Ordering::Relaxed)
    }

    fn politeness(&self, delay: Duration) -> Politeness {
        Politeness {
            per_host: self.task.concurrency_per_host as usize,
            delay,
            limits: self.task.limits.clone(),
        }
    }

    /// Robots, politeness, rate limits, fetch, extraction. Cancel-safe: dropping it leaves
    /// nothing half done (a robots.txt fetch not cached, at worst).
    pub async fn visit(self: Arc<Self>, req: &Request) -> Outcome {
        let url = match Url::parse(&req.url) {
            Ok(u) => u,
            Err(e) => return Outcome::Error(format!("bad URL: {e}")),
        };
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let mut delay = Duration::ZERO;
        if self.task.robots {
            let rules = self.robots_for(&url, &host).await;
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            if !rules.allowed(&path) {
                tracing::debug!(task = %self.task.name, %url, "disallowed by robots.txt");
                return Outcome::Denied;
            }
            delay = rules.crawl_delay.unwrap_or_default();
        }
        let wait = self.task.wait_time;
        if wait > 0.0 {
            let r: f64 = rand::thread_rng().gen_range(0.0..=wait);
            delay = delay.max(Duration::from_secs_f64(r));
        }
        let permit = self.hosts.acquire(&host, &self.politeness(delay)).await;
        let fetched_at = SystemTime::now();
        let page = self.fetcher.get(&url).await;
        drop(permit);
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                if e.is_transient() {
                    self.status
                        .retries
                        .fetch_add(u64::from(self.task.retries), Ordering::Relaxed);
                }
                return Outcome::Error(e.to_string());
            }
        };
        self.status.retries.fetch_add(
            u64::from(page.attempts.saturating_sub(1)),
            Ordering::Relaxed,
        );
        let final_url = page.url.clone();
        let Some(text) = page.text else {
            return Outcome::Page {
                items: Vec::new(),
                links: Vec::new(),
                final_url,
            };
        };
        let Ok(_slot) = self.parsers.clone().acquire_owned().await else {
            return Outcome::Error("the parser pool is closed".into());
        };
        let (depth, rule, me) = (req.depth, req.rule.clone(), self.clone());
        let base = final_url.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            me.rules.apply(&text, &base, depth, rule.as_deref())
        })
        .await;
        let out = match parsed {
            Ok(out) => out,
            Err(e) => return Outcome::Error(format!("extraction failed: {e}")),
        };
        let items = out
            .items
            .into_iter()
            .enumerate()
            .map(|(i, x)| Item {
                task: self.task.name.clone(),
                kind: x.name,
                url: final_url.to_string(),
                // Extraction is deterministic, so a page processed again numbers its items
                // the same way (what the SQL sinks key on).
                index: u32::try_from(i).unwrap_or(u32::MAX),
                fields: x.fields,
                fetched_at,
            })
            .collect();
        Outcome::Page {
            items,
            links: out.links,
            final_url,
        }
    }

    /// The robots.txt rules of `url`'s origin, fetched once per run.
    async fn robots_for(&self, url: &Url, host: &str) -> AgentRules {
        let origin = url.origin().ascii_serialization();
        let cell = self
            .robots
            .lock()
            .entry(origin.clone())
            .or_default()
            .clone();
        cell.get_or_init(|| self.fetch_robots(origin, host))
            .await
            .clone()
    }

    async fn fetch_robots(&self, origin: String, host: &str) -> AgentRules {
        let robots = match Url::parse(&format!("{origin}/robots.txt")) {
            Err(_) => Robots::allow_all(),
            Ok(robots_url) => {
                let permit = self
                    .hosts
                    .acquire(host, &self.politeness(Duration::ZERO))
                    .await;
                let r = self.fetcher.get(&robots_url).await;
                drop(permit);
                match r {
                    Ok(p) => p.text.as_deref().map_or_else(Robots::allow_all, |t| {
                        let t = &t[..floor_char_boundary(t, robots::MAX_ROBOTS_BYTES)];
                        Robots::parse(t)
                    }),
                    // No robots.txt: everything is allowed (RFC 9309 "unavailable").
                    Err(FetchError::Status { status }) if (400..500).contains(&status) => {
                        Robots::allow_all()
                    }
                    // Unreachable: nothing is allowed (RFC 9309), for this run.
                    Err(e) => {
                        tracing::warn!(task = %self.task.name, %origin, error = %e, "robots.txt unreachable; the site is skipped");
                        self.robots_failures.fetch_add(1, Ordering::Relaxed);
                        Robots::disallow_all()
                    }
                }
            }
        };
        robots.for_agent(&self.agent)
    }
}

/// The product token looked up in robots.txt: the configured `User-Agent`'s first token, else
/// ours.
pub fn robots_agent(task: &TaskConfig) -> String {
    task.user_agent
        .as_deref()
        .and_then(|ua| ua.split(['/', ' ']).next())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(super::fetch::ROBOTS_AGENT)
        .to_ascii_lowercase()
}

/// The largest index `<= max` on a char boundary of `s`.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_and_char_boundary() {
        let mut t = TaskConfig::named("t");
        assert_eq!(robots_agent(&t), "crawler");
        t.user_agent = Some("MyBot/2.0 (+http://x)".into());
        assert_eq!(robots_agent(&t), "mybot");
        assert_eq!(floor_char_boundary("中文", 4), 3);
    }
}
