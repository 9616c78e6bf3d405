//! Why a registry call failed.

use crate::client::KvError;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store call failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A service to register or deregister has no node.
    #[error("registry: require at least one node")]
    NoNodes,
    /// A value could not be encoded.
    #[error("registry: encode service: {0}")]
    Encode(#[from] serde_json::Error),
    /// The node key is held by another live registration.
    #[error(
        "registry: {key} is registered by another process (address {holder}): \
         another node runs with the same id"
    )]
    Taken {
        /// The node key.
        key: String,
        /// The holder's node address, as registered.
        holder: String,
    },
}
