//! The `metrics` facade's recorder, for code that records events and has no handle on
//! a registry: the store's fsyncs (`metrics::counter!("store_fsyncs_total")`,
//! `metrics::histogram!("store_fsync_seconds")`), compactions
//! (`store_compactions_total`) and elided publishes (`store_publishes_elided_total`).
//!
//! The handles it gives out are plain atomics, read when scraped and written like every
//! other family through [`crate::exposition::Writer`], under the listener's prefix.
//! Names are recorded without the prefix: one process may serve several prefixes
//! (tests run brokers side by side), and the values are process-wide.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use metrics::{Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::Mutex;

use crate::exposition::{Collector, Kind, Writer};

/// Store fsync latency histogram (seconds).
pub const STORE_FSYNC_SECONDS: &str = "store_fsync_seconds";
/// Store fsyncs counter.
pub const STORE_FSYNCS_TOTAL: &str = "store_fsyncs_total";
/// Store compactions counter (segments whose live records were copied forward).
pub const STORE_COMPACTIONS_TOTAL: &str = "store_compactions_total";
/// Publishes the store never wrote: consumed and acked before the flusher reached them.
pub const STORE_PUBLISHES_ELIDED_TOTAL: &str = "store_publishes_elided_total";

/// Buckets of [`STORE_FSYNC_SECONDS`] (100 µs .. 1 s).
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Buckets of a histogram nobody configured: the Prometheus clients' default.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds by histogram name.
const BUCKETS: [(&str, &[f64]); 1] = [(STORE_FSYNC_SECONDS, &FSYNC_BUCKETS)];

/// A fixed-bucket histogram: a handful of relaxed atomic adds per observation.
#[derive(Debug)]
struct Buckets {
    bounds: &'static [f64],
    /// Non-cumulative counts per bound, plus one above the last.
    counts: Vec<AtomicU64>,
    /// Sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl metrics::HistogramFn for Buckets {
    fn record(&self, value: f64) {
        // `le` is inclusive: a value equal to a bound counts in that bound's bucket.
        let i = self.bounds.partition_point(|&b| b < value);
        self.counts[i].fetch_add(1, Relaxed);
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |s| {
            Some((f64::from_bits(s) + value).to_bits())
        });
    }
}

/// What has been recorded, by kind and key.
#[derive(Debug, Default)]
pub struct Recorded {
    counters: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    /// Gauges hold `f64` bits (the facade's convention for `AtomicU64`).
    gauges: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<Key, Arc<Buckets>>>,
    help: Mutex<HashMap<String, SharedString>>,
}

/// The installed recorder: a handle on the process's [`Recorded`].
#[derive(Debug)]
struct Installed(&'static Recorded);

impl metrics::Recorder for Installed {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.0.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.0.describe(key, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.0.describe(key, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(entry(&self.0.counters, key, || AtomicU64::new(0)))
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(entry(&self.0.gauges, key, || {
            AtomicU64::new(0f64.to_bits())
        }))
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(entry(&self.0.histograms, key, || {
            let bounds = BUCKETS
                .iter()
                .find(|(name, _)| *name == key.name())
                .map_or(&DEFAULT_BUCKETS[..], |(_, b)| *b);
            Buckets::new(bounds)
        }))
    }
}

/// The handle of `key`, made on first use.
fn entry<T>(map: &Mutex<HashMap<Key, Arc<T>>>, key: &Key, new: impl FnOnce() -> T) -> Arc<T> {
    map.lock()
        .entry(key.clone())
        .or_insert_with(|| Arc::new(new()))
        .clone()
}

impl Recorded {
    fn describe(&self, key: KeyName, description: SharedString) {
        self.help
            .lock()
            .entry(key.as_str().to_owned())
            .or_insert(description);
    }
}

/// Installs the recorder as the process's `metrics` recorder, once, and returns what
/// it records. `None` when another recorder was installed first (then the facade's
/// series are not served). Safe to call from every broker.
pub fn recorder() -> Option<&'static Recorded> {
    static RECORDED: OnceLock<Option<&'static Recorded>> = OnceLock::new();
    *RECORDED.get_or_init(|| {
        let recorded: &'static Recorded = Box::leak(Box::default());
        metrics::set_global_recorder(Installed(recorded)).ok()?;
        describe_store();
        Some(recorded)
    })
}

/// Describes (and registers, so they are served from the first scrape) the store's
/// series.
fn describe_store() {
    metrics::describe_histogram!(
        STORE_FSYNC_SECONDS,
        Unit::Seconds,
        "Latency of the store's fsync calls."
    );
    metrics::describe_counter!(STORE_FSYNCS_TOTAL, "fsync calls made by the store.");
    metrics::describe_counter!(
        STORE_COMPACTIONS_TOTAL,
        "Segments the store compacted (live records copied forward, the segment deleted)."
    );
    let _ = metrics::histogram!(STORE_FSYNC_SECONDS);
    let _ = metrics::counter!(STORE_FSYNCS_TOTAL);
    metrics::describe_counter!(
        STORE_PUBLISHES_ELIDED_TOTAL,
        "Persistent messages the store never wrote: acked before the flusher reached them."
    );
    let _ = metrics::counter!(STORE_COMPACTIONS_TOTAL);
    let _ = metrics::counter!(STORE_PUBLISHES_ELIDED_TOTAL);
}

/// The series of one name: key (name and labels) and handle.
type Series<T> = Vec<(Key, Arc<T>)>;

/// Entries of `map` grouped by name (sorted), each group's series in label order.
fn by_name<T>(map: &Mutex<HashMap<Key, Arc<T>>>) -> Vec<(String, Series<T>)> {
    let mut all: Series<T> = map
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    all.sort_by(|(a, _), (b, _)| a.cmp(b));
    let mut groups: Vec<(String, Series<T>)> = Vec::new();
    for (k, v) in all {
        match groups.last_mut() {
            Some((name, series)) if name == k.name() => series.push((k, v)),
            _ => groups.push((k.name().to_owned(), vec![(k, v)])),
        }
    }
    groups
}

fn labels(key: &Key) -> Vec<(&str, &str)> {
    key.labels().map(|l| (l.key(), l.value())).collect()
}

/// `labels` and a histogram bucket's `le` after them, as the exporter wrote them.
fn with_le<'a>(labels: &[(&'a str, &'a str)], le: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut l = labels.to_vec();
    l.push(("le", le));
    l
}

impl Collector for Recorded {
    fn collect(&self, w: &mut Writer<'_>) {
        let help = self.help.lock().clone();
        let help = |name: &str| help.get(name).map_or("", |h| h.as_ref()).to_owned();
        for (name, series) in by_name(&self.counters) {
            w.header(&name, Kind::Counter, &help(&name));
            for (key, v) in &series {
                w.series(&name, "", &labels(key), v.load(Relaxed));
            }
        }
        for (name, series) in by_name(&self.gauges) {
            w.header(&name, Kind::Gauge, &help(&name));
            for (key, v) in &series {
                w.series(&name, "", &labels(key), f64::from_bits(v.load(Relaxed)));
            }
        }
        for (name, series) in by_name(&self.histograms) {
            w.header(&name, Kind::Histogram, &help(&name));
            for (key, h) in &series {
                let labels = labels(key);
                let mut cumulative = 0u64;
                for (i, bound) in h.bounds.iter().enumerate() {
                    cumulative += h.counts[i].load(Relaxed);
                    let le = bound.to_string();
                    w.series(&name, "_bucket", &with_le(&labels, &le), cumulative);
                }
                cumulative += h.counts[h.bounds.len()].load(Relaxed);
                w.series(&name, "_bucket", &with_le(&labels, "+Inf"), cumulative);
                w.series(&name, "_sum", &labels, f64::from_bits(h.sum.load(Relaxed)));
                w.series(&name, "_count", &labels, cumulative);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::HistogramFn;

    #[test]
    fn buckets_are_upper_inclusive_and_sum() {
        let h = Buckets::new(&FSYNC_BUCKETS);
        for v in [0.0001, 0.00011, 2.0] {
            h.record(v);
        }
        let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[FSYNC_BUCKETS.len()], 1);
        assert!((f64::from_bits(h.sum.load(Relaxed)) - 2.00021).abs() < 1e-12);
    }

    #[test]
    fn serves_what_the_facade_recorded_as_the_exporter_did() {
        let recorded = Recorded::default();
        let r = Installed(Box::leak(Box::new(recorded)));
        metrics::with_local_recorder(&r, || {
            metrics::describe_counter!("c_total", "Cs.");
            metrics::counter!("c_total", "kind" => "a").increment(2);
            metrics::gauge!("g").set(1.5);
            metrics::histogram!(STORE_FSYNC_SECONDS).record(0.003);
        });
        let mut s = String::new();
        r.0.collect(&mut Writer::new(&mut s, "p"));
        let head = "# HELP p_c_total Cs.\n# TYPE p_c_total counter\np_c_total{kind=\"a\"} 2\n\
                    # TYPE p_g gauge\np_g 1.5\n\
                    # TYPE p_store_fsync_seconds histogram\n\
                    p_store_fsync_seconds_bucket{le=\"0.0001\"} 0\n";
        assert!(s.starts_with(head), "{s}");
        assert!(
            s.contains("p_store_fsync_seconds_bucket{le=\"0.005\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("p_store_fsync_seconds_bucket{le=\"1\"} 1\n"),
            "{s}"
        );
        assert!(s.ends_with(
            "p_store_fsync_seconds_bucket{le=\"+Inf\"} 1\np_store_fsync_seconds_sum 0.003\n\
             p_store_fsync_seconds_count 1\n"
        ));
    }
}
