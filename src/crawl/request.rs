//! One fetch to make, and the URL identity (normal form, fingerprint) dedup and checkpoints use.

use serde::{Deserialize, Serialize};
use url::Url;

/// One pending fetch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Absolute, normalised URL.
    pub url: String,
    /// Link depth (seeds are 0).
    pub depth: u32,
    /// The rule named by the link that found it.
    pub rule: Option<String>,
}

impl Request {
    /// The fingerprint of this request's URL.
    pub fn fingerprint(&self) -> u64 {
        fingerprint_of(&self.url)
    }
}

/// The normalised form of a URL used for dedup: no fragment, default port dropped, host
/// lower-cased (both by `url`), query pairs sorted, an empty query dropped.
pub fn normalise(u: &Url) -> String {
    let mut u = u.clone();
    u.set_fragment(None);
    if let Some(q) = u.query() {
        if q.is_empty() {
            u.set_query(None);
        } else {
            let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            pairs.sort_unstable();
            let q = pairs.join("&");
            u.set_query(if q.is_empty() { None } else { Some(&q) });
        }
    }
    u.to_string()
}

/// Fingerprint of a normalised URL (stable across versions and machines: it is checkpointed).
pub fn fingerprint_of(normalised: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(normalised.as_bytes())
}
