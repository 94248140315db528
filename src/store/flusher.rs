//! The flusher thread: the only writer of segment files and the definitions file.
//!
//! Loop: take everything pending (one swap under the mutex), rewrite definitions if
//! they changed, write the records (one `write` per segment touched), `fdatasync` once
//! if the policy asks, publish the new written / synced sequence numbers, wake the
//! waiters, then reclaim dead segments and maybe compact one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::record::{self, Rec};
use super::state::State;
use super::{defs, FsyncPolicy, Shared, CLEAN};

/// Under `always`, records nobody waits for (acks, delivered) are fsynced by the next
/// waited-for record or, if none comes, this long after the previous fsync, so an idle
/// broker's acks do not stay in the page cache indefinitely.
const LAZY_SYNC: std::time::Duration = std::time::Duration::from_millis(10);

/// Size of a fresh segment (just its MaxId record).
const EMPTY_SEGMENT: u64 = (record::HEADER + 9) as u64;

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
    state: State,
    defs: BTreeMap<String, Bytes>,
    shared: Arc<Shared>,
    /// Data written since the last fdatasync of the active segment.
    dirty: bool,
    last_sync: Instant,
    /// How long the last fdatasync took.
    last_fsync_time: std::time::Duration,
    /// Records (publishes, definitions) the last batch committed, and the pending
    /// sequence number it ended at: group commit expects as many writers again.
    last_batch_records: u64,
    taken_seq: u64,
    scratch: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(
        dir: PathBuf,
        seg_dir: PathBuf,
        policy: FsyncPolicy,
        segment_size: u64,
        state: State,
        defs: BTreeMap<String, Bytes>,
        shared: Arc<Shared>,
    ) -> io::Result<Writer> {
        let next = state.segs.keys().next_back().map_or(1, |id| id + 1);
        let (active, size) = Self::create_segment(&seg_dir, next, state.max_id)?;
        let mut w = Writer {
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
            last_batch_records: 0,
            taken_seq: 0,
            scratch: Vec::new(),
        };
        w.state.segs.entry(next).or_default().size = size;
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
        Ok(())
    }

    fn cur_size(&self) -> u64 {
        self.state.segs.get(&self.active_id).map_or(0, |s| s.size)
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.active.write_all(data)?;
        self.state.segs.entry(self.active_id).or_default().size += data.len() as u64;
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
        let (f, size) = Self::create_segment(&self.seg_dir, id, self.state.max_id)?;
        defs::sync_dir(&self.seg_dir)?;
        self.active = f;
        self.active_id = id;
        self.state.segs.entry(id).or_default().size = size;
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
            self.state.apply(self.active_id, off as usize, len, rec);
            pos += len;
        }
        self.append(&buf[chunk..])
    }

    fn publish_stats(&self) {
        let c = &self.shared.counters;
        c.bytes_on_disk
            .store(self.state.disk_bytes(), Ordering::Relaxed);
        c.segments
            .store(self.state.segs.len() as u64, Ordering::Relaxed);
        c.live_messages
            .store(self.state.index.len() as u64, Ordering::Relaxed);
        c.live_bytes
            .store(self.state.live_bytes(), Ordering::Relaxed);
    }

    /// Deletes every segment that can no longer matter, in waves: a segment that refers
    /// to one deleted in this wave waits until that unlink has been made durable.
    fn reclaim(&mut self) -> io::Result<()> {
        // A sizeable active segment holding nothing live is sealed early so that it can
        // go too: after a queue has been drained the directory shrinks to almost
        // nothing instead of keeping up to a whole dead segment.
        if let Some(a) = self.state.segs.get(&self.active_id) {
            if a.live == 0 && a.size >= (self.segment_size / 8).max(64 << 10) {
                self.roll()?;
            }
        }
        loop {
            let mut gone: Vec<u32> = Vec::new();
            let ids: Vec<u32> = self.state.segs.keys().copied().collect();
            for id in ids {
                if id == self.active_id {
                    continue;
                }
                let s = &self.state.segs[&id];
                let free = s.live == 0
                    && s.refs
                        .iter()
                        .all(|r| !self.state.segs.contains_key(r) && !gone.contains(r));
                if free {
                    match fs::remove_file(segment_path(&self.seg_dir, id)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    self.state.segs.remove(&id);
                    gone.push(id);
                }
            }
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
    /// copies forward the live publishes of the oldest segment that is mostly dead (or
    /// that keeps dead segments alive).
    fn maybe_compact(&mut self) -> io::Result<bool> {
        let disk = self.state.disk_bytes();
        let live = self.state.live_bytes();
        let garbage = disk - live;
        if garbage < self.segment_size || garbage * 2 < disk {
            return Ok(false);
        }
        // A segment is wanted gone if it is dead or mostly dead; it then also wants
        // gone every older segment it refers to (they keep it alive). Newest first so
        // that this propagates down in one pass.
        let mut pinned = BTreeSet::new();
        for (id, s) in self.state.segs.iter().rev() {
            if *id == self.active_id {
                continue;
            }
            if s.live == 0 || s.live_bytes * 2 < s.size || pinned.contains(id) {
                pinned.extend(s.refs.iter().copied());
            }
        }
        // Oldest first; only a segment that refers to nothing left on disk, so that it
        // can be deleted right after its live records are copied.
        let segs = &self.state.segs;
        let cand = segs.iter().find(|(id, s)| {
            **id != self.active_id
                && s.live > 0
                && (s.live_bytes * 2 < s.size || pinned.contains(*id))
                && s.refs.iter().all(|r| !segs.contains_key(r))
        });
        let Some((&victim, _)) = cand else {
            return Ok(false);
        };
        let t = Instant::now();
        let data = fs::read(segment_path(&self.seg_dir, victim))?;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let state = &self.state;
        let mut copied = 0u64;
        record::scan(&data, |off, _, rec| {
            if let Rec::Publish {
                queue, id, payload, ..
            } = rec
            {
                if let Some(loc) = state.get(queue, id) {
                    if loc.seg == victim && loc.off as usize == off {
                        record::encode_publish(&mut out, queue, id, loc.flags(), payload);
                        copied += 1;
                    }
                }
            }
        });
        self.write_records(&out)?;
        // The copies must be durable before the original goes, whatever the policy.
        if self.dirty {
            self.fdatasync()?;
        }
        out.clear();
        if out.capacity() > (4 << 20) {
            out.shrink_to(4 << 20);
        }
        self.scratch = out;
        self.shared
            .counters
            .compactions
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            segment = victim,
            copied,
            ms = t.elapsed().as_millis() as u64,
            "store: compacted segment"
        );
        Ok(true)
    }

    fn write_clean_marker(&self) -> io::Result<()> {
        let path = self.dir.join(CLEAN);
        let f = File::create(&path)?;
        f.sync_all()?;
        defs::sync_dir(&self.dir)
    }

    pub(crate) fn run(mut self) {
        let res = self.run_inner();
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
            let (last_seq, need_sync, defs_ops, closing, clean) = {
                let mut p = shared.pending.lock();
                loop {
                    if !p.buf.is_empty() || !p.defs.is_empty() || p.need_sync || p.closing {
                        break;
                    }
                    let deadline = match self.policy {
                        FsyncPolicy::Interval(iv) if self.dirty => Some(self.last_sync + iv),
                        FsyncPolicy::Always if self.dirty => Some(self.last_sync + LAZY_SYNC),
                        _ => None,
                    };
                    match deadline {
                        Some(d) => {
                            if shared.work.wait_until(&mut p, d).timed_out() {
                                break;
                            }
                        }
                        None => shared.work.wait(&mut p),
                    }
                }
                // Let records nobody is waiting for gather into one write.
                if !p.urgent(self.policy) && !p.buf.is_empty() {
                    let until = std::time::Instant::now() + super::COALESCE;
                    while !p.urgent(self.policy) {
                        if shared.work.wait_until(&mut p, until).timed_out() {
                            break;
                        }
                    }
                }
                // Group commit with concurrent writers: when the last fsync served several
                // writers and fewer have arrived, give the others up to the time of one
                // fsync to join this one (PostgreSQL's commit_delay/commit_siblings,
                // adaptive: a lone writer or an idle broker never waits).
                let expected = self.last_batch_records;
                if self.policy == FsyncPolicy::Always && p.need_sync && expected > 1 {
                    let until = Instant::now()
                        + self
                            .last_fsync_time
                            .min(std::time::Duration::from_millis(1));
                    while p.seq.saturating_sub(self.taken_seq) < expected && !p.closing {
                        if shared.work.wait_until(&mut p, until).timed_out() {
                            break;
                        }
                    }
                }
                self.last_batch_records = p.seq.saturating_sub(self.taken_seq);
                self.taken_seq = p.seq;
                std::mem::swap(&mut p.buf, &mut batch);
                (
                    p.seq,
                    std::mem::take(&mut p.need_sync),
                    std::mem::take(&mut p.defs),
                    p.closing,
                    p.clean,
                )
            };
            if !defs_ops.is_empty() {
                for (k, v) in defs_ops {
                    match v {
                        Some(v) => self.defs.insert(k, v),
                        None => self.defs.remove(&k),
                    };
                }
                defs::save(&self.dir, &self.defs, self.syncs())?;
            }
            if !batch.is_empty() {
                self.write_records(&batch)?;
                shared.counters.batches.fetch_add(1, Ordering::Relaxed);
            }
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
            if self.maybe_compact()? {
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
