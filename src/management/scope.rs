//! What a handler knows of its request before its own work starts: the shared state,
//! the authenticated caller, what the caller's tags allow, and the vhost the path
//! names. Each extractor refuses in the order the handlers used to check by hand:
//! credentials (401), then the tag (401 "Not administrator user" / "Not monitor
//! user") or the vhost (404 when it does not exist, then 401 when the caller has no
//! permissions on it). (A path that does not decode never gets this far: the
//! listener answers it 400 before routing.)
//!
//! A handler that reads a body judges the body first, as it always has: a declare, a
//! publish or a get takes [`WithBody`] and calls [`Mgmt::visible_vhost`] once it has
//! read what it needs of the body, and an administrator-only PUT takes [`Api`] and
//! checks the tag after reading (so an oversized body is 413 whoever sends it).
//! RabbitMQ 3.10.8 differs here: it checks the vhost before it reads the body (and
//! before the `q`/`e` of a bindings path); qgate's order is older than this module
//! and is kept as it was.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::{json as j, Mgmt};
use crate::core::{Permission, Resource, VHost};

/// Any management user.
pub struct Api {
    /// The shared state.
    pub m: Arc<Mgmt>,
    /// Who asks.
    pub caller: Caller,
}

/// An administrator.
pub struct Admin {
    /// The shared state.
    pub m: Arc<Mgmt>,
    /// Who asks.
    pub caller: Caller,
}

/// An administrator or monitoring user.
pub struct Monitor {
    /// The shared state.
    pub m: Arc<Mgmt>,
    /// Who asks.
    pub caller: Caller,
}

/// A request with a JSON object body (an empty body reads as `{}`) and the path
/// parameters `P`, refused in the order the handlers used to check by hand:
/// credentials (401), a body over the size limit (413), a body that is not an object
/// (400 `not_json`). The handler checks the vhost after whatever else it reads of the
/// body.
pub struct WithBody<P>(
    /// The shared state and the caller.
    pub Api,
    /// The path's parameters.
    pub P,
    /// The body.
    pub Map<String, Value>,
);

/// A request about the `{vhost}` of its path, which exists and the caller may use.
pub struct InVhost {
    /// The shared state.
    pub m: Arc<Mgmt>,
    /// Who asks.
    pub caller: Caller,
    /// The vhost the path names.
    pub vhost: Arc<VHost>,
}

/// A list request: over every vhost the caller sees (`/api/queues`), or over the one
/// the path names (`/api/queues/{vhost}`), checked as for [`InVhost`].
pub struct Scope {
    /// The shared state.
    pub m: Arc<Mgmt>,
    /// Who asks.
    pub caller: Caller,
    /// The vhost the path names, if it names one.
    pub vhost: Option<Arc<VHost>>,
}

impl InVhost {
    /// Checks a configure / write / read permission on a resource of the vhost.
    pub fn permit(&self, perm: Permission, resource: Resource<'_>) -> Result<(), ApiError> {
        self.caller
            .permit(&self.m, &self.vhost.name, perm, resource)
    }
}

impl Scope {
    /// A list over the scope's vhosts: each vhost's `objects`, sorted by `name`, each
    /// shown as the JSON values `show` makes of it (one object, or several, such as a
    /// queue's consumers).
    pub fn list<T, I>(
        &self,
        objects: impl Fn(&VHost) -> Vec<T>,
        name: for<'a> fn(&'a T) -> &'a str,
        show: impl Fn(&VHost, &T) -> I,
    ) -> Value
    where
        I: IntoIterator<Item = Value>,
    {
        let mut out = Vec::new();
        for v in self.vhosts() {
            let mut items = objects(&v);
            items.sort_by(|a, b| name(a).cmp(name(b)));
            out.extend(items.iter().flat_map(|item| show(&v, item)));
        }
        Value::Array(out)
    }

    /// The vhosts listed, sorted by name: every one the caller sees, or the one named.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        match &self.vhost {
            Some(v) => vec![v.clone()],
            None => {
                let mut all = self.m.vhosts();
                all.retain(|v| self.caller.sees(&self.m, &v.name));
                all
            }
        }
    }
}

impl Mgmt {
    /// The vhost named in a path, when it exists (404 otherwise) and `caller` may use it
    /// (401 otherwise).
    pub fn visible_vhost(&self, caller: &Caller, name: &str) -> Result<Arc<VHost>, ApiError> {
        self.visible_vhost_or(caller, name, ApiError::not_found)
    }

    /// As [`Mgmt::visible_vhost`], answering `missing()` for a vhost that does not exist
    /// (a PUT answers `vhost_not_found`, as RabbitMQ).
    pub fn visible_vhost_or(
        &self,
        caller: &Caller,
        name: &str,
        missing: fn() -> ApiError,
    ) -> Result<Arc<VHost>, ApiError> {
        let v = self.broker.vhost(name).ok_or_else(missing)?;
        caller.require_vhost(self, name)?;
        Ok(v)
    }
}

/// The caller, refused as [`Caller`] refuses, and then unless `allowed`.
async fn authenticated(
    parts: &mut Parts,
    m: &Arc<Mgmt>,
    allowed: fn(&Caller) -> Result<(), ApiError>,
) -> Result<Api, ApiError> {
    let caller = Caller::from_request_parts(parts, m).await?;
    allowed(&caller)?;
    Ok(Api {
        m: m.clone(),
        caller,
    })
}

/// Any management user may.
fn anyone(_: &Caller) -> Result<(), ApiError> {
    Ok(())
}

/// The caller and the vhost the path names, if any, checked.
async fn scoped(parts: &mut Parts, m: &Arc<Mgmt>) -> Result<Scope, Response> {
    let Api { m, caller } = authenticated(parts, m, anyone)
        .await
        .map_err(IntoResponse::into_response)?;
    // Cannot fail: every matched route has its parameters, and the listener refused
    // paths that do not decode before routing.
    let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, &m)
        .await
        .map_err(IntoResponse::into_response)?;
    let vhost = match params.iter().find(|(k, _)| k == "vhost") {
        Some((_, name)) => Some(
            m.visible_vhost(&caller, name)
                .map_err(IntoResponse::into_response)?,
        ),
        None => None,
    };
    Ok(Scope { m, caller, vhost })
}

impl<P: DeserializeOwned + Send> FromRequest<Arc<Mgmt>> for WithBody<P> {
    type Rejection = Response;

    async fn from_request(req: Request, m: &Arc<Mgmt>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Api { m, caller } = authenticated(&mut parts, m, anyone)
            .await
            .map_err(IntoResponse::into_response)?;
        let Path(path) = Path::<P>::from_request_parts(&mut parts, &m)
            .await
            .map_err(IntoResponse::into_response)?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), &m)
            .await
            .map_err(IntoResponse::into_response)?;
        let body = j::object(&bytes).map_err(IntoResponse::into_response)?;
        Ok(WithBody(Api { m, caller }, path, body))
    }
}

impl FromRequestParts<Arc<Mgmt>> for Api {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Mgmt>) -> Result<Self, ApiError> {
        authenticated(parts, m, anyone).await
    }
}

impl FromRequestParts<Arc<Mgmt>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Mgmt>) -> Result<Self, ApiError> {
        let Api { m, caller } = authenticated(parts, m, Caller::require_admin).await?;
        Ok(Admin { m, caller })
    }
}

impl FromRequestParts<Arc<Mgmt>> for Monitor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Mgmt>) -> Result<Self, ApiError> {
        let Api { m, caller } = authenticated(parts, m, Caller::require_monitor).await?;
        Ok(Monitor { m, caller })
    }
}

impl FromRequestParts<Arc<Mgmt>> for Scope {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Mgmt>) -> Result<Self, Response> {
        scoped(parts, m).await
    }
}

impl FromRequestParts<Arc<Mgmt>> for InVhost {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Mgmt>) -> Result<Self, Response> {
        let Scope { m, caller, vhost } = scoped(parts, m).await?;
        // Only routes with a `{vhost}` segment take this extractor.
        let vhost = vhost.ok_or_else(|| ApiError::not_found().into_response())?;
        Ok(InVhost { m, caller, vhost })
    }
}
