//! JSON in and out: request bodies read with RabbitMQ's leniency (rabbitmqadmin sends
//! booleans and counts as strings: `"durable":"true"`, `"count":"5"`), and AMQP field
//! tables converted both ways.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::content::{FieldTable, Properties};

/// A request body: an object, or empty (= `{}`). Anything else is 400 `not_json`.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::bad_request("not_json")),
    }
}

/// 400 naming every key of `keys` that `body` lacks, in RabbitMQ's Erlang-term form
/// (`[{key_missing,count},{key_missing,ackmode}]`); `sep` joins them as RabbitMQ's
/// text does for that endpoint.
pub fn require_keys(body: &Map<String, Value>, keys: &[&str], sep: &str) -> Result<(), ApiError> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !body.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("[{}]", missing.join(sep))))
    }
}

/// A boolean field: `true`, `"true"`, `false`, `"false"`; absent or null = `None`.
pub fn flag(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(v) => Err(ApiError::bad_request(format!(
            "{key} must be true or false, not {v}"
        ))),
    }
}

/// A non-negative integer field: `5` or `"5"`; absent or null = `None`.
pub fn count(m: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(v) => Err(ApiError::bad_request(format!(
            "{key} must be a non-negative integer, not {v}"
        ))),
    }
}

/// A string field; absent or null = `None`, a number or boolean as its text.
pub fn text(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(v) => Err(ApiError::bad_request(format!(
            "{key} must be a string, not {v}"
        ))),
    }
}

/// A required string field.
pub fn required_text(m: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    text(m, key)?.ok_or_else(|| ApiError::bad_request(format!("[{{key_missing,{key}}}]")))
}

/// An `arguments`-style object as a field table; absent, null or `""` = empty.
pub fn arguments(m: &Map<String, Value>, key: &str) -> Result<FieldTable, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(FieldTable::new()),
        Some(Value::Object(o)) => Ok(to_table(o)),
        Some(v) => Err(ApiError::bad_request(format!(
            "{key} must be an object, not {v}"
        ))),
    }
}

pub use crate::content::json::{table_from_json as to_table, table_to_json as table};

/// Message properties as the API shows them: only those set, AMQP names.
pub fn properties(p: &Properties) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("content_type", p.content_type.clone().map(Value::from));
    put(
        "content_encoding",
        p.content_encoding.clone().map(Value::from),
    );
    put("priority", p.priority.map(Value::from));
    put("correlation_id", p.correlation_id.clone().map(Value::from));
    put("reply_to", p.reply_to.clone().map(Value::from));
    put("expiration", p.expiration.clone().map(Value::from));
    put("message_id", p.message_id.clone().map(Value::from));
    put("timestamp", p.timestamp.map(Value::from));
    put("type", p.kind.clone().map(Value::from));
    put("user_id", p.user_id.clone().map(Value::from));
    put("app_id", p.app_id.clone().map(Value::from));
    put("cluster_id", p.cluster_id.clone().map(Value::from));
    put("delivery_mode", p.delivery_mode.map(Value::from));
    put("headers", p.headers.as_ref().map(table));
    Value::Object(m)
}

/// Message properties from the API's JSON (`delivery_mode` and the like may be
/// strings); unknown keys are refused as RabbitMQ refuses them.
pub fn to_properties(v: Option<&Value>) -> Result<Properties, ApiError> {
    let m = match v {
        None | Some(Value::Null) => return Ok(Properties::default()),
        Some(Value::String(s)) if s.is_empty() => return Ok(Properties::default()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::bad_request("properties must be an object")),
    };
    let small = |key: &str, max: u64| -> Result<Option<u8>, ApiError> {
        match count(m, key)? {
            None => Ok(None),
            Some(n) if n <= max => Ok(Some(n as u8)),
            Some(n) => Err(ApiError::bad_request(format!("{key} {n} is out of range"))),
        }
    };
    let mut p = Properties {
        content_type: text(m, "content_type")?,
        content_encoding: text(m, "content_encoding")?,
        delivery_mode: small("delivery_mode", 2)?,
        priority: small("priority", 255)?,
        correlation_id: text(m, "correlation_id")?,
        reply_to: text(m, "reply_to")?,
        expiration: text(m, "expiration")?,
        message_id: text(m, "message_id")?,
        timestamp: count(m, "timestamp")?,
        kind: text(m, "type")?,
        user_id: text(m, "user_id")?,
        app_id: text(m, "app_id")?,
        cluster_id: text(m, "cluster_id")?,
        headers: None,
    };
    if m.contains_key("headers") {
        let h = arguments(m, "headers")?;
        p.headers = Some(h);
    }
    const KNOWN: [&str; 14] = [
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
        "headers",
    ];
    if let Some(k) = m.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("{{invalid_property,{k}}}")));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::FieldValue;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn lenient_scalars() {
        let m = obj(json!({"a": "true", "b": false, "c": "5", "d": 7, "e": "x", "f": null}));
        assert_eq!(flag(&m, "a").unwrap(), Some(true));
        assert_eq!(flag(&m, "b").unwrap(), Some(false));
        assert_eq!(flag(&m, "f").unwrap(), None);
        assert!(flag(&m, "e").is_err());
        assert_eq!(count(&m, "c").unwrap(), Some(5));
        assert_eq!(count(&m, "d").unwrap(), Some(7));
        assert!(count(&m, "e").is_err());
        assert_eq!(text(&m, "d").unwrap().as_deref(), Some("7"));
        assert!(required_text(&m, "zz").is_err());
    }

    #[test]
    fn bodies() {
        assert!(object(b"").unwrap().is_empty());
        assert!(object(b"{bad").is_err());
        assert!(object(b"[1]").is_err());
        assert_eq!(object(br#"{"a":1}"#).unwrap().len(), 1);
    }

    #[test]
    fn missing_keys_are_listed_in_one_reason() {
        let m = object(br#"{"count": 1}"#).unwrap();
        assert!(require_keys(&m, &["count"], ",").is_ok());
        let e = require_keys(&m, &["count", "ackmode", "encoding"], ",\n ").unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(
            e.reason,
            "[{key_missing,ackmode},\n {key_missing,encoding}]"
        );
        let e = require_keys(&m, &["write", "read"], ",").unwrap_err();
        assert_eq!(e.reason, "[{key_missing,write},{key_missing,read}]");
    }

    #[test]
    fn tables_round_trip() {
        let v = json!({"x-max-length": 10, "s": "t", "f": 1.5, "b": true, "l": [1, "a"], "o": {"k": 1}});
        let t = to_table(v.as_object().unwrap());
        assert_eq!(table(&t), v);
        assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(10)));
    }
}
