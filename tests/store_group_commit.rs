//! Store: under `always`, a ticket never completes before the fsync covering its record
//! returned, and concurrent publishers share fsyncs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

#[test]
fn eight_threads_share_fsyncs() {
    let dir = temp_dir("gc-threads");
    let (s, _) = Store::open(StoreConfig::new(&dir)).unwrap();
    let threads = 8u64;
    let per_thread = 200u64;
    let next_id = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let s = s.clone();
            let next_id = next_id.clone();
            std::thread::spawn(move || {
                let payload = Bytes::from(vec![t as u8; 100]);
                for _ in 0..per_thread {
                    let id = next_id.fetch_add(1, Ordering::Relaxed) + 1;
                    let ticket = s.publish(t, id, payload.clone());
                    let seq = ticket.seq();
                    ticket.wait_blocking().unwrap();
                    let synced = s.synced_seq();
                    assert!(
                        synced >= seq,
                        "ticket {seq} completed before sync ({synced})"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed();
    let st = s.stats();
    let msgs = threads * per_thread;
    println!(
        "8 threads: {msgs} msgs in {:.2}s = {:.0} msg/s, fsyncs {} ({:.3} fsyncs/msg)",
        elapsed.as_secs_f64(),
        msgs as f64 / elapsed.as_secs_f64(),
        st.fsyncs_total,
        st.fsyncs_total as f64 / msgs as f64
    );
    assert!(st.fsyncs_total < msgs, "group commit shares fsyncs");
    assert!(st.synced_seq >= msgs);
    s.close().unwrap();
    let (s, rec) = Store::open(StoreConfig::new(&dir)).unwrap();
    assert_eq!(rec.stats.messages, msgs);
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tasks_share_fsyncs() {
    let dir = temp_dir("gc-tasks");
    let (s, _) = Store::open(StoreConfig::new(&dir)).unwrap();
    let tasks = 8u64;
    let per_task = 200u64;
    let next_id = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut js = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let s = s.clone();
        let next_id = next_id.clone();
        js.spawn(async move {
            let payload = Bytes::from(vec![t as u8; 100]);
            for _ in 0..per_task {
                let id = next_id.fetch_add(1, Ordering::Relaxed) + 1;
                let ticket = s.publish(t, id, payload.clone());
                let seq = ticket.seq();
                ticket.wait().await.unwrap();
                assert!(s.synced_seq() >= seq, "ticket {seq} completed before sync");
            }
        });
    }
    while let Some(r) = js.join_next().await {
        r.unwrap();
    }
    let elapsed = start.elapsed();
    let st = s.stats();
    let msgs = tasks * per_task;
    println!(
        "8 tasks: {msgs} msgs in {:.2}s = {:.0} msg/s, fsyncs {} ({:.3} fsyncs/msg)",
        elapsed.as_secs_f64(),
        msgs as f64 / elapsed.as_secs_f64(),
        st.fsyncs_total,
        st.fsyncs_total as f64 / msgs as f64
    );
    assert!(st.fsyncs_total < msgs);
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.close())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An idle store adds no delay: one publisher waiting each time gets one fsync each.
#[test]
fn single_waiter_one_fsync_each() {
    let dir = temp_dir("gc-single");
    let (s, _) = Store::open(StoreConfig::new(&dir)).unwrap();
    let start = Instant::now();
    let n = 200u64;
    for i in 1..=n {
        s.publish(1, i, Bytes::from_static(&[0u8; 100]))
            .wait_blocking()
            .unwrap();
    }
    let elapsed = start.elapsed();
    let st = s.stats();
    let mut lat = st.recent_fsync_seconds.clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "1 waiter: {n} msgs in {:.2}s = {:.0} msg/s, fsyncs {}, median fdatasync {:.3} ms, p99 {:.3} ms",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        st.fsyncs_total,
        lat[lat.len() / 2] * 1e3,
        lat[lat.len() * 99 / 100] * 1e3
    );
    assert!(st.fsyncs_total >= n, "each waited publish is synced");
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
