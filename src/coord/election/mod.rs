//! Leader election and locks in the layout of etcd's Go `concurrency` package, so `etcdctl elect`,
//! `etcdctl lock`, the store's Election and Lock services and the master all queue together.
//!
//! [`protocol`] is the one implementation of the key protocol, on any KV client, with byte
//! prefixes and an explicit lease; the store's services translate etcd's messages onto it.
//! [`Election`], [`Session`] and [`Leadership`] are the master's view: a text prefix, a lease
//! kept alive, and a won leadership watched until it is lost; [`Observer`] follows the leader.

mod error;
mod leadership;
pub(crate) mod observe;
pub(crate) mod protocol;
mod session;

use std::time::Duration;

pub use error::ElectionError;
pub use leadership::{Election, Leadership};
pub use observe::{LeaderInfo, Observer};
pub use session::Session;

/// The master's election prefix.
pub const DEFAULT_PREFIX: &str = "/crawler/election";
/// The master's session TTL.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(5);

/// The value a master campaigns with: `master<id>-<advertised grpc address>`.
pub fn master_value(id: u64, grpc_addr: &str) -> String {
    format!("master{id}-{grpc_addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_value_format() {
        assert_eq!(master_value(2, "10.0.0.1:9091"), "master2-10.0.0.1:9091");
    }
}
