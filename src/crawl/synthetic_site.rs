//! A generated site for crawl tests and benchmarks (`crawler site`): page `n` at `/p/<n>` links
//! to `fanout` new pages (`n·fanout + 1 ..= n·fanout + fanout`, a tree numbered breadth first)
//! and back to the root, carries one item (`h1.title`, `span.n`) and filler text up to
//! `page_bytes`, and is answered after `latency`. With several listen addresses (one per
//! host), child `c` is linked on host `c mod hosts`, so one crawl spreads over several hosts.
//!
//! It counts what a test needs to check a crawler: requests per page, and requests open at
//! once, per host and in all (the most seen).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// Pages counted one by one at most (beyond, requests are only counted in all).
const COUNTED_PAGES: u64 = 10_000_000;

/// Shape of the site.
#[derive(Clone, Debug)]
pub struct SiteOptions {
    /// New pages each page links to.
    pub fanout: u64,
    /// Pages that exist (`/p/0 .. /p/<pages-1>`); links beyond are not emitted.
    pub pages: u64,
    /// Approximate size of a page's HTML.
    pub page_bytes: usize,
    /// Time before each answer.
    pub latency: Duration,
}

impl Default for SiteOptions {
    fn default() -> Self {
        Self {
            fanout: 10,
            pages: 1_000_000,
            page_bytes: 2048,
            latency: Duration::ZERO,
        }
    }
}

/// Requests open to one host: now and the most seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Open {
    /// Open now.
    pub now: u64,
    /// Most open at once so far.
    pub most: u64,
}

/// What the site saw.
#[derive(Debug)]
pub struct SiteStats {
    /// Page requests (robots.txt excluded).
    pub requests: AtomicU64,
    per_page: Vec<AtomicU32>,
    open: Mutex<(Open, HashMap<String, Open>)>,
}

impl SiteStats {
    fn new(pages: u64) -> Self {
        let counted = pages.min(COUNTED_PAGES) as usize;
        Self {
            requests: AtomicU64::new(0),
            per_page: (0..counted).map(|_| AtomicU32::new(0)).collect(),
            open: Mutex::new((Open::default(), HashMap::new())),
        }
    }

    /// Requests of page `n` so far.
    pub fn count(&self, n: u64) -> u32 {
        usize::try_from(n)
            .ok()
            .and_then(|i| self.per_page.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Requests open at once, in all.
    pub fn open_total(&self) -> Open {
        self.open.lock().0
    }

    /// Requests open at once, per host (`ip:port` as requested).
    pub fn open_per_host(&self) -> HashMap<String, Open> {
        self.open.lock().1.clone()
    }

    fn enter(&self, host: &str) {
        let mut g = self.open.lock();
        let (total, hosts) = &mut *g;
        total.now += 1;
        total.most = total.most.max(total.now);
        let h = hosts.entry(host.to_string()).or_default();
        h.now += 1;
        h.most = h.most.max(h.now);
    }

    fn leave(&self, host: &str) {
        let mut g = self.open.lock();
        let (total, hosts) = &mut *g;
        total.now = total.now.saturating_sub(1);
        if let Some(h) = hosts.get_mut(host) {
            h.now = h.now.saturating_sub(1);
        }
    }
}

/// Leaves the open count when the request ends, answered or cancelled.
struct OpenGuard<'a> {
    stats: &'a SiteStats,
    host: String,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.stats.leave(&self.host);
    }
}

struct Shared {
    opts: SiteOptions,
    /// Base URL per host.
    bases: Vec<String>,
    stats: Arc<SiteStats>,
    filler: String,
}

/// A running synthetic site.
pub struct SyntheticSite {
    addrs: Vec<SocketAddr>,
    stats: Arc<SiteStats>,
    servers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SyntheticSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyntheticSite")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl SyntheticSite {
    /// Serve the site on each of `listen` (port 0: any free port), one host each.
    pub async fn start(opts: SiteOptions, listen: &[SocketAddr]) -> std::io::Result<Self> {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for a in listen {
            let l = tokio::net::TcpListener::bind(a).await?;
            addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the site needs at least one listen address",
            ));
        }
        let stats = Arc::new(SiteStats::new(opts.pages));
        let filler = "lorem ipsum dolor sit amet ".repeat(opts.page_bytes / 27 + 1);
        let shared = Arc::new(Shared {
            bases: addrs.iter().map(|a| format!("http://{a}")).collect(),
            opts,
            stats: stats.clone(),
            filler,
        });
        let router = Router::new()
            .route("/p/{n}", get(page))
            .route("/robots.txt", get(robots))
            .with_state(shared);
        let servers = listeners
            .into_iter()
            .map(|l| {
                let r = router.clone();
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, r).await {
                        tracing::warn!(error = %e, "synthetic site ended with an error");
                    }
                })
            })
            .collect();
        Ok(Self {
            addrs,
            stats,
            servers,
        })
    }

    /// The root page, the crawl's seed.
    pub fn seed(&self) -> String {
        format!("http://{}/p/0", self.addrs[0])
    }

    /// The addresses served, one per host.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// What the site saw.
    pub fn stats(&self) -> &Arc<SiteStats> {
        &self.stats
    }
}

impl Drop for SyntheticSite {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

async fn robots() -> Response {
    (StatusCode::NOT_FOUND, "no robots.txt").into_response()
}

async fn page(State(s): State<Arc<Shared>>, Path(n): Path<u64>, headers: HeaderMap) -> Response {
    if n >= s.opts.pages {
        return (StatusCode::NOT_FOUND, "no such page").into_response();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    s.stats.enter(&host);
    let _open = OpenGuard {
        stats: &s.stats,
        host,
    };
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(c) = usize::try_from(n)
        .ok()
        .and_then(|i| s.stats.per_page.get(i))
    {
        c.fetch_add(1, Ordering::Relaxed);
    }
    if !s.opts.latency.is_zero() {
        tokio::time::sleep(s.opts.latency).await;
    }
    let mut html = String::with_capacity(s.opts.page_bytes + 512);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Page {n}</title></head><body>\n\
         <h1 class=\"title\">Page {n}</h1><span class=\"n\">{n}</span>\n<ul>"
    );
    let first = n.saturating_mul(s.opts.fanout).saturating_add(1);
    for c in first..first.saturating_add(s.opts.fanout).min(s.opts.pages) {
        let base = &s.bases[(c % s.bases.len() as u64) as usize];
        let _ = write!(html, "<li><a href=\"{base}/p/{c}\">page {c}</a></li>");
    }
    let _ = write!(html, "</ul><a href=\"/p/0\">home</a>\n<p>");
    const TAIL: &str = "</p></body></html>\n";
    let room = s.opts.page_bytes.saturating_sub(html.len() + TAIL.len());
    html.push_str(&s.filler[..room.min(s.filler.len())]);
    html.push_str(TAIL);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_link_to_their_children_across_hosts() {
        let opts = SiteOptions {
            fanout: 3,
            pages: 10,
            page_bytes: 1000,
            latency: Duration::ZERO,
        };
        let listen: Vec<SocketAddr> = ["127.0.0.1:0", "127.0.0.1:0"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        let site = SyntheticSite::start(opts, &listen).await.expect("site");
        let body = reqwest::get(site.seed())
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        let [a, b] = [site.addrs()[0], site.addrs()[1]];
        for want in [
            format!("http://{b}/p/1\""),
            format!("http://{a}/p/2\""),
            format!("http://{b}/p/3\""),
        ] {
            assert!(body.contains(&want), "{want} in {body}");
        }
        assert!(!body.contains("/p/4\""));
        assert!(body.len() >= 1000, "{}", body.len());
        let last = reqwest::get(format!("http://{a}/p/3"))
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        assert!(!last.contains("/p/10\""), "no links past the last page");
        assert_eq!(site.stats().count(0), 1);
        assert_eq!(site.stats().count(3), 1);
        assert_eq!(site.stats().requests.load(Ordering::Relaxed), 2);
        assert_eq!(site.stats().open_total().now, 0);
    }
}
