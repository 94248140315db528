//! memcache accept loop (placeholder until the session lands).
#![allow(missing_docs)]
use crate::config::Config;
use crate::core::Broker;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
pub async fn serve(
    _l: TcpListener,
    _b: Broker,
    _c: Arc<Config>,
    s: CancellationToken,
    _t: TaskTracker,
) {
    s.cancelled().await
}
