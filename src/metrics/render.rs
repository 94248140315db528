//! Prometheus text exposition (format 0.0.4) of the broker's state.
//!
//! Everything is written into one `String` with `std::fmt::Write`; the only
//! per-scrape allocations are the list of queues and their depths. Gauges are read
//! from the core here, counters are the core's relaxed atomics.
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
//! | `memcache_commands_total{command,result}` | counter |
//! | `message_size_bytes` | histogram |
//! | `queue_messages_ready`, `queue_messages_unacked`, `queue_messages`, `queue_consumers` `{vhost,queue}` | gauge |
//! | `queue_messages_{published,delivered,acked,redelivered,expired,dropped}_total{vhost,queue}` | counter |
//! | `process_resident_memory_bytes`, `resident_memory_limit_bytes`, `process_open_fds`, `process_max_fds`, `process_open_tcp_sockets`, `process_max_tcp_sockets`, `disk_space_available_bytes`, `disk_space_available_limit_bytes` | gauge |
//! | `store_fsync_seconds` (histogram), `store_fsyncs_total` | via the `metrics` recorder |

use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::core::stats::{ProtocolCounters, MESSAGE_SIZE_BUCKETS};
use crate::core::{Broker, Queue, QueueDepth};

use super::{MemcacheCounters, RECORDED_PREFIX};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `le` labels of [`MESSAGE_SIZE_BUCKETS`], spelled as rabbitmq_prometheus spells them
/// (dashboards select buckets by these exact strings).
const MESSAGE_SIZE_LE: [&str; MESSAGE_SIZE_BUCKETS.len()] = [
    "100.0", "1000.0", "10000.0", "100000.0", "1e+06", "1e+07", "5e+07", "1e+08",
];

/// Protocols that always get a series, even with no connection yet.
const PROTOCOLS: [&str; 2] = ["amqp", "memcache"];

/// What a scrape reads besides the broker.
#[derive(Debug, Clone, Copy)]
pub struct Scrape<'a> {
    /// Metric name prefix, without the trailing `_`.
    pub prefix: &'a str,
    /// Data directory (for `disk_space_available_bytes`).
    pub data_dir: &'a Path,
    /// Node name for `identity_info`.
    pub node: &'a str,
}

/// Renders one complete scrape. `closed` (kept across scrapes by the listener) keeps
/// the per-protocol byte counters monotonic when connections close.
pub fn render(
    out: &mut String,
    broker: &Broker,
    scrape: &Scrape<'_>,
    memcache: &MemcacheCounters,
    closed: Option<&ClosedConnections>,
    recorded: Option<&str>,
) {
    let mut w = Writer {
        out,
        prefix: scrape.prefix,
    };
    let queues = queue_snapshot(broker);
    w.identity(scrape.node, broker.uptime());
    w.global(broker, &queues);
    w.protocols(broker, memcache, closed);
    w.message_size(broker);
    w.queues(&queues);
    w.process(broker, scrape.data_dir);
    if let Some(text) = recorded {
        append_recorded(w.out, text, scrape.prefix);
    }
}

/// Byte totals of connections that have closed, as seen from scrape to scrape.
///
/// The core adds a closing connection's bytes to
/// [`crate::core::stats::ProtocolCounters`] when it is fed; until then (and as a floor
/// afterwards) this remembers each live connection's byte counts at every scrape and
/// keeps those of connections that disappeared, so `protocol_bytes_*_total` never goes
/// backwards. It misses what a connection transferred after the last scrape before it
/// closed.
#[derive(Debug, Default)]
pub struct ClosedConnections {
    state: Mutex<ClosedState>,
}

#[derive(Debug, Default)]
struct ClosedState {
    /// Connection id -> (protocol, bytes in, bytes out) at the last scrape.
    live: HashMap<u64, (&'static str, u64, u64)>,
    /// Protocol -> (bytes in, bytes out) of connections gone since.
    gone: HashMap<&'static str, (u64, u64)>,
}

impl ClosedConnections {
    /// Records the live connections; returns the closed totals per protocol.
    fn update(
        &self,
        conns: &[Arc<crate::core::ConnectionInfo>],
    ) -> HashMap<&'static str, (u64, u64)> {
        let mut st = self.state.lock();
        let mut live = HashMap::with_capacity(conns.len());
        for c in conns {
            live.insert(
                c.id,
                (
                    c.protocol,
                    c.bytes_in.load(Relaxed),
                    c.bytes_out.load(Relaxed),
                ),
            );
        }
        let previous = std::mem::replace(&mut st.live, live);
        for (id, (protocol, bytes_in, bytes_out)) in previous {
            if !st.live.contains_key(&id) {
                let e = st.gone.entry(protocol).or_default();
                e.0 += bytes_in;
                e.1 += bytes_out;
            }
        }
        st.gone.clone()
    }
}

/// Every queue of every vhost with its depth, sorted by (vhost, name).
fn queue_snapshot(broker: &Broker) -> Vec<(Arc<Queue>, QueueDepth)> {
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

/// Copies the `metrics` recorder's output, renaming `qgate_` names to `<prefix>_`.
fn append_recorded(out: &mut String, text: &str, prefix: &str) {
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let (head, rest) = match line.strip_prefix("# HELP ") {
            Some(rest) => ("# HELP ", rest),
            None => match line.strip_prefix("# TYPE ") {
                Some(rest) => ("# TYPE ", rest),
                None => ("", line),
            },
        };
        out.push_str(head);
        match rest.strip_prefix(RECORDED_PREFIX) {
            Some(tail) => {
                out.push_str(prefix);
                out.push('_');
                out.push_str(tail);
            }
            None => out.push_str(rest),
        }
        out.push('\n');
    }
}

/// Writes `s` as a label value: `\`, `"` and newline escaped.
pub fn escape_label(out: &mut String, s: &str) {
    if !s.contains(['\\', '"', '\n']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

struct Writer<'a> {
    out: &'a mut String,
    prefix: &'a str,
}

/// A numeric sample value.
trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for i64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for usize {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

impl Writer<'_> {
    /// `# HELP` and `# TYPE` lines of a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {p}_{name} {help}\n# TYPE {p}_{name} {kind}",
            p = self.prefix
        );
    }

    /// One sample with labels.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.out.push_str(self.prefix);
        self.out.push('_');
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(self.out);
        self.out.push('\n');
    }

    /// A family with a single unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Value) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn identity(&mut self, node: &str, uptime: std::time::Duration) {
        let node_label = format!("{}_node", self.prefix);
        let cluster_label = format!("{}_cluster", self.prefix);
        let endpoint_label = format!("{}_endpoint", self.prefix);
        let version_label = format!("{}_version", self.prefix);
        self.family("identity_info", "gauge", "Node and cluster identity.");
        self.sample(
            "identity_info",
            &[
                (&node_label, node),
                (&cluster_label, node),
                (&endpoint_label, "per-object"),
            ],
            1u64,
        );
        self.single(
            "erlang_uptime_seconds",
            "gauge",
            "Node uptime in seconds (named as rabbitmq_prometheus names it).",
            uptime.as_secs_f64(),
        );
        self.family("build_info", "gauge", "Version of the broker.");
        self.sample(
            "build_info",
            &[
                (&version_label, env!("CARGO_PKG_VERSION")),
                ("product", "qgate"),
            ],
            1u64,
        );
    }

    fn global(&mut self, broker: &Broker, queues: &[(Arc<Queue>, QueueDepth)]) {
        let c = broker.counters();
        let l = &c.lifecycle;
        let connections = broker.connections();
        let channels: u64 = connections
            .iter()
            .map(|c| u64::from(c.channels.load(Relaxed)))
            .sum();
        let consumers: usize = queues.iter().map(|(_, d)| d.consumers).sum();
        self.single("queues", "gauge", "Queues available.", queues.len());
        self.single("channels", "gauge", "Channels currently open.", channels);
        self.single(
            "consumers",
            "gauge",
            "Consumers currently connected.",
            consumers,
        );
        self.single(
            "global_consumers",
            "gauge",
            "Current number of consumers.",
            consumers,
        );
        self.single(
            "channel_consumers",
            "gauge",
            "Consumers on a channel",
            consumers,
        );
        self.single(
            "global_publishers",
            "gauge",
            "Current number of publishers.",
            l.publishers.load(Relaxed).max(0),
        );
        let delivered = c.delivered_consume_auto_ack.get()
            + c.delivered_consume_manual_ack.get()
            + c.delivered_get_auto_ack.get()
            + c.delivered_get_manual_ack.get();
        let counters: [(&str, &str, u64); 14] = [
            (
                "global_messages_received_total",
                "Total number of messages received from publishers.",
                c.messages_received.get(),
            ),
            (
                "global_messages_received_confirm_total",
                "Total number of messages received from publishers expecting confirmations.",
                c.messages_received_confirm.get(),
            ),
            (
                "global_messages_routed_total",
                "Total number of messages routed to queues.",
                c.messages_routed.get(),
            ),
            (
                "global_messages_confirmed_total",
                "Total number of messages confirmed to publishers.",
                c.messages_confirmed.get(),
            ),
            (
                "global_messages_delivered_total",
                "Total number of messages delivered to consumers.",
                delivered,
            ),
            (
                "global_messages_delivered_consume_auto_ack_total",
                "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment.",
                c.delivered_consume_auto_ack.get(),
            ),
            (
                "global_messages_delivered_consume_manual_ack_total",
                "Total number of messages delivered to consumers using basic.consume with manual acknowledgment.",
                c.delivered_consume_manual_ack.get(),
            ),
            (
                "global_messages_delivered_get_auto_ack_total",
                "Total number of messages delivered to consumers using basic.get with automatic acknowledgment.",
                c.delivered_get_auto_ack.get(),
            ),
            (
                "global_messages_delivered_get_manual_ack_total",
                "Total number of messages delivered to consumers using basic.get with manual acknowledgment.",
                c.delivered_get_manual_ack.get(),
            ),
            (
                "global_messages_get_empty_total",
                "Total number of times basic.get operations fetched no message.",
                c.get_empty.get(),
            ),
            (
                "global_messages_redelivered_total",
                "Total number of messages redelivered to consumers.",
                c.redelivered.get(),
            ),
            (
                "global_messages_acknowledged_total",
                "Total number of message acknowledgements received from consumers.",
                c.acknowledged.get(),
            ),
            (
                "global_messages_unroutable_dropped_total",
                "Total number of messages published as non-mandatory into an exchange and dropped as unroutable.",
                c.unroutable_dropped.get(),
            ),
            (
                "global_messages_unroutable_returned_total",
                "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable.",
                c.unroutable_returned.get(),
            ),
        ];
        for (name, help, value) in counters {
            self.single(name, "counter", help, value);
        }
        let counters: [(&str, &str, u64); 5] = [
            (
                "channels_opened_total",
                "Total number of channels opened.",
                l.channels_opened.get(),
            ),
            (
                "channels_closed_total",
                "Total number of channels closed.",
                l.channels_closed.get(),
            ),
            (
                "queues_declared_total",
                "Total number of queues declared.",
                c.queues_declared.get(),
            ),
            (
                "queues_created_total",
                "Total number of queues created.",
                c.queues_created.get(),
            ),
            (
                "queues_deleted_total",
                "Total number of queues deleted.",
                c.queues_deleted.get(),
            ),
        ];
        for (name, help, value) in counters {
            self.single(name, "counter", help, value);
        }
    }

    fn protocols(
        &mut self,
        broker: &Broker,
        memcache: &MemcacheCounters,
        closed: Option<&ClosedConnections>,
    ) {
        struct Live {
            protocol: &'static str,
            connections: u64,
            bytes_in: u64,
            bytes_out: u64,
        }
        let mut live: Vec<Live> = PROTOCOLS
            .iter()
            .map(|&protocol| Live {
                protocol,
                connections: 0,
                bytes_in: 0,
                bytes_out: 0,
            })
            .collect();
        let conns = broker.connections();
        for c in &conns {
            let i = match live.iter().position(|l| l.protocol == c.protocol) {
                Some(i) => i,
                None => {
                    live.push(Live {
                        protocol: c.protocol,
                        connections: 0,
                        bytes_in: 0,
                        bytes_out: 0,
                    });
                    live.len() - 1
                }
            };
            let l = &mut live[i];
            l.connections += 1;
            l.bytes_in += c.bytes_in.load(Relaxed);
            l.bytes_out += c.bytes_out.load(Relaxed);
        }
        let gone = closed.map(|c| c.update(&conns)).unwrap_or_default();
        let lifecycle = &broker.counters().lifecycle;
        let counter = |p: &str, f: fn(&ProtocolCounters) -> u64| -> u64 {
            lifecycle.protocol(p).map(f).unwrap_or(0)
        };
        // The memcache session keeps its own process-wide totals, exact for the usual
        // one broker per process: they are the floor of the memcache series.
        let mc_total = memcache.total_connections.load(Relaxed);
        let mc_closed = mc_total.saturating_sub(memcache.curr_connections.load(Relaxed));
        let floor = |p: &str, name: &str| -> u64 {
            match (p, name) {
                ("memcache", "connections_opened_total") => mc_total,
                ("memcache", "connections_closed_total") => mc_closed,
                ("memcache", "protocol_bytes_received_total") => memcache.bytes_read.load(Relaxed),
                ("memcache", "protocol_bytes_sent_total") => memcache.bytes_written.load(Relaxed),
                _ => 0,
            }
        };
        self.family("connections", "gauge", "Connections currently open.");
        for l in &live {
            self.sample("connections", &[("protocol", l.protocol)], l.connections);
        }
        type Family = (&'static str, &'static str, fn(&ProtocolCounters) -> u64);
        let families: [Family; 4] = [
            (
                "connections_opened_total",
                "Total number of connections opened.",
                |p| p.connections_opened.get(),
            ),
            (
                "connections_closed_total",
                "Total number of connections closed or terminated.",
                |p| p.connections_closed.get(),
            ),
            (
                "protocol_messages_received_total",
                "Total number of messages received from publishers, by front end.",
                |p| p.messages_received.get(),
            ),
            (
                "protocol_messages_delivered_total",
                "Total number of messages delivered to consumers, by front end.",
                |p| p.messages_delivered.get(),
            ),
        ];
        for (name, help, f) in families {
            self.family(name, "counter", help);
            for l in &live {
                let v = counter(l.protocol, f).max(floor(l.protocol, name));
                self.sample(name, &[("protocol", l.protocol)], v);
            }
        }
        type Bytes = (
            &'static str,
            &'static str,
            fn(&Live) -> u64,
            fn(&ProtocolCounters) -> u64,
            fn((u64, u64)) -> u64,
        );
        let bytes: [Bytes; 2] = [
            (
                "protocol_bytes_received_total",
                "Total number of bytes received from clients, by front end.",
                |l| l.bytes_in,
                |p| p.bytes_received_closed.get(),
                |g| g.0,
            ),
            (
                "protocol_bytes_sent_total",
                "Total number of bytes sent to clients, by front end.",
                |l| l.bytes_out,
                |p| p.bytes_sent_closed.get(),
                |g| g.1,
            ),
        ];
        for (name, help, now, fed, seen) in bytes {
            self.family(name, "counter", help);
            for l in &live {
                let gone = gone.get(l.protocol).copied().unwrap_or_default();
                let closed = counter(l.protocol, fed).max(seen(gone));
                let v = (now(l) + closed).max(floor(l.protocol, name));
                self.sample(name, &[("protocol", l.protocol)], v);
            }
        }
        self.family(
            "memcache_commands_total",
            "counter",
            "Total number of memcache commands, by command and result (get counts each key).",
        );
        let series = [
            ("get", "hit", &memcache.get_hits),
            ("get", "miss", &memcache.get_misses),
            ("set", "total", &memcache.cmd_set),
            ("delete", "total", &memcache.cmd_delete),
        ];
        for (command, result, v) in series {
            self.sample(
                "memcache_commands_total",
                &[("command", command), ("result", result)],
                v.load(Relaxed),
            );
        }
    }

    fn message_size(&mut self, broker: &Broker) {
        let h = &broker.counters().lifecycle.message_size;
        let buckets = h.buckets();
        self.family(
            "message_size_bytes",
            "histogram",
            "Size of messages received from publishers.",
        );
        let mut cumulative = 0u64;
        for (i, le) in MESSAGE_SIZE_LE.iter().enumerate() {
            cumulative += buckets[i];
            self.sample("message_size_bytes_bucket", &[("le", le)], cumulative);
        }
        cumulative += buckets[MESSAGE_SIZE_BUCKETS.len()];
        self.sample("message_size_bytes_bucket", &[("le", "+Inf")], cumulative);
        self.sample("message_size_bytes_sum", &[], h.sum());
        self.sample("message_size_bytes_count", &[], cumulative);
    }

    fn queues(&mut self, queues: &[(Arc<Queue>, QueueDepth)]) {
        type Gauge = (&'static str, &'static str, fn(&QueueDepth) -> usize);
        let gauges: [Gauge; 4] = [
            (
                super::QUEUE_MESSAGES_READY,
                "Messages ready to be delivered to consumers.",
                |d| d.ready,
            ),
            (
                super::QUEUE_MESSAGES_UNACKED,
                "Messages delivered to consumers but not yet acknowledged.",
                |d| d.unacked,
            ),
            (
                super::QUEUE_MESSAGES,
                "Sum of ready and unacknowledged messages - total queue depth.",
                |d| d.ready + d.unacked,
            ),
            (super::QUEUE_CONSUMERS, "Consumers on a queue.", |d| {
                d.consumers
            }),
        ];
        for (name, help, f) in gauges {
            self.family(name, "gauge", help);
            for (q, d) in queues {
                self.sample(name, &[("vhost", &q.vhost), ("queue", &q.name)], f(d));
            }
        }
        type Total = (
            &'static str,
            &'static str,
            fn(&crate::core::stats::QueueCounters) -> u64,
        );
        let totals: [Total; 6] = [
            (
                "queue_messages_published_total",
                "Total number of messages published to a queue.",
                |c| c.published.get(),
            ),
            (
                "queue_messages_delivered_total",
                "Total number of messages delivered from a queue (consume and get).",
                |c| c.delivered.get(),
            ),
            (
                "queue_messages_acked_total",
                "Total number of messages acknowledged on a queue (automatic acknowledgements included).",
                |c| c.acked.get(),
            ),
            (
                "queue_messages_redelivered_total",
                "Total number of messages redelivered from a queue.",
                |c| c.redelivered.get(),
            ),
            (
                "queue_messages_expired_total",
                "Total number of messages dropped from a queue because their TTL passed.",
                |c| c.expired.get(),
            ),
            (
                "queue_messages_dropped_total",
                "Total number of messages dropped from the head of a queue over x-max-length.",
                |c| c.dropped.get(),
            ),
        ];
        for (name, help, f) in totals {
            self.family(name, "counter", help);
            for (q, _) in queues {
                self.sample(
                    name,
                    &[("vhost", &q.vhost), ("queue", &q.name)],
                    f(&q.counters),
                );
            }
        }
    }

    fn process(&mut self, broker: &Broker, data_dir: &Path) {
        let p = process_stats(data_dir);
        self.single(
            "process_resident_memory_bytes",
            "gauge",
            "Memory used in bytes.",
            p.rss,
        );
        let watermark = broker.flow().limit();
        self.single(
            "resident_memory_limit_bytes",
            "gauge",
            "Memory high watermark in bytes (the physical memory when there is none).",
            if watermark == 0 {
                p.physical
            } else {
                watermark
            },
        );
        self.single(
            "alarms_memory_used_watermark",
            "gauge",
            "1 while the memory alarm blocks publishers.",
            broker.flow().is_blocked() as u64,
        );
        self.single(
            "queued_messages_memory_bytes",
            "gauge",
            "Estimated memory held by ready messages (what the memory alarm watches).",
            broker.queued_memory(),
        );
        self.single(
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            p.open_fds,
        );
        self.single(
            "process_max_fds",
            "gauge",
            "Open file descriptors limit.",
            p.max_fds,
        );
        self.single(
            "process_open_tcp_sockets",
            "gauge",
            "Open TCP sockets (client connections).",
            broker.connections().len(),
        );
        self.single(
            "process_max_tcp_sockets",
            "gauge",
            "Open TCP sockets limit (the file descriptor limit).",
            p.max_fds,
        );
        self.single(
            "disk_space_available_bytes",
            "gauge",
            "Disk space available in bytes on the data directory's file system.",
            p.disk_available,
        );
        self.single(
            "disk_space_available_limit_bytes",
            "gauge",
            "Free disk space low watermark in bytes (qgate has no disk alarm: 0).",
            0u64,
        );
    }
}

/// The process's resource use (also shown by the management API's `/api/nodes`).
pub(crate) struct ProcessStats {
    pub(crate) rss: u64,
    pub(crate) physical: u64,
    pub(crate) open_fds: u64,
    pub(crate) max_fds: u64,
    pub(crate) disk_available: u64,
}

#[allow(clippy::unnecessary_cast)] // libc's integer types differ between targets
pub(crate) fn process_stats(data_dir: &Path) -> ProcessStats {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    // SAFETY: as above.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) }.max(0) as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|p| p * page)
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    };
    ProcessStats {
        rss,
        physical: pages * page,
        open_fds,
        max_fds,
        disk_available: disk_available(data_dir),
    }
}

/// Available bytes on the file system of `dir`, or of its nearest existing ancestor.
#[allow(clippy::unnecessary_cast)] // libc's integer types differ between targets
fn disk_available(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for candidate in absolute.ancestors() {
        let Ok(c) = std::ffi::CString::new(candidate.as_os_str().as_bytes()) else {
            return 0;
        };
        // SAFETY: statvfs is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` is writable.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 {
            return (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        escape_label(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn renames_recorded_prefix() {
        let mut s = String::new();
        append_recorded(
            &mut s,
            "# HELP qgate_store_fsyncs_total x\n# TYPE qgate_store_fsyncs_total counter\nqgate_store_fsyncs_total 3\n\nother 1\n",
            "rabbitmq",
        );
        assert_eq!(
            s,
            "# HELP rabbitmq_store_fsyncs_total x\n# TYPE rabbitmq_store_fsyncs_total counter\nrabbitmq_store_fsyncs_total 3\nother 1\n"
        );
    }
}
