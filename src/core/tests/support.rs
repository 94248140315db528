//! What the core tests share: a broker with vhost `/`, a sink that records deliveries,
//! and short ways to declare, publish and read.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::content::{FieldTable, FieldValue, Properties};
use crate::core::message::Names;
use crate::core::{
    Broker, Consumer, CoreConfig, Credit, Delivered, DeliverySink, Message, Queue, QueueOptions,
    Routed, VHost,
};

/// The connection every test acts as.
pub const CONN: u64 = 1;

/// A fresh broker without a store, and its vhost `/`.
pub fn vhost() -> Arc<VHost> {
    Broker::new(CoreConfig::default())
        .vhost("/")
        .expect("vhost /")
}

/// A long-string field value.
pub fn text(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

/// Declares a queue with `x-` arguments.
pub fn declare(v: &VHost, name: &str, args: &[(&str, FieldValue)]) -> Arc<Queue> {
    let mut arguments = FieldTable::new();
    for (k, val) in args {
        arguments.insert(*k, val.clone());
    }
    let options = QueueOptions {
        arguments,
        ..Default::default()
    };
    v.declare_queue(name, options, false, CONN)
        .expect("declare")
        .queue
}

/// Publishes `body` through `exchange` with `routing_key` and `props`.
pub fn publish_with(
    v: &VHost,
    exchange: &str,
    routing_key: &str,
    body: &str,
    props: Properties,
) -> Routed {
    let raw = props.to_bytes();
    let id = v.shared.next_message_id();
    let msg = Message::new(
        id,
        Names::new(exchange, routing_key),
        &raw,
        &props,
        body.as_bytes(),
    );
    v.publish(exchange, msg).expect("publish")
}

/// Publishes `body` to `queue` through the default exchange.
pub fn publish(v: &VHost, queue: &str, body: &str) -> Routed {
    publish_with(v, "", queue, body, Properties::default())
}

/// Publishes `m1` .. `m<n>` to `queue`.
pub fn publish_numbered(v: &VHost, queue: &str, n: usize) {
    for i in 1..=n {
        publish(v, queue, &format!("m{i}"));
    }
}

/// Publishes `body` to `queue` with a `priority`.
pub fn publish_priority(v: &VHost, queue: &str, body: &str, priority: u8) -> Routed {
    let props = Properties {
        priority: Some(priority),
        ..Default::default()
    };
    publish_with(v, "", queue, body, props)
}

/// Publishes `body` to `queue` with a per-message TTL.
pub fn publish_expiring(v: &VHost, queue: &str, body: &str, ttl_ms: u64) -> Routed {
    let props = Properties {
        expiration: Some(ttl_ms.to_string()),
        ..Default::default()
    };
    publish_with(v, "", queue, body, props)
}

/// The body of a delivery, as text.
pub fn body(d: &Delivered) -> String {
    String::from_utf8_lossy(d.entry.msg.body()).into_owned()
}

/// Takes the head message with acks; the body, its redelivered flag and the delivery.
pub fn get(q: &Arc<Queue>) -> Option<(String, bool, Delivered)> {
    let (d, _) = q.get(false)?;
    Some((body(&d), d.redelivered(), d))
}

/// Takes every ready message with auto-ack: their bodies in order.
pub fn drain(q: &Arc<Queue>) -> Vec<String> {
    std::iter::from_fn(|| q.get(true).map(|(d, _)| body(&d))).collect()
}

/// A sink that keeps what it is handed, as a connection's write queue would.
#[derive(Default)]
pub struct Recorder {
    got: Mutex<Vec<Delivered>>,
    cancelled: Mutex<bool>,
}

impl Recorder {
    /// Takes the deliveries received so far (settling them is up to the test; the
    /// sink's lock is not held then, as the queue calls back into it).
    pub fn take(&self) -> Vec<Delivered> {
        std::mem::take(&mut *self.got.lock())
    }

    /// The bodies received so far, leaving the deliveries in place.
    pub fn bodies(&self) -> Vec<String> {
        self.got.lock().iter().map(body).collect()
    }

    /// True once the queue cancelled the consumer.
    pub fn was_cancelled(&self) -> bool {
        *self.cancelled.lock()
    }
}

impl DeliverySink for Recorder {
    fn deliver(&self, _: &Arc<Consumer>, delivery: Delivered) -> Result<(), Delivered> {
        self.got.lock().push(delivery);
        Ok(())
    }

    fn cancelled(&self, _: &Arc<Consumer>) {
        *self.cancelled.lock() = true;
    }
}

/// A consumer not yet registered, and its sink.
pub fn consumer(
    tag: &str,
    no_ack: bool,
    exclusive: bool,
    prefetch: u32,
    group: Arc<Credit>,
) -> (Arc<Consumer>, Arc<Recorder>) {
    let sink = Arc::new(Recorder::default());
    let c = Consumer::new(
        tag.into(),
        no_ack,
        exclusive,
        CONN,
        prefetch,
        group,
        sink.clone(),
    );
    (c, sink)
}

/// Registers a consumer with acks and its own `prefetch` (0 = unlimited) in `group`.
pub fn consume_in(
    q: &Arc<Queue>,
    tag: &str,
    prefetch: u32,
    group: Arc<Credit>,
) -> (Arc<Consumer>, Arc<Recorder>) {
    let (c, sink) = consumer(tag, false, false, prefetch, group);
    q.add_consumer(c.clone()).expect("consume");
    (c, sink)
}

/// Registers a consumer with acks and its own `prefetch` (0 = unlimited).
pub fn consume(q: &Arc<Queue>, tag: &str, prefetch: u32) -> (Arc<Consumer>, Arc<Recorder>) {
    consume_in(q, tag, prefetch, Arc::new(Credit::new(0)))
}

/// The `x-death` entries of a message's headers, newest first.
pub fn x_death(d: &Delivered) -> Vec<FieldTable> {
    let headers = d.entry.msg.headers().unwrap_or_default();
    match headers.get("x-death") {
        Some(FieldValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                FieldValue::Table(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
