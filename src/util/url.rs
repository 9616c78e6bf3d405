//! URLs and addresses as users write them in flags and config files: etcd's strict
//! `http://host:port` member URLs, listen addresses, advertised addresses and endpoint lists.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// A URL of the form `http://host:port`, as etcd accepts them for member and client URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `http` (TLS is not supported).
    pub scheme: String,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl HttpUrl {
    /// Resolve to one socket address (an IP host as is; a name through the resolver, IPv4 first).
    pub fn socket_addr(&self) -> Result<SocketAddr, UrlError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| UrlError::Resolve(self.to_string(), e.to_string()))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| UrlError::Resolve(self.to_string(), "no address".to_string()))
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// A comma-separated list of URLs (never empty once parsed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlList(pub Vec<HttpUrl>);

impl UrlList {
    /// The first URL (lists are never empty).
    pub fn first(&self) -> Option<&HttpUrl> {
        self.0.first()
    }
    /// The URLs as strings.
    pub fn strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// A malformed URL or cluster flag.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("URL {0:?} must have the form http://host:port")]
    Form(String),
    #[error("URL {0:?}: unsupported scheme {1:?} (only http is supported)")]
    Scheme(String, String),
    #[error("URL {0:?} must not contain a path")]
    Path(String),
    #[error("URL {0:?} has an invalid port")]
    Port(String),
    #[error("URL {0:?}: empty host")]
    Host(String),
    #[error("no URL given")]
    Empty,
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
}

/// Parse one `http://host:port` URL strictly.
pub(crate) fn parse_url(s: &str) -> Result<HttpUrl, UrlError> {
    let s = s.trim();
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| UrlError::Form(s.into()))?;
    if scheme != "http" {
        return Err(UrlError::Scheme(s.into(), scheme.into()));
    }
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(UrlError::Path(s.into()));
    }
    if rest.contains('@') {
        return Err(UrlError::Form(s.into()));
    }
    let (host, port) = if let Some(after) = rest.strip_prefix('[') {
        let (h, p) = after
            .split_once(']')
            .ok_or_else(|| UrlError::Form(s.into()))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| UrlError::Host(s.into()))?;
        let p = p
            .strip_prefix(':')
            .ok_or_else(|| UrlError::Form(s.into()))?;
        (h, p)
    } else {
        let (h, p) = rest
            .rsplit_once(':')
            .ok_or_else(|| UrlError::Form(s.into()))?;
        // An unbracketed IPv6 address is ambiguous with the port separator.
        if h.contains(':') {
            return Err(UrlError::Host(s.into()));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(UrlError::Host(s.into()));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::Port(s.into()));
    }
    let port: u16 = port.parse().map_err(|_| UrlError::Port(s.into()))?;
    Ok(HttpUrl {
        scheme: scheme.to_string(),
        host: host.to_string(),
        port,
    })
}

/// Parse a comma-separated URL list (at least one URL).
pub(crate) fn parse_url_list(s: &str) -> Result<UrlList, UrlError> {
    let urls = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_url)
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(UrlError::Empty);
    }
    Ok(UrlList(urls))
}

/// Parse one `--peer-dial-override` value: `<advertised-url>=<dial-url>`, both `http://host:port`.
pub(crate) fn parse_dial_override(s: &str) -> Result<(String, String), UrlError> {
    let (from, to) = s.split_once('=').ok_or_else(|| UrlError::Form(s.into()))?;
    Ok((parse_url(from)?.to_string(), parse_url(to)?.to_string()))
}

/// Parse a listen address: `:port` (every interface), `host:port`, `[v6]:port`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: invalid port (expected :port or host:port)"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("{s:?}: expected :port or host:port"));
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?}: resolves to no address"))
}

/// The address to register for a server bound at `bound`: `explicit` when given (a bare host
/// gets the bound port), else the bound address with a wildcard IP replaced by 127.0.0.1.
pub fn advertise_address(bound: SocketAddr, explicit: Option<&str>) -> String {
    if let Some(e) = explicit.map(str::trim).filter(|e| !e.is_empty()) {
        let has_port = e.parse::<SocketAddr>().is_ok()
            || (!e.starts_with('[') && e.matches(':').count() == 1)
            || (e.starts_with('[') && e.contains("]:"));
        return if has_port {
            e.to_string()
        } else if e.contains(':') && !e.starts_with('[') {
            format!("[{e}]:{}", bound.port())
        } else {
            format!("{e}:{}", bound.port())
        };
    }
    if bound.ip().is_unspecified() {
        let ip = match bound.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, bound.port()).to_string()
    } else {
        bound.to_string()
    }
}

/// Parse a comma-separated endpoint list; `:port` means `127.0.0.1:port`; `http://` is kept.
pub fn parse_endpoints(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.starts_with("https://") {
            return Err(format!("{part:?}: TLS endpoints are not supported"));
        }
        let bare = part.strip_prefix("http://").unwrap_or(part);
        let bare = bare.trim_end_matches('/');
        let hostport = if let Some(port) = bare.strip_prefix(':') {
            format!("127.0.0.1:{port}")
        } else {
            bare.to_string()
        };
        let port_ok = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok || hostport.contains('/') {
            return Err(format!("{part:?}: expected host:port"));
        }
        out.push(hostport);
    }
    if out.is_empty() {
        return Err("no endpoint given".into());
    }
    Ok(out)
}

/// A store endpoint as a client dials it: `host:port` gets `http://`, a trailing slash goes;
/// `https://` and other schemes are refused.
pub fn endpoint_url(raw: &str) -> Result<String, String> {
    let s = raw.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err("empty endpoint".into());
    }
    if s.starts_with("https://") {
        return Err(format!("endpoint {s}: TLS endpoints are not supported"));
    }
    if s.starts_with("http://") {
        Ok(s.to_string())
    } else if s.contains("://") {
        Err(format!("endpoint {s}: unsupported scheme"))
    } else {
        Ok(format!("http://{s}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_strict() {
        assert_eq!(
            parse_url("http://127.0.0.1:2379").expect("valid").port,
            2379
        );
        assert_eq!(parse_url("http://[::1]:80").expect("ipv6").host, "::1");
        assert_eq!(
            parse_url("http://[::1]:80").expect("ipv6").to_string(),
            "http://[::1]:80"
        );
        for bad in [
            "127.0.0.1:2379",
            "https://a:1",
            "http://a",
            "http://a:",
            "http://:1",
            "http://a:99999",
            "http://a:1/x",
            "http://a:1/",
            "http://a:-1",
            "http://u@a:1",
            "http://::1:80",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(
            parse_url_list("http://a:1, http://b:2")
                .expect("list")
                .0
                .len(),
            2
        );
        assert!(parse_url_list(",").is_err());
    }

    #[test]
    fn listen_and_advertise() {
        let a = parse_listen(":9089").expect("port only");
        assert!(a.ip().is_unspecified() && a.port() == 9089);
        assert_eq!(advertise_address(a, None), "127.0.0.1:9089");
        let b: SocketAddr = "10.1.2.3:7".parse().expect("addr");
        assert_eq!(advertise_address(b, None), "10.1.2.3:7");
        assert_eq!(
            advertise_address(a, Some("192.168.0.107")),
            "192.168.0.107:9089"
        );
        assert_eq!(advertise_address(a, Some("h:1")), "h:1");
        assert!(parse_listen("9089").is_err());
        assert!(parse_endpoints(":2379").expect("ok") == vec!["127.0.0.1:2379".to_string()]);
        assert!(parse_endpoints("https://a:1").is_err());
        assert!(parse_endpoints(" , ").is_err());
    }

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(
            endpoint_url("127.0.0.1:2379").ok(),
            Some("http://127.0.0.1:2379".into())
        );
        assert_eq!(
            endpoint_url(" http://h:1/ ").ok(),
            Some("http://h:1".into())
        );
        assert!(endpoint_url("https://h:1").is_err());
        assert!(endpoint_url("ftp://h:1").is_err());
        assert!(endpoint_url("").is_err());
    }
}
