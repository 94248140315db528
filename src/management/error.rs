//! API errors in RabbitMQ's shape: a status code and `{"error": ..., "reason": ...}`.
//! Refusals are 401 with `WWW-Authenticate`, as RabbitMQ answers them (rabbitmqadmin
//! prints "Access refused" on 401; it has no handling for 403).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::core::{CoreError, ErrorKind};

/// The realm RabbitMQ's management plugin announces.
const REALM: &str = "Basic realm=\"RabbitMQ Management\"";

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Status code.
    pub status: StatusCode,
    /// `error` field; `None` answers without a body (401 with no credentials).
    pub error: Option<&'static str>,
    /// `reason` field.
    pub reason: String,
}

/// Handler result.
pub type ApiResult<T = Response> = Result<T, ApiError>;

impl ApiError {
    /// 404 `{"error":"Object Not Found","reason":"Not Found"}`, for every missing object.
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: Some("Object Not Found"),
            reason: "Not Found".into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: Some("bad_request"),
            reason: reason.into(),
        }
    }

    /// 401 with no body: no credentials were sent.
    pub fn no_credentials() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: None,
            reason: String::new(),
        }
    }

    /// 401 `not_authorized` / `Login failed` (RabbitMQ spells this one with a z).
    pub fn login_failed() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: Some("not_authorized"),
            reason: "Login failed".into(),
        }
    }

    /// 401 `not_authorised` with `reason` (a tag or vhost refusal).
    pub fn refused(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: Some("not_authorised"),
            reason: reason.into(),
        }
    }

    /// 500.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: Some("internal_server_error"),
            reason: reason.into(),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e.kind() {
            ErrorKind::NotFound => Self::not_found(),
            // RabbitMQ words every permission refusal the same way over HTTP.
            ErrorKind::AccessRefused | ErrorKind::NotAllowed => Self::refused("Access refused."),
            ErrorKind::Internal | ErrorKind::ResourceError => Self::internal(e.to_string()),
            // A refused declare or delete (inequivalent arguments, if-empty, a locked
            // exclusive queue, a bad argument) is 400 with the AMQP reply's text.
            ErrorKind::PreconditionFailed
            | ErrorKind::ResourceLocked
            | ErrorKind::CommandInvalid
            | ErrorKind::NotImplemented
            | ErrorKind::AlreadyExists => Self::bad_request(e.to_string()),
        }
    }
}

impl ApiError {
    /// 404 `{"error":"not_found","reason":"vhost_not_found"}`: a PUT into a missing vhost.
    pub fn vhost_not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: Some("not_found"),
            reason: "vhost_not_found".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = match self.error {
            Some(error) => (
                self.status,
                axum::Json(serde_json::json!({ "error": error, "reason": self.reason })),
            )
                .into_response(),
            None => self.status.into_response(),
        };
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        }
        response
    }
}
