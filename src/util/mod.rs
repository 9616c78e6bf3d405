//! Small helpers every floor shares, written once: URL and address parsing, time formatting,
//! Prometheus text rendering.

pub(crate) mod prometheus;
pub(crate) mod time;
pub(crate) mod url;
