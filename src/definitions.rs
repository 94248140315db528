//! RabbitMQ's definitions JSON (`rabbitmqctl export_definitions`, management
//! `GET/POST /api/definitions`): users with their password hashes, vhosts, permissions,
//! queues (all but exclusive ones, as RabbitMQ 3.10), exchanges, and bindings. A RabbitMQ export loads into qgate
//! unchanged, and qgate's export loads into RabbitMQ.
//!
//! Sections qgate has no counterpart for (`topic_permissions`, `parameters`,
//! `global_parameters`, `policies`) are exported empty; on import they are accepted
//! and ignored, with a warning in the log when they are not empty.

use std::fmt;
use std::sync::Arc;

use crate::content::json::{table_from_json, table_to_json};
use serde_json::{json, Value};

use crate::content::FieldTable;
use crate::core::{Broker, ExchangeOptions, QueueOptions, UserInfo, VHost, VhostPermissions};

/// Why an import failed (the text is shown to the operator as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionsError(pub String);

impl fmt::Display for DefinitionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DefinitionsError {}

/// The version qgate claims in `rabbit_version`: the RabbitMQ release whose format
/// it writes, so RabbitMQ's importer accepts the file.
pub const RABBIT_VERSION: &str = "3.10.8";

/// A user as the definitions file and `GET /api/users` show it.
pub fn user_json(u: &UserInfo) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": {},
    })
}

/// A user's permissions in a vhost, as the definitions file and
/// `GET /api/permissions` show them.
pub fn permission_json(p: &VhostPermissions) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

/// Exports every definition.
pub fn export(broker: &Broker) -> Value {
    let users: Vec<Value> = broker.users().iter().map(user_json).collect();
    let mut vhost_list = broker.vhosts();
    vhost_list.sort_by(|a, b| a.name.cmp(&b.name));
    let vhosts: Vec<Value> = vhost_list
        .iter()
        .map(|v| json!({ "name": &*v.name, "limits": [], "metadata": { "description": "", "tags": [] } }))
        .collect();
    let permissions: Vec<Value> = broker.permissions().iter().map(permission_json).collect();
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    for v in &vhost_list {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        // As RabbitMQ 3.10: every queue but exclusive ones (and the hidden direct
        // reply-to queues), transient ones included.
        for q in qs
            .iter()
            .filter(|q| !q.options.exclusive && !q.name.starts_with("amq."))
        {
            queues.push(json!({
                "name": q.name,
                "vhost": &*v.name,
                "type": "classic",
                "durable": q.options.durable,
                "auto_delete": q.options.auto_delete,
                "arguments": table_to_json(&q.options.arguments),
            }));
        }
        let mut xs = v.exchanges();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        for x in &xs {
            let builtin = x.name.is_empty() || x.name.starts_with("amq.");
            if !builtin {
                let mut e = json!({
                    "name": &*x.name,
                    "vhost": &*v.name,
                    "type": x.kind.as_str(),
                    "durable": x.options.durable,
                    "auto_delete": x.options.auto_delete,
                    "arguments": table_to_json(&x.options.arguments),
                });
                // RabbitMQ 3.10 writes `internal` only when set.
                if x.options.internal {
                    e["internal"] = json!(true);
                }
                exchanges.push(e);
            }
            if x.name.is_empty() {
                // Default-exchange bindings are implicit.
                continue;
            }
            for b in x.bindings() {
                let (dest, kind) = match &b.destination {
                    crate::core::exchange::Destination::Queue(q) => {
                        if q.options.exclusive || q.name.starts_with("amq.") {
                            continue;
                        }
                        (q.name.clone(), "queue")
                    }
                    crate::core::exchange::Destination::Exchange(e) => (e.to_string(), "exchange"),
                };
                bindings.push(json!({
                    "source": &*x.name,
                    "vhost": &*v.name,
                    "destination": dest,
                    "destination_type": kind,
                    "routing_key": b.routing_key,
                    "arguments": table_to_json(&b.arguments),
                }));
            }
        }
    }
    json!({
        "rabbit_version": RABBIT_VERSION,
        "rabbitmq_version": RABBIT_VERSION,
        "product_name": "qgate",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

fn err(msg: impl Into<String>) -> DefinitionsError {
    DefinitionsError(msg.into())
}

fn section<'a>(defs: &'a Value, name: &str) -> Result<&'a [Value], DefinitionsError> {
    match defs.get(name) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(err(format!("'{name}' must be a list"))),
    }
}

fn field<'a>(item: &'a Value, what: &str, key: &str) -> Result<&'a str, DefinitionsError> {
    item.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| err(format!("{what} without a '{key}': {item}")))
}

fn flag(item: &Value, key: &str, default: bool) -> bool {
    item.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn arguments(item: &Value) -> Result<FieldTable, DefinitionsError> {
    match item.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(Value::Object(m)) => Ok(table_from_json(m)),
        Some(other) => Err(err(format!("arguments must be an object: {other}"))),
    }
}

/// The vhost `vname`, which must exist (else an error naming the item as `who`).
fn vhost_named(
    broker: &Broker,
    vname: &str,
    who: fmt::Arguments<'_>,
) -> Result<Arc<VHost>, DefinitionsError> {
    broker
        .vhost(vname)
        .ok_or_else(|| err(format!("{who}: no vhost '{vname}'")))
}

/// Tags as RabbitMQ writes them (definitions, the management API): a list (3.9+) or a
/// comma-separated string (older).
pub fn tags(item: &Value) -> Vec<String> {
    match item.get("tags") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// Imports definitions: creates or updates what they list, leaves everything else
/// alone (as RabbitMQ's import). Stops at the first definition that cannot be applied.
pub fn import(broker: &Broker, defs: &Value) -> Result<(), DefinitionsError> {
    if !defs.is_object() {
        return Err(err("definitions must be a JSON object"));
    }
    for name in ["topic_permissions", "parameters", "policies"] {
        let items = section(defs, name)?;
        if !items.is_empty() {
            tracing::warn!(
                section = name,
                count = items.len(),
                "definitions section ignored: qgate has no counterpart"
            );
        }
    }
    for u in section(defs, "users")? {
        let name = field(u, "user", "name")?;
        let hash = u.get("password_hash").and_then(Value::as_str);
        let password = u.get("password").and_then(Value::as_str);
        let algorithm = u.get("hashing_algorithm").and_then(Value::as_str);
        let (password, hash) = match (password, hash) {
            (Some(p), Some(_)) => (Some(p), None),
            other => other,
        };
        broker
            .put_user(name, password, hash, algorithm, tags(u))
            .map_err(|e| err(format!("user '{name}': {e}")))?;
    }
    for v in section(defs, "vhosts")? {
        let name = field(v, "vhost", "name")?;
        broker
            .put_vhost(name)
            .map_err(|e| err(format!("vhost '{name}': {e}")))?;
    }
    for p in section(defs, "permissions")? {
        let user = field(p, "permission", "user")?;
        let vhost = field(p, "permission", "vhost")?;
        broker
            .set_permissions(
                user,
                vhost,
                field(p, "permission", "configure")?,
                field(p, "permission", "write")?,
                field(p, "permission", "read")?,
            )
            .map_err(|e| err(format!("permissions of '{user}' in vhost '{vhost}': {e}")))?;
    }
    for x in section(defs, "exchanges")? {
        let name = field(x, "exchange", "name")?;
        let vname = field(x, "exchange", "vhost")?;
        let vhost = vhost_named(broker, vname, format_args!("exchange '{name}'"))?;
        let options = ExchangeOptions {
            durable: flag(x, "durable", true),
            auto_delete: flag(x, "auto_delete", false),
            internal: flag(x, "internal", false),
            arguments: arguments(x)?,
        };
        vhost
            .declare_exchange(name, field(x, "exchange", "type")?, options, false)
            .map_err(|e| err(format!("exchange '{name}' in vhost '{vname}': {e}")))?;
    }
    for q in section(defs, "queues")? {
        let name = field(q, "queue", "name")?;
        let vname = field(q, "queue", "vhost")?;
        let vhost = vhost_named(broker, vname, format_args!("queue '{name}'"))?;
        let args = arguments(q)?;
        // RabbitMQ 3.10 exports `"type": "classic"` beside the arguments; qgate's
        // queues are classic queues, so a classic type is the same queue.
        let x_queue_type = args.get_str("x-queue-type");
        let types = [
            q.get("type").and_then(Value::as_str),
            x_queue_type.as_deref(),
        ];
        if let Some(t) = types.into_iter().flatten().find(|t| *t != "classic") {
            return Err(err(format!(
                "queue '{name}' in vhost '{vname}': queue type '{t}' is not supported"
            )));
        }
        let options = QueueOptions {
            durable: flag(q, "durable", true),
            exclusive: false,
            auto_delete: flag(q, "auto_delete", false),
            arguments: args,
        };
        vhost
            .declare_queue(name, options, false, 0)
            .map_err(|e| err(format!("queue '{name}' in vhost '{vname}': {e}")))?;
    }
    for b in section(defs, "bindings")? {
        let source = field(b, "binding", "source")?;
        let vname = field(b, "binding", "vhost")?;
        let dest = field(b, "binding", "destination")?;
        let key = b.get("routing_key").and_then(Value::as_str).unwrap_or("");
        let vhost = vhost_named(broker, vname, format_args!("binding of '{dest}'"))?;
        let args = arguments(b)?;
        let r = match b.get("destination_type").and_then(Value::as_str) {
            Some("exchange") => vhost.bind_exchange(dest, source, key, args),
            Some("queue") | None => vhost.bind_queue(dest, source, key, args, 0),
            Some(other) => return Err(err(format!("unknown destination_type '{other}'"))),
        };
        r.map_err(|e| {
            err(format!(
                "binding '{source}' -> '{dest}' in vhost '{vname}': {}",
                e
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::FieldValue;
    use crate::core::CoreConfig;

    #[test]
    fn export_import_roundtrip() {
        let a = Broker::new(CoreConfig::default());
        a.add_user("alice", "pw", vec!["monitoring".into()])
            .unwrap();
        a.add_vhost("v").unwrap();
        a.set_permissions("alice", "v", "^a", "^b", "^c").unwrap();
        let v = a.vhost("v").unwrap();
        v.declare_exchange(
            "x",
            "topic",
            ExchangeOptions {
                durable: true,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        let mut args = FieldTable::new();
        args.insert("x-max-length", FieldValue::I64(5));
        v.declare_queue(
            "q",
            QueueOptions {
                durable: true,
                arguments: args,
                ..Default::default()
            },
            false,
            0,
        )
        .unwrap();
        v.bind_queue("q", "x", "k.#", FieldTable::new(), 0).unwrap();
        let defs = export(&a);
        assert_eq!(defs["queues"][0]["arguments"]["x-max-length"], 5);
        let b = Broker::new(CoreConfig::default());
        import(&b, &defs).unwrap();
        let lo = "127.0.0.1".parse().unwrap();
        assert_eq!(
            b.authenticate("alice", "pw", lo).unwrap().tags,
            ["monitoring"]
        );
        assert!(b
            .permissions()
            .iter()
            .any(|p| p.user == "alice" && p.read == "^c"));
        let again = export(&b);
        for k in [
            "users",
            "vhosts",
            "permissions",
            "queues",
            "exchanges",
            "bindings",
        ] {
            assert_eq!(defs[k], again[k], "{k}");
        }
        assert!(import(&b, &json!({"users": [{"tags": ""}]})).is_err());
        assert!(import(&b, &json!([])).is_err());
    }
}
