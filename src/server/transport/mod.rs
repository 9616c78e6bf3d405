//! HTTP/2 `:authority` shim for etcd clients that send a URL as the authority.
//!
//! etcdctl 3.4 dials some commands (`endpoint status`, `endpoint hashkv`, `defrag`, `snapshot
//! save`, `move-leader`) with the grpc-go target `passthrough:///http://host:port`, so the
//! HTTP/2 `:authority` it sends is the literal `http://host:port`. etcd's Go server accepts that;
//! h2 (under tonic and hyper) rejects it as malformed and resets the stream with PROTOCOL_ERROR.
//! [`AuthorityShim`] wraps each accepted client connection and rewrites such authorities to
//! `host:port` on their way to the server.
//!
//! A grpc-go client sends one authority on every stream of a connection, so the first header
//! block decides: without a URL authority there, the block and everything after it pass through
//! untouched (every client but those etcdctl commands). Otherwise HPACK's state forces a
//! rewrite of the whole connection: every header block is decoded with the client's dynamic
//! table and re-encoded without any dynamic table (static-table references and literals
//! "without indexing" only), so the server's decoder table stays empty and always consistent.
//! Other frames pass through byte for byte; server→client bytes are not touched at all.
//!
//! The shim ([`shim`]) feeds the client's bytes through a frame parser ([`rewriter`]) that
//! hands header frames to the header-block rewriter ([`hpack`]), which re-encodes with
//! [`encode`] and frames the result with [`frame`].

pub(crate) mod encode;
pub(crate) mod frame;
pub(crate) mod hpack;
pub(crate) mod rewriter;
pub(crate) mod shim;
#[cfg(test)]
mod tests;

pub(crate) use shim::AuthorityShim;
