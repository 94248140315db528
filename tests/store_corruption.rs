//! Store: torn tails and corrupt records are dropped and reported; the rest is served.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use qgate::store::{Store, StoreConfig};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "qgate-store-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// MaxId record that starts every segment.
const FIRST_RECORD: usize = 12 + 9;
/// A publish record with a 100-byte payload.
const PUBLISH: usize = 12 + 18 + 100;

fn fill(dir: &Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.segment_size = 4096;
    let (s, _) = Store::open(cfg.clone()).unwrap();
    let mut last = None;
    for i in 1..=100u64 {
        last = Some(s.publish(1, i, Bytes::from(vec![(i % 251) as u8; 100])));
    }
    last.unwrap().wait_blocking().unwrap();
    drop(s); // like a crash: no clean marker
    cfg
}

#[test]
fn torn_tail_and_flipped_byte() {
    let dir = temp_dir("corrupt");
    let cfg = fill(&dir);
    let segs = segments(&dir);
    assert!(segs.len() >= 3, "{segs:?}");

    // Flip a payload byte of the third publish of the first segment.
    let first = &segs[0];
    let mut data = std::fs::read(first).unwrap();
    data[FIRST_RECORD + 2 * PUBLISH + 40] ^= 0x5a;
    std::fs::write(first, &data).unwrap();
    // Cut the last segment in the middle of its last record.
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 50)
        .unwrap();

    let (s, rec) = Store::open(cfg.clone()).unwrap();
    let st = &rec.stats;
    assert!(!st.clean_shutdown);
    assert!(st.repaired);
    assert_eq!(st.corrupt_records, 1);
    assert_eq!(st.corrupt_bytes, PUBLISH as u64);
    assert_eq!(st.truncated_bytes, (PUBLISH - 50) as u64);
    assert_eq!(st.messages, 98);
    let ids: Vec<u64> = rec.queues[0].1.iter().map(|m| m.msg_id).collect();
    let want: Vec<u64> = (1..=99).filter(|i| *i != 3).collect();
    assert_eq!(ids, want);
    for m in &rec.queues[0].1 {
        assert_eq!(m.payload, Bytes::from(vec![(m.msg_id % 251) as u8; 100]));
    }
    // The rest is served: ack some, publish more, reopen.
    s.ack(1, 1);
    s.publish(1, 200, Bytes::from_static(b"new"))
        .wait_blocking()
        .unwrap();
    s.close().unwrap();
    let (s, rec) = Store::open(cfg).unwrap();
    assert_eq!(rec.stats.truncated_bytes, 0, "tail was repaired for good");
    assert_eq!(rec.stats.messages, 98);
    assert_eq!(rec.queues[0].1.last().unwrap().msg_id, 200);
    assert_eq!(rec.queues[0].1[0].msg_id, 2);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_tail_and_corrupt_length() {
    let dir = temp_dir("garbage");
    let cfg = fill(&dir);
    let segs = segments(&dir);
    // Zeroes after the last record (a torn write that extended the file).
    let last = segs.last().unwrap();
    OpenOptions::new()
        .append(true)
        .open(last)
        .unwrap()
        .write_all(&[0u8; 1000])
        .unwrap();
    // A corrupt length field in the middle of the second segment.
    let mut data = std::fs::read(&segs[1]).unwrap();
    data[FIRST_RECORD + PUBLISH + 5] ^= 0x40;
    std::fs::write(&segs[1], &data).unwrap();

    let (s, rec) = Store::open(cfg.clone()).unwrap();
    assert_eq!(rec.stats.truncated_bytes, 1000);
    assert_eq!(rec.stats.corrupt_records, 1);
    assert_eq!(rec.stats.messages, 99);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn acked_messages_never_come_back_after_torn_tail() {
    let dir = temp_dir("noresurrect");
    // Big enough segments that no compaction runs: the records after the acks are then
    // exactly the unsynced-looking tail we tear (a real crash can only tear data that
    // was never fsynced, and compaction copies are fsynced before their originals go).
    let cfg = StoreConfig::new(&dir);
    let (s, _) = Store::open(cfg.clone()).unwrap();
    for i in 1..=60u64 {
        s.publish(1, i, Bytes::from(vec![1u8; 100]));
    }
    for i in 1..=30u64 {
        s.ack(1, i);
    }
    // A synced record after the acks makes them durable.
    s.publish(2, 61, Bytes::from_static(b"x"))
        .wait_blocking()
        .unwrap();
    drop(s);
    // Tear the tail (the last publish), acks stay.
    let segs = segments(&dir);
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (s, rec) = Store::open(cfg).unwrap();
    let ids: Vec<u64> = rec
        .queues
        .iter()
        .flat_map(|(_, m)| m.iter().map(|m| m.msg_id))
        .collect();
    assert_eq!(ids, (31..=60).collect::<Vec<_>>());
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
