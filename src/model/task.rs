//! A crawl task's definition: the `[[Tasks]]` table of `crawler.toml` (field names exactly the Go
//! original's PascalCase ones; unknown fields rejected). What the master seeds, the worker runs
//! and the crawl engine reads. Checked by `crate::crawl::validate`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::sink::SinkConfig;

/// Which fetcher a task uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FetcherKind {
    /// Plain HTTP client.
    #[default]
    Http,
    /// HTTP client presenting itself as a desktop browser (the original's "browser" fetcher).
    Browser,
}

/// One rate limit: at most `EventCount` requests per `EventDur` seconds (a token bucket).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests allowed per window.
    #[serde(rename = "EventCount")]
    pub event_count: u32,
    /// Window length, seconds (fractions allowed).
    #[serde(rename = "EventDur")]
    pub event_dur: f64,
    /// Bucket size (burst); defaults to `EventCount`.
    #[serde(rename = "Bucket", default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<u32>,
}

impl LimitConfig {
    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.event_dur.max(0.0))
    }

    /// The burst size.
    pub fn burst(&self) -> u32 {
        self.bucket.unwrap_or(self.event_count)
    }
}

/// One crawl task (`[[Tasks]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Unique task name; also the resource name (`/resources/<Name>`).
    #[serde(rename = "Name")]
    pub name: String,
    /// Seed URLs.
    #[serde(rename = "URLs", default)]
    pub urls: Vec<String>,
    /// Hosts the crawl may visit (empty = the seeds' hosts).
    #[serde(rename = "AllowedDomains", default)]
    pub allowed_domains: Vec<String>,
    /// Upper bound of the random politeness delay between requests, seconds.
    #[serde(rename = "WaitTime", default)]
    pub wait_time: f64,
    /// Deepest link level followed from a seed (0 = unlimited).
    #[serde(rename = "MaxDepth", default)]
    pub max_depth: u32,
    /// Fetch pages again even if already visited.
    #[serde(rename = "Reload", default)]
    pub reload: bool,
    /// Which fetcher to use.
    #[serde(rename = "Fetcher", default)]
    pub fetcher: FetcherKind,
    /// Rate limits; every one must allow a request.
    #[serde(rename = "Limits", default)]
    pub limits: Vec<LimitConfig>,
    /// `Cookie` header sent with every request.
    #[serde(rename = "Cookie", default)]
    pub cookie: String,
    /// `User-Agent` header (default: the fetcher's).
    #[serde(rename = "UserAgent", default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// What to follow and what to extract, per depth or by name (`[[Tasks.Rules]]`). No rules:
    /// follow every link, extract nothing.
    #[serde(rename = "Rules", default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Honour robots.txt (default true).
    #[serde(rename = "Robots", default = "default_true")]
    pub robots: bool,
    /// HTTP(S) proxies used in turn, e.g. `http://127.0.0.1:3128` (none: direct).
    #[serde(rename = "Proxies", default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<String>,
    /// Timeout of one request, seconds (default 30).
    #[serde(rename = "Timeout", default = "default_timeout")]
    pub timeout: f64,
    /// Retries of a request after a transient failure (timeout, connection error, 5xx, 429),
    /// with exponential backoff (default 2).
    #[serde(rename = "Retries", default = "default_retries")]
    pub retries: u32,
    /// Stop after this many pages (0 = no bound).
    #[serde(rename = "MaxPages", default)]
    pub max_pages: u64,
    /// Requests of this task in flight at once (default 16, like Scrapy's
    /// `CONCURRENT_REQUESTS`).
    #[serde(rename = "Concurrency", default = "default_concurrency")]
    pub concurrency: u32,
    /// Requests open to one host at once, counting every task of the worker that crawls it
    /// (default 8, like Scrapy's `CONCURRENT_REQUESTS_PER_DOMAIN`).
    #[serde(
        rename = "ConcurrencyPerHost",
        default = "default_concurrency_per_host"
    )]
    pub concurrency_per_host: u32,
    /// Checkpoint the frontier to the store after this many pages (default 20)...
    #[serde(rename = "CheckpointPages", default = "default_checkpoint_pages")]
    pub checkpoint_pages: u32,
    /// ...or this many seconds since the last checkpoint, whichever comes first (default 10).
    #[serde(rename = "CheckpointInterval", default = "default_checkpoint_interval")]
    pub checkpoint_interval: f64,
    /// Where this task's items go (`[Tasks.Sink]`); none: the config's `[Sink]`, else JSON
    /// lines.
    #[serde(rename = "Sink", default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkConfig>,
}

fn default_true() -> bool {
    true
}

/// Request timeout when a task sets none, seconds.
pub const DEFAULT_TASK_TIMEOUT_SECS: f64 = 30.0;
/// Retries when a task sets none.
pub const DEFAULT_TASK_RETRIES: u32 = 2;
/// Requests in flight per task when a task sets none.
pub const DEFAULT_CONCURRENCY: u32 = 16;
/// Requests open per host when a task sets none.
pub const DEFAULT_CONCURRENCY_PER_HOST: u32 = 8;
/// Upper bound of `Concurrency` and `ConcurrencyPerHost`.
pub const MAX_CONCURRENCY: u32 = 1024;
/// Pages between checkpoints when a task sets none.
pub const DEFAULT_CHECKPOINT_PAGES: u32 = 20;
/// Seconds between checkpoints when a task sets none.
pub const DEFAULT_CHECKPOINT_INTERVAL_SECS: f64 = 10.0;

fn default_timeout() -> f64 {
    DEFAULT_TASK_TIMEOUT_SECS
}

fn default_retries() -> u32 {
    DEFAULT_TASK_RETRIES
}

fn default_concurrency() -> u32 {
    DEFAULT_CONCURRENCY
}

fn default_concurrency_per_host() -> u32 {
    DEFAULT_CONCURRENCY_PER_HOST
}

fn default_checkpoint_pages() -> u32 {
    DEFAULT_CHECKPOINT_PAGES
}

fn default_checkpoint_interval() -> f64 {
    DEFAULT_CHECKPOINT_INTERVAL_SECS
}

/// One crawl rule (`[[Tasks.Rules]]`): applies to the pages a link names it for (`Rule` of a
/// `Follow`), else to pages at its `Depth`, else (no `Depth`) to pages no other rule takes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name other rules' `Follow` entries refer to.
    #[serde(rename = "Name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Link depth of the pages this rule applies to (seeds are depth 0).
    #[serde(rename = "Depth", default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Links to follow: CSS selectors (a string, or a table with `Selector`, `Attr`, `Rule`).
    #[serde(rename = "Follow", default, skip_serializing_if = "Vec::is_empty")]
    pub follow: Vec<FollowConfig>,
    /// Items to extract.
    #[serde(rename = "Items", default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemConfig>,
}

/// Links to follow: elements matching `Selector`, URL from `Attr` (default `href`), fetched
/// with the rule named `Rule` (default: the rule of their depth).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FollowConfig {
    /// CSS selector of the link elements.
    #[serde(rename = "Selector")]
    pub selector: String,
    /// Attribute holding the URL (default `href`).
    #[serde(rename = "Attr", default, skip_serializing_if = "Option::is_none")]
    pub attr: Option<String>,
    /// Rule the linked pages are processed with.
    #[serde(rename = "Rule", default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// The table form of [`FollowConfig`], strict about its field names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowTable {
    #[serde(rename = "Selector")]
    selector: String,
    #[serde(rename = "Attr", default)]
    attr: Option<String>,
    #[serde(rename = "Rule", default)]
    rule: Option<String>,
}

impl<'de> Deserialize<'de> for FollowConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A bare selector string, or a table: hand-written rather than `untagged` so that a
        // typo in a table is reported by name instead of "did not match any variant".
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FollowConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CSS selector string or a table { Selector, Attr, Rule }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FollowConfig, E> {
                Ok(FollowConfig {
                    selector: v.to_string(),
                    attr: None,
                    rule: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FollowConfig, A::Error> {
                let t =
                    FollowTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(FollowConfig {
                    selector: t.selector,
                    attr: t.attr,
                    rule: t.rule,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Items to extract from a page: one per element matching `Selector` (none: the page is one
/// item), each with its `Fields`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemConfig {
    /// Item kind, written with each item.
    #[serde(rename = "Name")]
    pub name: String,
    /// CSS selector of the item elements (none: the whole page).
    #[serde(rename = "Selector", default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The fields.
    #[serde(rename = "Fields", default)]
    pub fields: Vec<FieldConfig>,
}

/// One field of an item: the text (or `Attr`) of the first element matching `Selector` inside
/// the item (none: the item element itself), narrowed by `Regex` (its first group when it has
/// one). `href`/`src` attributes are made absolute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Field name.
    #[serde(rename = "Name")]
    pub name: String,
    /// CSS selector inside the item.
    #[serde(rename = "Selector", default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Attribute to take instead of the text.
    #[serde(rename = "Attr", default, skip_serializing_if = "Option::is_none")]
    pub attr: Option<String>,
    /// Regular expression applied to the value.
    #[serde(rename = "Regex", default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl TaskConfig {
    /// A task with this name and every other field at its default.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            urls: Vec::new(),
            allowed_domains: Vec::new(),
            wait_time: 0.0,
            max_depth: 0,
            reload: false,
            fetcher: FetcherKind::default(),
            limits: Vec::new(),
            cookie: String::new(),
            user_agent: None,
            rules: Vec::new(),
            robots: true,
            proxies: Vec::new(),
            timeout: DEFAULT_TASK_TIMEOUT_SECS,
            retries: DEFAULT_TASK_RETRIES,
            max_pages: 0,
            concurrency: DEFAULT_CONCURRENCY,
            concurrency_per_host: DEFAULT_CONCURRENCY_PER_HOST,
            checkpoint_pages: DEFAULT_CHECKPOINT_PAGES,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL_SECS,
            sink: None,
        }
    }

    /// The politeness delay bound as a duration.
    pub fn wait(&self) -> Duration {
        Duration::from_secs_f64(self.wait_time.max(0.0))
    }
}
