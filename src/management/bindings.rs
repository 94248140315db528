//! `/api/bindings...`: list (every vhost, one vhost, between an exchange and a queue or
//! exchange), create (`POST`, 201 with `Location`), show and delete one by its
//! `properties_key`.
//!
//! A `properties_key` names a binding within its source and destination, as
//! RabbitMQ's: the routing key (`~` escaped as `%7E`), `~` alone for an empty key, and
//! `<key>~<hash of the arguments>` when there are arguments. The hash is qgate's own
//! (clients treat the key as opaque and read it back from listings).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::scope::{Api, Scope, WithBody};
use super::{json as j, ok_json, Mgmt};
use crate::content::FieldTable;
use crate::core::exchange::Destination;
use crate::core::{Permission, Resource, VHost};

/// The `properties_key` of a binding.
pub fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    let key = routing_key.replace('~', "%7E");
    if arguments.is_empty() {
        return if key.is_empty() { "~".into() } else { key };
    }
    let mut encoded = bytes::BytesMut::new();
    arguments.encode(&mut encoded);
    let hash = crc32c::crc32c(&encoded).to_be_bytes();
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash);
    format!("{key}~{hash}")
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
        "arguments": j::table(arguments),
        "properties_key": properties_key(routing_key, arguments),
    })
}

/// Every binding of a vhost, as RabbitMQ lists them: the default exchange's implicit
/// binding of each queue first, then each exchange's bindings, sorted.
pub fn of_vhost(v: &VHost) -> Vec<Value> {
    let mut out = Vec::new();
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
        let mut bs = x.bindings();
        bs.sort_by(|a, b| {
            (a.destination.name(), &a.routing_key).cmp(&(b.destination.name(), &b.routing_key))
        });
        for bd in bs {
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
    out
}

/// `GET /api/bindings` and `GET /api/bindings/{vhost}`.
pub async fn list(s: Scope) -> ApiResult {
    let out: Vec<Value> = s.vhosts().iter().flat_map(|v| of_vhost(v)).collect();
    Ok(ok_json(Value::Array(out)))
}

/// `q` or `e` in the path.
fn kind(k: &str) -> Result<&'static str, ApiError> {
    match k {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

/// `amq.default` in a path is the default exchange.
pub fn exchange_name(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

/// A binding's two ends as a path names them: `{source}/{q|e}/{destination}`.
struct Ends<'a> {
    source: &'a str,
    dest_type: &'static str,
    dest: &'a str,
}

impl<'a> Ends<'a> {
    /// 404 for a kind other than `q` or `e`.
    fn parse(source: &'a str, k: &str, dest: &'a str) -> Result<Self, ApiError> {
        let dest_type = kind(k)?;
        Ok(Ends {
            source: exchange_name(source),
            dest_type,
            dest,
        })
    }

    /// The vhost, after checking that both ends exist (404 otherwise).
    fn existing(&self, m: &Mgmt, caller: &Caller, vhost: &str) -> Result<Arc<VHost>, ApiError> {
        let v = m.visible_vhost(caller, vhost)?;
        v.exchange(self.source).map_err(|_| ApiError::not_found())?;
        let found = match self.dest_type {
            "queue" => v.find_queue(self.dest).is_some(),
            _ => v.exchange(self.dest).is_ok(),
        };
        if !found {
            return Err(ApiError::not_found());
        }
        Ok(v)
    }

    /// The bindings between the two ends.
    fn bindings(&self, v: &VHost) -> Vec<Value> {
        of_vhost(v)
            .into_iter()
            .filter(|b| {
                b["source"] == self.source
                    && b["destination_type"] == self.dest_type
                    && b["destination"] == self.dest
            })
            .collect()
    }

    /// Binding and unbinding need write on the destination and read on the source, as
    /// over AMQP.
    fn permit(&self, m: &Mgmt, caller: &Caller, vhost: &str) -> Result<(), ApiError> {
        let dest = match self.dest_type {
            "queue" => Resource::Queue(self.dest),
            _ => Resource::Exchange(self.dest),
        };
        caller.permit(m, vhost, Permission::Write, dest)?;
        caller.permit(m, vhost, Permission::Read, Resource::Exchange(self.source))
    }
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
pub async fn between(
    Api { m, caller }: Api,
    Path((vhost, source, k, dest)): Path<(String, String, String, String)>,
) -> ApiResult {
    let ends = Ends::parse(&source, &k, &dest)?;
    let v = ends.existing(&m, &caller, &vhost)?;
    Ok(ok_json(Value::Array(ends.bindings(&v))))
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}` with `routing_key` and
/// `arguments`: 201 with `Location: <destination>/<properties_key>`.
pub async fn create(r: WithBody<(String, String, String, String)>) -> ApiResult {
    let WithBody(Api { m, caller }, (vhost, source, k, dest), body) = r;
    let ends = Ends::parse(&source, &k, &dest)?;
    let (source, dest) = (ends.source, ends.dest);
    let v = m.visible_vhost(&caller, &vhost)?;
    let routing_key = j::text(&body, "routing_key")?.unwrap_or_default();
    let arguments = j::arguments(&body, "arguments")?;
    let no_exchange = |name: &str| ApiError {
        status: StatusCode::NOT_FOUND,
        error: Some("not_found"),
        reason: format!("no exchange '{name}' in vhost '{vhost}'"),
    };
    if v.exchange(source).is_err() {
        return Err(no_exchange(source));
    }
    ends.permit(&m, &caller, &vhost)?;
    let key = properties_key(&routing_key, &arguments);
    match ends.dest_type {
        "queue" => {
            if v.find_queue(dest).is_none() {
                return Err(ApiError {
                    status: StatusCode::NOT_FOUND,
                    error: Some("not_found"),
                    reason: format!("no queue '{dest}' in vhost '{vhost}'"),
                });
            }
            v.bind_queue(dest, source, &routing_key, arguments, 0)?
        }
        _ => {
            if v.exchange(dest).is_err() {
                return Err(no_exchange(dest));
            }
            v.bind_exchange(dest, source, &routing_key, arguments)?
        }
    }
    let location = format!("{}/{}", encode_segment(dest), encode_segment(&key));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// Percent-encodes a path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The binding a `properties_key` names, or 404.
fn find_one<'p>(
    m: &Mgmt,
    caller: &Caller,
    (vhost, source, k, dest, props): &'p (String, String, String, String, String),
) -> Result<(Arc<VHost>, Ends<'p>, Value), ApiError> {
    let ends = Ends::parse(source, k, dest)?;
    let v = ends.existing(m, caller, vhost)?;
    let found = ends
        .bindings(&v)
        .into_iter()
        .find(|b| b["properties_key"] == props.as_str())
        .ok_or_else(ApiError::not_found)?;
    Ok((v, ends, found))
}

/// The five segments of a path naming one binding.
type OnePath = Path<(String, String, String, String, String)>;

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub async fn one(Api { m, caller }: Api, Path(p): OnePath) -> ApiResult {
    let (_, _, b) = find_one(&m, &caller, &p)?;
    Ok(ok_json(b))
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub async fn delete(Api { m, caller }: Api, Path(p): OnePath) -> ApiResult {
    let (v, ends, b) = find_one(&m, &caller, &p)?;
    let (source, dest) = (ends.source, ends.dest);
    let routing_key = b["routing_key"].as_str().unwrap_or_default();
    let arguments = match &b["arguments"] {
        Value::Object(o) => j::to_table(o),
        _ => FieldTable::new(),
    };
    // The stored arguments, not their JSON round trip: field types must match exactly.
    let arguments = stored_arguments(&v, source, dest, routing_key, &arguments);
    ends.permit(&m, &caller, &v.name)?;
    match ends.dest_type {
        "queue" => v.unbind_queue(dest, source, routing_key, &arguments, 0)?,
        _ => v.unbind_exchange(dest, source, routing_key, &arguments)?,
    }
    Ok(super::no_content())
}

fn stored_arguments(
    v: &VHost,
    source: &str,
    dest: &str,
    routing_key: &str,
    shown: &FieldTable,
) -> FieldTable {
    let Ok(x) = v.exchange(source) else {
        return shown.clone();
    };
    x.bindings()
        .into_iter()
        .find(|b| {
            b.destination.name() == dest
                && b.routing_key == routing_key
                && j::table(&b.arguments) == j::table(shown)
        })
        .map(|b| b.arguments)
        .unwrap_or_else(|| shown.clone())
}
