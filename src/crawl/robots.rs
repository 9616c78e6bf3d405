//! robots.txt (RFC 9309): groups by user agent, `Allow`/`Disallow` with `*` and `$`, longest
//! match wins and `Allow` wins a tie; `Crawl-delay` as the common extension.
//!
//! A small parser of our own: the maintained crates either pull in a second error/regex stack or
//! have not been updated in years, and the grammar is a page long.

use std::time::Duration;

/// Largest robots.txt read (RFC 9309 asks for at least 500 KiB).
pub const MAX_ROBOTS_BYTES: usize = 512 * 1024;

/// One `Allow`/`Disallow` line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PathRule {
    allow: bool,
    pattern: String,
}

/// A group: the user agents it names and its rules.
#[derive(Clone, Debug, Default, PartialEq)]
struct Group {
    agents: Vec<String>,
    rules: Vec<PathRule>,
    crawl_delay: Option<f64>,
}

/// A parsed robots.txt, or one of the two blanket answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Robots {
    groups: Vec<Group>,
    /// Blanket answer instead of rules (`Some(true)`: allow all, `Some(false)`: disallow all).
    blanket: Option<bool>,
}

/// The rules that apply to one user agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentRules {
    rules: Vec<PathRule>,
    blanket: Option<bool>,
    /// `Crawl-delay` for this agent, if any.
    pub crawl_delay: Option<Duration>,
}

impl Robots {
    /// Everything allowed (no robots.txt: a 4xx answer).
    pub fn allow_all() -> Self {
        Self {
            groups: Vec::new(),
            blanket: Some(true),
        }
    }

    /// Everything disallowed (robots.txt unreachable: a 5xx answer or no answer).
    pub fn disallow_all() -> Self {
        Self {
            groups: Vec::new(),
            blanket: Some(false),
        }
    }

    /// Parse robots.txt text; never fails (unknown lines are ignored, as the RFC asks).
    pub fn parse(text: &str) -> Self {
        let mut groups: Vec<Group> = Vec::new();
        // Consecutive user-agent lines open one group; a rule line after them closes the list.
        let mut open = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            match key.as_str() {
                "user-agent" => {
                    if !open {
                        groups.push(Group::default());
                        open = true;
                    }
                    if let Some(g) = groups.last_mut() {
                        g.agents.push(value.to_ascii_lowercase());
                    }
                }
                "allow" | "disallow" => {
                    open = false;
                    let Some(g) = groups.last_mut() else {
                        continue;
                    };
                    // An empty `Disallow:` allows everything: it is no rule.
                    if value.is_empty() {
                        continue;
                    }
                    g.rules.push(PathRule {
                        allow: key == "allow",
                        pattern: normalise_pattern(value),
                    });
                }
                "crawl-delay" => {
                    open = false;
                    if let (Some(g), Ok(d)) = (groups.last_mut(), value.parse::<f64>()) {
                        if d.is_finite() && d >= 0.0 {
                            g.crawl_delay = Some(d);
                        }
                    }
                }
                _ => {}
            }
        }
        Self {
            groups,
            blanket: None,
        }
    }

    /// The rules for the product token `agent` (case-insensitive): every group naming it,
    /// merged; else every `*` group, merged; else none.
    pub fn for_agent(&self, agent: &str) -> AgentRules {
        if let Some(b) = self.blanket {
            return AgentRules {
                blanket: Some(b),
                ..AgentRules::default()
            };
        }
        let agent = agent.to_ascii_lowercase();
        let pick = |want: &str| -> Vec<&Group> {
            self.groups
                .iter()
                .filter(|g| g.agents.iter().any(|a| a == want))
                .collect()
        };
        let mut chosen = pick(&agent);
        if chosen.is_empty() {
            chosen = pick("*");
        }
        AgentRules {
            rules: chosen.iter().flat_map(|g| g.rules.clone()).collect(),
            blanket: None,
            crawl_delay: chosen
                .iter()
                .filter_map(|g| g.crawl_delay)
                .reduce(f64::max)
                .map(|d| Duration::from_secs_f64(d.min(3600.0))),
        }
    }
}

impl AgentRules {
    /// Whether `path` (path and query, e.g. `/a/b?c=d`) may be fetched.
    pub fn allowed(&self, path: &str) -> bool {
        if let Some(b) = self.blanket {
            return b;
        }
        if path == "/robots.txt" {
            return true;
        }
        let path = normalise_pattern(path);
        let mut best: Option<(usize, bool)> = None;
        for r in &self.rules {
            if matches(&r.pattern, &path) {
                let len = r.pattern.len();
                best = match best {
                    Some((l, a)) if l > len || (l == len && a) => Some((l, a)),
                    _ => Some((len, r.allow)),
                };
            }
        }
        best.is_none_or(|(_, allow)| allow)
    }
}

/// Percent-encode what URLs carry encoded, so that patterns and paths compare alike (the RFC
/// compares octets after normalising both to percent-encoding; upper-case hex).
fn normalise_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            out.push('%');
            out.push(bytes[i + 1].to_ascii_uppercase() as char);
            out.push(bytes[i + 2].to_ascii_uppercase() as char);
            i += 3;
            continue;
        }
        if b.is_ascii() && !b.is_ascii_control() && b != b' ' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        i += 1;
    }
    out
}

/// Pattern match from the start of `path`: `*` any run of characters, a final `$` the end.
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut pos = 0usize;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if i == 0 {
            if !path.starts_with(part) {
                return false;
            }
            pos = part.len();
            if last {
                return !anchored || pos == path.len();
            }
            continue;
        }
        if last && anchored {
            // The last piece must end the path, after what the earlier pieces consumed.
            return path.len() >= pos + part.len() && path.ends_with(part);
        }
        match path[pos..].find(part) {
            Some(at) => pos += at + part.len(),
            None => return false,
        }
    }
    // An anchored pattern returned from its last piece above.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXT: &str = "# comment
User-agent: otherbot
Disallow: /

User-agent: *
User-Agent: crawler-ignored
Disallow: /private/
Allow: /private/open
Disallow: /*.pdf$
Disallow: /search?q=
Crawl-delay: 2

User-agent: crawler
Disallow: /nocrawler
Disallow:
";

    #[test]
    fn groups_and_precedence() {
        let r = Robots::parse(TXT);
        let star = r.for_agent("somebody");
        assert!(star.allowed("/"));
        assert!(!star.allowed("/private/x"));
        assert!(star.allowed("/private/open/y"), "longer allow wins");
        assert!(!star.allowed("/a/b.pdf"));
        assert!(star.allowed("/a/b.pdf?x=1"), "$ anchors at the end");
        assert!(!star.allowed("/search?q=rust"));
        assert!(star.allowed("/robots.txt"));
        assert_eq!(star.crawl_delay, Some(Duration::from_secs(2)));

        let own = r.for_agent("Crawler");
        assert!(!own.allowed("/nocrawler/x"));
        assert!(
            own.allowed("/private/x"),
            "a named group replaces the * group"
        );
        assert_eq!(own.crawl_delay, None);

        assert!(!r.for_agent("otherbot").allowed("/anything"));
        assert!(Robots::allow_all().for_agent("x").allowed("/x"));
        assert!(!Robots::disallow_all().for_agent("x").allowed("/x"));
    }

    #[test]
    fn patterns() {
        assert!(matches("/", "/x"));
        assert!(matches("/a*b", "/a/x/b/c"));
        assert!(!matches("/a*b$", "/a/x/b/c"));
        assert!(matches("/a*b$", "/a/x/b"));
        assert!(matches("*", "/anything"));
        assert!(matches("/x$", "/x"));
        assert!(!matches("/x$", "/xy"));
        assert!(matches("/%E4%B8%AD", &normalise_pattern("/中")));
        assert!(Robots::parse("User-agent: *\nDisallow: /%e4%b8%ad\n")
            .for_agent("a")
            .allowed("/x"));
        assert!(!Robots::parse("User-agent: *\nDisallow: /%e4%b8%ad\n")
            .for_agent("a")
            .allowed("/%E4%B8%AD/page"));
    }
}
