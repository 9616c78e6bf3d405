//! What master, worker and crawl engine share: resources and their key layout, task
//! definitions, and the task runner interface.

pub mod resource;
pub mod runner;
pub mod spec;
pub mod task;
