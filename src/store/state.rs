//! In-memory index of live messages and per-segment accounting.
//!
//! The same `apply` runs at recovery (records read back in log order) and at run time
//! (records as the flusher writes them), so both always agree on what is live.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::record::{Rec, FLAG_DELIVERED};

/// A small multiplicative hasher for integer keys (ids are not attacker controlled).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Where a live message's publish record sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u32,
    /// Whole record length.
    pub len: u32,
    pub flags: u8,
}

/// Accounting for one segment file.
#[derive(Debug, Default, Clone)]
pub(crate) struct SegInfo {
    /// File size in bytes.
    pub size: u64,
    /// Live publish records in it.
    pub live: u64,
    /// Bytes of those records.
    pub live_bytes: u64,
    /// Older segments holding publishes that records in this segment kill or flag
    /// (ack, delivered, queue deleted). This segment may only be deleted once all of
    /// them are gone, or those publishes would come back.
    pub refs: BTreeSet<u32>,
}

/// Live index.
#[derive(Default)]
pub(crate) struct State {
    pub index: IdMap<(u64, u64), Loc>,
    pub segs: BTreeMap<u32, SegInfo>,
    pub queue_live: IdMap<u64, u64>,
    pub max_id: u64,
}

impl State {
    fn kill(segs: &mut BTreeMap<u32, SegInfo>, cur: u32, loc: &Loc) {
        if let Some(s) = segs.get_mut(&loc.seg) {
            s.live -= 1;
            s.live_bytes -= u64::from(loc.len);
        }
        if loc.seg != cur {
            if let Some(c) = segs.get_mut(&cur) {
                c.refs.insert(loc.seg);
            }
        }
    }

    fn dec_queue(&mut self, queue: u64) {
        if let Some(n) = self.queue_live.get_mut(&queue) {
            *n -= 1;
            if *n == 0 {
                self.queue_live.remove(&queue);
            }
        }
    }

    /// Applies one record found at `off` (length `len`) of segment `seg`.
    pub fn apply(&mut self, seg: u32, off: usize, len: usize, rec: Rec<'_>) {
        match rec {
            Rec::Publish {
                queue, id, flags, ..
            } => {
                self.max_id = self.max_id.max(id);
                let loc = Loc {
                    seg,
                    off: off as u32,
                    len: len as u32,
                    flags,
                };
                let s = self.segs.entry(seg).or_default();
                s.live += 1;
                s.live_bytes += len as u64;
                match self.index.insert((queue, id), loc) {
                    Some(old) => {
                        // Same key published again (a compaction copy): the old record
                        // is superseded. This segment must outlive the old one, or an
                        // ack of the copy could be reclaimed while the original is
                        // still on disk, and the original would come back.
                        Self::kill(&mut self.segs, seg, &old);
                    }
                    None => *self.queue_live.entry(queue).or_default() += 1,
                }
            }
            Rec::Ack { queue, id } => {
                if let Some(loc) = self.index.remove(&(queue, id)) {
                    Self::kill(&mut self.segs, seg, &loc);
                    self.dec_queue(queue);
                }
            }
            Rec::Delivered { queue, id } => {
                if let Some(loc) = self.index.get_mut(&(queue, id)) {
                    loc.flags |= FLAG_DELIVERED;
                    if loc.seg != seg {
                        let target = loc.seg;
                        if let Some(c) = self.segs.get_mut(&seg) {
                            c.refs.insert(target);
                        }
                    }
                }
            }
            Rec::QueueDeleted { queue } => {
                if self.queue_live.remove(&queue).is_some() {
                    let segs = &mut self.segs;
                    self.index.retain(|k, loc| {
                        if k.0 == queue {
                            Self::kill(segs, seg, loc);
                            false
                        } else {
                            true
                        }
                    });
                }
            }
            Rec::MaxId(m) => self.max_id = self.max_id.max(m),
        }
    }

    /// Total bytes in segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.size).sum()
    }

    /// Total bytes of live records.
    pub fn live_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.live_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_refs_and_queue_delete() {
        let mut st = State::default();
        st.segs.insert(1, SegInfo::default());
        st.segs.insert(2, SegInfo::default());
        let p = |q, id| Rec::Publish {
            queue: q,
            id,
            flags: 0,
            payload: b"",
        };
        st.apply(1, 0, 30, p(1, 1));
        st.apply(1, 30, 30, p(1, 2));
        st.apply(1, 60, 30, p(2, 3));
        st.apply(2, 0, 29, Rec::Ack { queue: 1, id: 1 });
        assert_eq!(st.segs[&1].live, 2);
        assert!(st.segs[&2].refs.contains(&1));
        st.apply(2, 29, 21, Rec::QueueDeleted { queue: 1 });
        assert_eq!(st.segs[&1].live, 1);
        assert_eq!(st.index.len(), 1);
        // Unknown ack is ignored.
        st.apply(2, 50, 29, Rec::Ack { queue: 5, id: 1 });
        assert_eq!(st.index.len(), 1);
        assert_eq!(st.max_id, 3);
    }
}
