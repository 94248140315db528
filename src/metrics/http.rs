//! The HTTP listener: a small HTTP/1.1 server on tokio serving `/metrics`, `/healthz`
//! and the admin API under `/api/`.
//!
//! Wire format: one request per connection (`Connection: close` on every response).
//! The request head is read up to [`MAX_HEAD`] bytes within [`READ_TIMEOUT`]; anything
//! longer gets 431, anything malformed 400. Only `GET` is served (405 with
//! `Allow: GET` otherwise); a body is never read. No input makes the server panic.
//!
//! Task model: one accept loop, one task per connection, both registered with the
//! server's [`TaskTracker`] and stopped by its [`CancellationToken`]. A small upkeep
//! task drains the `metrics` recorder's histograms so they never grow unscraped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::Broker;
use crate::server::Bound;

use super::{api, render};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time allowed to send the request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to write a response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the recorder's histograms are drained when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What every request handler sees.
#[derive(Clone)]
pub struct Ctx {
    /// The broker.
    pub broker: Broker,
    /// Configuration.
    pub config: Arc<Config>,
    /// Bound listener addresses.
    pub bound: Bound,
    /// Node name (`qgate@<hostname>`).
    pub node: Arc<str>,
    /// Byte totals of closed connections, kept across scrapes.
    pub closed: Arc<render::ClosedConnections>,
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers, each `Name: value`.
    pub headers: Vec<(&'static str, &'static str)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// A response with a body.
    pub fn new(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// A JSON error in the management API's shape.
    pub fn error(status: u16, reason: &str) -> Self {
        let error = match status {
            400 => "bad_request",
            404 => "Object Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "error",
        };
        let body = serde_json::json!({ "error": error, "reason": reason }).to_string();
        Self::new(status, "application/json", body)
    }

    /// The response as bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Serves HTTP on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    config: Arc<Config>,
    bound: Bound,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let recorder = super::recorder();
    if let Some(handle) = recorder {
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
    let ctx = Ctx {
        broker,
        config,
        bound,
        node: node_name().into(),
        closed: Arc::default(),
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = connection(stream, ctx) => {}
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `qgate@<hostname>`.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("qgate@{host}")
}

async fn connection(mut stream: TcpStream, ctx: Ctx) {
    let _ = stream.set_nodelay(true);
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Response::error(408, "request head not received in time"),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => Response::error(431, "request head too large"),
        Ok(Ok(head)) => match parse_request(&head) {
            Err(reason) => Response::error(400, reason),
            Ok(req) => handle(&ctx, &req),
        },
    };
    let bytes = response.encode();
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

enum HeadError {
    Closed,
    TooLarge,
}

/// Reads until the blank line ending the request head; returns the head without it.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_blank_line(&buf[searched_from..]) {
            buf.truncate(searched_from + end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Offset of the head's end (`\r\n\r\n`, or a bare `\n\n`), if present.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Method, as sent.
    pub method: String,
    /// Percent-decoded path segments (the query string is ignored).
    pub path: Vec<String>,
    /// The raw path, for messages.
    pub raw_path: String,
}

/// Parses the request line of a head. Headers are accepted and ignored.
pub fn parse_request(head: &[u8]) -> Result<Request, &'static str> {
    let head = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let line = head.lines().next().ok_or("empty request")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("malformed method");
    }
    if !version.starts_with("HTTP/1.") {
        return Err("unsupported HTTP version");
    }
    let raw_path = target.split(['?', '#']).next().unwrap_or("");
    // Absolute-form targets (`http://host/path`) are legal in HTTP/1.1.
    let raw_path = match raw_path.strip_prefix("http://") {
        Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => raw_path,
    };
    if !raw_path.starts_with('/') {
        return Err("request target must be a path");
    }
    let path = raw_path
        .split('/')
        .skip(1)
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()
        .ok_or("bad percent-encoding in path")?;
    Ok(Request {
        method: method.to_owned(),
        path,
        raw_path: raw_path.to_owned(),
    })
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

/// Routes a request.
pub fn handle(ctx: &Ctx, req: &Request) -> Response {
    let path: Vec<&str> = req.path.iter().map(String::as_str).collect();
    // A trailing slash names the same resource.
    let path = match path.split_last() {
        Some((&"", rest)) if !rest.is_empty() => rest,
        _ => &path[..],
    };
    let known = matches!(path, ["metrics"] | ["healthz"]) || path.first() == Some(&"api");
    if !known {
        return Response::error(404, "Not Found");
    }
    if req.method != "GET" {
        let mut r = Response::error(405, "only GET is supported");
        r.headers.push(("Allow", "GET"));
        return r;
    }
    match path {
        ["metrics"] => metrics(ctx),
        ["healthz"] => Response::new(200, "text/plain; charset=utf-8", "ok\n".into()),
        ["api", rest @ ..] => api::handle(ctx, rest),
        _ => Response::error(404, "Not Found"),
    }
}

fn metrics(ctx: &Ctx) -> Response {
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
    Response::new(200, render::CONTENT_TYPE, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let r = parse_request(b"GET /api/queues/%2F/a%20b?x=1 HTTP/1.1\r\nHost: x").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, vec!["api", "queues", "/", "a b"]);
        assert!(parse_request(b"GET /x").is_err());
        assert!(parse_request(b"GET x HTTP/1.1").is_err());
        assert!(parse_request(b"get / HTTP/1.1").is_err());
        assert!(parse_request(b"GET /%zz HTTP/1.1").is_err());
        assert!(parse_request(b"GET /%e2%82 HTTP/1.1").is_err());
        assert!(parse_request(b"GET / HTTP/2").is_err());
        assert!(parse_request(b"\xff\xfe").is_err());
        assert!(parse_request(b"").is_err());
    }

    #[test]
    fn finds_end_of_head() {
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\r\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_request(&bytes);
        }
    }
}
