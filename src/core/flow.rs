//! Publisher flow control: when the messages held in queues pass a memory high
//! watermark, front ends stop reading from connections that publish (AMQP tells clients
//! that asked with `connection.blocked`), and resume below it — RabbitMQ's memory
//! alarm, measured on what qgate itself holds rather than on the allocator's RSS, which
//! does not shrink when queues drain.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

use super::disk_alarm::DiskAlarm;

/// Estimated memory a queued message costs beyond its content (message struct, queue
/// entry, allocator overhead), measured on 1,000,000 100-byte messages.
pub const PER_MESSAGE_OVERHEAD: u64 = 160;

/// The broker's memory alarm.
#[derive(Debug)]
pub struct FlowControl {
    limit: AtomicU64,
    /// Bytes waiting in front ends' write buffers (deliveries and answers not yet
    /// written to slow clients): counted in the alarm, since they are held memory too.
    buffered: AtomicU64,
    blocked: AtomicBool,
    changes: watch::Sender<bool>,
    /// The disk alarm blocks publishers too (see `disk_alarm.rs`).
    disk: DiskAlarm,
}

impl FlowControl {
    /// An alarm at `limit` bytes (0 = never).
    pub fn new(limit: u64) -> Self {
        Self {
            limit: AtomicU64::new(limit),
            buffered: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            changes: watch::channel(false).0,
            disk: DiskAlarm::default(),
        }
    }

    /// The high watermark in bytes (0 = off).
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A front end queued `n` bytes for a client.
    pub fn add_buffered(&self, n: u64) {
        self.buffered.fetch_add(n, Ordering::Relaxed);
    }

    /// A front end wrote (or dropped) `n` queued bytes.
    pub fn sub_buffered(&self, n: u64) {
        let _ = self
            .buffered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Bytes waiting in front ends' write buffers.
    pub fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// True while publishers must wait (memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.memory_alarm() || self.disk.is_alarmed()
    }

    /// True while the memory alarm is on.
    pub fn memory_alarm(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// The disk alarm.
    pub fn disk(&self) -> &DiskAlarm {
        &self.disk
    }

    /// Why publishers are blocked, in RabbitMQ's `connection.blocked` words.
    pub fn reason(&self) -> &'static str {
        match (self.memory_alarm(), self.disk.is_alarmed()) {
            (true, true) => "low on memory & disk",
            (false, true) => "low on disk",
            _ => "low on memory",
        }
    }

    /// Records the free space measured on the data directory's file system; raises or
    /// clears the disk alarm.
    pub fn update_disk(&self, free: u64) {
        let Some(alarmed) = self.disk.record(free) else {
            return;
        };
        let limit = self.disk.limit();
        if alarmed {
            tracing::warn!(
                free,
                limit,
                "free disk space below the limit: blocking publishers"
            );
        } else {
            tracing::info!(
                free,
                limit,
                "free disk space above the limit: publishers resume"
            );
        }
        self.publish_state();
    }

    /// Tells waiters whether either alarm now blocks (read under the channel's lock, so
    /// that two alarms changing at once cannot leave a stale state behind).
    fn publish_state(&self) {
        self.changes.send_if_modified(|b| {
            let now = self.is_blocked();
            std::mem::replace(b, now) != now
        });
    }

    /// Records how much queued messages hold (write buffers are added here); raises or
    /// clears the alarm.
    pub fn update(&self, queued: u64) {
        let queued = queued + self.buffered();
        let limit = self.limit();
        let blocked = limit != 0 && queued > limit;
        if self.blocked.swap(blocked, Ordering::AcqRel) != blocked {
            if blocked {
                tracing::warn!(
                    queued,
                    limit,
                    "memory high watermark reached: blocking publishers"
                );
            } else {
                tracing::info!(
                    queued,
                    limit,
                    "memory below the high watermark: publishers resume"
                );
            }
            self.publish_state();
        }
    }

    /// Waits until the alarm is raised.
    pub async fn wait_blocked(&self) {
        let mut rx = self.changes.subscribe();
        let _ = rx.wait_for(|blocked| *blocked).await;
    }

    /// Waits until the alarm is clear.
    pub async fn wait_unblocked(&self) {
        let mut rx = self.changes.subscribe();
        let _ = rx.wait_for(|blocked| !blocked).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_buffers_count_in_the_alarm() {
        let flow = FlowControl::new(1000);
        flow.update(600);
        assert!(!flow.is_blocked());
        flow.add_buffered(500);
        flow.update(600);
        assert!(flow.is_blocked(), "600 queued + 500 buffered is over 1000");
        flow.sub_buffered(500);
        flow.update(600);
        assert!(!flow.is_blocked());
        flow.sub_buffered(10);
        assert_eq!(flow.buffered(), 0, "never below zero");
    }
}
