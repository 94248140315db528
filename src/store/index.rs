//! Compact index of live messages: `(interned queue, message id) -> location`.
//!
//! Message ids are globally increasing and publishes reach the log almost in id order,
//! so each queue's part of the index is one vector of 16-byte entries sorted by id: an
//! append is a push (or a short shift near the end when concurrent publishers race), a
//! lookup is a binary search, and there is no hash table slack. An entry keeps the id
//! as a 32-bit offset from the queue's base id, rebased as the queue drains. A removal
//! leaves a tombstone in place (so that the order holds); tombstones are purged in one
//! linear pass once they make up a quarter of the vector, which keeps removal amortised
//! O(1) and the vector at most a third larger than the live set. A compaction copy
//! re-publishes an existing key and so only updates its entry in place. The rare entry
//! that would land far from the end, or outside the 32-bit window, goes to a small
//! ordered spill map instead; the spill is merged back at the next purge when it fits.

use std::collections::BTreeMap;

use super::record::FLAG_PAGED;

/// Where a live message's publish record sits, and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u32,
    /// Whole record length (for a shared record: up to the end of its payload).
    len: u32,
    /// `record::FLAG_*`: delivered and transient as the record says (kept in copies),
    /// paged while the core does not hold the message in memory.
    flags: u8,
}

impl Loc {
    pub(crate) fn new(seg: u32, off: u32, len: u32, flags: u8) -> Loc {
        Loc {
            seg,
            off,
            len,
            flags,
        }
    }
    /// Whole record length.
    pub fn len(&self) -> u32 {
        self.len
    }
    /// The entry's `record::FLAG_*` bits.
    pub fn flags(&self) -> u8 {
        self.flags
    }
    /// Whether `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    pub(crate) fn set(&mut self, flag: u8) {
        self.flags |= flag;
    }
    pub(crate) fn clear(&mut self, flag: u8) {
        self.flags &= !flag;
    }
    /// Marks it handed to a consumer.
    #[cfg(test)]
    pub(crate) fn set_delivered(&mut self) {
        self.set(super::record::FLAG_DELIVERED);
    }
}

/// An entry more than this many places from the end goes to the spill map.
const NEAR_END: usize = 1024;
/// Tombstones (or spilled entries) are purged (merged) when there are more than this
/// many and more than a quarter (an eighth) of the entries.
const MIN_PURGE: usize = 1024;

/// `Loc::off` of a tombstone (real offsets are below 2 GiB).
const DEAD: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Message id minus the queue's base id.
    lo: u32,
    loc: Loc,
}

impl Entry {
    fn is_dead(&self) -> bool {
        self.loc.off == DEAD
    }
}

/// One queue's entries.
#[derive(Default)]
struct QueueIndex {
    /// Id of `lo == 0`.
    base: u64,
    /// Sorted by id, tombstones included.
    main: Vec<Entry>,
    /// Tombstones in `main`.
    dead: usize,
    /// Entries that arrived far out of order or outside the window.
    spill: BTreeMap<u64, Loc>,
    /// Merge the spill back only once it is larger than this (after a merge that left
    /// entries behind, so that a stuck window does not purge on every insert).
    spill_floor: usize,
}

impl QueueIndex {
    fn len(&self) -> usize {
        self.main.len() - self.dead + self.spill.len()
    }

    /// `Ok(i)`: `main[i]` has this id (maybe a tombstone); `Err(Some(p))`: it would go
    /// at `p`; `Err(None)`: outside the window.
    fn find(&self, id: u64) -> Result<usize, Option<usize>> {
        let Some(lo) = id
            .checked_sub(self.base)
            .and_then(|d| u32::try_from(d).ok())
        else {
            return Err(if self.main.is_empty() { Some(0) } else { None });
        };
        self.main.binary_search_by_key(&lo, |e| e.lo).map_err(Some)
    }

    fn get(&self, id: u64) -> Option<&Loc> {
        match self.find(id) {
            Ok(i) => {
                let e = &self.main[i];
                (!e.is_dead()).then_some(&e.loc)
            }
            Err(_) => self.spill.get(&id),
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Loc> {
        match self.find(id) {
            Ok(i) => {
                let e = &mut self.main[i];
                (!e.is_dead()).then_some(&mut e.loc)
            }
            Err(_) => self.spill.get_mut(&id),
        }
    }

    fn insert(&mut self, id: u64, loc: Loc) -> Option<Loc> {
        debug_assert!(loc.off != DEAD);
        match self.find(id) {
            Ok(i) => {
                let e = &mut self.main[i];
                if e.is_dead() {
                    e.loc = loc;
                    self.dead -= 1;
                    None
                } else {
                    Some(std::mem::replace(&mut e.loc, loc))
                }
            }
            Err(p) => {
                if let Some(old) = self.spill.get_mut(&id) {
                    return Some(std::mem::replace(old, loc));
                }
                let p = match p {
                    // Only tombstones left (a drained queue): start afresh at this id.
                    None if self.dead == self.main.len() => {
                        self.main.clear();
                        self.dead = 0;
                        Some(0)
                    }
                    p => p,
                };
                match p {
                    Some(_) if self.main.is_empty() => {
                        self.base = id;
                        self.main.push(Entry { lo: 0, loc });
                    }
                    Some(p) => {
                        let e = Entry {
                            lo: (id - self.base) as u32,
                            loc,
                        };
                        if p == self.main.len() {
                            self.main.push(e);
                        } else if p > 0 && self.main[p - 1].is_dead() {
                            // main[p-2] < main[p-1] < id < main[p]: reuse the tombstone.
                            self.main[p - 1] = e;
                            self.dead -= 1;
                        } else if self.main.len() - p <= NEAR_END {
                            self.main.insert(p, e);
                        } else {
                            self.spill_insert(id, loc);
                        }
                    }
                    None => self.spill_insert(id, loc),
                }
                None
            }
        }
    }

    fn spill_insert(&mut self, id: u64, loc: Loc) {
        self.spill.insert(id, loc);
        let n = self.spill.len();
        if n > MIN_PURGE && n * 8 > self.main.len() && n > self.spill_floor {
            self.purge();
        }
    }

    fn remove(&mut self, id: u64) -> Option<Loc> {
        match self.find(id) {
            Ok(i) => {
                let e = &mut self.main[i];
                if e.is_dead() {
                    return None;
                }
                let loc = e.loc;
                e.loc.off = DEAD;
                self.dead += 1;
                if self.dead > MIN_PURGE && self.dead * 4 > self.main.len() {
                    self.purge();
                }
                Some(loc)
            }
            Err(_) => self.spill.remove(&id),
        }
    }

    /// Drops the tombstones, rebases, merges back what of the spill map fits in the
    /// window and releases spare capacity beyond a quarter of the live entries.
    fn purge(&mut self) {
        self.main.retain(|e| !e.is_dead());
        self.dead = 0;
        if self.spill.is_empty() {
            // Rebase on the oldest entry.
            if let Some(first) = self.main.first().map(|e| e.lo) {
                self.base += u64::from(first);
                for e in &mut self.main {
                    e.lo -= first;
                }
            }
        } else {
            let base = self.base;
            let mut all: Vec<(u64, Loc)> = self
                .main
                .iter()
                .map(|e| (base + u64::from(e.lo), e.loc))
                .collect();
            all.extend(std::mem::take(&mut self.spill));
            // Two sorted runs: a merge.
            all.sort_by_key(|x| x.0);
            self.main.clear();
            self.base = all.first().map_or(0, |x| x.0);
            for (id, loc) in all {
                match u32::try_from(id - self.base) {
                    Ok(lo) => self.main.push(Entry { lo, loc }),
                    Err(_) => {
                        self.spill.insert(id, loc);
                    }
                }
            }
            self.spill_floor = self.spill.len() * 2;
        }
        let len = self.main.len();
        if self.main.capacity() > len + len / 4 + 64 {
            self.main.shrink_to(len + len / 4);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Loc)> + '_ {
        let base = self.base;
        self.main
            .iter()
            .filter(|e| !e.is_dead())
            .map(move |e| (base + u64::from(e.lo), &e.loc))
            .chain(self.spill.iter().map(|(id, loc)| (*id, loc)))
    }
}

/// The index: one [`QueueIndex`] per interned queue.
#[derive(Default)]
pub(crate) struct Index {
    queues: Vec<QueueIndex>,
    live: usize,
}

impl Index {
    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Live entries of queue `q`.
    pub fn queue_len(&self, q: u32) -> usize {
        self.queues.get(q as usize).map_or(0, QueueIndex::len)
    }

    pub fn get(&self, id: u64, q: u32) -> Option<Loc> {
        self.queues.get(q as usize)?.get(id).copied()
    }

    /// Changes a live entry in place; false when there is none.
    pub fn update(&mut self, id: u64, q: u32, f: impl FnOnce(&mut Loc)) -> bool {
        match self
            .queues
            .get_mut(q as usize)
            .and_then(|qi| qi.get_mut(id))
        {
            Some(loc) => {
                f(loc);
                true
            }
            None => false,
        }
    }

    /// Inserts or replaces; returns the location replaced.
    pub fn insert(&mut self, id: u64, q: u32, loc: Loc) -> Option<Loc> {
        let q = q as usize;
        if self.queues.len() <= q {
            self.queues.resize_with(q + 1, QueueIndex::default);
        }
        let old = self.queues[q].insert(id, loc);
        if old.is_none() {
            self.live += 1;
        }
        old
    }

    /// Removes; returns the location removed.
    pub fn remove(&mut self, id: u64, q: u32) -> Option<Loc> {
        let loc = self.queues.get_mut(q as usize)?.remove(id);
        if loc.is_some() {
            self.live -= 1;
        }
        loc
    }

    /// Removes every entry of queue `q`, calling `f` with each location removed.
    pub fn remove_queue(&mut self, q: u32, mut f: impl FnMut(&Loc)) {
        let Some(qi) = self.queues.get_mut(q as usize) else {
            return;
        };
        let qi = std::mem::take(qi);
        self.live -= qi.len();
        for (_, loc) in qi.iter() {
            f(loc);
        }
    }

    /// Takes the oldest paged entries of queue `q` (the ones with [`FLAG_PAGED`], in id
    /// order): clears their flag and hands each `(id, loc)` to `f`, up to `max` entries
    /// or until their record lengths reach `max_bytes` (at least one is taken).
    pub fn take_paged(
        &mut self,
        q: u32,
        max: usize,
        max_bytes: u64,
        mut f: impl FnMut(u64, Loc),
    ) -> usize {
        let Some(qi) = self.queues.get_mut(q as usize) else {
            return 0;
        };
        let (mut n, mut bytes) = (0usize, 0u64);
        let base = qi.base;
        let main = qi
            .main
            .iter_mut()
            .filter(|e| !e.is_dead())
            .map(|e| (base + u64::from(e.lo), &mut e.loc));
        for (id, loc) in main.chain(qi.spill.iter_mut().map(|(id, l)| (*id, l))) {
            if n >= max || (n > 0 && bytes >= max_bytes) {
                break;
            }
            if loc.has(FLAG_PAGED) {
                loc.clear(FLAG_PAGED);
                bytes += u64::from(loc.len());
                n += 1;
                f(id, *loc);
            }
        }
        n
    }

    /// Drops every tombstone, merges back the spill maps (where they fit) and leaves no
    /// spare capacity (after recovery).
    pub fn shrink_to_fit(&mut self) {
        for qi in &mut self.queues {
            qi.purge();
            qi.main.shrink_to_fit();
        }
    }

    /// Live entries of queue `q` as `(id, loc)`, in id order once
    /// [`Index::shrink_to_fit`] has run (before, spilled entries come last; after it,
    /// whatever stays spilled lies beyond the window, above every entry of `main`).
    pub fn iter_queue(&self, q: u32) -> impl Iterator<Item = (u64, &Loc)> + '_ {
        self.queues
            .get(q as usize)
            .into_iter()
            .flat_map(|qi| qi.iter())
    }

    /// Live entries `(id, q, loc)`, queue by queue.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32, &Loc)> + '_ {
        self.queues
            .iter()
            .enumerate()
            .flat_map(|(q, qi)| qi.iter().map(move |(id, loc)| (id, q as u32, loc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn loc(n: u64) -> Loc {
        Loc::new(n as u32, (n * 3) as u32, 40, 0)
    }

    #[test]
    fn entry_is_20_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 20);
    }

    fn run(big_jumps: bool) {
        // Random operations, including far out of order inserts and (optionally) ids
        // more than 2^32 apart, against a BTreeMap.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut idx = Index::default();
        let mut model: BTreeMap<(u32, u64), Loc> = BTreeMap::new();
        let mut next = 0u64;
        for step in 0..200_000u64 {
            let op = rnd(100);
            let q = rnd(3) as u32;
            if op < 40 {
                // Publish, mostly in order, sometimes slightly or far out of order.
                next += 1;
                if big_jumps && rnd(5000) == 0 {
                    next += 1 << 32;
                }
                let id = match rnd(20) {
                    0 => rnd(next + 1),
                    1 => next.saturating_sub(rnd(50)),
                    _ => next,
                };
                let l = loc(step);
                assert_eq!(idx.insert(id, q, l), model.insert((q, id), l));
            } else if op < 80 {
                let first = model.range((q, 0)..(q + 1, 0)).next().map(|(k, _)| k.1);
                let id = match first {
                    Some(id) if rnd(2) == 0 => id,
                    _ => rnd(next + 1),
                };
                assert_eq!(idx.remove(id, q), model.remove(&(q, id)));
            } else if op < 95 {
                let id = rnd(next + 1);
                assert_eq!(idx.get(id, q), model.get(&(q, id)).copied());
                let updated = idx.update(id, q, |a| a.set_delivered());
                assert_eq!(updated, model.contains_key(&(q, id)));
                if let Some(b) = model.get_mut(&(q, id)) {
                    b.set_delivered();
                }
            } else if op < 96 {
                let mut got = Vec::new();
                idx.remove_queue(q, |l| got.push(*l));
                let mut want = Vec::new();
                model.retain(|k, l| {
                    if k.0 == q {
                        want.push(*l);
                        false
                    } else {
                        true
                    }
                });
                got.sort_by_key(|l| (l.seg, l.off));
                want.sort_by_key(|l| (l.seg, l.off));
                assert_eq!(got, want);
            } else if op < 97 {
                idx.shrink_to_fit();
            }
            assert_eq!(idx.len(), model.len());
            assert_eq!(
                idx.queue_len(q),
                model.range((q, 0)..(q + 1, 0)).count(),
                "step {step}"
            );
        }
        idx.shrink_to_fit();
        // After shrink_to_fit, both iterators are in (queue, id) order.
        let got: Vec<_> = idx.iter().map(|(id, q, l)| ((q, id), *l)).collect();
        let want: Vec<_> = model.iter().map(|(k, l)| (*k, *l)).collect();
        assert_eq!(got, want);
        for q in 0..3 {
            let got: Vec<_> = idx.iter_queue(q).map(|(id, l)| (id, *l)).collect();
            let want: Vec<_> = model
                .range((q, 0)..(q + 1, 0))
                .map(|(k, l)| (k.1, *l))
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn matches_a_map() {
        run(false);
    }

    #[test]
    fn matches_a_map_across_id_windows() {
        run(true);
    }
}
