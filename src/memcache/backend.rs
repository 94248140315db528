//! Where a memcache session's queue operations go: the seam between the session (the
//! protocol: what each request answers, counters, access checks, the order of the
//! answers) and the queues. [`Backend::Local`] is this broker's core
//! ([`local`]); [`Backend::Upstream`] a RabbitMQ cluster through
//! [`crate::upstream::Gateway`] ([`upstream`]). The session calls the same operations
//! on either and answers in the same words.
//!
//! Answer order: the local core stores a `set` before it returns (its `STORED` is
//! written at once and only held back until the store's ticket completes); upstream a
//! `set` starts its publish and leaves a placeholder in the output, filled in request
//! order when the session flushes, so a pipeline of sets shares the cluster's confirm
//! latency instead of paying it per set. Any other queue request waits for the sets
//! before it ([`Backend::after_sets`]), so a `get` after a `set` on one connection sees
//! it in both modes.

mod local;
mod upstream;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use super::access::Guard;
use super::command::{self, GetKey, GetOptions};
use super::connection::Connection;
use super::stats::MemcacheCounters;

pub(super) use local::Local;
pub use local::FLAGS_HEADER;
pub(super) use upstream::Upstream;

/// Largest time a `get q/t=<ms>` may wait (memcache clients time out long before).
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// How long a key's read may wait for a message: `None` for a read that does not wait.
fn wait_of(options: &GetOptions) -> Option<Duration> {
    match options.timeout_ms {
        Some(ms) if ms > 0 => Some(Duration::from_millis(ms).min(MAX_WAIT)),
        _ => None,
    }
}

/// A `set` that took: counted, and answered unless `noreply`.
fn stored(out: &mut BytesMut, noreply: bool, counters: &MemcacheCounters) {
    counters.set_hits.fetch_add(1, Ordering::Relaxed);
    if !noreply {
        command::write_stored(out);
    }
}

/// The message a `set` stores.
pub(super) struct Item<'a> {
    pub(super) queue: &'a str,
    pub(super) flags: u32,
    /// memcached's exptime as a TTL: `None` never expires, `Some(0)` already expired.
    pub(super) ttl: Option<u64>,
    pub(super) body: Bytes,
}

/// What one key of a `get` found.
pub(super) enum Fetched {
    /// A message (taken, held open, or peeked at).
    Value { flags: u32, body: Bytes },
    /// Nothing (empty or missing queue, or a wait that ran out).
    Miss,
    /// The client hung up during a timed read: nobody is left to answer.
    HungUp,
    /// The read failed: the text of its `SERVER_ERROR`.
    Failed(String),
}

/// What a read may use of its session.
pub(super) struct Ctx<'a> {
    /// The client's socket, to notice a hang-up during a timed read.
    pub(super) conn: &'a mut Connection,
    /// memcache.user's permissions (a timed read may declare its queue).
    pub(super) guard: &'a Guard<'a>,
    pub(super) shutdown: &'a CancellationToken,
}

/// One session's queues.
pub(super) enum Backend {
    Local(Local),
    /// Boxed: its client's state is several times the size of the local side.
    Upstream(Box<Upstream>),
}

impl Backend {
    /// Whether the memory and disk alarms pause this connection's producers: they
    /// guard this broker's memory and disk, which only local queues fill.
    pub(super) fn alarms_apply(&self) -> bool {
        matches!(self, Backend::Local(_))
    }

    /// Whether `queue` is known to exist (a `set` of an unknown one may declare it).
    pub(super) fn has_queue(&self, queue: &str) -> bool {
        match self {
            Backend::Local(l) => l.has_queue(queue),
            Backend::Upstream(u) => u.has_queue(queue),
        }
    }

    /// Before a `set`'s message is taken: its queue made to exist if `declares`.
    pub(super) fn prepare_set(&mut self, queue: &str, declares: bool) -> Result<(), String> {
        match self {
            Backend::Local(l) if declares => l.declare(queue),
            // Upstream the publish itself declares the queue it does not know.
            _ => Ok(()),
        }
    }

    /// Stores a `set`'s message, and answers it in `out` now or (upstream) when the
    /// session flushes. `Err`: the text of the `SERVER_ERROR` to answer now.
    pub(super) async fn set(
        &mut self,
        item: Item<'_>,
        noreply: bool,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        if item.ttl == Some(0) {
            // Already expired: memcached answers STORED and the item is never seen.
            stored(out, noreply, super::stats::counters());
            return Ok(());
        }
        match self {
            Backend::Local(l) => {
                l.set(item)?;
                stored(out, noreply, super::stats::counters());
                Ok(())
            }
            Backend::Upstream(u) => {
                u.set(item, noreply, out).await;
                Ok(())
            }
        }
    }

    /// Before any queue request other than `set`: the sets before it have landed and
    /// their answers are in `out`.
    pub(super) async fn after_sets(&mut self, out: &mut BytesMut) {
        if let Backend::Upstream(u) = self {
            u.resolve(out).await;
        }
    }

    /// `delete`: whether the queue existed (and is gone now).
    pub(super) async fn delete(&mut self, queue: &str) -> Result<bool, String> {
        match self {
            Backend::Local(l) => Ok(l.delete(queue)),
            Backend::Upstream(u) => u.delete(queue).await,
        }
    }

    /// `stats queue`: per queue by name, its lifetime sets and gets.
    pub(super) fn queue_counts(&self) -> Vec<(String, u64, u64)> {
        match self {
            Backend::Local(l) => l.queue_counts(),
            Backend::Upstream(u) => u.queue_counts(),
        }
    }

    /// Whether a reliable read (`q/open`) is open on `queue`.
    pub(super) fn is_open(&self, queue: &str) -> bool {
        match self {
            Backend::Local(l) => l.is_open(queue),
            Backend::Upstream(u) => u.is_open(queue),
        }
    }

    /// A key's `/close` (ack the open read) and `/abort` (requeue it), before it
    /// fetches anything. `Err`: the text of the `SERVER_ERROR`.
    pub(super) async fn settle(&mut self, key: &GetKey) -> Result<(), String> {
        match self {
            Backend::Local(l) => {
                l.settle(key);
                Ok(())
            }
            Backend::Upstream(u) => u.settle(key).await,
        }
    }

    /// A key's read (one that [fetches](GetOptions::fetches)).
    pub(super) async fn fetch(&mut self, key: &GetKey, ctx: &mut Ctx<'_>) -> Fetched {
        match self {
            Backend::Local(l) => l.fetch(key, ctx).await,
            Backend::Upstream(u) => u.fetch(key, ctx).await,
        }
    }

    /// Before the answers in `out` are written: what they promise has happened
    /// (`STORED` after the store's fsync; upstream, the cluster's confirms). `Err`: the
    /// store failed after `STORED` was queued, so the connection must end unwritten.
    pub(super) async fn complete(&mut self, out: &mut BytesMut) -> std::io::Result<()> {
        match self {
            Backend::Local(l) => l.complete().await,
            Backend::Upstream(u) => {
                u.resolve(out).await;
                Ok(())
            }
        }
    }

    /// The client is gone: open reads go back to their queues (redelivered), as on an
    /// AMQP channel close.
    pub(super) async fn finish(self) {
        match self {
            Backend::Local(l) => l.finish(),
            Backend::Upstream(u) => (*u).finish().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_positive_timeout_waits_and_never_past_the_cap() {
        let with = |timeout_ms| GetOptions {
            timeout_ms,
            ..Default::default()
        };
        assert_eq!(wait_of(&with(None)), None);
        // `q/t=0` is a plain read, as in Kestrel.
        assert_eq!(wait_of(&with(Some(0))), None);
        assert_eq!(wait_of(&with(Some(250))), Some(Duration::from_millis(250)));
        assert_eq!(wait_of(&with(Some(u64::MAX))), Some(MAX_WAIT));
    }

    #[test]
    fn stored_counts_and_answers_unless_noreply() {
        let counters = MemcacheCounters::default();
        let mut out = BytesMut::new();
        stored(&mut out, false, &counters);
        stored(&mut out, true, &counters);
        assert_eq!(&out[..], b"STORED\r\n");
        assert_eq!(counters.set_hits.load(Ordering::Relaxed), 2);
    }
}
