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
}
