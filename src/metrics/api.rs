//! The read-only JSON admin API, with the field names of RabbitMQ's management API so
//! that scripts written for it keep working and `qgate ctl` can mirror `rabbitmqctl`.
//!
//! | path | answer |
//! |------|--------|
//! | `/api/overview` | product, version, node, `object_totals`, `queue_totals`, `message_stats`, `listeners` |
//! | `/api/vhosts` | `[{name}]` |
//! | `/api/queues[/<vhost>]` | `[{name, vhost, durable, auto_delete, exclusive, arguments, messages_ready, messages_unacknowledged, messages, consumers, message_stats: {publish, deliver_get, ack, redeliver}}]` |
//! | `/api/queues/<vhost>/<name>` | one queue, 404 when missing |
//! | `/api/exchanges[/<vhost>]` | `[{name, vhost, type, durable, auto_delete, internal, arguments}]` |
//! | `/api/bindings[/<vhost>]` | `[{source, vhost, destination, destination_type, routing_key, arguments, properties_key}]` |
//! | `/api/connections` | `[{name, protocol, peer_host, peer_port, user, vhost, channels, recv_oct, send_oct, connected_at}]` |
//! | `/api/consumers[/<vhost>]` | `[{consumer_tag, queue: {name, vhost}, ack_required, exclusive, prefetch_count, active, channel_details}]` |
//!
//! Path segments are percent-decoded, so the default vhost is `%2F`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde_json::{json, Map, Value};

use crate::content::{FieldTable, FieldValue};
use crate::core::{Broker, ConnectionInfo, Queue, VHost};

use super::http::{Ctx, Response};

/// Answers `/api/<rest>`.
pub fn handle(ctx: &Ctx, rest: &[&str]) -> Response {
    let b = &ctx.broker;
    let value = match rest {
        ["overview"] => overview(ctx),
        ["vhosts"] => Value::Array(
            sorted_vhosts(b)
                .iter()
                .map(|v| json!({ "name": &*v.name }))
                .collect(),
        ),
        ["queues"] => queues(b, None),
        ["queues", vhost] => match b.vhost(vhost) {
            Some(v) => queues(b, Some(&v)),
            None => return no_vhost(vhost),
        },
        ["queues", vhost, name] => match b.vhost(vhost).and_then(|v| v.find_queue(name)) {
            Some(q) => queue(&q),
            None => return Response::error(404, &format!("no queue '{name}' in vhost '{vhost}'")),
        },
        ["exchanges"] => exchanges(b, None),
        ["exchanges", vhost] => match b.vhost(vhost) {
            Some(v) => exchanges(b, Some(&v)),
            None => return no_vhost(vhost),
        },
        ["bindings"] => bindings(b, None),
        ["bindings", vhost] => match b.vhost(vhost) {
            Some(v) => bindings(b, Some(&v)),
            None => return no_vhost(vhost),
        },
        ["connections"] => connections(ctx),
        ["consumers"] => consumers(ctx, None),
        ["consumers", vhost] => match b.vhost(vhost) {
            Some(v) => consumers(ctx, Some(&v)),
            None => return no_vhost(vhost),
        },
        // Upstream mode: the gateway's own figures (connections, operations, confirm
        // latency, the depths it sees); 404 in local mode.
        ["upstream"] => match crate::upstream::current() {
            Some(gw) => serde_json::to_value(gw.status()).unwrap_or(Value::Null),
            None => return Response::error(404, "not in upstream mode"),
        },
        _ => return Response::error(404, "Not Found"),
    };
    Response::new(200, "application/json", value.to_string())
}

fn no_vhost(vhost: &str) -> Response {
    Response::error(404, &format!("no vhost '{vhost}'"))
}

fn sorted_vhosts(b: &Broker) -> Vec<Arc<VHost>> {
    let mut v = b.vhosts();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Queues of one vhost (or all), sorted by (vhost, name).
fn sorted_queues(b: &Broker, only: Option<&Arc<VHost>>) -> Vec<Arc<Queue>> {
    let vhosts = match only {
        Some(v) => vec![v.clone()],
        None => sorted_vhosts(b),
    };
    let mut out = Vec::new();
    for v in vhosts {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(qs);
    }
    out
}

fn overview(ctx: &Ctx) -> Value {
    let b = &ctx.broker;
    let c = b.counters();
    let conns = b.connections();
    let channels: u64 = conns
        .iter()
        .map(|c| u64::from(c.channels.load(Ordering::Relaxed)))
        .sum();
    let (mut exchanges, mut queues, mut consumers) = (0usize, 0usize, 0usize);
    let (mut ready, mut unacked) = (0usize, 0usize);
    for v in b.vhosts() {
        exchanges += v.exchanges().len();
        for q in v.queues() {
            let d = q.depth();
            queues += 1;
            consumers += d.consumers;
            ready += d.ready;
            unacked += d.unacked;
        }
    }
    let deliver = c.delivered_consume_manual_ack.get();
    let deliver_no_ack = c.delivered_consume_auto_ack.get();
    let get = c.delivered_get_manual_ack.get();
    let get_no_ack = c.delivered_get_auto_ack.get();
    let listener = |protocol: &str, addr: std::net::SocketAddr| {
        json!({
            "node": &*ctx.node,
            "protocol": protocol,
            "ip_address": addr.ip().to_string(),
            "port": addr.port(),
        })
    };
    json!({
        "product_name": "qgate",
        "product_version": env!("CARGO_PKG_VERSION"),
        "management_version": env!("CARGO_PKG_VERSION"),
        "node": &*ctx.node,
        "cluster_name": &*ctx.node,
        "uptime": b.uptime().as_millis() as u64,
        "metrics_prefix": ctx.config.http.metrics_prefix,
        "object_totals": {
            "connections": conns.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "message_stats": {
            "publish": c.messages_received.get(),
            "confirm": c.messages_confirmed.get(),
            "return_unroutable": c.unroutable_returned.get(),
            "drop_unroutable": c.unroutable_dropped.get(),
            "deliver_get": deliver + deliver_no_ack + get + get_no_ack,
            "deliver": deliver,
            "deliver_no_ack": deliver_no_ack,
            "get": get,
            "get_no_ack": get_no_ack,
            "get_empty": c.get_empty.get(),
            "redeliver": c.redelivered.get(),
            "ack": c.acknowledged.get(),
        },
        "listeners": [
            listener("amqp", ctx.bound.amqp),
            listener("memcache", ctx.bound.memcache),
            listener("http", ctx.bound.http),
        ],
    })
}

fn queues(b: &Broker, only: Option<&Arc<VHost>>) -> Value {
    Value::Array(sorted_queues(b, only).iter().map(|q| queue(q)).collect())
}

/// One queue in the management API's shape.
fn queue(q: &Queue) -> Value {
    let d = q.depth();
    let c = &q.counters;
    json!({
        "name": q.name,
        "vhost": &*q.vhost,
        "type": "classic",
        "state": "running",
        "durable": q.options.durable,
        "auto_delete": q.options.auto_delete,
        "exclusive": q.options.exclusive,
        "arguments": table(&q.options.arguments),
        "messages_ready": d.ready,
        "messages_unacknowledged": d.unacked,
        "messages": d.ready + d.unacked,
        "consumers": d.consumers,
        "message_stats": {
            "publish": c.published.get(),
            "deliver_get": c.delivered.get(),
            "ack": c.acked.get(),
            "redeliver": c.redelivered.get(),
        },
    })
}

fn exchanges(b: &Broker, only: Option<&Arc<VHost>>) -> Value {
    let vhosts = match only {
        Some(v) => vec![v.clone()],
        None => sorted_vhosts(b),
    };
    let mut out = Vec::new();
    for v in vhosts {
        let mut xs = v.exchanges();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        for x in xs {
            out.push(json!({
                "name": &*x.name,
                "vhost": &*v.name,
                "type": x.kind.as_str(),
                "durable": x.options.durable,
                "auto_delete": x.options.auto_delete,
                "internal": x.options.internal,
                "arguments": table(&x.options.arguments),
            }));
        }
    }
    Value::Array(out)
}

fn bindings(b: &Broker, only: Option<&Arc<VHost>>) -> Value {
    use crate::core::exchange::Destination;
    let vhosts = match only {
        Some(v) => vec![v.clone()],
        None => sorted_vhosts(b),
    };
    let mut out = Vec::new();
    for v in vhosts {
        // The default exchange's implicit binding of every queue comes first, as in
        // RabbitMQ's listing.
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in qs {
            out.push(binding(
                &v.name,
                "",
                &q.name,
                "queue",
                &q.name,
                &FieldTable::new(),
            ));
        }
        let mut xs = v.exchanges();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        for x in xs {
            for bd in x.bindings() {
                let kind = match bd.destination {
                    Destination::Queue(_) => "queue",
                    Destination::Exchange(_) => "exchange",
                };
                out.push(binding(
                    &v.name,
                    &x.name,
                    bd.destination.name(),
                    kind,
                    &bd.routing_key,
                    &bd.arguments,
                ));
            }
        }
    }
    Value::Array(out)
}

fn binding(
    vhost: &str,
    source: &str,
    destination: &str,
    destination_type: &str,
    routing_key: &str,
    arguments: &FieldTable,
) -> Value {
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": routing_key,
        "arguments": table(arguments),
        "properties_key": if routing_key.is_empty() { "~" } else { routing_key },
    })
}

/// `peer -> local` as RabbitMQ names connections.
fn connection_name(ctx: &Ctx, c: &ConnectionInfo) -> String {
    let local = match c.protocol {
        "memcache" => ctx.bound.memcache,
        _ => ctx.bound.amqp,
    };
    format!("{} -> {}", c.peer, local)
}

fn connections(ctx: &Ctx) -> Value {
    let mut conns = ctx.broker.connections();
    conns.sort_by_key(|c| c.id);
    Value::Array(
        conns
            .iter()
            .map(|c| {
                let connected_at = c
                    .connected_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                json!({
                    "name": connection_name(ctx, c),
                    "id": c.id,
                    "protocol": c.protocol,
                    "peer_host": c.peer.ip().to_string(),
                    "peer_port": c.peer.port(),
                    "user": c.user.lock().clone(),
                    "vhost": c.vhost.lock().clone(),
                    "channels": c.channels.load(Ordering::Relaxed),
                    "recv_oct": c.bytes_in.load(Ordering::Relaxed),
                    "send_oct": c.bytes_out.load(Ordering::Relaxed),
                    "connected_at": connected_at,
                    "state": "running",
                })
            })
            .collect(),
    )
}

fn consumers(ctx: &Ctx, only: Option<&Arc<VHost>>) -> Value {
    let conns = ctx.broker.connections();
    let mut out = Vec::new();
    for q in sorted_queues(&ctx.broker, only) {
        for c in q.consumers() {
            let conn = conns.iter().find(|x| x.id == c.connection);
            let channel_details = match conn {
                Some(conn) => json!({
                    "connection_name": connection_name(ctx, conn),
                    "peer_host": conn.peer.ip().to_string(),
                    "peer_port": conn.peer.port(),
                    "user": conn.user.lock().clone(),
                }),
                None => json!({}),
            };
            out.push(json!({
                "consumer_tag": c.tag,
                "queue": { "name": q.name, "vhost": &*q.vhost },
                "ack_required": !c.no_ack,
                "exclusive": c.exclusive,
                "prefetch_count": c.own_credit.limit(),
                "active": c.is_active(),
                "activity_status": if c.is_active() { "up" } else { "waiting" },
                "channel_details": channel_details,
            }));
        }
    }
    Value::Array(out)
}

/// An AMQP field table as a JSON object.
pub fn table(t: &FieldTable) -> Value {
    let mut m = Map::new();
    for (k, v) in &t.0 {
        m.insert(k.clone(), field(v));
    }
    Value::Object(m)
}

fn field(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::I8(n) => json!(n),
        FieldValue::U8(n) => json!(n),
        FieldValue::I16(n) => json!(n),
        FieldValue::U16(n) => json!(n),
        FieldValue::I32(n) => json!(n),
        FieldValue::U32(n) => json!(n),
        FieldValue::I64(n) | FieldValue::I64Spec(n) => json!(n),
        FieldValue::F32(n) => json!(n),
        FieldValue::F64(n) => json!(n),
        FieldValue::Decimal { scale, value } => {
            json!(f64::from(*value) / 10f64.powi(i32::from(*scale)))
        }
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            json!(String::from_utf8_lossy(b))
        }
        FieldValue::Array(a) => Value::Array(a.iter().map(field).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table(t),
        FieldValue::Void => Value::Null,
    }
}
