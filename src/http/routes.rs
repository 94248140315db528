//! The metrics listener's routes: `/metrics` (Prometheus text exposition, see
//! [`super::metrics`]) and `/healthz` (`ok`), served by [`super::server`]. Anything
//! else is 404; other methods on these paths 405 with `Allow`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exposition::CONTENT_TYPE;

use super::metrics::Metrics;

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route(
            "/healthz",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    "ok\n",
                )
            }),
        )
        .fallback(|| async {
            super::json_error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
        })
        .with_state(Arc::new(metrics));
    super::serve(listener, router, shutdown, tracker).await;
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    let mut body = String::with_capacity(64 * 1024);
    metrics.render(&mut body);
    if let Some(gw) = crate::upstream::current() {
        gw.render(&mut body, metrics.prefix());
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
