//! Pieces shared by the modes: the process clock, the bounded backlog, the in-flight
//! window of lapin futures, duration parsing and the summary.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::hist::Histogram;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-wide start instant (the body timestamp).
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration '{s}' (e.g. 10s, 500ms, 2m)"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("bad duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Producers pause while more than `max` messages are published but not yet consumed.
pub struct Backlog {
    outstanding: AtomicI64,
    max: i64,
    low: i64,
    notify: Notify,
}

impl Backlog {
    /// `max` = 0 disables the bound.
    pub fn new(max: u64) -> Arc<Self> {
        let max = max.min(i64::MAX as u64) as i64;
        Arc::new(Backlog {
            outstanding: AtomicI64::new(0),
            max,
            low: max - max / 4,
            notify: Notify::new(),
        })
    }

    /// Waits (up to `until`) while the backlog is full.
    pub async fn wait_room(&self, until: Instant) {
        if self.max == 0 {
            return;
        }
        while self.outstanding.load(Ordering::Acquire) >= self.max {
            let notified = self.notify.notified();
            if self.outstanding.load(Ordering::Acquire) < self.max {
                return;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            let wait = (until - now).min(Duration::from_millis(5));
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    /// One message published.
    pub fn published(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// One message consumed; wakes the producers when the backlog drains below 3/4.
    pub fn consumed(&self) {
        let prev = self.outstanding.fetch_sub(1, Ordering::AcqRel);
        if self.max != 0 && prev - 1 == self.low {
            self.notify.notify_waiters();
        }
    }
}

struct NoopWake;
impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// A boxed future of the window.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Keeps up to `cap` lapin futures in flight. lapin's publish and ack futures hand their
/// frames to the connection's I/O loop on the first poll and then only wait for the
/// write (or the confirm): polling each once on entry and awaiting the oldest when the
/// window is full pipelines them instead of paying one thread round trip per message.
pub struct Window<T> {
    queue: VecDeque<BoxFut<T>>,
    cap: usize,
    waker: Waker,
}

impl<T> Window<T> {
    /// A window of `cap` (at least 1) futures.
    pub fn new(cap: usize) -> Self {
        Window {
            queue: VecDeque::with_capacity(cap.max(1)),
            cap: cap.max(1),
            waker: Waker::from(Arc::new(NoopWake)),
        }
    }

    /// Starts `fut`; hands every result that completes to `done`.
    pub async fn push(&mut self, mut fut: BoxFut<T>, done: &mut impl FnMut(T)) {
        let polled = {
            let mut cx = Context::from_waker(&self.waker);
            fut.as_mut().poll(&mut cx)
        };
        match polled {
            Poll::Ready(v) => done(v),
            Poll::Pending => self.queue.push_back(fut),
        }
        while self.queue.len() >= self.cap {
            if let Some(f) = self.queue.pop_front() {
                done(f.await);
            }
        }
    }

    /// Waits for every future in flight, giving up at `until`.
    pub async fn drain_until(&mut self, until: Instant, done: &mut impl FnMut(T)) {
        let deadline = tokio::time::Instant::from_std(until);
        while let Some(f) = self.queue.pop_front() {
            match tokio::time::timeout_at(deadline, f).await {
                Ok(v) => done(v),
                Err(_) => return,
            }
        }
    }
}

/// What one task measured.
#[derive(Default)]
pub struct Tally {
    pub published: u64,
    pub confirmed: u64,
    pub consumed: u64,
    pub misses: u64,
    pub errors: u64,
    pub latency: Histogram,
    pub confirm_latency: Histogram,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    pub fn merge(&mut self, o: Tally) {
        self.published += o.published;
        self.confirmed += o.confirmed;
        self.consumed += o.consumed;
        self.misses += o.misses;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
        self.confirm_latency.merge(&o.confirm_latency);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Writes the 8-byte timestamp at the start of `body` (bodies shorter than 8 bytes
/// carry none).
pub fn stamp(body: &mut [u8]) {
    if body.len() >= 8 {
        body[..8].copy_from_slice(&now_ns().to_le_bytes());
    }
}

/// The latency of a body stamped by [`stamp`], in nanoseconds.
pub fn age(body: &[u8]) -> Option<u64> {
    let ts = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    Some(now_ns().saturating_sub(ts))
}

/// What every load mode sends and for how long.
#[derive(clap::Args, Debug, Clone)]
pub struct Load {
    /// Body size in bytes (the first 8 carry the send timestamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Measured time (10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before the measured one.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub warmup: Duration,
}

/// The measurement window: counting starts at `start` (after the warm-up) and every
/// task stops at `end`.
#[derive(Clone, Copy)]
pub struct Span {
    pub start: Instant,
    pub end: Instant,
    /// Bounded by a message count rather than by time.
    bounded: bool,
}

impl Span {
    /// From now: `warmup` unmeasured, then `duration` measured; a run `bounded` by a
    /// message count counts from the start and stops on its count (an hour at most).
    pub fn from_now(warmup: Duration, duration: Duration, bounded: bool) -> Span {
        let t0 = Instant::now();
        if bounded {
            Span {
                start: t0,
                end: t0 + Duration::from_secs(3600),
                bounded,
            }
        } else {
            Span {
                start: t0 + warmup,
                end: t0 + warmup + duration,
                bounded,
            }
        }
    }

    /// Seconds the rates are over: the measured window, or for a count-bounded run the
    /// time it took so far.
    pub fn measured_secs(&self) -> f64 {
        if self.bounded {
            self.start.elapsed().as_secs_f64()
        } else {
            (self.end - self.start).as_secs_f64()
        }
    }

    pub fn counting(&self) -> bool {
        Instant::now() >= self.start
    }
    pub fn over(&self) -> bool {
        Instant::now() >= self.end
    }
}

pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Prints the human lines and the final RESULT line.
pub fn report(mode: &str, secs: f64, t: &Tally, extra: &[(&str, String)]) {
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let l = &t.latency;
    println!(
        "{mode}: {:.1} s measured: published {} ({:.0}/s), consumed {} ({:.0}/s), errors {}",
        secs,
        t.published,
        rate(t.published),
        t.consumed,
        rate(t.consumed),
        t.errors
    );
    if l.count() > 0 {
        println!(
            "latency (end to end): p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us ({} samples)",
            us(l.quantile(0.5)),
            us(l.quantile(0.99)),
            us(l.quantile(0.999)),
            us(l.quantile(1.0)),
            l.count()
        );
    }
    if let Some(e) = &t.first_error {
        println!("first error: {e}");
    }
    let mut line = format!(
        "RESULT mode={mode} secs={secs:.2} published={} consumed={} pub_rate={:.0} cons_rate={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1}",
        t.published,
        t.consumed,
        rate(t.published),
        rate(t.consumed),
        us(l.quantile(0.5)),
        us(l.quantile(0.99)),
        us(l.quantile(0.999)),
    );
    for (k, v) in extra {
        line.push_str(&format!(" {k}={v}"));
    }
    line.push_str(&format!(" errors={}", t.errors));
    println!("{line}");
}
