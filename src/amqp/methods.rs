//! AMQP 0-9-1 methods: one struct per method (`QueueDeclare`, `BasicPublish`, ...), the
//! [`Method`] enum that dispatches on `(class_id, method_id)`, the protocol and frame
//! constants, the [`class`] ids and the [`reply`] codes.
//!
//! Everything but the error type, [`MethodInfo`] and the accessors on it is declared by
//! `src/build.rs` from `grammar/amqp-0-9-1.json` (the spec's facts, RabbitMQ extensions
//! included) and `grammar/amqp-server.json` (which methods the server receives and
//! sends) into the committed `src/amqp/generated.rs`: the constants, and a table with
//! one `methods!` entry per method that the macro in `method_macro.rs` expands into the
//! structs, their codecs and the [`Method`] enum. To add or change a method, edit the
//! JSON and run `QGATE_REGENERATE=1 cargo build`; the test below fails while the
//! committed file is stale.
//!
//! Field names are the spec's in snake_case (`no-wait` -> `no_wait`), except `type`,
//! which is `kind`. Wire types map to `u8`/`u16`/`u32`/`u64` (octet/short/long/longlong
//! and timestamp), `bool` (bit; consecutive bits pack into one octet, least significant
//! bit first), `String` (shortstr, decoded lossily from UTF-8; longer than 255 bytes is
//! truncated on a character boundary when encoding), [`Bytes`] (longstr) and
//! [`FieldTable`] (table).

use bytes::{BufMut, Bytes, BytesMut};

use crate::content::value::wire;
use crate::content::{DecodeError, FieldTable};

/// Why a method frame's payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// The payload ended before the last argument.
    #[error("method payload truncated")]
    Truncated,
    /// No method with these ids exists in the grammar.
    #[error("unknown method class {class_id} method {method_id}")]
    UnknownMethod {
        /// Class id read from the payload.
        class_id: u16,
        /// Method id read from the payload.
        method_id: u16,
    },
    /// A field table argument is malformed (bad type tag, nesting, sizes).
    #[error("malformed field table: {0}")]
    BadFieldTable(DecodeError),
}

impl From<DecodeError> for MethodError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated => MethodError::Truncated,
            other => MethodError::BadFieldTable(other),
        }
    }
}

impl MethodError {
    /// Reply code for the `connection.close` this error calls for: 503 COMMAND_INVALID
    /// for an unknown method, 502 SYNTAX_ERROR for malformed arguments.
    pub fn reply_code(&self) -> u16 {
        match self {
            MethodError::UnknownMethod { .. } => reply::COMMAND_INVALID,
            MethodError::Truncated | MethodError::BadFieldTable(_) => reply::SYNTAX_ERROR,
        }
    }
}

/// What the grammar says about one method: [`Method::info`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// Class id on the wire.
    pub class_id: u16,
    /// Method id on the wire.
    pub method_id: u16,
    /// `class.method` name, e.g. `"basic.publish"`.
    pub name: &'static str,
    /// Followed by a content header and body frames.
    pub content: bool,
    /// Marked synchronous by the spec (a request expecting a reply, or that reply).
    pub synchronous: bool,
    /// `(class_id, method_id)` of the methods that answer this one; empty when none does.
    pub response_ids: &'static [(u16, u16)],
    /// A client may send it to the server (grammar/amqp-server.json).
    pub server_receives: bool,
    /// The server may send it to a client (grammar/amqp-server.json).
    pub server_sends: bool,
    /// The front-end module that handles its class (grammar/amqp-server.json).
    pub handler: &'static str,
}

impl Method {
    /// Class id on the wire.
    pub fn class_id(&self) -> u16 {
        self.info().class_id
    }

    /// Method id on the wire.
    pub fn method_id(&self) -> u16 {
        self.info().method_id
    }

    /// `class.method` name, e.g. `"basic.publish"`.
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// True for methods followed by a content header and body frames.
    pub fn has_content(&self) -> bool {
        self.info().content
    }

    /// True for methods the spec marks synchronous (a request expecting a reply, or that reply).
    pub fn is_synchronous(&self) -> bool {
        self.info().synchronous
    }

    /// `(class_id, method_id)` of the methods that answer this one; empty when none does.
    pub fn response_ids(&self) -> &'static [(u16, u16)] {
        self.info().response_ids
    }

    /// True when a client may send this method to the server (grammar/amqp-server.json).
    pub fn server_receives(&self) -> bool {
        self.info().server_receives
    }

    /// True when the server may send this method to a client (grammar/amqp-server.json).
    pub fn server_sends(&self) -> bool {
        self.info().server_sends
    }

    /// The front-end module that handles this method's class (grammar/amqp-server.json).
    pub fn handler(&self) -> &'static str {
        self.info().handler
    }
}

// Declared before `generated`: a `macro_rules!` macro is visible only to the code after it.
#[macro_use]
#[path = "method_macro.rs"]
mod method_macro;

use method_macro::{ArgReader, ArgWriter, ReplyClass};

// Formatting is the generator's: `cargo fmt` must not make the committed file differ
// from what `src/build.rs` writes.
#[rustfmt::skip]
#[path = "generated.rs"]
mod generated;

pub use generated::*;

#[cfg(test)]
mod tests {
    /// The committed generated files are what `src/build.rs` makes of grammar/ now: every
    /// build writes fresh copies to `$OUT_DIR`.
    #[test]
    fn generated_files_match_the_grammar() {
        let files = [
            (
                "src/amqp/generated.rs",
                include_str!("generated.rs"),
                include_str!(concat!(env!("OUT_DIR"), "/amqp_generated.rs")),
            ),
            (
                "src/content/generated.rs",
                include_str!("../content/generated.rs"),
                include_str!(concat!(env!("OUT_DIR"), "/content_generated.rs")),
            ),
        ];
        for (path, committed, fresh) in files {
            let stale = |line: usize| {
                format!(
                    "{path} differs from what src/build.rs generates from grammar/ (line {line}); \
                     run `QGATE_REGENERATE=1 cargo build` and commit the result"
                )
            };
            let (mut a, mut b) = (committed.lines(), fresh.lines());
            for line in 1.. {
                let (x, y) = (a.next(), b.next());
                assert_eq!(x, y, "{}", stale(line));
                if x.is_none() {
                    break;
                }
            }
            assert!(committed == fresh, "{}", stale(0));
        }
    }
}
