//! Store: acked messages are reclaimed, so the directory stays proportional to what is
//! still queued.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use qgate::store::{FsyncPolicy, Store, StoreConfig};

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

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        // The flusher deletes segments concurrently: one listed may be gone already.
        let md = match e.metadata() {
            Ok(md) => md,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => panic!("{}: {err}", e.path().display()),
        };
        total += if md.is_dir() {
            dir_size(&e.path())
        } else {
            md.len()
        };
    }
    total
}

const MIB: u64 = 1 << 20;

#[test]
fn two_hundred_mib_through_one_queue() {
    let dir = temp_dir("reclaim");
    let mut cfg = StoreConfig::new(&dir);
    cfg.segment_size = MIB;
    let (s, _) = Store::open(cfg.clone()).unwrap();
    let payload = Bytes::from(vec![7u8; 4096]);
    let total = 200 * MIB;
    let per_batch = 256u64;
    let mut id = 0u64;
    let mut max_seen = 0;
    while id * 4096 < total {
        let first = id + 1;
        let mut last = None;
        for _ in 0..per_batch {
            id += 1;
            last = Some(s.publish(1, id, payload.clone()));
        }
        last.unwrap().wait_blocking().unwrap();
        for i in first..=id {
            s.ack(1, i);
        }
        max_seen = max_seen.max(dir_size(&dir));
    }
    // One more synced record so the flusher has processed every ack.
    s.publish(2, id + 1, Bytes::from_static(b"tail"))
        .wait_blocking()
        .unwrap();
    let st = s.stats();
    let end = dir_size(&dir);
    println!(
        "passed {} MiB: dir at end {} KiB, max during run {} KiB, segments {}, deleted {}, compactions {}",
        total / MIB,
        end / 1024,
        max_seen / 1024,
        st.segments,
        st.segments_deleted,
        st.compactions
    );
    assert!(end < 3 * MIB, "directory holds {end} bytes");
    assert!(max_seen < 8 * MIB, "directory peaked at {max_seen} bytes");
    s.close().unwrap();
    let (s, rec) = Store::open(cfg).unwrap();
    assert_eq!(rec.stats.messages, 1);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A queue that is never consumed, interleaved with a busy one: the few old live
/// messages must not pin every segment (compaction copies them forward) and must come
/// back in order.
#[test]
fn slow_queue_does_not_pin_segments() {
    let dir = temp_dir("pin");
    let mut cfg = StoreConfig::new(&dir);
    cfg.segment_size = MIB;
    cfg.fsync = FsyncPolicy::Never;
    let (s, _) = Store::open(cfg.clone()).unwrap();
    let payload = Bytes::from(vec![1u8; 2048]);
    let mut id = 0u64;
    let mut slow = Vec::new();
    let mut delivered = Vec::new();
    let mut max_seen = 0;
    for round in 0..400u64 {
        let first = id + 1;
        let mut last = None;
        for _ in 0..64 {
            id += 1;
            last = Some(s.publish(2, id, payload.clone()));
        }
        // One message for the slow queue per round (~128 KiB of traffic).
        id += 1;
        s.publish(1, id, Bytes::from(format!("slow-{id}")));
        slow.push(id);
        if round % 3 == 0 {
            s.delivered(1, id);
            delivered.push(id);
        }
        last.unwrap().wait_blocking().unwrap();
        for i in first..first + 64 {
            s.ack(2, i);
        }
        max_seen = max_seen.max(dir_size(&dir));
    }
    s.publish(3, id + 1, Bytes::from_static(b"x"))
        .wait_blocking()
        .unwrap();
    let st = s.stats();
    let end = dir_size(&dir);
    println!(
        "50 MiB through with a slow queue: dir at end {} KiB, max {} KiB, compactions {}, deleted {}",
        end / 1024,
        max_seen / 1024,
        st.compactions,
        st.segments_deleted
    );
    assert!(st.compactions > 0);
    assert!(max_seen < 10 * MIB, "directory peaked at {max_seen} bytes");
    drop(s);
    let (s, rec) = Store::open(cfg).unwrap();
    let q1 = &rec.queues.iter().find(|q| q.0 == 1).unwrap().1;
    let ids: Vec<u64> = q1.iter().map(|m| m.msg_id).collect();
    assert_eq!(ids, slow);
    for m in q1 {
        assert_eq!(m.payload, Bytes::from(format!("slow-{}", m.msg_id)));
        assert_eq!(m.delivered, delivered.contains(&m.msg_id), "{}", m.msg_id);
    }
    assert!(rec.queues.iter().all(|q| q.0 != 2), "acked queue is empty");
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A message routed to ten queues is one record: the directory grows by the body once,
/// recovery gives it back to each queue (sharing one buffer), and it is reclaimed only
/// when the last queue acks it.
#[test]
fn fanout_body_is_stored_once_and_reclaimed_with_the_last_ack() {
    let dir = temp_dir("fanout");
    let mut cfg = StoreConfig::new(&dir);
    cfg.segment_size = 4 * MIB;
    let queues: Vec<u64> = (1..=10).collect();
    let n = 1000u64;
    let payload = Bytes::from(vec![3u8; 4096]);
    {
        let (s, _) = Store::open(cfg.clone()).unwrap();
        let mut last = None;
        for id in 1..=n {
            last = Some(s.publish_shared(&queues, id, payload.clone()));
        }
        last.unwrap().wait_blocking().unwrap();
        let size = dir_size(&dir);
        let body_bytes = n * payload.len() as u64;
        println!(
            "fanout to 10: {} KiB for {} KiB of bodies",
            size / 1024,
            body_bytes / 1024
        );
        assert!(
            size < body_bytes * 13 / 10,
            "{size} bytes for {body_bytes} of bodies"
        );
        // Nine queues take everything; queue 10 keeps every message alive.
        for q in 1..=9 {
            for id in 1..=n {
                s.ack(q, id);
            }
        }
        s.sync().wait_blocking().unwrap();
        s.close().unwrap();
    }
    let (s, rec) = Store::open(cfg.clone()).unwrap();
    assert_eq!(rec.queues.len(), 1);
    let (q, msgs) = &rec.queues[0];
    assert_eq!(*q, 10);
    assert_eq!(msgs.len() as u64, n);
    assert!(msgs
        .iter()
        .zip(1..)
        .all(|(m, id)| m.msg_id == id && m.payload == payload));
    for id in 1..=n {
        s.ack(10, id);
    }
    // A synced record in a fresh batch, so the acks have been applied and reclaimed.
    s.publish(11, n + 1, Bytes::from_static(b"tail"))
        .wait_blocking()
        .unwrap();
    let mut tries = 0;
    while dir_size(&dir) > MIB && tries < 200 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        s.sync().wait_blocking().unwrap();
        tries += 1;
    }
    let end = dir_size(&dir);
    assert!(
        end < MIB,
        "directory still holds {end} bytes after the last ack"
    );
    s.close().unwrap();
    let (s, rec) = Store::open(cfg).unwrap();
    assert_eq!(rec.stats.messages, 1);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
