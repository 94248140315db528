//! HTTP placeholder.
#![allow(missing_docs)]
use crate::config::Config;
use crate::core::Broker;
use crate::server::Bound;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
pub async fn serve(
    _l: TcpListener,
    _b: Broker,
    _c: Arc<Config>,
    _bound: Bound,
    s: CancellationToken,
    _t: TaskTracker,
) {
    s.cancelled().await
}
