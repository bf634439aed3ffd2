//! `armada-client`: a typed async client for Armada's gRPC API (the Regatta wire contract).
//!
//! Used by the `armada` CLI (`kv`, `table`, `status`, `members`, `backup`, `restore`), by `armada bench`, by the
//! black-box tests and (later) by follower clusters forwarding writes to the leader cluster.
//!
//! - [`Client::connect`] / [`Client::connect_with`] accept `http://host:port`, `host:port`
//!   (plaintext), `https://host:port` (TLS: a CA file or the system's roots; optionally a
//!   client certificate for mutual TLS and a server name), `unix:///path` and
//!   `unixs:///path` (TLS over a Unix socket) (see [`address`]).
//! - Every call carries the optional bearer token and deadline of [`ConnectOptions`]; the
//!   deadline travels as `grpc-timeout` so the server sees it too.
//! - Message limits on the channel are [`MAX_MESSAGE_BYTES`] in both directions, above the
//!   server's 4 MiB, so that tests exercise the server's limits and not ours.
//! - Every failure is a [`ClientError`], which keeps the gRPC code and message.
//!
//! The pure helpers used to turn command-line text into requests live here too, so they are
//! tested without a server: [`key_range`] (prefix → range end) and [`txn_script`] (etcdctl-style
//! transactions).

pub mod address;
mod client;
mod error;
pub mod key_range;
pub mod txn_script;

pub use client::{
    ApiChannel, Backup, ByteStream, CallDecorator, Client, ClientIdentity, ConnectOptions,
    DEFAULT_CONNECT_TIMEOUT, MAX_MESSAGE_BYTES, REVISION_HEADER, RangeStream, connect_channel,
    lazy_channel,
};
pub use error::ClientError;

/// Re-exported so that callers name the same `Bytes` as the generated messages.
pub use prost::bytes::Bytes;
