//! Counters the core keeps for metrics. Each is one relaxed atomic increment on the hot
//! path; exporters read them when scraped.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-queue totals (lifetime of the queue object).
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Messages enqueued.
    pub published: Counter,
    /// Messages delivered to consumers or taken by get (including redeliveries).
    pub delivered: Counter,
    /// Messages redelivered.
    pub redelivered: Counter,
    /// Messages acknowledged (auto-acks included).
    pub acked: Counter,
    /// Messages dropped because their TTL passed.
    pub expired: Counter,
    /// Messages dropped because the queue was over x-max-length.
    pub dropped: Counter,
}

/// Broker-wide totals, named after rabbitmq_prometheus's global counters.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Messages received from publishers.
    pub messages_received: Counter,
    /// Of which received on confirm channels.
    pub messages_received_confirm: Counter,
    /// Messages routed to at least one queue.
    pub messages_routed: Counter,
    /// Publisher confirms sent.
    pub messages_confirmed: Counter,
    /// Unroutable messages dropped.
    pub unroutable_dropped: Counter,
    /// Unroutable mandatory messages returned.
    pub unroutable_returned: Counter,
    /// Deliveries to auto-ack consumers.
    pub delivered_consume_auto_ack: Counter,
    /// Deliveries to manual-ack consumers.
    pub delivered_consume_manual_ack: Counter,
    /// basic.get with auto-ack (memcache get included).
    pub delivered_get_auto_ack: Counter,
    /// basic.get with manual ack (memcache /open included).
    pub delivered_get_manual_ack: Counter,
    /// basic.get answered empty.
    pub get_empty: Counter,
    /// Redeliveries.
    pub redelivered: Counter,
    /// Acknowledgements.
    pub acknowledged: Counter,
    /// Queues declared (including redeclares).
    pub queues_declared: Counter,
    /// Queues created.
    pub queues_created: Counter,
    /// Queues deleted.
    pub queues_deleted: Counter,
    /// Connection, channel and per-protocol totals.
    pub lifecycle: LifecycleCounters,
}

// ---- Counters the metrics exporter reads but the front ends / core do not yet feed.
// Each is one relaxed atomic add where it is fed; until then it reads 0.

/// Per-protocol totals (one per front end).
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    /// Connections accepted.
    pub connections_opened: Counter,
    /// Connections closed.
    pub connections_closed: Counter,
    /// Bytes received on connections that have closed (live ones are summed from
    /// `ConnectionInfo::bytes_in` at scrape time).
    pub bytes_received_closed: Counter,
    /// Bytes sent on connections that have closed.
    pub bytes_sent_closed: Counter,
    /// Messages published through this front end.
    pub messages_received: Counter,
    /// Messages delivered through this front end (consume and get).
    pub messages_delivered: Counter,
}

/// Upper bounds (bytes) of the message size histogram buckets: rabbitmq_prometheus's,
/// so that dashboards selecting `le="1e+06"` and the like work unchanged.
pub const MESSAGE_SIZE_BUCKETS: [u64; 8] = [
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
];

/// A fixed-bucket histogram of message body sizes: two relaxed atomic adds per message.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    /// Non-cumulative counts per bucket of [`MESSAGE_SIZE_BUCKETS`], plus one for +Inf.
    buckets: [Counter; 9],
    sum: Counter,
}

impl SizeHistogram {
    /// Records one message of `bytes` bytes.
    #[inline]
    pub fn observe(&self, bytes: u64) {
        let i = MESSAGE_SIZE_BUCKETS.partition_point(|&b| b < bytes);
        self.buckets[i].inc();
        self.sum.add(bytes);
    }

    /// Non-cumulative bucket counts (the last one is above the largest bound).
    pub fn buckets(&self) -> [u64; 9] {
        std::array::from_fn(|i| self.buckets[i].get())
    }

    /// Sum of observed sizes.
    pub fn sum(&self) -> u64 {
        self.sum.get()
    }
}

/// Broker-wide counters that need feeding from connection / channel life cycles.
#[derive(Debug, Default)]
pub struct LifecycleCounters {
    /// AMQP front end.
    pub amqp: ProtocolCounters,
    /// memcache front end.
    pub memcache: ProtocolCounters,
    /// Channels opened (AMQP).
    pub channels_opened: Counter,
    /// Channels closed (AMQP).
    pub channels_closed: Counter,
    /// Channels (or sessions) currently publishing: incremented on a channel's first
    /// publish, decremented when that channel closes.
    pub publishers: std::sync::atomic::AtomicI64,
    /// Sizes of published message bodies.
    pub message_size: SizeHistogram,
}

impl LifecycleCounters {
    /// The counters of front end `protocol` (`amqp` / `memcache`).
    pub fn protocol(&self, protocol: &str) -> Option<&ProtocolCounters> {
        match protocol {
            "amqp" => Some(&self.amqp),
            "memcache" => Some(&self.memcache),
            _ => None,
        }
    }

    /// Records a connection of `protocol` being registered.
    pub fn connection_opened(&self, protocol: &str) {
        if let Some(p) = self.protocol(protocol) {
            p.connections_opened.inc();
        }
    }

    /// Records a connection going away with its byte totals.
    pub fn connection_closed(&self, protocol: &str, bytes_in: u64, bytes_out: u64) {
        if let Some(p) = self.protocol(protocol) {
            p.connections_closed.inc();
            p.bytes_received_closed.add(bytes_in);
            p.bytes_sent_closed.add(bytes_out);
        }
    }
}
