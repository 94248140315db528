//! The AMQP 0-9-1 front end.
//!
//! - [`methods`]: the method argument types, generated at build time from
//!   `grammar/amqp-0-9-1.json` (+ the `grammar/amqp-server.json` overlay), with the frame
//!   constants and reply codes.
//! - [`frame`]: frames on the wire (method, content header, body, heartbeat), the
//!   streaming parser and the encoders. No I/O: the connection task owns the socket and
//!   hands its read buffer to [`frame::parse_frame`].
//!
//! Wire format: after the 8-byte protocol header `AMQP 0 0 9 1`, every frame is
//! `type u8, channel u16, size u32, payload[size], 0xCE`.

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
