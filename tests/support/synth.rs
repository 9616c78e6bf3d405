//! Crawls of the generated site (`crawler::crawl::synthetic_site`) shared by the crawl, sink and
//! scale tests: its task (every page an item), a resource assigned to a test worker, crawl
//! options, and waiting for a run to finish.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crawler::client::{KvClient, KvClientExt};
use crawler::config::Config;
use crawler::crawl::CrawlOptions;
use crawler::model::resource::Resource;
use crawler::model::runner::{TaskHandle, TaskState};
use crawler::model::task::TaskConfig;

use super::wait::eventually_some;

/// A socket address from text.
pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// A `[[Tasks]]` table crawling the synthetic site from `seed`, every page an item (`n`);
/// `extra` goes in the task's table.
pub fn task_toml(name: &str, seed: &str, extra: &str) -> String {
    format!(
        r#"
[[Tasks]]
Name = "{name}"
URLs = ["{seed}"]
AllowedDomains = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
Robots = false
Retries = 0
Timeout = 20
{extra}

[[Tasks.Rules]]
Follow = ["ul a"]
Items = [{{ Name = "page", Fields = [{{ Name = "n", Selector = "span.n" }}] }}]
"#
    )
}

/// [`task_toml`] parsed and checked as a config file would be.
pub fn task(name: &str, seed: &str, extra: &str) -> TaskConfig {
    Config::parse(&task_toml(name, seed, extra), "test.toml")
        .expect("config")
        .tasks
        .remove(0)
}

/// A resource assigned to the test worker `go.micro.server.worker-t`.
pub fn resource(name: &str, id: &str) -> Resource {
    Resource {
        id: id.into(),
        name: name.into(),
        assigned_node: "go.micro.server.worker-t|127.0.0.1:1".into(),
        creation_time: 1,
    }
}

/// Store `r` at `/resources/<name>`.
pub async fn put_resource(c: &Arc<dyn KvClient>, r: &Resource) {
    c.put_kv(
        format!("/resources/{}", r.name),
        serde_json::to_vec(r).expect("resource JSON"),
        0,
    )
    .await
    .expect("put resource");
}

/// Crawl options writing under `dir`, as writer `test`.
pub fn options(dir: &Path) -> CrawlOptions {
    let mut o = CrawlOptions::new(dir);
    o.progress_every = Duration::from_secs(5);
    o.writer = "test".into();
    o
}

/// Wait up to `wait` until the run ends, which must be as finished.
pub async fn finished(h: &dyn TaskHandle, wait: Duration) {
    let r = eventually_some("the crawl ends", wait, || {
        let r = h.report();
        async move { (r.state != TaskState::Running).then_some(r) }
    })
    .await;
    assert_eq!(r.state, TaskState::Finished, "{r:?}");
}
