//! A queue: ready messages in FIFO order, the count of unacknowledged ones, its
//! consumers, and dispatch.
//!
//! All state sits behind one short mutex per queue. Dispatch runs inline in whoever made
//! progress possible (a publish, an ack, a new consumer), so there is no task per queue
//! and no global lock on the hot path.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::clock::now_ms;
use super::consumer::{Consumer, Delivered};
use super::error::{CoreError, CoreResult, ErrorKind};
use super::message::{Message, QueuedMessage};
use super::persist;
use super::stats::QueueCounters;
use crate::content::FieldTable;
use crate::store::{Store, SyncTicket};

/// How a queue was declared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueOptions {
    /// Survives a broker restart.
    pub durable: bool,
    /// Owned by the declaring connection and deleted with it.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-` arguments.
    pub arguments: FieldTable,
}

/// A queue.
pub struct Queue {
    /// Name, unique in its vhost.
    pub name: String,
    /// The vhost it lives in.
    pub vhost: Arc<str>,
    /// Broker-wide id (the store's queue id).
    pub id: u64,
    /// Declared properties.
    pub options: QueueOptions,
    /// Connection owning an exclusive queue.
    pub owner: Option<u64>,
    /// Lifetime counters.
    pub counters: QueueCounters,
    message_ttl: Option<u64>,
    max_length: Option<usize>,
    /// Set for durable queues when the broker has a store: persistent messages go there.
    store: Option<Store>,
    state: Mutex<State>,
    arrivals: Notify,
}

#[derive(Default)]
struct State {
    ready: VecDeque<QueuedMessage>,
    unacked: usize,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    next_seq: u64,
    had_consumers: bool,
    deleted: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish()
    }
}

/// Counts of a queue at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready for delivery.
    pub ready: usize,
    /// Delivered, not yet acknowledged.
    pub unacked: usize,
    /// Active consumers.
    pub consumers: usize,
}

impl Queue {
    pub(crate) fn new(
        id: u64,
        name: String,
        vhost: Arc<str>,
        options: QueueOptions,
        owner: Option<u64>,
        store: Option<Store>,
    ) -> CoreResult<Arc<Self>> {
        let message_ttl = non_negative_arg(&options.arguments, "x-message-ttl")?;
        let max_length = non_negative_arg(&options.arguments, "x-max-length")?.map(|n| n as usize);
        let options_durable = options.durable;
        Ok(Arc::new(Self {
            name,
            vhost,
            id,
            owner: if options.exclusive { owner } else { None },
            options,
            counters: QueueCounters::default(),
            message_ttl,
            max_length,
            store: if options_durable { store } else { None },
            state: Mutex::new(State::default()),
            arrivals: Notify::new(),
        }))
    }

    /// Ready, unacked and consumer counts.
    pub fn depth(&self) -> QueueDepth {
        let st = self.state.lock();
        QueueDepth {
            ready: st.ready.len(),
            unacked: st.unacked,
            consumers: st.consumers.len(),
        }
    }

    /// True once deleted.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Adds a message at the tail and dispatches. Returns the store's ticket when the
    /// message is persistent and this queue durable: it is safe once the ticket completes.
    pub fn enqueue(self: &Arc<Self>, msg: Arc<Message>) -> Option<SyncTicket> {
        let now = now_ms();
        let ttl = match (msg.expiration_ms, self.message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut st = self.state.lock();
        if st.deleted {
            return None;
        }
        // Written under the queue lock so the store sees publishes in queue order.
        let ticket = match &self.store {
            Some(store) if msg.persistent => {
                Some(store.publish(self.id, msg.id, persist::encode_message(&msg)))
            }
            _ => None,
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(QueuedMessage {
            msg,
            seq,
            redelivered: false,
            expires_at: ttl.map(|t| now + t),
        });
        self.counters.published.inc();
        if let Some(max) = self.max_length {
            while st.ready.len() > max {
                if let Some(m) = st.ready.pop_front() {
                    self.forget(&m);
                }
                self.counters.dropped.inc();
            }
        }
        self.dispatch_locked(&mut st);
        let waiting = !st.ready.is_empty();
        drop(st);
        if waiting {
            self.arrivals.notify_one();
        }
        ticket
    }

    /// Removes a message that is gone for good from the store.
    fn forget(&self, m: &QueuedMessage) {
        if let (Some(store), true) = (&self.store, m.msg.persistent) {
            store.ack(self.id, m.msg.id);
        }
    }

    /// Records in the store that a persistent message left the queue unsettled, so a
    /// restart redelivers it with redelivered=true.
    fn note_delivered(&self, m: &QueuedMessage) {
        if let (Some(store), true, false) = (&self.store, m.msg.persistent, m.redelivered) {
            store.delivered(self.id, m.msg.id);
        }
    }

    /// Restores a recovered message (at start-up), keeping the given delivered state.
    pub fn restore(self: &Arc<Self>, msg: Arc<Message>, redelivered: bool) {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(QueuedMessage {
            msg,
            seq,
            redelivered,
            expires_at: None,
        });
    }

    /// Delivers ready messages to consumers with credit, round robin.
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
        let waiting = !st.ready.is_empty();
        drop(st);
        if waiting {
            self.arrivals.notify_one();
        }
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut State) {
        if st.consumers.is_empty() {
            return;
        }
        let now = now_ms();
        'outer: while !st.ready.is_empty() {
            self.drop_expired_head(st, now);
            if st.ready.is_empty() {
                break;
            }
            let n = st.consumers.len();
            let start = st.next_consumer % n;
            for i in 0..n {
                let idx = (start + i) % n;
                let consumer = st.consumers[idx].clone();
                if !consumer.try_acquire() {
                    continue;
                }
                st.next_consumer = idx + 1;
                let entry = st.ready.pop_front().expect("checked non-empty");
                let redelivered = entry.redelivered;
                if consumer.no_ack {
                    self.forget(&entry);
                } else {
                    self.note_delivered(&entry);
                }
                let delivered =
                    Delivered::new(self.clone(), entry, Some(consumer.clone()), consumer.no_ack);
                match consumer.sink.deliver(&consumer, delivered) {
                    Ok(()) => {
                        self.counters.delivered.inc();
                        if redelivered {
                            self.counters.redelivered.inc();
                        }
                        if consumer.no_ack {
                            self.counters.acked.inc();
                        } else {
                            st.unacked += 1;
                        }
                    }
                    Err(back) => {
                        // The consumer is going away: put the message back at the head.
                        consumer.deactivate();
                        consumer.release(1);
                        st.ready.push_front(back.disarm());
                    }
                }
                continue 'outer;
            }
            break;
        }
    }

    fn drop_expired_head(&self, st: &mut State, now: u64) {
        while let Some(head) = st.ready.front() {
            match head.expires_at {
                Some(t) if t <= now => {
                    if let Some(m) = st.ready.pop_front() {
                        self.forget(&m);
                    }
                    self.counters.expired.inc();
                }
                _ => break,
            }
        }
    }

    /// Takes the head message (basic.get). With `auto_ack` it is settled at once.
    /// Returns the delivery and the number of messages still ready.
    pub fn get(self: &Arc<Self>, auto_ack: bool) -> Option<(Delivered, usize)> {
        let mut st = self.state.lock();
        self.drop_expired_head(&mut st, now_ms());
        let entry = st.ready.pop_front()?;
        self.counters.delivered.inc();
        if entry.redelivered {
            self.counters.redelivered.inc();
        }
        if auto_ack {
            self.forget(&entry);
            self.counters.acked.inc();
        } else {
            self.note_delivered(&entry);
            st.unacked += 1;
        }
        let remaining = st.ready.len();
        drop(st);
        Some((
            Delivered::new(self.clone(), entry, None, auto_ack),
            remaining,
        ))
    }

    /// Waits up to `timeout` for a message, without polling.
    pub async fn get_wait(
        self: &Arc<Self>,
        auto_ack: bool,
        timeout: Duration,
    ) -> Option<(Delivered, usize)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrivals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(hit) = self.get(auto_ack) {
                return Some(hit);
            }
            if self.is_deleted() {
                return None;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(auto_ack);
            }
        }
    }

    /// A copy of the head message without removing it.
    pub fn peek(&self) -> Option<QueuedMessage> {
        let mut st = self.state.lock();
        self.drop_expired_head(&mut st, now_ms());
        st.ready.front().cloned()
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> usize {
        let mut st = self.state.lock();
        let n = st.ready.len();
        for m in st.ready.drain(..) {
            self.forget(&m);
        }
        n
    }

    pub(crate) fn settle_acked(&self, entry: &QueuedMessage) {
        self.forget(entry);
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(1);
        drop(st);
        self.counters.acked.inc();
    }

    pub(crate) fn settle_requeued(&self, mut entry: QueuedMessage) {
        entry.redelivered = true;
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(1);
        if st.deleted {
            return;
        }
        // Back to its original position: usually at or near the head.
        let pos = st.ready.partition_point(|m| m.seq < entry.seq);
        st.ready.insert(pos, entry);
    }

    /// Registers a consumer and starts dispatching to it.
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> CoreResult<()> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(CoreError::no_queue(&self.name, &self.vhost));
        }
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !st.consumers.is_empty())
        {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost
                ),
            ));
        }
        st.consumers.push(consumer);
        st.had_consumers = true;
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Removes the consumer `tag` of `connection`. Returns true when the queue is
    /// auto-delete and has just lost its last consumer.
    pub(crate) fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        consumer.deactivate();
        let mut st = self.state.lock();
        st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        self.options.auto_delete && st.had_consumers && st.consumers.is_empty() && !st.deleted
    }

    /// Marks the queue deleted: drops ready messages and cancels consumers.
    /// Returns the number of ready messages dropped.
    pub(crate) fn mark_deleted(&self) -> usize {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.len();
        st.ready.clear();
        if let Some(store) = &self.store {
            store.delete_queue(self.id);
        }
        let consumers = std::mem::take(&mut st.consumers);
        drop(st);
        for c in consumers {
            c.deactivate();
            c.sink.cancelled(&c);
        }
        self.arrivals.notify_waiters();
        n
    }

    /// Whether a delete with if-unused / if-empty may proceed.
    pub(crate) fn check_delete(&self, if_unused: bool, if_empty: bool) -> CoreResult<()> {
        let st = self.state.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(CoreError::new(
                ErrorKind::PreconditionFailed,
                format!("queue '{}' in vhost '{}' in use", self.name, self.vhost),
            ));
        }
        if if_empty && !st.ready.is_empty() {
            return Err(CoreError::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "queue '{}' in vhost '{}' is not empty",
                    self.name, self.vhost
                ),
            ));
        }
        Ok(())
    }

    /// Consumers of this queue (for admin listings).
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }
}

fn non_negative_arg(args: &FieldTable, key: &str) -> CoreResult<Option<u64>> {
    match args.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n as u64)),
            _ => Err(CoreError::new(
                ErrorKind::PreconditionFailed,
                format!("invalid arg '{key}' for queue: {v:?}"),
            )),
        },
    }
}
