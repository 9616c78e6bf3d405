//! Limits enforced on client requests.

/// Limits enforced on client requests (etcd's defaults).
#[derive(Clone, Debug)]
pub struct Limits {
    /// `--max-request-bytes`, default 1.5 MiB.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`, default 128.
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
        }
    }
}
