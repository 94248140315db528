//! Dead-lettering (`x-dead-letter-exchange`): a message rejected without requeue,
//! expired, or dropped by a length limit is republished with an `x-death` history, as
//! RabbitMQ 3.x does.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::message::{Message, Names};
use crate::content::{FieldTable, FieldValue};

/// Why a message was dead-lettered (the `reason` field of `x-death`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// basic.reject / basic.nack with requeue=false.
    Rejected,
    /// TTL passed.
    Expired,
    /// Dropped by x-max-length / x-max-length-bytes.
    MaxLen,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
        }
    }
}

/// Where a queue sends its dead letters.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterTarget {
    /// `x-dead-letter-exchange` (may be "" for the default exchange).
    pub exchange: String,
    /// `x-dead-letter-routing-key`, else the message's own routing keys.
    pub routing_key: Option<String>,
}

impl DeadLetterTarget {
    /// Reads the target from queue arguments.
    pub fn from_arguments(args: &FieldTable) -> Option<Self> {
        let exchange = args.get_str("x-dead-letter-exchange")?;
        Some(Self {
            exchange,
            routing_key: args.get_str("x-dead-letter-routing-key"),
        })
    }
}

fn s(v: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(v.as_bytes()))
}

/// Builds the message to republish, with `x-death` updated: an entry per
/// (queue, reason), newest first, `count` incremented on repeats; `expiration` moves to
/// `original-expiration`.
pub fn dead_letter(
    msg: &Message,
    new_id: u64,
    queue: &str,
    reason: Reason,
    target: &DeadLetterTarget,
) -> (String, Message) {
    let mut props = msg.decode_properties();
    let mut headers = props.headers.take().unwrap_or_default();
    let mut deaths = match headers.get("x-death") {
        Some(FieldValue::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.get_str("queue").as_deref() == Some(queue)
            && t.get_str("reason").as_deref() == Some(reason.as_str())
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let existing = deaths
        .iter()
        .position(|d| matches!(d, FieldValue::Table(t) if same(t)));
    let entry = match existing {
        Some(i) => {
            let FieldValue::Table(mut t) = deaths.remove(i) else {
                unreachable!("matched a table")
            };
            let count = t.get_int("count").unwrap_or(0) + 1;
            t.insert("count", FieldValue::I64(count));
            t.insert("time", FieldValue::Timestamp(now));
            t
        }
        None => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", s(reason.as_str()));
            t.insert("queue", s(queue));
            t.insert("time", FieldValue::Timestamp(now));
            t.insert("exchange", s(msg.exchange()));
            t.insert(
                "routing-keys",
                FieldValue::Array(vec![s(msg.routing_key())]),
            );
            if let Some(e) = &props.expiration {
                t.insert("original-expiration", s(e));
            }
            t
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    if headers.get("x-first-death-reason").is_none() {
        headers.insert("x-first-death-exchange", s(msg.exchange()));
        headers.insert("x-first-death-queue", s(queue));
        headers.insert("x-first-death-reason", s(reason.as_str()));
    }
    headers.insert("x-death", FieldValue::Array(deaths));
    props.headers = Some(headers);
    props.expiration = None;
    let routing_key = target
        .routing_key
        .clone()
        .unwrap_or_else(|| msg.routing_key().to_string());
    let properties = props.to_bytes();
    let out = Message::new(
        new_id,
        Names::new(&target.exchange, &routing_key),
        &properties,
        &props,
        msg.body(),
    );
    (target.exchange.clone(), out)
}
