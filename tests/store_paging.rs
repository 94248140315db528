//! Store: messages the core pages out stay only on disk and are read back in order, a
//! batch at a time; recovery with a window hands back only each queue's head; purges
//! drop what is paged; transient paged records do not survive a restart.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::segments_size;
use qgate::store::{FsyncPolicy, RecoveredMessage, Store, StoreConfig, Window};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "qgate-paging-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn payload(id: u64) -> Bytes {
    let mut v = format!("message {id:08} ").into_bytes();
    v.resize(200 + (id % 7) as usize * 100, b'x');
    Bytes::from(v)
}

/// Reads through the reader thread, as the core does.
fn page_in(s: &Store, queue: u64, max: usize, max_bytes: u64) -> Vec<RecoveredMessage> {
    let (tx, rx) = mpsc::channel();
    assert!(s.page_in(
        queue,
        max,
        max_bytes,
        Box::new(move |res| tx.send(res).unwrap())
    ));
    rx.recv_timeout(Duration::from_secs(30))
        .expect("read answered")
        .expect("read ok")
}

fn config(dir: &Path, window: usize) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.segment_size = 64 << 10;
    cfg.fsync = FsyncPolicy::Never;
    cfg.window = Some(Window {
        messages: window,
        bytes: u64::MAX,
    });
    cfg
}

#[test]
fn paged_messages_come_back_in_order_in_batches() {
    let dir = temp_dir("order");
    let (s, _) = Store::open(config(&dir, 100)).unwrap();
    // Two queues interleaved, so a read spans other queues' records.
    for id in 1..=3000u64 {
        let _ = s.publish_paged(1 + id % 2, id, payload(id), false);
    }
    let mut got = Vec::new();
    loop {
        let batch = page_in(&s, 1, 128, u64::MAX);
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 128);
        got.extend(batch);
    }
    let ids: Vec<u64> = got.iter().map(|m| m.msg_id).collect();
    assert_eq!(ids, (1..=3000).filter(|i| i % 2 == 0).collect::<Vec<_>>());
    for m in &got {
        assert_eq!(m.payload, payload(m.msg_id));
        assert!(!m.delivered);
    }
    // The byte bound: at least one, then stop once reached.
    let two = page_in(&s, 2, 1000, 1);
    assert_eq!(two.len(), 1);
    assert_eq!(two[0].msg_id, 1);
    s.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recovery_hands_back_the_head_and_keeps_the_rest_paged() {
    let dir = temp_dir("recover");
    let (s, _) = Store::open(config(&dir, 50)).unwrap();
    for id in 1..=1000u64 {
        let _ = s.publish_paged(7, id, payload(id), false);
        // Transient paged records (a transient message, a non-durable queue) are gone
        // after a restart.
        let _ = s.publish_paged(8, 10_000 + id, payload(id), true);
    }
    // The first 10 were delivered and 5 of them acked before the crash.
    let head = page_in(&s, 7, 10, u64::MAX);
    for m in &head {
        s.delivered(7, m.msg_id);
    }
    for m in &head[..5] {
        s.ack(7, m.msg_id);
    }
    s.sync().wait_blocking().unwrap();
    drop(s); // no clean close: a crash

    let (s, rec) = Store::open(config(&dir, 50)).unwrap();
    assert!(
        rec.queues.iter().all(|(q, _)| *q == 7),
        "transient records dropped"
    );
    let (_, msgs) = &rec.queues[0];
    assert_eq!(msgs.len(), 50, "only the window is handed back");
    let ids: Vec<u64> = msgs.iter().map(|m| m.msg_id).collect();
    assert_eq!(ids, (6..=55).collect::<Vec<_>>());
    assert!(msgs[..5].iter().all(|m| m.delivered));
    assert!(msgs[5..].iter().all(|m| !m.delivered));
    assert_eq!(rec.paged.len(), 1);
    let (q, out) = rec.paged[0];
    assert_eq!(q, 7);
    assert_eq!(out.messages, 945);
    let want_bytes: u64 = (56..=1000u64).map(|i| payload(i).len() as u64).sum();
    assert_eq!(out.bytes, want_bytes);
    // The rest reads back in order, synchronously too.
    let rest = s.read_paged(7, usize::MAX, u64::MAX).unwrap();
    let ids: Vec<u64> = rest.iter().map(|m| m.msg_id).collect();
    assert_eq!(ids, (56..=1000).collect::<Vec<_>>());
    assert!(s.read_paged(8, usize::MAX, u64::MAX).unwrap().is_empty());
    s.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_purge_drops_what_is_paged_and_the_disk_is_reclaimed() {
    let dir = temp_dir("purge");
    let (s, _) = Store::open(config(&dir, 10)).unwrap();
    for id in 1..=20_000u64 {
        let _ = s.publish_paged(3, id, payload(id), false);
    }
    // What the core holds (taken, not acked) stays; the rest goes.
    let held = page_in(&s, 3, 10, u64::MAX);
    s.sync().wait_blocking().unwrap();
    let before = segments_size(&dir);
    assert!(before > 20_000 * 200, "{before}");
    s.drop_paged(3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        s.sync().wait_blocking().unwrap();
        let st = s.stats();
        if st.live_messages == 10 && segments_size(&dir) < before / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reclaimed: {} live, {} of {before} bytes",
            st.live_messages,
            segments_size(&dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(page_in(&s, 3, 100, u64::MAX).is_empty());
    drop(s);
    let (s, rec) = Store::open(config(&dir, 100)).unwrap();
    let ids: Vec<u64> = rec.queues[0].1.iter().map(|m| m.msg_id).collect();
    assert_eq!(ids, held.iter().map(|m| m.msg_id).collect::<Vec<_>>());
    assert!(rec.paged.is_empty());
    s.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reads_follow_records_that_compaction_moves() {
    let dir = temp_dir("compact");
    let mut cfg = config(&dir, 10);
    cfg.segment_size = 16 << 10;
    let (s, _) = Store::open(cfg).unwrap();
    // Queue 1 keeps one message in every few segments; queue 2's messages are acked,
    // so the segments are mostly dead and get compacted while queue 1's stay paged.
    let mut id = 0u64;
    for round in 0..400u64 {
        id += 1;
        let _ = s.publish_paged(1, id, payload(id), false);
        // Acked once written: an ack that reaches a publish still waiting for the
        // flusher takes it out of the batch, and nothing would be left to compact.
        let first = id + 1;
        let mut last = None;
        for _ in 0..20 {
            id += 1;
            last = Some(s.publish(2, id, payload(id)));
        }
        last.unwrap().wait_blocking().unwrap();
        for acked in first..=id {
            s.ack(2, acked);
        }
        if round % 50 == 0 {
            s.sync().wait_blocking().unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.stats().compactions == 0 {
        assert!(Instant::now() < deadline, "no compaction happened");
        let _ = s.sync().wait_blocking();
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut got = Vec::new();
    loop {
        let b = page_in(&s, 1, 37, u64::MAX);
        if b.is_empty() {
            break;
        }
        got.extend(b);
    }
    let want: Vec<u64> = (0..400u64).map(|r| r * 21 + 1).collect();
    assert_eq!(got.iter().map(|m| m.msg_id).collect::<Vec<_>>(), want);
    assert!(got.iter().all(|m| m.payload == payload(m.msg_id)));
    s.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_shared_record_pages_for_one_queue_and_stays_for_the_others() {
    let dir = temp_dir("shared");
    let (s, _) = Store::open(config(&dir, 10)).unwrap();
    let _ = s.publish_shared(&[4, 5], 1, payload(1));
    s.mark_paged(5, 1);
    let got = page_in(&s, 5, 10, u64::MAX);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, payload(1));
    assert!(
        page_in(&s, 4, 10, u64::MAX).is_empty(),
        "queue 4 holds it in memory"
    );
    s.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
