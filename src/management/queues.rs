//! `/api/queues...`: list, show, declare (PUT), delete (with `if-empty` / `if-unused`),
//! purge (`DELETE .../contents`), get messages (`POST .../get`) and a queue's bindings.
//!
//! Operations go through the same core calls and permission checks as AMQP
//! (configure to declare and delete, read to get and purge), as RabbitMQ's API runs
//! them over an internal AMQP connection.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::scope::{Api, InVhost, Scope, WithBody};
use super::{json as j, ok_json, rates, Mgmt};
use crate::core::{Permission, Queue, QueueOptions, Resource, VHost};

/// The API's shape of a queue.
pub fn queue_json(m: &Mgmt, q: &Queue) -> Value {
    let now = rates::queue_totals(q);
    let d = q.depth();
    let mut out = Map::new();
    out.insert("name".into(), json!(q.name));
    out.insert("vhost".into(), json!(&*q.vhost));
    out.insert("type".into(), json!("classic"));
    out.insert("node".into(), json!(m.node));
    out.insert("state".into(), json!("running"));
    out.insert("durable".into(), json!(q.options.durable));
    out.insert("auto_delete".into(), json!(q.options.auto_delete));
    out.insert("exclusive".into(), json!(q.options.exclusive));
    out.insert("arguments".into(), j::table(&q.options.arguments));
    out.insert("consumers".into(), json!(d.consumers));
    out.insert("message_bytes_ready".into(), json!(d.bytes));
    // RabbitMQ's paging fields: what is in memory and what only on disk.
    out.insert("messages_ram".into(), json!(d.ready_ram + d.unacked));
    out.insert("messages_ready_ram".into(), json!(d.ready_ram));
    out.insert("message_bytes_ram".into(), json!(d.ready_ram_bytes));
    out.insert("messages_paged_out".into(), json!(d.paged));
    out.insert("message_bytes_paged_out".into(), json!(d.paged_bytes));
    out.insert("policy".into(), Value::Null);
    out.insert("exclusive_consumer_tag".into(), Value::Null);
    m.rates.queue_into(&mut out, q, &now, 4..7);
    let mut stats = Map::new();
    m.rates.queue_into(&mut stats, q, &now, 0..4);
    out.insert("message_stats".into(), Value::Object(stats));
    Value::Object(out)
}

/// `GET /api/queues` and `GET /api/queues/{vhost}`.
pub async fn list(s: Scope) -> ApiResult {
    let out = s.list(VHost::queues, |q| &q.name, |_, q| [queue_json(&s.m, q)]);
    Ok(ok_json(out))
}

/// The queue named in a path.
fn find(at: &InVhost, name: &str) -> Result<Arc<Queue>, ApiError> {
    at.vhost.find_queue(name).ok_or_else(ApiError::not_found)
}

/// `GET /api/queues/{vhost}/{queue}`.
/// One queue also lists its consumers (`consumer_details`), as in RabbitMQ.
pub async fn one(at: InVhost, Path((_, name)): Path<(String, String)>) -> ApiResult {
    let q = find(&at, &name)?;
    let mut out = queue_json(&at.m, &q);
    out["consumer_details"] = Value::Array(super::connections::consumers_of(&at.m, &q));
    Ok(ok_json(out))
}

/// `PUT /api/queues/{vhost}/{queue}`: 201 when created, 204 when it existed with the
/// same properties, 400 with RabbitMQ's text when not. `exclusive` is ignored, as in
/// RabbitMQ (the HTTP request has no connection to own the queue).
pub async fn declare(r: WithBody<(String, String)>) -> ApiResult {
    let WithBody(Api { m, caller }, (vhost, name), body) = r;
    let v = m.visible_vhost_or(&caller, &vhost, ApiError::vhost_not_found)?;
    let options = QueueOptions {
        durable: j::flag(&body, "durable")?.unwrap_or(false),
        exclusive: false,
        auto_delete: j::flag(&body, "auto_delete")?.unwrap_or(false),
        arguments: j::arguments(&body, "arguments")?,
    };
    caller.permit(&m, &vhost, Permission::Configure, Resource::Queue(&name))?;
    let declared = v.declare_queue(&name, options, false, 0)?;
    Ok(super::put_answer(declared.created))
}

/// `DELETE /api/queues/{vhost}/{queue}[?if-empty=true&if-unused=true]`.
pub async fn delete(
    at: InVhost,
    Path((_, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let q = find(&at, &name)?;
    at.permit(Permission::Configure, Resource::Queue(&q.name))?;
    let yes = |k: &str| query.get(k).is_some_and(|v| v == "true");
    at.vhost
        .delete_queue(&name, yes("if-unused"), yes("if-empty"), 0)?;
    Ok(super::no_content())
}

/// `DELETE /api/queues/{vhost}/{queue}/contents`: purge.
pub async fn purge(at: InVhost, Path((_, name)): Path<(String, String)>) -> ApiResult {
    find(&at, &name)?;
    at.permit(Permission::Read, Resource::Queue(&name))?;
    at.vhost.purge_queue(&name, 0)?;
    Ok(super::no_content())
}

/// How `POST .../get` settles what it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    AckRequeue,
    Ack,
    RejectRequeue,
    Reject,
}

/// `POST /api/queues/{vhost}/{queue}/get` with `count`, `ackmode`
/// (`ack_requeue_true` | `ack_requeue_false` | `reject_requeue_true` |
/// `reject_requeue_false`), `encoding` (`auto` | `base64`) and optional `truncate`.
/// Messages put back are requeued only after all are taken, so `count` distinct
/// messages come back.
pub async fn get_messages(r: WithBody<(String, String)>) -> ApiResult {
    let WithBody(Api { m, caller }, (vhost, name), body) = r;
    j::require_keys(&body, &["count", "ackmode", "encoding"], ",\n ")?;
    let count = j::count(&body, "count")?.unwrap_or(1);
    let ackmode = match j::required_text(&body, "ackmode")?.as_str() {
        "ack_requeue_true" => AckMode::AckRequeue,
        "ack_requeue_false" => AckMode::Ack,
        "reject_requeue_true" => AckMode::RejectRequeue,
        "reject_requeue_false" => AckMode::Reject,
        other => return Err(ApiError::bad_request(format!("unknown ackmode '{other}'"))),
    };
    let base64_always = match j::required_text(&body, "encoding")?.as_str() {
        "auto" => false,
        "base64" => true,
        other => return Err(ApiError::bad_request(format!("unknown encoding '{other}'"))),
    };
    let truncate = j::count(&body, "truncate")?;
    let v = m.visible_vhost(&caller, &vhost)?;
    let q = v.find_queue(&name).ok_or_else(ApiError::not_found)?;
    caller.permit(&m, &vhost, Permission::Read, Resource::Queue(&q.name))?;
    // Another connection's exclusive queue is locked, as for an AMQP basic.get.
    let q = v.queue(&q.name, 0)?;
    let counters = m.broker.counters();
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        let Some((d, remaining)) = q.get(false) else {
            counters.get_empty.inc();
            break;
        };
        counters.delivered_get_manual_ack.inc();
        if d.redelivered() {
            counters.redelivered.inc();
        }
        let msg = &d.entry.msg;
        let props = msg.decode_properties();
        let body = msg.body();
        let shown = match truncate {
            Some(t) if (t as usize) < body.len() => &body[..t as usize],
            _ => body,
        };
        let (payload, encoding) = match (base64_always, std::str::from_utf8(shown)) {
            (false, Ok(s)) => (s.to_owned(), "string"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(shown),
                "base64",
            ),
        };
        out.push(json!({
            "payload_bytes": body.len(),
            "redelivered": d.redelivered(),
            "exchange": msg.exchange(),
            "routing_key": msg.routing_key(),
            "message_count": remaining,
            "properties": j::properties(&props),
            "payload": payload,
            "payload_encoding": encoding,
        }));
        taken.push(d);
    }
    for d in taken {
        match ackmode {
            AckMode::AckRequeue | AckMode::RejectRequeue => d.requeue(),
            AckMode::Ack => {
                counters.acknowledged.inc();
                d.ack();
            }
            AckMode::Reject => d.discard(),
        }
    }
    Ok(ok_json(Value::Array(out)))
}

/// `GET /api/queues/{vhost}/{queue}/bindings`: the default exchange's binding first,
/// then every exchange's bindings to it.
pub async fn bindings(at: InVhost, Path((_, name)): Path<(String, String)>) -> ApiResult {
    let q = find(&at, &name)?;
    let all = super::bindings::of_vhost(&at.vhost);
    Ok(ok_json(Value::Array(
        all.into_iter()
            .filter(|b| b["destination"] == q.name.as_str() && b["destination_type"] == "queue")
            .collect(),
    )))
}
