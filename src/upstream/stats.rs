//! The gateway's own figures: operations, errors, retries, connections, confirm latency,
//! and the upstream queue depths it last saw. Rendered into `/metrics` and returned as
//! [`UpstreamStatus`] (for `/api/upstream` and `qgate ctl status`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the confirm latency histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Time from `basic.publish` to the cluster's confirm.
#[derive(Debug, Default)]
pub struct Latency {
    counts: [AtomicU64; 13],
    sum_us: AtomicU64,
}

impl Latency {
    /// Records one confirm.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn snapshot(&self) -> ([u64; 13], u64) {
        let mut c = [0; 13];
        for (o, a) in c.iter_mut().zip(&self.counts) {
            *o = a.load(Relaxed);
        }
        (c, self.sum_us.load(Relaxed))
    }

    /// The upper bound of the bucket holding quantile `q` (0..1), seconds.
    fn quantile(&self, q: f64) -> Option<f64> {
        let (c, _) = self.snapshot();
        let total: u64 = c.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in c.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// Operations the gateway performs on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// `set`: declare if new, publish, confirm.
    Set,
    /// `get`: basic.get + ack.
    Get,
    /// `get q/open`: basic.get without ack.
    Open,
    /// `get q/close`: basic.ack of the open read.
    Close,
    /// `get q/abort`, or a disconnect with an open read: its channel closed (requeue).
    Abort,
    /// `get q/peek`: basic.get on a spare channel, then closing it (requeue at the head).
    Peek,
    /// `delete`: queue.delete.
    Delete,
}

impl Op {
    const ALL: [Op; 7] = [
        Op::Set,
        Op::Get,
        Op::Open,
        Op::Close,
        Op::Abort,
        Op::Peek,
        Op::Delete,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Get => "get",
            Op::Open => "open",
            Op::Close => "close",
            Op::Abort => "abort",
            Op::Peek => "peek",
            Op::Delete => "delete",
        }
    }
}

/// Outcome of one operation.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Done (STORED, a hit, DELETED, acked).
    Ok,
    /// Nothing there (an empty or missing queue, NOT_FOUND).
    Miss,
    /// Failed: the client got SERVER_ERROR.
    Error,
}

#[derive(Debug, Default)]
struct OpCounters {
    ok: Counter,
    miss: Counter,
    error: Counter,
}

/// Everything the gateway counts.
#[derive(Debug, Default)]
pub struct Stats {
    ops: [OpCounters; 7],
    /// Publishes retried after a nack.
    pub retry_nack: Counter,
    /// Publishes retried after the confirm did not come in time.
    pub retry_timeout: Counter,
    /// Publishes retried after the connection or channel failed before the confirm.
    pub retry_connection: Counter,
    /// Publishes retried because the queue was gone (basic.return of a mandatory publish).
    pub retry_returned: Counter,
    /// Sets that were STORED only after a retry that may have duplicated the message
    /// (the first attempt timed out or lost its connection, so it may have been enqueued).
    pub possible_duplicates: Counter,
    /// Connections opened.
    pub connects: Counter,
    /// Connection attempts that failed.
    pub connect_failures: Counter,
    /// Connections found dead.
    pub connection_lost: Counter,
    /// Acks of a plain `get` that failed after the message was received: it stays in the
    /// queue and is delivered again (a duplicate, never a loss).
    pub get_ack_failures: Counter,
    /// Confirm latency of successful publishes.
    pub confirm: Latency,
    depths: Mutex<BTreeMap<String, QueueDepth>>,
    /// Queue -> (sets stored, messages got) through this gateway, for `stats queue`.
    per_queue: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// Depth of one upstream queue as the gateway last saw it (passive declare).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready messages (declare-ok message_count).
    pub messages_ready: u32,
    /// Consumers (declare-ok consumer_count).
    pub consumers: u32,
}

impl Stats {
    /// Counts one operation.
    pub fn op(&self, op: Op, outcome: Outcome) {
        let c = &self.ops[op as usize];
        match outcome {
            Outcome::Ok => c.ok.inc(),
            Outcome::Miss => c.miss.inc(),
            Outcome::Error => c.error.inc(),
        }
    }

    /// Records a depth seen upstream.
    pub fn set_depth(&self, queue: &str, depth: QueueDepth) {
        self.depths.lock().insert(queue.to_owned(), depth);
    }

    /// Counts a stored set (`true`) or a delivered get on `queue`.
    pub fn count_queue(&self, queue: &str, set: bool) {
        let mut m = self.per_queue.lock();
        let e = match m.get_mut(queue) {
            Some(e) => e,
            None => m.entry(queue.to_owned()).or_default(),
        };
        if set {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// Queue -> (sets, gets) through this gateway.
    pub fn queue_counts(&self) -> BTreeMap<String, (u64, u64)> {
        self.per_queue.lock().clone()
    }

    /// Forgets a queue (deleted).
    pub fn forget_depth(&self, queue: &str) {
        self.depths.lock().remove(queue);
    }
}

/// One upstream connection, for status.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// `host:port` of the node.
    pub node: String,
    /// Open now.
    pub connected: bool,
}

/// The gateway's figures at one moment (`/api/upstream`, `qgate ctl status`).
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    /// `host:port` of every listed node.
    pub nodes: Vec<String>,
    /// The pool's connections.
    pub connections: Vec<LinkStatus>,
    /// Operation -> {ok, miss, error}.
    pub operations: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Reason -> publishes retried.
    pub publish_retries: BTreeMap<&'static str, u64>,
    /// Sets stored after a retry that may have duplicated the message.
    pub possible_duplicates: u64,
    /// Plain gets whose ack failed (the message will be delivered again).
    pub get_ack_failures: u64,
    /// Connections opened / failed attempts / found dead.
    pub connects: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Connections found dead.
    pub connections_lost: u64,
    /// Confirms received.
    pub confirms: u64,
    /// Confirm latency, bucket upper bounds in milliseconds (p50, p99).
    pub confirm_p50_ms: Option<f64>,
    /// 99th percentile.
    pub confirm_p99_ms: Option<f64>,
    /// Queue -> depth last seen.
    pub queues: BTreeMap<String, QueueDepth>,
}

impl Stats {
    /// The figures as a struct.
    pub fn status(&self, nodes: &[String], connections: Vec<LinkStatus>) -> UpstreamStatus {
        let operations = Op::ALL
            .iter()
            .map(|op| {
                let c = &self.ops[*op as usize];
                let m = [
                    ("ok", c.ok.get()),
                    ("miss", c.miss.get()),
                    ("error", c.error.get()),
                ]
                .into_iter()
                .collect();
                (op.name(), m)
            })
            .collect();
        UpstreamStatus {
            nodes: nodes.to_vec(),
            connections,
            operations,
            publish_retries: self.retries().into_iter().collect(),
            possible_duplicates: self.possible_duplicates.get(),
            get_ack_failures: self.get_ack_failures.get(),
            connects: self.connects.get(),
            connect_failures: self.connect_failures.get(),
            connections_lost: self.connection_lost.get(),
            confirms: self.confirm.snapshot().0.iter().sum(),
            confirm_p50_ms: self.confirm.quantile(0.5).map(|s| s * 1000.0),
            confirm_p99_ms: self.confirm.quantile(0.99).map(|s| s * 1000.0),
            queues: self.depths.lock().clone(),
        }
    }

    fn retries(&self) -> [(&'static str, u64); 4] {
        [
            ("nack", self.retry_nack.get()),
            ("timeout", self.retry_timeout.get()),
            ("connection", self.retry_connection.get()),
            ("returned", self.retry_returned.get()),
        ]
    }

    /// Appends the Prometheus text of these figures (`<prefix>_upstream_*`).
    pub fn render(
        &self,
        out: &mut String,
        prefix: &str,
        nodes: &[String],
        connections: &[LinkStatus],
    ) {
        let p = prefix;
        let _ = writeln!(
            out,
            "# HELP {p}_upstream_operations_total memcache operations served from the upstream cluster"
        );
        let _ = writeln!(out, "# TYPE {p}_upstream_operations_total counter");
        for op in Op::ALL {
            let c = &self.ops[op as usize];
            for (result, v) in [
                ("ok", c.ok.get()),
                ("miss", c.miss.get()),
                ("error", c.error.get()),
            ] {
                let _ = writeln!(
                    out,
                    "{p}_upstream_operations_total{{operation=\"{}\",result=\"{result}\"}} {v}",
                    op.name()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP {p}_upstream_publish_retries_total publishes retried on a fresh channel, by cause"
        );
        let _ = writeln!(out, "# TYPE {p}_upstream_publish_retries_total counter");
        for (reason, v) in self.retries() {
            let _ = writeln!(
                out,
                "{p}_upstream_publish_retries_total{{reason=\"{reason}\"}} {v}"
            );
        }
        for (name, help, v) in [
            (
                "possible_duplicates_total",
                "sets stored after a retry whose first attempt may have been enqueued",
                self.possible_duplicates.get(),
            ),
            (
                "get_ack_failures_total",
                "gets whose ack failed (the message is delivered again)",
                self.get_ack_failures.get(),
            ),
            (
                "connects_total",
                "upstream connections opened",
                self.connects.get(),
            ),
            (
                "connect_failures_total",
                "failed upstream connection attempts",
                self.connect_failures.get(),
            ),
            (
                "connections_lost_total",
                "upstream connections found dead",
                self.connection_lost.get(),
            ),
        ] {
            let _ = writeln!(out, "# HELP {p}_upstream_{name} {help}");
            let _ = writeln!(out, "# TYPE {p}_upstream_{name} counter");
            let _ = writeln!(out, "{p}_upstream_{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP {p}_upstream_connections open upstream connections per node"
        );
        let _ = writeln!(out, "# TYPE {p}_upstream_connections gauge");
        for node in nodes {
            let n = connections
                .iter()
                .filter(|c| c.connected && &c.node == node)
                .count();
            let _ = writeln!(
                out,
                "{p}_upstream_connections{{node=\"{}\"}} {n}",
                escape(node)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}_upstream_confirm_seconds time from publish to the cluster's confirm"
        );
        let _ = writeln!(out, "# TYPE {p}_upstream_confirm_seconds histogram");
        let (counts, sum_us) = self.confirm.snapshot();
        let mut cumulative = 0;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                out,
                "{p}_upstream_confirm_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{p}_upstream_confirm_seconds_sum {}",
            sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "{p}_upstream_confirm_seconds_count {cumulative}");
        let depths = self.depths.lock().clone();
        let _ = writeln!(
            out,
            "# HELP {p}_upstream_queue_messages_ready ready messages of upstream queues the gateway uses"
        );
        let _ = writeln!(out, "# TYPE {p}_upstream_queue_messages_ready gauge");
        for (q, d) in &depths {
            let _ = writeln!(
                out,
                "{p}_upstream_queue_messages_ready{{queue=\"{}\"}} {}",
                escape(q),
                d.messages_ready
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}_upstream_queue_consumers consumers of upstream queues the gateway uses"
        );
        let _ = writeln!(out, "# TYPE {p}_upstream_queue_consumers gauge");
        for (q, d) in &depths {
            let _ = writeln!(
                out,
                "{p}_upstream_queue_consumers{{queue=\"{}\"}} {}",
                escape(q),
                d.consumers
            );
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_are_bucket_bounds() {
        let l = Latency::default();
        assert_eq!(l.quantile(0.5), None);
        for _ in 0..98 {
            l.observe(Duration::from_micros(800));
        }
        l.observe(Duration::from_millis(40));
        l.observe(Duration::from_millis(40));
        assert_eq!(l.quantile(0.5), Some(0.001));
        assert_eq!(l.quantile(0.99), Some(0.05));
    }

    #[test]
    fn renders_operations_and_depths() {
        let s = Stats::default();
        s.op(Op::Set, Outcome::Ok);
        s.set_depth(
            "jobs",
            QueueDepth {
                messages_ready: 3,
                consumers: 1,
            },
        );
        let mut out = String::new();
        let nodes = vec!["h:1".to_owned()];
        let links = vec![LinkStatus {
            node: "h:1".into(),
            connected: true,
        }];
        s.render(&mut out, "qgate", &nodes, &links);
        assert!(out.contains("qgate_upstream_operations_total{operation=\"set\",result=\"ok\"} 1"));
        assert!(out.contains("qgate_upstream_queue_messages_ready{queue=\"jobs\"} 3"));
        assert!(out.contains("qgate_upstream_connections{node=\"h:1\"} 1"));
        assert!(out.contains("qgate_upstream_confirm_seconds_count 0"));
    }
}
