//! Small helpers every floor shares, written once: URL and address parsing, time formatting.

pub(crate) mod time;
pub(crate) mod url;
