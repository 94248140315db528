//! Counters the core keeps for metrics. Each is one relaxed atomic increment on the hot
//! path; exporters read them when scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

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

impl BrokerCounters {
    /// The counters of front end `protocol` ([`LifecycleCounters::protocol`]).
    #[inline]
    pub fn protocol(&self, protocol: &'static str) -> &ProtocolCounters {
        self.lifecycle.protocol(protocol)
    }
}

/// Per-protocol totals (one per front end, see [`LifecycleCounters::protocol`]).
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    /// Connections accepted.
    pub connections_opened: Counter,
    /// Connections closed.
    pub connections_closed: Counter,
    /// Bytes received on connections that have closed (live ones are summed from
    /// `ConnectionInfo::bytes_in`, see [`protocol_totals`]).
    pub bytes_received_closed: Counter,
    /// Bytes sent on connections that have closed.
    pub bytes_sent_closed: Counter,
    /// Messages published through this front end.
    pub messages_received: Counter,
    /// Messages delivered through this front end (consume and get).
    pub messages_delivered: Counter,
}

impl ProtocolCounters {
    /// Connections open now: opened and not yet closed.
    pub fn open(&self) -> u64 {
        self.connections_opened
            .get()
            .saturating_sub(self.connections_closed.get())
    }
}

/// The front ends' counters, keyed by the protocol name each front end registers: a
/// new front end is a new name, not a new field. Lock-free to read (a list of at most a
/// few entries, each set once), because front ends look theirs up per message.
#[derive(Debug, Default)]
pub struct Protocols {
    head: OnceLock<Box<ProtocolEntry>>,
}

#[derive(Debug)]
struct ProtocolEntry {
    name: &'static str,
    counters: ProtocolCounters,
    next: OnceLock<Box<ProtocolEntry>>,
}

impl Protocols {
    /// The counters of `protocol`, registered on first use.
    pub fn get(&self, protocol: &'static str) -> &ProtocolCounters {
        let mut slot = &self.head;
        loop {
            // A racing registration of another name takes the slot first: move on.
            let entry = slot.get_or_init(|| {
                Box::new(ProtocolEntry {
                    name: protocol,
                    counters: ProtocolCounters::default(),
                    next: OnceLock::new(),
                })
            });
            if entry.name == protocol {
                return &entry.counters;
            }
            slot = &entry.next;
        }
    }

    /// Every registered protocol with its counters, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ProtocolCounters)> {
        std::iter::successors(self.head.get(), |e| e.next.get()).map(|e| (e.name, &e.counters))
    }
}

/// A front end's totals at one moment: its counters plus what its open connections
/// have transferred so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolTotals {
    /// The protocol name.
    pub protocol: &'static str,
    /// Connections open.
    pub connections: u64,
    /// Connections accepted.
    pub connections_opened: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// Bytes received, open and closed connections.
    pub bytes_received: u64,
    /// Bytes sent, open and closed connections.
    pub bytes_sent: u64,
    /// Messages published through the front end.
    pub messages_received: u64,
    /// Messages delivered through the front end.
    pub messages_delivered: u64,
}

/// Every registered front end's totals now, in registration order.
///
/// A closing connection leaves the registry and then adds its bytes to its protocol's
/// closed totals: the registry is read first, so that no byte is missed, and the read
/// is repeated when a connection closed meanwhile, so that none is counted twice
/// (`protocol_bytes_*_total` must not go backwards).
pub fn protocol_totals(broker: &super::Broker) -> Vec<ProtocolTotals> {
    let protocols = &broker.counters().lifecycle.protocols;
    let closed = || -> u64 {
        protocols
            .iter()
            .map(|(_, c)| c.connections_closed.get())
            .sum()
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let closed_before = closed();
        let live = broker.connections();
        let mut totals: Vec<ProtocolTotals> = protocols
            .iter()
            .map(|(protocol, c)| ProtocolTotals {
                protocol,
                connections: 0,
                connections_opened: c.connections_opened.get(),
                bytes_received: c.bytes_received_closed.get(),
                bytes_sent: c.bytes_sent_closed.get(),
                messages_received: c.messages_received.get(),
                messages_delivered: c.messages_delivered.get(),
                // Last: a connection's bytes are added before it counts as closed.
                connections_closed: c.connections_closed.get(),
            })
            .collect();
        let settled = closed() == closed_before;
        // Under heavy churn a scrape still finishes: a few tries, then what it read.
        if !settled && attempts < 4 {
            continue;
        }
        for c in live {
            // Registering the connection registered its protocol.
            if let Some(t) = totals.iter_mut().find(|t| t.protocol == c.protocol) {
                t.connections += 1;
                t.bytes_received += c.bytes_in.load(Ordering::Relaxed);
                t.bytes_sent += c.bytes_out.load(Ordering::Relaxed);
            }
        }
        return totals;
    }
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
    /// Per front end, by the protocol name it registers.
    pub protocols: Protocols,
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
    /// The counters of front end `protocol`, registered on first use.
    #[inline]
    pub fn protocol(&self, protocol: &'static str) -> &ProtocolCounters {
        self.protocols.get(protocol)
    }

    /// Registers front end `protocol`, so that its series are served before its first
    /// connection.
    pub fn register(&self, protocol: &'static str) {
        self.protocols.get(protocol);
    }

    /// Connections opened, every front end together.
    pub fn connections_opened_total(&self) -> u64 {
        self.protocols
            .iter()
            .map(|(_, p)| p.connections_opened.get())
            .sum()
    }

    /// Connections closed, every front end together.
    pub fn connections_closed_total(&self) -> u64 {
        self.protocols
            .iter()
            .map(|(_, p)| p.connections_closed.get())
            .sum()
    }

    /// Records a connection of `protocol` being registered.
    pub fn connection_opened(&self, protocol: &'static str) {
        self.protocol(protocol).connections_opened.inc();
    }

    /// Records a connection going away with its byte totals.
    pub fn connection_closed(&self, protocol: &'static str, bytes_in: u64, bytes_out: u64) {
        let p = self.protocol(protocol);
        p.bytes_received_closed.add(bytes_in);
        p.bytes_sent_closed.add(bytes_out);
        p.connections_closed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_register_once_in_order() {
        let p = Protocols::default();
        p.get("amqp").messages_received.inc();
        p.get("memcache").messages_received.add(2);
        p.get("amqp").messages_received.inc();
        p.get("stomp");
        let seen: Vec<_> = p
            .iter()
            .map(|(n, c)| (n, c.messages_received.get()))
            .collect();
        assert_eq!(seen, [("amqp", 2), ("memcache", 2), ("stomp", 0)]);
    }

    #[test]
    fn protocols_register_concurrently() {
        let p = Protocols::default();
        let names: [&'static str; 4] = ["a", "b", "c", "d"];
        std::thread::scope(|s| {
            for n in names {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..1000 {
                        p.get(n).connections_opened.inc();
                    }
                });
            }
        });
        let mut seen: Vec<_> = p
            .iter()
            .map(|(n, c)| (n, c.connections_opened.get()))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, names.map(|n| (n, 1000)));
    }

    #[test]
    fn protocol_totals_keep_a_closed_connections_bytes() {
        let broker = super::super::Broker::new(super::super::CoreConfig::default());
        broker.counters().lifecycle.register("amqp");
        let peer = "127.0.0.1:1".parse().unwrap();
        let guard = broker.register_connection("memcache", peer);
        guard.info.bytes_in.fetch_add(7, Ordering::Relaxed);
        guard.info.bytes_out.fetch_add(3, Ordering::Relaxed);
        let open = protocol_totals(&broker);
        assert_eq!(open.len(), 2);
        assert_eq!((open[0].protocol, open[0].connections), ("amqp", 0));
        let mc = open[1];
        assert_eq!(mc.protocol, "memcache");
        assert_eq!((mc.connections, mc.connections_opened), (1, 1));
        assert_eq!((mc.bytes_received, mc.bytes_sent), (7, 3));
        drop(guard);
        let closed = protocol_totals(&broker)[1];
        assert_eq!((closed.connections, closed.connections_closed), (0, 1));
        assert_eq!((closed.bytes_received, closed.bytes_sent), (7, 3));
    }

    #[test]
    fn size_histogram_buckets_are_upper_inclusive() {
        let h = SizeHistogram::default();
        for b in [0, 100, 101, 100_000_000, 100_000_001] {
            h.observe(b);
        }
        assert_eq!(h.buckets(), [2, 1, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(h.sum(), 200_000_202);
    }
}
