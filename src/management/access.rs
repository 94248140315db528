//! `/api/users...`, `/api/vhosts...` and `/api/permissions...`: the access model of the
//! core ([`crate::core::access`]) over HTTP, with RabbitMQ's shapes. Changing any of it
//! is for administrators; listing vhosts is for every management user (each sees the
//! vhosts they may use).

use axum::body::Bytes;
use axum::extract::Path;
use serde_json::{json, Map, Value};

use super::auth::COOKIE_USER;
use super::error::{ApiError, ApiResult};
use super::scope::{Admin, Api, Scope};
use super::{json as j, ok_json, rates, Mgmt};
use crate::core::{UserInfo, VHost, VhostPermissions};
use crate::definitions::{permission_json, user_json};

fn vhost_json(m: &Mgmt, v: &VHost) -> Value {
    // A vhost's numbers are the sums over its queues, totals and rates alike.
    let mut totals = [0u64; 7];
    let mut per_second = [0f64; 7];
    for q in v.queues() {
        let t = rates::queue_totals(&q);
        let r = m.rates.queue_rates(q.id);
        for i in 0..7 {
            totals[i] += t[i];
            per_second[i] += r[i];
        }
    }
    let mut stats = Map::new();
    let mut lengths = Map::new();
    for i in 0..7 {
        let out = if i < 4 { &mut stats } else { &mut lengths };
        out.insert(rates::QUEUE[i].into(), json!(totals[i]));
        out.insert(
            format!("{}_details", rates::QUEUE[i]),
            json!({ "rate": per_second[i] }),
        );
    }
    let description = if &*v.name == "/" {
        "Default virtual host"
    } else {
        ""
    };
    let mut cluster_state = Map::new();
    cluster_state.insert(m.node.clone(), json!("running"));
    let mut out = json!({
        "name": &*v.name,
        "description": description,
        "tags": [],
        "default_queue_type": "undefined",
        "metadata": { "description": description, "tags": [] },
        "tracing": false,
        "cluster_state": cluster_state,
        "message_stats": stats,
    });
    if let Value::Object(o) = &mut out {
        o.extend(lengths);
    }
    out
}

/// `GET /api/vhosts`: the vhosts the caller sees.
pub async fn vhosts(s: Scope) -> ApiResult {
    let out: Vec<Value> = s.vhosts().iter().map(|v| vhost_json(&s.m, v)).collect();
    Ok(ok_json(Value::Array(out)))
}

/// `GET /api/vhosts/{vhost}` (administrators, as in RabbitMQ).
pub async fn vhost(Admin { m, .. }: Admin, Path(name): Path<String>) -> ApiResult {
    let v = m.vhost(&name)?;
    Ok(ok_json(vhost_json(&m, &v)))
}

/// `PUT /api/vhosts/{vhost}`: 201 created (the creator gets full permissions on it, as
/// in RabbitMQ), 204 when it existed. `description`, `tags` and
/// `default_queue_type` are not kept.
pub async fn put_vhost(Api { m, caller }: Api, Path(name): Path<String>, body: Bytes) -> ApiResult {
    caller.require_admin()?;
    j::object(&body)?;
    let existed = m.broker.vhost(&name).is_some();
    m.broker.put_vhost(&name)?;
    if existed {
        return Ok(super::no_content());
    }
    if caller.name != COOKIE_USER && m.broker.user(&caller.name).is_some() {
        m.broker
            .set_permissions(&caller.name, &name, ".*", ".*", ".*")?;
    }
    Ok(super::created())
}

/// `DELETE /api/vhosts/{vhost}`.
pub async fn delete_vhost(Admin { m, .. }: Admin, Path(name): Path<String>) -> ApiResult {
    m.vhost(&name)?;
    m.broker.delete_vhost(&name)?;
    Ok(super::no_content())
}

/// `GET /api/vhosts/{vhost}/permissions`.
pub async fn vhost_permissions(Admin { m, .. }: Admin, Path(name): Path<String>) -> ApiResult {
    m.vhost(&name)?;
    Ok(ok_json(permissions_where(&m, |p| p.vhost == name)))
}

/// `GET /api/users`.
pub async fn users(Admin { m, .. }: Admin) -> ApiResult {
    let mut users = m.broker.users();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ok_json(Value::Array(users.iter().map(user_json).collect())))
}

/// The user named in a path, or 404.
fn user_named(m: &Mgmt, name: &str) -> Result<UserInfo, ApiError> {
    m.broker.user(name).ok_or_else(ApiError::not_found)
}

/// `GET /api/users/{user}`.
pub async fn user(Admin { m, .. }: Admin, Path(name): Path<String>) -> ApiResult {
    Ok(ok_json(user_json(&user_named(&m, &name)?)))
}

/// Tags as RabbitMQ accepts them: `"a,b"` (3.x) or `["a", "b"]`.
fn tags(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(|s| s.trim().to_owned())
                    .ok_or_else(|| ApiError::bad_request("tags must be strings"))
            })
            .collect(),
        Some(v) => Err(ApiError::bad_request(format!(
            "tags must be a list, not {v}"
        ))),
    }
}

/// `PUT /api/users/{user}` with `password` or `password_hash` (+ `hashing_algorithm`)
/// and `tags`: 201 created, 204 updated.
pub async fn put_user(Api { m, caller }: Api, Path(name): Path<String>, body: Bytes) -> ApiResult {
    caller.require_admin()?;
    let body = j::object(&body)?;
    let password = j::text(&body, "password")?;
    let hash = j::text(&body, "password_hash")?;
    let algorithm = j::text(&body, "hashing_algorithm")?;
    let tags = tags(&body)?;
    let existed = m.broker.user(&name).is_some();
    m.broker.put_user(
        &name,
        password.as_deref(),
        hash.as_deref(),
        algorithm.as_deref(),
        tags,
    )?;
    Ok(super::put_answer(!existed))
}

/// `DELETE /api/users/{user}`.
pub async fn delete_user(Admin { m, .. }: Admin, Path(name): Path<String>) -> ApiResult {
    user_named(&m, &name)?;
    m.broker.delete_user(&name)?;
    Ok(super::no_content())
}

/// `GET /api/users/{user}/permissions`.
pub async fn user_permissions(Admin { m, .. }: Admin, Path(name): Path<String>) -> ApiResult {
    user_named(&m, &name)?;
    Ok(ok_json(permissions_where(&m, |p| p.user == name)))
}

fn permissions_where(m: &Mgmt, keep: impl Fn(&VhostPermissions) -> bool) -> Value {
    let mut ps = m.broker.permissions();
    ps.retain(|p| keep(p));
    ps.sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
    Value::Array(ps.iter().map(permission_json).collect())
}

/// `GET /api/permissions`.
pub async fn permissions(Admin { m, .. }: Admin) -> ApiResult {
    Ok(ok_json(permissions_where(&m, |_| true)))
}

/// The permissions of `user` in `vhost`, when set.
fn permission_of(m: &Mgmt, vhost: &str, user: &str) -> Option<VhostPermissions> {
    m.broker
        .permissions()
        .into_iter()
        .find(|p| p.vhost == vhost && p.user == user)
}

/// The `{vhost}/{user}` of a permissions path.
type PermissionPath = Path<(String, String)>;

/// `GET /api/permissions/{vhost}/{user}`.
pub async fn permission(Admin { m, .. }: Admin, Path((vhost, user)): PermissionPath) -> ApiResult {
    permission_of(&m, &vhost, &user)
        .map(|p| ok_json(permission_json(&p)))
        .ok_or_else(ApiError::not_found)
}

/// `PUT /api/permissions/{vhost}/{user}` with `configure`, `write`, `read`: 201 new,
/// 204 replaced; 400 for a missing user or vhost, or a bad regular expression.
pub async fn put_permission(
    Api { m, caller }: Api,
    Path((vhost, user)): PermissionPath,
    body: Bytes,
) -> ApiResult {
    caller.require_admin()?;
    let body = j::object(&body)?;
    j::require_keys(&body, &["configure", "write", "read"], ",")?;
    if m.broker.vhost(&vhost).is_none() || m.broker.user(&user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let existed = permission_of(&m, &vhost, &user).is_some();
    m.broker.set_permissions(
        &user,
        &vhost,
        &j::required_text(&body, "configure")?,
        &j::required_text(&body, "write")?,
        &j::required_text(&body, "read")?,
    )?;
    Ok(super::put_answer(!existed))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub async fn delete_permission(
    Admin { m, .. }: Admin,
    Path((vhost, user)): PermissionPath,
) -> ApiResult {
    permission_of(&m, &vhost, &user).ok_or_else(ApiError::not_found)?;
    m.broker.clear_permissions(&user, &vhost)?;
    Ok(super::no_content())
}
