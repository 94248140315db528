//! A queue: ready messages in FIFO (or priority) order, the count of unacknowledged
//! ones, its consumers, dispatch, and the queue-level `x-` features: message TTL with
//! proactive expiry at the head, length limits, dead-lettering, priorities, and
//! `x-expires` for unused queues.
//!
//! All state sits behind one short mutex per queue. Dispatch runs inline in whoever made
//! progress possible (a publish, an ack, a new consumer), so there is no task per queue
//! and no global lock on the hot path.
//!
//! The queue decides only about itself. What must happen elsewhere once its lock is
//! released (republishing dead letters through an exchange, waking it at the head's
//! expiry) it returns as an [`Outcome`] for its vhost to act on; the vhost also runs its
//! timers and deletes it when `x-expires` runs out. Operations front ends call directly
//! (get, settle, add a consumer) hand their outcome to the queue's [`Owner`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::clock::now_ms;
use super::consumer::{Consumer, Delivered};
use super::deadletter::{DeadLetterTarget, Reason};
use super::durable::Durable;
use super::error::{CoreError, CoreResult};
use super::features::Features;
use super::message::{Message, Names, QueuedMessage, NEVER};
use super::persist;
use super::ready::Ready;
use super::stats::QueueCounters;
use crate::content::FieldTable;
use crate::store::{FsyncPolicy, PagedOut, RecoveredMessage, Store, StoreError, Window};

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

/// Where a queue that pages keeps what is beyond its memory window.
#[derive(Debug, Clone)]
pub(crate) struct Paging {
    /// The broker's store: persistent messages of a durable queue page to their durable
    /// record, everything else to a transient record that a restart drops.
    pub(crate) store: Store,
    /// How much of the queue's ready part stays in memory.
    pub(crate) window: Window,
}

/// A queue at its length limit with `x-overflow: reject-publish` refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

/// What a queue operation leaves for the queue's owner (its vhost) to do once the
/// queue's lock is released, so a dead-letter cycle can never deadlock and the queue
/// never reaches into an exchange.
#[derive(Debug, Default)]
#[must_use = "dead letters and timers are lost unless the owner acts on them"]
pub(crate) struct Outcome {
    /// Messages that left the queue and go to its dead-letter exchange, in order.
    pub(crate) dead: Vec<(QueuedMessage, Reason)>,
    /// Wake the queue at this deadline (ms on the core clock): its head expires then.
    pub(crate) wake_at: Option<u64>,
}

impl Outcome {
    fn is_empty(&self) -> bool {
        self.dead.is_empty() && self.wake_at.is_none()
    }
}

/// Who holds a queue and acts on the [`Outcome`]s of operations front ends call on the
/// queue directly. Implemented by [`super::VHost`].
pub(crate) trait Owner: Send + Sync {
    /// Called after the queue's lock is released.
    fn act(&self, queue: &Arc<Queue>, outcome: Outcome);
}

/// What the `x-expires` clock says when the queue's timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unused {
    /// Used since: look again at this deadline.
    Until(u64),
    /// Unused for its `x-expires`: delete it.
    Expired,
    /// No `x-expires`, or deleted already.
    Never,
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
    features: Features,
    /// Set for durable queues when the broker has a store: persistent messages go there.
    store: Option<Store>,
    /// Set when the broker pages deep queues and this queue's features allow it.
    paging: Option<Paging>,
    /// Acts on the outcomes of operations that front ends call directly.
    home: Weak<dyn Owner>,
    state: Mutex<State>,
    /// Wakes `get_wait` callers when a message becomes ready or the queue goes.
    arrivals: Notify,
    /// Wakes a get waiting for a read of paged messages in flight.
    paged_in_cv: parking_lot::Condvar,
    /// Core-clock ms of the last use, for `x-expires`.
    last_used: AtomicU64,
}

/// Everything behind the queue's lock.
struct State {
    /// Messages waiting for delivery, in delivery order.
    ready: Ready,
    /// Delivered and not settled; the messages themselves travel in [`Delivered`]s.
    unacked: usize,
    /// Their body bytes (held in memory by the deliveries).
    unacked_bytes: usize,
    /// Registered consumers, oldest first.
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin position in `consumers`.
    next_consumer: usize,
    /// Queue position of the next enqueued message (requeues go back by it).
    next_seq: u64,
    /// Ever had a consumer (auto-delete applies only then).
    had_consumers: bool,
    deleted: bool,
    /// Deadline of the head-expiry wake-up already asked for, if any.
    wake_at: Option<u64>,
    /// Dead letters collected under the lock, handed out with the [`Outcome`].
    dead: Vec<(QueuedMessage, Reason)>,
    /// Ready messages beyond the memory window, behind every one in `ready`: only in
    /// the store, read back in order as the queue drains.
    paged: usize,
    /// Their body bytes (see `paged_recovered`).
    paged_bytes: u64,
    /// A read of paged messages is in flight.
    paging_in: bool,
    /// Bumped by purge and delete: a read in flight then brings back stale messages.
    page_epoch: u64,
    /// Names shared between the messages read back.
    page_names: Arc<Names>,
    /// Of the paged ones, those recovery left paged (the oldest), counted in
    /// `paged_bytes` by their stored size rather than their bodies.
    paged_recovered: usize,
    /// Expiry deadlines of paged messages that have one (their own `expiration`), by
    /// message id: the TTL counts from the publish, as for messages in memory.
    paged_deadlines: std::collections::HashMap<u64, u64>,
    /// Has written records a delete must drop (a non-durable queue that paged).
    paged_ever: bool,
}

impl State {
    /// A delivered message was settled (acked, rejected or requeued).
    fn settled(&mut self, entry: &QueuedMessage) {
        self.unacked = self.unacked.saturating_sub(1);
        self.unacked_bytes = self.unacked_bytes.saturating_sub(entry.msg.body().len());
    }
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
    /// Their body bytes.
    pub unacked_bytes: usize,
    /// Active consumers.
    pub consumers: usize,
    /// Content bytes (properties + bodies) of the ready messages.
    pub bytes: usize,
    /// Of the ready ones, those paged out to the store (not in memory).
    pub paged: usize,
    /// Their body bytes (after a restart, until read back: their stored size).
    pub paged_bytes: u64,
    /// Ready messages held in memory.
    pub ready_ram: usize,
    /// Their content bytes.
    pub ready_ram_bytes: usize,
}

/// The result of [`Queue::enqueue`]: accepted (with a [`Durable`] to wait on when the
/// message must reach the disk first), or refused by a full `reject-publish` queue.
pub(crate) type Enqueued = Result<Option<Durable>, Rejected>;

impl Queue {
    pub(crate) fn new(
        id: u64,
        name: String,
        home: Weak<dyn Owner>,
        vhost: Arc<str>,
        options: QueueOptions,
        owner: Option<u64>,
        (store, paging): (Option<Store>, Option<Paging>),
    ) -> CoreResult<Arc<Self>> {
        let features = Features::from_arguments(&options.arguments)?;
        let paging = paging.filter(|_| features.pages());
        Ok(Arc::new(Self {
            name,
            vhost,
            id,
            owner: if options.exclusive { owner } else { None },
            store: if options.durable { store } else { None },
            paging,
            options,
            counters: QueueCounters::default(),
            state: Mutex::new(State {
                ready: Ready::new(features.max_priority),
                unacked: 0,
                unacked_bytes: 0,
                consumers: Vec::new(),
                next_consumer: 0,
                next_seq: 0,
                had_consumers: false,
                deleted: false,
                wake_at: None,
                dead: Vec::new(),
                paged: 0,
                paged_bytes: 0,
                paging_in: false,
                page_epoch: 0,
                page_names: Arc::default(),
                paged_recovered: 0,
                paged_deadlines: Default::default(),
                paged_ever: false,
            }),
            features,
            home,
            arrivals: Notify::new(),
            paged_in_cv: parking_lot::Condvar::new(),
            last_used: AtomicU64::new(now_ms()),
        }))
    }

    /// Ready, unacked and consumer counts.
    pub fn depth(&self) -> QueueDepth {
        let st = self.state.lock();
        QueueDepth {
            ready: st.ready.len() + st.paged,
            unacked: st.unacked,
            unacked_bytes: st.unacked_bytes,
            consumers: st.consumers.len(),
            bytes: st.ready.bytes() + st.paged_bytes as usize,
            paged: st.paged,
            paged_bytes: st.paged_bytes,
            ready_ram: st.ready.len(),
            ready_ram_bytes: st.ready.bytes(),
        }
    }

    /// True once deleted.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Where dead letters go, if the queue dead-letters.
    pub(crate) fn dead_letter_target(&self) -> Option<&DeadLetterTarget> {
        self.features.dead_letter.as_ref()
    }

    // ---- x-expires -------------------------------------------------------------------

    /// Marks the queue used (declare, get, consume): restarts its `x-expires` clock.
    pub fn touch(&self) {
        if self.features.expires.is_some() {
            self.last_used.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// When the `x-expires` clock of a fresh queue runs out, if it has one.
    pub(crate) fn unused_deadline(&self) -> Option<u64> {
        let expires = self.features.expires?;
        Some(
            self.last_used
                .load(Ordering::Relaxed)
                .saturating_add(expires),
        )
    }

    /// Reads the `x-expires` clock at `now`. A queue with consumers is in use: its
    /// clock restarts.
    pub(crate) fn check_unused(&self, now: u64) -> Unused {
        let Some(expires) = self.features.expires else {
            return Unused::Never;
        };
        let due = self
            .last_used
            .load(Ordering::Relaxed)
            .saturating_add(expires);
        if now < due {
            return Unused::Until(due);
        }
        let st = self.state.lock();
        if st.deleted {
            return Unused::Never;
        }
        if st.consumers.is_empty() {
            return Unused::Expired;
        }
        drop(st);
        self.touch();
        Unused::Until(now_ms().saturating_add(expires))
    }

    // ---- publishing ------------------------------------------------------------------

    /// Adds a message at the tail and dispatches. Gives a [`Durable`] when the message is
    /// persistent and this queue durable: it is safe once that completes. A full queue
    /// with `x-overflow: reject-publish` refuses it.
    pub(crate) fn enqueue(self: &Arc<Self>, msg: Arc<Message>) -> (Enqueued, Outcome) {
        self.enqueue_as(msg, false)
    }

    /// Whether a persistent message routed here goes to the store.
    pub(crate) fn stores(&self, msg: &Message) -> bool {
        msg.persistent && self.store.is_some()
    }

    /// [`Queue::enqueue`]; `stored`: the vhost has already written the message to the
    /// store for this queue among others (one body for a fanout), so this queue only
    /// takes it, or tells the store it let go of it when it refuses it.
    pub(crate) fn enqueue_as(
        self: &Arc<Self>,
        msg: Arc<Message>,
        stored: bool,
    ) -> (Enqueued, Outcome) {
        let ttl = match (msg.expiration_ms(), self.features.message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut st = self.state.lock();
        let refused = if st.deleted {
            Some(Ok(None))
        } else if self.features.reject_publish && self.is_full(&st, msg.body().len()) {
            Some(Err(Rejected))
        } else {
            None
        };
        if let Some(refused) = refused {
            if let (true, Some(store)) = (stored, &self.store) {
                store.ack(self.id, msg.id);
            }
            return (refused, Outcome::default());
        }
        if let Some(durable) = self.page_out(&mut st, &msg, stored) {
            self.counters.published.inc();
            self.maybe_page_in(&mut st);
            return (Ok(durable), self.unlock(st));
        }
        // Written under the queue lock so the store sees publishes in queue order. Only
        // under `--fsync always` does anyone wait for the ticket: with `interval` and
        // `never` a confirm / STORED means "accepted", and the write follows at once.
        let durable = match &self.store {
            Some(store) if msg.persistent && !stored => {
                let ticket = store.publish(self.id, msg.id, persist::Record(&msg));
                (store.policy() == FsyncPolicy::Always).then(|| Durable::new(ticket))
            }
            _ => None,
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let in_store = self.stores(&msg);
        st.ready.push_back(QueuedMessage {
            msg,
            seq,
            redelivered: false,
            in_store,
            expires_at: ttl.map_or(NEVER, |t| now_ms().saturating_add(t)),
        });
        self.counters.published.inc();
        self.enforce_limits(&mut st);
        self.dispatch_locked(&mut st);
        (Ok(durable), self.unlock(st))
    }

    // ---- paging ----------------------------------------------------------------------

    /// Past the memory window (or while older messages are paged: order), writes the
    /// message to the store instead of keeping it. `None`: it stays in memory (no
    /// paging here, room in the window, or a body the store cannot take); else what
    /// the publisher waits for.
    fn page_out(&self, st: &mut State, msg: &Message, stored: bool) -> Option<Option<Durable>> {
        let pg = self.paging.as_ref()?;
        let full = st.paged > 0
            || st.ready.len() >= pg.window.messages
            || st.ready.bytes() as u64 >= pg.window.bytes;
        if !full || persist::encoded_len(msg) > Store::MAX_PAYLOAD {
            return None;
        }
        let durable = if stored {
            // Written once for several queues by the vhost; this queue lets go of it.
            pg.store.mark_paged(self.id, msg.id);
            None
        } else {
            let persistent = self.stores(msg);
            let ticket = pg
                .store
                .publish_paged(self.id, msg.id, persist::Record(msg), !persistent);
            (persistent && pg.store.policy() == FsyncPolicy::Always).then(|| Durable::new(ticket))
        };
        st.paged += 1;
        st.paged_bytes += msg.body().len() as u64;
        st.paged_ever = true;
        if let Some(ttl) = msg.expiration_ms() {
            st.paged_deadlines
                .insert(msg.id, now_ms().saturating_add(ttl));
        }
        Some(durable)
    }

    /// Once the in-memory part is down to half the window, asks the store for the next
    /// paged messages (at most one read in flight), so consumers find the head filled
    /// before they reach it.
    fn maybe_page_in(self: &Arc<Self>, st: &mut State) {
        let Some(pg) = &self.paging else { return };
        if st.paged == 0 || st.paging_in || st.deleted {
            return;
        }
        let (n, bytes, w) = (st.ready.len(), st.ready.bytes() as u64, pg.window);
        if n > w.messages / 2 || bytes > w.bytes / 2 {
            return;
        }
        let epoch = st.page_epoch;
        let me = Arc::downgrade(self);
        let rt = tokio::runtime::Handle::try_current().ok();
        st.paging_in = pg.store.page_in(
            self.id,
            w.messages - n,
            w.bytes - bytes,
            Box::new(move |res| {
                if let Some(q) = me.upgrade() {
                    q.paged_in(epoch, res, rt);
                }
            }),
        );
    }

    /// The store's answer to [`Queue::maybe_page_in`], on its reader thread: the next
    /// paged messages, in order, join the head at once (a get waiting for them wakes);
    /// delivering them to consumers happens on the runtime `rt`, like every other queue
    /// operation (its outcome may arm timers and wake tasks).
    fn paged_in(
        self: &Arc<Self>,
        epoch: u64,
        res: Result<Vec<RecoveredMessage>, StoreError>,
        rt: Option<tokio::runtime::Handle>,
    ) {
        let mut st = self.state.lock();
        if epoch != st.page_epoch || st.deleted {
            // Purged or deleted while the read was in flight: those messages are gone.
            drop(st);
            if let (Ok(msgs), Some(pg)) = (res, &self.paging) {
                for m in msgs {
                    pg.store.ack(self.id, m.msg_id);
                }
            }
            return;
        }
        st.paging_in = false;
        match res {
            Err(e) => {
                tracing::error!(queue = %self.name, error = %e, "reading paged messages failed")
            }
            Ok(msgs) if msgs.is_empty() => {
                // Cannot happen while the counts agree; do not ask again for nothing.
                tracing::error!(
                    queue = %self.name,
                    paged = st.paged,
                    "the store holds no more paged messages than counted"
                );
                st.paged = 0;
                st.paged_bytes = 0;
                st.paged_recovered = 0;
            }
            Ok(msgs) => self.take_in(&mut st, msgs),
        }
        self.paged_in_cv.notify_all();
        drop(st);
        match rt {
            Some(rt) => {
                let q = self.clone();
                drop(rt.spawn(async move { q.dispatch() }));
            }
            None => self.dispatch(),
        }
    }

    /// Appends messages read back from the store at the tail of the in-memory part.
    fn take_in(&self, st: &mut State, msgs: Vec<RecoveredMessage>) {
        for m in msgs {
            st.paged = st.paged.saturating_sub(1);
            // Recovered ones (the oldest) were counted by their stored size, the others
            // by their bodies.
            let counted = if st.paged_recovered > 0 {
                st.paged_recovered -= 1;
                m.payload.len()
            } else {
                persist::body_len(&m.payload)
            };
            st.paged_bytes = st.paged_bytes.saturating_sub(counted as u64);
            let Some(msg) = persist::message_from_record(m.msg_id, m.payload, &mut st.page_names)
            else {
                tracing::warn!(queue = %self.name, msg = m.msg_id, "unreadable paged message skipped");
                continue;
            };
            let seq = st.next_seq;
            st.next_seq += 1;
            // Its own TTL counts from its publish; after a restart (the deadline was not
            // kept) from now, as for every recovered message.
            let expires_at = match st.paged_deadlines.remove(&m.msg_id) {
                Some(at) => at,
                None => msg
                    .expiration_ms()
                    .map_or(NEVER, |t| now_ms().saturating_add(t)),
            };
            st.ready.push_back(QueuedMessage {
                msg: Arc::new(msg),
                seq,
                redelivered: m.delivered,
                in_store: true,
                expires_at,
            });
        }
    }

    /// The in-memory part ran empty while messages are paged (a `basic.get` loop or a
    /// multi-key memcache get faster than the refill): waits for the read in flight, or
    /// reads the next batch here, so that a queue with paged messages never answers
    /// "empty".
    fn page_in_now(&self, st: &mut parking_lot::MutexGuard<'_, State>) {
        let Some(pg) = &self.paging else { return };
        if st.paged == 0 || !st.ready.is_empty() {
            return;
        }
        if st.paging_in {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while st.paging_in && st.ready.is_empty() {
                if self.paged_in_cv.wait_until(st, deadline).timed_out() {
                    break;
                }
            }
            if st.paging_in || !st.ready.is_empty() || st.paged == 0 {
                return;
            }
        }
        let w = pg.window;
        match pg
            .store
            .read_paged(self.id, w.messages / 2 + 1, w.bytes / 2 + 1)
        {
            Ok(msgs) => self.take_in(st, msgs),
            Err(e) => {
                tracing::error!(queue = %self.name, error = %e, "reading paged messages failed")
            }
        }
    }

    /// Counts messages recovery left paged behind the head (at start-up). False when
    /// this queue does not page: the caller reads them in instead.
    pub(crate) fn restore_paged(&self, out: PagedOut) -> bool {
        if self.paging.is_none() {
            return false;
        }
        let mut st = self.state.lock();
        st.paged += out.messages as usize;
        st.paged_recovered += out.messages as usize;
        st.paged_bytes += out.bytes;
        true
    }

    /// Whether one more message of `bytes` would go over a length limit.
    fn is_full(&self, st: &State, bytes: usize) -> bool {
        let f = &self.features;
        f.max_length.is_some_and(|m| st.ready.len() >= m)
            || f.max_length_bytes
                .is_some_and(|m| st.ready.bytes() + bytes > m)
    }

    fn enforce_limits(&self, st: &mut State) {
        let f = &self.features;
        loop {
            let over = f.max_length.is_some_and(|m| st.ready.len() > m)
                || f.max_length_bytes.is_some_and(|m| st.ready.bytes() > m);
            if !over {
                break;
            }
            let Some(m) = st.ready.pop_oldest_lowest() else {
                break;
            };
            self.counters.dropped.inc();
            self.drop_message(st, m, Reason::MaxLen);
        }
    }

    /// A message leaves the queue for good without being delivered: dead-letter it if
    /// the queue says so, and forget it in the store.
    fn drop_message(&self, st: &mut State, m: QueuedMessage, reason: Reason) {
        self.forget(&m);
        if self.features.dead_letter.is_some() {
            st.dead.push((m, reason));
        }
    }

    // ---- after the lock: outcomes ----------------------------------------------------

    /// Releases the lock and wakes waiting getters; returns what the owner must do
    /// outside the lock (dead letters to republish, a head-expiry wake-up to arm).
    fn unlock(&self, mut st: parking_lot::MutexGuard<'_, State>) -> Outcome {
        let waiting = !st.ready.is_empty();
        let head_deadline = st.ready.front().and_then(QueuedMessage::deadline);
        // Ask for a wake-up only when none is pending as early.
        let wake_at = head_deadline.filter(|&d| st.wake_at.map_or(true, |armed| d < armed));
        if wake_at.is_some() {
            st.wake_at = wake_at;
        }
        let dead = std::mem::take(&mut st.dead);
        drop(st);
        if waiting {
            self.arrivals.notify_one();
        }
        Outcome { dead, wake_at }
    }

    /// Hands an outcome to the owner (for operations front ends call directly).
    fn report(self: &Arc<Self>, outcome: Outcome) {
        if outcome.is_empty() {
            return;
        }
        if let Some(home) = self.home.upgrade() {
            home.act(self, outcome);
        }
    }

    /// The head-expiry wake-up asked for at `deadline` is due: drop what expired.
    pub(crate) fn wake(self: &Arc<Self>, deadline: u64) -> Outcome {
        let mut st = self.state.lock();
        if st.wake_at == Some(deadline) {
            st.wake_at = None;
        }
        if st.deleted {
            return Outcome::default();
        }
        self.drop_expired_head(&mut st);
        self.dispatch_locked(&mut st);
        self.unlock(st)
    }

    // ---- the store -------------------------------------------------------------------

    /// Removes a message that is gone for good from the store.
    fn forget(&self, m: &QueuedMessage) {
        if !m.in_store {
            return;
        }
        let store = self
            .store
            .as_ref()
            .or(self.paging.as_ref().map(|p| &p.store));
        if let Some(store) = store {
            store.ack(self.id, m.msg.id);
        }
    }

    /// Records in the store that a persistent message left the queue unsettled, so a
    /// restart redelivers it with redelivered=true.
    fn note_delivered(&self, m: &QueuedMessage) {
        if let (Some(store), true, false) = (&self.store, self.stores(&m.msg), m.redelivered) {
            if m.in_store {
                store.delivered(self.id, m.msg.id);
            }
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
            in_store: true,
            expires_at: NEVER,
        });
    }

    // ---- delivery --------------------------------------------------------------------

    /// Delivers ready messages to consumers with credit, round robin.
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
        let outcome = self.unlock(st);
        self.report(outcome);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut State) {
        self.deliver_locked(st);
        self.maybe_page_in(st);
    }

    fn deliver_locked(self: &Arc<Self>, st: &mut State) {
        if st.consumers.is_empty() {
            return;
        }
        'outer: while !st.ready.is_empty() {
            self.drop_expired_head(st);
            if st.ready.is_empty() {
                break;
            }
            // With a single active consumer only the oldest registered one receives;
            // the next takes over when it goes.
            let n = if self.features.single_active {
                1
            } else {
                st.consumers.len()
            };
            let start = if n == 1 { 0 } else { st.next_consumer % n };
            for i in 0..n {
                let idx = (start + i) % n;
                let consumer = st.consumers[idx].clone();
                if !consumer.try_acquire() {
                    continue;
                }
                st.next_consumer = idx + 1;
                let entry = st.ready.pop_front().expect("checked non-empty");
                let size = entry.msg.body().len();
                consumer.charge(size);
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
                            st.unacked_bytes += size;
                        }
                    }
                    Err(back) => {
                        // The consumer is going away: put the message back at the head.
                        consumer.deactivate();
                        consumer.release(1);
                        consumer.written(size);
                        st.ready.push_front(back.disarm());
                    }
                }
                continue 'outer;
            }
            break;
        }
    }

    /// Drops expired messages at the head. The clock is read only when the head has a
    /// deadline: most queues never pay for it.
    fn drop_expired_head(&self, st: &mut State) {
        let mut now = None;
        while let Some(deadline) = st.ready.front().and_then(QueuedMessage::deadline) {
            if deadline > *now.get_or_insert_with(now_ms) {
                break;
            }
            if let Some(m) = st.ready.pop_front() {
                self.counters.expired.inc();
                self.drop_message(st, m, Reason::Expired);
            }
        }
    }

    // ---- basic.get -------------------------------------------------------------------

    /// Takes the head message (basic.get). With `auto_ack` it is settled at once.
    /// Returns the delivery and the number of messages still ready.
    pub fn get(self: &Arc<Self>, auto_ack: bool) -> Option<(Delivered, usize)> {
        self.touch();
        let mut st = self.state.lock();
        self.drop_expired_head(&mut st);
        self.page_in_now(&mut st);
        let Some(entry) = st.ready.pop_front() else {
            self.maybe_page_in(&mut st);
            self.report(self.unlock(st));
            return None;
        };
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
            st.unacked_bytes += entry.msg.body().len();
        }
        let remaining = st.ready.len() + st.paged;
        self.maybe_page_in(&mut st);
        self.report(self.unlock(st));
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
    pub fn peek(self: &Arc<Self>) -> Option<QueuedMessage> {
        let mut st = self.state.lock();
        self.drop_expired_head(&mut st);
        self.page_in_now(&mut st);
        let head = st.ready.front().cloned();
        self.report(self.unlock(st));
        head
    }

    /// Drops every ready message (paged ones too); returns how many.
    pub fn purge(&self) -> usize {
        let mut st = self.state.lock();
        let all = st.ready.drain_all();
        for m in &all {
            self.forget(m);
        }
        let paged = self.drop_paged(&mut st);
        all.len() + paged
    }

    /// Lets go of every paged message (a read in flight brings back stale ones).
    fn drop_paged(&self, st: &mut State) -> usize {
        let paged = std::mem::take(&mut st.paged);
        st.paged_bytes = 0;
        st.paged_recovered = 0;
        st.paged_deadlines.clear();
        st.page_epoch += 1;
        st.paging_in = false;
        if let (true, Some(pg)) = (paged > 0, &self.paging) {
            pg.store.drop_paged(self.id);
        }
        paged
    }

    // ---- settling --------------------------------------------------------------------

    pub(crate) fn settle_acked(&self, entry: &QueuedMessage) {
        self.forget(entry);
        let mut st = self.state.lock();
        st.settled(entry);
        drop(st);
        self.counters.acked.inc();
    }

    /// Rejected without requeue: dead-lettered when the queue has a target, else gone.
    pub(crate) fn settle_rejected(self: &Arc<Self>, entry: QueuedMessage) {
        let mut st = self.state.lock();
        st.settled(&entry);
        self.drop_message(&mut st, entry, Reason::Rejected);
        self.report(self.unlock(st));
    }

    pub(crate) fn settle_requeued(&self, mut entry: QueuedMessage) {
        entry.redelivered = true;
        let mut st = self.state.lock();
        st.settled(&entry);
        if st.deleted {
            return;
        }
        st.ready.insert_by_seq(entry);
    }

    // ---- consumers and deletion ------------------------------------------------------

    /// Registers a consumer and starts dispatching to it.
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> CoreResult<()> {
        self.touch();
        let mut st = self.state.lock();
        if st.deleted {
            return Err(CoreError::no_queue(&self.name, &self.vhost));
        }
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !st.consumers.is_empty())
        {
            return Err(CoreError::ExclusiveConsumer {
                queue: self.name.clone(),
                vhost: self.vhost.to_string(),
            });
        }
        st.consumers.push(consumer);
        st.had_consumers = true;
        self.dispatch_locked(&mut st);
        self.report(self.unlock(st));
        Ok(())
    }

    /// Removes a consumer. Returns true when the queue is auto-delete and has just lost
    /// its last consumer.
    pub(crate) fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        consumer.deactivate();
        self.touch();
        let mut st = self.state.lock();
        st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        self.options.auto_delete && st.had_consumers && st.consumers.is_empty() && !st.deleted
    }

    /// Marks the queue deleted: drops ready messages and cancels consumers.
    /// Returns the number of ready messages dropped.
    pub(crate) fn mark_deleted(&self) -> usize {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.drain_all().len() + std::mem::take(&mut st.paged);
        st.paged_bytes = 0;
        st.paged_recovered = 0;
        st.page_epoch += 1;
        let paged_store = self
            .paging
            .as_ref()
            .filter(|_| st.paged_ever)
            .map(|p| &p.store);
        if let Some(store) = self.store.as_ref().or(paged_store) {
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
            return Err(CoreError::QueueInUse {
                queue: self.name.clone(),
                vhost: self.vhost.to_string(),
            });
        }
        if if_empty && (!st.ready.is_empty() || st.paged > 0) {
            return Err(CoreError::QueueNotEmpty {
                queue: self.name.clone(),
                vhost: self.vhost.to_string(),
            });
        }
        Ok(())
    }

    /// Consumers of this queue (for admin listings).
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }
}
