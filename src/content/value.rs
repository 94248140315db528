//! AMQP field values and tables: the typed key/value data that travels in message
//! headers, queue/exchange arguments and binding arguments.
//!
//! These types live in a leaf module because the core (headers routing, `x-` arguments),
//! the AMQP codec and the store all need them. Type tags follow RabbitMQ's reading of
//! the 0-9-1 errata (`s` = signed 16-bit, `l` = signed 64-bit, `x` = byte array), which
//! is what pika, lapin, kombu and the Java client send. The set of tags is exactly the
//! one RabbitMQ 3.10's `rabbit_binary_parser` accepts: `t b B s u I i l L f d D S x A T F
//! V`. `L` is the original spec's tag for a signed 64-bit integer; RabbitMQ reads it like
//! `l`, and pika 1.3 sends every negative integer below -2^31 with it. The spec's `U`
//! (signed 16-bit) is not accepted, as RabbitMQ does not (it closes the connection).
//!
//! Wire format (all integers big-endian): a table is a `u32` byte size followed by
//! entries `shortstr key, u8 tag, value`; an array is a `u32` byte size followed by
//! `u8 tag, value` items. Decoding reads from a `&mut &[u8]` cursor, advancing it past
//! what was read; it never panics and refuses nesting deeper than [`MAX_DEPTH`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

/// How deep tables and arrays may nest inside one another before decoding refuses
/// the input (so hostile input cannot exhaust the stack).
pub const MAX_DEPTH: usize = 64;

/// One typed value inside a field table or field array.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s`
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `L`: the same signed 64-bit integer as `l` under the spec's original tag. Kept
    /// apart only so it is sent on with the tag it arrived with.
    I64Spec(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: value / 10^scale
    Decimal {
        /// number of decimal digits
        scale: u8,
        /// unscaled value
        value: u32,
    },
    /// `S`: long string, binary-safe
    LongString(Bytes),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`: seconds since the epoch
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
    /// `x`
    ByteArray(Bytes),
}

/// An ordered field table. Order is kept so that what a client sent is what it gets back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// The value under `key`, if any (last one wins, as RabbitMQ reads duplicates).
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing an existing entry.
    pub fn insert(&mut self, key: impl Into<String>, value: FieldValue) {
        let key = key.into();
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.0.push((key, value));
        }
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares as maps: same keys with the same typed values, in any order.
    pub fn equivalent(&self, other: &FieldTable) -> bool {
        self.0.len() == other.0.len() && self.0.iter().all(|(k, v)| other.get(k) == Some(v))
    }

    /// An integer argument (any integer width), as RabbitMQ accepts `x-message-ttl` etc.
    pub fn get_int(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(FieldValue::as_i64)
    }

    /// A string argument (long string), lossily decoded.
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        }
    }
}

impl FieldValue {
    /// The value as a signed integer when it is one of the integer types.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v as i64,
            FieldValue::U8(v) => v as i64,
            FieldValue::I16(v) => v as i64,
            FieldValue::U16(v) => v as i64,
            FieldValue::I32(v) => v as i64,
            FieldValue::U32(v) => v as i64,
            FieldValue::I64(v) | FieldValue::I64Spec(v) => v,
            _ => return None,
        })
    }
}

impl FieldTable {
    /// Appends the table: `u32` byte size, then the entries in order. Keys longer than
    /// 255 bytes are truncated (see [`wire::put_shortstr`]).
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        self.encode_entries(out);
        patch_size(out, start);
    }

    fn encode_entries(&self, out: &mut BytesMut) {
        for (key, value) in &self.0 {
            wire::put_shortstr(out, key);
            value.encode(out);
        }
    }

    /// Reads a table (size prefix and entries), advancing `input` past it.
    pub fn decode(input: &mut &[u8]) -> Result<FieldTable, DecodeError> {
        Self::decode_depth(input, 0)
    }

    fn decode_depth(input: &mut &[u8], depth: usize) -> Result<FieldTable, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let mut body = wire::take_sized(input)?;
        let mut entries = Vec::new();
        while !body.is_empty() {
            let key = wire::get_shortstr(&mut body)?;
            let value = FieldValue::decode_depth(&mut body, depth + 1)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }

    /// Bytes [`FieldTable::encode`] writes, size prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + self
            .0
            .iter()
            .map(|(k, v)| 1 + wire::shortstr_len(k) + v.encoded_len())
            .sum::<usize>()
    }
}

impl FieldValue {
    /// The type tag this value travels with.
    pub fn tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::I64Spec(_) => b'L',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal { .. } => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::ByteArray(_) => b'x',
        }
    }

    /// Appends the type tag and the value.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.tag());
        match self {
            FieldValue::Bool(v) => out.put_u8(u8::from(*v)),
            FieldValue::I8(v) => out.put_i8(*v),
            FieldValue::U8(v) => out.put_u8(*v),
            FieldValue::I16(v) => out.put_i16(*v),
            FieldValue::U16(v) => out.put_u16(*v),
            FieldValue::I32(v) => out.put_i32(*v),
            FieldValue::U32(v) => out.put_u32(*v),
            FieldValue::I64(v) | FieldValue::I64Spec(v) => out.put_i64(*v),
            FieldValue::F32(v) => out.put_f32(*v),
            FieldValue::F64(v) => out.put_f64(*v),
            FieldValue::Decimal { scale, value } => {
                out.put_u8(*scale);
                out.put_u32(*value);
            }
            FieldValue::LongString(b) | FieldValue::ByteArray(b) => wire::put_longstr(out, b),
            FieldValue::Array(items) => {
                let start = out.len();
                out.put_u32(0);
                for item in items {
                    item.encode(out);
                }
                patch_size(out, start);
            }
            FieldValue::Timestamp(v) => out.put_u64(*v),
            FieldValue::Table(t) => t.encode(out),
            FieldValue::Void => {}
        }
    }

    /// Bytes [`FieldValue::encode`] writes, tag included.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            FieldValue::Bool(_) | FieldValue::I8(_) | FieldValue::U8(_) => 1,
            FieldValue::I16(_) | FieldValue::U16(_) => 2,
            FieldValue::I32(_) | FieldValue::U32(_) | FieldValue::F32(_) => 4,
            FieldValue::I64(_)
            | FieldValue::I64Spec(_)
            | FieldValue::F64(_)
            | FieldValue::Timestamp(_) => 8,
            FieldValue::Decimal { .. } => 5,
            FieldValue::LongString(b) | FieldValue::ByteArray(b) => 4 + b.len(),
            FieldValue::Array(items) => 4 + items.iter().map(Self::encoded_len).sum::<usize>(),
            FieldValue::Table(t) => t.encoded_len(),
            FieldValue::Void => 0,
        }
    }

    /// Reads a type tag and its value, advancing `input` past them.
    pub fn decode(input: &mut &[u8]) -> Result<FieldValue, DecodeError> {
        Self::decode_depth(input, 0)
    }

    fn decode_depth(input: &mut &[u8], depth: usize) -> Result<FieldValue, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let tag = wire::get_u8(input)?;
        Ok(match tag {
            b't' => FieldValue::Bool(wire::get_u8(input)? != 0),
            b'b' => FieldValue::I8(wire::get_u8(input)? as i8),
            b'B' => FieldValue::U8(wire::get_u8(input)?),
            b's' => FieldValue::I16(wire::get_u16(input)? as i16),
            b'u' => FieldValue::U16(wire::get_u16(input)?),
            b'I' => FieldValue::I32(wire::get_u32(input)? as i32),
            b'i' => FieldValue::U32(wire::get_u32(input)?),
            b'l' => FieldValue::I64(wire::get_u64(input)? as i64),
            b'L' => FieldValue::I64Spec(wire::get_u64(input)? as i64),
            b'f' => FieldValue::F32(f32::from_bits(wire::get_u32(input)?)),
            b'd' => FieldValue::F64(f64::from_bits(wire::get_u64(input)?)),
            b'D' => {
                let scale = wire::get_u8(input)?;
                let value = wire::get_u32(input)?;
                FieldValue::Decimal { scale, value }
            }
            b'S' => FieldValue::LongString(wire::get_longstr(input)?),
            b'x' => FieldValue::ByteArray(wire::get_longstr(input)?),
            b'A' => {
                let mut body = wire::take_sized(input)?;
                let mut items = Vec::new();
                while !body.is_empty() {
                    items.push(FieldValue::decode_depth(&mut body, depth + 1)?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(wire::get_u64(input)?),
            b'F' => FieldValue::Table(FieldTable::decode_depth(input, depth + 1)?),
            b'V' => FieldValue::Void,
            other => return Err(DecodeError::UnknownFieldType(other)),
        })
    }
}

/// Overwrites the `u32` placeholder at `start` with the number of bytes written after it.
fn patch_size(out: &mut BytesMut, start: usize) {
    let size = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Primitive AMQP readers and writers over a `&mut &[u8]` cursor, shared by the
/// property and method codecs. Readers return [`DecodeError::Truncated`] instead of
/// reading past the end.
pub mod wire {
    use super::*;

    /// Readers of fixed-size big-endian numbers, each named after the `Buf` method it
    /// calls once the input is known to be long enough.
    macro_rules! fixed {
        ($($(#[$doc:meta])* $name:ident -> $t:ty;)*) => {$(
            $(#[$doc])*
            #[inline]
            pub fn $name(input: &mut &[u8]) -> Result<$t, DecodeError> {
                if input.len() < std::mem::size_of::<$t>() {
                    return Err(DecodeError::Truncated);
                }
                Ok(input.$name())
            }
        )*};
    }

    fixed! {
        /// One octet.
        get_u8 -> u8;
        /// A big-endian `u16`.
        get_u16 -> u16;
        /// A big-endian `u32`.
        get_u32 -> u32;
        /// A big-endian `u64`.
        get_u64 -> u64;
    }

    /// `n` raw bytes.
    #[inline]
    pub fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
        if input.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = input.split_at(n);
        *input = tail;
        Ok(head)
    }

    /// A `u32` size followed by that many bytes; returns the bytes.
    #[inline]
    pub fn take_sized<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
        let n = get_u32(input)? as usize;
        take(input, n)
    }

    /// A short string (`u8` length + bytes), decoded lossily from UTF-8.
    #[inline]
    pub fn get_shortstr(input: &mut &[u8]) -> Result<String, DecodeError> {
        let n = get_u8(input)? as usize;
        let raw = take(input, n)?;
        Ok(match std::str::from_utf8(raw) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(raw).into_owned(),
        })
    }

    /// A long string (`u32` length + bytes), copied into a `Bytes`.
    #[inline]
    pub fn get_longstr(input: &mut &[u8]) -> Result<Bytes, DecodeError> {
        take_sized(input).map(Bytes::copy_from_slice)
    }

    /// Bytes of `s` that [`put_shortstr`] writes after the length octet: at most 255,
    /// cut on a UTF-8 character boundary.
    #[inline]
    pub fn shortstr_len(s: &str) -> usize {
        let mut n = s.len().min(255);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        n
    }

    /// Writes a short string. A string longer than 255 bytes is truncated to the longest
    /// prefix of at most 255 bytes that ends on a UTF-8 character boundary (encoding
    /// never panics and never produces an invalid length).
    #[inline]
    pub fn put_shortstr(out: &mut BytesMut, s: &str) {
        let n = shortstr_len(s);
        out.put_u8(n as u8);
        out.put_slice(&s.as_bytes()[..n]);
    }

    /// Writes a long string (`u32` length + bytes). Lengths above `u32::MAX` cannot
    /// occur in a frame and are truncated.
    #[inline]
    pub fn put_longstr(out: &mut BytesMut, b: &[u8]) {
        let n = b.len().min(u32::MAX as usize);
        out.put_u32(n as u32);
        out.put_slice(&b[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_advances_past_one_value() {
        let bytes = [b'B', 7, b'V', 0xAA];
        let mut input = &bytes[..];
        assert_eq!(FieldValue::decode(&mut input), Ok(FieldValue::U8(7)));
        assert_eq!(FieldValue::decode(&mut input), Ok(FieldValue::Void));
        assert_eq!(input, &[0xAA]);
    }

    #[test]
    fn shortstr_truncation_keeps_utf8_valid() {
        let mut out = BytesMut::new();
        wire::put_shortstr(&mut out, &"ab€".repeat(100));
        assert_eq!(out[0] as usize, out.len() - 1);
        assert!(out.len() - 1 <= 255);
        assert!(std::str::from_utf8(&out[1..]).is_ok());
    }

    /// Found by the content_header fuzz target: a key that decodes (lossily) to more
    /// than 255 bytes is cut on a character boundary when encoded, and encoded_len
    /// counted 255 instead.
    #[test]
    fn encoded_len_of_an_overlong_key_matches_encode() {
        let mut t = FieldTable::new();
        t.insert("\u{FFFD}".repeat(100) + "ab", FieldValue::Void);
        t.insert("a".to_string() + &"\u{FFFD}".repeat(100), FieldValue::Void);
        let mut out = BytesMut::new();
        t.encode(&mut out);
        assert_eq!(out.len(), t.encoded_len());
        let again = FieldTable::decode(&mut &out[..]).unwrap();
        assert_eq!(again.encoded_len(), out.len());
    }

    #[test]
    fn empty_table_is_four_zero_bytes() {
        let mut out = BytesMut::new();
        FieldTable::new().encode(&mut out);
        assert_eq!(&out[..], &[0, 0, 0, 0]);
        assert_eq!(FieldTable::decode(&mut &out[..]), Ok(FieldTable::new()));
    }
}
