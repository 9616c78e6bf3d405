//! Checks of one task definition, with the offending field named: run on every task of a config
//! file at startup (and on specs submitted at runtime), so a bad selector or limit is refused
//! before anything runs.

use super::fetch::check_proxy;
use super::rules::Rules;
use crate::model::task::{TaskConfig, MAX_CONCURRENCY};

/// What is wrong with a task, and where: `field` is the path inside the task (e.g.
/// `Limits[0].EventDur`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path inside the task.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A spec submitted as JSON (the `[[Tasks]]` table's field names), decoded and checked; the
/// error names the offending field (`Limits[0].EventDur`, or the unknown field).
pub fn parse_spec_json(bytes: &[u8]) -> Result<TaskConfig, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let task: TaskConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "spec".to_string()
        } else {
            path
        };
        FieldError::new(field, e.into_inner().to_string())
    })?;
    check_task(&task)?;
    Ok(task)
}

/// Check one task; the first problem found, with its field.
pub fn check_task(t: &TaskConfig) -> Result<(), FieldError> {
    let at = |field: &str| field.to_string();
    if t.name.trim().is_empty() {
        return Err(FieldError::new(at("Name"), "must not be empty"));
    }
    if t.name.contains('/') || t.name.chars().any(char::is_whitespace) {
        return Err(FieldError::new(
            at("Name"),
            format!(
                "{:?} must not contain '/' or spaces (it is the key /resources/<Name>)",
                t.name
            ),
        ));
    }
    if !t.wait_time.is_finite() || t.wait_time < 0.0 {
        return Err(FieldError::new(
            at("WaitTime"),
            "must be a non-negative number of seconds",
        ));
    }
    for (j, u) in t.urls.iter().enumerate() {
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && url::Url::parse(u).is_ok_and(|p| p.host_str().is_some_and(|h| !h.is_empty()));
        if !ok {
            return Err(FieldError::new(
                format!("URLs[{j}]"),
                format!("{u:?} must be an http:// or https:// URL"),
            ));
        }
    }
    for (j, d) in t.allowed_domains.iter().enumerate() {
        if d.trim().is_empty() || d.contains('/') {
            return Err(FieldError::new(
                format!("AllowedDomains[{j}]"),
                format!("{d:?} must be a host name"),
            ));
        }
    }
    for (j, l) in t.limits.iter().enumerate() {
        let at = |field: &str| format!("Limits[{j}].{field}");
        if l.event_count == 0 {
            return Err(FieldError::new(at("EventCount"), "must be at least 1"));
        }
        if !l.event_dur.is_finite() || l.event_dur <= 0.0 {
            return Err(FieldError::new(
                at("EventDur"),
                "must be a positive number of seconds",
            ));
        }
        if l.bucket == Some(0) {
            return Err(FieldError::new(at("Bucket"), "must be at least 1"));
        }
    }
    // Crawl settings: checked here so a bad selector stops the process at startup.
    if t.reload && t.max_depth == 0 {
        return Err(FieldError::new(
            at("Reload"),
            "needs MaxDepth > 0 (without dedup a link cycle would never end)",
        ));
    }
    if !t.timeout.is_finite() || t.timeout <= 0.0 {
        return Err(FieldError::new(
            at("Timeout"),
            "must be a positive number of seconds",
        ));
    }
    if !t.checkpoint_interval.is_finite() || t.checkpoint_interval <= 0.0 {
        return Err(FieldError::new(
            at("CheckpointInterval"),
            "must be a positive number of seconds",
        ));
    }
    if t.checkpoint_pages == 0 {
        return Err(FieldError::new(at("CheckpointPages"), "must be at least 1"));
    }
    for (field, v) in [
        ("Concurrency", t.concurrency),
        ("ConcurrencyPerHost", t.concurrency_per_host),
    ] {
        if v == 0 || v > MAX_CONCURRENCY {
            return Err(FieldError::new(
                at(field),
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            ));
        }
    }
    for (j, p) in t.proxies.iter().enumerate() {
        if let Err(m) = check_proxy(p) {
            return Err(FieldError::new(format!("Proxies[{j}]"), m));
        }
    }
    if let Err(e) = Rules::compile(t) {
        return Err(FieldError::new(e.field, e.message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_the_bad_field() {
        let ok = parse_spec_json(br#"{"Name":"t","URLs":["http://127.0.0.1:1/"]}"#).unwrap();
        assert_eq!(ok.name, "t");
        let e = parse_spec_json(br#"{"Name":"t","Bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("Bogus"), "{e}");
        let e = parse_spec_json(br#"{"Name":"t","Limits":[{"EventCount":"x","EventDur":1}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "Limits[0].EventCount", "{e}");
        let e = parse_spec_json(br#"{"Name":"t","URLs":["http://"]}"#).unwrap_err();
        assert_eq!(e.field, "URLs[0]", "{e}");
        let e = parse_spec_json(br#"{"Name":"t","URLs":["http://a b/"]}"#).unwrap_err();
        assert_eq!(e.field, "URLs[0]", "{e}");
        let e = parse_spec_json(
            br#"{"Name":"t","Rules":[{"Items":[{"Name":"x","Fields":[{"Name":"a","Selector":"div[["}]}]}]}"#,
        )
        .unwrap_err();
        assert!(e.field.starts_with("Rules[0]"), "{e}");
        let e = parse_spec_json(b"[1]").unwrap_err();
        assert_eq!(e.field, "spec", "{e}");
    }
}
