//! The `methods!` macro that `generated.rs` invokes once with one entry per grammar
//! method, the argument codec its expansion calls, and the `replies!` macro for the
//! reply codes. The generator writes the grammar
//! as a table; the shape of a method struct, its codec and the [`Method`](super::Method)
//! dispatch are written here once.
//!
//! An entry reads
//!
//! ```text
//! /// doc
//! BasicDeliver(BASIC, 60, "basic.deliver") { <MethodInfo fields after name> }
//! borrowed_args { consumer_tag: shortstr, delivery_tag: longlong, ..., exchange: shortstr "domain `exchange-name`", ... }
//! ```
//!
//! where the class is a constant of `class`, each argument names its wire type, in wire
//! order, optionally followed by a note for its doc (the spec's domain where it says more
//! than the name, remarks), and `borrowed_args` (instead of `args`) also gives the struct
//! an `encode_args_borrowed` taking `&str`/`&[u8]` where the struct owns `String`/`Bytes`.

use bytes::{BufMut, BytesMut};

use crate::content::value::wire;
use crate::content::{DecodeError, FieldTable};

/// The Rust type of an argument of wire type `$ty`: `owned` in a method struct,
/// `borrowed` as a parameter of `encode_args_borrowed`.
macro_rules! arg_type {
    (owned octet) => { u8 };
    (owned short) => { u16 };
    (owned long) => { u32 };
    (owned longlong) => { u64 };
    (owned timestamp) => { u64 };
    (owned bit) => { bool };
    (owned shortstr) => { String };
    (owned longstr) => { Bytes };
    (owned table) => { FieldTable };
    (borrowed shortstr) => { &str };
    (borrowed longstr) => { &[u8] };
    (borrowed table) => { &FieldTable };
    (borrowed $ty:ident) => { arg_type!(owned $ty) };
}

/// One method struct without arguments: a unit struct, usable both as `TxSelect` and
/// `TxSelect {}`.
macro_rules! method_struct {
    ($(#[$doc:meta])* $name:ident {}) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name;
    };
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ident $($note:literal)?),+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name {
            $(
                #[doc = concat!("`", stringify!($field), "`: wire type `", stringify!($ty), "`" $(, "; ", $note)?, ".")]
                pub $field: arg_type!(owned $ty),
            )+
        }
    };
}

/// One method: its struct, constants, [`MethodInfo`](super::MethodInfo) and codec.
macro_rules! method {
    (
        $(#[$doc:meta])* $name:ident($class:ident, $id:literal, $full:literal) { $($info:tt)* }
        args { $($field:ident: $ty:ident $($note:literal)?),* $(,)? }
    ) => {
        method_struct!($(#[$doc])* $name { $($field: $ty $($note)?),* });

        impl $name {
            /// Class id on the wire.
            pub const CLASS_ID: u16 = class::$class;
            /// Method id on the wire.
            pub const METHOD_ID: u16 = $id;
            /// `class.method` name.
            pub const NAME: &'static str = $full;
            /// What the grammar says about this method.
            pub const INFO: MethodInfo = MethodInfo {
                class_id: Self::CLASS_ID,
                method_id: Self::METHOD_ID,
                name: Self::NAME,
                $($info)*
            };

            /// Decodes the arguments (after class-id and method-id), advancing `input`.
            // A method without arguments leaves the reader unused.
            #[allow(unused_variables)]
            pub fn decode_args(input: &mut &[u8]) -> Result<Self, MethodError> {
                let r = &mut ArgReader::new(input);
                // Struct expressions evaluate their fields in the order written: wire order.
                Ok(Self { $($field: r.$ty()?,)* })
            }

            /// Encodes the arguments (without class-id and method-id).
            pub fn encode_args(&self, out: &mut BytesMut) {
                let w = &mut ArgWriter::new(out);
                $(w.$ty(&self.$field);)*
                w.finish();
            }
        }
    };
    (
        $(#[$doc:meta])* $name:ident($class:ident, $id:literal, $full:literal) { $($info:tt)* }
        borrowed_args { $($field:ident: $ty:ident $($note:literal)?),* $(,)? }
    ) => {
        method! {
            $(#[$doc])* $name($class, $id, $full) { $($info)* }
            args { $($field: $ty $($note)?),* }
        }

        impl $name {
            /// [`Self::encode_args`] from borrowed values: the server sends this method with
            /// every message it hands out, and this way builds no owned strings for it.
            pub fn encode_args_borrowed(out: &mut BytesMut, $($field: arg_type!(borrowed $ty)),*) {
                let w = &mut ArgWriter::new(out);
                $(w.$ty(&$field);)*
                w.finish();
            }
        }
    };
}

/// Every method of the grammar: the structs (see `method!`), the [`Method`](super::Method)
/// enum with its `(class_id, method_id)` dispatch, the `From` conversions into it, and
/// [`method_name`](super::method_name).
macro_rules! methods {
    ($(
        $(#[$doc:meta])* $name:ident($class:ident, $id:literal, $full:literal) { $($info:tt)* }
        $args:ident { $($fields:tt)* }
    )*) => {
        $(method! { $(#[$doc])* $name($class, $id, $full) { $($info)* } $args { $($fields)* } })*

        /// Every AMQP 0-9-1 method qgate knows, one variant per method struct.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method {
            $(#[doc = concat!("`", $full, "`")] $name($name),)*
        }

        $(impl From<$name> for Method {
            fn from(m: $name) -> Method {
                Method::$name(m)
            }
        })*

        /// What the grammar says about each method, in grammar order.
        const INFO: &[MethodInfo] = &[$($name::INFO),*];

        impl Method {
            /// The grammar's facts about this method.
            pub fn info(&self) -> &'static MethodInfo {
                match self {
                    $(Method::$name(_) => &$name::INFO,)*
                }
            }

            /// Decodes a method frame payload: class-id, method-id, then the arguments.
            /// Bytes after the last argument are ignored.
            pub fn decode(payload: &[u8]) -> Result<Method, MethodError> {
                let input = &mut &payload[..];
                let class_id = wire::get_u16(input)?;
                let method_id = wire::get_u16(input)?;
                Ok(match (class_id, method_id) {
                    $(($name::CLASS_ID, $name::METHOD_ID) => Method::$name($name::decode_args(input)?),)*
                    _ => return Err(MethodError::UnknownMethod { class_id, method_id }),
                })
            }

            /// Encodes class-id, method-id and the arguments (a method frame's payload).
            pub fn encode(&self, out: &mut BytesMut) {
                out.put_u16(self.class_id());
                out.put_u16(self.method_id());
                match self {
                    $(Method::$name(m) => m.encode_args(out),)*
                }
            }
        }

        /// `class.method` name for wire ids, `None` when unknown.
        pub fn method_name(class_id: u16, method_id: u16) -> Option<&'static str> {
            INFO.iter()
                .find(|m| (m.class_id, m.method_id) == (class_id, method_id))
                .map(|m| m.name)
        }
    };
}

/// The spec's class of a reply code, as a `replies!` entry names it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyClass {
    Success,
    SoftError,
    HardError,
}

/// The reply codes: one entry `NAME = code, Class;` each, expanded into the
/// [`reply`](super::reply) constants, [`reply_name`](super::reply_name) and the hard/soft
/// classification.
macro_rules! replies {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $class:ident;)*) => {
        /// Reply codes (`connection.close` / `channel.close` / `basic.return`), named as in the spec.
        pub mod reply {
            $($(#[$doc])* pub const $name: u16 = $code;)*
            pub use super::{reply_is_hard_error, reply_is_soft_error, reply_name};
        }

        /// The constant's name for a reply code, as RabbitMQ starts its reply texts
        /// (`404` -> `"NOT_FOUND"`); `"UNKNOWN"` for a code the spec does not define.
        pub fn reply_name(code: u16) -> &'static str {
            match code {
                $(reply::$name => stringify!($name),)*
                _ => "UNKNOWN",
            }
        }

        /// The spec's class of a reply code; `None` for a code it does not define.
        fn reply_class(code: u16) -> Option<ReplyClass> {
            match code {
                $(reply::$name => Some(ReplyClass::$class),)*
                _ => None,
            }
        }

        /// True for a hard error (the connection must close), false for soft errors
        /// (the channel closes) and for codes that are not errors.
        pub fn reply_is_hard_error(code: u16) -> bool {
            reply_class(code) == Some(ReplyClass::HardError)
        }

        /// True for a soft error (only the channel closes), false for hard errors and
        /// for codes that are not errors.
        pub fn reply_is_soft_error(code: u16) -> bool {
            reply_class(code) == Some(ReplyClass::SoftError)
        }
    };
}

/// Reads method arguments in wire order. Consecutive `bit` arguments share an octet,
/// least significant bit first, eight to an octet; any other argument ends the run.
/// Each reader is named after its wire type, so an entry's `$ty` names the call.
pub(super) struct ArgReader<'a, 'b> {
    input: &'a mut &'b [u8],
    /// The octet the current run of bits comes from.
    bits: u8,
    /// Bits of `bits` already read; 8 when the next `bit` starts a new octet.
    used: u8,
}

/// A reader of a non-bit wire type: ends a run of bits.
macro_rules! read_plain {
    ($($(#[$attr:meta])* $name:ident -> $t:ty = $get:path;)*) => {$(
        $(#[$attr])*
        #[inline(always)]
        pub(super) fn $name(&mut self) -> Result<$t, DecodeError> {
            self.used = 8;
            $get(self.input)
        }
    )*};
}

impl<'a, 'b> ArgReader<'a, 'b> {
    #[inline(always)]
    pub(super) fn new(input: &'a mut &'b [u8]) -> Self {
        ArgReader {
            input,
            bits: 0,
            used: 8,
        }
    }

    read_plain! {
        octet -> u8 = wire::get_u8;
        short -> u16 = wire::get_u16;
        long -> u32 = wire::get_u32;
        longlong -> u64 = wire::get_u64;
        // No 0-9-1 method argument is a timestamp (only a basic property is), but the
        // grammar may declare one.
        #[allow(dead_code)]
        timestamp -> u64 = wire::get_u64;
        shortstr -> String = wire::get_shortstr;
        longstr -> bytes::Bytes = wire::get_longstr;
        table -> FieldTable = FieldTable::decode;
    }

    #[inline(always)]
    pub(super) fn bit(&mut self) -> Result<bool, DecodeError> {
        if self.used == 8 {
            self.bits = wire::get_u8(self.input)?;
            self.used = 0;
        }
        let bit = self.bits & (1 << self.used) != 0;
        self.used += 1;
        Ok(bit)
    }
}

/// Appends method arguments in wire order, packing bits as [`ArgReader`] reads them.
/// The pending octet of a run of bits is written by the next non-bit argument or by
/// [`ArgWriter::finish`]. Every writer takes its value by reference so that one call
/// serves the struct's fields and the borrowed encoder's parameters alike.
pub(super) struct ArgWriter<'a> {
    out: &'a mut BytesMut,
    /// The run of bits not yet written.
    bits: u8,
    /// How many bits `bits` holds.
    pending: u8,
}

/// A writer of a non-bit wire type: flushes a pending run of bits first.
macro_rules! write_plain {
    ($($(#[$attr:meta])* $name:ident($out:ident, $v:ident: $t:ty) $put:expr;)*) => {$(
        $(#[$attr])*
        #[inline(always)]
        pub(super) fn $name(&mut self, $v: &$t) {
            self.flush();
            let $out = &mut *self.out;
            $put;
        }
    )*};
}

impl<'a> ArgWriter<'a> {
    #[inline(always)]
    pub(super) fn new(out: &'a mut BytesMut) -> Self {
        ArgWriter {
            out,
            bits: 0,
            pending: 0,
        }
    }

    write_plain! {
        octet(out, v: u8) out.put_u8(*v);
        short(out, v: u16) out.put_u16(*v);
        long(out, v: u32) out.put_u32(*v);
        longlong(out, v: u64) out.put_u64(*v);
        #[allow(dead_code)]
        timestamp(out, v: u64) out.put_u64(*v);
        shortstr(out, v: str) wire::put_shortstr(out, v);
        longstr(out, v: [u8]) wire::put_longstr(out, v);
        table(out, v: FieldTable) v.encode(out);
    }

    #[inline(always)]
    pub(super) fn bit(&mut self, v: &bool) {
        if self.pending == 8 {
            self.flush();
        }
        self.bits |= u8::from(*v) << self.pending;
        self.pending += 1;
    }

    #[inline(always)]
    fn flush(&mut self) {
        if self.pending > 0 {
            self.out.put_u8(self.bits);
            self.bits = 0;
            self.pending = 0;
        }
    }

    /// Writes the pending run of bits, if any.
    #[inline(always)]
    pub(super) fn finish(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grammar has no method with more than eight bits in a row, so the
    /// generated methods never reach the second octet of a run: test it here.
    #[test]
    fn bits_pack_eight_to_an_octet_and_end_at_other_arguments() {
        let bits = [true, false, true, true, false, false, false, true, true];
        let mut out = BytesMut::new();
        let w = &mut ArgWriter::new(&mut out);
        for b in &bits {
            w.bit(b);
        }
        w.short(&0x0102);
        w.bit(&true);
        w.finish();
        assert_eq!(
            &out[..],
            &[0b1000_1101, 0b0000_0001, 0x01, 0x02, 0b0000_0001]
        );

        let input = &mut &out[..];
        let r = &mut ArgReader::new(input);
        for b in bits {
            assert_eq!(r.bit(), Ok(b));
        }
        assert_eq!(r.short(), Ok(0x0102));
        assert_eq!(r.bit(), Ok(true));
        assert_eq!(r.octet(), Err(DecodeError::Truncated));
    }

    #[test]
    fn finish_without_pending_bits_writes_nothing() {
        let mut out = BytesMut::new();
        let w = &mut ArgWriter::new(&mut out);
        w.octet(&7);
        w.finish();
        w.finish();
        assert_eq!(&out[..], &[7]);
    }
}
