//! Messages as the core holds them: one immutable, shared `Message` per publish, however
//! many queues it is routed to, plus a small per-queue entry with queue-local state.

use std::sync::Arc;

use bytes::Bytes;

use crate::content::{FieldTable, Properties};

/// One published message. Shared (`Arc`) between every queue it was routed to; the body
/// and the encoded properties are `Bytes`, never copied per queue or per consumer.
#[derive(Debug)]
pub struct Message {
    /// Broker-wide increasing id; also the store's record id.
    pub id: u64,
    /// Exchange it was published to (as given by the publisher).
    pub exchange: Arc<str>,
    /// Routing key it was published with (shared between messages with the same key).
    pub routing_key: Arc<str>,
    /// The properties in their encoded form (flags + list), passed through untouched.
    pub properties: Bytes,
    /// The body.
    pub body: Bytes,
    /// delivery_mode 2.
    pub persistent: bool,
    /// Per-message TTL from the `expiration` property, in milliseconds.
    pub expiration_ms: Option<u64>,
    /// The `priority` property (0 when absent).
    pub priority: u8,
}

impl Message {
    /// Builds a message from already-encoded properties, reading the few fields the core
    /// acts on. `decoded` may be passed when the caller already decoded them.
    pub fn new(
        id: u64,
        exchange: Arc<str>,
        routing_key: Arc<str>,
        properties: Bytes,
        decoded: &Properties,
        body: Bytes,
    ) -> Self {
        Self {
            id,
            exchange,
            routing_key,
            properties,
            body,
            persistent: decoded.delivery_mode == Some(2),
            expiration_ms: decoded
                .expiration
                .as_deref()
                .and_then(|e| e.trim().parse::<u64>().ok()),
            priority: decoded.priority.unwrap_or(0),
        }
    }

    /// Decodes the properties (for routing on headers or reading a header back).
    pub fn decode_properties(&self) -> Properties {
        Properties::decode(&self.properties).unwrap_or_default()
    }

    /// The headers table, if any.
    pub fn headers(&self) -> Option<FieldTable> {
        self.decode_properties().headers
    }
}

/// Reuses `slot` when it already holds `name`, else replaces it: publishers send the same
/// exchange and routing key again and again, so messages share one allocation of each.
pub fn shared_name(slot: &mut Arc<str>, name: &str) -> Arc<str> {
    if &**slot != name {
        *slot = Arc::from(name);
    }
    slot.clone()
}

/// A message as it sits in one queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The shared message.
    pub msg: Arc<Message>,
    /// Position in this queue; requeued messages go back to their original place.
    pub seq: u64,
    /// Set once the message has been delivered and returned.
    pub redelivered: bool,
    /// Deadline in ms on the broker clock after which the message is dropped at the head.
    pub expires_at: Option<u64>,
}
