//! Upstream mode: memcache queues live in a RabbitMQ cluster, reached through
//! [`crate::upstream::Gateway`]. A `set` starts its publish at once and leaves a
//! placeholder in the output; [`Upstream::resolve`] fills the answers in, in request
//! order, after the cluster's confirms (see the answer order in `backend.rs`).

use bytes::BytesMut;

use super::{stored, wait_of, Ctx, Fetched, Item};
use crate::memcache::command::GetKey;
use crate::memcache::stats::MemcacheCounters;
use crate::upstream::{Client, Gateway, PendingSet, ReadMode, UpstreamError};

/// Sets in flight per connection before the session waits for their confirms: bounds
/// the memory a long pipeline holds.
const MAX_PENDING: usize = 1024;

struct Pending {
    /// Where the answer goes in the session's output buffer.
    at: usize,
    set: PendingSet,
    noreply: bool,
}

/// One session's upstream side.
pub(in crate::memcache) struct Upstream {
    gw: Gateway,
    client: Client,
    pending: Vec<Pending>,
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
            Ok(()) => stored(out, p.noreply, counters),
            // Errors are answered even with noreply: a lost set must not be silent.
            Err(e) => crate::memcache::command::write_server_error(out, &error_text(&e)),
        }
    }
    out.extend_from_slice(&rest[from..]);
}

/// The text of the `SERVER_ERROR` answering `e`, on one line.
fn error_text(e: &UpstreamError) -> String {
    e.to_string().replace(['\r', '\n'], " ")
}

impl Upstream {
    pub(in crate::memcache) fn new(gw: Gateway) -> Self {
        let client = gw.client();
        Self {
            gw,
            client,
            pending: Vec::new(),
        }
    }

    /// A queue this gateway has not seen may be declared by a set.
    pub(super) fn has_queue(&self, queue: &str) -> bool {
        self.gw.knows(queue)
    }

    /// Starts the publish; its answer is filled in by [`Upstream::resolve`].
    pub(super) async fn set(&mut self, item: Item<'_>, noreply: bool, out: &mut BytesMut) {
        let set = self
            .client
            .set(item.queue, item.flags, item.ttl, item.body)
            .await;
        self.pending.push(Pending {
            at: out.len(),
            set,
            noreply,
        });
        if self.pending.len() >= MAX_PENDING {
            self.resolve(out).await;
        }
    }

    /// Waits for the sets in flight and writes their answers where they belong:
    /// `STORED` after the cluster's confirm, `SERVER_ERROR ...` otherwise.
    pub(super) async fn resolve(&mut self, out: &mut BytesMut) {
        resolve(&mut self.pending, out, crate::memcache::stats::counters()).await;
    }

    pub(super) async fn delete(&mut self, queue: &str) -> Result<bool, String> {
        self.gw.delete(queue).await.map_err(|e| error_text(&e))
    }

    pub(super) fn queue_counts(&self) -> Vec<(String, u64, u64)> {
        self.gw
            .queue_counts()
            .into_iter()
            .map(|(q, (sets, gets))| (q, sets, gets))
            .collect()
    }

    pub(super) fn is_open(&self, queue: &str) -> bool {
        self.client.is_open(queue)
    }

    pub(super) async fn settle(&mut self, key: &GetKey) -> Result<(), String> {
        let mut result = Ok(());
        if key.options.close {
            result = self
                .client
                .close(&key.queue)
                .await
                .map_err(|e| error_text(&e));
        }
        if key.options.abort {
            self.client.abort(&key.queue).await;
        }
        result
    }

    pub(super) async fn fetch(&mut self, key: &GetKey, ctx: &mut Ctx<'_>) -> Fetched {
        let o = key.options;
        let mode = if o.peek {
            ReadMode::Peek
        } else if o.open {
            ReadMode::Open
        } else {
            ReadMode::Take
        };
        let result = match wait_of(&o) {
            Some(wait) => {
                // A timed read waits on the queue a later `set` will use.
                if ctx.guard.declare(&key.queue) {
                    let _ = self.gw.declare(&key.queue).await;
                }
                tokio::select! {
                    r = self.client.get_wait(&key.queue, mode, wait, ctx.shutdown) => r,
                    // Nobody to answer: end the connection now, as local mode does (a
                    // half-done read is requeued by finish).
                    _ = ctx.conn.hung_up() => return Fetched::HungUp,
                }
            }
            None => self.client.get(&key.queue, mode).await,
        };
        match result {
            Ok(Some(got)) => Fetched::Value {
                flags: got.flags,
                body: got.body.into(),
            },
            Ok(None) => Fetched::Miss,
            Err(e) => Fetched::Failed(error_text(&e)),
        }
    }

    /// The client is gone: open reads go back to their queues. Sets still in flight
    /// finish on their own (their publish is already on its way).
    pub(super) async fn finish(self) {
        self.client.finish().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

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
