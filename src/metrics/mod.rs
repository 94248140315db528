//! Observability: the HTTP listener serving Prometheus metrics and `/healthz` (the
//! management API lives on its own listener, [`crate::management`]).
//!
//! # Layout
//! - [`routes`]: `/metrics` and `/healthz` on the shared HTTP stack ([`crate::http`]).
//! - [`render`]: the Prometheus text exposition, version 0.0.4.
//! - this file: metric names, the memcache command counters, and the process-wide
//!   `metrics` recorder.
//!
//! # Where the numbers come from
//! Almost every number is read from the core when scraped: queue depths
//! ([`crate::core::Queue::depth`]), per-queue totals ([`crate::core::stats::QueueCounters`]),
//! broker totals ([`crate::core::BrokerCounters`]), open connections
//! ([`crate::core::Broker::connections`]) and the memcache front end's
//! [`MemcacheCounters`]. The hot path pays one
//! relaxed atomic add per counter and nothing else: no `metrics` macro is called per
//! message.
//!
//! The `metrics` facade (with `metrics-exporter-prometheus` as the recorder) is kept for
//! what is event-like and rare, such as the store's fsyncs ([`STORE_FSYNC_SECONDS`],
//! [`STORE_FSYNCS_TOTAL`]). Code records those under their literal `qgate_` names; the
//! exporter renames them to the configured prefix when it renders.
//!
//! # Names
//! Names follow RabbitMQ's `rabbitmq_prometheus` plugin under a configurable prefix
//! (`--metrics-prefix`, default `qgate`): with prefix `rabbitmq` the stock Grafana
//! "RabbitMQ-Overview" dashboard works. The constants below are the names without the
//! prefix; see [`render`] for the full list with types and help texts.

pub mod render;
pub mod routes;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Prefix under which code records `metrics` macros; replaced by the configured prefix.
pub const RECORDED_PREFIX: &str = "qgate_";

/// Store fsync latency histogram (seconds), recorded by the store with `metrics::histogram!`.
pub const STORE_FSYNC_SECONDS: &str = "qgate_store_fsync_seconds";
/// Store fsyncs counter, recorded by the store with `metrics::counter!`.
pub const STORE_FSYNCS_TOTAL: &str = "qgate_store_fsyncs_total";

/// Buckets of [`STORE_FSYNC_SECONDS`] (100 µs .. 1 s).
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Per-queue gauge: messages ready for delivery.
pub const QUEUE_MESSAGES_READY: &str = "queue_messages_ready";
/// Per-queue gauge: messages delivered and not yet acknowledged.
pub const QUEUE_MESSAGES_UNACKED: &str = "queue_messages_unacked";
/// Per-queue gauge: ready + unacked.
pub const QUEUE_MESSAGES: &str = "queue_messages";
/// Per-queue gauge: consumers.
pub const QUEUE_CONSUMERS: &str = "queue_consumers";
/// Broker counter: messages received from publishers.
pub const GLOBAL_MESSAGES_RECEIVED_TOTAL: &str = "global_messages_received_total";

/// The memcache front end's counters (kept by the memcache session, one relaxed atomic
/// add per command), rendered as `<prefix>_memcache_commands_total{command, result}`.
pub use crate::memcache::stats::MemcacheCounters;

/// The process-wide memcache counters (one memcache front end per process; tests that
/// run several brokers in one process see the sum).
pub use crate::memcache::stats::counters as memcache_counters;

/// Installs the Prometheus recorder as the global `metrics` recorder, once per process,
/// and returns its handle. Returns `None` when another recorder was installed first
/// (then only the scrape-time families are served). Safe to call from every broker.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(STORE_FSYNC_SECONDS.into()),
                    &FSYNC_BUCKETS,
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe_all();
            Some(handle)
        })
        .as_ref()
}

/// Describes (and registers, so they are rendered from the first scrape) the metrics
/// recorded through the `metrics` facade.
fn describe_all() {
    metrics::describe_histogram!(
        STORE_FSYNC_SECONDS,
        metrics::Unit::Seconds,
        "Latency of the store's fsync calls."
    );
    metrics::describe_counter!(STORE_FSYNCS_TOTAL, "fsync calls made by the store.");
    let _ = metrics::histogram!(STORE_FSYNC_SECONDS);
    let _ = metrics::counter!(STORE_FSYNCS_TOTAL);
}
