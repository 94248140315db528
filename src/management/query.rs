//! The list query parameters of RabbitMQ's API, applied to any JSON a GET returns:
//! `columns=name,message_stats.publish` (keep only those fields, dotted paths
//! allowed; rabbitmqadmin sends this on every `list`), `name=<text>` with
//! `use_regex=true|false` (filter by name), `sort=<field>` / `sort_reverse=true`, and
//! `page` / `page_size` (answered with RabbitMQ's paging object: `items`, `page`,
//! `page_count`, `page_size`, `item_count`, `filtered_count`, `total_count`).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::error::ApiError;

/// Largest `page_size` (RabbitMQ's).
pub const MAX_PAGE_SIZE: usize = 500;

#[derive(Debug, Default)]
struct Params {
    columns: Option<Vec<String>>,
    name: Option<String>,
    use_regex: bool,
    sort: Option<String>,
    sort_reverse: bool,
    page: Option<usize>,
    page_size: usize,
}

fn params(query: &str) -> Result<Params, ApiError> {
    let mut p = Params {
        page_size: 100,
        ..Default::default()
    };
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = crate::http::percent_decode(&v.replace('+', " "))
            .ok_or_else(|| ApiError::bad_request("bad percent-encoding in query"))?;
        match k {
            "columns" => p.columns = Some(v.split(',').map(str::to_owned).collect()),
            "name" if !v.is_empty() => p.name = Some(v),
            "use_regex" => p.use_regex = v == "true",
            "sort" if !v.is_empty() => p.sort = Some(v),
            "sort_reverse" => p.sort_reverse = v == "true",
            "page" => {
                p.page = Some(
                    v.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| ApiError::bad_request("page must be a positive integer"))?,
                )
            }
            "page_size" => {
                p.page_size = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("page_size must be 1..{MAX_PAGE_SIZE}"))
                    })?
            }
            _ => {}
        }
    }
    Ok(p)
}

impl Params {
    fn is_noop(&self) -> bool {
        self.columns.is_none() && self.name.is_none() && self.sort.is_none() && self.page.is_none()
    }
}

/// Middleware: rewrites successful JSON GET answers according to the query.
pub async fn apply(req: Request, next: Next) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    if req.method() != Method::GET || query.is_empty() {
        return next.run(req).await;
    }
    let p = match params(&query) {
        Ok(p) if !p.is_noop() => p,
        Ok(_) => return next.run(req).await,
        Err(e) => return e.into_response(),
    };
    let response = next.run(req).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal("response body unreadable").into_response();
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let out = match transform(value, &p) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let mut response = Response::from_parts(parts, Body::from(out.to_string()));
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

fn transform(value: Value, p: &Params) -> Result<Value, ApiError> {
    let Value::Array(mut items) = value else {
        return Ok(match &p.columns {
            Some(cols) => pick(&value, cols),
            None => value,
        });
    };
    let total = items.len();
    if let Some(name) = &p.name {
        if p.use_regex {
            let re = regex::Regex::new(name)
                .map_err(|e| ApiError::bad_request(format!("invalid regex: {e}")))?;
            items.retain(|i| i["name"].as_str().is_some_and(|n| re.is_match(n)));
        } else {
            let needle = name.to_lowercase();
            items.retain(|i| {
                i["name"]
                    .as_str()
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
            });
        }
    }
    if let Some(field) = &p.sort {
        items.sort_by(|a, b| compare(lookup(a, field), lookup(b, field)));
    }
    if p.sort_reverse {
        items.reverse();
    }
    let filtered = items.len();
    let columns = |items: Vec<Value>| -> Vec<Value> {
        match &p.columns {
            Some(cols) => items.iter().map(|i| pick(i, cols)).collect(),
            None => items,
        }
    };
    let Some(page) = p.page else {
        return Ok(Value::Array(columns(items)));
    };
    let page_count = filtered.div_ceil(p.page_size).max(1);
    if page > page_count {
        return Err(ApiError::bad_request(format!(
            "page {page} is beyond the last page ({page_count})"
        )));
    }
    let start = (page - 1) * p.page_size;
    let paged: Vec<Value> = items.into_iter().skip(start).take(p.page_size).collect();
    Ok(json!({
        "filtered_count": filtered,
        "item_count": paged.len(),
        "items": columns(paged),
        "page": page,
        "page_count": page_count,
        "page_size": p.page_size,
        "total_count": total,
    }))
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Keeps only the `columns` of an object (dotted paths keep nested fields).
fn pick(v: &Value, columns: &[String]) -> Value {
    let mut out = Map::new();
    for c in columns {
        let mut keys = c.split('.').peekable();
        let (mut src, mut dst) = (v, &mut out);
        while let Some(k) = keys.next() {
            let Some(found) = src.get(k) else { break };
            if keys.peek().is_none() {
                dst.insert(k.to_owned(), found.clone());
                break;
            }
            let entry = dst
                .entry(k.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            dst = next;
            src = found;
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(v: Value, q: &str) -> Value {
        transform(v, &params(q).unwrap()).unwrap()
    }

    #[test]
    fn columns_sort_filter_page() {
        let v = json!([
            {"name": "b", "messages": 2, "message_stats": {"publish": 5, "ack": 1}},
            {"name": "a", "messages": 7},
            {"name": "ab", "messages": 1},
        ]);
        assert_eq!(
            run(v.clone(), "columns=name,message_stats.publish"),
            json!([{"name": "b", "message_stats": {"publish": 5}}, {"name": "a"}, {"name": "ab"}])
        );
        assert_eq!(
            run(v.clone(), "sort=messages&sort_reverse=true&columns=name"),
            json!([{"name": "a"}, {"name": "b"}, {"name": "ab"}])
        );
        assert_eq!(
            run(v.clone(), "name=%5Ea&use_regex=true&columns=name"),
            json!([{"name": "a"}, {"name": "ab"}])
        );
        let page = run(v.clone(), "page=2&page_size=2&sort=name&columns=name");
        assert_eq!(page["items"], json!([{"name": "b"}]));
        assert_eq!(
            (page["page_count"].clone(), page["total_count"].clone()),
            (json!(2), json!(3))
        );
        assert!(transform(v, &params("page=3&page_size=2").unwrap()).is_err());
        assert!(params("page_size=0").is_err());
        assert_eq!(
            run(json!({"name": "x", "y": 1}), "columns=y"),
            json!({"y": 1})
        );
    }
}
