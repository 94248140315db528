//! Messages as the core holds them: one immutable, shared `Message` per publish, however
//! many queues it is routed to, plus a small per-queue entry with queue-local state.
//!
//! Memory matters here (a deep queue holds millions): a message is one allocation for
//! the struct and one for its content, the encoded properties followed by the body.
//! Exchange and routing-key names are shared with the previous message of the same
//! publisher (see [`Names::share`]).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::content::{FieldTable, Properties};

const NO_EXPIRATION: u64 = u64::MAX;

/// One published message. Shared (`Arc`) between every queue it was routed to; the
/// content is `Bytes`, never copied per queue or per consumer.
#[derive(Debug, Clone)]
pub struct Message {
    /// Broker-wide increasing id; also the store's record id.
    pub id: u64,
    /// Exchange and routing key it was published with, shared between messages that
    /// have the same.
    names: Arc<Names>,
    /// Encoded properties (flags + list, passed through untouched) then the body.
    content: Bytes,
    props_len: u32,
    /// Per-message TTL from the `expiration` property in ms, `NO_EXPIRATION` if none.
    expiration: u64,
    /// delivery_mode 2.
    pub persistent: bool,
    /// The `priority` property (0 when absent).
    pub priority: u8,
}

impl Message {
    /// Builds a message from its encoded properties and body, copied into one compact
    /// allocation (so that the network read buffer they came from can be reused).
    /// `decoded` is the decoded form of `properties`, for the fields the core acts on.
    pub fn new(
        id: u64,
        names: Arc<Names>,
        properties: &[u8],
        decoded: &Properties,
        body: &[u8],
    ) -> Self {
        let mut content = BytesMut::with_capacity(properties.len() + body.len());
        content.put_slice(properties);
        content.put_slice(body);
        Self::from_content(id, names, content.freeze(), properties.len(), decoded)
    }

    /// Builds a message around content that already is `properties ++ body` (zero-copy,
    /// e.g. a slice of a recovered store segment).
    pub fn from_content(
        id: u64,
        names: Arc<Names>,
        content: Bytes,
        props_len: usize,
        decoded: &Properties,
    ) -> Self {
        Self {
            id,
            names,
            content,
            props_len: props_len as u32,
            expiration: decoded
                .expiration
                .as_deref()
                .and_then(|e| e.trim().parse::<u64>().ok())
                .unwrap_or(NO_EXPIRATION),
            persistent: decoded.delivery_mode == Some(2),
            priority: decoded.priority.unwrap_or(0),
        }
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        &self.names.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.names.routing_key
    }

    /// The encoded properties.
    pub fn properties(&self) -> &[u8] {
        &self.content[..self.props_len as usize]
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.content[self.props_len as usize..]
    }

    /// The body as shared bytes (no copy).
    pub fn body_bytes(&self) -> Bytes {
        self.content.slice(self.props_len as usize..)
    }

    /// Per-message TTL from the `expiration` property, in milliseconds.
    pub fn expiration_ms(&self) -> Option<u64> {
        (self.expiration != NO_EXPIRATION).then_some(self.expiration)
    }

    /// Decodes the properties (for routing on headers or reading a header back).
    pub fn decode_properties(&self) -> Properties {
        Properties::decode(self.properties()).unwrap_or_default()
    }

    /// The headers table, if any.
    pub fn headers(&self) -> Option<FieldTable> {
        self.decode_properties().headers
    }
}

/// The exchange and routing key of a message.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Names {
    exchange: Box<str>,
    routing_key: Box<str>,
}

impl Names {
    /// A pair of names.
    pub fn new(exchange: &str, routing_key: &str) -> Arc<Self> {
        Arc::new(Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        })
    }

    /// Reuses `slot` when it already holds these names, else replaces it: publishers
    /// send the same exchange and routing key again and again, so their messages share
    /// one allocation.
    pub fn share(slot: &mut Arc<Names>, exchange: &str, routing_key: &str) -> Arc<Names> {
        if &*slot.exchange != exchange || &*slot.routing_key != routing_key {
            *slot = Names::new(exchange, routing_key);
        }
        slot.clone()
    }
}

/// When a queued message expires: never.
pub const NEVER: u64 = u64::MAX;

/// A message as it sits in one queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The shared message.
    pub msg: Arc<Message>,
    /// Position in this queue; requeued messages go back to their original place.
    pub seq: u64,
    /// Deadline in ms on the broker clock after which the message is dropped at the
    /// head; [`NEVER`] if it does not expire.
    pub expires_at: u64,
    /// Set once the message has been delivered and returned.
    pub redelivered: bool,
    /// It has a record in the store (persistent in a durable queue, or paged out once),
    /// which must be acked when it leaves the queue.
    pub in_store: bool,
}

impl QueuedMessage {
    /// The expiry deadline, if any.
    pub fn deadline(&self) -> Option<u64> {
        (self.expires_at != NEVER).then_some(self.expires_at)
    }
}
