//! One memcache connection: reads requests with the streaming parser, maps them onto the
//! core and writes the answers back in order.
//!
//! Mapping (front ends translate, the core decides):
//! - `set q` -> declare `q` if missing (durable, not exclusive, not auto-delete), then
//!   publish to the default exchange with routing key `q`, persistent, flags in the
//!   `x-memcache-flags` header, exptime as the message TTL. `STORED` is written only
//!   after the store's ticket completes (fsync under the default policy), and only for
//!   a message a queue took: one a queue refused (`x-overflow: reject-publish` at its
//!   limit) or that found no queue (deleted under the `set`) answers `SERVER_ERROR`.
//! - `get q` -> an auto-acked basic.get; `q/open` a manual-ack get held by the session
//!   until `q/close` (ack) or `q/abort` / disconnect (requeue, redelivered=true);
//!   `q/peek` reads the head without removing it; `q/t=<ms>` waits for a message,
//!   reading the socket meanwhile so that a client hanging up ends the wait at once.
//! - `delete q` -> queue.delete.
//!
//! In upstream mode the queue requests go to a RabbitMQ cluster instead (see
//! `backend.rs`); the rest of the session is the same.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::backend::Upstream;
use super::command::{self, GetKey, Request, StatsKind};
use super::parser::{parse_request, Discard, Limits, Parsed};
use super::stats::{self, MemcacheCounters};
use crate::config::Config;
use crate::content::{FieldTable, FieldValue, Properties};
use crate::core::message::Names;
use crate::core::{
    Broker, ConnectionInfo, CoreError, Delivered, Durable, Message, QueueOptions, VHost,
};

/// The header carrying memcache flags on a message.
pub const FLAGS_HEADER: &str = "x-memcache-flags";

/// memcached: an exptime above 30 days is an absolute unix time.
const RELATIVE_EXPTIME_LIMIT: i64 = 60 * 60 * 24 * 30;

/// Answers buffered for a client before they are written (the write waits while the
/// client does not read, so a pipelining client that never reads holds this much).
const OUT_LIMIT: usize = 256 * 1024;

/// Largest time a `get q/t=<ms>` may wait (memcache clients time out long before).
const MAX_WAIT: Duration = Duration::from_secs(3600);

struct Session {
    broker: Broker,
    vhost: Arc<VHost>,
    info: Arc<ConnectionInfo>,
    counters: &'static MemcacheCounters,
    /// Reliable reads in progress, by queue name.
    open: HashMap<String, Delivered>,
    out: BytesMut,
    /// Answers may not be written before these complete (STORED after fsync).
    tickets: Vec<Durable>,
    quit: bool,
    last_names: Arc<Names>,
    /// Has sent `set`: the memory alarm pauses this connection.
    publisher: bool,
    /// Upstream mode: queue requests go to the cluster.
    upstream: Option<Upstream>,
    /// Whose permissions apply (`memcache.user`).
    user: String,
}

/// Serves one client until it quits, disconnects or the broker shuts down.
pub async fn run(
    mut stream: TcpStream,
    peer: SocketAddr,
    broker: Broker,
    config: Arc<Config>,
    shutdown: CancellationToken,
    upstream: Option<crate::upstream::Gateway>,
) {
    let guard = broker.register_connection(stats::PROTOCOL, peer);
    let _ = stream.set_nodelay(true);
    let Some(vhost) = broker.vhost(&config.memcache.vhost) else {
        // Said once, memcached-style, then closed: every command would fail the same way.
        let line = format!(
            "SERVER_ERROR vhost '{}' does not exist\r\n",
            config.memcache.vhost.escape_debug()
        );
        let _ = stream.write_all(line.as_bytes()).await;
        return;
    };
    let counters = stats::counters();
    counters.connection_opened(&broker);
    let limits = Limits {
        max_line: super::parser::DEFAULT_MAX_LINE,
        max_message: config.memcache.max_message,
    };
    let mut s = Session {
        broker,
        vhost,
        info: guard.info.clone(),
        counters,
        open: HashMap::new(),
        out: BytesMut::with_capacity(16 * 1024),
        tickets: Vec::new(),
        quit: false,
        last_names: Arc::default(),
        publisher: false,
        upstream: upstream.map(Upstream::new),
        user: config.memcache.user.clone(),
    };
    *s.info.user.lock() = s.user.clone();
    *s.info.vhost.lock() = s.vhost.name.to_string();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut discard = Discard::Nothing;
    let idle = config.memcache.idle_timeout;
    'conn: loop {
        // Answer every complete request in the buffer, in order.
        loop {
            match discard {
                Discard::Nothing => {}
                Discard::Bytes(n) => {
                    let k = n.min(buf.len());
                    let _ = buf.split_to(k);
                    discard = if k == n {
                        Discard::Nothing
                    } else {
                        Discard::Bytes(n - k)
                    };
                    if !discard.is_done() {
                        break;
                    }
                }
                Discard::ThroughNewline => match buf.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        let _ = buf.split_to(i + 1);
                        discard = Discard::Nothing;
                    }
                    None => {
                        buf.clear();
                        break;
                    }
                },
            }
            let Ok(Some((consumed, parsed))) = parse_request(&buf, &limits) else {
                break;
            };
            let frame = buf.split_to(consumed).freeze();
            match parsed {
                Parsed::Request(req) => {
                    let mut client = Client {
                        stream: &mut stream,
                        buf: &mut buf,
                    };
                    s.execute(req, &frame, &mut client, &shutdown).await;
                    if s.quit {
                        break 'conn;
                    }
                }
                Parsed::Error { error, discard: d } => {
                    // memcacheq counts a set whose data block it read, even a bad one.
                    if error == command::ProtocolError::BadDataChunk {
                        s.counters.cmd_set.fetch_add(1, Ordering::Relaxed);
                    }
                    s.out.extend_from_slice(error.answer());
                    discard = d;
                }
            }
            // Keep the outbound buffer bounded under a long pipeline.
            if s.out.len() > OUT_LIMIT && s.flush(&mut stream).await.is_err() {
                break 'conn;
            }
        }
        if s.flush(&mut stream).await.is_err() {
            break;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        // The memory or disk alarm pauses producers: stop reading from a connection that sets
        // until it clears (TCP pushes back; the text protocol has no notification).
        if s.publisher && s.broker.flow().is_blocked() {
            tokio::select! {
                _ = s.broker.flow().wait_unblocked() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tokio::select! {
            r = read_idle(&mut stream, &mut buf, idle) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    s.info.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
            },
            // An idle setter is paused at once when an alarm goes off, not after the
            // next set it sends.
            _ = s.broker.flow().wait_blocked(), if s.publisher => {}
            _ = shutdown.cancelled() => break,
            // Forced closed (vhost deleted, management API): the protocol has no way
            // to say why, so the socket just closes.
            _ = s.info.forced.cancelled() => break,
        }
    }
    let _ = s.flush(&mut stream).await;
    // Open reads not closed go back to their queues (redelivered), as on an AMQP
    // channel close.
    for (_, d) in s.open.drain() {
        d.requeue();
    }
    if let Some(up) = s.upstream.take() {
        up.finish().await;
    }
    drop(guard);
}

/// The client's socket and the bytes read from it but not yet parsed, lent to a request
/// that waits (a timed `get`) so that it can tell a hang-up from a pipelined request.
pub(super) struct Client<'a> {
    stream: &'a mut TcpStream,
    buf: &'a mut BytesMut,
}

/// How much a client may pipeline behind a waiting `get` before the wait stops reading.
const MAX_PIPELINED_WHILE_WAITING: usize = 1 << 20;

impl Client<'_> {
    /// Resolves when the client has closed its end (or the socket failed). Requests it
    /// pipelines meanwhile are kept in the buffer for after the wait.
    pub(super) async fn hung_up(&mut self, info: &ConnectionInfo) {
        loop {
            if self.buf.len() >= MAX_PIPELINED_WHILE_WAITING {
                std::future::pending::<()>().await;
            }
            self.buf.reserve(4096);
            match self.stream.read_buf(self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    info.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Why a `set` was not stored, as its `SERVER_ERROR` line says it.
fn not_stored(routed: &crate::core::Routed) -> Option<&'static str> {
    if routed.rejected {
        Some("queue is full (x-overflow reject-publish): message not stored")
    } else if routed.queues == 0 {
        Some("queue was deleted while storing: message not stored")
    } else {
        None
    }
}

/// One read; with memcached's `idle_timeout` (0 = off), a client silent that long reads
/// as gone (memcached closes it without a word).
async fn read_idle(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    idle: Duration,
) -> std::io::Result<usize> {
    if idle.is_zero() {
        return stream.read_buf(buf).await;
    }
    match tokio::time::timeout(idle, stream.read_buf(buf)).await {
        Ok(r) => r,
        Err(_) => Ok(0),
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// memcached's exptime rules, as a TTL: `None` = never expires, `Some(0)` = already expired.
pub(super) fn ttl_ms(exptime: i64) -> Option<u64> {
    match exptime {
        0 => None,
        e if e < 0 => Some(0),
        e if e <= RELATIVE_EXPTIME_LIMIT => Some(e as u64 * 1000),
        e => Some((e - now_unix()).max(0) as u64 * 1000),
    }
}

/// The flags a message carries (0 when it has none, e.g. published over AMQP).
fn message_flags(msg: &Message) -> u32 {
    // Most messages a memcache client reads were set with flags 0 and no TTL: their
    // properties are exactly the shared encoding, so nothing needs decoding.
    if msg.properties() == &plain_properties()[..] {
        return 0;
    }
    match msg
        .headers()
        .as_ref()
        .and_then(|h| h.get(FLAGS_HEADER).cloned())
    {
        Some(v) => v.as_i64().map(|n| n as u32).unwrap_or(0),
        None => 0,
    }
}

fn encode_properties(flags: u32, ttl: Option<u64>) -> Bytes {
    let mut headers = FieldTable::new();
    headers.insert(FLAGS_HEADER, FieldValue::I64(flags as i64));
    Properties {
        headers: Some(headers),
        delivery_mode: Some(2),
        expiration: ttl.map(|t| t.to_string()),
        ..Default::default()
    }
    .to_bytes()
}

/// The properties of a `set` with flags 0 and no TTL, encoded once.
fn plain_properties() -> &'static Bytes {
    static PLAIN: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    PLAIN.get_or_init(|| encode_properties(0, None))
}

fn properties(flags: u32, ttl: Option<u64>) -> Bytes {
    if flags == 0 && ttl.is_none() {
        plain_properties().clone()
    } else {
        encode_properties(flags, ttl)
    }
}

/// The keys of a `get` line as the client wrote them (suffixes included, in the
/// client's order), for the `VALUE` lines. The parser has already checked the line, so
/// its words after the command map one-to-one onto the parsed keys.
pub(super) fn request_keys(frame: &[u8]) -> Vec<&[u8]> {
    let line = frame.split(|b| *b == b'\n').next().unwrap_or_default();
    line.split(|b| *b == b' ' || *b == b'\r' || *b == b'\t')
        .filter(|w| !w.is_empty())
        .skip(1)
        .collect()
}

impl Session {
    async fn flush(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        if let Some(up) = &mut self.upstream {
            up.resolve(&mut self.out).await;
        }
        for t in self.tickets.drain(..) {
            if t.wait().await.is_err() {
                // The answer was already queued as STORED; the store failing is fatal for
                // this connection so the client never sees a false STORED.
                return Err(std::io::Error::other("store failed"));
            }
        }
        if self.out.is_empty() {
            return Ok(());
        }
        // While the client does not read, these bytes are held memory: the alarm sees them.
        let n = self.out.len() as u64;
        let flow = self.broker.flow();
        flow.add_buffered(n);
        let written = stream.write_all(&self.out).await;
        flow.sub_buffered(n);
        written?;
        self.info.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.out.clear();
        Ok(())
    }

    async fn execute(
        &mut self,
        req: Request,
        frame: &Bytes,
        client: &mut Client<'_>,
        shutdown: &CancellationToken,
    ) {
        let req = match &mut self.upstream {
            Some(up) => {
                // memcache.user's permissions apply upstream too (on top of what the
                // cluster grants the URL's user).
                let guard = super::access::Guard::new(&self.broker, &self.user, &self.vhost.name);
                let mut ctx = super::backend::Ctx {
                    conn: client,
                    info: &self.info,
                    guard: &guard,
                    shutdown,
                };
                let served = up.execute(req, frame, &mut self.out, &mut ctx).await;
                self.quit |= up.hung_up;
                match served {
                    Some(req) => req,
                    None => return,
                }
            }
            None => req,
        };
        match req {
            Request::Set {
                key,
                flags,
                exptime,
                data,
                noreply,
            } => {
                self.counters.cmd_set.fetch_add(1, Ordering::Relaxed);
                self.publisher = true;
                let body = frame.slice(data);
                match self.set(&key, flags, exptime, body) {
                    Ok(ticket) => {
                        if let Some(t) = ticket {
                            self.tickets.push(t);
                        }
                        self.counters.set_hits.fetch_add(1, Ordering::Relaxed);
                        if !noreply {
                            command::write_stored(&mut self.out);
                        }
                    }
                    // Answered even under noreply, as memcached answers its own
                    // SERVER_ERRORs: the client must learn that nothing was stored.
                    Err(text) => command::write_server_error(&mut self.out, &text),
                }
            }
            Request::Get { keys } => self.get(keys, &request_keys(frame), client, shutdown).await,
            Request::Delete { key, noreply } => {
                self.counters.cmd_delete.fetch_add(1, Ordering::Relaxed);
                if !self.guard().delete(&key) {
                    // Answered even under noreply: the client must learn that nothing
                    // was deleted (memcached answers its SERVER_ERRORs the same way).
                    self.out
                        .extend_from_slice(b"SERVER_ERROR access refused\r\n");
                    return;
                }
                let existed = self.vhost.find_queue(&key).is_some();
                let ok = existed
                    && self
                        .vhost
                        .delete_queue(&key, false, false, self.info.id)
                        .is_ok();
                if !noreply {
                    if ok {
                        command::write_deleted(&mut self.out);
                    } else {
                        command::write_not_found(&mut self.out);
                    }
                }
            }
            Request::Stats(StatsKind::General) => self.stats(),
            Request::Stats(StatsKind::Reset) => {
                self.counters.reset(&self.broker);
                command::write_reset(&mut self.out);
            }
            Request::Stats(StatsKind::Queue) => {
                let mut queues = self.vhost.queues();
                queues.sort_by(|a, b| a.name.cmp(&b.name));
                for q in queues {
                    let value = format!(
                        "{}/{}",
                        q.counters.published.get(),
                        q.counters.delivered.get()
                    );
                    command::write_stat(&mut self.out, &q.name, value);
                }
                command::write_end(&mut self.out);
            }
            Request::Version => command::write_version(&mut self.out, env!("CARGO_PKG_VERSION")),
            Request::Verbosity { noreply, .. } => {
                if !noreply {
                    command::write_ok(&mut self.out);
                }
            }
            Request::Quit => self.quit = true,
        }
    }

    fn guard(&self) -> super::access::Guard<'_> {
        super::access::Guard::new(&self.broker, &self.user, &self.vhost.name)
    }

    /// Declares a queue as memcache producers expect it: durable, not exclusive, not
    /// auto-delete, so that `queue_declare(q, durable=True)` over AMQP matches it.
    fn declare(&self, queue: &str) -> Result<(), String> {
        let options = QueueOptions {
            durable: true,
            ..Default::default()
        };
        match self
            .vhost
            .declare_queue(queue, options, false, self.info.id)
        {
            Ok(_) => Ok(()),
            // Another connection's exclusive queue: publishing to it is still allowed.
            Err(CoreError::Locked { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn set(
        &mut self,
        queue: &str,
        flags: u32,
        exptime: i64,
        body: Bytes,
    ) -> Result<Option<Durable>, String> {
        let missing = self.vhost.find_queue(queue).is_none();
        self.guard().set(queue, missing)?;
        if missing {
            self.declare(queue)?;
        }
        let ttl = ttl_ms(exptime);
        if ttl == Some(0) {
            // Already expired: memcached answers STORED and the item is never seen.
            return Ok(None);
        }
        let props = properties(flags, ttl);
        // What the core reads from the properties, without decoding them back.
        let decoded = Properties {
            delivery_mode: Some(2),
            expiration: ttl.map(|t| t.to_string()),
            ..Default::default()
        };
        let msg = Message::new(
            self.broker.next_message_id(),
            Names::share(&mut self.last_names, "", queue),
            &props,
            &decoded,
            &body,
        );
        let routed = self.vhost.publish("", msg).map_err(|e| e.to_string())?;
        if let Some(why) = not_stored(&routed) {
            return Err(why.to_owned());
        }
        self.broker
            .counters()
            .lifecycle
            .protocol(stats::PROTOCOL)
            .messages_received
            .inc();
        Ok(routed.durable)
    }

    async fn get(
        &mut self,
        keys: Vec<GetKey>,
        raw: &[&[u8]],
        client: &mut Client<'_>,
        shutdown: &CancellationToken,
    ) {
        // Refuse the whole command before answering anything when a key asks for a
        // second open read on the same queue.
        for k in &keys {
            let o = k.options;
            if o.open && !o.close && self.open.contains_key(&k.queue) {
                self.out.extend_from_slice(
                    b"CLIENT_ERROR a reliable read is already open on this queue\r\n",
                );
                return;
            }
        }
        if !self.guard().get(keys.iter().map(|k| k.queue.as_str())) {
            self.out
                .extend_from_slice(b"SERVER_ERROR access refused\r\n");
            return;
        }
        for (i, k) in keys.into_iter().enumerate() {
            let o = k.options;
            let key: &[u8] = raw.get(i).copied().unwrap_or(k.queue.as_bytes());
            if o.close {
                if let Some(d) = self.open.remove(&k.queue) {
                    d.ack();
                }
            }
            if o.abort {
                if let Some(d) = self.open.remove(&k.queue) {
                    d.requeue();
                }
            }
            if !k.options.fetches() {
                continue;
            }
            self.counters.cmd_get.fetch_add(1, Ordering::Relaxed);
            // A timed read waits on the queue a later `set` will use, so it declares it
            // the way `set` does.
            if o.timeout_ms.is_some_and(|ms| ms > 0)
                && self.vhost.find_queue(&k.queue).is_none()
                && self.guard().declare(&k.queue)
            {
                let _ = self.declare(&k.queue);
            }
            let Ok(queue) = self.vhost.queue(&k.queue, self.info.id) else {
                self.counters.get_misses.fetch_add(1, Ordering::Relaxed);
                self.broker.counters().get_empty.inc();
                continue;
            };
            if o.peek {
                match queue.peek() {
                    Some(entry) => {
                        self.counters.get_hits.fetch_add(1, Ordering::Relaxed);
                        command::write_value(
                            &mut self.out,
                            key,
                            message_flags(&entry.msg),
                            entry.msg.body(),
                        );
                    }
                    None => {
                        self.counters.get_misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            let auto_ack = !o.open;
            let hit = match o.timeout_ms {
                Some(ms) if ms > 0 => {
                    let wait = Duration::from_millis(ms).min(MAX_WAIT);
                    tokio::select! {
                        hit = queue.get_wait(auto_ack, wait) => hit,
                        _ = shutdown.cancelled() => None,
                        _ = client.hung_up(&self.info) => {
                            // Nobody to answer: end the connection now (its slot and
                            // curr_connections with it), not when the timeout runs out.
                            self.quit = true;
                            return;
                        }
                    }
                }
                _ => queue.get(auto_ack),
            };
            let counters = self.broker.counters();
            match hit {
                Some((d, _)) => {
                    self.counters.get_hits.fetch_add(1, Ordering::Relaxed);
                    counters.protocol(stats::PROTOCOL).messages_delivered.inc();
                    if d.redelivered() {
                        counters.redelivered.inc();
                    }
                    let msg = d.entry.msg.clone();
                    command::write_value(&mut self.out, key, message_flags(&msg), msg.body());
                    if auto_ack {
                        counters.delivered_get_auto_ack.inc();
                    } else {
                        counters.delivered_get_manual_ack.inc();
                        self.open.insert(k.queue.clone(), d);
                    }
                }
                None => {
                    self.counters.get_misses.fetch_add(1, Ordering::Relaxed);
                    counters.get_empty.inc();
                }
            }
            // A many-key get of large messages is written as it goes: a client that does
            // not read holds at most OUT_LIMIT (plus one message) here, the rest stays in
            // the queues.
            if self.out.len() > OUT_LIMIT && self.flush(client.stream).await.is_err() {
                return;
            }
        }
        command::write_end(&mut self.out);
    }

    /// memcacheq's 17 fields in its order and with its meanings, then memcached's
    /// fields that memcacheq does not have, for memcached tools.
    fn stats(&mut self) {
        let c = self.counters;
        let connections = stats::protocol_totals(&self.broker);
        let t = c.since_reset(&connections);
        let out = &mut self.out;
        let (user, system) = stats::rusage();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let curr = connections.connections;
        command::write_stat(out, "pid", std::process::id());
        command::write_stat(out, "uptime", self.broker.uptime().as_secs());
        command::write_stat(out, "time", now_unix());
        command::write_stat(out, "version", env!("CARGO_PKG_VERSION"));
        command::write_stat(out, "pointer_size", usize::BITS);
        command::write_stat(out, "rusage_user", user);
        command::write_stat(out, "rusage_system", system);
        command::write_stat(out, "curr_connections", curr);
        command::write_stat(out, "total_connections", t.total_connections);
        // memcacheq allocates one structure per connection open at once, plus one for
        // the listening socket, and reuses them.
        command::write_stat(
            out,
            "connection_structures",
            get(&c.peak_connections).max(curr) + 1,
        );
        command::write_stat(out, "get_cmds", t.cmd_get);
        command::write_stat(out, "get_hits", t.get_hits);
        command::write_stat(out, "set_cmds", t.cmd_set);
        command::write_stat(out, "set_hits", t.set_hits);
        command::write_stat(out, "bytes_read", t.bytes_read);
        command::write_stat(out, "bytes_written", t.bytes_written);
        command::write_stat(
            out,
            "threads",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        );
        // memcached's names for the same counts, and what memcacheq does not report.
        command::write_stat(out, "cmd_get", t.cmd_get);
        command::write_stat(out, "cmd_set", t.cmd_set);
        command::write_stat(out, "get_misses", t.get_misses);
        let items: usize = self.vhost.queues().iter().map(|q| q.depth().ready).sum();
        command::write_stat(out, "curr_items", items);
        command::write_end(out);
    }
}
