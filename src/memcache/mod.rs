//! The memcache text protocol front end, in the style of memcacheq: `set <queue>`
//! enqueues, `get <queue>` dequeues.
//!
//! # Layout
//!
//! - [`command`]: [`Request`](command::Request) and its parts, the
//!   [`ProtocolError`](command::ProtocolError) answers, and the response encoders
//!   (`write_*`, straight into a `BytesMut`).
//! - [`parser`]: a nom parser with one function per rule of `grammar/memcache.abnf`, and
//!   [`parse_request`](parser::parse_request), the answer owed to each input.
//!   No I/O, no tokio.
//! - [`codec`]: [`MemcacheCodec`](codec::MemcacheCodec), the one decoder of a byte
//!   stream into requests (tokio-util's `Decoder`), owning the limits and what an error
//!   leaves to discard.
//! - `connection`: the socket with its read and write buffers and the codec.
//! - `session` ([`serve_connection`]): the per-connection task: what each request
//!   answers, the counters, the access checks (`access`), when answers are written.
//! - `backend`: where queue operations go: this broker's core (`backend/local.rs`) or,
//!   in upstream mode, a RabbitMQ cluster (`backend/upstream.rs`).
//! - [`stats`]: the counters behind `stats` and the metrics.
//!
//! # Wire format (the subset we serve; `grammar/memcache.abnf` is the reference)
//!
//! Requests are lines ending in `\r\n` (a bare `\n` is accepted, as memcached does),
//! words separated by spaces, command names case-sensitive:
//!
//! ```text
//! set <queue> <flags> <exptime> <bytes> [noreply]\r\n<data block>\r\n   -> STORED | SERVER_ERROR <why>
//! get <key> [<key> ...]\r\n              -> (VALUE <queue> <flags> <bytes>\r\n<data>\r\n)* END
//! delete <queue> [0] [noreply]\r\n       -> DELETED | NOT_FOUND
//! stats\r\n | stats queue\r\n            -> (STAT <name> <value>\r\n)* END
//! stats reset\r\n                       -> RESET
//! version\r\n                            -> VERSION <version>
//! verbosity <level> [noreply]\r\n        -> OK
//! quit\r\n                               -> (connection closed)
//! ```
//!
//! - A key is 1..=250 printable non-space ASCII bytes; a queue name is a key without
//!   `/`. A `get` key may carry Kestrel-style options after the name:
//!   `q/open`, `q/close`, `q/close/open`, `q/abort`, `q/peek`, `q/t=<ms>` (with
//!   `open`, `close/open` or `peek`, or alone).
//! - `flags` is 0..=2^32-1, `exptime` a signed decimal, `bytes` 0..=2^31-3 and at
//!   most the configured maximum message size. The data block is binary-safe and must
//!   be followed by exactly `\r\n`.
//! - `noreply` suppresses the success answer of `set`, `delete` and `verbosity`; errors
//!   are always answered.
//!
//! Errors (as memcached/memcacheq word them), and the connection stays usable after
//! each: `ERROR` (unknown or unserved command such as `gets`/`incr`/`touch`, empty line,
//! wrong argument count, `stats <other>`), `CLIENT_ERROR bad command line format`
//! (bad key, bad number, bad get option), `CLIENT_ERROR bad data chunk` (no `\r\n`
//! after the data block), `CLIENT_ERROR line too long`, and `SERVER_ERROR out of
//! memory storing object` (data block over the size limit, swallowed unbuffered), and
//! `SERVER_ERROR ... not stored` for a `set` no queue took (full with `x-overflow:
//! reject-publish`, or deleted under it); `SERVER_ERROR`s are answered even under
//! `noreply`, as memcached does.
//! [`parser::parse_request`] documents exactly which bytes each error consumes.

mod access;
mod backend;
pub mod codec;
pub mod command;
mod connection;
pub mod parser;
mod refuse;
mod session;
pub mod stats;

pub use backend::FLAGS_HEADER;

pub use refuse::refuse_connection;
pub use session::run as serve_connection;
