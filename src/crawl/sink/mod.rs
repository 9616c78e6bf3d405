//! Where extracted items go. [`Sink`] is one task's destination, [`SinkFactory`] opens it when
//! the task's run starts ([`api`]: the interface, in a module of its own so that the sinks
//! below and their users depend on it, not on each other). [`RoutingSinks`] ([`route`]), the
//! engine's factory, picks per task: the task's `Sink`, else the config's `[Sink]`, else JSON
//! lines:
//! - [`jsonl`]: `<dir>/<task>.jsonl`, appended and synced to disk before each checkpoint;
//! - [`sql`]: a PostgreSQL or MySQL/MariaDB table, buffered and inserted in one transaction
//!   before each checkpoint, keyed by (task, url, item index) so a page processed twice (after a
//!   crash or a move) stores its items once.
//!
//! Either way a checkpoint never counts items the sink has not made durable: the run syncs
//! first, and while a sync fails it retries and does not checkpoint (`crate::crawl::run`).

pub mod api;
pub mod jsonl;
pub mod route;
pub mod sql;

pub use api::{Item, Sink, SinkError, SinkFactory};
pub use jsonl::{JsonlSink, JsonlSinks, JSONL_BUFFER_BYTES};
pub use route::RoutingSinks;
pub use sql::SqlSinks;
