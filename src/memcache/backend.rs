//! Where a memcache session's queue operations go: the local core (the session's own
//! code in `session.rs`) or, in upstream mode, a RabbitMQ cluster through
//! [`crate::upstream::Gateway`]. [`Upstream`] is the upstream side: it takes the
//! requests that touch queues (`set`, `get`, `delete`, `stats queue`) and answers them
//! in the same words as local mode; everything else (`version`, `stats`, `quit`, ...)
//! stays with the session.
//!
//! Pipelining: a `set` starts its publish at once and leaves a placeholder in the
//! output; answers are filled in, in request order, when the session flushes, so a
//! pipeline of sets shares the cluster's confirm latency instead of paying it per set.
//! Any other queue request waits for the sets before it (a `get` after a `set` on one
//! connection sees it, as in local mode).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use super::access::{Guard, REFUSED};
use super::command::{self, GetKey, Request, StatsKind};
use super::session::Client as Conn;
use super::stats::MemcacheCounters;
use crate::core::ConnectionInfo;
use crate::upstream::{Client, Gateway, PendingSet, ReadMode, UpstreamError};

/// Sets in flight per connection before the session waits for their confirms: bounds
/// the memory a long pipeline holds.
const MAX_PENDING: usize = 1024;

/// Largest time a `get q/t=<ms>` may wait (as in local mode).
const MAX_WAIT: Duration = Duration::from_secs(3600);

struct Pending {
    /// Where the answer goes in the session's output buffer.
    at: usize,
    set: PendingSet,
    noreply: bool,
}

/// What a request served upstream may use of its session.
pub(super) struct Ctx<'a, 'c> {
    /// The client's socket, to notice a hang-up during a timed get.
    pub(super) conn: &'a mut Conn<'c>,
    pub(super) info: &'a ConnectionInfo,
    /// memcache.user's permissions.
    pub(super) guard: &'a Guard<'a>,
    pub(super) shutdown: &'a CancellationToken,
}

/// One session's upstream side.
pub(super) struct Upstream {
    gw: Gateway,
    client: Client,
    pending: Vec<Pending>,
    /// The client hung up during a timed get: the session ends.
    pub(super) hung_up: bool,
}

async fn resolve(pending: &mut Vec<Pending>, out: &mut BytesMut, counters: &MemcacheCounters) {
    if pending.is_empty() {
        return;
    }
    let rest = out.split();
    let mut from = 0;
    for p in pending.drain(..) {
        out.extend_from_slice(&rest[from..p.at]);
        from = p.at;
        let r = match p.set.await {
            Ok(r) => r,
            Err(e) => Err(UpstreamError::Amqp(format!("publish task failed: {e}"))),
        };
        match r {
            Ok(()) => {
                counters.set_hits.fetch_add(1, Ordering::Relaxed);
                if !p.noreply {
                    command::write_stored(out);
                }
            }
            // Errors are answered even with noreply: a lost set must not be silent.
            Err(e) => server_error(out, &e),
        }
    }
    out.extend_from_slice(&rest[from..]);
}

fn server_error(out: &mut BytesMut, e: &UpstreamError) {
    command::write_server_error(out, &e.to_string().replace(['\r', '\n'], " "));
}

impl Upstream {
    pub(super) fn new(gw: Gateway) -> Self {
        let client = gw.client();
        Self {
            gw,
            client,
            pending: Vec::new(),
            hung_up: false,
        }
    }

    /// Serves `req` if it touches queues; gives it back otherwise.
    pub(super) async fn execute(
        &mut self,
        req: Request,
        frame: &Bytes,
        out: &mut BytesMut,
        ctx: &mut Ctx<'_, '_>,
    ) -> Option<Request> {
        let guard = ctx.guard;
        let counters = super::stats::counters();
        match req {
            Request::Set {
                key,
                flags,
                exptime,
                data,
                noreply,
            } => {
                counters.cmd_set.fetch_add(1, Ordering::Relaxed);
                // A queue this gateway has not seen may be declared by this set.
                if let Err(text) = guard.set(&key, !self.gw.knows(&key)) {
                    command::write_server_error(out, &text);
                    return None;
                }
                let ttl = super::session::ttl_ms(exptime);
                if ttl == Some(0) {
                    // Already expired: memcached answers STORED and the item is never seen.
                    counters.set_hits.fetch_add(1, Ordering::Relaxed);
                    if !noreply {
                        command::write_stored(out);
                    }
                    return None;
                }
                let set = self.client.set(&key, flags, ttl, frame.slice(data)).await;
                self.pending.push(Pending {
                    at: out.len(),
                    set,
                    noreply,
                });
                if self.pending.len() >= MAX_PENDING {
                    self.resolve(out).await;
                }
            }
            Request::Get { keys } => {
                self.resolve(out).await;
                let raw = super::session::request_keys(frame);
                self.get(keys, &raw, out, ctx).await;
            }
            Request::Delete { key, noreply } => {
                self.resolve(out).await;
                counters.cmd_delete.fetch_add(1, Ordering::Relaxed);
                if !guard.delete(&key) {
                    // Answered even under noreply, as in local mode.
                    command::write_server_error(out, REFUSED);
                    return None;
                }
                match self.gw.delete(&key).await {
                    Ok(true) if !noreply => command::write_deleted(out),
                    Ok(false) if !noreply => command::write_not_found(out),
                    Ok(_) => {}
                    Err(e) => server_error(out, &e),
                }
            }
            Request::Stats(StatsKind::Queue) => {
                self.resolve(out).await;
                for (q, (sets, gets)) in self.gw.queue_counts() {
                    command::write_stat(out, &q, format!("{sets}/{gets}"));
                }
                command::write_end(out);
            }
            other => return Some(other),
        }
        None
    }

    /// Waits for the sets in flight and writes their answers where they belong:
    /// `STORED` after the cluster's confirm, `SERVER_ERROR ...` otherwise.
    pub(super) async fn resolve(&mut self, out: &mut BytesMut) {
        resolve(&mut self.pending, out, super::stats::counters()).await;
    }

    async fn get(
        &mut self,
        keys: Vec<GetKey>,
        raw: &[&[u8]],
        out: &mut BytesMut,
        ctx: &mut Ctx<'_, '_>,
    ) {
        let (guard, info, shutdown) = (ctx.guard, ctx.info, ctx.shutdown);
        let counters = super::stats::counters();
        for k in &keys {
            let o = k.options;
            if o.open && !o.close && self.client.is_open(&k.queue) {
                out.extend_from_slice(
                    b"CLIENT_ERROR a reliable read is already open on this queue\r\n",
                );
                return;
            }
        }
        if !guard.get(keys.iter().map(|k| k.queue.as_str())) {
            command::write_server_error(out, REFUSED);
            return;
        }
        let start = out.len();
        for (i, k) in keys.into_iter().enumerate() {
            let o = k.options;
            let key: &[u8] = raw.get(i).copied().unwrap_or(k.queue.as_bytes());
            let mut result = Ok(None);
            if o.close {
                if let Err(e) = self.client.close(&k.queue).await {
                    result = Err(e);
                }
            }
            if o.abort {
                self.client.abort(&k.queue).await;
            }
            if result.is_ok() && o.fetches() {
                counters.cmd_get.fetch_add(1, Ordering::Relaxed);
                let mode = if o.peek {
                    ReadMode::Peek
                } else if o.open {
                    ReadMode::Open
                } else {
                    ReadMode::Take
                };
                result = match o.timeout_ms {
                    Some(ms) if ms > 0 => {
                        // A timed read waits on the queue a later `set` will use.
                        if guard.declare(&k.queue) {
                            let _ = self.gw.declare(&k.queue).await;
                        }
                        let wait = Duration::from_millis(ms).min(MAX_WAIT);
                        tokio::select! {
                            r = self.client.get_wait(&k.queue, mode, wait, shutdown) => r,
                            _ = ctx.conn.hung_up(info) => {
                                // Nobody to answer: end the connection now, as local
                                // mode does (a half-done read is requeued by finish).
                                self.hung_up = true;
                                return;
                            }
                        }
                    }
                    _ => self.client.get(&k.queue, mode).await,
                };
            }
            match result {
                Ok(Some(got)) => {
                    counters.get_hits.fetch_add(1, Ordering::Relaxed);
                    command::write_value(out, key, got.flags, &got.body);
                }
                Ok(None) => {
                    if o.fetches() {
                        counters.get_misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    // Values already written were taken from their queues: keep them
                    // and end the answer there; with none, the client sees the error.
                    if out.len() == start {
                        server_error(out, &e);
                        return;
                    }
                    break;
                }
            }
        }
        command::write_end(out);
    }

    /// The client is gone: open reads go back to their queues. Sets still in flight
    /// finish on their own (their publish is already on its way).
    pub(super) async fn finish(self) {
        self.client.finish().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(at: usize, r: Result<(), UpstreamError>, noreply: bool) -> Pending {
        Pending {
            at,
            set: tokio::spawn(async move { r }),
            noreply,
        }
    }

    #[tokio::test]
    async fn answers_land_in_request_order() {
        // "VERSION" answered between two sets, a noreply set, a failed set at the end.
        let mut out = BytesMut::from(&b"A\r\nB\r\n"[..]);
        let mut p = vec![
            pending(0, Ok(()), false),
            pending(3, Ok(()), true),
            pending(3, Err(UpstreamError::ReadLost), true),
            pending(6, Err(UpstreamError::Unavailable("x".into())), false),
        ];
        let counters = MemcacheCounters::default();
        resolve(&mut p, &mut out, &counters).await;
        assert_eq!(counters.set_hits.load(Ordering::Relaxed), 2);
        assert!(p.is_empty());
        assert_eq!(
            &out[..],
            &b"STORED\r\nA\r\nSERVER_ERROR upstream connection lost; the open read went \
               back to the queue\r\nB\r\nSERVER_ERROR upstream unavailable: x\r\n"[..]
        );
    }
}
