//! The broker's families, read from the core when scraped: identity, broker-wide
//! totals, per-protocol and per-queue series, the message size histogram, the
//! process's resources and the limits in force.
//!
//! Families (without the prefix; `{...}` are labels):
//!
//! | name | type |
//! |------|------|
//! | `identity_info{<p>_node,<p>_cluster,<p>_endpoint}`, `build_info{<p>_version,product}` | gauge (1) |
//! | `erlang_uptime_seconds` (the name RabbitMQ dashboards query) | gauge |
//! | `queues`, `channels`, `consumers`, `global_consumers`, `global_publishers` | gauge |
//! | `channel_consumers`: consumers on all channels, as rabbitmq_prometheus serves it with per-object metrics off (the RabbitMQ-Overview dashboard sums it) | gauge |
//! | `connections{protocol}` | gauge |
//! | `global_messages_{received,received_confirm,routed,confirmed,delivered,delivered_consume_auto_ack,delivered_consume_manual_ack,delivered_get_auto_ack,delivered_get_manual_ack,get_empty,redelivered,acknowledged,unroutable_dropped,unroutable_returned}_total` | counter |
//! | `connections_{opened,closed}_total{protocol}`, `channels_{opened,closed}_total`, `queues_{declared,created,deleted}_total` | counter |
//! | `protocol_bytes_{received,sent}_total{protocol}`, `protocol_messages_{received,delivered}_total{protocol}` | counter |
//! | `message_size_bytes` | histogram |
//! | `queue_messages_ready`, `queue_messages_unacked`, `queue_messages`, `queue_consumers`, `queue_messages_paged_out`, `queue_messages_paged_out_bytes`, `queue_messages_ram`, `queue_messages_ram_bytes` `{vhost,queue}` | gauge |
//! | `queue_messages_{published,delivered,acked,redelivered,expired,dropped}_total{vhost,queue}` | counter |
//! | `process_resident_memory_bytes`, `resident_memory_limit_bytes`, `process_open_fds`, `process_max_fds`, `process_open_tcp_sockets`, `process_max_tcp_sockets`, `disk_space_available_bytes`, `disk_space_available_limit_bytes`, `alarms_free_disk_space_watermark` | gauge |
//! | `limit{limit}` (every configured limit, README "Limits and hardening"), `write_buffer_bytes` | gauge |
//!
//! Front ends add their own families through [`crate::exposition::Collector`] (the
//! memcache front end's `memcache_commands_total`), and the store's fsync series come
//! through the `metrics` facade ([`super::recorder`]).

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::core::stats::{protocol_totals, BrokerCounters, ProtocolTotals, MESSAGE_SIZE_BUCKETS};
use crate::core::{Broker, Queue, QueueDepth};
use crate::exposition::{Family, Writer};
use crate::http::process::{process_stats, ProcessStats};

/// `le` labels of [`MESSAGE_SIZE_BUCKETS`], spelled as rabbitmq_prometheus spells them
/// (dashboards select buckets by these exact strings).
const MESSAGE_SIZE_LE: [&str; MESSAGE_SIZE_BUCKETS.len()] = [
    "100.0", "1000.0", "10000.0", "100000.0", "1e+06", "1e+07", "5e+07", "1e+08",
];

/// A family with one series per row of a table (protocols, queues), valued by `value`.
type Column<T> = (Family, fn(&T) -> u64);

/// A table of [`Column`]s, one line each: `kind "name" "help" => value;`.
macro_rules! columns {
    ($($kind:ident $name:literal $help:literal => $value:expr;)*) => {
        [$((Family::$kind($name, $help), $value)),*]
    };
}

/// Writes each family of `columns` with one sample per row, labelled by `labels`.
fn table<T, const N: usize>(
    w: &mut Writer<'_>,
    columns: &[Column<T>],
    rows: &[T],
    labels: fn(&T) -> [(&'static str, &str); N],
) {
    for (family, value) in columns {
        w.family(family);
        for row in rows {
            w.sample(family, &labels(row), value(row));
        }
    }
}

/// Where the broker's families come from besides the broker.
#[derive(Debug, Clone)]
pub struct Source {
    /// The broker.
    pub broker: Broker,
    /// Data directory (for `disk_space_available_bytes`).
    pub data_dir: std::path::PathBuf,
    /// Node name for `identity_info`.
    pub node: String,
}

impl Source {
    /// Writes the families before the front ends' ones: identity, global, protocols.
    pub(super) fn collect_head(&self, w: &mut Writer<'_>, queues: &[(Arc<Queue>, QueueDepth)]) {
        identity(w, &self.node, self.broker.uptime());
        global(w, &self.broker, queues);
        protocols(w, &protocol_totals(&self.broker));
    }

    /// Writes the families after the front ends' ones.
    pub(super) fn collect_tail(&self, w: &mut Writer<'_>, queues: &[(Arc<Queue>, QueueDepth)]) {
        message_size(w, &self.broker);
        queue_families(w, queues);
        process(w, &self.broker, &self.data_dir);
        limits(w, &self.broker);
    }
}

/// Every queue of every vhost with its depth, sorted by (vhost, name).
pub(super) fn queue_snapshot(broker: &Broker) -> Vec<(Arc<Queue>, QueueDepth)> {
    let mut queues: Vec<(Arc<Queue>, QueueDepth)> = broker
        .vhosts()
        .iter()
        .flat_map(|v| v.queues())
        .map(|q| {
            let d = q.depth();
            (q, d)
        })
        .collect();
    queues.sort_unstable_by(|(a, _), (b, _)| (&*a.vhost, &a.name).cmp(&(&*b.vhost, &b.name)));
    queues
}

const IDENTITY_INFO: Family = Family::gauge("identity_info", "Node and cluster identity.");
const UPTIME: Family = Family::gauge(
    "erlang_uptime_seconds",
    "Node uptime in seconds (named as rabbitmq_prometheus names it).",
);
const BUILD_INFO: Family = Family::gauge("build_info", "Version of the broker.");

fn identity(w: &mut Writer<'_>, node: &str, uptime: std::time::Duration) {
    let p = w.prefix();
    let node_label = format!("{p}_node");
    let cluster_label = format!("{p}_cluster");
    let endpoint_label = format!("{p}_endpoint");
    let version_label = format!("{p}_version");
    w.family(&IDENTITY_INFO);
    w.sample(
        &IDENTITY_INFO,
        &[
            (&node_label, node),
            (&cluster_label, node),
            (&endpoint_label, "per-object"),
        ],
        1u64,
    );
    w.single(&UPTIME, uptime.as_secs_f64());
    w.family(&BUILD_INFO);
    w.sample(
        &BUILD_INFO,
        &[
            (&version_label, env!("CARGO_PKG_VERSION")),
            ("product", "qgate"),
        ],
        1u64,
    );
}

const QUEUES: Family = Family::gauge("queues", "Queues available.");
const CHANNELS: Family = Family::gauge("channels", "Channels currently open.");
const CONSUMERS: Family = Family::gauge("consumers", "Consumers currently connected.");
const GLOBAL_CONSUMERS: Family = Family::gauge("global_consumers", "Current number of consumers.");
const CHANNEL_CONSUMERS: Family = Family::gauge("channel_consumers", "Consumers on a channel");
const GLOBAL_PUBLISHERS: Family =
    Family::gauge("global_publishers", "Current number of publishers.");

/// The broker-wide counters, in the order served.
const GLOBAL_COUNTERS: [Column<BrokerCounters>; 19] = columns! {
    counter "global_messages_received_total" "Total number of messages received from publishers." => |c| c.messages_received.get();
    counter "global_messages_received_confirm_total" "Total number of messages received from publishers expecting confirmations." => |c| c.messages_received_confirm.get();
    counter "global_messages_routed_total" "Total number of messages routed to queues." => |c| c.messages_routed.get();
    counter "global_messages_confirmed_total" "Total number of messages confirmed to publishers." => |c| c.messages_confirmed.get();
    counter "global_messages_delivered_total" "Total number of messages delivered to consumers." => |c| { c.delivered_consume_auto_ack.get() + c.delivered_consume_manual_ack.get() + c.delivered_get_auto_ack.get() + c.delivered_get_manual_ack.get() };
    counter "global_messages_delivered_consume_auto_ack_total" "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment." => |c| c.delivered_consume_auto_ack.get();
    counter "global_messages_delivered_consume_manual_ack_total" "Total number of messages delivered to consumers using basic.consume with manual acknowledgment." => |c| c.delivered_consume_manual_ack.get();
    counter "global_messages_delivered_get_auto_ack_total" "Total number of messages delivered to consumers using basic.get with automatic acknowledgment." => |c| c.delivered_get_auto_ack.get();
    counter "global_messages_delivered_get_manual_ack_total" "Total number of messages delivered to consumers using basic.get with manual acknowledgment." => |c| c.delivered_get_manual_ack.get();
    counter "global_messages_get_empty_total" "Total number of times basic.get operations fetched no message." => |c| c.get_empty.get();
    counter "global_messages_redelivered_total" "Total number of messages redelivered to consumers." => |c| c.redelivered.get();
    counter "global_messages_acknowledged_total" "Total number of message acknowledgements received from consumers." => |c| c.acknowledged.get();
    counter "global_messages_unroutable_dropped_total" "Total number of messages published as non-mandatory into an exchange and dropped as unroutable." => |c| c.unroutable_dropped.get();
    counter "global_messages_unroutable_returned_total" "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable." => |c| c.unroutable_returned.get();
    counter "channels_opened_total" "Total number of channels opened." => |c| c.lifecycle.channels_opened.get();
    counter "channels_closed_total" "Total number of channels closed." => |c| c.lifecycle.channels_closed.get();
    counter "queues_declared_total" "Total number of queues declared." => |c| c.queues_declared.get();
    counter "queues_created_total" "Total number of queues created." => |c| c.queues_created.get();
    counter "queues_deleted_total" "Total number of queues deleted." => |c| c.queues_deleted.get();
};

fn global(w: &mut Writer<'_>, broker: &Broker, queues: &[(Arc<Queue>, QueueDepth)]) {
    let c = broker.counters();
    let channels: u64 = broker
        .connections()
        .iter()
        .map(|c| u64::from(c.channels.load(Relaxed)))
        .sum();
    let consumers: usize = queues.iter().map(|(_, d)| d.consumers).sum();
    w.single(&QUEUES, queues.len());
    w.single(&CHANNELS, channels);
    w.single(&CONSUMERS, consumers);
    w.single(&GLOBAL_CONSUMERS, consumers);
    w.single(&CHANNEL_CONSUMERS, consumers);
    w.single(
        &GLOBAL_PUBLISHERS,
        c.lifecycle.publishers.load(Relaxed).max(0),
    );
    for (family, value) in &GLOBAL_COUNTERS {
        w.single(family, value(c));
    }
}

/// The per-protocol families, in the order served (`connections` is the gauge).
const PROTOCOL_FAMILIES: [Column<ProtocolTotals>; 7] = columns! {
    gauge "connections" "Connections currently open." => |t| t.connections;
    counter "connections_opened_total" "Total number of connections opened." => |t| t.connections_opened;
    counter "connections_closed_total" "Total number of connections closed or terminated." => |t| t.connections_closed;
    counter "protocol_messages_received_total" "Total number of messages received from publishers, by front end." => |t| t.messages_received;
    counter "protocol_messages_delivered_total" "Total number of messages delivered to consumers, by front end." => |t| t.messages_delivered;
    counter "protocol_bytes_received_total" "Total number of bytes received from clients, by front end." => |t| t.bytes_received;
    counter "protocol_bytes_sent_total" "Total number of bytes sent to clients, by front end." => |t| t.bytes_sent;
};

fn protocols(w: &mut Writer<'_>, totals: &[ProtocolTotals]) {
    table(w, &PROTOCOL_FAMILIES, totals, |t| {
        [("protocol", t.protocol)]
    });
}

const MESSAGE_SIZE: Family = Family::histogram(
    "message_size_bytes",
    "Size of messages received from publishers.",
);

fn message_size(w: &mut Writer<'_>, broker: &Broker) {
    let h = &broker.counters().lifecycle.message_size;
    let buckets = h.buckets();
    w.family(&MESSAGE_SIZE);
    let mut cumulative = 0u64;
    for (i, le) in MESSAGE_SIZE_LE.iter().enumerate() {
        cumulative += buckets[i];
        w.sample_of(&MESSAGE_SIZE, "_bucket", &[("le", le)], cumulative);
    }
    cumulative += buckets[MESSAGE_SIZE_BUCKETS.len()];
    w.sample_of(&MESSAGE_SIZE, "_bucket", &[("le", "+Inf")], cumulative);
    w.sample_of(&MESSAGE_SIZE, "_sum", &[], h.sum());
    w.sample_of(&MESSAGE_SIZE, "_count", &[], cumulative);
}

/// The per-queue families, in the order served.
const QUEUE_FAMILIES: [Column<(Arc<Queue>, QueueDepth)>; 14] = columns! {
    gauge "queue_messages_ready" "Messages ready to be delivered to consumers." => |(_, d)| d.ready as u64;
    gauge "queue_messages_unacked" "Messages delivered to consumers but not yet acknowledged." => |(_, d)| d.unacked as u64;
    gauge "queue_messages" "Sum of ready and unacknowledged messages - total queue depth." => |(_, d)| (d.ready + d.unacked) as u64;
    gauge "queue_consumers" "Consumers on a queue." => |(_, d)| d.consumers as u64;
    gauge "queue_messages_paged_out" "Messages paged out to disk." => |(_, d)| d.paged as u64;
    gauge "queue_messages_paged_out_bytes" "Size in bytes of messages paged out to disk." => |(_, d)| d.paged_bytes;
    gauge "queue_messages_ram" "Ready and unacknowledged messages stored in memory." => |(_, d)| (d.ready_ram + d.unacked) as u64;
    gauge "queue_messages_ram_bytes" "Size of ready messages stored in memory." => |(_, d)| d.ready_ram_bytes as u64;
    counter "queue_messages_published_total" "Total number of messages published to a queue." => |(q, _)| q.counters.published.get();
    counter "queue_messages_delivered_total" "Total number of messages delivered from a queue (consume and get)." => |(q, _)| q.counters.delivered.get();
    counter "queue_messages_acked_total" "Total number of messages acknowledged on a queue (automatic acknowledgements included)." => |(q, _)| q.counters.acked.get();
    counter "queue_messages_redelivered_total" "Total number of messages redelivered from a queue." => |(q, _)| q.counters.redelivered.get();
    counter "queue_messages_expired_total" "Total number of messages dropped from a queue because their TTL passed." => |(q, _)| q.counters.expired.get();
    counter "queue_messages_dropped_total" "Total number of messages dropped from the head of a queue over x-max-length." => |(q, _)| q.counters.dropped.get();
};

fn queue_families(w: &mut Writer<'_>, queues: &[(Arc<Queue>, QueueDepth)]) {
    table(w, &QUEUE_FAMILIES, queues, |(q, _)| {
        [("vhost", &*q.vhost), ("queue", &*q.name)]
    });
}

const LIMIT: Family = Family::gauge(
    "limit",
    "Configured limits (0 = no limit where a limit may be off).",
);
const WRITE_BUFFER: Family = Family::gauge(
    "write_buffer_bytes",
    "Bytes queued for clients and not yet written (counted in the memory alarm).",
);

/// The limits in force, one series each (0 = none where a limit may be off), and
/// what waits in the front ends' write buffers for slow clients.
fn limits(w: &mut Writer<'_>, broker: &Broker) {
    use crate::core::consumer::{WRITE_WINDOW, WRITE_WINDOW_BYTES};
    w.family(&LIMIT);
    for (name, value) in broker.limits().entries() {
        w.sample(&LIMIT, &[("limit", name)], value);
    }
    w.sample(
        &LIMIT,
        &[("limit", "consumer_write_window")],
        u64::from(WRITE_WINDOW),
    );
    w.sample(
        &LIMIT,
        &[("limit", "consumer_write_window_bytes")],
        WRITE_WINDOW_BYTES,
    );
    w.single(&WRITE_BUFFER, broker.flow().buffered());
}

/// What the process families read: the broker (alarms, watermarks) and the process's
/// resource use.
type ProcessRow = (Broker, ProcessStats);

/// The process families, in the order served.
const PROCESS_FAMILIES: [Column<ProcessRow>; 11] = columns! {
    gauge "process_resident_memory_bytes" "Memory used in bytes." => |(_, p)| p.rss;
    gauge "resident_memory_limit_bytes" "Memory high watermark in bytes (the physical memory when there is none)." => |(b, p)| match b.flow().limit() { 0 => p.physical, watermark => watermark };
    gauge "alarms_memory_used_watermark" "1 while the memory alarm blocks publishers." => |(b, _)| b.flow().memory_alarm() as u64;
    gauge "queued_messages_memory_bytes" "Estimated memory held by ready messages (what the memory alarm watches)." => |(b, _)| b.queued_memory();
    gauge "process_open_fds" "Open file descriptors." => |(_, p)| p.open_fds;
    gauge "process_max_fds" "Open file descriptors limit." => |(_, p)| p.max_fds;
    gauge "process_open_tcp_sockets" "Open TCP sockets (client connections)." => |(b, _)| b.connections().len() as u64;
    gauge "process_max_tcp_sockets" "Open TCP sockets limit (the file descriptor limit)." => |(_, p)| p.max_fds;
    gauge "disk_space_available_bytes" "Disk space available in bytes on the data directory's file system." => |(_, p)| p.disk_available;
    gauge "disk_space_available_limit_bytes" "Free disk space low watermark in bytes (--disk-free-limit; 0 = no disk alarm)." => |(b, _)| b.flow().disk().limit();
    gauge "alarms_free_disk_space_watermark" "1 while the disk alarm blocks publishers." => |(b, _)| b.flow().disk().is_alarmed() as u64;
};

fn process(w: &mut Writer<'_>, broker: &Broker, data_dir: &Path) {
    let row = (broker.clone(), process_stats(data_dir));
    table(w, &PROCESS_FAMILIES, &[row], |_| []);
}
