//! `/api/connections...`, `/api/channels...` and `/api/consumers...`: client
//! connections of every front end (AMQP and memcache, told apart by `protocol`),
//! closing one (`DELETE`: AMQP clients get connection.close 320 CONNECTION_FORCED),
//! and the consumers of each queue.
//!
//! Connections are named as RabbitMQ names them, `<peer ip:port> -> <local ip:port>`.
//! Administrators and monitoring users see every connection, others their own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::Path;
use axum::http::HeaderMap;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::scope::{Api, Scope};
use super::{ok_json, Mgmt};
use crate::core::{ConnectionInfo, Queue, VHost};

/// The protocol as RabbitMQ reports it (`AMQP 0-9-1`), or the front end's name.
pub fn protocol_name(protocol: &str) -> &str {
    match protocol {
        "amqp" => "AMQP 0-9-1",
        other => other,
    }
}

/// `<peer> -> <local>`.
pub fn connection_name(m: &Mgmt, c: &ConnectionInfo) -> String {
    let local = match c.protocol {
        "memcache" => m.bound.memcache,
        _ => m.bound.amqp,
    };
    format!("{} -> {}", c.peer, local)
}

fn connection_json(m: &Mgmt, c: &ConnectionInfo) -> Value {
    let connected_at = c
        .connected_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let local = match c.protocol {
        "memcache" => m.bound.memcache,
        _ => m.bound.amqp,
    };
    let user = c.user.lock().clone();
    let rates = m.rates.connection(c.id);
    json!({
        "name": connection_name(m, c),
        "node": m.node,
        "type": "network",
        "protocol": protocol_name(c.protocol),
        "host": local.ip().to_string(),
        "port": local.port(),
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "user": user,
        "vhost": c.vhost.lock().clone(),
        "channels": c.channels.load(Ordering::Relaxed),
        "recv_oct": c.bytes_in.load(Ordering::Relaxed),
        "recv_oct_details": { "rate": rates[0] },
        "send_oct": c.bytes_out.load(Ordering::Relaxed),
        "send_oct_details": { "rate": rates[1] },
        "connected_at": connected_at,
        "state": "running",
        "ssl": false,
    })
}

/// Connections the caller may see, oldest first.
fn visible(m: &Mgmt, caller: &Caller) -> Vec<Arc<ConnectionInfo>> {
    let mut conns = m.broker.connections();
    conns.retain(|c| caller.sees_user(&c.user.lock()));
    conns.sort_by_key(|c| c.id);
    conns
}

/// `GET /api/connections` and `GET /api/vhosts/{vhost}/connections`.
pub async fn connections(s: Scope) -> ApiResult {
    let out: Vec<Value> = visible(&s.m, &s.caller)
        .iter()
        .filter(|c| {
            s.vhost
                .as_ref()
                .map_or(true, |v| *c.vhost.lock() == *v.name)
        })
        .map(|c| connection_json(&s.m, c))
        .collect();
    Ok(ok_json(Value::Array(out)))
}

fn find(m: &Mgmt, caller: &Caller, name: &str) -> Result<Arc<ConnectionInfo>, ApiError> {
    visible(m, caller)
        .into_iter()
        .find(|c| connection_name(m, c) == name)
        .ok_or_else(ApiError::not_found)
}

/// `GET /api/connections/{name}`.
pub async fn connection(Api { m, caller }: Api, Path(name): Path<String>) -> ApiResult {
    let c = find(&m, &caller, &name)?;
    Ok(ok_json(connection_json(&m, &c)))
}

/// `DELETE /api/connections/{name}`: closes it; the `X-Reason` header, when sent,
/// is the close reason (as RabbitMQ). Administrators, or the connection's own user.
pub async fn close(
    Api { m, caller }: Api,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = find(&m, &caller, &name)?;
    if !caller.is_admin() && *c.user.lock() != caller.name {
        return Err(ApiError::refused("Not administrator user"));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    if !m.broker.close_connection(c.id, reason) {
        return Err(ApiError::not_found());
    }
    Ok(super::no_content())
}

/// `GET /api/connections/{name}/channels`.
pub async fn connection_channels(Api { m, caller }: Api, Path(name): Path<String>) -> ApiResult {
    let c = find(&m, &caller, &name)?;
    Ok(ok_json(Value::Array(channels_of(&m, &c))))
}

/// The open channels of a connection, named `<connection> (<number>)` as in RabbitMQ;
/// a memcache connection has none.
fn channels_of(m: &Mgmt, c: &ConnectionInfo) -> Vec<Value> {
    let mut numbers = c.channel_numbers.lock().clone();
    numbers.sort_unstable();
    let conn_name = connection_name(m, c);
    let user = c.user.lock().clone();
    let vhost = c.vhost.lock().clone();
    numbers
        .into_iter()
        .map(|i| {
            json!({
                "name": format!("{conn_name} ({i})"),
                "number": i,
                "node": m.node,
                "connection_details": {
                    "name": conn_name,
                    "peer_host": c.peer.ip().to_string(),
                    "peer_port": c.peer.port(),
                },
                "user": user,
                "vhost": vhost,
                "state": "running",
            })
        })
        .collect()
}

/// Every channel of the connections the caller may see.
fn all_channels(m: &Mgmt, caller: &Caller) -> Vec<Value> {
    visible(m, caller)
        .iter()
        .flat_map(|c| channels_of(m, c))
        .collect()
}

/// `GET /api/channels`.
pub async fn channels(Api { m, caller }: Api) -> ApiResult {
    Ok(ok_json(Value::Array(all_channels(&m, &caller))))
}

/// `GET /api/channels/{name}`.
pub async fn channel(Api { m, caller }: Api, Path(name): Path<String>) -> ApiResult {
    all_channels(&m, &caller)
        .into_iter()
        .find(|ch| ch["name"] == name.as_str())
        .map(ok_json)
        .ok_or_else(ApiError::not_found)
}

/// `GET /api/consumers` and `GET /api/consumers/{vhost}`.
pub async fn consumers(s: Scope) -> ApiResult {
    let conns = s.m.broker.connections();
    let out = s.list(
        VHost::queues,
        |q| &q.name,
        |_, q| consumers_json(&s.m, q, &conns),
    );
    Ok(ok_json(out))
}

/// The consumers of one queue in the API's shape.
pub fn consumers_of(m: &Mgmt, q: &Queue) -> Vec<Value> {
    consumers_json(m, q, &m.broker.connections())
}

fn consumers_json(m: &Mgmt, q: &Queue, conns: &[Arc<ConnectionInfo>]) -> Vec<Value> {
    q.consumers()
        .iter()
        .map(|c| {
            let conn = conns.iter().find(|x| x.id == c.connection);
            let channel_details = match conn {
                Some(conn) => json!({
                    "connection_name": connection_name(m, conn),
                    "peer_host": conn.peer.ip().to_string(),
                    "peer_port": conn.peer.port(),
                    "user": conn.user.lock().clone(),
                    "node": m.node,
                }),
                None => json!({}),
            };
            json!({
                "consumer_tag": c.tag,
                "queue": { "name": q.name, "vhost": &*q.vhost },
                "ack_required": !c.no_ack,
                "exclusive": c.exclusive,
                "prefetch_count": if c.no_ack { 0 } else { c.own_credit.limit() },
                "active": c.is_active(),
                "activity_status": if c.is_active() { "up" } else { "waiting" },
                "arguments": {},
                "channel_details": channel_details,
            })
        })
        .collect()
}
