//! AMQP field values and tables: the typed key/value data that travels in message
//! headers, queue/exchange arguments and binding arguments.
//!
//! These types live in a leaf module because the core (headers routing, `x-` arguments),
//! the AMQP codec and the store all need them. Type tags follow RabbitMQ's reading of
//! the 0-9-1 errata (`s` = signed 16-bit, `l` = signed 64-bit, `x` = byte array), which
//! is what pika, lapin, kombu and the Java client send.

use bytes::Bytes;

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
            FieldValue::I64(v) => v,
            _ => return None,
        })
    }
}
