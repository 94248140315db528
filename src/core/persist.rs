//! What the core writes to the store: messages and definitions, in forms the store
//! treats as opaque bytes.
//!
//! A message record is `exchange (short string) | routing key (short string) |
//! properties (long string) | body (rest)`, lengths big-endian as on the AMQP wire.
//! A definition is a field table, keyed `exchange/<vhost>/<name>`,
//! `queue/<vhost>/<name>` or `binding/<vhost>/<source>/<q|e>/<destination>/<key>/<args-crc>`.

use bytes::{Buf, Bytes, BytesMut};

use std::sync::Arc;

use super::message::{Message, Names};
use crate::content::{FieldTable, FieldValue, Properties};
use crate::store::Payload;

/// A message's store record, written by the store straight from the message's own
/// exchange, routing key, properties and body (no assembled copy in between).
pub struct Record<'a>(pub &'a Message);

impl Payload for Record<'_> {
    fn len(&self) -> usize {
        encoded_len(self.0)
    }

    fn put(&self, out: &mut Vec<u8>) {
        let msg = self.0;
        let ex = msg.exchange().as_bytes();
        let rk = msg.routing_key().as_bytes();
        let (ex, rk) = (&ex[..ex.len().min(255)], &rk[..rk.len().min(255)]);
        out.push(ex.len() as u8);
        out.extend_from_slice(ex);
        out.push(rk.len() as u8);
        out.extend_from_slice(rk);
        out.extend_from_slice(&(msg.properties().len() as u32).to_be_bytes());
        out.extend_from_slice(msg.properties());
        out.extend_from_slice(msg.body());
    }
}

/// Encodes a message for the store (what [`Record`] writes, as one buffer).
#[cfg(test)]
pub fn encode_message(msg: &Message) -> Bytes {
    let rec = Record(msg);
    let mut out = Vec::with_capacity(rec.len());
    rec.put(&mut out);
    Bytes::from(out)
}

/// The length of `msg`'s store record ([`Record`]; what the store counts for it).
pub fn encoded_len(msg: &Message) -> usize {
    2 + msg.exchange().len().min(255)
        + msg.routing_key().len().min(255)
        + 4
        + msg.properties().len()
        + msg.body().len()
}

/// The body length of a stored message record (0 when it is malformed).
pub fn body_len(rec: &[u8]) -> usize {
    let ex = rec.first().map_or(0, |&n| n as usize);
    let rk = rec.get(1 + ex).map_or(0, |&n| n as usize);
    let at = 2 + ex + rk;
    match rec.get(at..at + 4) {
        Some(b) => {
            let props = u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
            rec.len().saturating_sub(at + 4 + props)
        }
        None => 0,
    }
}

/// Rebuilds a message from its store record (recovered or paged back in), sharing
/// exchange and routing-key names with the previous one through `names`; `None` when
/// the record is malformed.
pub fn message_from_record(id: u64, payload: Bytes, names: &mut Arc<Names>) -> Option<Message> {
    let stored = decode_message(payload)?;
    let props = Properties::decode(&stored.content[..stored.props_len]).unwrap_or_default();
    Some(Message::from_content(
        id,
        Names::share(names, &stored.exchange, &stored.routing_key),
        stored.content,
        stored.props_len,
        &props,
    ))
}

/// The parts of a stored message.
pub struct StoredMessage {
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Encoded properties followed by the body (a slice of the record, no copy).
    pub content: Bytes,
    /// Length of the properties at the front of `content`.
    pub props_len: usize,
}

/// Decodes a stored message record; `None` when it is malformed.
pub fn decode_message(mut rec: Bytes) -> Option<StoredMessage> {
    let short = |rec: &mut Bytes| -> Option<String> {
        if rec.remaining() < 1 {
            return None;
        }
        let n = rec.get_u8() as usize;
        if rec.remaining() < n {
            return None;
        }
        let s = rec.split_to(n);
        Some(String::from_utf8_lossy(&s).into_owned())
    };
    let exchange = short(&mut rec)?;
    let routing_key = short(&mut rec)?;
    if rec.remaining() < 4 {
        return None;
    }
    let n = rec.get_u32() as usize;
    if rec.remaining() < n {
        return None;
    }
    Some(StoredMessage {
        exchange,
        routing_key,
        content: rec,
        props_len: n,
    })
}

/// Encodes a definition table.
pub fn encode_table(t: &FieldTable) -> Bytes {
    let mut out = BytesMut::new();
    t.encode(&mut out);
    out.freeze()
}

/// Decodes a definition table.
pub fn decode_table(b: &[u8]) -> Option<FieldTable> {
    let mut cur = b;
    FieldTable::decode(&mut cur).ok()
}

/// Builds a table from pairs.
pub fn table(entries: Vec<(&str, FieldValue)>) -> FieldTable {
    FieldTable(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// A string value.
pub fn s(v: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(v.as_bytes()))
}
