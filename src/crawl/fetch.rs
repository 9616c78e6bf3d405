//! Fetching pages: one HTTP client per proxy (used in turn), timeouts, bounded redirects,
//! gzip, a body size cap, retries with exponential backoff for transient failures, and charset
//! detection so non-UTF-8 pages decode correctly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use encoding_rs::Encoding;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, ACCEPT_LANGUAGE, CONTENT_TYPE, COOKIE};
use url::Url;

use crate::model::task::{FetcherKind, TaskConfig};

/// Largest page body read; longer bodies are an error (a crawler must not buffer a video).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 10;
/// First retry backoff; doubles per attempt.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff (also caps a server's `Retry-After`).
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The `User-Agent` of the plain HTTP fetcher.
pub const DEFAULT_USER_AGENT: &str = concat!("crawler/", env!("CARGO_PKG_VERSION"));
/// The `User-Agent` of the "browser" fetcher: a current desktop browser.
pub const BROWSER_USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
/// The product token looked up in robots.txt.
pub const ROBOTS_AGENT: &str = "crawler";

/// Why a fetch failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an error status (after any retries).
    #[error("HTTP status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// No answer: connection refused or reset, DNS failure, timeout, too many redirects...
    #[error("request failed: {0}")]
    Transport(String),
    /// A redirect led outside the allowed domains, or there were too many.
    #[error("{0}")]
    Redirect(String),
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The client could not be built (bad proxy URL, bad header value).
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl FetchError {
    /// Worth another attempt: no answer, or a status that says "later".
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Transport(_) => true,
            FetchError::Status { status } => {
                matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504)
            }
            FetchError::Redirect(_) | FetchError::TooLarge | FetchError::Build(_) => false,
        }
    }
}

/// A fetched page.
#[derive(Clone, Debug)]
pub struct Page {
    /// Final URL (after redirects).
    pub url: Url,
    /// Status code (2xx).
    pub status: u16,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body decoded to text, when it is HTML or text.
    pub text: Option<String>,
    /// The charset the body was decoded with.
    pub encoding: &'static str,
    /// How many attempts it took (1 = no retry).
    pub attempts: u32,
}

/// Check a proxy URL from the config.
pub fn check_proxy(p: &str) -> Result<(), String> {
    let u = Url::parse(p.trim()).map_err(|e| format!("{p:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!(
            "{p:?} must be an http:// or https:// proxy URL (host and port)"
        ));
    }
    Ok(())
}

/// The HTTP side of a task.
#[derive(Debug)]
pub struct Fetcher {
    clients: Vec<reqwest::Client>,
    next: AtomicUsize,
    retries: u32,
    backoff_base: Duration,
    user_agent: String,
}

impl Fetcher {
    /// A fetcher with the task's headers, timeout, proxies and retries.
    pub fn new(task: &TaskConfig) -> Result<Self, FetchError> {
        let user_agent = task
            .user_agent
            .clone()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| match task.fetcher {
                FetcherKind::Http => DEFAULT_USER_AGENT.to_string(),
                FetcherKind::Browser => BROWSER_USER_AGENT.to_string(),
            });
        let mut headers = HeaderMap::new();
        let header = |v: &str, what: &str| {
            HeaderValue::from_str(v).map_err(|e| FetchError::Build(format!("{what}: {e}")))
        };
        if !task.cookie.trim().is_empty() {
            headers.insert(COOKIE, header(task.cookie.trim(), "Cookie")?);
        }
        if task.fetcher == FetcherKind::Browser {
            headers.insert(
                ACCEPT,
                HeaderValue::from_static(
                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                ),
            );
            headers.insert(
                ACCEPT_LANGUAGE,
                HeaderValue::from_static("zh-CN,zh;q=0.9,en;q=0.8"),
            );
        }
        let timeout = Duration::from_secs_f64(task.timeout.clamp(0.001, 86_400.0));
        let allowed = std::sync::Arc::new(super::scope::allowed_domains(task));
        let build = |proxy: Option<&str>| -> Result<reqwest::Client, FetchError> {
            let allowed = allowed.clone();
            // Redirects stay inside the allowed domains (a redirect must not smuggle the crawl
            // onto another site); robots.txt may redirect anywhere (RFC 9309 follows them).
            let policy = reqwest::redirect::Policy::custom(move |a| {
                if a.previous().len() >= MAX_REDIRECTS {
                    return a.error("too many redirects");
                }
                let robots = a
                    .previous()
                    .first()
                    .is_some_and(|u| u.path() == "/robots.txt");
                if robots || super::scope::host_allowed(&allowed, a.url()) {
                    a.follow()
                } else {
                    let msg = format!("redirect to {} outside the allowed domains", a.url());
                    a.error(msg)
                }
            });
            let mut b = reqwest::Client::builder()
                .user_agent(user_agent.clone())
                .default_headers(headers.clone())
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(policy)
                .gzip(true);
            b = match proxy {
                Some(p) => b.proxy(
                    reqwest::Proxy::all(p.trim())
                        .map_err(|e| FetchError::Build(format!("proxy {p:?}: {e}")))?,
                ),
                // Direct: ignore HTTP_PROXY and friends, so a run does what its config says.
                None => b.no_proxy(),
            };
            b.build().map_err(|e| FetchError::Build(e.to_string()))
        };
        let clients = if task.proxies.is_empty() {
            vec![build(None)?]
        } else {
            task.proxies
                .iter()
                .map(|p| build(Some(p)))
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
            retries: task.retries,
            backoff_base: BACKOFF_BASE,
            user_agent,
        })
    }

    /// Use `base` as the first backoff instead of [`BACKOFF_BASE`].
    pub fn with_backoff(mut self, base: Duration) -> Self {
        self.backoff_base = base;
        self
    }

    /// The `User-Agent` sent.
    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }

    /// GET `url`, retrying transient failures with exponential backoff. Cancel-safe: dropping
    /// the future drops the request in flight.
    pub async fn get(&self, url: &Url) -> Result<Page, FetchError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.get_once(url).await {
                Ok(mut p) => {
                    p.attempts = attempt;
                    return Ok(p);
                }
                Err((e, retry_after)) => {
                    if !e.is_transient() || attempt > self.retries {
                        return Err(e);
                    }
                    let backoff = self
                        .backoff_base
                        .saturating_mul(1u32 << (attempt - 1).min(16))
                        .min(BACKOFF_MAX);
                    let wait = retry_after.map_or(backoff, |r| r.min(BACKOFF_MAX).max(backoff));
                    tracing::debug!(%url, attempt, error = %e, ?wait, "transient fetch failure, retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The next client in round-robin order.
    fn client(&self) -> &reqwest::Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len().max(1);
        &self.clients[i]
    }

    async fn get_once(&self, url: &Url) -> Result<Page, (FetchError, Option<Duration>)> {
        let transport = |e: reqwest::Error| {
            let msg = error_chain(&e);
            let e = if e.is_redirect() {
                FetchError::Redirect(msg)
            } else {
                FetchError::Transport(msg)
            };
            (e, None)
        };
        let mut resp = self
            .client()
            .get(url.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err((FetchError::Status { status }, retry_after));
        }
        let final_url = resp.url().clone();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err((FetchError::TooLarge, None));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err((FetchError::TooLarge, None));
            }
            body.extend_from_slice(&chunk);
        }
        let (text, encoding) = if is_text(content_type.as_deref()) {
            let (t, enc) = decode(&body, content_type.as_deref());
            (Some(t), enc.name())
        } else {
            (None, "binary")
        };
        Ok(Page {
            url: final_url,
            status,
            content_type,
            text,
            encoding,
            attempts: 1,
        })
    }
}

/// The error and its causes on one line (reqwest's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// HTML or other text (what a rule can parse). No `Content-Type`: assume HTML.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/") || mime.contains("html") || mime.contains("xml") || mime.is_empty()
}

/// The `charset` parameter of a `Content-Type`.
fn header_charset(content_type: Option<&str>) -> Option<&'static Encoding> {
    let ct = content_type?;
    ct.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("charset") {
            return None;
        }
        Encoding::for_label(v.trim().trim_matches(['"', '\'']).as_bytes())
    })
}

/// A charset declared in a `<meta>` tag within the first bytes (both
/// `<meta charset=...>` and `<meta http-equiv="Content-Type" content="...; charset=...">`).
fn meta_charset(body: &[u8]) -> Option<&'static Encoding> {
    // The HTML spec's prescan looks at the first 1024 bytes; real pages put the tag after long
    // headers and scripts often enough that a few KiB is the better trade.
    let head = &body[..body.len().min(4096)];
    static META: std::sync::OnceLock<Option<regex::bytes::Regex>> = std::sync::OnceLock::new();
    let re = META
        .get_or_init(|| {
            regex::bytes::Regex::new(r#"(?i-u)<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_\-:.]+)"#)
                .ok()
        })
        .as_ref()?;
    let caps = re.captures(head)?;
    let enc = Encoding::for_label(caps.get(1)?.as_bytes())?;
    // A page that says UTF-16 in ASCII-compatible bytes is not UTF-16 (the spec's rule).
    if enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE {
        return Some(encoding_rs::UTF_8);
    }
    Some(enc)
}

/// Decode a body: a BOM, else the header's charset, else a `<meta>` charset, else a guess from
/// the bytes (chardetng; plain ASCII/UTF-8 comes out as UTF-8).
pub fn decode(body: &[u8], content_type: Option<&str>) -> (String, &'static Encoding) {
    if let Some((enc, _)) = Encoding::for_bom(body) {
        let (text, _, _) = enc.decode(body);
        return (text.into_owned(), enc);
    }
    let enc = header_charset(content_type)
        .or_else(|| meta_charset(body))
        .unwrap_or_else(|| {
            let mut det = chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Deny);
            det.feed(body, true);
            det.guess(None, chardetng::Utf8Detection::Allow)
        });
    let (text, _) = enc.decode_without_bom_handling(body);
    (text.into_owned(), enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets() {
        let (gbk, _, _) = encoding_rs::GBK.encode("<p>中文页面：豆瓣读书</p>");
        let (t, e) = decode(&gbk, Some("text/html; charset=GBK"));
        assert_eq!((t.as_str(), e.name()), ("<p>中文页面：豆瓣读书</p>", "GBK"));

        let mut page = b"<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=gb2312\"></head><body>".to_vec();
        page.extend_from_slice(&gbk);
        let (t, e) = decode(&page, Some("text/html"));
        assert!(t.contains("中文页面"), "{t}");
        assert_eq!(e.name(), "GBK");

        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("日本語のページ");
        let mut page = b"<meta charset='Shift_JIS'>".to_vec();
        page.extend_from_slice(&sjis);
        let (t, e) = decode(&page, None);
        assert!(t.ends_with("日本語のページ"), "{t}");
        assert_eq!(e.name(), "Shift_JIS");

        let (t, e) = decode("plain ü".as_bytes(), Some("text/plain"));
        assert_eq!((t.as_str(), e.name()), ("plain ü", "UTF-8"));
        let mut bom = vec![0xEF, 0xBB, 0xBF];
        bom.extend_from_slice("ü".as_bytes());
        assert_eq!(decode(&bom, Some("text/html; charset=latin1")).0, "ü");
    }

    #[test]
    fn transient_statuses() {
        assert!(FetchError::Status { status: 503 }.is_transient());
        assert!(FetchError::Status { status: 429 }.is_transient());
        assert!(!FetchError::Status { status: 404 }.is_transient());
        assert!(FetchError::Transport("x".into()).is_transient());
        assert!(check_proxy("http://127.0.0.1:3128").is_ok());
        assert!(check_proxy("socks5://h:1").is_err());
        assert!(check_proxy("nonsense").is_err());
    }
}
