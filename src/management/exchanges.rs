//! `/api/exchanges...`: list, show, declare (PUT), delete (`if-unused`), publish
//! (`POST .../publish`, answering `{"routed": bool}`) and an exchange's bindings as
//! source or destination. The default exchange is `amq.default` in paths.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query};
use base64::Engine;
use serde_json::{json, Value};

use super::bindings::exchange_name;
use super::error::{ApiError, ApiResult};
use super::json as j;
use super::ok_json;
use super::scope::{Api, InVhost, Scope, WithBody};
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

/// `GET /api/exchanges` and `GET /api/exchanges/{vhost}`.
pub async fn list(s: Scope) -> ApiResult {
    let out = s.list(
        VHost::exchanges,
        |x| &x.name,
        |v, x| [exchange_json(&v.name, x)],
    );
    Ok(ok_json(out))
}

/// The exchange named in a path (`amq.default` is the default exchange).
fn find(at: &InVhost, name: &str) -> Result<Arc<Exchange>, ApiError> {
    at.vhost
        .exchange(exchange_name(name))
        .map_err(|_| ApiError::not_found())
}

/// `GET /api/exchanges/{vhost}/{exchange}`.
pub async fn one(at: InVhost, Path((_, name)): Path<(String, String)>) -> ApiResult {
    let x = find(&at, &name)?;
    Ok(ok_json(exchange_json(&at.vhost.name, &x)))
}

/// `PUT /api/exchanges/{vhost}/{exchange}`: `type` (default `direct`), `durable`,
/// `auto_delete`, `internal`, `arguments`; 201 created, 204 existed, 400 inequivalent.
pub async fn declare(r: WithBody<(String, String)>) -> ApiResult {
    let WithBody(Api { m, caller }, (vhost, name), body) = r;
    let v = m.visible_vhost_or(&caller, &vhost, ApiError::vhost_not_found)?;
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
    Ok(super::put_answer(!existed))
}

/// `DELETE /api/exchanges/{vhost}/{exchange}[?if-unused=true]`.
pub async fn delete(
    at: InVhost,
    Path((_, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let x = find(&at, &name)?;
    at.permit(Permission::Configure, Resource::Exchange(&x.name))?;
    let if_unused = query.get("if-unused").is_some_and(|v| v == "true");
    at.vhost.delete_exchange(&x.name, if_unused)?;
    Ok(super::no_content())
}

/// `POST /api/exchanges/{vhost}/{exchange}/publish` with `routing_key`, `payload`,
/// `payload_encoding` (`string` | `base64`) and `properties`: `{"routed": bool}`.
pub async fn publish(r: WithBody<(String, String)>) -> ApiResult {
    let WithBody(Api { m, caller }, (vhost, name), body) = r;
    j::require_keys(
        &body,
        &["routing_key", "properties", "payload", "payload_encoding"],
        ",\n ",
    )?;
    let v = m.visible_vhost(&caller, &vhost)?;
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
pub async fn bindings_source(at: InVhost, Path((_, name)): Path<(String, String)>) -> ApiResult {
    let x = find(&at, &name)?;
    Ok(ok_json(bindings_where(&at.vhost, "source", &x.name, None)))
}

/// `GET /api/exchanges/{vhost}/{exchange}/bindings/destination`.
pub async fn bindings_destination(
    at: InVhost,
    Path((_, name)): Path<(String, String)>,
) -> ApiResult {
    let x = find(&at, &name)?;
    Ok(ok_json(bindings_where(
        &at.vhost,
        "destination",
        &x.name,
        Some("exchange"),
    )))
}
