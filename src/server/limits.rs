//! Limits enforced on client requests, and the space quota.

/// Limits enforced on client requests (etcd's defaults).
#[derive(Clone, Debug)]
pub struct Limits {
    /// `--max-request-bytes`, default 1.5 MiB.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`, default 128.
    pub max_txn_ops: usize,
    /// `--quota-backend-bytes`: db size past which writes raise NOSPACE (0 = 2 GiB).
    pub quota_backend_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: 0,
        }
    }
}
