//! The client foundation (KV client, registry, election) against a real etcd 3.4.
//!
//! Each test starts its own etcd on free ports (skipped, with a message, when no etcd binary is
//! installed). The scenarios live in `support/client_scenarios.rs` so they can be pointed at our
//! own `crawler store` too. The binary can be replaced through `$CRAWLER_TEST_ETCD`; to run the
//! whole suite against `crawler store`, point it at a wrapper script containing
//! `exec /path/to/crawler store "$@"` (it takes etcd's flags).

mod support;

use std::time::Duration;

use support::client_scenarios;
use support::etcd::{EtcdServer, TcpProxy};
use support::ports::free_port;
use support::wait::within;

/// Upper bound for one test, so a hang fails instead of blocking the suite.
const TEST_DEADLINE: Duration = Duration::from_secs(90);

async fn run<F: std::future::Future<Output = ()>>(f: F) {
    within(TEST_DEADLINE, f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_kv_ops() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_kv_ops").await else {
        return;
    };
    run(client_scenarios::kv_ops(&etcd.endpoints())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_txn_ops() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_txn_ops").await else {
        return;
    };
    run(client_scenarios::txn_ops(&etcd.endpoints())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_ops() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_watch_ops").await else {
        return;
    };
    run(client_scenarios::watch_ops(&etcd.endpoints())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lease_ops() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_lease_ops").await else {
        return;
    };
    run(client_scenarios::lease_ops(&etcd.endpoints())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registry_ops() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_registry_ops").await else {
        return;
    };
    run(client_scenarios::registry_ops(&etcd.endpoints())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_election_ops() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_election_ops").await else {
        return;
    };
    run(client_scenarios::election_ops(&etcd.endpoints())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_failover_dead_endpoint() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_failover_dead_endpoint").await else {
        return;
    };
    let dead = format!("127.0.0.1:{}", free_port());
    run(client_scenarios::failover_dead_endpoint(
        &etcd.endpoint,
        &dead,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_resumes_on_other_endpoint() {
    let Some(etcd) = EtcdServer::start_or_skip("etcd_watch_resumes_on_other_endpoint").await else {
        return;
    };
    let proxy = TcpProxy::start(etcd.client_addr).await;
    let via = proxy.endpoint();
    run(client_scenarios::watch_resumes_after_endpoint_loss(
        &via,
        &etcd.endpoint,
        || proxy.kill(),
    ))
    .await;
}
