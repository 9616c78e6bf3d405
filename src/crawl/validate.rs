//! Checks of one task definition, with the offending field named: run on every task of a config
//! file at startup (and on specs submitted at runtime), so a bad selector or limit is refused
//! before anything runs.

use super::fetch::check_proxy;
use super::rules::Rules;
use crate::model::sink::{SinkConfig, SinkKind};
use crate::model::task::{TaskConfig, MAX_CONCURRENCY};

/// Longest task name a SQL sink stores (MariaDB keys it as `VARCHAR(255)`).
pub const MAX_SQL_TASK_NAME: usize = 255;

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
    // serde would also take a struct from a JSON array, field by position.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(FieldError::new(
            "spec",
            "must be a JSON object (the fields of a [[Tasks]] table)",
        ));
    }
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
    if let Some(s) = &t.sink {
        check_sink(s).map_err(|e| FieldError::new(format!("Sink.{}", e.field), e.message))?;
        check_sql_task_name(t, s)?;
    }
    Ok(())
}

/// A task whose items go to a SQL table: its name must fit the table's key.
pub fn check_sql_task_name(t: &TaskConfig, s: &SinkConfig) -> Result<(), FieldError> {
    if s.kind.is_sql() && t.name.chars().count() > MAX_SQL_TASK_NAME {
        return Err(FieldError::new(
            "Name",
            format!(
                "must be at most {MAX_SQL_TASK_NAME} characters when items go to a {} table",
                s.kind.as_str()
            ),
        ));
    }
    Ok(())
}

/// Check a results sink (`[Sink]` or a task's `Sink`); `field` is relative to the section.
/// The DSN is never repeated in a message: it may hold a password.
pub fn check_sink(s: &SinkConfig) -> Result<(), FieldError> {
    if !s.kind.is_sql() {
        for (field, set) in [("DSN", s.dsn.is_some()), ("Table", s.table.is_some())] {
            if set {
                return Err(FieldError::new(
                    field,
                    format!(
                        "is only used with Kind = \"postgres\" or \"mysql\" (Kind is {:?})",
                        s.kind.as_str()
                    ),
                ));
            }
        }
        return Ok(());
    }
    let dsn = match s.dsn.as_deref().map(str::trim) {
        None | Some("") => {
            return Err(FieldError::new(
                "DSN",
                format!(
                    "is required with Kind = {:?} (e.g. {})",
                    s.kind.as_str(),
                    example_dsn(s.kind)
                ),
            ))
        }
        Some(d) => d,
    };
    let schemes: &[&str] = match s.kind {
        SinkKind::Postgres => &["postgres", "postgresql"],
        _ => &["mysql", "mariadb"],
    };
    let parsed = url::Url::parse(dsn)
        .ok()
        .filter(|u| schemes.contains(&u.scheme()) && u.host_str().is_some());
    let Some(parsed) = parsed else {
        return Err(FieldError::new(
            "DSN",
            format!(
                "must be a {}:// URL with a host, e.g. {}",
                schemes[0],
                example_dsn(s.kind)
            ),
        ));
    };
    // The drivers are built without TLS: a DSN that demands it could never connect, and the
    // run would wait for it forever.
    for (k, v) in parsed.query_pairs() {
        let k = k.to_ascii_lowercase().replace('-', "_");
        let v = v.to_ascii_lowercase();
        let demands = matches!(
            (k.as_str(), v.as_str()),
            ("sslmode", "require" | "verify-ca" | "verify-full")
                | ("ssl_mode", "required" | "verify_ca" | "verify_identity")
        );
        if demands {
            return Err(FieldError::new(
                "DSN",
                format!("asks for TLS ({k}={v}), which this build does not support"),
            ));
        }
    }
    let table = s.table();
    let plain = table.len() <= 63
        && table
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        return Err(FieldError::new(
            "Table",
            format!(
                "{table:?} must be a plain identifier: ASCII letters, digits and '_', not \
                 starting with a digit, at most 63 characters"
            ),
        ));
    }
    Ok(())
}

fn example_dsn(kind: SinkKind) -> &'static str {
    match kind {
        SinkKind::Postgres => "postgres://user:pass@127.0.0.1:5432/db",
        _ => "mysql://user:pass@127.0.0.1:3306/db",
    }
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

    fn sink(kind: SinkKind, dsn: Option<&str>, table: Option<&str>) -> SinkConfig {
        SinkConfig {
            kind,
            dsn: dsn.map(Into::into),
            table: table.map(Into::into),
        }
    }

    #[test]
    fn sink_settings_are_checked_by_field() {
        let pg = Some("postgres://u:secret@127.0.0.1:5432/db");
        assert!(check_sink(&sink(SinkKind::Postgres, pg, None)).is_ok());
        assert!(check_sink(&sink(SinkKind::Jsonl, None, None)).is_ok());
        let my = Some("mysql://root@127.0.0.1:3306/db");
        assert!(check_sink(&sink(SinkKind::Mysql, my, Some("items_2"))).is_ok());
        let field = |s: SinkConfig| check_sink(&s).map_err(|e| e.field);
        assert_eq!(
            field(sink(SinkKind::Postgres, None, None)),
            Err("DSN".into())
        );
        assert_eq!(
            field(sink(SinkKind::Mysql, Some(" "), None)),
            Err("DSN".into())
        );
        assert_eq!(field(sink(SinkKind::Mysql, pg, None)), Err("DSN".into()));
        assert_eq!(field(sink(SinkKind::Jsonl, pg, None)), Err("DSN".into()));
        assert_eq!(
            field(sink(SinkKind::Jsonl, None, Some("t"))),
            Err("Table".into())
        );
        for bad in ["1t", "a-b", "t;drop", "", "\"x\""] {
            assert_eq!(
                field(sink(SinkKind::Postgres, pg, Some(bad))),
                Err("Table".into()),
                "{bad:?}"
            );
        }
        for tls in [
            "postgres://u@h/db?sslmode=require",
            "mysql://u@h/db?ssl-mode=REQUIRED",
        ] {
            let kind = if tls.starts_with("postgres") {
                SinkKind::Postgres
            } else {
                SinkKind::Mysql
            };
            let e = check_sink(&sink(kind, Some(tls), None)).expect_err(tls);
            assert!(e.message.contains("TLS"), "{e}");
        }
        let ok = "postgres://u@h/db?sslmode=prefer";
        assert!(check_sink(&sink(SinkKind::Postgres, Some(ok), None)).is_ok());
        let e = check_sink(&sink(
            SinkKind::Postgres,
            Some("postgres://u:secret@"),
            None,
        ))
        .expect_err("no host");
        assert!(!e.message.contains("secret"), "{e}");
    }
}
