//! Field tables as JSON, the form RabbitMQ's management API and definitions files give
//! them: integers are signed 64-bit, other numbers doubles, strings long strings, and a
//! table read back shows every integer type as a number. One place, because the
//! management API and definitions import/export must agree value for value.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{FieldTable, FieldValue};

/// A field table as a JSON object.
pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.0.iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &FieldValue) -> Value {
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
        FieldValue::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
    }
}

/// A JSON object as a field table, with the types RabbitMQ gives its values.
pub fn table_from_json(o: &Map<String, Value>) -> FieldTable {
    FieldTable(
        o.iter()
            .map(|(k, v)| (k.clone(), value_from_json(v)))
            .collect(),
    )
}

fn value_from_json(v: &Value) -> FieldValue {
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
        Value::Array(a) => FieldValue::Array(a.iter().map(value_from_json).collect()),
        Value::Object(o) => FieldValue::Table(table_from_json(o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_rabbitmq_types() {
        let v = json!({"n": 5, "neg": -2, "f": 1.5, "s": "x", "b": true, "nil": null,
                       "a": [1, "y"], "t": {"deep": 2}});
        let t = table_from_json(v.as_object().unwrap());
        assert_eq!(t.get("n"), Some(&FieldValue::I64(5)));
        assert_eq!(t.get("f"), Some(&FieldValue::F64(1.5)));
        assert_eq!(table_to_json(&t), v);
        let spec = FieldTable(vec![("l".into(), FieldValue::I64Spec(-7))]);
        assert_eq!(table_to_json(&spec), json!({"l": -7}));
    }
}
