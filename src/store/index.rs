//! Compact index of live messages: `(interned queue, message id) -> location`.
//!
//! Deep queues hold millions of entries, so an entry must cost a few bytes, not the 20
//! of a plain `(id, Loc)`. The workload makes that easy: message ids are globally
//! increasing and reach the log almost in order, and a queue's consecutive records
//! mostly sit back to back in the same segment with similar lengths. So each queue is
//!
//! - a run of sealed **blocks** of up to [`BLOCK`] entries in id order, found by binary
//!   search on their first id. A block stores its first entry in the header and each
//!   following one as a step from the one before: one byte when the id advances by at
//!   most 4 and the record follows the previous one with a length within 16 of it
//!   (the common case), else varint deltas (id step, offset from the end of the
//!   previous record or a new segment and offset, length change).
//!   Liveness and each flag are bitmaps beside the bytes, so a removal or a flag change
//!   (delivered, paged) never re-encodes. The last block stays open and takes appends.
//!   A block is dropped when its last entry dies, and re-encoded without its dead
//!   entries (merged with a neighbour when they fit) once fewer than an eighth live, so
//!   random removals cannot leave the index much larger than the live set.
//! - a short sorted **pending** list of the newest entries, uncompressed, that absorbs
//!   the small reorders of racing publishers before its oldest entry is appended to the
//!   open block.
//!
//! The rare insert of a new id below the pending list (far out of order) decodes and
//! re-encodes the one block it lands in, splitting it when full. A compaction copy
//! (an existing key at a new location) re-encodes only the two steps around it.
//! A lookup scans its block from the start, at most [`BLOCK`] steps, or from where the
//! previous lookup stopped when that was earlier in the same block, so acks and
//! deliveries walking forward from the head cost O(1) each.
//!
//! Measured (`heap_bytes`, tests below): about 2.1 bytes an entry for a deep queue of
//! back to back records, 19 for 10,000 queues of 100 interleaved entries.
//!
//! Paging: each queue remembers an id below which no live entry has `FLAG_PAGED`;
//! [`Index::take_paged`] starts there, skips blocks whose paged bitmap is empty, and
//! moves it past what it took, so draining a deep queue costs O(entries taken). An
//! insert or update that marks an entry below it paged moves it back.

use std::cell::Cell;
use std::collections::VecDeque;

use super::record::{FLAG_DELIVERED, FLAG_PAGED, FLAG_TRANSIENT};

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

/// Entries per block: the bitmaps are one `u128` each.
const BLOCK: usize = 128;
/// Newest entries kept uncompressed, so that racing publishers' small reorders are
/// plain sorted inserts.
const PENDING: usize = 16;
/// Flags kept per entry, as one bitmap per bit: `FLAG_*` bits above these are not kept.
const FLAG_BITS: usize = 3;
const KNOWN_FLAGS: u8 = (1 << FLAG_BITS) - 1;
const _: () = assert!((FLAG_DELIVERED | FLAG_TRANSIENT | FLAG_PAGED) & !KNOWN_FLAGS == 0);
/// Bitmap of `FLAG_PAGED`.
const PAGED_BIT: usize = FLAG_PAGED.trailing_zeros() as usize;

/// An entry without its flags: what the delta encoding covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    id: u64,
    seg: u32,
    off: u32,
    len: u32,
}

impl Pos {
    fn of(id: u64, loc: &Loc) -> Pos {
        Pos {
            id,
            seg: loc.seg,
            off: loc.off,
            len: loc.len,
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn get_varint(b: &[u8], pos: &mut usize) -> u64 {
    let x = b[*pos];
    *pos += 1;
    if x < 0x80 {
        return u64::from(x);
    }
    let mut v = u64::from(x & 0x7f);
    let mut shift = 7;
    loop {
        let x = b[*pos];
        *pos += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// A step of one byte: the id advances by 1 to 4, the record follows the previous one
/// in its segment, and the length changes by -16 to 15. Its top bit is clear.
fn short_step(prev: &Pos, next: &Pos) -> Option<u8> {
    let di = next.id - prev.id;
    let dl = i64::from(next.len) - i64::from(prev.len);
    let follows = i64::from(next.off) == i64::from(prev.off) + i64::from(prev.len);
    (di <= 4 && (-16..16).contains(&dl) && next.seg == prev.seg && follows)
        .then(|| ((di - 1) as u8) << 5 | zigzag(dl) as u8)
}

/// A long step: this byte, then varints of the id step, the offset (from the end of the
/// previous record, or a new segment and offset) and the length change.
const LONG_STEP: u8 = 0x80;

/// Appends `next` as deltas from `prev` (`next.id > prev.id`).
fn encode_step(out: &mut Vec<u8>, prev: &Pos, next: &Pos) {
    if let Some(b) = short_step(prev, next) {
        out.push(b);
        return;
    }
    out.push(LONG_STEP);
    put_varint(out, next.id - prev.id);
    if next.seg == prev.seg {
        // Back to back records give 0.
        let d = i64::from(next.off) - i64::from(prev.off) - i64::from(prev.len);
        put_varint(out, zigzag(d) << 1);
    } else {
        let d = i64::from(next.seg) - i64::from(prev.seg);
        put_varint(out, (zigzag(d) << 1) | 1);
        put_varint(out, u64::from(next.off));
    }
    put_varint(out, zigzag(i64::from(next.len) - i64::from(prev.len)));
}

/// Reads the entry after `cur` into `cur`.
#[inline(always)]
fn decode_step(b: &[u8], pos: &mut usize, cur: &mut Pos) {
    let x = b[*pos];
    *pos += 1;
    if x < LONG_STEP {
        cur.id += u64::from(x >> 5) + 1;
        cur.off = cur.off.wrapping_add(cur.len);
        cur.len = (i64::from(cur.len) + unzigzag(u64::from(x & 0x1f))) as u32;
    } else {
        decode_long_step(b, pos, cur);
    }
}

#[inline(never)]
fn decode_long_step(b: &[u8], pos: &mut usize, cur: &mut Pos) {
    cur.id += get_varint(b, pos);
    let v = get_varint(b, pos);
    if v & 1 == 0 {
        cur.off = (i64::from(cur.off) + i64::from(cur.len) + unzigzag(v >> 1)) as u32;
    } else {
        cur.seg = (i64::from(cur.seg) + unzigzag(v >> 1)) as u32;
        cur.off = get_varint(b, pos) as u32;
    }
    cur.len = (i64::from(cur.len) + unzigzag(get_varint(b, pos))) as u32;
}

/// Up to [`BLOCK`] entries in id order, dead ones included until a re-encode.
struct Block {
    /// Bit `i`: entry `i` is live.
    live: u128,
    /// `flags[k]` bit `i`: entry `i` has flag bit `k`.
    flags: [u128; FLAG_BITS],
    /// Entries `1..n`, each encoded by [`encode_step`] from the one before.
    bytes: Vec<u8>,
    /// Entry 0 (its id is in the [`Slot`]).
    seg: u32,
    off: u32,
    len: u32,
    /// Entries encoded.
    n: u8,
}

/// A block and its first id, kept beside the pointer so that a binary search over the
/// blocks never leaves the deque.
struct Slot {
    first: u64,
    b: Box<Block>,
}

impl std::ops::Deref for Slot {
    type Target = Block;
    fn deref(&self) -> &Block {
        &self.b
    }
}

impl std::ops::DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut Block {
        &mut self.b
    }
}

impl Slot {
    fn new(p: Pos, flags: u8) -> Slot {
        let mut b = Block {
            live: 1,
            flags: [0; FLAG_BITS],
            bytes: Vec::new(),
            seg: p.seg,
            off: p.off,
            len: p.len,
            n: 1,
        };
        b.set_flags(0, flags);
        Slot {
            first: p.id,
            b: Box::new(b),
        }
    }

    /// Every entry, dead ones too, as `(index, pos)`.
    fn entries(&self) -> Entries<'_> {
        Entries {
            b: &self.b,
            i: 0,
            pos: 0,
            cur: Pos {
                id: self.first,
                seg: self.b.seg,
                off: self.b.off,
                len: self.b.len,
            },
        }
    }

    /// Live entries as `(id, loc)`.
    fn live_entries(&self) -> impl Iterator<Item = (u64, Loc)> + '_ {
        self.entries()
            .filter(|(i, _)| self.is_live(*i))
            .map(|(i, p)| (p.id, self.loc(i, &p)))
    }
}

impl Block {
    fn n(&self) -> usize {
        usize::from(self.n)
    }

    fn live_count(&self) -> usize {
        self.live.count_ones() as usize
    }

    fn is_live(&self, i: usize) -> bool {
        (self.live >> i) & 1 != 0
    }

    /// Appends `p` after `prev`, the last entry.
    fn push(&mut self, prev: &Pos, p: Pos, flags: u8) {
        debug_assert!(self.n() < BLOCK && p.id > prev.id);
        encode_step(&mut self.bytes, prev, &p);
        let i = self.n();
        self.n += 1;
        self.live |= 1 << i;
        self.set_flags(i, flags);
    }

    fn flags_of(&self, i: usize) -> u8 {
        let mut f = 0;
        for (k, m) in self.flags.iter().enumerate() {
            f |= (((m >> i) & 1) as u8) << k;
        }
        f
    }

    fn set_flags(&mut self, i: usize, flags: u8) {
        for (k, m) in self.flags.iter_mut().enumerate() {
            *m = (*m & !(1 << i)) | (u128::from((flags >> k) & 1) << i);
        }
    }

    fn loc(&self, i: usize, p: &Pos) -> Loc {
        Loc::new(p.seg, p.off, p.len, self.flags_of(i))
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Block>() + self.bytes.capacity()
    }
}

struct Entries<'a> {
    b: &'a Block,
    i: usize,
    pos: usize,
    cur: Pos,
}

impl Iterator for Entries<'_> {
    type Item = (usize, Pos);

    #[inline]
    fn next(&mut self) -> Option<(usize, Pos)> {
        if self.i >= self.b.n() {
            return None;
        }
        if self.i > 0 {
            decode_step(&self.b.bytes, &mut self.pos, &mut self.cur);
        }
        self.i += 1;
        Some((self.i - 1, self.cur))
    }
}

/// Where the last lookup stopped in a block: entry `i` of block `b`, and the offset of
/// the step after it.
#[derive(Debug, Clone, Copy)]
struct Finger {
    b: usize,
    i: usize,
    pos: usize,
    cur: Pos,
}

/// A run of blocks in id order, the last one open for appends while it has room.
#[derive(Default)]
struct Blocks {
    v: VecDeque<Slot>,
    /// The last entry of `v.back()` while that block takes appends.
    open: Option<Pos>,
    /// Lookups resume here when they land in the same block at or after it, so that
    /// acks and deliveries walking forward from the head decode each entry once.
    /// Cleared whenever blocks move or are re-encoded (appends leave it valid).
    finger: Cell<Option<Finger>>,
}

impl Blocks {
    /// The entry of block `b` (which exists) with this id, live or dead.
    fn find(&self, b: usize, id: u64) -> Option<(usize, Pos)> {
        let slot = &self.v[b];
        let (mut i, mut pos, mut cur) = match self.finger.get() {
            Some(f) if f.b == b && f.cur.id <= id => (f.i, f.pos, f.cur),
            _ => {
                let e = slot.entries();
                (0, 0, e.cur)
            }
        };
        let (bytes, n) = (&slot.bytes[..], slot.n());
        while cur.id < id && i + 1 < n {
            decode_step(bytes, &mut pos, &mut cur);
            i += 1;
        }
        if cur.id != id {
            // A miss leaves the finger where it was.
            return None;
        }
        self.finger.set(Some(Finger { b, i, pos, cur }));
        Some((i, cur))
    }

    /// Gives entry `i` of block `b` the segment, offset and length of `to` (same id),
    /// re-encoding only the steps into and out of it: a compaction copy costs a scan
    /// of the block and a splice of a few bytes, not a rewrite.
    fn relocate(&mut self, b: usize, i: usize, to: Pos) {
        self.finger.set(None);
        let is_back = b + 1 == self.v.len();
        let slot = &mut self.v[b];
        let n = slot.n();
        let mut cur = slot.entries().cur;
        // Walk to entry i: `prev` is entry i - 1 and step i spans `start..pos`.
        let (mut prev, mut start, mut pos) = (cur, 0, 0);
        for _ in 0..i {
            prev = cur;
            start = pos;
            decode_step(&slot.bytes, &mut pos, &mut cur);
        }
        let mut end = pos;
        let next = (i + 1 < n).then(|| {
            let mut next = cur;
            decode_step(&slot.bytes, &mut end, &mut next);
            next
        });
        let mut enc = Vec::with_capacity(32);
        if i == 0 {
            (slot.b.seg, slot.b.off, slot.b.len) = (to.seg, to.off, to.len);
        } else {
            encode_step(&mut enc, &prev, &to);
        }
        if let Some(next) = next {
            encode_step(&mut enc, &to, &next);
        }
        slot.b.bytes.splice(start..end, enc);
        if is_back && i + 1 == n && self.open.is_some() {
            self.open = Some(to);
        }
    }

    /// Drops block `b`.
    fn remove(&mut self, b: usize) {
        if b + 1 == self.v.len() {
            self.open = None;
        }
        self.finger.set(None);
        self.v.remove(b);
        if self.v.capacity() > 64 && self.v.len() < self.v.capacity() / 4 {
            self.v.shrink_to(self.v.len() * 2);
        }
    }

    /// Appends an entry above every one encoded; `cap` (at most [`BLOCK`]) ends the
    /// open block early.
    fn push(&mut self, id: u64, loc: &Loc, cap: usize) {
        let p = Pos::of(id, loc);
        match (self.open, self.v.back_mut()) {
            (Some(prev), Some(b)) if b.n() < cap => {
                b.push(&prev, p, loc.flags);
                if b.n() == BLOCK {
                    b.bytes.shrink_to_fit();
                    self.open = None;
                } else {
                    self.open = Some(p);
                }
            }
            _ => {
                if let Some(b) = self.v.back_mut() {
                    b.bytes.shrink_to_fit();
                }
                self.v.push_back(Slot::new(p, loc.flags));
                self.open = Some(p);
            }
        }
    }

    /// The block that holds `id` if any does: the last one starting at or before it
    /// (the first block when `id` is below all).
    fn locate(&self, id: u64) -> usize {
        self.v.partition_point(|b| b.first <= id).saturating_sub(1)
    }

    /// Replaces blocks `b..b + count` with `entries` (in id order, all between the
    /// neighbouring blocks' ids), split into blocks of equal size.
    fn rewrite(&mut self, b: usize, count: usize, entries: Vec<(u64, Loc)>) {
        self.finger.set(None);
        let was_back = b + count == self.v.len();
        let mut new = Blocks::default();
        let k = entries.len().div_ceil(BLOCK);
        if k > 0 {
            let per = entries.len().div_ceil(k);
            for (j, (id, loc)) in entries.into_iter().enumerate() {
                if j % per == 0 {
                    new.open = None;
                }
                new.push(id, &loc, BLOCK);
            }
        }
        if let Some(last) = new.v.back_mut() {
            last.bytes.shrink_to_fit();
        }
        let made = new.v.len();
        // Reuse the slots in place; only a split or a merge shifts the deque.
        for (j, blk) in new.v.into_iter().enumerate() {
            if j < count {
                self.v[b + j] = blk;
            } else {
                self.v.insert(b + j, blk);
            }
        }
        for _ in made..count {
            self.v.remove(b + made);
        }
        if was_back {
            self.open = new.open;
        }
    }

    /// Live entries of blocks `b..b + count`.
    fn collect(&self, b: usize, count: usize) -> Vec<(u64, Loc)> {
        let mut out = Vec::with_capacity(BLOCK * count);
        for blk in self.v.range(b..b + count) {
            out.extend(blk.live_entries());
        }
        out
    }

    /// Removes the dead entries of block `b`, merging it with a neighbour if their live
    /// entries fit in one block.
    fn compact(&mut self, b: usize) {
        let live = |i: usize| self.v[i].live_count();
        let (start, count) = if b + 1 < self.v.len() && live(b) + live(b + 1) <= BLOCK {
            (b, 2)
        } else if b > 0 && live(b - 1) + live(b) <= BLOCK {
            (b - 1, 2)
        } else {
            (b, 1)
        };
        let entries = self.collect(start, count);
        self.rewrite(start, count, entries);
    }

    fn heap_bytes(&self) -> usize {
        self.v.capacity() * std::mem::size_of::<Slot>()
            + self.v.iter().map(|b| b.heap_bytes()).sum::<usize>()
    }
}

/// One queue's entries.
struct QueueIndex {
    blocks: Blocks,
    /// Highest id ever encoded into `blocks`; `pending` holds only higher ones.
    encoded: Option<u64>,
    /// Newest entries, sorted by id.
    pending: VecDeque<(u64, Loc)>,
    live: usize,
    /// No live entry with a lower id has `FLAG_PAGED`.
    paged_from: u64,
}

impl Default for QueueIndex {
    fn default() -> QueueIndex {
        QueueIndex {
            blocks: Blocks::default(),
            encoded: None,
            pending: VecDeque::new(),
            live: 0,
            paged_from: u64::MAX,
        }
    }
}

impl QueueIndex {
    fn in_pending(&self, id: u64) -> bool {
        self.encoded.map_or(true, |e| id > e)
    }

    fn note_paged(&mut self, id: u64, loc: &Loc) {
        if loc.has(FLAG_PAGED) && id < self.paged_from {
            self.paged_from = id;
        }
    }

    fn get(&self, id: u64) -> Option<Loc> {
        if self.in_pending(id) {
            let i = self.pending.binary_search_by_key(&id, |e| e.0).ok()?;
            return Some(self.pending[i].1);
        }
        let b = self.blocks.locate(id);
        let blk = self.blocks.v.get(b)?;
        let (i, p) = self.blocks.find(b, id)?;
        blk.is_live(i).then(|| blk.loc(i, &p))
    }

    fn update(&mut self, id: u64, f: impl FnOnce(&mut Loc)) -> bool {
        if self.in_pending(id) {
            let Ok(i) = self.pending.binary_search_by_key(&id, |e| e.0) else {
                return false;
            };
            let loc = &mut self.pending[i].1;
            f(loc);
            loc.flags &= KNOWN_FLAGS;
            let loc = *loc;
            self.note_paged(id, &loc);
            return true;
        }
        let b = self.blocks.locate(id);
        if b >= self.blocks.v.len() {
            return false;
        }
        let Some((i, p)) = self.blocks.find(b, id) else {
            return false;
        };
        let blk = &mut self.blocks.v[b];
        if !blk.is_live(i) {
            return false;
        }
        let mut loc = blk.loc(i, &p);
        f(&mut loc);
        loc.flags &= KNOWN_FLAGS;
        blk.set_flags(i, loc.flags);
        if Pos::of(id, &loc) != p {
            self.blocks.relocate(b, i, Pos::of(id, &loc));
        }
        self.note_paged(id, &loc);
        true
    }

    /// Re-encodes block `b` with `id` (not in it) added.
    fn replace_in_block(&mut self, b: usize, id: u64, loc: Loc) {
        let mut entries = self.blocks.collect(b, 1);
        match entries.binary_search_by_key(&id, |e| e.0) {
            Ok(j) => entries[j].1 = loc,
            Err(j) => entries.insert(j, (id, loc)),
        }
        self.blocks.rewrite(b, 1, entries);
    }

    fn insert(&mut self, id: u64, mut loc: Loc) -> Option<Loc> {
        loc.flags &= KNOWN_FLAGS;
        self.note_paged(id, &loc);
        if self.in_pending(id) {
            return match self.pending.binary_search_by_key(&id, |e| e.0) {
                Ok(i) => Some(std::mem::replace(&mut self.pending[i].1, loc)),
                Err(i) => {
                    if self.pending.capacity() == 0 {
                        self.pending.reserve_exact(PENDING + 1);
                    }
                    self.pending.insert(i, (id, loc));
                    self.live += 1;
                    if self.pending.len() > PENDING {
                        let (id, loc) = self.pending.pop_front().expect("pending is full");
                        self.blocks.push(id, &loc, BLOCK);
                        self.encoded = Some(id);
                    }
                    None
                }
            };
        }
        let b = self.blocks.locate(id);
        if b >= self.blocks.v.len() {
            // Every block is gone; start afresh (pending ids are above this one).
            self.blocks.push(id, &loc, BLOCK);
            self.live += 1;
            return None;
        }
        let Some((i, p)) = self.blocks.find(b, id) else {
            self.replace_in_block(b, id, loc);
            self.live += 1;
            return None;
        };
        // The key is encoded here (a dead one comes back to life).
        let blk = &mut self.blocks.v[b];
        let old = blk.is_live(i).then(|| blk.loc(i, &p));
        blk.live |= 1 << i;
        blk.set_flags(i, loc.flags);
        if Pos::of(id, &loc) != p {
            self.blocks.relocate(b, i, Pos::of(id, &loc));
        }
        if old.is_none() {
            self.live += 1;
        }
        old
    }

    fn remove(&mut self, id: u64) -> Option<Loc> {
        if self.in_pending(id) {
            let i = self.pending.binary_search_by_key(&id, |e| e.0).ok()?;
            self.live -= 1;
            return self.pending.remove(i).map(|e| e.1);
        }
        let b = self.blocks.locate(id);
        if b >= self.blocks.v.len() {
            return None;
        }
        let (i, p) = self.blocks.find(b, id)?;
        let blk = &mut self.blocks.v[b];
        if !blk.is_live(i) {
            return None;
        }
        let loc = blk.loc(i, &p);
        blk.live &= !(1 << i);
        blk.set_flags(i, 0);
        self.live -= 1;
        let (live, n) = (blk.live_count(), blk.n());
        if live == 0 {
            self.blocks.remove(b);
        } else if live * 8 < n {
            self.blocks.compact(b);
        }
        Some(loc)
    }

    fn take_paged(&mut self, max: usize, max_bytes: u64, mut f: impl FnMut(u64, Loc)) -> usize {
        let (mut n, mut bytes) = (0usize, 0u64);
        let full = |n: usize, bytes: u64| n >= max || (n > 0 && bytes >= max_bytes);
        let from = self.paged_from;
        let mut b = if self.in_pending(from) {
            self.blocks.v.len()
        } else {
            self.blocks.locate(from)
        };
        while b < self.blocks.v.len() {
            let blk = &mut self.blocks.v[b];
            let mut todo = blk.live & blk.flags[PAGED_BIT];
            b += 1;
            if todo == 0 {
                continue;
            }
            let mut taken = 0u128;
            for (i, p) in blk.entries() {
                if (todo >> i) & 1 == 0 {
                    continue;
                }
                if full(n, bytes) {
                    blk.flags[PAGED_BIT] &= !taken;
                    return n;
                }
                todo &= !(1 << i);
                taken |= 1 << i;
                let mut loc = blk.loc(i, &p);
                loc.clear(FLAG_PAGED);
                n += 1;
                bytes += u64::from(loc.len);
                self.paged_from = p.id + 1;
                f(p.id, loc);
                if todo == 0 {
                    break;
                }
            }
            blk.flags[PAGED_BIT] &= !taken;
        }
        for (id, loc) in &mut self.pending {
            if !loc.has(FLAG_PAGED) {
                continue;
            }
            if full(n, bytes) {
                return n;
            }
            loc.clear(FLAG_PAGED);
            n += 1;
            bytes += u64::from(loc.len);
            self.paged_from = *id + 1;
            f(*id, *loc);
        }
        self.paged_from = u64::MAX;
        n
    }

    /// Re-encodes into full blocks, dropping every dead entry, and leaves no spare
    /// capacity. One block at a time, so it never holds the queue twice.
    fn shrink_to_fit(&mut self) {
        let old = std::mem::take(&mut self.blocks.v);
        let mut new = Blocks::default();
        for blk in old {
            for (id, loc) in blk.live_entries() {
                new.push(id, &loc, BLOCK);
            }
        }
        if let Some(last) = new.v.back_mut() {
            last.bytes.shrink_to_fit();
        }
        new.v.shrink_to_fit();
        self.blocks = new;
        self.pending.shrink_to_fit();
    }

    fn iter(&self) -> impl Iterator<Item = (u64, Loc)> + '_ {
        self.blocks
            .v
            .iter()
            .flat_map(|b| b.live_entries())
            .chain(self.pending.iter().copied())
    }

    fn heap_bytes(&self) -> usize {
        self.blocks.heap_bytes() + self.pending.capacity() * std::mem::size_of::<(u64, Loc)>()
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
        self.queues.get(q as usize).map_or(0, |qi| qi.live)
    }

    pub fn get(&self, id: u64, q: u32) -> Option<Loc> {
        self.queues.get(q as usize)?.get(id)
    }

    /// Changes a live entry in place; false when there is none. Flag bits beyond
    /// `record::FLAG_PAGED`'s are not kept.
    pub fn update(&mut self, id: u64, q: u32, f: impl FnOnce(&mut Loc)) -> bool {
        self.queues
            .get_mut(q as usize)
            .is_some_and(|qi| qi.update(id, f))
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
        self.live -= qi.live;
        for (_, loc) in qi.iter() {
            f(&loc);
        }
    }

    /// Takes the oldest paged entries of queue `q` (the ones with [`FLAG_PAGED`], in id
    /// order): clears their flag and hands each `(id, loc)` to `f`, up to `max` entries
    /// or until their record lengths reach `max_bytes` (at least one is taken).
    /// Amortised O(entries taken).
    pub fn take_paged(
        &mut self,
        q: u32,
        max: usize,
        max_bytes: u64,
        f: impl FnMut(u64, Loc),
    ) -> usize {
        match self.queues.get_mut(q as usize) {
            Some(qi) => qi.take_paged(max, max_bytes, f),
            None => 0,
        }
    }

    /// Drops every dead entry and leaves no spare capacity (after recovery).
    pub fn shrink_to_fit(&mut self) {
        for qi in &mut self.queues {
            qi.shrink_to_fit();
        }
        self.queues.shrink_to_fit();
    }

    /// Live entries of queue `q` as `(id, loc)`, in id order.
    pub fn iter_queue(&self, q: u32) -> impl Iterator<Item = (u64, Loc)> + '_ {
        self.queues
            .get(q as usize)
            .into_iter()
            .flat_map(|qi| qi.iter())
    }

    /// Live entries `(id, q, loc)` in (queue, id) order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32, Loc)> + '_ {
        self.queues
            .iter()
            .enumerate()
            .flat_map(|(q, qi)| qi.iter().map(move |(id, loc)| (id, q as u32, loc)))
    }

    /// Heap memory held: every allocation's capacity (allocator overhead aside).
    // For the store's metrics; until they report it, only the tests call it.
    #[allow(dead_code)]
    pub fn heap_bytes(&self) -> usize {
        self.queues.capacity() * std::mem::size_of::<QueueIndex>()
            + self
                .queues
                .iter()
                .map(QueueIndex::heap_bytes)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Pseudo-random numbers (xorshift), reproducible.
    fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut x = seed | 1;
        move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        }
    }

    #[test]
    fn block_header_is_small() {
        assert!(std::mem::size_of::<Block>() <= 112);
    }

    #[test]
    fn varints_and_steps_round_trip() {
        let mut b = Vec::new();
        let vals = [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX];
        for v in vals {
            put_varint(&mut b, v);
        }
        let mut pos = 0;
        for v in vals {
            assert_eq!(get_varint(&b, &mut pos), v);
        }
        for v in [
            0i64,
            1,
            -1,
            1 << 40,
            -(1 << 40),
            i64::MAX >> 1,
            i64::MIN >> 1,
        ] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        // Extremes of every field.
        let p = |id, seg, off, len| Pos { id, seg, off, len };
        let steps = [
            p(0, 0, 0, 0),
            // One-byte steps at their limits, then just beyond them.
            p(4, 0, 0, 15),
            p(5, 0, 15, 0),
            p(9, 0, 15, 16),
            p(10, 0, 31, 32),
            p(11, 0, 63, 16),
            p(12, 0, 79, 0),
            p(16, 0, 78, 0),
            p(17, 1, 78, 0),
            p(22, 1, 78, 0),
            Pos {
                id: 23,
                seg: 0,
                off: u32::MAX,
                len: u32::MAX,
            },
            Pos {
                id: 1 << 40,
                seg: u32::MAX,
                off: 0,
                len: 0,
            },
            Pos {
                id: u64::MAX,
                seg: 0,
                off: 7,
                len: u32::MAX,
            },
        ];
        let mut b = Vec::new();
        for w in steps.windows(2) {
            encode_step(&mut b, &w[0], &w[1]);
        }
        let (mut pos, mut cur) = (0, steps[0]);
        for s in &steps[1..] {
            decode_step(&b, &mut pos, &mut cur);
            assert_eq!(cur, *s);
        }
        assert_eq!(pos, b.len());
    }

    /// The model's take_paged: the same contract on a BTreeMap.
    fn model_take(
        model: &mut BTreeMap<(u32, u64), Loc>,
        q: u32,
        max: usize,
        max_bytes: u64,
    ) -> Vec<(u64, Loc)> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for (k, l) in model.range_mut((q, 0)..(q + 1, 0)) {
            if out.len() >= max || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            if l.has(FLAG_PAGED) {
                l.clear(FLAG_PAGED);
                bytes += u64::from(l.len());
                out.push((k.1, *l));
            }
        }
        out
    }

    fn run(big_jumps: bool, seed: u64) {
        // Random operations, including far out of order inserts, (optionally) ids more
        // than 2^32 apart, paged entries interleaved with resident ones and entries
        // paged again later, against a BTreeMap.
        let mut rnd = rng(seed);
        let mut idx = Index::default();
        let mut model: BTreeMap<(u32, u64), Loc> = BTreeMap::new();
        let mut next = 0u64;
        // Per queue: where the next back to back record goes.
        let mut at = [(0u32, 0u32); 3];
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
                let spread = if rnd(10) == 0 { 100_000 } else { 20 };
                let len = 30 + rnd(spread) as u32;
                let (seg, off) = match rnd(50) {
                    // Elsewhere (a compaction copy, another segment).
                    0 => (rnd(1000) as u32, rnd(u32::MAX as u64) as u32),
                    1 => (at[q as usize].0 + 1, 0),
                    _ => at[q as usize],
                };
                at[q as usize] = (seg, off.wrapping_add(len));
                let flags = rnd(8) as u8;
                let l = Loc::new(seg, off, len, flags);
                assert_eq!(
                    idx.insert(id, q, l),
                    model.insert((q, id), l),
                    "step {step}"
                );
            } else if op < 75 {
                let first = model.range((q, 0)..(q + 1, 0)).next().map(|(k, _)| k.1);
                let id = match first {
                    Some(id) if rnd(2) == 0 => id,
                    _ => rnd(next + 1),
                };
                assert_eq!(idx.remove(id, q), model.remove(&(q, id)), "step {step}");
            } else if op < 90 {
                let id = match rnd(3) {
                    0 => rnd(next + 1),
                    _ => {
                        let near = model.range((q, 0)..(q + 1, 0)).nth(rnd(100) as usize);
                        near.map_or(0, |(k, _)| k.1)
                    }
                };
                assert_eq!(idx.get(id, q), model.get(&(q, id)).copied());
                // Delivered, paged again, or paged no more; now and then moved.
                let change = rnd(8);
                let moved = (rnd(10) as u32, rnd(1 << 20) as u32);
                let f = |l: &mut Loc| match change {
                    0..=3 => l.set_delivered(),
                    4 | 5 => l.set(FLAG_PAGED),
                    6 => l.clear(FLAG_PAGED),
                    _ => (l.seg, l.off) = moved,
                };
                let updated = idx.update(id, q, f);
                assert_eq!(updated, model.contains_key(&(q, id)));
                if let Some(b) = model.get_mut(&(q, id)) {
                    f(b);
                }
            } else if op < 95 {
                let max = 1 + rnd(40) as usize;
                let max_bytes = rnd(4000);
                let mut got = Vec::new();
                let n = idx.take_paged(q, max, max_bytes, |id, l| got.push((id, l)));
                assert_eq!(n, got.len());
                assert_eq!(
                    got,
                    model_take(&mut model, q, max, max_bytes),
                    "step {step}"
                );
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
                assert_eq!(got, want);
            } else if op < 97 {
                idx.shrink_to_fit();
            }
            // take_paged's hint: no paged entry below it.
            if let Some(qi) = idx.queues.get(q as usize) {
                if let Some((id, _)) = qi.iter().find(|(_, l)| l.has(FLAG_PAGED)) {
                    assert!(id >= qi.paged_from, "step {step}");
                }
            }
            assert_eq!(idx.len(), model.len());
            assert_eq!(
                idx.queue_len(q),
                model.range((q, 0)..(q + 1, 0)).count(),
                "step {step}"
            );
            if step % 20_000 == 0 {
                let got: Vec<_> = idx.iter().map(|(id, q, l)| ((q, id), l)).collect();
                let want: Vec<_> = model.iter().map(|(k, l)| (*k, *l)).collect();
                assert_eq!(got, want, "step {step}");
            }
        }
        for _ in 0..2 {
            // Both iterators are in (queue, id) order, before and after shrink_to_fit.
            let got: Vec<_> = idx.iter().map(|(id, q, l)| ((q, id), l)).collect();
            let want: Vec<_> = model.iter().map(|(k, l)| (*k, *l)).collect();
            assert_eq!(got, want);
            for q in 0..3 {
                let got: Vec<_> = idx.iter_queue(q).collect();
                let want: Vec<_> = model
                    .range((q, 0)..(q + 1, 0))
                    .map(|(k, l)| (k.1, *l))
                    .collect();
                assert_eq!(got, want);
            }
            idx.shrink_to_fit();
        }
        // Everything still paged comes out in id order.
        for q in 0..3 {
            let mut got = Vec::new();
            idx.take_paged(q, usize::MAX, u64::MAX, |id, l| got.push((id, l)));
            assert_eq!(got, model_take(&mut model, q, usize::MAX, u64::MAX));
        }
    }

    #[test]
    fn matches_a_map() {
        run(false, 0x2545_f491_4f6c_dd1d);
        run(false, 17);
    }

    #[test]
    fn matches_a_map_across_id_windows() {
        run(true, 0x2545_f491_4f6c_dd1d);
    }

    #[test]
    fn flag_bits_beyond_the_bitmaps_are_not_kept() {
        let mut idx = Index::default();
        for id in 1..100 {
            idx.insert(id, 0, Loc::new(0, id as u32 * 10, 10, 0xff));
        }
        for id in 1..100 {
            assert_eq!(idx.get(id, 0).unwrap().flags(), KNOWN_FLAGS);
        }
    }

    /// One deep queue as the benchmark builds it: ids stepping by 1..3, records
    /// back to back (about 1,100 bytes each, a new segment every 32 MiB), everything
    /// paged but the first 4,096.
    fn deep_queue(n: u64, rnd: &mut impl FnMut(u64) -> u64) -> (Index, Vec<u64>) {
        let mut idx = Index::default();
        let mut ids = Vec::with_capacity(n as usize);
        let (mut id, mut seg, mut off) = (0u64, 0u32, 0u32);
        for i in 0..n {
            id += 1 + rnd(3);
            let len = 1090 + rnd(20) as u32;
            if off + len > 32 << 20 {
                seg += 1;
                off = 0;
            }
            let flags = if i < 4096 { 0 } else { FLAG_PAGED };
            assert_eq!(idx.insert(id, 0, Loc::new(seg, off, len, flags)), None);
            off += len;
            ids.push(id);
        }
        (idx, ids)
    }

    #[test]
    fn deep_queue_costs_a_few_bytes_an_entry() {
        const N: u64 = 2_000_000;
        let mut rnd = rng(3);
        let (mut idx, ids) = deep_queue(N, &mut rnd);
        let per = |idx: &Index| idx.heap_bytes() as f64 / idx.len() as f64;
        let full = per(&idx);
        assert!(full <= 6.0, "{full:.2} bytes an entry");
        // Drain half as the core does: take the paged ones from the front, ack FIFO.
        let mut taken = 0usize;
        let mut head = 0usize;
        let mut expect = 4096;
        while taken < 1_000_000 {
            let want = (1_000_000 - taken).min(4096);
            taken += idx.take_paged(0, want, u64::MAX, |id, l| {
                assert_eq!(id, ids[expect]);
                assert!(!l.has(FLAG_PAGED));
                expect += 1;
            });
            while head < taken {
                assert!(idx.remove(ids[head], 0).is_some());
                head += 1;
            }
        }
        assert_eq!(idx.len(), 1_000_000);
        let half = per(&idx);
        assert!(half <= 6.0, "{half:.2} bytes an entry after draining half");
        // Nothing stays behind: the rest comes back in order, then the queue is empty.
        for &id in &ids[head..] {
            assert!(idx.remove(id, 0).is_some());
        }
        assert_eq!(idx.len(), 0);
        println!("deep queue: {full:.2} bytes/entry full, {half:.2} after draining half");
    }

    #[test]
    fn many_small_queues_cost_little() {
        const QUEUES: u64 = 10_000;
        let mut rnd = rng(5);
        let mut idx = Index::default();
        let (mut seg, mut off) = (0u32, 0u32);
        for id in 0..QUEUES * 100 {
            let len = 1090 + rnd(20) as u32;
            if off + len > 32 << 20 {
                seg += 1;
                off = 0;
            }
            let q = (id % QUEUES) as u32;
            idx.insert(id + 1, q, Loc::new(seg, off, len, FLAG_PAGED));
            off += len;
        }
        assert_eq!(idx.len() as u64, QUEUES * 100);
        let per = idx.heap_bytes() as f64 / idx.len() as f64;
        assert!(per <= 24.0, "{per:.2} bytes an entry");
        idx.shrink_to_fit();
        let shrunk = idx.heap_bytes() as f64 / idx.len() as f64;
        assert!(shrunk <= per);
        println!("10,000 queues of 100: {per:.2} bytes/entry, {shrunk:.2} after shrink_to_fit");
    }

    #[test]
    fn random_removals_do_not_leave_sparse_blocks() {
        let mut rnd = rng(11);
        let (mut idx, ids) = deep_queue(200_000, &mut rnd);
        let before = idx.heap_bytes();
        // Remove 15 of every 16, scattered: what is left is re-packed, not kept in
        // blocks of mostly dead entries.
        for (i, &id) in ids.iter().enumerate() {
            if i % 16 != 0 {
                assert!(idx.remove(id, 0).is_some());
            }
        }
        assert_eq!(idx.len(), 200_000 / 16);
        let after = idx.heap_bytes();
        // Its steps no longer fit in one byte, so about 8 bytes an entry.
        assert!(after < 12 * idx.len(), "{after} of {before} bytes left");
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(idx.get(id, 0).is_some(), i % 16 == 0);
        }
    }

    #[test]
    fn take_paged_finds_entries_paged_again_behind_its_hint() {
        let mut rnd = rng(13);
        let (mut idx, ids) = deep_queue(10_000, &mut rnd);
        let mut all = Vec::new();
        idx.take_paged(0, usize::MAX, u64::MAX, |id, _| all.push(id));
        assert_eq!(all, ids[4096..]);
        assert_eq!(idx.take_paged(0, 10, u64::MAX, |_, _| {}), 0);
        // Page some again (the core dropped them from memory), resident head included.
        for &i in &[9000usize, 10, 5000] {
            assert!(idx.update(ids[i], 0, |l| l.set(FLAG_PAGED)));
        }
        let mut got = Vec::new();
        idx.take_paged(0, 2, u64::MAX, |id, _| got.push(id));
        assert_eq!(got, [ids[10], ids[5000]]);
        // A paged insert below the hint (a compaction copy) is found as well.
        let l = idx.get(ids[20], 0).unwrap();
        let mut moved = Loc::new(l.seg + 100, 0, l.len(), l.flags());
        moved.set(FLAG_PAGED);
        assert_eq!(idx.insert(ids[20], 0, moved), Some(l));
        let mut got = Vec::new();
        // max_bytes: stops once reached, but always takes one.
        idx.take_paged(0, 10, 1, |id, l| got.push((id, l)));
        moved.clear(FLAG_PAGED);
        assert_eq!(got, [(ids[20], moved)]);
        let mut got = Vec::new();
        idx.take_paged(0, 10, 1, |id, _| got.push(id));
        assert_eq!(got, [ids[9000]]);
        assert_eq!(idx.take_paged(0, 10, u64::MAX, |_, _| {}), 0);
    }

    #[test]
    fn moved_entries_keep_their_neighbours() {
        // Compaction copies of a block's first, middle and last entries (the last one
        // in the open block, appended after), and of a dead one re-published.
        let mut idx = Index::default();
        let mut want = BTreeMap::new();
        let l = |i: u64| Loc::new(0, i as u32 * 100, 100, 0);
        for i in 1..=(BLOCK as u64 + 40) {
            idx.insert(i, 0, l(i));
            want.insert(i, l(i));
        }
        let moved = |i: u64| Loc::new(9, i as u32, 7, FLAG_PAGED);
        assert_eq!(idx.remove(5, 0), Some(l(5)));
        for i in [1, 5, 64, BLOCK as u64, BLOCK as u64 + 1, BLOCK as u64 + 24] {
            let old = want.insert(i, moved(i));
            assert_eq!(idx.insert(i, 0, moved(i)), old.filter(|_| i != 5));
        }
        for i in (BLOCK as u64 + 41)..(BLOCK as u64 + 60) {
            idx.insert(i, 0, l(i));
            want.insert(i, l(i));
        }
        let got: Vec<_> = idx.iter_queue(0).collect();
        assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    }

    #[test]
    #[ignore = "timings; run in release with --ignored --nocapture"]
    fn bench_ops() {
        use std::time::Instant;
        const N: u64 = 1_000_000;
        let mut rnd = rng(7);
        let t = Instant::now();
        let (mut idx, ids) = deep_queue(N, &mut rnd);
        let per = |t: Instant, n: u64| t.elapsed().as_nanos() as f64 / n as f64;
        println!("insert at tail: {:.0} ns/op", per(t, N));
        let t = Instant::now();
        let mut found = 0;
        for _ in 0..N {
            let id = ids[rnd(N) as usize];
            found += idx.get(id, 0).is_some() as u64;
        }
        assert_eq!(found, N);
        println!("get (random): {:.0} ns/op", per(t, N));
        let t = Instant::now();
        for &id in &ids[..4096] {
            assert!(idx.update(id, 0, |l| l.set_delivered()));
        }
        println!("update (head): {:.0} ns/op", per(t, 4096));
        let t = Instant::now();
        let mut taken = 0u64;
        while taken < N - 4096 {
            taken += idx.take_paged(0, 4096, 4 << 20, |_, _| {}) as u64;
        }
        println!("take_paged (4096 a call): {:.0} ns/entry", per(t, taken));
        let t = Instant::now();
        for &id in &ids {
            assert!(idx.remove(id, 0).is_some());
        }
        println!("remove at head: {:.0} ns/op", per(t, N));
        assert_eq!(idx.len(), 0);

        // The rarer paths, on a fresh queue.
        let (mut idx, ids) = deep_queue(N, &mut rnd);
        const K: u64 = 100_000;
        let t = Instant::now();
        for k in 0..K {
            let id = ids[rnd(N) as usize];
            let l = idx.get(id, 0).unwrap();
            idx.insert(
                id,
                0,
                Loc::new(l.seg + 1000, k as u32 * 2000, l.len(), l.flags()),
            );
        }
        println!(
            "insert over an existing key, moved (compaction copy): {:.0} ns/op",
            per(t, K)
        );
        let t = Instant::now();
        let mut n = 0u64;
        for _ in 0..K {
            n += idx.remove(ids[rnd(N) as usize], 0).is_some() as u64;
        }
        println!("remove (random): {:.0} ns/op ({n} found)", per(t, K));
        let t = Instant::now();
        let mut id = ids[ids.len() - 1];
        for k in 0..K {
            id += 1 + rnd(3);
            // Racing publishers: each pair arrives swapped.
            let id = if k % 2 == 0 { id + 1 } else { id - 1 };
            idx.insert(id, 0, Loc::new(0, k as u32 * 1100, 1100, FLAG_PAGED));
        }
        println!("insert at tail, pairs swapped: {:.0} ns/op", per(t, K));
    }
}
