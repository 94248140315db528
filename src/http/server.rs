//! The HTTP serving stack both HTTP listeners share (metrics on 15692, management on
//! 15672): hyper's HTTP/1.1 connection handling under an axum [`Router`], one tracked
//! task per connection, graceful shutdown on the server's signal.
//!
//! Limits: the request head must arrive within [`READ_TIMEOUT`] and fit in
//! [`MAX_HEAD`] (hyper answers 431 beyond it, 400 on a malformed head); a path whose
//! percent-encoding is broken is answered 400 before routing, so handlers only ever
//! see decodable paths. Header names are written in title case (`Content-Type`), as
//! the old hand-written server did and as some scrapers' tests expect.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request head (request line + headers) accepted; hyper's minimum buffer.
pub const MAX_HEAD: usize = 16 * 1024;
/// Time allowed to send the request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an open connection gets to finish its request once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The client's address, put in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves `router` on `listener` until `shutdown` is cancelled; each connection is a
/// task on `tracker`, finishing its request in flight before it closes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let router = router.layer(axum::middleware::from_fn(check_path));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(peer));
                    let mut router = router.clone();
                    async move {
                        let req = req.map(Body::new);
                        tower_service::Service::call(&mut router, req).await
                    }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                // A client may shut its write side after the request (curl --no-buffer,
                // scrapers, the old server's tests): still answer it.
                .half_close(true)
                .title_case_headers(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
                }
            }
        });
    }
}

/// Answers 400 to a path with a malformed `%XX` escape or one that decodes to invalid
/// UTF-8 (RabbitMQ's body shape), so routing and extractors never meet one.
async fn check_path(req: Request, next: Next) -> Response {
    if percent_decode(req.uri().path()).is_none() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad percent-encoding in path",
        );
    }
    next.run(req).await
}

/// A JSON error body in the management API's shape.
pub fn json_error(status: StatusCode, error: &str, reason: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": error, "reason": reason })),
    )
        .into_response()
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `qgate@<hostname>`, the node name both HTTP front ends report.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("qgate@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(
            percent_decode("/api/queues/%2F/a%20b").unwrap(),
            "/api/queues///a b"
        );
        assert!(percent_decode("/%zz").is_none());
        assert!(percent_decode("/%e2%82").is_none());
        assert!(percent_decode("/%2").is_none());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,64}") {
            let _ = percent_decode(&s);
        }
    }
}
