//! The metrics listener's routes: `/metrics` (Prometheus text exposition, see
//! [`super::render`]) and `/healthz` (`ok`), served by [`crate::http`]. Anything else
//! is 404; other methods on these paths 405 with `Allow`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::Broker;

use super::render;

/// How often the recorder's histograms are drained when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What the handlers see.
struct Ctx {
    broker: Broker,
    config: Arc<Config>,
    node: String,
    /// Byte totals of closed connections, kept across scrapes.
    closed: render::ClosedConnections,
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    config: Arc<Config>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    if let Some(handle) = super::recorder() {
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
    }
    let ctx = Arc::new(Ctx {
        broker,
        config,
        node: crate::http::node_name(),
        closed: render::ClosedConnections::default(),
    });
    let router = Router::new()
        .route("/metrics", get(metrics))
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
            crate::http::json_error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
        })
        .with_state(ctx);
    crate::http::serve(listener, router, shutdown, tracker).await;
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let recorded = super::recorder().map(|h| h.render());
    let mut body = String::with_capacity(64 * 1024);
    render::render(
        &mut body,
        &ctx.broker,
        &render::Scrape {
            prefix: &ctx.config.http.metrics_prefix,
            data_dir: &ctx.config.storage.data_dir,
            node: &ctx.node,
        },
        super::memcache_counters(),
        Some(&ctx.closed),
        recorded.as_deref(),
    );
    if let Some(gw) = crate::upstream::current() {
        gw.render(&mut body, &ctx.config.http.metrics_prefix);
    }
    ([(header::CONTENT_TYPE, render::CONTENT_TYPE)], body).into_response()
}
