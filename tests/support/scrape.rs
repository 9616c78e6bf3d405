//! Scraping the HTTP endpoints of real processes: a blocking HTTP/1.1 GET and `/metrics`
//! parsed with a Prometheus text-format parser.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};

/// `GET path` on `addr` (`host:port`); `None` when the server cannot be reached or answers
/// nothing within `timeout`.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let sock = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    // Bodies here are small; hyper may still chunk them.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET /metrics` on `addr`, parsed.
pub fn scrape(addr: &str) -> Scrape {
    let (status, body) = get(addr, "/metrics", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("GET http://{addr}/metrics failed"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The value of the sample `name` whose labels include `labels` (counters and gauges).
pub fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .find_map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// Whether a histogram `name` is present.
pub fn has_histogram(s: &Scrape, name: &str) -> bool {
    s.samples
        .iter()
        .any(|x| x.metric == name && matches!(x.value, Value::Histogram(_)))
}
