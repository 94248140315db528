//! The ready list of a queue: FIFO, or one FIFO per priority level for queues declared
//! with `x-max-priority` (highest level first; a priority above the maximum counts as
//! the maximum, as in RabbitMQ).

use std::collections::VecDeque;

use super::message::QueuedMessage;

/// Ready messages in delivery order.
#[derive(Debug)]
pub(crate) struct Ready {
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    bytes: usize,
}

impl Ready {
    /// `max_priority` 0 = a plain FIFO.
    pub(crate) fn new(max_priority: u8) -> Self {
        Self {
            levels: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
        }
    }

    fn level(&self, m: &QueuedMessage) -> usize {
        (m.msg.priority as usize).min(self.levels.len() - 1)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total body bytes (for `x-max-length-bytes`).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn push_back(&mut self, m: QueuedMessage) {
        let l = self.level(&m);
        self.len += 1;
        self.bytes += m.msg.body.len();
        self.levels[l].push_back(m);
    }

    /// Back to its original position (by queue sequence) within its level.
    pub(crate) fn insert_by_seq(&mut self, m: QueuedMessage) {
        let l = self.level(&m);
        self.len += 1;
        self.bytes += m.msg.body.len();
        let level = &mut self.levels[l];
        let pos = level.partition_point(|x| x.seq < m.seq);
        level.insert(pos, m);
    }

    pub(crate) fn push_front(&mut self, m: QueuedMessage) {
        let l = self.level(&m);
        self.len += 1;
        self.bytes += m.msg.body.len();
        self.levels[l].push_front(m);
    }

    pub(crate) fn front(&self) -> Option<&QueuedMessage> {
        self.levels.iter().rev().find_map(|l| l.front())
    }

    pub(crate) fn pop_front(&mut self) -> Option<QueuedMessage> {
        let m = self.levels.iter_mut().rev().find_map(|l| l.pop_front())?;
        self.len -= 1;
        self.bytes -= m.msg.body.len();
        Some(m)
    }

    /// The oldest message of the lowest level: what overflow drops first.
    pub(crate) fn pop_oldest_lowest(&mut self) -> Option<QueuedMessage> {
        let m = self.levels.iter_mut().find_map(|l| l.pop_front())?;
        self.len -= 1;
        self.bytes -= m.msg.body.len();
        Some(m)
    }

    pub(crate) fn drain_all(&mut self) -> Vec<QueuedMessage> {
        self.len = 0;
        self.bytes = 0;
        let mut out = Vec::new();
        for l in self.levels.iter_mut().rev() {
            out.extend(l.drain(..));
        }
        out
    }
}
