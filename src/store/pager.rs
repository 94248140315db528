//! Reading paged messages back: the bodies of messages the core does not hold in memory
//! (the deep part of a queue) stay only in the segment files, and are read back here
//! in queue order, a batch at a time, ahead of need.
//!
//! One reader thread serves every queue (a queue has at most one read in flight). A
//! read takes the oldest paged entries of the queue out of the index (so no later read
//! returns them again), then reads their records in runs: entries of one queue sit in
//! publish order in the log, so a run of neighbours is one `pread` of the span they
//! cover, and the payloads are slices of that one buffer. Every record is checked (CRC,
//! type, id) before its payload is handed out; an entry that moved meanwhile (a
//! compaction copied it forward and deleted the old segment) is looked up again.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use parking_lot::Mutex;

use super::flusher::segment_path;
use super::index::Loc;
use super::record::{self, Rec, FLAG_DELIVERED, HEADER, PUBLISH_PAYLOAD_OFF};
use super::state::State;
use super::{RecoveredMessage, Shared, StoreError};

/// Neighbouring records this far apart (other queues' records between them) are still
/// read with one `pread`.
const MAX_GAP: u32 = 64 << 10;
/// Largest span one `pread` covers.
const MAX_SPAN: u32 = 4 << 20;
/// Segment files kept open by the reader.
const OPEN_FILES: usize = 8;

/// What a finished read hands back to the queue that asked.
pub type PageDone = Box<dyn FnOnce(Result<Vec<RecoveredMessage>, StoreError>) + Send>;

/// One read asked of the reader thread.
pub(crate) struct PageJob {
    pub queue: u64,
    pub max: usize,
    pub max_bytes: u64,
    /// Records submitted up to this sequence number must be in the index first (the
    /// queue's own paged publishes, written before it asked).
    pub after_seq: u64,
    pub done: PageDone,
}

/// Reads paged messages: the reader thread's state, or a one-off reader at start-up.
pub(crate) struct Pager {
    seg_dir: PathBuf,
    state: Arc<Mutex<State>>,
    shared: Arc<Shared>,
    files: HashMap<u32, Arc<File>>,
}

impl Pager {
    pub(crate) fn new(seg_dir: PathBuf, state: Arc<Mutex<State>>, shared: Arc<Shared>) -> Pager {
        Pager {
            seg_dir,
            state,
            shared,
            files: HashMap::new(),
        }
    }

    /// The reader thread: serves jobs until every sender is gone.
    pub(crate) fn run(mut self, jobs: mpsc::Receiver<PageJob>) {
        while let Ok(job) = jobs.recv() {
            let res = self.read(job.queue, job.max, job.max_bytes, job.after_seq);
            (job.done)(res);
        }
    }

    /// Waits until every record submitted up to `seq` is written and in the index.
    fn wait_written(&self, seq: u64) -> Result<(), StoreError> {
        let sh = &self.shared;
        let written = || sh.written_seq.load(Ordering::Acquire) >= seq;
        if written() {
            return Ok(());
        }
        let mut g = sh.block.lock();
        loop {
            if written() {
                return Ok(());
            }
            if sh.stopped.load(Ordering::Acquire) {
                return Err(match sh.error.lock().clone() {
                    Some(e) => StoreError::Failed(e),
                    None => StoreError::Closed,
                });
            }
            sh.block_cv.wait(&mut g);
        }
    }

    /// Takes up to `max` of the oldest paged messages of `queue` (or until their bytes
    /// reach `max_bytes`) and reads them, in queue order.
    pub(crate) fn read(
        &mut self,
        queue: u64,
        max: usize,
        max_bytes: u64,
        after_seq: u64,
    ) -> Result<Vec<RecoveredMessage>, StoreError> {
        self.wait_written(after_seq)?;
        let mut want: Vec<(u64, Loc)> = Vec::new();
        self.state
            .lock()
            .take_paged(queue, max, max_bytes, |id, loc| want.push((id, loc)));
        let mut out = Vec::with_capacity(want.len());
        let mut i = 0;
        while i < want.len() {
            let (seg, start) = (want[i].1.seg, want[i].1.off);
            let mut end = start + want[i].1.len();
            let mut j = i + 1;
            while let Some((_, l)) = want.get(j) {
                let fits = l.seg == seg
                    && l.off >= end
                    && l.off - end <= MAX_GAP
                    && l.off + l.len() - start <= MAX_SPAN;
                if !fits {
                    break;
                }
                end = l.off + l.len();
                j += 1;
            }
            let span = self.read_span(seg, start, end).ok();
            for &(id, loc) in &want[i..j] {
                let found = span
                    .as_ref()
                    .and_then(|buf| payload_at(buf, (loc.off - start) as usize, id, loc));
                match found {
                    Some(payload) => out.push(recovered(id, loc, payload)),
                    None => {
                        if let Some(m) = self.reread(queue, id)? {
                            out.push(m);
                        }
                    }
                }
            }
            i = j;
        }
        Ok(out)
    }

    /// An entry not where the read found it: compaction moved it, or it was corrupt.
    /// Looks it up again and reads that one record; `None` when it is gone (its queue
    /// was deleted or purged meanwhile).
    fn reread(&mut self, queue: u64, id: u64) -> Result<Option<RecoveredMessage>, StoreError> {
        for _ in 0..3 {
            let Some(loc) = self.state.lock().get(queue, id) else {
                return Ok(None);
            };
            if let Ok(buf) = self.read_record(loc.seg, loc.off) {
                if let Some(payload) = payload_at(&buf, 0, id, loc) {
                    return Ok(Some(recovered(id, loc, payload)));
                }
            }
        }
        tracing::error!(
            queue,
            msg = id,
            "store: a paged message could not be read back"
        );
        Err(StoreError::Failed(format!(
            "paged message {id} of queue {queue} is unreadable"
        )))
    }

    fn file(&mut self, seg: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.get(&seg) {
            return Ok(f.clone());
        }
        if self.files.len() >= OPEN_FILES {
            // Reads move forward through the log: the oldest segment goes first.
            if let Some(&oldest) = self.files.keys().min() {
                self.files.remove(&oldest);
            }
        }
        let f = Arc::new(File::open(segment_path(&self.seg_dir, seg))?);
        self.files.insert(seg, f.clone());
        Ok(f)
    }

    fn read_span(&mut self, seg: u32, start: u32, end: u32) -> io::Result<Bytes> {
        let f = self.file(seg)?;
        let mut buf = vec![0u8; (end - start) as usize];
        let r = f.read_exact_at(&mut buf, u64::from(start));
        if r.is_err() {
            // Deleted (its file handle may be stale) or cut short: open afresh next time.
            self.files.remove(&seg);
        }
        r?;
        Ok(Bytes::from(buf))
    }

    /// The whole record at `off` (a shared record's index entry does not cover its queue
    /// list, so the length is read from the header).
    fn read_record(&mut self, seg: u32, off: u32) -> io::Result<Bytes> {
        let head = self.read_span(seg, off, off + HEADER as u32)?;
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        if len as usize > record::MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad record length",
            ));
        }
        self.read_span(seg, off, off + HEADER as u32 + len)
    }
}

/// The payload of the publish record of message `id` at `pos` of `buf`, checked.
fn payload_at(buf: &Bytes, pos: usize, id: u64, loc: Loc) -> Option<Bytes> {
    let len = record::check_at(buf, pos)?;
    let body = &buf[pos + HEADER..pos + len];
    let payload = match record::decode_body(body)? {
        Rec::Publish {
            id: got, payload, ..
        }
        | Rec::PublishShared {
            id: got, payload, ..
        } if got == id => payload,
        _ => return None,
    };
    let start = pos + PUBLISH_PAYLOAD_OFF;
    debug_assert_eq!(loc.len() as usize, PUBLISH_PAYLOAD_OFF + payload.len());
    Some(buf.slice(start..start + payload.len()))
}

fn recovered(id: u64, loc: Loc, payload: Bytes) -> RecoveredMessage {
    RecoveredMessage {
        msg_id: id,
        payload,
        delivered: loc.has(FLAG_DELIVERED),
    }
}
