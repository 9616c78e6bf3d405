//! Deadlines for tests: a whole test bounded in time, and waiting for a condition by polling
//! with a deadline (never a bare sleep) — in async tests and, for process-driving tests, in
//! blocking code.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often an async condition is polled.
const POLL: Duration = Duration::from_millis(20);
/// How often a blocking condition is polled (they usually run a process).
const POLL_BLOCKING: Duration = Duration::from_millis(50);

/// Run `f`, failing the test if it takes longer than `deadline`.
pub async fn within<T, F: Future<Output = T>>(deadline: Duration, f: F) -> T {
    tokio::time::timeout(deadline, f)
        .await
        .expect("test exceeded its deadline")
}

/// Poll `check` until it returns `Some`, failing the test after `wait`.
pub async fn eventually_some<T, F, Fut>(what: &str, wait: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {wait:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Poll `check` until it holds, failing the test after `wait`.
pub async fn eventually<F, Fut>(what: &str, wait: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(what, wait, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Blocking: poll `f` until it returns `Some`, or `None` once `timeout` has passed.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_BLOCKING);
    }
}

/// Like [`wait_until`] but panics with `what` on timeout.
pub fn must_wait<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match wait_until(timeout, f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for: {what}"),
    }
}
