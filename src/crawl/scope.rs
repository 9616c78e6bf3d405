//! Which hosts a task may visit.

use url::Url;

use crate::model::task::TaskConfig;

/// The hosts a task may visit: `AllowedDomains`, else the seeds' hosts.
pub fn allowed_domains(task: &TaskConfig) -> Vec<String> {
    let mut out: Vec<String> = task
        .allowed_domains
        .iter()
        .map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase())
        .collect();
    if out.is_empty() {
        out = task
            .urls
            .iter()
            .filter_map(|u| Url::parse(u).ok())
            .filter_map(|u| u.host_str().map(str::to_ascii_lowercase))
            .collect();
    }
    out
}

/// A host is allowed when it is an allowed domain or a subdomain of one.
pub fn host_allowed(allowed: &[String], url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    allowed
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let mut t = TaskConfig::named("t");
        t.urls = vec!["http://Books.Example.com/x".into()];
        let a = allowed_domains(&t);
        assert_eq!(a, vec!["books.example.com".to_string()]);
        let u = |s: &str| Url::parse(s).expect("url");
        assert!(host_allowed(&a, &u("http://books.example.com:8080/y")));
        assert!(host_allowed(&a, &u("http://x.books.example.com/y")));
        assert!(!host_allowed(&a, &u("http://example.com/y")));
        assert!(!host_allowed(&a, &u("http://evilbooks.example.com/y")));
        t.allowed_domains = vec![".example.com".into()];
        assert!(host_allowed(
            &allowed_domains(&t),
            &u("http://example.com/")
        ));
    }
}
