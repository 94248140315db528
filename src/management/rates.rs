//! Message rates, as RabbitMQ's management plugin reports them: every counter `x` in
//! `message_stats` (and every length in `queue_totals`) comes with `x_details.rate`,
//! the change per second between the last two samples. One tracked task samples the
//! core's counters ([`crate::core::stats`]) every [`INTERVAL`]; reading rates never
//! touches the hot path.
//!
//! The broker-wide samples of the last [`HISTORY`] intervals are kept, so that
//! `GET /api/overview?msg_rates_age=<s>&msg_rates_incr=<s>` (and `lengths_age` /
//! `lengths_incr`) can return RabbitMQ's `samples` lists, which charts draw. Queues
//! keep only their last two samples (bounded memory with many queues).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::core::{Broker, Queue};

/// Time between samples (RabbitMQ's `collect_statistics_interval` is 5 s).
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Broker-wide samples kept: ten minutes.
pub const HISTORY: usize = 120;

/// Broker-wide series, in [`GLOBAL`] order.
pub const GLOBAL: [&str; 22] = [
    "publish",
    "confirm",
    "return_unroutable",
    "drop_unroutable",
    "deliver_get",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "redeliver",
    "ack",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
    "connection_created",
    "connection_closed",
    "channel_created",
    "channel_closed",
    "queue_declared",
    "queue_created",
    "queue_deleted",
];
/// Which of [`GLOBAL`] are message counters (the rest: lengths, churn).
pub const MESSAGE_STATS: std::ops::Range<usize> = 0..12;
/// Which of [`GLOBAL`] are queue lengths (`queue_totals`).
pub const LENGTHS: std::ops::Range<usize> = 12..15;
/// Which of [`GLOBAL`] are object churn counters (`churn_rates`).
pub const CHURN: std::ops::Range<usize> = 15..22;

/// Per-queue series.
pub const QUEUE: [&str; 7] = [
    "publish",
    "deliver_get",
    "ack",
    "redeliver",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
];

#[derive(Debug, Clone, Copy)]
struct Sample<const N: usize> {
    at_ms: u64,
    values: [u64; N],
}

/// The rates store.
#[derive(Debug, Default)]
pub struct Rates {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    global: VecDeque<Sample<22>>,
    /// Queue id -> its last two samples (newest last).
    queues: HashMap<u64, (Option<Sample<7>>, Sample<7>)>,
    /// Connection id -> its last two (bytes in, bytes out) samples.
    connections: HashMap<u64, (Option<Sample<2>>, Sample<2>)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The broker-wide totals now, in [`GLOBAL`] order.
pub fn global_totals(broker: &Broker) -> [u64; 22] {
    let c = broker.counters();
    let l = &c.lifecycle;
    let (mut ready, mut unacked) = (0u64, 0u64);
    for v in broker.vhosts() {
        for q in v.queues() {
            let d = q.depth();
            ready += d.ready as u64;
            unacked += d.unacked as u64;
        }
    }
    let deliver = c.delivered_consume_manual_ack.get();
    let deliver_no_ack = c.delivered_consume_auto_ack.get();
    let get = c.delivered_get_manual_ack.get();
    let get_no_ack = c.delivered_get_auto_ack.get();
    [
        c.messages_received.get(),
        c.messages_confirmed.get(),
        c.unroutable_returned.get(),
        c.unroutable_dropped.get(),
        deliver + deliver_no_ack + get + get_no_ack,
        deliver,
        deliver_no_ack,
        get,
        get_no_ack,
        c.get_empty.get(),
        c.redelivered.get(),
        c.acknowledged.get(),
        ready + unacked,
        ready,
        unacked,
        l.connections_opened_total(),
        l.connections_closed_total(),
        l.channels_opened.get(),
        l.channels_closed.get(),
        c.queues_declared.get(),
        c.queues_created.get(),
        c.queues_deleted.get(),
    ]
}

/// A queue's totals now, in [`QUEUE`] order.
pub fn queue_totals(q: &Queue) -> [u64; 7] {
    let d = q.depth();
    let c = &q.counters;
    [
        c.published.get(),
        c.delivered.get(),
        c.acked.get(),
        c.redelivered.get(),
        (d.ready + d.unacked) as u64,
        d.ready as u64,
        d.unacked as u64,
    ]
}

fn rate<const N: usize>(prev: &Sample<N>, last: &Sample<N>, i: usize) -> f64 {
    let dt = last.at_ms.saturating_sub(prev.at_ms) as f64 / 1000.0;
    if dt <= 0.0 {
        return 0.0;
    }
    (last.values[i] as f64 - prev.values[i] as f64) / dt
}

/// Which samples to list: `age` seconds back, one every `incr` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// How far back, seconds.
    pub age: u64,
    /// Spacing, seconds.
    pub incr: u64,
}

impl Rates {
    /// Records one sample of every counter (the sampler task calls this).
    pub fn sample(&self, broker: &Broker) {
        let at_ms = now_ms();
        let global = Sample {
            at_ms,
            values: global_totals(broker),
        };
        let mut fresh = HashMap::new();
        for v in broker.vhosts() {
            for q in v.queues() {
                fresh.insert(
                    q.id,
                    Sample {
                        at_ms,
                        values: queue_totals(&q),
                    },
                );
            }
        }
        let conns: HashMap<u64, Sample<2>> = broker
            .connections()
            .iter()
            .map(|c| {
                let values = [
                    c.bytes_in.load(Ordering::Relaxed),
                    c.bytes_out.load(Ordering::Relaxed),
                ];
                (c.id, Sample { at_ms, values })
            })
            .collect();
        let mut st = self.state.lock();
        let old = std::mem::take(&mut st.connections);
        st.connections = conns
            .into_iter()
            .map(|(id, s)| (id, (old.get(&id).map(|o| o.1), s)))
            .collect();
        st.global.push_back(global);
        while st.global.len() > HISTORY {
            st.global.pop_front();
        }
        let old = std::mem::take(&mut st.queues);
        st.queues = fresh
            .into_iter()
            .map(|(id, s)| (id, (old.get(&id).map(|o| o.1), s)))
            .collect();
    }

    /// Adds `<name>` and `<name>_details` for the series `range` of [`GLOBAL`] to `out`,
    /// values live from `now`, rates from the last two samples, and sample lists when
    /// `window` asks for them.
    pub fn global_into(
        &self,
        out: &mut Map<String, Value>,
        now: &[u64; 22],
        range: std::ops::Range<usize>,
        window: Option<Window>,
    ) {
        let st = self.state.lock();
        let n = st.global.len();
        for i in range {
            let r = if n >= 2 {
                rate(&st.global[n - 2], &st.global[n - 1], i)
            } else {
                0.0
            };
            let mut details = Map::new();
            details.insert("rate".into(), json!(r));
            if let Some(w) = window {
                samples_into(&mut details, &st.global, i, w);
            }
            out.insert(GLOBAL[i].into(), json!(now[i]));
            out.insert(format!("{}_details", GLOBAL[i]), Value::Object(details));
        }
    }

    /// A connection's (received, sent) bytes per second.
    pub fn connection(&self, id: u64) -> [f64; 2] {
        match self.state.lock().connections.get(&id) {
            Some((Some(prev), last)) => [rate(prev, last, 0), rate(prev, last, 1)],
            _ => [0.0; 2],
        }
    }

    /// A queue's rates, in [`QUEUE`] order (0 until it has two samples).
    pub fn queue_rates(&self, id: u64) -> [f64; 7] {
        match self.state.lock().queues.get(&id) {
            Some((Some(prev), last)) => std::array::from_fn(|i| rate(prev, last, i)),
            _ => [0.0; 7],
        }
    }

    /// Adds `<name>` and `<name>_details` for the series `range` of [`QUEUE`].
    pub fn queue_into(
        &self,
        out: &mut Map<String, Value>,
        q: &Queue,
        now: &[u64; 7],
        range: std::ops::Range<usize>,
    ) {
        let st = self.state.lock();
        let r = |i| match st.queues.get(&q.id) {
            Some((Some(prev), last)) => rate(prev, last, i),
            _ => 0.0,
        };
        for i in range {
            out.insert(QUEUE[i].into(), json!(now[i]));
            out.insert(format!("{}_details", QUEUE[i]), json!({ "rate": r(i) }));
        }
    }
}

/// RabbitMQ's `samples` (newest first), `avg` and `avg_rate` over a window.
fn samples_into(details: &mut Map<String, Value>, all: &VecDeque<Sample<22>>, i: usize, w: Window) {
    let Some(last) = all.back() else {
        details.insert("samples".into(), json!([]));
        return;
    };
    let incr_ms = w.incr.max(1) * 1000;
    let from = last.at_ms.saturating_sub(w.age * 1000);
    let mut picked: Vec<&Sample<22>> = Vec::new();
    let mut next_due = u64::MAX;
    for s in all.iter().rev() {
        if s.at_ms < from {
            break;
        }
        if picked.is_empty() || s.at_ms <= next_due {
            next_due = s.at_ms.saturating_sub(incr_ms) + INTERVAL.as_millis() as u64 / 2;
            picked.push(s);
        }
    }
    let list: Vec<Value> = picked
        .iter()
        .map(|s| json!({ "sample": s.values[i], "timestamp": s.at_ms }))
        .collect();
    if let (Some(newest), Some(oldest)) = (picked.first(), picked.last()) {
        let dt = newest.at_ms.saturating_sub(oldest.at_ms) as f64 / 1000.0;
        let avg_rate = if dt > 0.0 {
            (newest.values[i] as f64 - oldest.values[i] as f64) / dt
        } else {
            0.0
        };
        let avg = picked.iter().map(|s| s.values[i] as f64).sum::<f64>() / picked.len() as f64;
        details.insert("avg_rate".into(), json!(avg_rate));
        details.insert("avg".into(), json!(avg));
    }
    details.insert("samples".into(), Value::Array(list));
}

/// Samples `broker` every [`INTERVAL`] until `shutdown`.
pub async fn run(
    rates: std::sync::Arc<super::Mgmt>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => rates.rates.sample(&rates.broker),
        }
    }
}

/// Live channel count over every connection.
pub fn channels(broker: &Broker) -> u64 {
    broker
        .connections()
        .iter()
        .map(|c| u64::from(c.channels.load(Ordering::Relaxed)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CoreConfig;

    #[test]
    fn rates_from_the_last_two_samples() {
        let rates = Rates::default();
        let mut st = rates.state.lock();
        let mut a = [0u64; 22];
        let mut b = [0u64; 22];
        a[0] = 10;
        b[0] = 60;
        b[13] = 4;
        st.global.push_back(Sample {
            at_ms: 1_000,
            values: a,
        });
        st.global.push_back(Sample {
            at_ms: 6_000,
            values: b,
        });
        drop(st);
        let mut out = Map::new();
        rates.global_into(&mut out, &b, 0..22, Some(Window { age: 60, incr: 5 }));
        assert_eq!(out["publish"], json!(60));
        assert_eq!(out["publish_details"]["rate"], json!(10.0));
        assert_eq!(out["messages_ready_details"]["rate"], json!(0.8));
        assert_eq!(
            out["publish_details"]["samples"].as_array().unwrap().len(),
            2
        );
        assert_eq!(out["publish_details"]["samples"][0]["sample"], json!(60));
    }

    #[test]
    fn sampling_a_broker() {
        let broker = Broker::new(CoreConfig::default());
        let rates = Rates::default();
        rates.sample(&broker);
        rates.sample(&broker);
        let mut out = Map::new();
        rates.global_into(&mut out, &global_totals(&broker), MESSAGE_STATS, None);
        assert_eq!(out["ack_details"], json!({"rate": 0.0}));
    }
}
