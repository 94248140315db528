//! In-memory index of live messages and per-segment accounting.
//!
//! The same `apply` runs at recovery (records read back in log order) and at run time
//! (records as the flusher writes them), so both always agree on what is live.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::index::Index;
pub(crate) use super::index::Loc;
use super::record::{shared_queues, Rec, FLAG_DELIVERED, FLAG_PAGED, PUBLISH_PAYLOAD_OFF};

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
    pub index: Index,
    pub segs: BTreeMap<u32, SegInfo>,
    /// Interned queue ids: index -> queue id, and back.
    queue_ids: Vec<u64>,
    queue_idx: IdMap<u64, u32>,
    pub max_id: u64,
    /// While recovering with a memory window: every entry starts out paged, and the
    /// paged flag written in a record (how the previous run held it) is ignored.
    pub recovering_paged: bool,
    /// Shared publish records (one body, several queues) by `(segment, offset)`:
    /// index entries still referring to it, and the whole record length, which leaves
    /// the segment's live bytes only with the last of them.
    shared: IdMap<u64, SharedRec>,
}

#[derive(Debug, Clone, Copy)]
struct SharedRec {
    refs: u32,
    len: u32,
}

fn shared_key(seg: u32, off: u32) -> u64 {
    (u64::from(seg) << 32) | u64::from(off)
}

impl State {
    fn intern(&mut self, queue: u64) -> u32 {
        let next = self.queue_ids.len() as u32;
        let q = *self.queue_idx.entry(queue).or_insert(next);
        if q == next {
            self.queue_ids.push(queue);
        }
        q
    }

    /// The queue id of an interned queue.
    pub fn queue_of(&self, q: u32) -> u64 {
        self.queue_ids[q as usize]
    }

    /// Number of interned queues (interned indexes are `0..n`).
    pub fn interned_queues(&self) -> usize {
        self.queue_ids.len()
    }

    /// Location of a live message.
    pub fn get(&self, queue: u64, id: u64) -> Option<Loc> {
        self.index.get(id, *self.queue_idx.get(&queue)?)
    }

    /// [`Index::take_paged`] for a queue id.
    pub fn take_paged(
        &mut self,
        queue: u64,
        max: usize,
        max_bytes: u64,
        f: impl FnMut(u64, Loc),
    ) -> usize {
        match self.queue_idx.get(&queue) {
            Some(&q) => self.index.take_paged(q, max, max_bytes, f),
            None => 0,
        }
    }

    fn kill(
        segs: &mut BTreeMap<u32, SegInfo>,
        shared: &mut IdMap<u64, SharedRec>,
        cur: u32,
        loc: &Loc,
    ) {
        let key = shared_key(loc.seg, loc.off);
        let bytes = match shared.get_mut(&key) {
            Some(r) if r.refs > 1 => {
                r.refs -= 1;
                0
            }
            Some(r) => {
                let len = r.len;
                shared.remove(&key);
                u64::from(len)
            }
            None => u64::from(loc.len()),
        };
        if let Some(s) = segs.get_mut(&loc.seg) {
            s.live -= 1;
            s.live_bytes -= bytes;
        }
        if loc.seg != cur {
            if let Some(c) = segs.get_mut(&cur) {
                c.refs.insert(loc.seg);
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
                let loc = Loc::new(seg, off as u32, len as u32, self.entry_flags(flags));
                let s = self.segs.entry(seg).or_default();
                s.live += 1;
                s.live_bytes += len as u64;
                let q = self.intern(queue);
                if let Some(old) = self.index.insert(id, q, loc) {
                    self.keep_flags(id, q, &old);
                    // Same key published again (a compaction copy): the old record is
                    // superseded. This segment must outlive the old one, or an ack of
                    // the copy could be reclaimed while the original is still on disk,
                    // and the original would come back.
                    Self::kill(&mut self.segs, &mut self.shared, seg, &old);
                }
            }
            Rec::PublishShared {
                id,
                payload,
                queues,
            } => {
                self.max_id = self.max_id.max(id);
                // Every entry points at the record; its length is "up to the end of the
                // payload", which is what recovery slices (the queue list follows).
                let entry_len = (PUBLISH_PAYLOAD_OFF + payload.len()) as u32;
                let mut refs = 0u32;
                self.segs.entry(seg).or_default();
                for (queue, flags) in shared_queues(queues) {
                    let loc = Loc::new(seg, off as u32, entry_len, self.entry_flags(flags));
                    let q = self.intern(queue);
                    refs += 1;
                    if let Some(old) = self.index.insert(id, q, loc) {
                        self.keep_flags(id, q, &old);
                        Self::kill(&mut self.segs, &mut self.shared, seg, &old);
                    }
                }
                let s = self.segs.entry(seg).or_default();
                s.live += u64::from(refs);
                s.live_bytes += len as u64;
                self.shared.insert(
                    shared_key(seg, off as u32),
                    SharedRec {
                        refs,
                        len: len as u32,
                    },
                );
            }
            Rec::Ack { queue, id } => {
                if let Some(&q) = self.queue_idx.get(&queue) {
                    if let Some(loc) = self.index.remove(id, q) {
                        Self::kill(&mut self.segs, &mut self.shared, seg, &loc);
                    }
                }
            }
            Rec::Delivered { queue, id } => {
                let Some(&q) = self.queue_idx.get(&queue) else {
                    return;
                };
                let mut target = None;
                self.index.update(id, q, |loc| {
                    loc.set(FLAG_DELIVERED);
                    target = Some(loc.seg);
                });
                if let Some(target) = target.filter(|&t| t != seg) {
                    if let Some(c) = self.segs.get_mut(&seg) {
                        c.refs.insert(target);
                    }
                }
            }
            Rec::Paged { queue, id } => {
                if let Some(&q) = self.queue_idx.get(&queue) {
                    self.index.update(id, q, |loc| loc.set(FLAG_PAGED));
                }
            }
            Rec::QueueDeleted { queue } => {
                let Some(&q) = self.queue_idx.get(&queue) else {
                    return;
                };
                let (segs, shared) = (&mut self.segs, &mut self.shared);
                self.index
                    .remove_queue(q, |loc| Self::kill(segs, shared, seg, loc));
            }
            Rec::MaxId(m) => self.max_id = self.max_id.max(m),
        }
    }

    /// The flags an entry starts with, from its record's.
    fn entry_flags(&self, record: u8) -> u8 {
        if self.recovering_paged {
            record | FLAG_PAGED
        } else {
            record
        }
    }

    /// A compaction copy replaced `old`: what the running store knows of the message
    /// (delivered since, paged in or out since) wins over the flags copied with it.
    fn keep_flags(&mut self, id: u64, q: u32, old: &Loc) {
        if !self.recovering_paged {
            self.index.update(id, q, |l| {
                l.clear(u8::MAX);
                l.set(old.flags());
            });
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
        assert_eq!(st.get(2, 3).unwrap().off, 60);
        st.apply(2, 71, 29, Rec::Delivered { queue: 2, id: 3 });
        assert_eq!(st.get(2, 3).unwrap().flags(), FLAG_DELIVERED);
        assert_eq!(st.get(2, 3).unwrap().len(), 30);
    }

    #[test]
    fn shared_record_lives_until_its_last_queue_lets_go() {
        let mut st = State::default();
        let raw: Vec<u8> = [1u64, 2, 3]
            .iter()
            .flat_map(|q| {
                let mut e = q.to_le_bytes().to_vec();
                e.push(0);
                e
            })
            .collect();
        let rec = Rec::PublishShared {
            id: 10,
            payload: b"12345",
            queues: &raw,
        };
        st.apply(1, 0, 57, rec);
        assert_eq!(st.segs[&1].live, 3);
        assert_eq!(st.segs[&1].live_bytes, 57);
        assert_eq!(st.index.len(), 3);
        assert_eq!(
            st.get(2, 10).unwrap().len() as usize,
            PUBLISH_PAYLOAD_OFF + 5
        );
        st.apply(2, 0, 29, Rec::Ack { queue: 1, id: 10 });
        st.apply(2, 29, 21, Rec::QueueDeleted { queue: 3 });
        assert_eq!(st.segs[&1].live, 1);
        assert_eq!(st.segs[&1].live_bytes, 57, "still held by queue 2");
        st.apply(2, 50, 29, Rec::Delivered { queue: 2, id: 10 });
        assert_eq!(st.get(2, 10).unwrap().flags(), FLAG_DELIVERED);
        st.apply(2, 79, 29, Rec::Ack { queue: 2, id: 10 });
        assert_eq!(st.segs[&1].live, 0);
        assert_eq!(st.segs[&1].live_bytes, 0);
        assert!(st.shared.is_empty());
        assert_eq!(st.max_id, 10);
    }
}
