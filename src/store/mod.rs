//! Durable storage engine: persistent messages and definitions, recovery, fsync policy.
//!
//! The store knows nothing of the core: it keeps opaque records `(queue id, message id,
//! payload)` plus an opaque `key -> value` map of definitions.
//!
//! # Design
//! - One store-wide append-only log split into segment files `segments/NNNNNNNNN.seg`
//!   (default 32 MiB). Each record is framed `magic | len | crc32c | type | fields`
//!   (see `record.rs`): Publish(queue, msg id, flags, payload), PublishShared(msg id,
//!   payload, [(queue, flags)]) for a message routed to several durable queues (the
//!   body is written once; each queue's index entry points at the same record, which
//!   stays live until the last of them lets go), Ack, Delivered, QueueDeleted, and
//!   MaxId (first record of every segment, so the message id high-water mark survives
//!   even when every older segment is reclaimed).
//! - Definitions live in a small file rewritten atomically (temp + fsync + rename +
//!   fsync dir) by the same flusher thread, before the records of the same batch.
//! - Group commit: callers append encoded records to one in-memory batch under a mutex
//!   and get a [`SyncTicket`] (an `Arc` clone plus a sequence number, no allocation). One
//!   dedicated OS thread takes the whole batch, writes it with one `write`, runs one
//!   `fdatasync`, publishes "synced up to sequence N" and wakes every waiter. Whatever
//!   arrives during the fsync goes into the next one; with several writers the flusher
//!   lets a batch gather for a bounded, learned time first (`commit.rs`: a lone writer
//!   never waits, many writers with many records in flight get bigger, rarer fsyncs).
//!   Records nobody waits for (acks, delivered) ride along with the next fsync, or are
//!   synced 10 ms after the previous one if the store goes idle.
//! - Elision: the batch remembers where each plain publish in it starts. A delivered
//!   mark for a publish still in the batch sets the flag in its record (no record of
//!   its own), and an ack takes the publish out of the batch (neither is written): on a
//!   queue whose consumers keep up, most messages are consumed within one fsync and
//!   cost the disk nothing. Their tickets still complete with the batch.
//! - Reclamation: the flusher keeps an index `(queue, msg id) -> record location and
//!   flags` (per queue, blocks of up to 128 delta-encoded entries, about 2 bytes per
//!   live message in a deep queue, see `index.rs`; shared with the reader of paged
//!   messages, `pager.rs`) and, per segment,
//!   its live count and the set of older segments its Ack / Delivered / QueueDeleted
//!   records (and compaction copies) refer to. A segment is deleted when it is not the
//!   active one, holds no live publish, and every segment it refers to is already gone
//!   and that unlink fsynced (so deleting it can never resurrect a message). A sizeable
//!   active segment with nothing live is sealed early so a drained queue leaves almost
//!   nothing on disk. When garbage exceeds both half of the disk and one segment, the
//!   oldest segment that is mostly dead (or that keeps dead segments alive) is
//!   compacted: its live publishes are copied forward, synced, and the segment deleted.
//!   A compaction thread reads and verifies the victim; the flusher copies what is
//!   still live in bounded steps between batches, so confirms do not wait behind it.
//!   Recovery returns each queue's messages sorted by message id (ids are globally
//!   increasing), so copies do not disturb the order.
//! - Recovery reads each segment with one `read`, verifies every CRC, resynchronises on
//!   the magic after a corrupt region and truncates a torn tail. Each segment buffer is
//!   then compacted in place to just its live payloads (record headers, acks and dead
//!   publishes dropped, the allocation shrunk) and the payloads are `Bytes` slices of it:
//!   no per-message allocation, nothing dead kept in memory, and a buffer is freed once
//!   the core has dropped every message sliced from it (in FIFO order as queues drain).
//! - Paging: a publish the core does not keep in memory carries the paged flag (and a
//!   transient one, which recovery drops, for a message no restart must bring back);
//!   its index entry stays paged until [`Store::page_in`] takes it out, oldest first,
//!   on the reader thread. With [`StoreConfig::window`], recovery hands back only the
//!   head of each queue and leaves the rest paged (the segment buffers are read once
//!   for the scan and again only where the heads lie).
//!
//! # Guarantees
//! Under `always`, a completed ticket means the record (and everything submitted before
//! it) is on disk: it survives `kill -9` and power loss. Under `interval:<ms>` it means
//! written to the OS: it survives `kill -9`, and a power loss loses at most the last
//! interval. Under `never`, the same as interval, with no bound but the OS's writeback.
//! Acks are at-least-once: an ack not yet covered by an fsync may be lost in a crash,
//! and the message then comes back (with `delivered = true` if that mark was synced).
//! A torn or corrupt tail is truncated and a corrupt record in the middle skipped, both
//! logged and counted in [`RecoveryStats`]; corruption that destroys an ack record can
//! bring that message back, never lose another.
//!
//! # Use from the core
//! [`Store::open`] and [`Store::close`] block (recovery reads every segment; close joins
//! the flusher): call them before the runtime serves traffic or from `spawn_blocking`.
//! `publish`, `ack`, `delivered`, `delete_queue` and the definition calls never block on
//! disk. Definitions are written before the records of the same batch, so a queue's
//! definition is durable no later than its messages; after a crash, the queues in
//! [`Recovered::queues`] that have no definition (deleted just before the crash) should
//! be dropped with [`Store::delete_queue`].

mod commit;
mod defs;
mod flusher;
mod index;
mod pager;
mod record;
mod recovery;
mod state;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

/// Name of the marker written by a clean [`Store::close`].
const CLEAN: &str = "CLEAN";
/// Name of the lock file.
const LOCK: &str = "LOCK";
/// Directory holding the segment files.
const SEGMENTS: &str = "segments";
/// How many recent fsync durations [`StoreStats`] keeps.
const RECENT_FSYNCS: usize = 1024;

/// When the store calls `fdatasync`, and what a [`SyncTicket`] waits for: a setting,
/// so its type lives in the config leaf, where it is parsed.
pub use crate::config::FsyncPolicy;
pub use pager::PageDone;
pub use record::Payload;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another open store in this one) holds the directory.
    #[error("data directory {0} is locked by another qgate process")]
    Locked(PathBuf),
    /// An I/O error while opening.
    #[error("store I/O error: {0}")]
    Io(#[from] io::Error),
    /// The store was closed before the record could be written.
    #[error("store is closed")]
    Closed,
    /// The flusher hit an I/O error and stopped (fail-stop: nothing later is durable).
    #[error("store failed: {0}")]
    Failed(String),
    /// The payload exceeds [`Store::MAX_PAYLOAD`]; nothing was stored.
    #[error("payload too large for the store")]
    TooLarge,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory (created if missing).
    pub dir: PathBuf,
    /// Fsync policy.
    pub fsync: FsyncPolicy,
    /// Target segment file size in bytes (default 32 MiB; clamped to 4 KiB..=1 GiB).
    pub segment_size: u64,
    /// The core pages deep queues: recovery hands back only the head of each queue, up
    /// to this window, and leaves the rest paged (read back with [`Store::page_in`]).
    /// `None`: everything is handed back.
    pub window: Option<Window>,
}

/// How much of a queue the core keeps in memory: the window beyond which it pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Messages.
    pub messages: usize,
    /// Payload bytes.
    pub bytes: u64,
}

impl StoreConfig {
    /// Default segment size: 32 MiB.
    pub const DEFAULT_SEGMENT_SIZE: u64 = 32 << 20;

    /// A config for `dir` with the defaults (`always`, 32 MiB segments).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
            segment_size: Self::DEFAULT_SEGMENT_SIZE,
            window: None,
        }
    }
}

/// One recovered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMessage {
    /// Message id as given to [`Store::publish`].
    pub msg_id: u64,
    /// Payload as given to [`Store::publish`].
    pub payload: Bytes,
    /// The message had been handed to a consumer (redeliver with redelivered=true).
    pub delivered: bool,
}

/// Messages of a queue left in the store only, behind what the core holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagedOut {
    /// How many.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// What recovery did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryStats {
    /// Live messages recovered.
    pub messages: u64,
    /// Queues with at least one live message.
    pub queues: u64,
    /// Segment files read.
    pub segments: u64,
    /// Bytes read from segment files.
    pub bytes_read: u64,
    /// Bytes dropped from torn or corrupt segment tails (the files were truncated).
    pub truncated_bytes: u64,
    /// Corrupt regions skipped in the middle of segments (each is one or more records).
    pub corrupt_records: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
    /// The previous run ended with [`Store::close`] (clean marker found).
    pub clean_shutdown: bool,
    /// A repair was needed: a tail was truncated or a corrupt region skipped.
    pub repaired: bool,
    /// Time taken.
    pub elapsed: Duration,
}

/// Everything recovered at open.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Definitions (`key -> value`), sorted by key.
    pub definitions: Vec<(String, Bytes)>,
    /// Per queue (sorted by queue id), its live messages in original publish order (with
    /// a [`StoreConfig::window`], only the head of each queue).
    pub queues: Vec<(u64, Vec<RecoveredMessage>)>,
    /// Per queue (sorted by queue id), what recovery left paged behind its head.
    pub paged: Vec<(u64, PagedOut)>,
    /// Statistics.
    pub stats: RecoveryStats,
}

/// A snapshot of store counters.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// fdatasync calls so far.
    pub fsyncs_total: u64,
    /// Sum of their durations, in seconds.
    pub fsync_seconds_total: f64,
    /// Durations of the most recent fsyncs (up to 1024), in seconds, oldest first.
    pub recent_fsync_seconds: Vec<f64>,
    /// Write batches (one write syscall per segment touched).
    pub batches: u64,
    /// Bytes written to segment files (including compaction copies).
    pub bytes_written: u64,
    /// Current size of all segment files.
    pub bytes_on_disk: u64,
    /// Current number of segment files.
    pub segments: u64,
    /// Messages currently live in the store.
    pub live_messages: u64,
    /// Bytes of their records (the rest of `bytes_on_disk` is garbage awaiting
    /// reclamation).
    pub live_bytes: u64,
    /// Segments compacted so far.
    pub compactions: u64,
    /// A compaction is in progress (its victim being scanned or copied forward).
    pub compacting: bool,
    /// Segment files deleted so far.
    pub segments_deleted: u64,
    /// Publishes never written: acked before the flusher reached them (their delivered
    /// mark and ack were not written either).
    pub publishes_elided: u64,
    /// Bytes waiting for the flusher.
    pub pending_bytes: u64,
    /// Highest sequence number handed to a ticket.
    pub submitted_seq: u64,
    /// Every record with a sequence number up to this one has been written to the OS.
    pub written_seq: u64,
    /// Every record with a sequence number up to this one has been fsynced.
    pub synced_seq: u64,
}

/// Records waiting for the flusher.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    defs: Vec<(String, Option<Bytes>)>,
    seq: u64,
    need_sync: bool,
    closing: bool,
    clean: bool,
    /// The compactor thread's scan of a victim, for the flusher to copy forward.
    compacted: Option<flusher::ScanResult>,
    /// Queues whose paged messages are to be dropped (a purge), each with the length
    /// `buf` had then: only what was submitted before the purge goes.
    purges: Vec<(u64, usize)>,
    /// Plain publishes in `buf`, by `(queue, message id)`: where their record starts
    /// ([`KEPT`] when the same key was published twice in one batch). A delivered mark
    /// for one of them sets the flag in its record instead of writing a record of its
    /// own, and an ack takes the publish out of the batch: a message consumed before
    /// the flusher reached it is never written (RabbitMQ's message store does the same).
    unwritten: state::IdMap<(u64, u64), usize>,
    /// Delivered records in `buf`, by `(queue, message id)`: an ack in the same batch
    /// makes them pointless (the message is gone either way), so they are dropped.
    marks: state::IdMap<(u64, u64), usize>,
    /// Where the records taken out of `buf` start (publishes acked before they were
    /// written, delivered marks of messages acked since).
    cancelled: Vec<usize>,
    /// How many of those are publishes.
    elided: u64,
    /// What the flusher is waiting for, so that a record wakes it only when it ends
    /// that wait (one futex wake per batch, not one per record).
    waiting: Waiting,
}

/// The flusher's wait, as [`Pending::waiting`] tells writers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Not waiting: it looks at `Pending` again before it waits.
    #[default]
    Busy,
    /// For any record.
    Idle,
    /// For something urgent (records nobody waits for are gathering).
    Urgent,
    /// For the batch to reach this sequence number (group commit).
    Seq(u64),
}

/// An [`Pending::unwritten`] entry that must be written whatever follows.
const KEPT: usize = usize::MAX;

/// Records nobody waits for (acks, delivered marks, and everything under `interval` and
/// `never`) are written in batches: the flusher lets them gather for this long, or until
/// this many bytes are pending, instead of waking for each one.
pub(crate) const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);
pub(crate) const COALESCE_BYTES: usize = 256 * 1024;

impl Pending {
    /// Notes a plain publish encoded at `at` of `buf`.
    fn track(&mut self, queue: u64, id: u64, at: usize) {
        self.unwritten
            .entry((queue, id))
            .and_modify(|e| *e = KEPT)
            .or_insert(at);
    }

    /// The unwritten publish of `(queue, id)`, if it is still in `buf` and may change.
    fn unwritten(&self, queue: u64, id: u64) -> Option<usize> {
        self.unwritten
            .get(&(queue, id))
            .copied()
            .filter(|&at| at != KEPT)
    }

    /// Whether the flusher must write now rather than let more records gather.
    pub(crate) fn urgent(&self, policy: FsyncPolicy) -> bool {
        self.closing
            || !self.defs.is_empty()
            || (policy == FsyncPolicy::Always && self.need_sync)
            || self.buf.len() >= COALESCE_BYTES
    }

    /// Whether the record just added ends the flusher's wait.
    fn wakes(&self, policy: FsyncPolicy) -> bool {
        match self.waiting {
            Waiting::Busy => false,
            Waiting::Idle => true,
            Waiting::Urgent => self.urgent(policy),
            Waiting::Seq(seq) => self.seq >= seq || self.closing,
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.defs.is_empty() && self.purges.is_empty()
    }
}

/// Counters shared by the flusher and readers.
#[derive(Default)]
struct Counters {
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    recent: Mutex<VecDeque<f64>>,
    batches: AtomicU64,
    bytes_written: AtomicU64,
    bytes_on_disk: AtomicU64,
    segments: AtomicU64,
    live_messages: AtomicU64,
    live_bytes: AtomicU64,
    compactions: AtomicU64,
    segments_deleted: AtomicU64,
    compacting: AtomicBool,
    elided: AtomicU64,
}

/// State shared between handles, tickets and the flusher thread.
struct Shared {
    pending: Mutex<Pending>,
    work: Condvar,
    policy: FsyncPolicy,
    written_seq: AtomicU64,
    synced_seq: AtomicU64,
    stopped: AtomicBool,
    error: Mutex<Option<String>>,
    notify: Notify,
    block: Mutex<()>,
    block_cv: Condvar,
    counters: Counters,
}

impl Shared {
    fn done_seq(&self) -> u64 {
        match self.policy {
            FsyncPolicy::Always => self.synced_seq.load(Ordering::Acquire),
            _ => self.written_seq.load(Ordering::Acquire),
        }
    }

    fn check(&self, seq: u64) -> Option<Result<(), StoreError>> {
        if self.done_seq() >= seq {
            return Some(Ok(()));
        }
        if self.stopped.load(Ordering::Acquire) {
            if self.done_seq() >= seq {
                return Some(Ok(()));
            }
            return Some(Err(match self.error.lock().clone() {
                Some(e) => StoreError::Failed(e),
                None => StoreError::Closed,
            }));
        }
        None
    }

    /// Wakes every ticket waiter (async and blocking).
    fn wake_all(&self) {
        self.notify.notify_waiters();
        let _g = self.block.lock();
        self.block_cv.notify_all();
    }

    fn record_fsync(&self, d: Duration) {
        let c = &self.counters;
        c.fsyncs.fetch_add(1, Ordering::Relaxed);
        c.fsync_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        {
            let mut r = c.recent.lock();
            if r.len() == RECENT_FSYNCS {
                r.pop_front();
            }
            r.push_back(d.as_secs_f64());
        }
        metrics::counter!("store_fsyncs_total").increment(1);
        metrics::histogram!("store_fsync_seconds").record(d.as_secs_f64());
    }
}

/// Completes when a record is as durable as the fsync policy promises.
///
/// Cheap: a reference to the store's shared state plus a sequence number.
pub struct SyncTicket {
    shared: Arc<Shared>,
    seq: u64,
    too_large: bool,
}

impl fmt::Debug for SyncTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncTicket")
            .field("seq", &self.seq)
            .finish()
    }
}

impl SyncTicket {
    /// Sequence number of the record (compare with [`StoreStats::synced_seq`]).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn check(&self) -> Option<Result<(), StoreError>> {
        if self.too_large {
            return Some(Err(StoreError::TooLarge));
        }
        self.shared.check(self.seq)
    }

    /// True once [`SyncTicket::wait`] would return immediately.
    pub fn is_done(&self) -> bool {
        self.check().is_some()
    }

    /// Waits (async) until the record is durable per the policy.
    pub async fn wait(self) -> Result<(), StoreError> {
        loop {
            if let Some(r) = self.check() {
                return r;
            }
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.check() {
                return r;
            }
            notified.await;
        }
    }

    /// Waits (blocking the thread) until the record is durable per the policy.
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        if let Some(r) = self.check() {
            return r;
        }
        let mut g = self.shared.block.lock();
        loop {
            if let Some(r) = self.check() {
                return r;
            }
            self.shared.block_cv.wait(&mut g);
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The reader of paged messages: its queue of jobs and its thread.
    pager: Mutex<Option<mpsc::Sender<pager::PageJob>>>,
    pager_thread: Mutex<Option<JoinHandle<()>>>,
    state: Arc<Mutex<state::State>>,
    seg_dir: PathBuf,
    lock: Mutex<Option<File>>,
    max_id: u64,
    dir: PathBuf,
}

impl Inner {
    fn shutdown(&self, clean: bool) -> Result<(), StoreError> {
        // Reads in flight finish first (they may wait for the flusher). A read's answer
        // may drop the last handle of the store on the reader thread itself: it cannot
        // join itself, and exits once the job queue is gone.
        self.pager.lock().take();
        if let Some(h) = self.pager_thread.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let Some(handle) = self.thread.lock().take() else {
            return Ok(());
        };
        {
            let mut p = self.shared.pending.lock();
            p.closing = true;
            p.clean = clean;
        }
        self.shared.work.notify_one();
        let joined = handle.join();
        self.lock.lock().take();
        if joined.is_err() {
            return Err(StoreError::Failed("store flusher thread panicked".into()));
        }
        match self.shared.error.lock().clone() {
            Some(e) => Err(StoreError::Failed(e)),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Flush what is pending but leave no clean marker: only close() is clean.
        if let Err(e) = self.shutdown(false) {
            tracing::error!(error = %e, "store shutdown on drop failed");
        }
    }
}

/// The durable store. Cheap to clone; all clones share one flusher.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("policy", &self.inner.shared.policy)
            .finish()
    }
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }
        return Err(StoreError::Io(e));
    }
    Ok(f)
}

impl Store {
    /// Opens (creating if needed) the store in `cfg.dir`: takes the directory lock,
    /// recovers definitions and live messages, and starts the flusher thread.
    pub fn open(cfg: StoreConfig) -> Result<(Store, Recovered), StoreError> {
        let started = Instant::now();
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir)?;
        let lock = lock_dir(&dir)?;
        let seg_dir = dir.join(SEGMENTS);
        fs::create_dir_all(&seg_dir)?;
        let clean = dir.join(CLEAN).exists();
        // Nothing was ever stored here: say so, rather than "recovering, not clean".
        let fresh =
            !clean && !dir.join(defs::FILE).exists() && fs::read_dir(&seg_dir)?.next().is_none();
        let segment_size = cfg.segment_size.clamp(4096, 1 << 30);

        let defs_map = defs::load(&dir);
        match fs::remove_file(dir.join(defs::TMP)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if fresh {
            tracing::info!(dir = %dir.display(), "store: no data yet, created a new store");
        } else if clean {
            tracing::info!(dir = %dir.display(), "store: recovering after a clean shutdown");
        } else {
            tracing::info!(
                dir = %dir.display(),
                "store: recovering after an unclean shutdown (crash or kill): checking every record"
            );
        }
        let rec = recovery::recover(&seg_dir, cfg.window)?;
        let mut stats = rec.stats;
        stats.clean_shutdown = clean;
        stats.elapsed = started.elapsed();
        if clean {
            fs::remove_file(dir.join(CLEAN))?;
        }
        defs::sync_dir(&dir)?;
        tracing::info!(
            queues = stats.queues,
            messages = stats.messages,
            segments = stats.segments,
            definitions = defs_map.len(),
            truncated_bytes = stats.truncated_bytes,
            corrupt_records = stats.corrupt_records,
            seconds = stats.elapsed.as_secs_f64(),
            "store: recovered"
        );
        let recovered = Recovered {
            definitions: defs_map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            queues: rec.queues,
            paged: rec.paged,
            stats,
        };
        let max_id = rec.state.max_id;
        let state = Arc::new(Mutex::new(rec.state));

        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            work: Condvar::new(),
            policy: cfg.fsync,
            written_seq: AtomicU64::new(0),
            synced_seq: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            error: Mutex::new(None),
            notify: Notify::new(),
            block: Mutex::new(()),
            block_cv: Condvar::new(),
            counters: Counters::default(),
        });
        let writer = flusher::Writer::new(
            dir.clone(),
            seg_dir.clone(),
            cfg.fsync,
            segment_size,
            state.clone(),
            defs_map,
            shared.clone(),
        )?;
        let handle = std::thread::Builder::new()
            .name("qgate-store".into())
            .spawn(move || writer.run())?;
        let (jobs, rx) = mpsc::channel();
        let pager = pager::Pager::new(seg_dir.clone(), state.clone(), shared.clone());
        let pager_thread = std::thread::Builder::new()
            .name("qgate-pagein".into())
            .spawn(move || pager.run(rx))?;
        let store = Store {
            inner: Arc::new(Inner {
                shared,
                thread: Mutex::new(Some(handle)),
                pager: Mutex::new(Some(jobs)),
                pager_thread: Mutex::new(Some(pager_thread)),
                state,
                seg_dir,
                lock: Mutex::new(Some(lock)),
                max_id,
                dir,
            }),
        };
        Ok((store, recovered))
    }

    fn enqueue(&self, need_sync: bool, f: impl FnOnce(&mut Pending)) -> SyncTicket {
        let shared = &self.inner.shared;
        let (seq, wake) = {
            let mut p = shared.pending.lock();
            if p.closing || shared.stopped.load(Ordering::Acquire) {
                (u64::MAX, true)
            } else {
                f(&mut p);
                p.seq += 1;
                p.need_sync |= need_sync;
                (p.seq, p.wakes(shared.policy))
            }
        };
        // The flusher is woken only by the record that ends its wait; the others join
        // the batch without a wake-up each.
        if wake {
            shared.work.notify_one();
        }
        SyncTicket {
            shared: shared.clone(),
            seq,
            too_large: false,
        }
    }

    /// Largest payload [`Store::publish`] accepts (about 1 GiB).
    pub const MAX_PAYLOAD: usize = record::MAX_BODY - record::PUBLISH_FIXED;

    /// Appends a publish record; the ticket completes when it is durable per policy, or
    /// once it needs no writing (acked before the flusher reached it: nothing is
    /// written). Each `(queue, msg_id)` is published once.
    /// A payload over [`Store::MAX_PAYLOAD`] is not stored and its ticket fails with
    /// [`StoreError::TooLarge`].
    pub fn publish<P: Payload>(&self, queue: u64, msg_id: u64, payload: P) -> SyncTicket {
        if payload.len() > Self::MAX_PAYLOAD {
            return SyncTicket {
                shared: self.inner.shared.clone(),
                seq: u64::MAX,
                too_large: true,
            };
        }
        self.enqueue(true, |p| {
            let at = p.buf.len();
            record::encode_publish(&mut p.buf, queue, msg_id, 0, &payload);
            p.track(queue, msg_id, at);
        })
    }

    /// Appends one publish record for a message routed to several queues: the body is
    /// written once and each queue holds a reference (reclaimed when the last of them
    /// acks it or is deleted). The ticket covers every queue.
    pub fn publish_shared<P: Payload>(
        &self,
        queues: &[u64],
        msg_id: u64,
        payload: P,
    ) -> SyncTicket {
        match queues {
            [] => return self.sync(),
            [queue] => return self.publish(*queue, msg_id, payload),
            _ => {}
        }
        let list = queues.len().min(record::MAX_SHARED_QUEUES) * 9;
        if payload.len() > Self::MAX_PAYLOAD - list {
            return SyncTicket {
                shared: self.inner.shared.clone(),
                seq: u64::MAX,
                too_large: true,
            };
        }
        self.enqueue(true, |p| {
            for chunk in queues.chunks(record::MAX_SHARED_QUEUES) {
                let entries = chunk.iter().map(|&q| (q, 0));
                record::encode_publish_shared(&mut p.buf, entries, msg_id, &payload);
            }
        })
    }

    /// Appends a publish record for a message the core does not keep in memory (the
    /// deep part of a queue): it stays paged in the index until [`Store::page_in`]
    /// reads it back. A `transient` one is dropped by recovery (a transient message, or
    /// one of a non-durable queue) and nobody waits for it to be synced.
    pub fn publish_paged<P: Payload>(
        &self,
        queue: u64,
        msg_id: u64,
        payload: P,
        transient: bool,
    ) -> SyncTicket {
        if payload.len() > Self::MAX_PAYLOAD {
            return SyncTicket {
                shared: self.inner.shared.clone(),
                seq: u64::MAX,
                too_large: true,
            };
        }
        let flags = record::FLAG_PAGED | if transient { record::FLAG_TRANSIENT } else { 0 };
        self.enqueue(!transient, |p| {
            record::encode_publish(&mut p.buf, queue, msg_id, flags, &payload)
        })
    }

    /// The core let go of a message already stored for `queue` (a shared record it now
    /// pages): read it back with [`Store::page_in`] like any other paged message.
    pub fn mark_paged(&self, queue: u64, msg_id: u64) {
        self.small(|p| record::encode_pair(&mut p.buf, record::T_PAGED, queue, msg_id));
    }

    /// Drops every paged message of `queue` (a purge: what the core holds stays). Does
    /// not wait; acks are written for them in bounded steps.
    pub fn drop_paged(&self, queue: u64) {
        let shared = &self.inner.shared;
        {
            let mut p = shared.pending.lock();
            if p.closing || shared.stopped.load(Ordering::Acquire) {
                return;
            }
            let at = p.buf.len();
            p.purges.push((queue, at));
        }
        shared.work.notify_one();
    }

    /// Reads back, on the store's reader thread, up to `max` of the oldest paged
    /// messages of `queue` (fewer once their payloads reach `max_bytes`; at least one
    /// when any is paged), in publish order, and hands them to `done` there. Paged
    /// records submitted before this call are included.
    /// False (and `done` dropped uncalled) when the store is closed.
    pub fn page_in(&self, queue: u64, max: usize, max_bytes: u64, done: PageDone) -> bool {
        let after_seq = self.inner.shared.pending.lock().seq;
        let job = pager::PageJob {
            queue,
            max,
            max_bytes,
            after_seq,
            done,
        };
        match &*self.inner.pager.lock() {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        }
    }

    /// [`Store::page_in`] on the calling thread (blocking; for start-up).
    pub fn read_paged(
        &self,
        queue: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<RecoveredMessage>, StoreError> {
        let inner = &self.inner;
        let after_seq = inner.shared.pending.lock().seq;
        pager::Pager::new(
            inner.seg_dir.clone(),
            inner.state.clone(),
            inner.shared.clone(),
        )
        .read(queue, max, max_bytes, after_seq)
    }

    fn small(&self, f: impl FnOnce(&mut Pending)) {
        let shared = &self.inner.shared;
        let wake = {
            let mut p = shared.pending.lock();
            if p.closing || shared.stopped.load(Ordering::Acquire) {
                return;
            }
            f(&mut p);
            p.wakes(shared.policy)
        };
        if wake {
            shared.work.notify_one();
        }
    }

    /// Records that a message was acked (or otherwise removed). Does not wait; it is
    /// made durable by the next fsync (a lost ack means an at-least-once redelivery).
    /// A publish not yet written is taken out of the batch instead: neither is written.
    pub fn ack(&self, queue: u64, msg_id: u64) {
        self.small(|p| match p.unwritten.remove(&(queue, msg_id)) {
            Some(at) if at != KEPT => {
                p.cancelled.push(at);
                p.elided += 1;
            }
            _ => {
                if let Some(at) = p.marks.remove(&(queue, msg_id)) {
                    p.cancelled.push(at);
                }
                record::encode_pair(&mut p.buf, record::T_ACK, queue, msg_id);
            }
        });
    }

    /// Records that a message was handed to a consumer (recovered with
    /// `delivered = true`). Does not wait. For a publish not yet written, the flag is
    /// set in its record; a mark not yet written when the message is acked is dropped.
    pub fn delivered(&self, queue: u64, msg_id: u64) {
        self.small(|p| match p.unwritten(queue, msg_id) {
            Some(at) => record::set_publish_flag(&mut p.buf, at, record::FLAG_DELIVERED),
            None => {
                let at = p.buf.len();
                record::encode_pair(&mut p.buf, record::T_DELIVERED, queue, msg_id);
                p.marks.insert((queue, msg_id), at);
            }
        });
    }

    /// Drops every message of `queue` stored so far. The ticket may be ignored.
    pub fn delete_queue(&self, queue: u64) -> SyncTicket {
        self.enqueue(true, |p| {
            record::encode_one(&mut p.buf, record::T_QUEUE_DELETED, queue)
        })
    }

    /// Sets a definition.
    pub fn put_definition(&self, key: &str, value: Bytes) -> SyncTicket {
        self.enqueue(true, |p| p.defs.push((key.to_owned(), Some(value))))
    }

    /// Removes a definition.
    pub fn delete_definition(&self, key: &str) -> SyncTicket {
        self.enqueue(true, |p| p.defs.push((key.to_owned(), None)))
    }

    /// A barrier: completes once everything submitted before it is durable per the
    /// policy (under `always`, fsynced), including acks and delivered marks.
    pub fn sync(&self) -> SyncTicket {
        self.enqueue(true, |_| {})
    }

    /// Highest message id seen at recovery (the core continues above it).
    pub fn max_msg_id(&self) -> u64 {
        self.inner.max_id
    }

    /// The fsync policy in use.
    pub fn policy(&self) -> FsyncPolicy {
        self.inner.shared.policy
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Flushes and fsyncs everything, writes the clean marker, stops the flusher and
    /// releases the directory lock. Blocks the calling thread until done (call it from
    /// `spawn_blocking` or at shutdown). Later calls are no-ops; later writes fail
    /// with [`StoreError::Closed`].
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner.shutdown(true)
    }

    /// Every record with a sequence number up to this one has been fsynced (cheap; for
    /// tests and assertions against [`SyncTicket::seq`]).
    pub fn synced_seq(&self) -> u64 {
        self.inner.shared.synced_seq.load(Ordering::Acquire)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StoreStats {
        let sh = &self.inner.shared;
        let c = &sh.counters;
        let (pending_bytes, submitted_seq) = {
            let p = sh.pending.lock();
            (p.buf.len() as u64, p.seq)
        };
        StoreStats {
            fsyncs_total: c.fsyncs.load(Ordering::Relaxed),
            fsync_seconds_total: c.fsync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            recent_fsync_seconds: c.recent.lock().iter().copied().collect(),
            batches: c.batches.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            bytes_on_disk: c.bytes_on_disk.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            live_messages: c.live_messages.load(Ordering::Relaxed),
            live_bytes: c.live_bytes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            compacting: c.compacting.load(Ordering::Relaxed),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            publishes_elided: c.elided.load(Ordering::Relaxed),
            pending_bytes,
            submitted_seq,
            written_seq: sh.written_seq.load(Ordering::Acquire),
            synced_seq: sh.synced_seq.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_tracked_twice_in_one_batch_stays_written() {
        let mut p = Pending::default();
        p.track(1, 10, 0);
        p.track(1, 11, 40);
        assert_eq!(p.unwritten(1, 10), Some(0));
        p.track(1, 10, 80);
        assert_eq!(p.unwritten(1, 10), None);
        assert_eq!(p.unwritten(1, 11), Some(40));
        assert_eq!(p.unwritten(2, 11), None);
    }
}
