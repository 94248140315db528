//! Node endpoints for monitoring: `/api/nodes[/{name}]`, `/api/cluster-name`, and
//! RabbitMQ 3.8+'s health checks under `/api/health/checks/` (200 `{"status":"ok"}`,
//! or 503 `{"status":"failed","reason":...}` as RabbitMQ answers a failed check).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::scope::Monitor;
use super::{ok_json, Mgmt};

fn failed(body: Value) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

fn node_json(m: &Mgmt) -> Value {
    let p = crate::http::process::process_stats(&m.config.storage.data_dir);
    let flow = m.broker.flow();
    json!({
        "name": m.node,
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "mem_used": p.rss,
        "mem_limit": if flow.limit() == 0 { p.physical } else { flow.limit() },
        "mem_alarm": flow.memory_alarm(),
        "disk_free": p.disk_available,
        "disk_free_limit": flow.disk().limit(),
        "disk_free_alarm": flow.disk().is_alarmed(),
        "fd_used": p.open_fds,
        "fd_total": p.max_fds,
        "sockets_used": m.broker.connections().len(),
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "uptime": m.broker.uptime().as_millis() as u64,
        "partitions": [],
    })
}

/// `GET /api/nodes` (monitoring): the one node.
pub async fn nodes(Monitor { m, .. }: Monitor) -> ApiResult {
    Ok(ok_json(json!([node_json(&m)])))
}

/// `GET /api/nodes/{name}` (monitoring).
pub async fn node(Monitor { m, .. }: Monitor, Path(name): Path<String>) -> ApiResult {
    if name != m.node {
        return Err(ApiError::not_found());
    }
    Ok(ok_json(node_json(&m)))
}

/// `GET /api/qgate/limits` (monitoring, qgate's own): every limit a client can run
/// into, as README's "Limits and hardening" lists them.
pub async fn limits(Monitor { m, .. }: Monitor) -> ApiResult {
    Ok(ok_json(
        serde_json::to_value(m.broker.limits()).unwrap_or(Value::Null),
    ))
}

/// `GET /api/cluster-name`.
pub async fn cluster_name(State(m): State<Arc<Mgmt>>, _caller: Caller) -> ApiResult {
    Ok(ok_json(json!({ "name": m.node })))
}

fn alarms(m: &Mgmt, reason: &str) -> Response {
    let flow = m.broker.flow();
    let resources: Vec<Value> = [
        ("memory", flow.memory_alarm()),
        ("disk", flow.disk().is_alarmed()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(resource, _)| json!({ "node": m.node, "resource": resource }))
    .collect();
    if !resources.is_empty() {
        failed(json!({
            "status": "failed",
            "reason": reason,
            "alarms": resources,
        }))
    } else {
        ok_json(json!({ "status": "ok" }))
    }
}

/// `GET /api/health/checks/alarms`: 503 while the memory or disk alarm blocks publishers.
pub async fn check_alarms(State(m): State<Arc<Mgmt>>, _caller: Caller) -> ApiResult {
    Ok(alarms(&m, "There are alarms in effect in the cluster"))
}

/// `GET /api/health/checks/local-alarms`.
pub async fn check_local_alarms(State(m): State<Arc<Mgmt>>, _caller: Caller) -> ApiResult {
    Ok(alarms(&m, "There are alarms in effect on the node"))
}

/// `GET /api/health/checks/virtual-hosts`: every vhost runs in-process.
pub async fn check_vhosts(_caller: Caller) -> ApiResult {
    Ok(ok_json(json!({ "status": "ok" })))
}

/// `GET /api/health/checks/node-is-quorum-critical` (and `...mirror-sync-critical`):
/// a single node with classic queues only is never critical.
pub async fn check_not_critical(_caller: Caller) -> ApiResult {
    Ok(ok_json(json!({ "status": "ok" })))
}

fn listeners(m: &Mgmt) -> [(&'static str, std::net::SocketAddr); 4] {
    [
        ("amqp", m.bound.amqp),
        ("memcache", m.bound.memcache),
        ("http", m.bound.http),
        ("management", m.bound.management),
    ]
}

/// A listener check's answer: 200 `{"status":"ok", <what>: asked}`, or 503 naming
/// what was asked for as `missing` and every listener's `<what>s`.
fn listener_check(found: bool, what: &str, asked: Value, all: Value) -> Response {
    if found {
        let mut ok = json!({ "status": "ok" });
        ok[what] = asked;
        return ok_json(ok);
    }
    let mut out = json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": asked,
    });
    out[format!("{what}s")] = all;
    failed(out)
}

/// `GET /api/health/checks/port-listener/{port}`.
pub async fn check_port(
    State(m): State<Arc<Mgmt>>,
    _caller: Caller,
    Path(port): Path<String>,
) -> ApiResult {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid port '{port}'")))?;
    let ports: Vec<u16> = listeners(&m).iter().map(|(_, a)| a.port()).collect();
    Ok(listener_check(
        ports.contains(&port),
        "port",
        json!(port),
        json!(ports),
    ))
}

/// `GET /api/health/checks/protocol-listener/{protocol}` (`amqp`, `amqp091`,
/// `amqp0-9-1`, `memcache`, `http`/`prometheus`, `management`).
pub async fn check_protocol(
    State(m): State<Arc<Mgmt>>,
    _caller: Caller,
    Path(protocol): Path<String>,
) -> ApiResult {
    let wanted = match protocol.to_ascii_lowercase().as_str() {
        "amqp" | "amqp091" | "amqp0-9-1" | "amqp0.9.1" => "amqp",
        "memcache" | "memcached" => "memcache",
        "http" | "prometheus" | "http/prometheus" => "http",
        "management" | "http/management" => "management",
        _ => "",
    };
    let protocols: Vec<&str> = listeners(&m).iter().map(|(p, _)| *p).collect();
    let found = protocols.contains(&wanted);
    Ok(listener_check(
        found,
        "protocol",
        json!(protocol),
        json!(protocols),
    ))
}
