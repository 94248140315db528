//! Broker-wide endpoints: `/api/overview`, `/api/whoami`, `/api/healthchecks/node`,
//! `/api/aliveness-test/{vhost}`, `/api/definitions` and qgate's own
//! `POST /api/qgate/stop`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Map, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::rates::{self, Window};
use super::scope::{Admin, Api, InVhost, Monitor};
use super::{ok_json, Mgmt};
use crate::content::Properties;
use crate::core::{Message, QueueOptions};

/// The RabbitMQ management API version whose paths and fields this mirrors.
pub const RABBITMQ_API_VERSION: &str = "3.10.8";

/// The `*_age` / `*_incr` pair of a query, when both are given.
fn window(query: &HashMap<String, String>, prefix: &str) -> Option<Window> {
    let age = query.get(&format!("{prefix}_age"))?.parse().ok()?;
    let incr = query.get(&format!("{prefix}_incr"))?.parse().ok()?;
    Some(Window { age, incr })
}

/// `GET /api/overview`.
pub async fn overview(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let b = &m.broker;
    let now = rates::global_totals(b);
    let section = |range, window| {
        let mut out = Map::new();
        m.rates.global_into(&mut out, &now, range, window);
        out
    };
    let message_stats = section(rates::MESSAGE_STATS, window(&query, "msg_rates"));
    let queue_totals = section(rates::LENGTHS, window(&query, "lengths"));
    let churn_rates = section(rates::CHURN, None);
    let (mut exchanges, mut queues, mut consumers) = (0usize, 0usize, 0usize);
    for v in b.vhosts() {
        exchanges += v.exchanges().len();
        for q in v.queues() {
            queues += 1;
            consumers += q.depth().consumers;
        }
    }
    let listener = |protocol: &str, addr: std::net::SocketAddr| {
        json!({
            "node": m.node,
            "protocol": protocol,
            "ip_address": addr.ip().to_string(),
            "port": addr.port(),
        })
    };
    let exchange_types: Vec<Value> = ["direct", "fanout", "headers", "topic"]
        .iter()
        .map(|t| {
            json!({
                "name": t,
                "description": format!("AMQP {t} exchange, as per the AMQP specification"),
                "enabled": true,
            })
        })
        .collect();
    let mut out = json!({
        "management_version": RABBITMQ_API_VERSION,
        "rates_mode": "basic",
        "exchange_types": exchange_types,
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "qgate",
        "rabbitmq_version": RABBITMQ_API_VERSION,
        "cluster_name": m.node,
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": message_stats,
        "churn_rates": churn_rates,
        "queue_totals": queue_totals,
        "object_totals": {
            "channels": rates::channels(b),
            "connections": b.connections().len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": m.node,
        "uptime": b.uptime().as_millis() as u64,
        "metrics_prefix": m.config.http.metrics_prefix,
    });
    // Node-wide details are for monitoring users and administrators, as in RabbitMQ.
    if caller.is_monitor() {
        let mut listeners = vec![
            listener("amqp", m.bound.amqp),
            listener("memcache", m.bound.memcache),
            listener("http", m.bound.http),
            listener("management", m.bound.management),
        ];
        // Upstream mode has no AMQP listener (its address reads as port 0).
        if m.bound.amqp.port() == 0 {
            listeners.remove(0);
        }
        out["listeners"] = json!(listeners);
        out["contexts"] = json!([{
            "node": m.node,
            "description": "qgate management",
            "path": "/",
            "ip": m.bound.management.ip().to_string(),
            "port": m.bound.management.port().to_string(),
        }]);
    }
    Ok(ok_json(out))
}

/// `GET /api/whoami`.
pub async fn whoami(caller: Caller) -> ApiResult {
    Ok(ok_json(json!({ "name": caller.name, "tags": caller.tags })))
}

/// `GET /api/healthchecks/node`: the node runs (any management user may ask).
pub async fn healthcheck(_caller: Caller) -> ApiResult {
    Ok(ok_json(json!({ "status": "ok" })))
}

/// `GET /api/aliveness-test/{vhost}`: declares the queue `aliveness-test`, publishes a
/// message to it and takes it back, as RabbitMQ does.
pub async fn aliveness(InVhost { m, vhost: v, .. }: InVhost) -> ApiResult {
    const QUEUE: &str = "aliveness-test";
    let declared = v.declare_queue(QUEUE, QueueOptions::default(), false, 0)?;
    let props = Properties::default();
    let msg = Message::new(
        m.broker.next_message_id(),
        crate::core::message::Names::new("", QUEUE),
        &props.to_bytes(),
        &props,
        b"test_message",
    );
    v.publish("", msg)?;
    let failed = || ok_json(json!({ "status": "failed", "reason": "message not received" }));
    match declared.queue.get(true) {
        Some((d, _)) if d.entry.msg.body() == b"test_message" => {
            Ok(ok_json(json!({ "status": "ok" })))
        }
        _ => Ok(failed()),
    }
}

/// `GET /api/definitions` (administrators): the same JSON as
/// `qgate ctl export_definitions`.
pub async fn export(Admin { m, .. }: Admin) -> ApiResult {
    Ok(ok_json(crate::definitions::export(&m.broker)))
}

/// `POST /api/definitions` (administrators): imports; 204, or 400 with the reason.
pub async fn import(Api { m, caller }: Api, body: Bytes) -> ApiResult {
    caller.require_admin()?;
    let defs: Value =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad_request("not_json"))?;
    crate::definitions::import(&m.broker, &defs)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(super::no_content())
}

/// `POST /api/qgate/stop` (administrators): 202, then the same graceful shutdown as
/// SIGTERM (the response is finished before the connection closes).
pub async fn stop(Admin { m, caller }: Admin) -> ApiResult {
    tracing::info!(user = %caller.name, "stop requested over the management API");
    m.shutdown.cancel();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "status": "stopping" })),
    )
        .into_response())
}

/// `GET /api/upstream` (qgate's own, monitoring or administrator): in upstream mode the
/// gateway's figures ([`crate::upstream::UpstreamStatus`]: connections and their node,
/// operations, publish retries, confirm latency, the queue depths it sees); 404 in
/// local mode.
pub async fn upstream(_: Monitor) -> ApiResult {
    match crate::upstream::current() {
        Some(gw) => Ok(ok_json(
            serde_json::to_value(gw.status()).unwrap_or(serde_json::Value::Null),
        )),
        None => Err(ApiError::not_found()),
    }
}
