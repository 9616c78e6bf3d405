//! Deadlines for tests: a whole test bounded in time, and waiting for a condition by polling
//! with a deadline (never a bare sleep). Include with `#[path = "support/wait.rs"] mod wait;`.

// Each test binary that includes this uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// Run `f`, failing the test if it takes longer than `deadline`.
pub async fn within<F: Future<Output = ()>>(deadline: Duration, f: F) {
    tokio::time::timeout(deadline, f)
        .await
        .expect("test exceeded its deadline");
}

/// Poll `check` until it holds, failing the test after `wait`.
pub async fn eventually<F, Fut>(what: &str, wait: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
