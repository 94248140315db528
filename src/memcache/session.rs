//! One memcache connection: reads requests with the [codec](super::codec), answers
//! them in order, and sends what touches queues to the session's
//! [backend](super::backend) (this broker's core, or a RabbitMQ cluster in upstream
//! mode). What each request answers, the counters behind `stats`, the access checks
//! and when answers are written are the session's, the same in both modes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::access::{Guard, REFUSED};
use super::backend::{Backend, Ctx, Fetched, Item, Local, Upstream};
use super::codec::Decoded;
use super::command::{self, GetKey, Request, StatsKind};
use super::connection::Connection;
use super::parser::Limits;
use super::stats::{self, MemcacheCounters};
use crate::config::Config;
use crate::core::{Broker, ConnectionInfo, VHost};

/// memcached: an exptime above 30 days is an absolute unix time.
const RELATIVE_EXPTIME_LIMIT: i64 = 60 * 60 * 24 * 30;

/// Answers buffered for a client before they are written (the write waits while the
/// client does not read, so a pipelining client that never reads holds this much).
const OUT_LIMIT: usize = 256 * 1024;

struct Session {
    broker: Broker,
    vhost: Arc<VHost>,
    info: Arc<ConnectionInfo>,
    counters: &'static MemcacheCounters,
    backend: Backend,
    quit: bool,
    /// Has sent `set`: the memory alarm pauses this connection.
    publisher: bool,
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
    let info = guard.info.clone();
    let backend = match upstream {
        Some(gw) => Backend::Upstream(Box::new(Upstream::new(gw))),
        None => Backend::Local(Local::new(broker.clone(), vhost.clone(), info.clone())),
    };
    let mut conn = Connection::new(stream, limits, info.clone());
    let mut s = Session {
        broker,
        vhost,
        info,
        counters,
        backend,
        quit: false,
        publisher: false,
        user: config.memcache.user.clone(),
    };
    *s.info.user.lock() = s.user.clone();
    *s.info.vhost.lock() = s.vhost.name.to_string();
    let idle = config.memcache.idle_timeout;
    'conn: loop {
        // Answer every complete request in the buffer, in order.
        while let Some(decoded) = conn.next_request() {
            match decoded {
                Decoded::Request { request, frame } => {
                    s.execute(request, &frame, &mut conn, &shutdown).await;
                    if s.quit {
                        break 'conn;
                    }
                }
                Decoded::Error(error) => {
                    // memcacheq counts a set whose data block it read, even a bad one.
                    if error == command::ProtocolError::BadDataChunk {
                        s.counters.cmd_set.fetch_add(1, Ordering::Relaxed);
                    }
                    error.write_to(&mut conn.out);
                }
            }
            // Keep the outbound buffer bounded under a long pipeline.
            if conn.out.len() > OUT_LIMIT && s.flush(&mut conn).await.is_err() {
                break 'conn;
            }
        }
        if s.flush(&mut conn).await.is_err() {
            break;
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
            r = conn.read(idle) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
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
    let _ = s.flush(&mut conn).await;
    s.backend.finish().await;
    drop(guard);
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// memcached's exptime rules, as a TTL: `None` = never expires, `Some(0)` = already expired.
fn ttl_ms(exptime: i64) -> Option<u64> {
    match exptime {
        0 => None,
        e if e < 0 => Some(0),
        e if e <= RELATIVE_EXPTIME_LIMIT => Some(e as u64 * 1000),
        e => Some((e - now_unix()).max(0) as u64 * 1000),
    }
}

/// Writes the answers in `conn.out`, once what they promise has happened.
async fn flush(
    backend: &mut Backend,
    conn: &mut Connection,
    broker: &Broker,
) -> std::io::Result<()> {
    backend.complete(&mut conn.out).await?;
    conn.write_out(broker).await
}

impl Session {
    async fn flush(&mut self, conn: &mut Connection) -> std::io::Result<()> {
        flush(&mut self.backend, conn, &self.broker).await
    }

    async fn execute(
        &mut self,
        req: Request,
        frame: &Bytes,
        conn: &mut Connection,
        shutdown: &CancellationToken,
    ) {
        match req {
            Request::Set {
                key,
                flags,
                exptime,
                data,
                noreply,
            } => {
                self.counters.cmd_set.fetch_add(1, Ordering::Relaxed);
                let item = Item {
                    queue: &key,
                    flags,
                    ttl: ttl_ms(exptime),
                    body: frame.slice(data),
                };
                // Answered even under noreply, as memcached answers its own
                // SERVER_ERRORs: the client must learn that nothing was stored.
                if let Err(text) = self.set(item, noreply, &mut conn.out).await {
                    command::write_server_error(&mut conn.out, &text);
                }
            }
            Request::Get { keys } => {
                self.backend.after_sets(&mut conn.out).await;
                self.get(keys, conn, shutdown).await;
            }
            Request::Delete { key, noreply } => {
                self.backend.after_sets(&mut conn.out).await;
                self.counters.cmd_delete.fetch_add(1, Ordering::Relaxed);
                let out = &mut conn.out;
                if !self.guard().delete(&key) {
                    // Answered even under noreply: the client must learn that nothing
                    // was deleted (memcached answers its SERVER_ERRORs the same way).
                    command::write_server_error(out, REFUSED);
                    return;
                }
                match self.backend.delete(&key).await {
                    Ok(true) if !noreply => command::write_deleted(out),
                    Ok(false) if !noreply => command::write_not_found(out),
                    Ok(_) => {}
                    Err(text) => command::write_server_error(out, &text),
                }
            }
            Request::Stats(StatsKind::General) => self.stats(&mut conn.out),
            Request::Stats(StatsKind::Reset) => {
                self.counters.reset(&self.broker);
                command::write_reset(&mut conn.out);
            }
            Request::Stats(StatsKind::Queue) => {
                self.backend.after_sets(&mut conn.out).await;
                for (queue, sets, gets) in self.backend.queue_counts() {
                    command::write_stat(&mut conn.out, &queue, format_args!("{sets}/{gets}"));
                }
                command::write_end(&mut conn.out);
            }
            Request::Version => command::write_version(&mut conn.out, env!("CARGO_PKG_VERSION")),
            Request::Verbosity { noreply, .. } => {
                if !noreply {
                    command::write_ok(&mut conn.out);
                }
            }
            Request::Quit => self.quit = true,
        }
    }

    fn guard(&self) -> Guard<'_> {
        Guard::new(&self.broker, &self.user, &self.vhost.name)
    }

    async fn set(
        &mut self,
        item: Item<'_>,
        noreply: bool,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        self.publisher |= self.backend.alarms_apply();
        let declares = !self.backend.has_queue(item.queue);
        self.guard().set(item.queue, declares)?;
        self.backend.prepare_set(item.queue, declares)?;
        self.backend.set(item, noreply, out).await
    }

    async fn get(
        &mut self,
        keys: Vec<GetKey>,
        conn: &mut Connection,
        shutdown: &CancellationToken,
    ) {
        // Refuse the whole command before answering anything when a key asks for a
        // second open read on the same queue.
        for k in &keys {
            let o = k.options;
            if o.open && !o.close && self.backend.is_open(&k.queue) {
                command::write_client_error(
                    &mut conn.out,
                    "a reliable read is already open on this queue",
                );
                return;
            }
        }
        // Built from the fields, not `self.guard()`: the backend is borrowed mutably below.
        let guard = Guard::new(&self.broker, &self.user, &self.vhost.name);
        if !guard.get(keys.iter().map(|k| k.queue.as_str())) {
            command::write_server_error(&mut conn.out, REFUSED);
            return;
        }
        let mut answered = false;
        for k in &keys {
            let fetched = match self.backend.settle(k).await {
                Err(text) => Fetched::Failed(text),
                Ok(()) if !k.options.fetches() => continue,
                Ok(()) => {
                    self.counters.cmd_get.fetch_add(1, Ordering::Relaxed);
                    let mut ctx = Ctx {
                        conn: &mut *conn,
                        guard: &guard,
                        shutdown,
                    };
                    self.backend.fetch(k, &mut ctx).await
                }
            };
            match fetched {
                Fetched::Value { flags, body } => {
                    self.counters.get_hits.fetch_add(1, Ordering::Relaxed);
                    command::write_value(&mut conn.out, k.key.as_bytes(), flags, &body);
                    answered = true;
                }
                Fetched::Miss => {
                    self.counters.get_misses.fetch_add(1, Ordering::Relaxed);
                }
                Fetched::HungUp => {
                    // Nobody to answer: end the connection now (its slot and
                    // curr_connections with it), not when the timeout runs out.
                    self.quit = true;
                    return;
                }
                Fetched::Failed(text) => {
                    // Values already written were taken from their queues: keep them
                    // and end the answer there; with none, the client sees the error.
                    if !answered {
                        command::write_server_error(&mut conn.out, &text);
                        return;
                    }
                    break;
                }
            }
            // A many-key get of large messages is written as it goes: a client that does
            // not read holds at most OUT_LIMIT (plus one message) here, the rest stays in
            // the queues.
            if conn.out.len() > OUT_LIMIT
                && flush(&mut self.backend, conn, &self.broker).await.is_err()
            {
                return;
            }
        }
        command::write_end(&mut conn.out);
    }

    /// memcacheq's 17 fields in its order and with its meanings, then memcached's
    /// fields that memcacheq does not have, for memcached tools.
    fn stats(&self, out: &mut BytesMut) {
        let c = self.counters;
        let connections = stats::protocol_totals(&self.broker);
        let t = c.since_reset(&connections);
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
