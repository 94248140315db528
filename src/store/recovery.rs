//! Recovery: replay every segment in log order into the live index, repairing torn
//! tails, then hand the live messages back grouped per queue in publish order.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use bytes::Bytes;

use super::flusher::segment_path;
use super::index::Loc;
use super::record::{self, Rec, FLAG_DELIVERED, FLAG_TRANSIENT, PUBLISH_PAYLOAD_OFF};
use super::state::{IdMap, SegInfo, State};
use super::{PagedOut, RecoveredMessage, RecoveryStats, Window};

/// Log progress every this many publish records read.
const PROGRESS_EVERY: u64 = 100_000;

pub(crate) struct Recovery {
    pub state: State,
    pub queues: Vec<(u64, Vec<RecoveredMessage>)>,
    pub paged: Vec<(u64, PagedOut)>,
    pub stats: RecoveryStats,
}

fn list_segments(seg_dir: &Path) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for e in fs::read_dir(seg_dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg") {
            if let Ok(id) = stem.parse::<u32>() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// With a `window`, only the head of each queue is handed back (its payloads read
/// again after the scan, so that recovery never holds more than one segment besides
/// them) and the rest is left paged in the index.
pub(crate) fn recover(seg_dir: &Path, window: Option<Window>) -> io::Result<Recovery> {
    let mut state = State::default();
    state.recovering_paged = window.is_some();
    let mut stats = RecoveryStats::default();
    let mut bufs: IdMap<u32, Vec<u8>> = IdMap::default();
    let mut publishes = 0u64;
    let started = std::time::Instant::now();

    for id in list_segments(seg_dir)? {
        let path = segment_path(seg_dir, id);
        let mut data = fs::read(&path)?;
        stats.segments += 1;
        stats.bytes_read += data.len() as u64;
        state.segs.insert(
            id,
            SegInfo {
                size: data.len() as u64,
                ..SegInfo::default()
            },
        );
        let rep = record::scan(&data, |off, len, rec| {
            if let Rec::Publish { id, flags, .. } = rec {
                // A transient message paged out: a restart drops it.
                if flags & FLAG_TRANSIENT != 0 {
                    state.max_id = state.max_id.max(id);
                    return;
                }
            }
            if let Rec::Publish { .. } | Rec::PublishShared { .. } = rec {
                publishes += 1;
                if publishes % PROGRESS_EVERY == 0 {
                    tracing::info!(
                        records = publishes,
                        live = state.index.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "store: recovery in progress"
                    );
                }
            }
            state.apply(id, off, len, rec);
        });
        if rep.corrupt_regions > 0 {
            tracing::warn!(
                file = %path.display(),
                regions = rep.corrupt_regions,
                bytes = rep.corrupt_bytes,
                "store: skipped corrupt records"
            );
            stats.corrupt_records += rep.corrupt_regions;
            stats.corrupt_bytes += rep.corrupt_bytes;
        }
        if rep.valid_end < data.len() {
            let dropped = data.len() - rep.valid_end;
            tracing::warn!(
                file = %path.display(),
                offset = rep.valid_end,
                bytes = dropped,
                "store: truncating torn or corrupt segment tail"
            );
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(rep.valid_end as u64)?;
            f.sync_all()?;
            data.truncate(rep.valid_end);
            stats.truncated_bytes += dropped as u64;
            if let Some(s) = state.segs.get_mut(&id) {
                s.size = rep.valid_end as u64;
            }
        }
        if window.is_none() {
            bufs.insert(id, data);
        }
    }
    stats.repaired = stats.truncated_bytes > 0 || stats.corrupt_records > 0;
    state.recovering_paged = false;

    // Drop the index's tombstones and spare capacity.
    state.index.shrink_to_fit();
    let mut resident: Vec<(u32, u64, Loc)> = Vec::new();
    let mut paged = Vec::new();
    for q in 0..state.interned_queues() as u32 {
        match window {
            None => resident.extend(state.index.iter_queue(q).map(|(id, l)| (q, id, *l))),
            Some(w) => {
                let (before, mut bytes) = (resident.len(), 0u64);
                state
                    .index
                    .take_paged(q, w.messages.max(1), w.bytes, |id, l| {
                        bytes += u64::from(l.len());
                        resident.push((q, id, l));
                    });
                let n = (state.index.queue_len(q) - (resident.len() - before)) as u64;
                if n > 0 {
                    let total: u64 = state
                        .index
                        .iter_queue(q)
                        .map(|(_, l)| u64::from(l.len()))
                        .sum();
                    let payload = PUBLISH_PAYLOAD_OFF as u64 * n;
                    paged.push((
                        state.queue_of(q),
                        PagedOut {
                            messages: n,
                            bytes: total - bytes - payload,
                        },
                    ));
                }
            }
        }
    }
    paged.sort_unstable_by_key(|p: &(u64, PagedOut)| p.0);
    let queues = collect(&state, &resident, bufs, seg_dir)?;
    stats.messages = state.index.len() as u64;
    stats.queues = queues.len() as u64;
    Ok(Recovery {
        state,
        queues,
        paged,
        stats,
    })
}

/// Hands the live messages back per queue (sorted by queue id), each queue's in message
/// id order = publish order (the index is sorted by id).
///
/// Each segment buffer is first compacted in place to just its live payloads (moved
/// down in offset order, so a move never overwrites a payload still to be moved) and
/// shrunk, and the payloads are zero-copy slices of it: no per-message allocation, and
/// nothing dead (record headers, acks, acked or superseded publishes) stays in memory.
/// A buffer is freed once the core has dropped every message sliced from it.
fn collect(
    state: &State,
    resident: &[(u32, u64, Loc)],
    mut bufs: IdMap<u32, Vec<u8>>,
    seg_dir: &Path,
) -> io::Result<Vec<(u64, Vec<RecoveredMessage>)>> {
    // Per segment with live publishes: (record offset, record length) of each, sorted by
    // offset; after compaction the second field is the payload's offset in the buffer.
    let mut live: IdMap<u32, Vec<(u32, u32)>> = IdMap::default();
    for (_, _, loc) in resident {
        live.entry(loc.seg).or_default().push((loc.off, loc.len()));
    }
    let mut payloads: IdMap<u32, Bytes> = IdMap::default();
    for (seg, recs) in live.iter_mut() {
        let mut buf = match bufs.remove(seg) {
            Some(b) => b,
            None => fs::read(segment_path(seg_dir, *seg))?,
        };
        recs.sort_unstable_by_key(|r| r.0);
        // A shared record (one body, several queues) has an entry per queue: its
        // payload is kept once and sliced for each of them.
        recs.dedup_by_key(|r| r.0);
        let mut end = 0usize;
        for r in recs.iter_mut() {
            let start = r.0 as usize + PUBLISH_PAYLOAD_OFF;
            let stop = r.0 as usize + r.1 as usize;
            debug_assert!(end <= start);
            buf.copy_within(start..stop, end);
            r.1 = end as u32;
            end += stop - start;
        }
        buf.truncate(end);
        buf.shrink_to_fit();
        payloads.insert(*seg, Bytes::from(buf));
    }
    drop(bufs);

    let mut queues: Vec<(u64, Vec<RecoveredMessage>)> = Vec::new();
    for run in resident.chunk_by(|a, b| a.0 == b.0) {
        let mut msgs = Vec::with_capacity(run.len());
        for &(_, id, loc) in run {
            let recs = &live[&loc.seg];
            let i = recs
                .binary_search_by_key(&loc.off, |r| r.0)
                .expect("indexed record");
            let start = recs[i].1 as usize;
            let end = start + loc.len() as usize - PUBLISH_PAYLOAD_OFF;
            msgs.push(RecoveredMessage {
                msg_id: id,
                payload: payloads[&loc.seg].slice(start..end),
                delivered: loc.flags() & FLAG_DELIVERED != 0,
            });
        }
        queues.push((state.queue_of(run[0].0), msgs));
    }
    drop(live);
    drop(payloads);
    queues.sort_unstable_by_key(|q| q.0);
    Ok(queues)
}
