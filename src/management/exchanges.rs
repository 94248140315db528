//! `/api/exchanges...`: list, show, declare (PUT), delete (`if-unused`), publish
//! (`POST .../publish`, answering `{"routed": bool}`) and an exchange's bindings as
//! source or destination. The default exchange is `amq.default` in paths.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use base64::Engine;
use serde_json::{json, Value};

use super::auth::Caller;
use super::bindings::exchange_name;
use super::error::{ApiError, ApiResult};
use super::{json as j, ok_json, Mgmt};
use crate::core::message::Names;
use crate::core::{Exchange, ExchangeOptions, Message, Permission, Resource, VHost};

/// The API's shape of an exchange.
pub fn exchange_json(vhost: &str, x: &Exchange) -> Value {
    json!({
        "name": &*x.name,
        "vhost": vhost,
        "type": x.kind.as_str(),
        "durable": x.options.durable,
        "auto_delete": x.options.auto_delete,
        "internal": x.options.internal,
        "arguments": j::table(&x.options.arguments),
    })
}

fn list(m: &Mgmt, caller: &Caller, vhosts: Vec<Arc<VHost>>) -> Value {
    let mut out = Vec::new();
    for v in vhosts {
        if !caller.sees(m, &v.name) {
            continue;
        }
        let mut xs = v.exchanges();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(xs.iter().map(|x| exchange_json(&v.name, x)));
    }
    Value::Array(out)
}

/// `GET /api/exchanges`.
pub async fn list_all(State(m): State<Arc<Mgmt>>, caller: Caller) -> ApiResult {
    Ok(ok_json(list(&m, &caller, m.vhosts())))
}

/// `GET /api/exchanges/{vhost}`.
pub async fn list_vhost(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    let v = m.vhost(&vhost)?;
    caller.require_vhost(&m, &vhost)?;
    Ok(ok_json(list(&m, &caller, vec![v])))
}

fn find(
    m: &Mgmt,
    caller: &Caller,
    vhost: &str,
    name: &str,
) -> Result<(Arc<VHost>, Arc<Exchange>), ApiError> {
    let v = m.vhost(vhost)?;
    caller.require_vhost(m, vhost)?;
    let x = v
        .exchange(exchange_name(name))
        .map_err(|_| ApiError::not_found())?;
    Ok((v, x))
}

/// `GET /api/exchanges/{vhost}/{exchange}`.
pub async fn one(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (v, x) = find(&m, &caller, &vhost, &name)?;
    Ok(ok_json(exchange_json(&v.name, &x)))
}

/// `PUT /api/exchanges/{vhost}/{exchange}`: `type` (default `direct`), `durable`,
/// `auto_delete`, `internal`, `arguments`; 201 created, 204 existed, 400 inequivalent.
pub async fn declare(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body = j::object(&body)?;
    let v = m
        .broker
        .vhost(&vhost)
        .ok_or_else(ApiError::vhost_not_found)?;
    caller.require_vhost(&m, &vhost)?;
    let kind = j::text(&body, "type")?.unwrap_or_else(|| "direct".into());
    if crate::core::ExchangeKind::parse(&kind).is_err() {
        return Err(ApiError::bad_request(format!(
            "invalid exchange type '{kind}'"
        )));
    }
    let options = ExchangeOptions {
        durable: j::flag(&body, "durable")?.unwrap_or(false),
        auto_delete: j::flag(&body, "auto_delete")?.unwrap_or(false),
        internal: j::flag(&body, "internal")?.unwrap_or(false),
        arguments: j::arguments(&body, "arguments")?,
    };
    let name = exchange_name(&name);
    caller.permit(&m, &vhost, Permission::Configure, Resource::Exchange(name))?;
    let existed = v.exchange(name).is_ok();
    v.declare_exchange(name, &kind, options, false)?;
    Ok(if existed {
        super::no_content()
    } else {
        super::created()
    })
}

/// `DELETE /api/exchanges/{vhost}/{exchange}[?if-unused=true]`.
pub async fn delete(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let (v, x) = find(&m, &caller, &vhost, &name)?;
    caller.permit(
        &m,
        &vhost,
        Permission::Configure,
        Resource::Exchange(&x.name),
    )?;
    let if_unused = query.get("if-unused").is_some_and(|v| v == "true");
    v.delete_exchange(&x.name, if_unused)?;
    Ok(super::no_content())
}

/// `POST /api/exchanges/{vhost}/{exchange}/publish` with `routing_key`, `payload`,
/// `payload_encoding` (`string` | `base64`) and `properties`: `{"routed": bool}`.
pub async fn publish(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body = j::object(&body)?;
    let missing: Vec<String> = ["routing_key", "properties", "payload", "payload_encoding"]
        .iter()
        .filter(|k| !body.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(",\n "))));
    }
    let v = m.vhost(&vhost)?;
    caller.require_vhost(&m, &vhost)?;
    let name = exchange_name(&name).to_owned();
    let routing_key = j::required_text(&body, "routing_key")?;
    let payload = j::required_text(&body, "payload")?;
    let payload = match j::required_text(&body, "payload_encoding")?.as_str() {
        "string" => payload.into_bytes(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|_| ApiError::bad_request("not_base64"))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be string or base64, not '{other}'"
            )))
        }
    };
    let props = j::to_properties(body.get("properties"))?;
    caller.permit(&m, &vhost, Permission::Write, Resource::Exchange(&name))?;
    if v.exchange(&name).is_err() {
        return Err(ApiError::bad_request(format!(
            "404 NOT_FOUND - no exchange '{name}' in vhost '{vhost}'"
        )));
    }
    let msg = Message::new(
        m.broker.next_message_id(),
        Names::new(&name, &routing_key),
        &props.to_bytes(),
        &props,
        &payload,
    );
    let routed = v.publish(&name, msg)?;
    if let Some(ticket) = routed.durable {
        // As safe as an AMQP publish with confirms: on disk before the answer.
        let _ = ticket.wait().await;
    }
    Ok(ok_json(json!({ "routed": routed.queues > 0 })))
}

fn bindings_where(v: &VHost, key: &str, name: &str, kind: Option<&str>) -> Value {
    Value::Array(
        super::bindings::of_vhost(v)
            .into_iter()
            .filter(|b| b[key] == name && kind.map_or(true, |k| b["destination_type"] == k))
            .collect(),
    )
}

/// `GET /api/exchanges/{vhost}/{exchange}/bindings/source`.
pub async fn bindings_source(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (v, x) = find(&m, &caller, &vhost, &name)?;
    Ok(ok_json(bindings_where(&v, "source", &x.name, None)))
}

/// `GET /api/exchanges/{vhost}/{exchange}/bindings/destination`.
pub async fn bindings_destination(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (v, x) = find(&m, &caller, &vhost, &name)?;
    Ok(ok_json(bindings_where(
        &v,
        "destination",
        &x.name,
        Some("exchange"),
    )))
}
