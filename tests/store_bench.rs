//! Store measurements (ignored by default; run with
//! `CARGO_BUILD_JOBS=1 cargo test --release --test store_bench -- --ignored --nocapture --test-threads 1`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

fn rss_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore]
fn recovery_of_one_million_messages() {
    let dir = temp_dir("bench-recovery");
    let n = 1_000_000u64;
    let mut cfg = StoreConfig::new(&dir);
    cfg.fsync = FsyncPolicy::Never;
    {
        let (s, _) = Store::open(cfg.clone()).unwrap();
        let t = Instant::now();
        let payload = Bytes::from(vec![0xabu8; 100]);
        for i in 1..=n {
            let ticket = s.publish(i % 4, i, payload.clone());
            if i % 10_000 == 0 {
                ticket.wait_blocking().unwrap();
            }
        }
        s.close().unwrap();
        let st = s.stats();
        println!(
            "wrote {n} msgs in {:.2}s, {} MiB on disk in {} segments",
            t.elapsed().as_secs_f64(),
            st.bytes_on_disk >> 20,
            st.segments
        );
    }
    for clean in [true, false] {
        if !clean {
            // Simulate a crash: remove the clean marker.
            std::fs::remove_file(dir.join("CLEAN")).unwrap();
        }
        let before = rss_kib("VmRSS:");
        let t = Instant::now();
        let (s, rec) = Store::open(cfg.clone()).unwrap();
        let elapsed = t.elapsed();
        let after = rss_kib("VmRSS:");
        assert_eq!(rec.stats.messages, n);
        let total: usize = rec.queues.iter().map(|q| q.1.len()).sum();
        assert_eq!(total as u64, n);
        println!(
            "recovered {n} msgs (clean={clean}) in {:.2}s (store says {:.2}s); RSS before {} MiB, after {} MiB (+{} MiB), peak {} MiB",
            elapsed.as_secs_f64(),
            rec.stats.elapsed.as_secs_f64(),
            before >> 10,
            after >> 10,
            (after.saturating_sub(before)) >> 10,
            rss_kib("VmHWM:") >> 10
        );
        drop(rec);
        println!(
            "RSS after dropping the recovered messages: {} MiB",
            rss_kib("VmRSS:") >> 10
        );
        s.close().unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn throughput(waiters: u64, secs: f64) {
    let dir = temp_dir("bench-tput");
    let (s, _) = Store::open(StoreConfig::new(&dir)).unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let hs: Vec<_> = (0..waiters)
        .map(|t| {
            let (s, next, done) = (s.clone(), next.clone(), done.clone());
            std::thread::spawn(move || {
                let payload = Bytes::from(vec![1u8; 100]);
                while start.elapsed().as_secs_f64() < secs {
                    let id = next.fetch_add(1, Ordering::Relaxed) + 1;
                    s.publish(t, id, payload.clone()).wait_blocking().unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let el = start.elapsed().as_secs_f64();
    let st = s.stats();
    let msgs = done.load(Ordering::Relaxed);
    let mut lat = st.recent_fsync_seconds.clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "always, {waiters} waiters: {:.0} msg/s, {:.3} fsyncs/msg, median fdatasync {:.3} ms (p90 {:.3} ms)",
        msgs as f64 / el,
        st.fsyncs_total as f64 / msgs as f64,
        lat[lat.len() / 2] * 1e3,
        lat[lat.len() * 9 / 10] * 1e3,
    );
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore]
fn publish_wait_throughput() {
    for w in [1, 8, 64] {
        throughput(w, 3.0);
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() {
            dir_size(&e.path())
        } else {
            md.len()
        };
    }
    total
}

/// 1 GiB through one queue with the default 32 MiB segments under `always`.
#[test]
#[ignore]
fn one_gib_through_a_queue() {
    let dir = temp_dir("bench-gib");
    let (s, _) = Store::open(StoreConfig::new(&dir)).unwrap();
    let payload = Bytes::from(vec![3u8; 4096]);
    let t = Instant::now();
    let mut id = 0u64;
    let mut max_seen = 0;
    while id * 4096 < (1 << 30) {
        let first = id + 1;
        let mut last = None;
        for _ in 0..256 {
            id += 1;
            last = Some(s.publish(1, id, payload.clone()));
        }
        last.unwrap().wait_blocking().unwrap();
        for i in first..=id {
            s.ack(1, i);
        }
        if id % (256 * 16) == 0 {
            max_seen = max_seen.max(dir_size(&dir));
        }
    }
    s.sync().wait_blocking().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let st = s.stats();
    println!(
        "1 GiB through in {:.1}s: dir at end {} KiB, max sampled {} MiB, segments deleted {}, fsyncs {}",
        t.elapsed().as_secs_f64(),
        dir_size(&dir) / 1024,
        max_seen >> 20,
        st.segments_deleted,
        st.fsyncs_total
    );
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A never-consumed queue interleaved with a busy one, default 32 MiB segments:
/// compaction keeps the directory bounded; reports how long a publish waited at worst.
#[test]
#[ignore]
fn compaction_under_load() {
    let dir = temp_dir("bench-compact");
    let (s, _) = Store::open(StoreConfig::new(&dir)).unwrap();
    let payload = Bytes::from(vec![5u8; 4096]);
    let t = Instant::now();
    let mut id = 0u64;
    let mut max_seen = 0;
    let mut worst = std::time::Duration::ZERO;
    let mut slow = 0u64;
    while id * 4096 < (1 << 30) {
        let first = id + 1;
        let mut last = None;
        for _ in 0..256 {
            id += 1;
            last = Some(s.publish(2, id, payload.clone()));
        }
        id += 1;
        s.publish(1, id, Bytes::from_static(&[9u8; 100]));
        slow += 1;
        let w = Instant::now();
        last.unwrap().wait_blocking().unwrap();
        worst = worst.max(w.elapsed());
        for i in first..first + 256 {
            s.ack(2, i);
        }
        if id % (257 * 16) == 0 {
            max_seen = max_seen.max(dir_size(&dir));
        }
    }
    s.sync().wait_blocking().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let st = s.stats();
    println!(
        "1 GiB through + {slow} never-consumed msgs in {:.1}s: dir at end {} MiB, max sampled {} MiB, compactions {}, worst batch wait {:.1} ms",
        t.elapsed().as_secs_f64(),
        dir_size(&dir) >> 20,
        max_seen >> 20,
        st.compactions,
        worst.as_secs_f64() * 1e3
    );
    s.close().unwrap();
    let (s, rec) = Store::open(StoreConfig::new(&dir)).unwrap();
    assert_eq!(rec.stats.messages, slow);
    println!(
        "reopened: {} msgs in {:.2}s",
        rec.stats.messages,
        rec.stats.elapsed.as_secs_f64()
    );
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
