//! Small helpers every floor shares, written once: URL and address parsing, time formatting.

pub mod time;
pub mod url;
