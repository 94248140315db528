//! The flusher thread: the only writer of segment files and the definitions file.
//!
//! Loop: take everything pending (one swap under the mutex), rewrite definitions if
//! they changed, write the records (one `write` per segment touched), `fdatasync` once
//! if the policy asks, publish the new written / synced sequence numbers, wake the
//! waiters, then reclaim dead segments and take one bounded step of a compaction.
//!
//! Compaction is split so that it never holds a batch back for long: the compactor
//! thread reads the victim segment and verifies and parses its records (the bulk of the
//! work, and all of its reads); the flusher then copies forward the records that are
//! still live, a bounded chunk per loop turn, between batches. Checking liveness and
//! appending the copy both happen on the flusher, in log order, so a copy can never
//! overtake an ack and resurrect a message; the victim goes only once every live record
//! has been copied and those copies are fsynced.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;

use super::commit::GroupCommit;
use super::record::{self, Rec};
use super::Waiting;
use parking_lot::Mutex;

use super::state::State;
use super::{defs, FsyncPolicy, Shared, CLEAN};

/// Under `always`, records nobody waits for (acks, delivered) are fsynced by the next
/// waited-for record or, if none comes, this long after the previous fsync, so an idle
/// broker's acks do not stay in the page cache indefinitely.
const LAZY_SYNC: std::time::Duration = std::time::Duration::from_millis(10);

/// Size of a fresh segment (just its MaxId record).
const EMPTY_SEGMENT: u64 = (record::HEADER + 9) as u64;

/// A compaction step copies at most this many bytes of live records ...
const COMPACT_STEP_BYTES: usize = 256 << 10;
/// ... and looks up at most this many records (most may be dead).
const COMPACT_STEP_RECORDS: usize = 16 * 1024;

/// A purge acks at most this many paged messages per loop turn.
const PURGE_STEP: usize = 16 * 1024;

/// The publish records of a segment chosen for compaction, read and verified by the
/// compactor thread; the flusher copies the live ones forward step by step.
pub(crate) struct Scanned {
    victim: u32,
    data: Bytes,
    /// `(queue, msg id, record offset, payload start, payload end)`.
    recs: Vec<(u64, u64, u32, u32, u32)>,
    next: usize,
    copied: u64,
    started: Instant,
}

/// What the compactor thread hands back for one victim.
pub(crate) type ScanResult = io::Result<Option<Scanned>>;

/// Reads and parses one victim segment (a sealed, fsynced file nobody writes to).
fn scan_segment(seg_dir: &Path, victim: u32) -> ScanResult {
    let started = Instant::now();
    let data = match fs::read(segment_path(seg_dir, victim)) {
        Ok(d) => d,
        // Reclaimed meanwhile (everything in it was acked): nothing to do.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let base = data.as_ptr() as usize;
    let mut recs = Vec::new();
    record::scan(&data, |off, _, rec| {
        let mut push = |queue, id, payload: &[u8]| {
            let start = payload.as_ptr() as usize - base;
            recs.push((
                queue,
                id,
                off as u32,
                start as u32,
                (start + payload.len()) as u32,
            ));
        };
        match rec {
            Rec::Publish {
                queue, id, payload, ..
            } => push(queue, id, payload),
            // One entry per queue, next to each other: the copy step regroups them.
            Rec::PublishShared {
                id,
                payload,
                queues,
            } => {
                for (queue, _) in record::shared_queues(queues) {
                    push(queue, id, payload);
                }
            }
            _ => {}
        }
    });
    Ok(Some(Scanned {
        victim,
        data: Bytes::from(data),
        recs,
        next: 0,
        copied: 0,
        started,
    }))
}

/// The compactor thread: scans the victims the flusher names, hands each result back
/// through the pending batch (which wakes the flusher) until the flusher goes away.
fn compactor(seg_dir: PathBuf, rx: mpsc::Receiver<u32>, shared: Arc<Shared>) {
    while let Ok(victim) = rx.recv() {
        let res = scan_segment(&seg_dir, victim);
        shared.pending.lock().compacted = Some(res);
        shared.work.notify_one();
    }
}

pub(crate) fn segment_path(seg_dir: &Path, id: u32) -> PathBuf {
    seg_dir.join(format!("{id:09}.seg"))
}

pub(crate) struct Writer {
    dir: PathBuf,
    seg_dir: PathBuf,
    policy: FsyncPolicy,
    segment_size: u64,
    active: File,
    active_id: u32,
    /// Shared with the reader of paged messages (`pager.rs`), which takes entries out.
    state: Arc<Mutex<State>>,
    defs: BTreeMap<String, Bytes>,
    shared: Arc<Shared>,
    /// Data written since the last fdatasync of the active segment.
    dirty: bool,
    last_sync: Instant,
    /// How long the last fdatasync took.
    last_fsync_time: std::time::Duration,
    /// Records (publishes, definitions) the last batch committed, and the pending
    /// sequence number it ended at: group commit expects as many writers again.
    group_commit: GroupCommit,
    taken_seq: u64,
    scratch: Vec<u8>,
    /// The allocation of the last batch's list of elided publishes, handed back to
    /// `Pending` with the next batch.
    spare_cancelled: Vec<usize>,
    /// Victims named to the compactor thread (`None` once the flusher exits).
    to_compactor: Option<mpsc::Sender<u32>>,
    compactor: Option<JoinHandle<()>>,
    /// A victim is being scanned by the compactor thread.
    scan_in_flight: bool,
    /// The compaction being copied forward, step by step.
    compacting: Option<Scanned>,
    /// Victims whose copies were written since the last fdatasync: they must not be
    /// deleted before the copies are durable.
    unsynced_victims: BTreeSet<u32>,
    /// Paged messages of purged queues, taken out of the index at the purge, whose acks
    /// are written a step per turn.
    purging: VecDeque<(u64, Vec<u64>)>,
}

impl Writer {
    pub(crate) fn new(
        dir: PathBuf,
        seg_dir: PathBuf,
        policy: FsyncPolicy,
        segment_size: u64,
        state: Arc<Mutex<State>>,
        defs: BTreeMap<String, Bytes>,
        shared: Arc<Shared>,
    ) -> io::Result<Writer> {
        let (next, max_id) = {
            let st = state.lock();
            (st.segs.keys().next_back().map_or(1, |id| id + 1), st.max_id)
        };
        let (active, size) = Self::create_segment(&seg_dir, next, max_id)?;
        let (tx, rx) = mpsc::channel();
        let compactor = {
            let (dir, shared) = (seg_dir.clone(), shared.clone());
            std::thread::Builder::new()
                .name("qgate-compact".into())
                .spawn(move || compactor(dir, rx, shared))?
        };
        let w = Writer {
            dir,
            seg_dir,
            policy,
            segment_size,
            active,
            active_id: next,
            state,
            defs,
            shared,
            dirty: false,
            last_sync: Instant::now(),
            last_fsync_time: std::time::Duration::ZERO,
            group_commit: GroupCommit::default(),
            taken_seq: 0,
            scratch: Vec::new(),
            spare_cancelled: Vec::new(),
            to_compactor: Some(tx),
            compactor: Some(compactor),
            scan_in_flight: false,
            compacting: None,
            unsynced_victims: BTreeSet::new(),
            purging: VecDeque::new(),
        };
        w.state.lock().segs.entry(next).or_default().size = size;
        // The new file and the recovery truncations must be durable before we run.
        defs::sync_dir(&w.seg_dir)?;
        w.publish_stats();
        Ok(w)
    }

    fn create_segment(seg_dir: &Path, id: u32, max_id: u64) -> io::Result<(File, u64)> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(segment_path(seg_dir, id))?;
        let mut b = Vec::with_capacity(EMPTY_SEGMENT as usize);
        record::encode_one(&mut b, record::T_MAX_ID, max_id);
        f.write_all(&b)?;
        Ok((f, b.len() as u64))
    }

    fn syncs(&self) -> bool {
        self.policy != FsyncPolicy::Never
    }

    fn fdatasync(&mut self) -> io::Result<()> {
        let t = Instant::now();
        self.active.sync_data()?;
        self.last_fsync_time = t.elapsed();
        self.shared.record_fsync(self.last_fsync_time);
        self.dirty = false;
        self.last_sync = Instant::now();
        self.unsynced_victims.clear();
        Ok(())
    }

    fn cur_size(&self) -> u64 {
        self.state
            .lock()
            .segs
            .get(&self.active_id)
            .map_or(0, |s| s.size)
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.active.write_all(data)?;
        self.state
            .lock()
            .segs
            .entry(self.active_id)
            .or_default()
            .size += data.len() as u64;
        self.dirty = true;
        let c = &self.shared.counters;
        c.bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Seals the active segment (always fsynced, whatever the policy: once per
    /// segment is cheap, and compaction relies on sealed segments being durable) and
    /// starts the next one.
    fn roll(&mut self) -> io::Result<()> {
        if self.dirty {
            self.fdatasync()?;
        }
        let id = self.active_id + 1;
        let max_id = self.state.lock().max_id;
        let (f, size) = Self::create_segment(&self.seg_dir, id, max_id)?;
        defs::sync_dir(&self.seg_dir)?;
        self.active = f;
        self.active_id = id;
        self.state.lock().segs.entry(id).or_default().size = size;
        self.dirty = true;
        Ok(())
    }

    /// Writes a buffer of well-formed records, rolling segments as needed, and applies
    /// each record to the index.
    fn write_records(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut pos = 0;
        let mut chunk = 0;
        while pos < buf.len() {
            let (len, rec) = record::decode_trusted(buf, pos);
            let cur = self.cur_size() + (pos - chunk) as u64;
            if cur + len as u64 > self.segment_size && cur > EMPTY_SEGMENT {
                self.append(&buf[chunk..pos])?;
                chunk = pos;
                self.roll()?;
            }
            let off = self.cur_size() + (pos - chunk) as u64;
            self.state
                .lock()
                .apply(self.active_id, off as usize, len, rec);
            pos += len;
        }
        self.append(&buf[chunk..])
    }

    fn publish_stats(&self) {
        let c = &self.shared.counters;
        let st = self.state.lock();
        c.bytes_on_disk.store(st.disk_bytes(), Ordering::Relaxed);
        c.segments.store(st.segs.len() as u64, Ordering::Relaxed);
        c.live_messages
            .store(st.index.len() as u64, Ordering::Relaxed);
        c.live_bytes.store(st.live_bytes(), Ordering::Relaxed);
    }

    /// Deletes every segment that can no longer matter, in waves: a segment that refers
    /// to one deleted in this wave waits until that unlink has been made durable.
    fn reclaim(&mut self) -> io::Result<()> {
        // A sizeable active segment holding nothing live is sealed early so that it can
        // go too: after a queue has been drained the directory shrinks to almost
        // nothing instead of keeping up to a whole dead segment.
        let seal = self
            .state
            .lock()
            .segs
            .get(&self.active_id)
            .is_some_and(|a| a.live == 0 && a.size >= (self.segment_size / 8).max(64 << 10));
        if seal {
            self.roll()?;
        }
        loop {
            let mut gone: Vec<u32> = Vec::new();
            let mut st = self.state.lock();
            let ids: Vec<u32> = st.segs.keys().copied().collect();
            for id in ids {
                if id == self.active_id {
                    continue;
                }
                let s = &st.segs[&id];
                let free = s.live == 0
                    && !self.unsynced_victims.contains(&id)
                    && s.refs
                        .iter()
                        .all(|r| !st.segs.contains_key(r) && !gone.contains(r));
                if free {
                    match fs::remove_file(segment_path(&self.seg_dir, id)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    st.segs.remove(&id);
                    gone.push(id);
                }
            }
            drop(st);
            if gone.is_empty() {
                return Ok(());
            }
            tracing::debug!(segments = ?gone, "store: deleted dead segments");
            self.shared
                .counters
                .segments_deleted
                .fetch_add(gone.len() as u64, Ordering::Relaxed);
            // Always (even under `never`): a later wave may delete a segment whose
            // acks only mattered while this one existed.
            defs::sync_dir(&self.seg_dir)?;
        }
    }

    /// When more than half of the disk, and at least a segment's worth, is garbage,
    /// the oldest segment that is mostly dead (or that keeps dead segments alive) and
    /// refers to nothing left on disk (so that it can be deleted right after its live
    /// records are copied).
    fn pick_victim(&self) -> Option<u32> {
        let st = self.state.lock();
        let disk = st.disk_bytes();
        let live = st.live_bytes();
        let garbage = disk - live;
        if garbage < self.segment_size || garbage * 2 < disk {
            return None;
        }
        // A segment is wanted gone if it is dead or mostly dead; it then also wants
        // gone every older segment it refers to (they keep it alive). Newest first so
        // that this propagates down in one pass.
        let mut pinned = BTreeSet::new();
        for (id, s) in st.segs.iter().rev() {
            if *id == self.active_id {
                continue;
            }
            if s.live == 0 || s.live_bytes * 2 < s.size || pinned.contains(id) {
                pinned.extend(s.refs.iter().copied());
            }
        }
        let segs = &st.segs;
        segs.iter()
            .find(|(id, s)| {
                **id != self.active_id
                    && s.live > 0
                    && (s.live_bytes * 2 < s.size || pinned.contains(*id))
                    && s.refs.iter().all(|r| !segs.contains_key(r))
            })
            .map(|(&id, _)| id)
    }

    /// One bounded step of compaction: names a victim to the compactor thread when
    /// none is in progress, or copies forward the next chunk of the scanned one.
    /// Returns true when a compaction finished (its victim can now be reclaimed).
    fn compact_step(&mut self) -> io::Result<bool> {
        let Some(mut sc) = self.compacting.take() else {
            if !self.scan_in_flight {
                if let (Some(victim), Some(tx)) = (self.pick_victim(), &self.to_compactor) {
                    self.scan_in_flight = tx.send(victim).is_ok();
                    self.shared
                        .counters
                        .compacting
                        .store(self.scan_in_flight, Ordering::Relaxed);
                }
            }
            return Ok(false);
        };
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let end = (sc.next + COMPACT_STEP_RECORDS).min(sc.recs.len());
        let mut live = Vec::new();
        while sc.next < end && out.len() < COMPACT_STEP_BYTES {
            // The entries of one record (several for a shared body) are copied together,
            // as one record for the queues still holding it.
            let (_, id, off, start, stop) = sc.recs[sc.next];
            live.clear();
            while sc.next < sc.recs.len() && sc.recs[sc.next].2 == off {
                let queue = sc.recs[sc.next].0;
                sc.next += 1;
                if let Some(loc) = self.state.lock().get(queue, id) {
                    if loc.seg == sc.victim && loc.off == off {
                        live.push((queue, loc.flags()));
                    }
                }
            }
            let payload = &sc.data[start as usize..stop as usize];
            match live[..] {
                [] => continue,
                [(queue, flags)] => record::encode_publish(&mut out, queue, id, flags, payload),
                _ => record::encode_publish_shared(&mut out, live.iter().copied(), id, payload),
            }
            sc.copied += live.len() as u64;
        }
        if !out.is_empty() {
            self.write_records(&out)?;
            self.unsynced_victims.insert(sc.victim);
            // Under `always` the next batch's fsync covers the copies; otherwise sync
            // each step so that the final one is short.
            if self.policy != FsyncPolicy::Always {
                self.fdatasync()?;
            }
        }
        out.clear();
        if out.capacity() > (4 << 20) {
            out.shrink_to(4 << 20);
        }
        self.scratch = out;
        if sc.next < sc.recs.len() {
            self.compacting = Some(sc);
            return Ok(false);
        }
        // The copies must be durable before the original goes, whatever the policy.
        if self.dirty && self.unsynced_victims.contains(&sc.victim) {
            self.fdatasync()?;
        }
        let c = &self.shared.counters;
        c.compactions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("store_compactions_total").increment(1);
        c.compacting.store(false, Ordering::Relaxed);
        tracing::debug!(
            segment = sc.victim,
            copied = sc.copied,
            ms = sc.started.elapsed().as_millis() as u64,
            "store: compacted segment"
        );
        Ok(true)
    }

    /// Takes the records made pointless before they were written out of the batch
    /// (`elided` of them publishes).
    fn elide(
        &mut self,
        batch: &mut Vec<u8>,
        mut at: Vec<usize>,
        elided: u64,
        purges: &mut [(u64, usize)],
    ) {
        at.sort_unstable();
        let mut positions: Vec<usize> = purges.iter().map(|&(_, pos)| pos).collect();
        record::remove_records(batch, &at, &mut positions);
        for (p, pos) in purges.iter_mut().zip(positions) {
            p.1 = pos;
        }
        self.shared
            .counters
            .elided
            .fetch_add(elided, Ordering::Relaxed);
        metrics::counter!("store_publishes_elided_total").increment(elided);
        // Keep the vector's allocation for the next batch.
        at.clear();
        self.spare_cancelled = at;
    }

    /// Writes a batch, taking out the paged messages of each queue purged in it at the
    /// point the purge was asked (what was published after it stays).
    fn write_batch(&mut self, batch: &[u8], purges: Vec<(u64, usize)>) -> io::Result<()> {
        let mut done = 0;
        for (queue, at) in purges {
            self.write_records(&batch[done..at])?;
            done = at;
            let mut ids = Vec::new();
            self.state
                .lock()
                .take_paged(queue, usize::MAX, u64::MAX, |id, _| ids.push(id));
            if !ids.is_empty() {
                self.purging.push_back((queue, ids));
            }
        }
        self.write_records(&batch[done..])
    }

    /// One bounded step of dropping purged paged messages: acks for the next of them
    /// (out of the index already, so no read returns them meanwhile).
    fn purge_step(&mut self) -> io::Result<()> {
        let Some((queue, ids)) = self.purging.front_mut() else {
            return Ok(());
        };
        let queue = *queue;
        let step: Vec<u64> = ids.drain(..ids.len().min(PURGE_STEP)).collect();
        if ids.is_empty() {
            self.purging.pop_front();
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        for id in step {
            record::encode_pair(&mut out, record::T_ACK, queue, id);
        }
        let res = self.write_records(&out);
        self.scratch = out;
        res
    }

    /// Takes the compactor thread's answer, if one came.
    fn take_scan(&mut self, res: Option<ScanResult>) -> io::Result<()> {
        let Some(res) = res else { return Ok(()) };
        self.scan_in_flight = false;
        match res? {
            Some(sc) => self.compacting = Some(sc),
            None => self
                .shared
                .counters
                .compacting
                .store(false, Ordering::Relaxed),
        }
        Ok(())
    }

    /// Stops the compactor thread (it finishes the scan it is in, if any).
    fn stop_compactor(&mut self) {
        self.to_compactor.take();
        if let Some(h) = self.compactor.take() {
            let _ = h.join();
        }
        self.shared
            .counters
            .compacting
            .store(false, Ordering::Relaxed);
    }

    fn write_clean_marker(&self) -> io::Result<()> {
        let path = self.dir.join(CLEAN);
        let f = File::create(&path)?;
        f.sync_all()?;
        defs::sync_dir(&self.dir)
    }

    pub(crate) fn run(mut self) {
        let res = self.run_inner();
        self.stop_compactor();
        if let Err(e) = &res {
            tracing::error!(error = %e, "store: I/O error, store stopped (fail-stop)");
            *self.shared.error.lock() = Some(e.to_string());
        }
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.wake_all();
    }

    fn run_inner(&mut self) -> io::Result<()> {
        self.reclaim()?;
        self.publish_stats();
        let shared = self.shared.clone();
        let mut batch: Vec<u8> = Vec::new();
        loop {
            batch.clear();
            let (
                last_seq,
                need_sync,
                defs_ops,
                closing,
                clean,
                scan,
                mut purges,
                cancelled,
                elided,
            ) = {
                let mut p = shared.pending.lock();
                loop {
                    if !p.is_empty() || p.need_sync || p.closing {
                        break;
                    }
                    // A compaction step to take, or the compactor's answer to collect.
                    if self.compacting.is_some()
                        || p.compacted.is_some()
                        || !self.purging.is_empty()
                    {
                        break;
                    }
                    let deadline = match self.policy {
                        FsyncPolicy::Interval(iv) if self.dirty => Some(self.last_sync + iv),
                        FsyncPolicy::Always if self.dirty => Some(self.last_sync + LAZY_SYNC),
                        _ => None,
                    };
                    p.waiting = Waiting::Idle;
                    let timed_out = match deadline {
                        Some(d) => shared.work.wait_until(&mut p, d).timed_out(),
                        None => {
                            shared.work.wait(&mut p);
                            false
                        }
                    };
                    p.waiting = Waiting::Busy;
                    if timed_out {
                        break;
                    }
                }
                // Let records nobody is waiting for gather into one write.
                if !p.urgent(self.policy) && !p.buf.is_empty() {
                    let until = std::time::Instant::now() + super::COALESCE;
                    while !p.urgent(self.policy) {
                        p.waiting = Waiting::Urgent;
                        let timed_out = shared.work.wait_until(&mut p, until).timed_out();
                        p.waiting = Waiting::Busy;
                        if timed_out {
                            break;
                        }
                    }
                }
                // Group commit with concurrent writers (see commit.rs).
                let grouped = self.policy == FsyncPolicy::Always && p.need_sync;
                let plan = grouped
                    .then(|| self.group_commit.plan(self.last_fsync_time))
                    .flatten();
                let mut reached = true;
                if let Some((records, wait)) = plan {
                    let until = Instant::now() + wait;
                    let target = self.taken_seq + records;
                    while p.seq < target && !p.closing {
                        p.waiting = Waiting::Seq(target);
                        let timed_out = shared.work.wait_until(&mut p, until).timed_out();
                        p.waiting = Waiting::Busy;
                        if timed_out {
                            break;
                        }
                    }
                    reached = p.seq >= target;
                }
                if grouped {
                    self.group_commit
                        .taken(p.seq.saturating_sub(self.taken_seq), reached);
                }
                self.taken_seq = p.seq;
                std::mem::swap(&mut p.buf, &mut batch);
                // Past this point an ack or delivered mark of these publishes is a record.
                p.unwritten.clear();
                p.marks.clear();
                (
                    p.seq,
                    std::mem::take(&mut p.need_sync),
                    std::mem::take(&mut p.defs),
                    p.closing,
                    p.clean,
                    p.compacted.take(),
                    std::mem::take(&mut p.purges),
                    std::mem::replace(&mut p.cancelled, std::mem::take(&mut self.spare_cancelled)),
                    std::mem::take(&mut p.elided),
                )
            };
            if !cancelled.is_empty() {
                self.elide(&mut batch, cancelled, elided, &mut purges);
            }
            self.take_scan(scan)?;
            if !defs_ops.is_empty() {
                for (k, v) in defs_ops {
                    match v {
                        Some(v) => self.defs.insert(k, v),
                        None => self.defs.remove(&k),
                    };
                }
                defs::save(&self.dir, &self.defs, self.syncs())?;
            }
            if !batch.is_empty() || !purges.is_empty() {
                self.write_batch(&batch, purges)?;
                shared.counters.batches.fetch_add(1, Ordering::Relaxed);
            }
            self.purge_step()?;
            shared.written_seq.store(last_seq, Ordering::Release);
            let sync_now = closing
                || match self.policy {
                    FsyncPolicy::Always => need_sync || self.last_sync.elapsed() >= LAZY_SYNC,
                    FsyncPolicy::Interval(iv) => self.last_sync.elapsed() >= iv,
                    FsyncPolicy::Never => false,
                };
            if sync_now && self.dirty {
                self.fdatasync()?;
            }
            if !self.dirty {
                shared.synced_seq.store(last_seq, Ordering::Release);
            }
            shared.wake_all();
            // Keep the batch buffer's allocation unless a burst made it huge.
            if batch.capacity() > (16 << 20) {
                batch = Vec::new();
            }

            self.reclaim()?;
            if self.compact_step()? {
                self.reclaim()?;
            }
            self.publish_stats();

            if closing {
                if self.dirty {
                    self.fdatasync()?;
                }
                if clean {
                    self.write_clean_marker()?;
                }
                tracing::info!(clean, "store: closed");
                return Ok(());
            }
        }
    }
}
