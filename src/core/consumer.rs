//! Consumers and delivery credit.
//!
//! A front end registers a [`Consumer`] on a queue with a [`DeliverySink`] that turns a
//! [`Delivered`] message into bytes for its client. Credit (AMQP `basic.qos`) is decided
//! here: a consumer receives a message only while it holds fewer unacknowledged messages
//! than its own limit and than its group's (the AMQP channel's) shared limit.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::message::QueuedMessage;
use super::queue::Queue;

/// A prefetch window: `limit` 0 means unlimited.
#[derive(Debug, Default)]
pub struct Credit {
    limit: AtomicU32,
    in_flight: AtomicU32,
}

impl Credit {
    /// A window of `limit` messages (0 = unlimited).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: AtomicU32::new(limit),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Changes the window; takes effect for the next delivery.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    /// The current window.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Messages delivered and not yet settled.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes one unit of credit if the window allows.
    fn try_acquire(&self) -> bool {
        let limit = self.limit();
        if limit == 0 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns `n` units; true when the window was full before (so dispatch may resume).
    pub fn release(&self, n: u32) -> bool {
        let before = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        let limit = self.limit();
        limit != 0 && before >= limit
    }

    /// True when one more message would fit.
    pub fn has_room(&self) -> bool {
        let limit = self.limit();
        limit == 0 || self.in_flight() < limit
    }
}

/// Deliveries to one consumer that may wait in its connection's write queue, whatever
/// its prefetch (acks or not, 0 = unlimited included): a client that stops reading leaves
/// the rest of the queue in the queue (ready or paged), not in the broker's buffers.
pub const WRITE_WINDOW: u32 = 1000;
/// Bytes of message bodies to one consumer that may wait in its connection's write
/// queue. Checked before each delivery, so the window overshoots by one message at most.
pub const WRITE_WINDOW_BYTES: u64 = 4 * 1024 * 1024;

/// Deliveries handed to a front end and not yet written to the client's socket.
#[derive(Debug)]
pub struct WriteWindow {
    count: Credit,
    bytes: std::sync::atomic::AtomicU64,
}

impl WriteWindow {
    fn new() -> Self {
        Self {
            count: Credit::new(WRITE_WINDOW),
            bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn has_room(&self) -> bool {
        self.bytes.load(Ordering::Acquire) < WRITE_WINDOW_BYTES
    }

    /// Deliveries waiting to be written.
    pub fn deliveries(&self) -> u32 {
        self.count.in_flight()
    }

    /// Body bytes waiting to be written.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

/// Where a queue hands messages for one consumer. Implemented by front ends.
///
/// Every delivery takes a place in the consumer's [`WriteWindow`]; the front end must
/// call [`Consumer::written`] once the delivery's bytes have left its buffers (or were
/// dropped), or the consumer stalls when the window is full.
///
/// Called with the queue's lock held: implementations must not block and must not call
/// back into the queue. Returning `Err` hands the message back (the consumer is going away).
pub trait DeliverySink: Send + Sync {
    /// Delivers a message to the consumer `consumer`.
    fn deliver(&self, consumer: &Arc<Consumer>, delivery: Delivered) -> Result<(), Delivered>;
    /// The queue cancelled the consumer (queue deleted). Front ends that can, tell the client.
    fn cancelled(&self, consumer: &Arc<Consumer>);
}

/// A registered consumer.
pub struct Consumer {
    /// Consumer tag, unique within its channel.
    pub tag: String,
    /// Deliveries are settled on send (AMQP no-ack).
    pub no_ack: bool,
    /// Exclusive consumer: no other consumer may share the queue.
    pub exclusive: bool,
    /// Owning connection, for exclusive-queue checks.
    pub connection: u64,
    /// Per-consumer prefetch window.
    pub own_credit: Credit,
    /// Window shared by the consumer's group (AMQP channel, `global` qos).
    pub group_credit: Arc<Credit>,
    /// The front end's delivery sink.
    pub sink: Arc<dyn DeliverySink>,
    /// Deliveries not yet written to the client.
    pub window: WriteWindow,
    active: AtomicBool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("tag", &self.tag)
            .field("no_ack", &self.no_ack)
            .finish()
    }
}

impl Consumer {
    /// A new consumer.
    pub fn new(
        tag: String,
        no_ack: bool,
        exclusive: bool,
        connection: u64,
        prefetch: u32,
        group_credit: Arc<Credit>,
        sink: Arc<dyn DeliverySink>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tag,
            no_ack,
            exclusive,
            connection,
            // No-ack consumers have no prefetch (as in RabbitMQ); every consumer has a
            // write window on top of it.
            own_credit: Credit::new(if no_ack { 0 } else { prefetch }),
            group_credit,
            sink,
            window: WriteWindow::new(),
            active: AtomicBool::new(true),
        })
    }

    /// Takes credit for one delivery: a place in the write window, and for consumers
    /// with acks, prefetch credit (own and group).
    pub(crate) fn try_acquire(&self) -> bool {
        if !self.is_active() || !self.window.has_room() || !self.window.count.try_acquire() {
            return false;
        }
        if self.no_ack {
            return true;
        }
        if !self.own_credit.try_acquire() {
            self.window.count.release(1);
            return false;
        }
        if self.group_credit.try_acquire() {
            true
        } else {
            self.own_credit.release(1);
            self.window.count.release(1);
            false
        }
    }

    /// Charges the write window with the body of the delivery just acquired.
    pub(crate) fn charge(&self, bytes: usize) {
        self.window.bytes.fetch_add(bytes as u64, Ordering::AcqRel);
    }

    /// Returns credit after `n` deliveries were settled (acked, rejected, requeued).
    pub fn release(&self, n: u32) {
        if !self.no_ack {
            self.own_credit.release(n);
            self.group_credit.release(n);
        }
    }

    /// A delivery of `bytes` body bytes left the front end's buffers (written to the
    /// socket, or dropped with the connection): its place in the write window frees up.
    /// True when the window was full, so the queue should dispatch again.
    pub fn written(&self, bytes: usize) -> bool {
        let was_over = !self.window.has_room();
        let before = self
            .window
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(bytes as u64))
            })
            .unwrap_or(0);
        let count_full = self.window.count.release(1);
        count_full || (was_over && before.saturating_sub(bytes as u64) < WRITE_WINDOW_BYTES)
    }

    /// True until cancelled.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn deactivate(&self) {
        self.set_active(false);
    }

    /// Pauses or resumes deliveries to this consumer. A front end registers a consumer
    /// paused when it must answer the client before the first delivery.
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
    }
}

/// A message handed out by a queue and not yet settled (unless no-ack). Whoever holds it
/// must settle it exactly once with [`Delivered::ack`], [`Delivered::requeue`] or
/// [`Delivered::discard`]; dropping it unsettled requeues it, so no message is ever lost.
pub struct Delivered {
    /// The queue it came from.
    pub queue: Arc<Queue>,
    /// The message and its queue position.
    pub entry: QueuedMessage,
    /// The consumer it was delivered to, if it came through `consume` (credit to return).
    pub consumer: Option<Arc<Consumer>>,
    /// Settled on delivery (no-ack / auto-ack get).
    pub auto_ack: bool,
    settled: bool,
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivered")
            .field("queue", &self.queue.name)
            .field("msg", &self.entry.msg.id)
            .finish()
    }
}

impl Delivered {
    pub(crate) fn new(
        queue: Arc<Queue>,
        entry: QueuedMessage,
        consumer: Option<Arc<Consumer>>,
        auto_ack: bool,
    ) -> Self {
        Self {
            queue,
            entry,
            consumer,
            auto_ack,
            settled: auto_ack,
        }
    }

    /// Marks the delivery settled without touching the queue and returns its entry.
    /// Used by the queue itself when a sink hands a delivery back under the queue lock.
    pub(crate) fn disarm(mut self) -> QueuedMessage {
        self.settled = true;
        self.entry.clone()
    }

    /// The redelivered flag to report to the client.
    pub fn redelivered(&self) -> bool {
        self.entry.redelivered
    }

    /// Acknowledges: the message is gone for good.
    pub fn ack(mut self) {
        self.settle(Settle::Ack);
    }

    /// Returns the message to its original position with redelivered=true.
    pub fn requeue(mut self) {
        self.settle(Settle::Requeue);
    }

    /// Rejects without requeue: dead-lettered when the queue has a dead-letter
    /// exchange, dropped otherwise.
    pub fn discard(mut self) {
        self.settle(Settle::Reject);
    }

    fn settle(&mut self, how: Settle) {
        if self.settled {
            return;
        }
        self.settled = true;
        let queue = self.queue.clone();
        match how {
            Settle::Ack => queue.settle_acked(&self.entry),
            Settle::Requeue => queue.settle_requeued(self.entry.clone()),
            Settle::Reject => queue.settle_rejected(self.entry.clone()),
        }
        if let Some(c) = &self.consumer {
            c.release(1);
        }
        queue.dispatch();
    }
}

enum Settle {
    Ack,
    Requeue,
    Reject,
}

impl Drop for Delivered {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(Settle::Requeue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoSink;

    impl DeliverySink for NoSink {
        fn deliver(&self, _: &Arc<Consumer>, d: Delivered) -> Result<(), Delivered> {
            Err(d)
        }
        fn cancelled(&self, _: &Arc<Consumer>) {}
    }

    fn consumer(no_ack: bool, prefetch: u32) -> Arc<Consumer> {
        Consumer::new(
            "c".into(),
            no_ack,
            false,
            1,
            prefetch,
            Arc::new(Credit::new(0)),
            Arc::new(NoSink),
        )
    }

    #[test]
    fn unlimited_prefetch_with_acks_still_has_a_write_window() {
        let c = consumer(false, 0);
        for _ in 0..WRITE_WINDOW {
            assert!(c.try_acquire());
            c.charge(10);
        }
        assert!(
            !c.try_acquire(),
            "window full: the next message stays queued"
        );
        assert!(
            c.written(10),
            "a place freed up: the queue must dispatch again"
        );
        assert!(c.try_acquire());
        // Written but not acked: prefetch (unlimited here) is what acks return.
        assert_eq!(c.own_credit.in_flight(), WRITE_WINDOW + 1);
    }

    #[test]
    fn the_window_is_also_bounded_in_bytes() {
        let c = consumer(true, 0);
        assert!(c.try_acquire());
        c.charge(WRITE_WINDOW_BYTES as usize);
        assert!(!c.try_acquire(), "4 MiB waiting: no more");
        assert!(c.written(WRITE_WINDOW_BYTES as usize));
        assert!(c.try_acquire());
        assert_eq!(c.window.deliveries(), 1);
    }

    #[test]
    fn prefetch_still_applies_under_the_window() {
        let c = consumer(false, 2);
        assert!(c.try_acquire());
        assert!(c.try_acquire());
        assert!(!c.try_acquire());
        assert_eq!(c.window.deliveries(), 2, "the refused one left no trace");
        c.release(1);
        assert!(c.try_acquire());
    }
}
