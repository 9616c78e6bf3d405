//! Why an MVCC operation stopped: a deterministic etcd error (the command is refused, the store
//! unchanged) or a storage failure (the state machine must reload from sled).

use crate::error::{ApplyError, StoreError};

/// Why an operation stopped: a deterministic etcd error, or a storage failure.
#[derive(Debug)]
pub(crate) enum Fault {
    Apply(ApplyError),
    Store(StoreError),
}

impl From<ApplyError> for Fault {
    fn from(e: ApplyError) -> Self {
        Fault::Apply(e)
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        Fault::Store(e)
    }
}

impl From<sled::Error> for Fault {
    fn from(e: sled::Error) -> Self {
        Fault::Store(e.into())
    }
}
