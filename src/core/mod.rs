//! The broker core, protocol-agnostic: vhosts, exchanges, bindings, queues, consumers,
//! credit and persistence decisions. Front ends translate their protocol into calls on
//! [`Broker`] / [`VHost`] / [`Queue`] and turn [`Delivered`] messages back into bytes;
//! routing, dispatch, acks, limits and durability are decided only here.
//!
//! Task model: there is no task per queue. Every queue is a short mutex; a publish,
//! an ack or a new consumer dispatches inline, handing messages to the consumers'
//! [`DeliverySink`]s, which only queue bytes for their connection's writer. A queue
//! decides only about itself: what follows elsewhere (dead letters republished through
//! an exchange, a wake-up for its head's TTL) it returns to its vhost, which acts on it
//! once the queue's lock is released. One task per broker runs every queue timer
//! (head TTL, `x-expires`); [`Broker::stop_timers`] ends it.
//!
//! The core knows no protocol: errors are [`CoreError`] variants worded as RabbitMQ
//! words them, classed by [`ErrorKind`] for each front end to map; a publish that must
//! reach the disk first hands out a [`Durable`] to wait on.

pub mod access;
pub mod clock;
pub mod consumer;
pub mod deadletter;
pub mod disk_alarm;
mod durable;
pub mod error;
pub mod exchange;
mod features;
pub mod flow;
pub mod message;
pub mod persist;
pub mod queue;
mod ready;
pub mod stats;
mod timers;
pub mod vhost;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

pub use access::{AuthUser, Permission, Resource, SeedUser, UserInfo, VhostPermissions};
pub use consumer::{Consumer, Credit, Delivered, DeliverySink};
pub use durable::{Durable, NotDurable};
pub use error::{CoreError, CoreResult, Entity, ErrorKind};
pub use exchange::{Exchange, ExchangeKind, ExchangeOptions};
pub use message::{Message, QueuedMessage};
pub use queue::{Queue, QueueDepth, QueueOptions};
pub use stats::BrokerCounters;
pub use vhost::{Declared, Routed, VHost};

use crate::content::FieldValue;
use crate::store::Store;

/// Core settings.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Virtual hosts a fresh data directory starts with.
    pub vhosts: Vec<String>,
    /// Users a fresh data directory starts with.
    pub users: Vec<SeedUser>,
    /// Permissions a fresh data directory starts with.
    pub permissions: Vec<VhostPermissions>,
    /// Users who may log in only from a loopback address (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// Memory the queued messages may hold before publishers are blocked (0 = no limit).
    pub memory_high_watermark: u64,
    /// The front ends' limits, kept here so that status and /metrics can show them.
    pub limits: crate::config::Limits,
    /// How much of each queue stays in memory before the rest is paged to the store
    /// (`None`: queues never page).
    pub queue_window: Option<crate::store::Window>,
}

impl Default for CoreConfig {
    /// RabbitMQ's defaults: vhost `/`, user `guest`/`guest` (administrator, full
    /// permissions on `/`), loopback-only.
    fn default() -> Self {
        Self {
            vhosts: vec!["/".into()],
            users: vec![SeedUser {
                name: "guest".into(),
                password: "guest".into(),
                tags: vec!["administrator".into()],
            }],
            permissions: vec![access::full_permissions("guest", "/")],
            loopback_users: vec!["guest".into()],
            memory_high_watermark: 0,
            limits: crate::config::Limits::default(),
            queue_window: None,
        }
    }
}

/// A client connection, as listings and metrics see it.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Broker-wide id.
    pub id: u64,
    /// `amqp` or `memcache`.
    pub protocol: &'static str,
    /// Remote address.
    pub peer: SocketAddr,
    /// Authenticated user (empty for memcache).
    pub user: Mutex<String>,
    /// Vhost in use.
    pub vhost: Mutex<String>,
    /// Open channels.
    pub channels: AtomicU32,
    /// Numbers of the open channels (listings name channels by them).
    pub channel_numbers: Mutex<Vec<u16>>,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// When it connected.
    pub connected_at: SystemTime,
    /// Cancelled when the broker forces the connection closed; the front end ends it.
    pub forced: tokio_util::sync::CancellationToken,
    /// Why it was forced closed (`Closed via management plugin`, ...).
    pub forced_reason: Mutex<String>,
}

impl ConnectionInfo {
    /// Asks the connection's front end to close it, saying why.
    pub fn force_close(&self, reason: &str) {
        *self.forced_reason.lock() = reason.to_owned();
        self.forced.cancel();
    }

    /// The reason given to [`ConnectionInfo::force_close`].
    pub fn forced_reason(&self) -> String {
        self.forced_reason.lock().clone()
    }
}

/// Removes a connection from the registry when dropped.
pub struct ConnectionGuard {
    shared: Arc<Shared>,
    /// The registered connection.
    pub info: Arc<ConnectionInfo>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.connections.remove(&self.info.id);
        self.shared.counters.lifecycle.connection_closed(
            self.info.protocol,
            self.info.bytes_in.load(Ordering::Relaxed),
            self.info.bytes_out.load(Ordering::Relaxed),
        );
        for v in self.shared.vhosts.read().values() {
            v.connection_closed(self.info.id);
        }
    }
}

/// State shared by every handle on the broker.
pub(crate) struct Shared {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    pub(crate) access: access::Access,
    pub(crate) counters: BrokerCounters,
    pub(crate) store: Option<Store>,
    next_id: AtomicU64,
    next_msg_id: AtomicU64,
    rng: Mutex<u64>,
    connections: DashMap<u64, Arc<ConnectionInfo>>,
    started: Instant,
    flow: flow::FlowControl,
    limits: crate::config::Limits,
    /// Every queue's TTL and `x-expires` timers, driven by one task.
    timers: timers::Timers,
    queue_window: Option<crate::store::Window>,
}

impl Shared {
    /// Where a new queue pages, when the broker pages deep queues.
    pub(crate) fn paging(&self) -> Option<queue::Paging> {
        Some(queue::Paging {
            store: self.store.clone()?,
            window: self.queue_window?,
        })
    }
}

/// The broker: a cheap handle, clone freely.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with no store (nothing survives a restart).
    pub fn new(config: CoreConfig) -> Self {
        Self::with_store(config, None, 1)
    }

    /// A broker that persists durable definitions and persistent messages in `store`.
    /// `first_msg_id` continues above the ids already in the store.
    pub fn with_store(config: CoreConfig, store: Option<Store>, first_msg_id: u64) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            ^ (std::process::id() as u64).rotate_left(32);
        let shared = Arc::new(Shared {
            vhosts: RwLock::new(HashMap::new()),
            access: access::Access::default(),
            counters: BrokerCounters::default(),
            store,
            next_id: AtomicU64::new(1),
            next_msg_id: AtomicU64::new(first_msg_id.max(1)),
            rng: Mutex::new(seed | 1),
            connections: DashMap::new(),
            started: Instant::now(),
            flow: flow::FlowControl::new(config.memory_high_watermark),
            limits: config.limits,
            timers: timers::Timers::default(),
            queue_window: config.queue_window,
        });
        let broker = Self { shared };
        broker
            .access()
            .set_loopback_users(config.loopback_users.iter().cloned());
        // Without a store these are the state; with one, `restore` replaces them by
        // what the data directory holds, or persists them when it holds nothing yet.
        broker.seed_access(&config.vhosts, &config.users, &config.permissions);
        broker
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.shared.vhosts.read().get(name).cloned()
    }

    /// Every vhost.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.shared.vhosts.read().values().cloned().collect()
    }

    /// The next message id.
    pub fn next_message_id(&self) -> u64 {
        self.shared.next_msg_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Broker-wide counters.
    pub fn counters(&self) -> &BrokerCounters {
        &self.shared.counters
    }

    /// The limits in force (connections, frames, messages, timeouts).
    pub fn limits(&self) -> &crate::config::Limits {
        &self.shared.limits
    }

    /// Publisher flow control (the memory alarm).
    pub fn flow(&self) -> &flow::FlowControl {
        &self.shared.flow
    }

    /// Estimated memory held by messages in every queue: ready ones in memory (paged ones
    /// excepted) and unacknowledged ones.
    pub fn queued_memory(&self) -> u64 {
        self.vhosts()
            .iter()
            .flat_map(|v| v.queues())
            .map(|q| {
                // What is in memory: ready messages not paged out, and the delivered
                // ones not yet settled (their deliveries hold them).
                let d = q.depth();
                let held = (d.ready_ram + d.unacked) as u64;
                (d.ready_ram_bytes + d.unacked_bytes) as u64 + held * flow::PER_MESSAGE_OVERHEAD
            })
            .sum()
    }

    /// Re-evaluates the memory alarm (the server calls this periodically).
    pub fn check_memory(&self) {
        if self.shared.flow.limit() != 0 {
            self.shared.flow.update(self.queued_memory());
        }
    }

    /// The store, when durability is enabled.
    pub fn store(&self) -> Option<&Store> {
        self.shared.store.as_ref()
    }

    /// Seconds since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.shared.started.elapsed()
    }

    /// Registers a client connection; it is unregistered (and its exclusive queues
    /// deleted) when the guard drops.
    pub fn register_connection(&self, protocol: &'static str, peer: SocketAddr) -> ConnectionGuard {
        let id = self.shared.next_id();
        let info = Arc::new(ConnectionInfo {
            id,
            protocol,
            peer,
            user: Mutex::new(String::new()),
            vhost: Mutex::new(String::new()),
            channels: AtomicU32::new(0),
            channel_numbers: Mutex::new(Vec::new()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connected_at: SystemTime::now(),
            forced: tokio_util::sync::CancellationToken::new(),
            forced_reason: Mutex::new(String::new()),
        });
        self.shared.connections.insert(id, info.clone());
        self.shared.counters.lifecycle.connection_opened(protocol);
        ConnectionGuard {
            shared: self.shared.clone(),
            info,
        }
    }

    /// Open connections.
    pub fn connections(&self) -> Vec<Arc<ConnectionInfo>> {
        self.shared
            .connections
            .iter()
            .map(|e| e.value().clone())
            .collect()
    }

    /// Generates a server-side name such as `amq.gen-...` or `amq.ctag-...`.
    pub fn generate_name(&self, prefix: &str) -> String {
        self.shared.generate_name(prefix)
    }

    /// Restores durable definitions and messages recovered from the store.
    pub fn restore(&self, recovered: crate::store::Recovered) {
        restore::restore(self, recovered);
    }

    /// Stops the task that runs queue timers (message TTL at the head, `x-expires`) and
    /// waits for it: at shutdown, once no client can reach the broker any more.
    pub async fn stop_timers(&self) {
        self.shared.timers.stop().await;
    }
}

/// A binding as the store keeps it.
pub(crate) struct BindingDef<'a> {
    pub(crate) vhost: &'a str,
    pub(crate) source: &'a str,
    pub(crate) destination: &'a str,
    /// An exchange-to-exchange binding.
    pub(crate) to_exchange: bool,
    pub(crate) routing_key: &'a str,
    pub(crate) arguments: &'a crate::content::FieldTable,
}

impl BindingDef<'_> {
    /// Its definition key; the arguments enter as a checksum, so bindings differing
    /// only in arguments are stored apart.
    fn key(&self) -> String {
        let crc = crc32c::crc32c(&persist::encode_table(self.arguments));
        let kind = if self.to_exchange { "e" } else { "q" };
        let (vhost, source, dest, key) =
            (self.vhost, self.source, self.destination, self.routing_key);
        format!("binding\0{vhost}\0{source}\0{kind}\0{dest}\0{key}\0{crc:08x}")
    }
}

impl Shared {
    pub(crate) fn next_message_id(&self) -> u64 {
        self.next_msg_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn generate_name(&self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut rng = self.rng.lock();
        let mut out = String::with_capacity(prefix.len() + 22);
        out.push_str(prefix);
        for _ in 0..22 {
            // xorshift64*
            let mut x = *rng;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            *rng = x;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            out.push(ALPHABET[(r >> 58) as usize] as char);
        }
        out
    }

    fn put_def(&self, key: String, table: crate::content::FieldTable) {
        if let Some(store) = &self.store {
            // Not waited for: the store writes definitions in the same flush as, and
            // before, any message record that follows, so a confirmed message never
            // outlives the definition of its queue, and declares never block on the disk.
            let _ = store.put_definition(&key, persist::encode_table(&table));
        }
    }

    fn del_def(&self, key: String) {
        if let Some(store) = &self.store {
            let _ = store.delete_definition(&key);
        }
    }

    pub(crate) fn persist_exchange(&self, vhost: &str, x: &Exchange) {
        let t = persist::table(vec![
            ("vhost", persist::s(vhost)),
            ("name", persist::s(&x.name)),
            ("type", persist::s(x.kind.as_str())),
            ("auto_delete", FieldValue::Bool(x.options.auto_delete)),
            ("internal", FieldValue::Bool(x.options.internal)),
            ("arguments", FieldValue::Table(x.options.arguments.clone())),
        ]);
        self.put_def(format!("exchange\0{vhost}\0{}", x.name), t);
    }

    pub(crate) fn unpersist_exchange(&self, vhost: &str, name: &str) {
        self.del_def(format!("exchange\0{vhost}\0{name}"));
    }

    pub(crate) fn persist_queue(&self, vhost: &str, q: &Queue) {
        let t = persist::table(vec![
            ("vhost", persist::s(vhost)),
            ("name", persist::s(&q.name)),
            ("id", FieldValue::I64(q.id as i64)),
            ("auto_delete", FieldValue::Bool(q.options.auto_delete)),
            ("arguments", FieldValue::Table(q.options.arguments.clone())),
        ]);
        self.put_def(format!("queue\0{vhost}\0{}", q.name), t);
    }

    pub(crate) fn unpersist_queue(&self, vhost: &str, q: &Queue) {
        // Its bindings' definitions are dropped at the next recovery, which ignores
        // bindings whose queue no longer exists.
        self.del_def(format!("queue\0{vhost}\0{}", q.name));
    }

    pub(crate) fn persist_binding(&self, b: &BindingDef<'_>) {
        if self.store.is_none() {
            return;
        }
        let t = persist::table(vec![
            ("vhost", persist::s(b.vhost)),
            ("source", persist::s(b.source)),
            ("destination", persist::s(b.destination)),
            ("to_exchange", FieldValue::Bool(b.to_exchange)),
            ("routing_key", persist::s(b.routing_key)),
            ("arguments", FieldValue::Table(b.arguments.clone())),
        ]);
        self.put_def(b.key(), t);
    }

    pub(crate) fn unpersist_binding(&self, b: &BindingDef<'_>) {
        if self.store.is_none() {
            return;
        }
        self.del_def(b.key());
    }
}

mod restore;
#[cfg(test)]
mod tests;
