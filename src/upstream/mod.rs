//! Upstream mode (issue 15): the memcache front door served from an existing RabbitMQ
//! cluster. qgate is then a stateless gateway: every `set`, `get` and `delete` of the
//! memcache listener becomes AMQP 0-9-1 on the cluster, through lapin (a maintained
//! client whose confirm, return and channel handling we rely on, and already the client
//! of `qgate-bench`).
//!
//! # Layout
//! - [`pool`]: a few connections spread over the listed nodes; a dead one is replaced
//!   by a connection to the next node on first use.
//! - [`Client::set`]: declare on first use, publish (mandatory, persistent) on the
//!   link's confirm channel in the client's order, then one task waits for the confirm; a
//!   nack, a confirm timeout or a lost connection replaces the channel (or the
//!   connection) and publishes again, up to `publish_attempts` times. `STORED` only
//!   ever follows a confirm.
//! - [`Client`]: one per memcache session: the link its sets use, its own channel for
//!   `basic.get`, and the session's open reads (`q/open`) as unacked deliveries until
//!   close / abort (each on a channel of its own: closing it requeues at the head).
//! - [`stats`]: the gateway's figures, rendered into `/metrics` and [`UpstreamStatus`].
//!
//! # Delivery guarantees
//! A `set` is acknowledged only after the cluster's confirm: nothing STORED is lost
//! while the queue's replicas keep a majority. A retry after a timeout or a lost
//! connection may enqueue a message twice (at-least-once); those retries are counted in
//! `possible_duplicates`. A plain `get` is a `basic.get` with manual ack, acked as soon
//! as the message reached the gateway: a connection that dies with the message in
//! flight leaves it in the queue (redelivered) instead of losing it.

mod pool;
mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use parking_lot::RwLock;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::UpstreamConfig;
use pool::{Link, Pool, ProbeError};
pub use stats::{LinkStatus, QueueDepth, UpstreamStatus};
use stats::{Op, Outcome, Stats};

/// The header carrying memcache flags (the same as local mode's).
const FLAGS_HEADER: &str = "x-memcache-flags";

/// How often the depths of the queues the gateway uses are read from the cluster.
const DEPTH_INTERVAL: Duration = Duration::from_secs(2);

/// At most this many queues have their depth polled.
const DEPTH_MAX_QUEUES: usize = 1000;

/// Pause before publish attempt n (n >= 1): 50 ms, 100 ms, 200 ms, ... at most 1 s, so a
/// retry lands after a failover has had a moment to elect a new leader.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << (attempt - 1).min(5)).min(1000))
}

/// What went wrong upstream; the memcache client gets `SERVER_ERROR <text>`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No node could be reached.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// An AMQP error worth retrying (connection or channel lost, timeout).
    #[error("upstream: {0}")]
    Amqp(String),
    /// The cluster refused the operation (e.g. 403): retrying will not help.
    #[error("upstream refused: {0}")]
    Refused(String),
    /// A `set` was not confirmed after every attempt.
    #[error("upstream did not confirm after {0} attempts ({1})")]
    NotConfirmed(u32, String),
    /// An open read's channel died before its ack: the cluster requeued it.
    #[error("upstream connection lost; the open read went back to the queue")]
    ReadLost,
}

impl UpstreamError {
    fn amqp(e: lapin::Error) -> Self {
        Self::Amqp(one_line(&e.to_string()))
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// A reply code from the cluster (403 ACCESS_REFUSED and the like): retrying will not
/// change the answer.
fn refused(e: &lapin::protocol::AMQPError) -> UpstreamError {
    UpstreamError::Refused(one_line(e.get_message().as_str()))
}

/// The AMQP reply code of a channel or connection error, if it is one.
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e {
        lapin::Error::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// A `set` in flight: resolves once the cluster confirmed it (or gave up).
pub type PendingSet = JoinHandle<Result<(), UpstreamError>>;

/// What a read returned.
#[derive(Debug, Clone)]
pub struct Got {
    /// Memcache flags (0 without the header, e.g. published over AMQP).
    pub flags: u32,
    /// Body.
    pub body: Vec<u8>,
}

/// How a read treats the message it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Take it (ack at once).
    Take,
    /// Hold it unacked until close / abort.
    Open,
    /// Put it back at once (basic.reject requeue).
    Peek,
}

struct Inner {
    config: UpstreamConfig,
    pool: Pool,
    /// Queues known to exist upstream (declared or seen by this gateway).
    known: DashMap<String, ()>,
    stats: Arc<Stats>,
    queue_args: FieldTable,
}

/// The gateway to one cluster; cheap to clone.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

static CURRENT: RwLock<Option<Gateway>> = RwLock::new(None);

/// The gateway of the running server, when in upstream mode (for `/metrics`).
pub fn current() -> Option<Gateway> {
    CURRENT.read().clone()
}

impl Gateway {
    /// A gateway for `config` (not yet connected; see [`Gateway::run`]).
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        let urls = config.node_urls()?;
        let stats = Arc::new(Stats::default());
        let mut queue_args = FieldTable::default();
        queue_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(config.queue_type.as_str().into()),
        );
        Ok(Self(Arc::new(Inner {
            config: config.clone(),
            pool: Pool::new(urls, config.pool, stats.clone()),
            known: DashMap::new(),
            stats,
            queue_args,
        })))
    }

    /// Connects the pool, makes this the gateway `/metrics` reports, and polls the depth
    /// of the queues in use until `shutdown` (the server closes the connections with
    /// [`Gateway::close`] once the memcache sessions have finished).
    pub async fn run(self, shutdown: CancellationToken) {
        *CURRENT.write() = Some(self.clone());
        self.0.pool.warm_up().await;
        let mut tick = tokio::time::interval(DEPTH_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => self.poll_depths().await,
                _ = shutdown.cancelled() => break,
            }
        }
        let mut cur = CURRENT.write();
        if cur.as_ref().is_some_and(|g| Arc::ptr_eq(&g.0, &self.0)) {
            *cur = None;
        }
    }

    /// Closes the connections to the cluster (what is still unacked on them goes back
    /// to its queues).
    pub async fn close(&self) {
        self.0.pool.close().await;
    }

    /// The first attempt of a `set`, in the caller's task so that one client's sets go
    /// out in its order: declare on first use, then `basic.publish` on `link`'s confirm
    /// channel. Returns the confirm to wait for, or why the attempt failed.
    async fn send(
        &self,
        link: &Link,
        queue: &str,
        flags: u32,
        ttl_ms: Option<u64>,
        body: &[u8],
    ) -> Result<(Channel, lapin::publisher_confirm::PublisherConfirm), UpstreamError> {
        self.ensure_queue(link, queue).await?;
        let ch = link.publish_channel().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        match ch
            .basic_publish("", queue, options, body, properties(flags, ttl_ms))
            .await
        {
            Ok(confirm) => Ok((ch, confirm)),
            Err(e) => {
                self.0.stats.retry_connection.inc();
                link.replace_publish_channel(&ch).await;
                Err(UpstreamError::amqp(e))
            }
        }
    }

    /// Waits for the confirm of one attempt. `Ok(true)`: confirmed. `Ok(false)`: try
    /// again (and whether this attempt may have been enqueued anyway).
    async fn confirmed(
        &self,
        link: &Link,
        queue: &str,
        ch: &Channel,
        confirm: lapin::publisher_confirm::PublisherConfirm,
        started: Instant,
    ) -> Result<(), (String, bool)> {
        let stats = &self.0.stats;
        let confirm_timeout = self.0.config.confirm_timeout;
        match tokio::time::timeout(confirm_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => {
                stats.confirm.observe(started.elapsed());
                Ok(())
            }
            Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)))) => {
                // Returned: the queue is gone (deleted since we declared it).
                stats.retry_returned.inc();
                self.0.known.remove(queue);
                Err(("queue vanished; declaring it again".into(), false))
            }
            Ok(Ok(Confirmation::Nack(None))) => {
                stats.retry_nack.inc();
                link.replace_publish_channel(ch).await;
                Err(("publish nacked".into(), false))
            }
            Ok(Ok(Confirmation::NotRequested)) => {
                stats.retry_connection.inc();
                link.replace_publish_channel(ch).await;
                Err(("channel not in confirm mode".into(), true))
            }
            Ok(Err(e)) => {
                stats.retry_connection.inc();
                link.replace_publish_channel(ch).await;
                Err((one_line(&e.to_string()), true))
            }
            Err(_) => {
                stats.retry_timeout.inc();
                link.replace_publish_channel(ch).await;
                Err((
                    format!("no confirm within {} ms", confirm_timeout.as_millis()),
                    true,
                ))
            }
        }
    }

    /// After a failed first attempt: publish again on a fresh channel (or connection,
    /// or node) until confirmed or out of attempts. `maybe_enqueued`: an earlier attempt
    /// may have reached the queue, so a confirmed retry may be a duplicate.
    async fn retry(
        &self,
        queue: &str,
        flags: u32,
        ttl_ms: Option<u64>,
        body: &[u8],
        mut last: String,
        mut maybe_enqueued: bool,
    ) -> Result<(), UpstreamError> {
        let attempts = self.0.config.publish_attempts;
        for attempt in 1..attempts {
            tokio::time::sleep(backoff(attempt)).await;
            let link = match self.0.pool.link().await {
                Ok(l) => l,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let started = Instant::now();
            let (ch, confirm) = match self.send(&link, queue, flags, ttl_ms, body).await {
                Ok(sent) => sent,
                Err(e @ UpstreamError::Refused(_)) => return Err(e),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match self.confirmed(&link, queue, &ch, confirm, started).await {
                Ok(()) => {
                    if maybe_enqueued {
                        self.0.stats.possible_duplicates.inc();
                    }
                    return Ok(());
                }
                Err((why, enqueued)) => {
                    last = why;
                    maybe_enqueued |= enqueued;
                }
            }
        }
        Err(UpstreamError::NotConfirmed(attempts, last))
    }

    /// Declares `queue` as `set` does (durable, the configured `x-queue-type`) unless
    /// this gateway already knows it exists.
    async fn ensure_queue(&self, link: &Link, queue: &str) -> Result<(), UpstreamError> {
        if self.0.known.contains_key(queue) {
            return Ok(());
        }
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        match link.probe_declare(queue, options, &self.0.queue_args).await {
            Ok(q) => {
                self.0.stats.set_depth(
                    queue,
                    QueueDepth {
                        messages_ready: q.message_count(),
                        consumers: q.consumer_count(),
                    },
                );
            }
            // It exists with other arguments (say a classic queue an AMQP user made),
            // or is another connection's exclusive queue: publishing to it works.
            Err(ProbeError::Reply(e)) if matches!(e.get_id(), 405 | 406) => {}
            Err(ProbeError::Reply(e)) => return Err(refused(&e)),
            Err(ProbeError::Upstream(e)) => return Err(e),
        }
        self.0.known.insert(queue.to_owned(), ());
        Ok(())
    }

    /// Declares `queue` as `set` would (a timed read waits on it).
    pub async fn declare(&self, queue: &str) -> Result<(), UpstreamError> {
        let link = self.0.pool.link().await?;
        self.ensure_queue(&link, queue).await
    }

    /// This gateway has seen `queue` exist upstream (declared or checked it).
    pub fn knows(&self, queue: &str) -> bool {
        self.0.known.contains_key(queue)
    }

    /// The queue exists upstream (passive declare unless already known).
    pub async fn exists(&self, queue: &str) -> Result<bool, UpstreamError> {
        if self.0.known.contains_key(queue) {
            return Ok(true);
        }
        Ok(self.passive(queue).await?.is_some())
    }

    async fn passive(&self, queue: &str) -> Result<Option<QueueDepth>, UpstreamError> {
        let link = self.0.pool.link().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match link
            .probe_declare(queue, options, &FieldTable::default())
            .await
        {
            Ok(q) => {
                let depth = QueueDepth {
                    messages_ready: q.message_count(),
                    consumers: q.consumer_count(),
                };
                self.0.known.insert(queue.to_owned(), ());
                self.0.stats.set_depth(queue, depth);
                Ok(Some(depth))
            }
            Err(ProbeError::Reply(e)) if e.get_id() == 404 => {
                self.0.known.remove(queue);
                self.0.stats.forget_depth(queue);
                Ok(None)
            }
            // Another connection's exclusive queue: it exists, its depth is private.
            Err(ProbeError::Reply(e)) if e.get_id() == 405 => Ok(None),
            Err(ProbeError::Reply(e)) => Err(refused(&e)),
            Err(ProbeError::Upstream(e)) => Err(e),
        }
    }

    /// `delete q`: `queue.delete`; false when there was no such queue.
    pub async fn delete(&self, queue: &str) -> Result<bool, UpstreamError> {
        let r = self.delete_inner(queue).await;
        self.0.stats.op(
            Op::Delete,
            match r {
                Ok(true) => Outcome::Ok,
                Ok(false) => Outcome::Miss,
                Err(_) => Outcome::Error,
            },
        );
        r
    }

    async fn delete_inner(&self, queue: &str) -> Result<bool, UpstreamError> {
        // RabbitMQ answers delete-ok for a missing queue too; memcacheq says NOT_FOUND.
        if self.passive(queue).await?.is_none() {
            return Ok(false);
        }
        let link = self.0.pool.link().await?;
        let probe = link.probe().await?;
        let r = probe
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
        self.0.known.remove(queue);
        self.0.stats.forget_depth(queue);
        match r {
            Ok(_) => Ok(true),
            Err(e) if reply_code(&e) == Some(404) => Ok(false),
            Err(e) if reply_code(&e) == Some(403) => {
                Err(UpstreamError::Refused(one_line(&e.to_string())))
            }
            Err(e) => Err(UpstreamError::amqp(e)),
        }
    }

    /// The upstream side of one memcache session.
    pub fn client(&self) -> Client {
        Client {
            gw: self.clone(),
            publish: None,
            chan: None,
            spare: None,
            open: HashMap::new(),
        }
    }

    async fn poll_depths(&self) {
        let queues: Vec<String> = self
            .0
            .known
            .iter()
            .take(DEPTH_MAX_QUEUES)
            .map(|e| e.key().clone())
            .collect();
        for q in queues {
            if self.passive(&q).await.is_err() {
                // The cluster is unreachable right now; the next tick tries again.
                break;
            }
        }
    }

    fn links(&self) -> Vec<LinkStatus> {
        self.0
            .pool
            .links()
            .iter()
            .map(|l| LinkStatus {
                node: self.0.pool.labels[l.node].clone(),
                connected: l.alive(),
            })
            .collect()
    }

    /// Queue -> (sets stored, messages got) through this gateway.
    pub fn queue_counts(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        self.0.stats.queue_counts()
    }

    /// The gateway's figures now.
    pub fn status(&self) -> UpstreamStatus {
        self.0.stats.status(&self.0.pool.labels, self.links())
    }

    /// Appends the gateway's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String, prefix: &str) {
        self.0
            .stats
            .render(out, prefix, &self.0.pool.labels, &self.links());
    }
}

/// Properties of a memcache `set`, as local mode writes them: persistent, flags in
/// `x-memcache-flags` (a signed 64-bit field, as local mode encodes it), exptime as
/// the per-message TTL.
fn properties(flags: u32, ttl_ms: Option<u64>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(FLAGS_HEADER.into(), AMQPValue::LongLongInt(flags as i64));
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    match ttl_ms {
        Some(t) => props.with_expiration(ShortString::from(t.to_string())),
        None => props,
    }
}

/// Flags of a delivered message: the header when it holds an integer, else 0.
fn flags_of(props: &BasicProperties) -> u32 {
    let Some(v) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(FLAGS_HEADER))
    else {
        return 0;
    };
    let n: i64 = match v {
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortShortUInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::ShortUInt(n) => *n as i64,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongUInt(n) => *n as i64,
        AMQPValue::LongLongInt(n) => *n,
        _ => 0,
    };
    n as u32
}

/// A read held open: the message is unacked on a channel of its own, so that an abort
/// can close that channel. (On RabbitMQ 3.10 quorum queues a `basic.reject` with
/// requeue puts the message at the back of the queue, while a channel close returns it
/// to the head, as local mode and classic queues do.)
struct OpenRead {
    link: Arc<Link>,
    chan: Channel,
    tag: u64,
}

/// One memcache session upstream: the link its sets go out on (one link, so that a
/// client's sets reach a queue in its order), channels of its own for reads (so a 404
/// or a dead connection affects only this session) and its open reads.
pub struct Client {
    gw: Gateway,
    publish: Option<Arc<Link>>,
    /// Plain takes: basic.get then basic.ack at once.
    chan: Option<(Arc<Link>, Channel)>,
    /// A channel ready for the next open read or peek.
    spare: Option<(Arc<Link>, Channel)>,
    open: HashMap<String, OpenRead>,
}

fn usable(slot: &Option<(Arc<Link>, Channel)>) -> bool {
    slot.as_ref()
        .is_some_and(|(link, ch)| link.alive() && ch.status().connected())
}

/// Closes a channel, waiting for close-ok: its unacked message is back at the head of
/// its queue when this returns.
async fn close_channel(ch: &Channel) {
    let _ = ch.close(200, "requeue").await;
}

impl Client {
    /// Publishes one memcache `set` with confirms. The publish itself goes out before
    /// this returns (so pipelined sets keep their order); the returned task resolves
    /// once the cluster confirmed it (answer STORED) or every retry failed.
    pub async fn set(
        &mut self,
        queue: &str,
        flags: u32,
        ttl_ms: Option<u64>,
        body: Bytes,
    ) -> PendingSet {
        let gw = self.gw.clone();
        let link = match &self.publish {
            Some(l) if l.alive() => Ok(l.clone()),
            _ => gw.0.pool.link().await,
        };
        let started = Instant::now();
        let first = match &link {
            Ok(link) => {
                self.publish = Some(link.clone());
                gw.send(link, queue, flags, ttl_ms, &body).await
            }
            Err(e) => Err(e.clone()),
        };
        let queue = queue.to_owned();
        tokio::spawn(async move {
            let r = match (first, link) {
                (Ok((ch, confirm)), Ok(link)) => {
                    match gw.confirmed(&link, &queue, &ch, confirm, started).await {
                        Ok(()) => Ok(()),
                        Err((why, enqueued)) => {
                            gw.retry(&queue, flags, ttl_ms, &body, why, enqueued).await
                        }
                    }
                }
                (Err(e @ UpstreamError::Refused(_)), _) => Err(e),
                (Err(e), _) | (_, Err(e)) => {
                    gw.retry(&queue, flags, ttl_ms, &body, e.to_string(), false)
                        .await
                }
            };
            if r.is_ok() {
                gw.0.stats.count_queue(&queue, true);
            }
            gw.0.stats.op(
                Op::Set,
                if r.is_ok() {
                    Outcome::Ok
                } else {
                    Outcome::Error
                },
            );
            r
        })
    }

    async fn take_channel(&mut self) -> Result<Channel, UpstreamError> {
        if !usable(&self.chan) {
            let link = self.gw.0.pool.link().await?;
            let ch = link.session_channel().await?;
            self.chan = Some((link, ch));
        }
        Ok(self
            .chan
            .as_ref()
            .map(|(_, ch)| ch.clone())
            .expect("just set"))
    }

    /// The spare channel, opened if needed. It stays in `self.spare` until a hit takes
    /// it: a read cancelled half-way (the client hung up) leaves any message it checked
    /// out on a channel that [`Client::finish`] closes, so it goes back to its queue.
    async fn spare_channel(&mut self) -> Result<(Arc<Link>, Channel), UpstreamError> {
        if !usable(&self.spare) {
            let link = self.gw.0.pool.link().await?;
            let ch = link.session_channel().await?;
            self.spare = Some((link, ch));
        }
        Ok(self.spare.clone().expect("just set"))
    }

    /// Takes, opens or peeks at the head of `queue`; `None` when it is empty or missing.
    pub async fn get(&mut self, queue: &str, mode: ReadMode) -> Result<Option<Got>, UpstreamError> {
        let r = self.get_inner(queue, mode).await;
        let op = match mode {
            ReadMode::Take => Op::Get,
            ReadMode::Open => Op::Open,
            ReadMode::Peek => Op::Peek,
        };
        self.gw.0.stats.op(
            op,
            match &r {
                Ok(Some(_)) => Outcome::Ok,
                Ok(None) => Outcome::Miss,
                Err(_) => Outcome::Error,
            },
        );
        r
    }

    async fn get_inner(
        &mut self,
        queue: &str,
        mode: ReadMode,
    ) -> Result<Option<Got>, UpstreamError> {
        // A basic.get on a missing queue closes the channel: check on the probe first.
        if !self.gw.exists(queue).await? {
            return Ok(None);
        }
        let (link, ch) = match mode {
            ReadMode::Take => (None, self.take_channel().await?),
            ReadMode::Open | ReadMode::Peek => {
                let (link, ch) = self.spare_channel().await?;
                (Some(link), ch)
            }
        };
        let got = match ch.basic_get(queue, BasicGetOptions { no_ack: false }).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) => {
                if mode == ReadMode::Take {
                    self.chan = None;
                }
                if reply_code(&e) == Some(404) {
                    self.gw.0.known.remove(queue);
                    return Ok(None);
                }
                return Err(UpstreamError::amqp(e));
            }
        };
        let tag = got.delivery.delivery_tag;
        let out = Got {
            flags: flags_of(&got.delivery.properties),
            body: got.delivery.data,
        };
        match (mode, link) {
            (ReadMode::Take, _) => {
                self.gw.0.stats.count_queue(queue, false);
                if ch.basic_ack(tag, BasicAckOptions::default()).await.is_err() {
                    // The cluster requeues it with the channel: delivered twice, not lost.
                    self.gw.0.stats.get_ack_failures.inc();
                }
            }
            (ReadMode::Open, Some(link)) => {
                self.spare = None;
                self.gw.0.stats.count_queue(queue, false);
                self.open.insert(
                    queue.to_owned(),
                    OpenRead {
                        link,
                        chan: ch,
                        tag,
                    },
                );
            }
            _ => {
                self.spare = None;
                close_channel(&ch).await;
            }
        }
        Ok(Some(out))
    }

    /// Like [`Client::get`], waiting up to `wait` for a message. AMQP has no blocking
    /// get, so this polls `basic.get` (every 10 ms at first, then every 50 ms).
    pub async fn get_wait(
        &mut self,
        queue: &str,
        mode: ReadMode,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<Got>, UpstreamError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(got) = self.get(queue, mode).await? {
                return Ok(Some(got));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::select! {
                _ = tokio::time::sleep(pause.min(deadline - now)) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// A reliable read is open on `queue`.
    pub fn is_open(&self, queue: &str) -> bool {
        self.open.contains_key(queue)
    }

    /// `q/close`: acks the open read. Err when its channel died first (the cluster
    /// requeued the message, so it will be delivered again).
    pub async fn close(&mut self, queue: &str) -> Result<(), UpstreamError> {
        let Some(r) = self.open.remove(queue) else {
            return Ok(());
        };
        let res = if r.link.alive() && r.chan.status().connected() {
            r.chan
                .basic_ack(r.tag, BasicAckOptions::default())
                .await
                .map_err(|_| UpstreamError::ReadLost)
        } else {
            Err(UpstreamError::ReadLost)
        };
        if res.is_ok() {
            self.spare = Some((r.link, r.chan));
        }
        self.gw.0.stats.op(
            Op::Close,
            if res.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Error
            },
        );
        res
    }

    /// `q/abort`: requeues the open read at the head of its queue, redelivered (if its
    /// channel died, the cluster did that already).
    pub async fn abort(&mut self, queue: &str) {
        if let Some(r) = self.open.remove(queue) {
            close_channel(&r.chan).await;
            self.gw.0.stats.op(Op::Abort, Outcome::Ok);
        }
    }

    /// The session ended: requeues every open read and closes the channels.
    pub async fn finish(mut self) {
        let queues: Vec<String> = self.open.keys().cloned().collect();
        for q in queues {
            self.abort(&q).await;
        }
        for (_, ch) in [self.chan.take(), self.spare.take()].into_iter().flatten() {
            let _ = ch.close(200, "memcache client gone").await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_through_properties() {
        assert_eq!(flags_of(&properties(0, None)), 0);
        assert_eq!(flags_of(&properties(u32::MAX, Some(5000))), u32::MAX);
        assert_eq!(
            properties(1, Some(5000))
                .expiration()
                .as_ref()
                .map(|s| s.as_str()),
            Some("5000")
        );
        assert_eq!(flags_of(&BasicProperties::default()), 0);
    }

    #[test]
    fn backoff_grows_to_a_second() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(9), Duration::from_millis(1000));
    }
}
