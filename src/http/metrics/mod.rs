//! What a scrape of `/metrics` shows, in one model: every family is described once
//! ([`crate::exposition::Family`]) and written at scrape time through one
//! [`crate::exposition::Writer`], which applies the configured prefix.
//!
//! # Where the numbers come from
//! - [`broker`]: read from the core when scraped: queue depths
//!   ([`crate::core::Queue::depth`]), per-queue totals
//!   ([`crate::core::stats::QueueCounters`]), broker totals
//!   ([`crate::core::BrokerCounters`]), each front end's connections, bytes and messages
//!   ([`crate::core::stats::protocol_totals`]).
//! - collectors the server registers for the front ends that keep counters of their
//!   own ([`Metrics::register`]; the memcache front end's command counts).
//! - [`recorder`]: what code records through the `metrics` facade (the store's fsyncs).
//!
//! Each number is counted in one place, by one relaxed atomic add on the hot path, and
//! only read here.
//!
//! # Names
//! Names follow RabbitMQ's `rabbitmq_prometheus` plugin under a configurable prefix
//! (`--metrics-prefix`, default `qgate`): with prefix `rabbitmq` the stock Grafana
//! "RabbitMQ-Overview" dashboard works. See [`broker`] for the list with types.

pub mod broker;
pub mod recorder;

use std::path::PathBuf;

use crate::core::Broker;
use crate::exposition::{Collector, Writer};

/// The metrics of one broker under one prefix.
pub struct Metrics {
    prefix: String,
    source: broker::Source,
    collectors: Vec<Box<dyn Collector>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("prefix", &self.prefix)
            .field("collectors", &self.collectors.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of `broker`, named `<prefix>_...`; `data_dir` is where free disk
    /// space is measured, `node` the name `identity_info` reports. Installs the `metrics`
    /// facade's recorder for the process if none is yet.
    pub fn new(broker: Broker, prefix: &str, data_dir: impl Into<PathBuf>, node: &str) -> Self {
        let _ = recorder::recorder();
        Metrics {
            prefix: prefix.to_owned(),
            source: broker::Source {
                broker,
                data_dir: data_dir.into(),
                node: node.to_owned(),
            },
            collectors: Vec::new(),
        }
    }

    /// Adds a front end's families; they are served after the per-protocol ones, in
    /// the order registered.
    pub fn register(&mut self, collector: impl Collector + 'static) {
        self.collectors.push(Box::new(collector));
    }

    /// The prefix, without the `_`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Appends one complete scrape to `out`.
    pub fn render(&self, out: &mut String) {
        let mut w = Writer::new(out, &self.prefix);
        let queues = broker::queue_snapshot(&self.source.broker);
        self.source.collect_head(&mut w, &queues);
        for c in &self.collectors {
            c.collect(&mut w);
        }
        self.source.collect_tail(&mut w, &queues);
        if let Some(recorded) = recorder::recorder() {
            recorded.collect(&mut w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CoreConfig;
    use crate::exposition::Family;

    struct Extra;

    impl Collector for Extra {
        fn collect(&self, w: &mut Writer<'_>) {
            const F: Family = Family::counter("extra_total", "A front end's own family.");
            w.single(&F, 5u64);
        }
    }

    #[test]
    fn front_end_families_follow_the_protocol_ones_under_the_prefix() {
        let broker = Broker::new(CoreConfig::default());
        broker.counters().lifecycle.register("amqp");
        let mut metrics = Metrics::new(broker, "pfx", ".", "qgate@test");
        metrics.register(Extra);
        let mut out = String::new();
        metrics.render(&mut out);
        let at = |needle: &str| {
            out.find(needle)
                .unwrap_or_else(|| panic!("{needle} not in:\n{out}"))
        };
        assert!(
            at("pfx_protocol_bytes_sent_total{protocol=\"amqp\"} 0\n") < at("pfx_extra_total 5\n")
        );
        assert!(at("pfx_extra_total 5\n") < at("# TYPE pfx_message_size_bytes histogram\n"));
        let lines = out.lines().filter(|l| !l.starts_with('#'));
        assert!(lines.clone().all(|l| l.starts_with("pfx_")), "{out}");
        // Each family is described once.
        let types: Vec<&str> = out.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{out}");
    }
}
