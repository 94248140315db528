//! A small pool of AMQP connections to the cluster, spread over its nodes.
//!
//! Each slot holds at most one live [`Link`]: one lapin connection with a shared
//! confirm-mode channel for publishing and a probe channel for declares (which a 404 or
//! 406 may close). A slot whose connection died reconnects on first use, trying the
//! node after the one it last used first, so the pool moves off a dead node and spreads
//! over the survivors. Nothing reconnects in the background: an idle gateway keeps no
//! retry loop, and the next operation pays for the reconnect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::protocol::AMQPError;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::stats::Stats;
use super::UpstreamError;

/// Why a probe declare failed.
pub enum ProbeError {
    /// The cluster answered with a reply code (404, 405, 406, 403, ...).
    Reply(AMQPError),
    /// The connection failed.
    Upstream(UpstreamError),
}

/// How long one connection attempt to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One connection to one node of the cluster.
pub struct Link {
    /// Index of the node in the URL's host list.
    pub node: usize,
    conn: Connection,
    publish: Mutex<Option<Channel>>,
    probe: Mutex<Option<Channel>>,
}

impl Link {
    /// The connection is open (lapin saw no error and no close).
    pub fn alive(&self) -> bool {
        self.conn.status().connected()
    }

    async fn channel(&self, confirm: bool) -> Result<Channel, UpstreamError> {
        let ch = self
            .conn
            .create_channel()
            .await
            .map_err(UpstreamError::amqp)?;
        if confirm {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(UpstreamError::amqp)?;
        }
        Ok(ch)
    }

    /// The shared publishing channel (confirm mode), reopened when it is closed.
    pub async fn publish_channel(&self) -> Result<Channel, UpstreamError> {
        let mut slot = self.publish.lock().await;
        match &*slot {
            Some(ch) if ch.status().connected() => Ok(ch.clone()),
            _ => {
                let ch = self.channel(true).await?;
                *slot = Some(ch.clone());
                Ok(ch)
            }
        }
    }

    /// Replaces the publishing channel `broken` (nacked or silent: see issue 15, a
    /// channel first used right after a quorum leader died can stay broken for good).
    /// Concurrent publishers that saw the same channel fail replace it only once.
    pub async fn replace_publish_channel(&self, broken: &Channel) {
        let mut slot = self.publish.lock().await;
        if slot.as_ref().is_some_and(|ch| ch.id() == broken.id()) {
            *slot = None;
            let old = broken.clone();
            // The close waits for close-ok; nobody needs to wait for it.
            tokio::spawn(async move {
                let _ = old.close(200, "replaced by qgate").await;
            });
        }
    }

    /// The probe channel for declares and passive checks, reopened when closed.
    pub async fn probe(&self) -> Result<Channel, UpstreamError> {
        let mut slot = self.probe.lock().await;
        match &*slot {
            Some(ch) if ch.status().connected() => Ok(ch.clone()),
            _ => {
                let ch = self.channel(false).await?;
                *slot = Some(ch.clone());
                Ok(ch)
            }
        }
    }

    /// `queue.declare` on the probe channel. Another task's 404 or 406 closes the shared
    /// probe under this one; such a failure (no reply code of its own) is tried again on
    /// a fresh probe, so only the declare that caused a close sees its error.
    pub async fn probe_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
        args: &FieldTable,
    ) -> Result<lapin::Queue, ProbeError> {
        let mut tries = 0;
        loop {
            let probe = self.probe().await.map_err(ProbeError::Upstream)?;
            match probe.queue_declare(queue, options, args.clone()).await {
                Ok(q) => return Ok(q),
                Err(lapin::Error::ProtocolError(e)) => return Err(ProbeError::Reply(e)),
                Err(e) if tries >= 2 || !self.alive() => {
                    return Err(ProbeError::Upstream(UpstreamError::amqp(e)))
                }
                Err(_) => tries += 1,
            }
        }
    }

    /// A new channel for one memcache session's reads (its unacked messages live on it).
    pub async fn session_channel(&self) -> Result<Channel, UpstreamError> {
        self.channel(false).await
    }

    async fn close(&self) {
        let _ = self.conn.close(200, "qgate shutting down").await;
    }
}

struct Slot {
    link: Mutex<Option<Arc<Link>>>,
    /// Node the next connection attempt starts with.
    next_node: AtomicUsize,
}

/// The connections of one gateway.
pub struct Pool {
    urls: Vec<String>,
    /// `host:port` of each node, for metrics and status.
    pub labels: Vec<String>,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    stats: Arc<Stats>,
}

impl Pool {
    /// A pool of `size` slots over `urls` (single-host AMQP URLs); connects lazily.
    pub fn new(urls: Vec<String>, size: usize, stats: Arc<Stats>) -> Self {
        let labels = urls.iter().map(|u| host_port(u)).collect();
        let slots = (0..size.max(1))
            .map(|i| Slot {
                link: Mutex::new(None),
                next_node: AtomicUsize::new(i % urls.len()),
            })
            .collect();
        Self {
            urls,
            labels,
            slots,
            next_slot: AtomicUsize::new(0),
            stats,
        }
    }

    /// A live link, round robin over the slots; a slot that cannot connect to any node
    /// passes the turn to the next one.
    pub async fn link(&self) -> Result<Arc<Link>, UpstreamError> {
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let mut last = UpstreamError::Unavailable("no upstream node reachable".into());
        for k in 0..self.slots.len() {
            match self.slot_link((start + k) % self.slots.len()).await {
                Ok(link) => return Ok(link),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Connects every slot now, so that start-up logs reachability; failures are logged
    /// and retried on first use.
    pub async fn warm_up(&self) {
        for i in 0..self.slots.len() {
            if let Err(e) = self.slot_link(i).await {
                tracing::warn!(error = %e, "upstream: cannot connect yet");
            }
        }
    }

    async fn slot_link(&self, i: usize) -> Result<Arc<Link>, UpstreamError> {
        let slot = &self.slots[i];
        let mut guard = slot.link.lock().await;
        if let Some(link) = &*guard {
            if link.alive() {
                return Ok(link.clone());
            }
            tracing::warn!(node = %self.labels[link.node], "upstream connection lost");
            self.stats.connection_lost.inc();
            *guard = None;
        }
        let n = self.urls.len();
        let first = slot.next_node.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..n {
            let node = (first + k) % n;
            match self.connect(node).await {
                Ok(link) => {
                    // The next reconnect of this slot starts past this node, so losing
                    // it moves the slot on.
                    slot.next_node.store((node + 1) % n, Ordering::Relaxed);
                    let link = Arc::new(link);
                    *guard = Some(link.clone());
                    tracing::info!(node = %self.labels[node], slot = i, "upstream connected");
                    self.stats.connects.inc();
                    return Ok(link);
                }
                Err(e) => {
                    self.stats.connect_failures.inc();
                    last = format!("{}: {e}", self.labels[node]);
                }
            }
        }
        Err(UpstreamError::Unavailable(format!(
            "no upstream node reachable (last: {last})"
        )))
    }

    async fn connect(&self, node: usize) -> Result<Link, String> {
        let props = ConnectionProperties::default().with_connection_name("qgate-upstream".into());
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&self.urls[node], props),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("connect timed out".into()),
        };
        Ok(Link {
            node,
            conn,
            publish: Mutex::new(None),
            probe: Mutex::new(None),
        })
    }

    /// The links now held (live or not yet noticed dead), without waiting on a slot
    /// that is connecting.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.slots
            .iter()
            .filter_map(|s| s.link.try_lock().ok().and_then(|g| g.clone()))
            .collect()
    }

    /// Closes every connection (unacked reads on them go back to their queues).
    pub async fn close(&self) {
        for s in &self.slots {
            if let Some(link) = s.link.lock().await.take() {
                link.close().await;
            }
        }
    }
}

/// `host:port` of a single-host AMQP URL, without credentials.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority)
        .to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_port_hides_credentials() {
        assert_eq!(
            super::host_port("amqp://u:p@10.0.0.1:5672/%2f?x=1"),
            "10.0.0.1:5672"
        );
        assert_eq!(super::host_port("amqp://h:1"), "h:1");
    }
}
