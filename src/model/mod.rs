//! What master, worker and crawl share: resources and their key layout, task
//! definitions, results sink settings, and the task runner interface.

pub mod resource;
pub mod runner;
pub mod sink;
pub mod spec;
pub mod task;
