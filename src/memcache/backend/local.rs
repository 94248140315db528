//! Local mode: memcache queues are this broker's queues (front ends translate, the
//! core decides).
//!
//! - `set q` -> declare `q` if missing (durable, not exclusive, not auto-delete), then
//!   publish to the default exchange with routing key `q`, persistent, flags in the
//!   `x-memcache-flags` header, exptime as the message TTL. `STORED` is written only
//!   after the store's ticket completes (fsync under the default policy), and only for
//!   a message a queue took: one a queue refused (`x-overflow: reject-publish` at its
//!   limit) or that found no queue (deleted under the `set`) answers `SERVER_ERROR`.
//! - `get q` -> an auto-acked basic.get; `q/open` a manual-ack get held here until
//!   `q/close` (ack) or `q/abort` / disconnect (requeue, redelivered=true); `q/peek`
//!   reads the head without removing it; `q/t=<ms>` waits for a message, reading the
//!   socket meanwhile so that a client hanging up ends the wait at once.
//! - `delete q` -> queue.delete.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{wait_of, Ctx, Fetched, Item};
use crate::content::{FieldTable, FieldValue, Properties};
use crate::core::message::Names;
use crate::core::{
    Broker, ConnectionInfo, CoreError, Delivered, Durable, Message, QueueOptions, VHost,
};
use crate::memcache::command::GetKey;
use crate::memcache::stats;

/// The header carrying memcache flags on a message.
pub const FLAGS_HEADER: &str = "x-memcache-flags";

/// One session's side of the core.
pub(in crate::memcache) struct Local {
    broker: Broker,
    vhost: Arc<VHost>,
    info: Arc<ConnectionInfo>,
    /// Reliable reads in progress, by queue name.
    open: HashMap<String, Delivered>,
    /// Answers may not be written before these complete (STORED after fsync).
    tickets: Vec<Durable>,
    last_names: Arc<Names>,
}

impl Local {
    pub(in crate::memcache) fn new(
        broker: Broker,
        vhost: Arc<VHost>,
        info: Arc<ConnectionInfo>,
    ) -> Self {
        Self {
            broker,
            vhost,
            info,
            open: HashMap::new(),
            tickets: Vec::new(),
            last_names: Arc::default(),
        }
    }

    pub(super) fn has_queue(&self, queue: &str) -> bool {
        self.vhost.find_queue(queue).is_some()
    }

    /// Declares a queue as memcache producers expect it: durable, not exclusive, not
    /// auto-delete, so that `queue_declare(q, durable=True)` over AMQP matches it.
    pub(super) fn declare(&self, queue: &str) -> Result<(), String> {
        let options = QueueOptions {
            durable: true,
            ..Default::default()
        };
        match self
            .vhost
            .declare_queue(queue, options, false, self.info.id)
        {
            Ok(_) => Ok(()),
            // Another connection's exclusive queue: publishing to it is still allowed.
            Err(CoreError::Locked { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(super) fn set(&mut self, item: Item<'_>) -> Result<(), String> {
        let Item {
            queue,
            flags,
            ttl,
            body,
        } = item;
        let props = properties(flags, ttl);
        // What the core reads from the properties, without decoding them back.
        let decoded = Properties {
            delivery_mode: Some(2),
            expiration: ttl.map(|t| t.to_string()),
            ..Default::default()
        };
        let msg = Message::new(
            self.broker.next_message_id(),
            Names::share(&mut self.last_names, "", queue),
            &props,
            &decoded,
            &body,
        );
        let routed = self.vhost.publish("", msg).map_err(|e| e.to_string())?;
        if let Some(why) = not_stored(&routed) {
            return Err(why.to_owned());
        }
        self.broker
            .counters()
            .protocol(stats::PROTOCOL)
            .messages_received
            .inc();
        if let Some(t) = routed.durable {
            self.tickets.push(t);
        }
        Ok(())
    }

    pub(super) fn delete(&self, queue: &str) -> bool {
        let existed = self.vhost.find_queue(queue).is_some();
        existed
            && self
                .vhost
                .delete_queue(queue, false, false, self.info.id)
                .is_ok()
    }

    pub(super) fn queue_counts(&self) -> Vec<(String, u64, u64)> {
        let mut queues = self.vhost.queues();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        queues
            .iter()
            .map(|q| {
                let c = &q.counters;
                (q.name.clone(), c.published.get(), c.delivered.get())
            })
            .collect()
    }

    pub(super) fn is_open(&self, queue: &str) -> bool {
        self.open.contains_key(queue)
    }

    pub(super) fn settle(&mut self, key: &GetKey) {
        if key.options.close {
            if let Some(d) = self.open.remove(&key.queue) {
                d.ack();
            }
        }
        if key.options.abort {
            if let Some(d) = self.open.remove(&key.queue) {
                d.requeue();
            }
        }
    }

    pub(super) async fn fetch(&mut self, key: &GetKey, ctx: &mut Ctx<'_>) -> Fetched {
        let o = key.options;
        let wait = wait_of(&o);
        let counters = self.broker.counters();
        // A timed read waits on the queue a later `set` will use, so it declares it
        // the way `set` does.
        if wait.is_some() && !self.has_queue(&key.queue) && ctx.guard.declare(&key.queue) {
            let _ = self.declare(&key.queue);
        }
        let Ok(queue) = self.vhost.queue(&key.queue, self.info.id) else {
            counters.get_empty.inc();
            return Fetched::Miss;
        };
        if o.peek {
            return match queue.peek() {
                Some(entry) => Fetched::Value {
                    flags: message_flags(&entry.msg),
                    body: entry.msg.body_bytes(),
                },
                None => Fetched::Miss,
            };
        }
        let auto_ack = !o.open;
        let hit = match wait {
            Some(wait) => tokio::select! {
                hit = queue.get_wait(auto_ack, wait) => hit,
                _ = ctx.shutdown.cancelled() => None,
                // Nobody to answer: end the connection now (its slot and
                // curr_connections with it), not when the timeout runs out.
                _ = ctx.conn.hung_up() => return Fetched::HungUp,
            },
            None => queue.get(auto_ack),
        };
        let Some((d, _)) = hit else {
            counters.get_empty.inc();
            return Fetched::Miss;
        };
        counters.protocol(stats::PROTOCOL).messages_delivered.inc();
        if d.redelivered() {
            counters.redelivered.inc();
        }
        let msg = d.entry.msg.clone();
        if auto_ack {
            counters.delivered_get_auto_ack.inc();
        } else {
            counters.delivered_get_manual_ack.inc();
            self.open.insert(key.queue.clone(), d);
        }
        Fetched::Value {
            flags: message_flags(&msg),
            body: msg.body_bytes(),
        }
    }

    /// Waits for the store's tickets of the sets answered since the last flush.
    pub(super) async fn complete(&mut self) -> std::io::Result<()> {
        for t in self.tickets.drain(..) {
            if t.wait().await.is_err() {
                // The answer was already queued as STORED; the store failing is fatal for
                // this connection so the client never sees a false STORED.
                return Err(std::io::Error::other("store failed"));
            }
        }
        Ok(())
    }

    pub(super) fn finish(mut self) {
        for (_, d) in self.open.drain() {
            d.requeue();
        }
    }
}

/// Why a `set` was not stored, as its `SERVER_ERROR` line says it.
fn not_stored(routed: &crate::core::Routed) -> Option<&'static str> {
    if routed.rejected {
        Some("queue is full (x-overflow reject-publish): message not stored")
    } else if routed.queues == 0 {
        Some("queue was deleted while storing: message not stored")
    } else {
        None
    }
}

/// The flags a message carries (0 when it has none, e.g. published over AMQP).
fn message_flags(msg: &Message) -> u32 {
    // Most messages a memcache client reads were set with flags 0 and no TTL: their
    // properties are exactly the shared encoding, so nothing needs decoding.
    if msg.properties() == &plain_properties()[..] {
        return 0;
    }
    match msg
        .headers()
        .as_ref()
        .and_then(|h| h.get(FLAGS_HEADER).cloned())
    {
        Some(v) => v.as_i64().map(|n| n as u32).unwrap_or(0),
        None => 0,
    }
}

fn encode_properties(flags: u32, ttl: Option<u64>) -> Bytes {
    let mut headers = FieldTable::new();
    headers.insert(FLAGS_HEADER, FieldValue::I64(flags as i64));
    Properties {
        headers: Some(headers),
        delivery_mode: Some(2),
        expiration: ttl.map(|t| t.to_string()),
        ..Default::default()
    }
    .to_bytes()
}

/// The properties of a `set` with flags 0 and no TTL, encoded once.
fn plain_properties() -> &'static Bytes {
    static PLAIN: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    PLAIN.get_or_init(|| encode_properties(0, None))
}

fn properties(flags: u32, ttl: Option<u64>) -> Bytes {
    if flags == 0 && ttl.is_none() {
        plain_properties().clone()
    } else {
        encode_properties(flags, ttl)
    }
}
