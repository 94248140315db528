//! The AMQP 0-9-1 front end.
//!
//! - [`methods`]: the method argument types, generated into `generated.rs` from
//!   `grammar/amqp-0-9-1.json` (+ the `grammar/amqp-server.json` overlay), with the frame
//!   constants and reply codes.
//! - [`frame`]: frames on the wire (method, content header, body, heartbeat), the
//!   streaming parser and the encoders.
//! - [`codec`]: the tokio-util `Decoder` / `Encoder` over them, which owns `frame_max`
//!   and the protocol-header state. No I/O: the connection owns the socket and its read
//!   buffer (mini-redis's `Connection`) and hands the buffer to the codec.
//! - `connection`: the handshake and the session that routes frames to channels;
//!   `channel/`: one channel's state, with a handler per class (`exchange`, `queue`,
//!   `basic`, `confirm`, `tx`); `writer`: the single writer task per connection.
//!
//! Wire format: after the 8-byte protocol header `AMQP 0 0 9 1`, every frame is
//! `type u8, channel u16, size u32, payload[size], 0xCE`.

pub mod codec;
pub mod frame;
pub mod methods;

mod access;
mod channel;
mod connection;
pub mod error;
mod refuse;
mod writer;

pub use connection::run as serve_connection;
pub use refuse::refuse_connection;

/// The name this front end registers its connections and counters under.
pub const PROTOCOL: &str = "amqp";
