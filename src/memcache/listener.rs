//! The memcache accept loop: one task per connection, all stopped by the shutdown signal.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::Broker;

/// Accepts memcache clients until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    config: Arc<Config>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(super::session::run(
                        stream,
                        peer,
                        broker.clone(),
                        config.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
}
