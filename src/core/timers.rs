//! One task per broker drives every queue timer: head-of-queue TTL expiry and
//! `x-expires`. Deadlines wait in a map ordered by time; the task sleeps until the
//! earliest and is woken when an earlier one arrives. It starts with the first timer (a
//! broker whose queues use no TTL never runs it) and ends with [`Timers::stop`], which
//! the server awaits at shutdown.
//!
//! The map holds weak references: a deleted queue's timers fire into nothing. What a
//! timer means is decided by the queue's vhost ([`VHost::timer_fired`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::clock::now_ms;
use super::queue::Queue;
use super::vhost::VHost;

/// What a queue asked to be woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The head message's TTL passes.
    HeadExpiry,
    /// The queue's `x-expires` may have run out.
    Unused,
}

struct Due {
    timer: Timer,
    queue: Weak<Queue>,
    vhost: Weak<VHost>,
}

#[derive(Default)]
struct Wheel {
    /// By (deadline in ms on the core clock, arrival order).
    due: BTreeMap<(u64, u64), Due>,
    arrivals: u64,
}

#[derive(Default)]
struct Inner {
    wheel: Mutex<Wheel>,
    earlier: Notify,
    stop: CancellationToken,
}

/// The broker's timers.
#[derive(Default)]
pub(crate) struct Timers {
    inner: Arc<Inner>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

impl Timers {
    /// Wakes `vhost` about `queue` at `at` (ms on the core clock).
    pub(crate) fn schedule(&self, at: u64, timer: Timer, queue: &Arc<Queue>, vhost: Weak<VHost>) {
        if self.inner.stop.is_cancelled() {
            return;
        }
        let first = {
            let mut w = self.inner.wheel.lock();
            let first = w.due.keys().next().map_or(true, |&(d, _)| at < d);
            let n = w.arrivals;
            w.arrivals += 1;
            let queue = Arc::downgrade(queue);
            w.due.insert(
                (at, n),
                Due {
                    timer,
                    queue,
                    vhost,
                },
            );
            first
        };
        self.start_driver();
        if first {
            self.inner.earlier.notify_one();
        }
    }

    /// Starts the task on first use, and again if the runtime it ran on has ended.
    /// Outside a tokio runtime (offline tools) timers do not run, as no message waits
    /// there long enough to expire.
    fn start_driver(&self) {
        let mut driver = self.driver.lock();
        if driver.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            *driver = Some(rt.spawn(drive(self.inner.clone())));
        }
    }

    /// Stops the task and waits for it; timers scheduled later never fire.
    pub(crate) async fn stop(&self) {
        self.inner.stop.cancel();
        let driver = self.driver.lock().take();
        if let Some(task) = driver {
            let _ = task.await;
        }
    }
}

async fn drive(inner: Arc<Inner>) {
    loop {
        let next = inner.wheel.lock().due.keys().next().map(|&(at, _)| at);
        let now = now_ms();
        match next {
            Some(at) if at <= now => fire_due(&inner, now),
            Some(at) => tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(at - now)) => {}
                _ = inner.earlier.notified() => {}
                _ = inner.stop.cancelled() => return,
            },
            None => tokio::select! {
                _ = inner.earlier.notified() => {}
                _ = inner.stop.cancelled() => return,
            },
        }
    }
}

/// Fires every timer due at `now`, outside the map's lock (firing schedules more).
fn fire_due(inner: &Inner, now: u64) {
    let due: Vec<((u64, u64), Due)> = {
        let mut w = inner.wheel.lock();
        let later = w.due.split_off(&(now + 1, 0));
        std::mem::replace(&mut w.due, later).into_iter().collect()
    };
    for ((at, _), d) in due {
        if let (Some(queue), Some(vhost)) = (d.queue.upgrade(), d.vhost.upgrade()) {
            vhost.timer_fired(&queue, d.timer, at);
        }
    }
}
