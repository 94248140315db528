//! The management listener (default 127.0.0.1:15672): RabbitMQ's management HTTP API,
//! authenticated, and the web console's assets, on axum over hyper ([`crate::http`]).
//!
//! # Layout
//! - [`auth`]: Basic auth and the `qgate ctl` cookie; RabbitMQ's tag rules.
//! - [`error`]: RabbitMQ's error bodies and status codes.
//! - [`json`]: lenient request bodies, field tables to and from JSON.
//! - [`rates`]: the sampler behind every `*_details.rate`.
//! - [`overview`]: overview, whoami, aliveness, definitions, `qgate/stop`.
//! - [`health`]: nodes, cluster name, `/api/health/checks/*`.
//! - [`queues`], [`exchanges`], [`bindings`], [`connections`] (also channels and
//!   consumers), [`access`] (users, vhosts, permissions): one file per resource.
//! - [`scope`]: who asks, what their tags allow and which vhost the path names, as
//!   extractors, each refusing in one fixed order.
//! - [`query`]: `columns`, `sort`, `name` and paging on any list.
//! - [`static_files`]: every other GET: the web console ([`console`]).
//!
//! Paths, methods, field names and types, status codes and error bodies are
//! RabbitMQ 3.10's; the vhost `/` is `%2F` in paths, and the default exchange is
//! `amq.default`.

pub mod access;
pub mod auth;
pub mod bindings;
pub mod connections;
pub mod console;
pub mod error;
pub mod exchanges;
pub mod health;
pub mod json;
pub mod overview;
pub mod query;
pub mod queues;
pub mod rates;
pub mod scope;
pub mod static_files;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::{Broker, VHost};
use crate::http::Bound;

use error::ApiError;

/// Largest request body (RabbitMQ's `management.http.max_body_size` default, 20 MiB).
pub const MAX_BODY: usize = 20 * 1024 * 1024;

/// What every handler sees.
pub struct Mgmt {
    /// The broker.
    pub broker: Broker,
    /// Settings.
    pub config: Arc<Config>,
    /// Where every listener is bound.
    pub bound: Bound,
    /// `qgate@<host>`.
    pub node: String,
    /// The server's shutdown signal (`POST /api/qgate/stop` fires it).
    pub shutdown: CancellationToken,
    /// The local `qgate ctl` token, when it could be written.
    pub cookie: Option<String>,
    /// Sampled rates.
    pub rates: rates::Rates,
}

impl Mgmt {
    /// A vhost named in a path, or 404.
    pub fn vhost(&self, name: &str) -> Result<Arc<VHost>, ApiError> {
        self.broker.vhost(name).ok_or_else(ApiError::not_found)
    }

    /// Every vhost, sorted by name.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut v = self.broker.vhosts();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// A JSON 200 response.
pub fn ok_json(v: serde_json::Value) -> Response {
    axum::Json(v).into_response()
}

/// 201 Created (a PUT that made something new), as RabbitMQ answers.
pub fn created() -> Response {
    StatusCode::CREATED.into_response()
}

/// 204 No Content (a PUT that changed an existing object, a DELETE).
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A PUT's answer: 201 when it made the object, 204 when the object was there.
pub fn put_answer(created: bool) -> Response {
    if created {
        self::created()
    } else {
        no_content()
    }
}

/// The API's routes.
pub fn router(mgmt: Arc<Mgmt>) -> Router {
    use access as a;
    use bindings as b;
    use connections as c;
    use exchanges as e;
    use overview as o;
    use queues as q;
    let api = Router::new()
        .route("/overview", get(o::overview))
        .route("/whoami", get(o::whoami))
        .route("/healthchecks/node", get(o::healthcheck))
        .route("/aliveness-test/{vhost}", get(o::aliveness))
        .route("/nodes", get(health::nodes))
        .route("/nodes/{node}", get(health::node))
        .route("/cluster-name", get(health::cluster_name))
        .route("/health/checks/alarms", get(health::check_alarms))
        .route(
            "/health/checks/local-alarms",
            get(health::check_local_alarms),
        )
        .route("/health/checks/virtual-hosts", get(health::check_vhosts))
        .route(
            "/health/checks/node-is-quorum-critical",
            get(health::check_not_critical),
        )
        .route(
            "/health/checks/node-is-mirror-sync-critical",
            get(health::check_not_critical),
        )
        .route(
            "/health/checks/port-listener/{port}",
            get(health::check_port),
        )
        .route(
            "/health/checks/protocol-listener/{protocol}",
            get(health::check_protocol),
        )
        .route("/definitions", get(o::export).post(o::import))
        .route("/qgate/stop", post(o::stop))
        .route("/qgate/limits", get(health::limits))
        .route("/upstream", get(o::upstream))
        .route("/vhosts", get(a::vhosts))
        .route(
            "/vhosts/{vhost}",
            get(a::vhost).put(a::put_vhost).delete(a::delete_vhost),
        )
        .route("/vhosts/{vhost}/permissions", get(a::vhost_permissions))
        .route("/users", get(a::users))
        .route(
            "/users/{user}",
            get(a::user).put(a::put_user).delete(a::delete_user),
        )
        .route("/users/{user}/permissions", get(a::user_permissions))
        .route("/permissions", get(a::permissions))
        .route(
            "/permissions/{vhost}/{user}",
            get(a::permission)
                .put(a::put_permission)
                .delete(a::delete_permission),
        )
        .route("/queues", get(q::list))
        .route("/queues/{vhost}", get(q::list))
        .route(
            "/queues/{vhost}/{queue}",
            get(q::one).put(q::declare).delete(q::delete),
        )
        .route(
            "/queues/{vhost}/{queue}/contents",
            axum::routing::delete(q::purge),
        )
        .route("/queues/{vhost}/{queue}/get", post(q::get_messages))
        .route("/queues/{vhost}/{queue}/bindings", get(q::bindings))
        .route("/exchanges", get(e::list))
        .route("/exchanges/{vhost}", get(e::list))
        .route(
            "/exchanges/{vhost}/{exchange}",
            get(e::one).put(e::declare).delete(e::delete),
        )
        .route("/exchanges/{vhost}/{exchange}/publish", post(e::publish))
        .route(
            "/exchanges/{vhost}/{exchange}/bindings/source",
            get(e::bindings_source),
        )
        .route(
            "/exchanges/{vhost}/{exchange}/bindings/destination",
            get(e::bindings_destination),
        )
        .route("/bindings", get(b::list))
        .route("/bindings/{vhost}", get(b::list))
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(b::between).post(b::create),
        )
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(b::one).delete(b::delete),
        )
        .route("/connections", get(c::connections))
        .route("/connections/{name}", get(c::connection).delete(c::close))
        .route("/connections/{name}/channels", get(c::connection_channels))
        .route("/vhosts/{vhost}/connections", get(c::connections))
        .route("/channels", get(c::channels))
        .route("/channels/{name}", get(c::channel))
        .route("/consumers", get(c::consumers))
        .route("/consumers/{vhost}", get(c::consumers))
        .fallback(|| async { ApiError::not_found() })
        .layer(axum::middleware::from_fn(query::apply))
        .layer(axum::middleware::from_fn(same_origin))
        .layer(axum::middleware::from_fn(json_rejections));
    Router::new()
        .nest("/api", api)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(mgmt)
}

/// Refuses a state-changing request that a browser sent from another site (its
/// `Origin` names another host than `Host`): browsers resend cached Basic credentials,
/// so without this any page could POST to the API. Tools (rabbitmqadmin, curl, ctl)
/// send no `Origin`; the console's own requests carry this listener's.
async fn same_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        if let Some(origin) = req.headers().get(axum::http::header::ORIGIN) {
            let host = req
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let from = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, rest)| rest.trim_end_matches('/'));
            if !from.is_some_and(|f| f.eq_ignore_ascii_case(host)) {
                return (
                    StatusCode::FORBIDDEN,
                    axum::Json(serde_json::json!({
                        "error": "forbidden",
                        "reason": "cross-origin request refused",
                    })),
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// axum's own refusals (a body over [`MAX_BODY`]: 413, a malformed query string: 400)
/// are plain text; the API answers JSON in RabbitMQ's shape throughout.
async fn json_rejections(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() && plain) {
        return response;
    }
    let reason = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        _ => "bad_request",
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": error, "reason": reason })),
    )
        .into_response()
}

/// Outside `/api/`: GET and HEAD are the console's; anything else 405.
async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    if method == Method::GET || method == Method::HEAD {
        static_files::serve(uri).await
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(axum::http::header::ALLOW, "GET, HEAD")],
        )
            .into_response()
    }
}

/// Writes a fresh `qgate ctl` cookie into the data directory; `None` (with a warning)
/// when it cannot. The server calls this before the management listener logs its
/// `listening` line, so whoever waits for that line finds the cookie.
pub fn prepare_cookie(config: &Config) -> Option<String> {
    match auth::write_cookie(&config.storage.data_dir) {
        Ok(token) => Some(token),
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the qgate ctl cookie; ctl needs --user/--password");
            None
        }
    }
}

/// Serves the management API on `listener` until `shutdown`, sampling rates while it
/// runs; `cookie` is the token [`prepare_cookie`] wrote.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    config: Arc<Config>,
    bound: Bound,
    cookie: Option<String>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mgmt = Arc::new(Mgmt {
        broker,
        config,
        bound,
        node: crate::http::node_name(),
        shutdown: shutdown.clone(),
        cookie,
        rates: rates::Rates::default(),
    });
    tracker.spawn(rates::run(mgmt.clone(), shutdown.clone()));
    crate::http::serve(listener, router(mgmt), shutdown, tracker).await;
}
