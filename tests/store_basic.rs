//! Store: publish / ack / reopen, delivered flag, queue deletion, definitions, lock,
//! clean close.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use qgate::store::{FsyncPolicy, Store, StoreConfig, StoreError};

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

fn cfg(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir)
}

fn msgs(rec: &qgate::store::Recovered, queue: u64) -> Vec<(u64, String, bool)> {
    rec.queues
        .iter()
        .find(|(q, _)| *q == queue)
        .map(|(_, m)| {
            m.iter()
                .map(|m| {
                    (
                        m.msg_id,
                        String::from_utf8(m.payload.to_vec()).unwrap(),
                        m.delivered,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn publish_ack_reopen() {
    let dir = temp_dir("basic");
    {
        let (s, rec) = Store::open(cfg(&dir)).unwrap();
        assert!(rec.queues.is_empty());
        assert_eq!(s.max_msg_id(), 0);
        let mut last = None;
        for i in 1..=10u64 {
            last = Some(s.publish(1, i, Bytes::from(format!("m{i}"))));
        }
        s.publish(2, 11, Bytes::from_static(b"other"));
        last.unwrap().wait_blocking().unwrap();
        s.ack(1, 2);
        s.ack(1, 5);
        s.delivered(1, 3);
        s.delivered(1, 4);
        s.ack(1, 4); // delivered then acked: gone
        s.ack(1, 999); // unknown: ignored
        s.close().unwrap();
        s.close().unwrap(); // no-op
    }
    let (s, rec) = Store::open(cfg(&dir)).unwrap();
    assert!(rec.stats.clean_shutdown);
    assert!(!rec.stats.repaired);
    assert_eq!(s.max_msg_id(), 11);
    let q1 = msgs(&rec, 1);
    let ids: Vec<u64> = q1.iter().map(|m| m.0).collect();
    assert_eq!(ids, vec![1, 3, 6, 7, 8, 9, 10]);
    assert_eq!(q1[1], (3, "m3".to_string(), true));
    assert!(!q1[0].2);
    assert_eq!(msgs(&rec, 2), vec![(11, "other".to_string(), false)]);
    assert_eq!(rec.stats.messages, 8);
    assert_eq!(rec.stats.queues, 2);

    // Second generation: ack across a restart, delete a queue, publish more.
    s.ack(1, 1);
    s.delivered(1, 6);
    s.delete_queue(2).wait_blocking().unwrap();
    s.publish(2, 12, Bytes::from_static(b"after delete"))
        .wait_blocking()
        .unwrap();
    drop(s); // not a clean close
    let (s, rec) = Store::open(cfg(&dir)).unwrap();
    assert!(!rec.stats.clean_shutdown);
    let ids: Vec<(u64, bool)> = msgs(&rec, 1).iter().map(|m| (m.0, m.2)).collect();
    assert_eq!(
        ids,
        vec![
            (3, true),
            (6, true),
            (7, false),
            (8, false),
            (9, false),
            (10, false)
        ]
    );
    assert_eq!(msgs(&rec, 2), vec![(12, "after delete".to_string(), false)]);
    assert_eq!(s.max_msg_id(), 12);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn definitions_persist_and_delete() {
    let dir = temp_dir("defs");
    {
        let (s, _) = Store::open(cfg(&dir)).unwrap();
        s.put_definition("queue/a", Bytes::from_static(b"A1"));
        s.put_definition("queue/b", Bytes::from_static(b"B"));
        s.put_definition("queue/a", Bytes::from_static(b"A2"));
        s.put_definition("binding/x", Bytes::from_static(b"\x00\xff"))
            .wait_blocking()
            .unwrap();
        s.delete_definition("queue/b").wait_blocking().unwrap();
        drop(s);
    }
    let (s, rec) = Store::open(cfg(&dir)).unwrap();
    assert_eq!(
        rec.definitions,
        vec![
            ("binding/x".to_string(), Bytes::from_static(b"\x00\xff")),
            ("queue/a".to_string(), Bytes::from_static(b"A2")),
        ]
    );
    s.delete_definition("binding/x").wait_blocking().unwrap();
    s.close().unwrap();
    let (s, rec) = Store::open(cfg(&dir)).unwrap();
    assert_eq!(rec.definitions.len(), 1);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lock_prevents_second_open() {
    let dir = temp_dir("lock");
    let (s, _) = Store::open(cfg(&dir)).unwrap();
    match Store::open(cfg(&dir)) {
        Err(StoreError::Locked(p)) => assert_eq!(p, dir),
        other => panic!("expected Locked, got {other:?}"),
    }
    s.close().unwrap();
    // close() releases the lock even while handles are alive.
    let (s2, _) = Store::open(cfg(&dir)).unwrap();
    drop(s);
    s2.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writes_after_close_fail() {
    let dir = temp_dir("closed");
    let (s, _) = Store::open(cfg(&dir)).unwrap();
    let t = s.publish(1, 1, Bytes::from_static(b"x"));
    s.close().unwrap();
    t.wait_blocking().unwrap(); // flushed by close
    let t = s.publish(1, 2, Bytes::from_static(b"y"));
    assert!(matches!(t.wait_blocking(), Err(StoreError::Closed)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clean_close_then_unclean() {
    let dir = temp_dir("clean");
    let (s, rec) = Store::open(cfg(&dir)).unwrap();
    assert!(!rec.stats.clean_shutdown);
    s.publish(7, 1, Bytes::from_static(b"x"))
        .wait_blocking()
        .unwrap();
    s.close().unwrap();
    assert!(dir.join("CLEAN").exists());
    let (s, rec) = Store::open(cfg(&dir)).unwrap();
    assert!(rec.stats.clean_shutdown, "clean marker honoured");
    assert!(!rec.stats.repaired, "no repair pass after a clean close");
    assert_eq!(rec.stats.truncated_bytes, 0);
    assert!(!dir.join("CLEAN").exists(), "marker consumed at open");
    drop(s); // crash-like: no marker
    let (s, rec) = Store::open(cfg(&dir)).unwrap();
    assert!(!rec.stats.clean_shutdown);
    assert_eq!(rec.stats.messages, 1);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_policies_roundtrip() {
    for policy in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval(Duration::from_millis(20)),
    ] {
        let dir = temp_dir("policy");
        let mut c = cfg(&dir);
        c.fsync = policy;
        let (s, _) = Store::open(c.clone()).unwrap();
        let mut tickets = Vec::new();
        for i in 1..=100u64 {
            tickets.push(s.publish(3, i, Bytes::from(vec![i as u8; 10])));
        }
        for t in tickets {
            t.wait_blocking().unwrap();
        }
        for i in 1..=50u64 {
            s.ack(3, i);
        }
        if let FsyncPolicy::Interval(_) = policy {
            std::thread::sleep(Duration::from_millis(60));
            assert!(
                s.stats().fsyncs_total >= 1,
                "interval policy syncs by itself"
            );
        }
        s.close().unwrap();
        let (s, rec) = Store::open(c).unwrap();
        assert_eq!(rec.stats.messages, 50, "{policy}");
        assert_eq!(rec.queues[0].1[0].msg_id, 51);
        assert_eq!(rec.queues[0].1[0].payload, Bytes::from(vec![51u8; 10]));
        s.close().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_wait_and_is_done() {
    let dir = temp_dir("async");
    let (s, _) = Store::open(cfg(&dir)).unwrap();
    let t = s.publish(1, 1, Bytes::from_static(b"a"));
    let seq = t.seq();
    t.wait().await.unwrap();
    assert!(s.stats().synced_seq >= seq);
    let t = s.put_definition("k", Bytes::from_static(b"v"));
    t.wait().await.unwrap();
    let t = s.publish(1, 2, Bytes::from_static(b"b"));
    while !t.is_done() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t.wait().await.unwrap();
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.close())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn handles_are_send_sync() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Store>();
    let dir = temp_dir("send");
    let (s, _) = Store::open(cfg(&dir)).unwrap();
    let t = s.publish(1, 1, Bytes::from_static(b"x"));
    send(&t);
    let fut = t.wait();
    send(&fut);
    drop(fut);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One message id in several queues (fanout), ids published far out of order and
/// whole queues drained: each (queue, id) is tracked on its own and every queue comes
/// back in id order, whatever order the ids were written in.
#[test]
fn shared_ids_and_out_of_order_ids() {
    let dir = temp_dir("ooo");
    let mut c = cfg(&dir);
    c.fsync = FsyncPolicy::Never;
    c.segment_size = 64 << 10;
    {
        let (s, _) = Store::open(c.clone()).unwrap();
        // Same id in queues 1, 2 and 3.
        for q in 1..=3 {
            s.publish(q, 7, Bytes::from(format!("q{q}")));
        }
        // Queue 4: 5000 ids written newest first (every insert far from the end),
        // then every third acked and the rest of the first 100 marked delivered.
        for id in (1000..6000u64).rev() {
            s.publish(4, id, Bytes::from(format!("m{id}")));
        }
        for id in (1000..6000u64).step_by(3) {
            s.ack(4, id);
        }
        for id in 1000..1100u64 {
            s.delivered(4, id);
        }
        // Queue 5: filled and drained, then one more far later id.
        for id in 10_000..12_000u64 {
            s.publish(5, id, Bytes::from_static(b"x"));
        }
        for id in 10_000..12_000u64 {
            s.ack(5, id);
        }
        s.publish(5, 1 << 40, Bytes::from_static(b"late"));
        s.ack(1, 7);
        s.delete_queue(3);
        s.sync().wait_blocking().unwrap();
    }
    let (s, rec) = Store::open(c).unwrap();
    assert!(msgs(&rec, 1).is_empty());
    assert_eq!(msgs(&rec, 2), vec![(7, "q2".to_string(), false)]);
    assert!(msgs(&rec, 3).is_empty());
    let want: Vec<_> = (1000..6000u64)
        .filter(|id| (id - 1000) % 3 != 0)
        .map(|id| (id, format!("m{id}"), id < 1100))
        .collect();
    assert_eq!(msgs(&rec, 4), want);
    assert_eq!(msgs(&rec, 5), vec![(1 << 40, "late".to_string(), false)]);
    assert_eq!(s.max_msg_id(), 1 << 40);
    assert_eq!(s.stats().live_messages, 1 + want.len() as u64 + 1);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
