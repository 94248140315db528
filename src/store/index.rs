//! Compact index of live messages: `(message id, interned queue) -> location`.
//!
//! Message ids are globally increasing and publishes reach the log almost in id order,
//! so the index is one vector of 24-byte entries sorted by `(id, queue)`: an append is
//! a push (or a short shift near the end when concurrent publishers race), a lookup is
//! a binary search, and there is no hash table slack. A removal leaves a tombstone in
//! place (so that the order holds); tombstones are purged in one linear pass once they
//! make up a quarter of the vector, which keeps removal amortised O(1) and the vector
//! at most a third larger than the live set. A compaction copy re-publishes an existing
//! key and so only updates its entry in place. The rare entry that would land far from
//! the end goes to a small ordered spill map instead of shifting the whole vector; the
//! spill is merged back at the next purge.

use std::collections::BTreeMap;

use super::state::Loc;

/// An entry more than this many places from the end goes to the spill map.
const NEAR_END: usize = 1024;
/// Tombstones are purged when there are more than this many and more than a quarter of
/// the entries.
const MIN_PURGE: usize = 1024;

/// `Loc::off` of a tombstone (real offsets are below 2 GiB).
const DEAD: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: u64,
    q: u32,
    loc: Loc,
}

impl Entry {
    fn key(&self) -> (u64, u32) {
        (self.id, self.q)
    }
    fn is_dead(&self) -> bool {
        self.loc.off == DEAD
    }
}

#[derive(Default)]
pub(crate) struct Index {
    /// Sorted by `(id, q)`, tombstones included.
    main: Vec<Entry>,
    /// Tombstones in `main`.
    dead: usize,
    /// Entries that arrived far out of order.
    spill: BTreeMap<(u64, u32), Loc>,
}

impl Index {
    /// Live entries.
    pub fn len(&self) -> usize {
        self.main.len() - self.dead + self.spill.len()
    }

    fn find(&self, id: u64, q: u32) -> Result<usize, usize> {
        let key = (id, q);
        // Most lookups are for recent or oldest entries; a plain binary search is
        // O(log n) either way.
        self.main.binary_search_by(|e| e.key().cmp(&key))
    }

    pub fn get(&self, id: u64, q: u32) -> Option<&Loc> {
        match self.find(id, q) {
            Ok(i) => {
                let e = &self.main[i];
                (!e.is_dead()).then_some(&e.loc)
            }
            Err(_) => self.spill.get(&(id, q)),
        }
    }

    pub fn get_mut(&mut self, id: u64, q: u32) -> Option<&mut Loc> {
        match self.find(id, q) {
            Ok(i) => {
                let e = &mut self.main[i];
                (!e.is_dead()).then_some(&mut e.loc)
            }
            Err(_) => self.spill.get_mut(&(id, q)),
        }
    }

    /// Inserts or replaces; returns the location replaced.
    pub fn insert(&mut self, id: u64, q: u32, loc: Loc) -> Option<Loc> {
        debug_assert!(loc.off != DEAD);
        match self.find(id, q) {
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
                if let Some(old) = self.spill.get_mut(&(id, q)) {
                    return Some(std::mem::replace(old, loc));
                }
                let e = Entry { id, q, loc };
                if p == self.main.len() {
                    self.main.push(e);
                } else if p > 0 && self.main[p - 1].is_dead() {
                    // main[p-2] < main[p-1] < key < main[p]: reuse the tombstone.
                    self.main[p - 1] = e;
                    self.dead -= 1;
                } else if self.main.len() - p <= NEAR_END {
                    self.main.insert(p, e);
                } else {
                    self.spill.insert((id, q), loc);
                    if self.spill.len() > MIN_PURGE && self.spill.len() * 8 > self.main.len() {
                        self.purge();
                    }
                }
                None
            }
        }
    }

    /// Removes; returns the location removed.
    pub fn remove(&mut self, id: u64, q: u32) -> Option<Loc> {
        match self.find(id, q) {
            Ok(i) => {
                let e = &mut self.main[i];
                if e.is_dead() {
                    return None;
                }
                let loc = e.loc;
                e.loc.off = DEAD;
                self.dead += 1;
                self.maybe_purge();
                Some(loc)
            }
            Err(_) => self.spill.remove(&(id, q)),
        }
    }

    /// Removes every entry of queue `q`, calling `f` with each location removed.
    pub fn remove_queue(&mut self, q: u32, mut f: impl FnMut(&Loc)) {
        for e in self.main.iter_mut() {
            if e.q == q && !e.is_dead() {
                f(&e.loc);
                e.loc.off = DEAD;
                self.dead += 1;
            }
        }
        self.spill.retain(|k, loc| {
            if k.1 == q {
                f(loc);
                false
            } else {
                true
            }
        });
        self.maybe_purge();
    }

    fn maybe_purge(&mut self) {
        if self.dead > MIN_PURGE && self.dead * 4 > self.main.len() {
            self.purge();
        }
    }

    /// Drops the tombstones, merges the spill map back and releases spare capacity
    /// beyond a quarter of the live entries.
    pub fn purge(&mut self) {
        self.main.retain(|e| !e.is_dead());
        self.dead = 0;
        if !self.spill.is_empty() {
            let spill = std::mem::take(&mut self.spill);
            self.main.reserve_exact(spill.len());
            self.main
                .extend(spill.into_iter().map(|((id, q), loc)| Entry { id, q, loc }));
            // Two sorted runs: a merge.
            self.main.sort_by_key(Entry::key);
        }
        let len = self.main.len();
        if self.main.capacity() > len + len / 4 + 64 {
            self.main.shrink_to(len + len / 4);
        }
    }

    /// Like [`Index::purge`], and leaves no spare capacity at all (after recovery).
    pub fn shrink_to_fit(&mut self) {
        self.purge();
        self.main.shrink_to_fit();
    }

    /// Live entries `(id, q, loc)`: those of the main vector in `(id, q)` order, then
    /// those of the spill map in the same order (empty after a purge).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32, &Loc)> + '_ {
        self.main
            .iter()
            .filter(|e| !e.is_dead())
            .map(|e| (e.id, e.q, &e.loc))
            .chain(self.spill.iter().map(|(k, loc)| (k.0, k.1, loc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn loc(n: u64) -> Loc {
        Loc::new(n as u32, (n * 3) as u32, 40, false)
    }

    #[test]
    fn entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    #[test]
    fn matches_a_map() {
        // Random operations, including far out of order inserts, against a BTreeMap.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut idx = Index::default();
        let mut model: BTreeMap<(u64, u32), Loc> = BTreeMap::new();
        let mut next = 0u64;
        for step in 0..200_000u64 {
            let op = rnd(100);
            let q = rnd(3) as u32;
            if op < 40 {
                // Publish, mostly in order, sometimes slightly or far out of order.
                next += 1;
                let id = match rnd(20) {
                    0 => rnd(next + 1),
                    1 => next.saturating_sub(rnd(50)),
                    _ => next,
                };
                let l = loc(step);
                assert_eq!(idx.insert(id, q, l), model.insert((id, q), l));
            } else if op < 80 {
                let id = if rnd(2) == 0 {
                    model.keys().next().map_or(0, |k| k.0)
                } else {
                    rnd(next + 1)
                };
                let q2 = model.keys().next().map_or(q, |k| k.1);
                assert_eq!(idx.remove(id, q2), model.remove(&(id, q2)));
                assert_eq!(idx.remove(id, q), model.remove(&(id, q)));
            } else if op < 95 {
                let id = rnd(next + 1);
                assert_eq!(idx.get(id, q), model.get(&(id, q)));
                if let (Some(a), Some(b)) = (idx.get_mut(id, q), model.get_mut(&(id, q))) {
                    a.set_delivered();
                    b.set_delivered();
                }
            } else if op < 96 {
                let mut got = Vec::new();
                idx.remove_queue(q, |l| got.push(*l));
                let mut want = Vec::new();
                model.retain(|k, l| {
                    if k.1 == q {
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
                idx.purge();
            }
            assert_eq!(idx.len(), model.len());
        }
        idx.shrink_to_fit();
        let got: Vec<_> = idx.iter().map(|(id, q, l)| ((id, q), *l)).collect();
        let want: Vec<_> = model.into_iter().collect();
        assert_eq!(got, want);
    }
}
