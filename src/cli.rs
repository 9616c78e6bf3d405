//! INTERFACE STUB — command line (`crawler store` with etcd's flag names).
