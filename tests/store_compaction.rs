//! Store: a compaction runs beside the flusher, so waited-for writes (confirms) keep
//! completing while a large segment is being compacted, and nothing is lost or
//! resurrected by it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

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

const Q: u64 = 7;

/// Fills `segments` segments of `seg` bytes with `size`-byte messages of queue `Q`
/// (ids from `first`), then acks three in five of them: more than half of the disk is
/// garbage and every full segment is mostly dead, so compactions follow.
fn fill_and_ack(store: &Store, first: u64, segments: u64, seg: u64, size: usize) -> Vec<u64> {
    let n = segments * seg / size as u64;
    let payload = Bytes::from(vec![0xa5u8; size]);
    let mut last = None;
    for id in first..first + n {
        last = Some(store.publish(Q, id, payload.clone()));
    }
    last.unwrap().wait_blocking().unwrap();
    let mut live = Vec::new();
    for id in first..first + n {
        if id % 5 < 3 {
            store.ack(Q, id);
        } else {
            live.push(id);
        }
    }
    live
}

#[test]
fn sync_writes_complete_while_a_compaction_runs() {
    let dir = temp_dir("compact-concurrent");
    let seg = 16u64 << 20;
    let mut cfg = StoreConfig::new(&dir);
    cfg.fsync = FsyncPolicy::Always;
    cfg.segment_size = seg;
    let (store, _) = Store::open(cfg.clone()).unwrap();
    let mut live = fill_and_ack(&store, 1, 4, seg, 4096);

    // Waited-for publishes of another queue while compactions are under way: with
    // compaction on the flusher thread, none could complete inside one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut during, mut id, mut other) = (0u32, 1_000_000u64, Vec::new());
    while Instant::now() < deadline && (store.stats().compactions < 2 || during == 0) {
        let before = store.stats();
        let t = store.publish(8, id, Bytes::from_static(b"confirm me"));
        other.push(id);
        id += 1;
        t.wait_blocking().unwrap();
        let after = store.stats();
        if before.compacting && after.compacting && before.compactions == after.compactions {
            during += 1;
        }
    }
    let st = store.stats();
    assert!(st.compactions >= 1, "no compaction ran: {st:?}");
    assert!(
        during > 0,
        "no waited-for write completed while a compaction was in progress: {st:?}"
    );
    eprintln!(
        "{during} sync writes completed inside a compaction; {} compactions, {} segments deleted",
        st.compactions, st.segments_deleted
    );

    // A restart finds exactly what is live: nothing lost, nothing acked comes back.
    store.close().unwrap();
    let (store, rec) = Store::open(cfg).unwrap();
    let got: Vec<(u64, Vec<u64>)> = rec
        .queues
        .iter()
        .map(|(q, ms)| (*q, ms.iter().map(|m| m.msg_id).collect()))
        .collect();
    live.sort_unstable();
    assert_eq!(got, vec![(Q, live), (8, other)]);
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Confirm latency (one publisher, publish then wait, `always`) with the store idle and
/// while compactions run. A measurement, not a check: `cargo test --test
/// store_compaction -- --ignored --nocapture`.
#[test]
#[ignore]
fn confirm_latency_during_compaction() {
    let dir = temp_dir("compact-latency");
    let seg = 32u64 << 20;
    let mut cfg = StoreConfig::new(&dir);
    cfg.fsync = FsyncPolicy::Always;
    cfg.segment_size = seg;
    let (store, _) = Store::open(cfg).unwrap();
    let body = Bytes::from(vec![1u8; 1024]);
    let mut id = 10_000_000u64;
    let mut sample = |store: &Store| {
        let t = Instant::now();
        store.publish(9, id, body.clone()).wait_blocking().unwrap();
        id += 1;
        t.elapsed().as_secs_f64() * 1e3
    };
    let mut idle: Vec<f64> = (0..2000).map(|_| sample(&store)).collect();

    fill_and_ack(&store, 1, 6, seg, 4096);
    let start = store.stats().compactions;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut busy = Vec::new();
    // Sample from the acks until the compactions they trigger are done (no compaction
    // for a second).
    let mut last_change = Instant::now();
    let mut seen = start;
    while Instant::now() < deadline && last_change.elapsed() < Duration::from_secs(1) {
        busy.push(sample(&store));
        let c = store.stats().compactions;
        if c != seen {
            seen = c;
            last_change = Instant::now();
        }
    }
    let compactions = store.stats().compactions - start;
    eprintln!(
        "confirm latency ms: idle p50 {:.2} p99 {:.2} max {:.2} ({} samples); \
         during {} compactions p50 {:.2} p99 {:.2} max {:.2} ({} samples)",
        percentile(&mut idle, 0.5),
        percentile(&mut idle, 0.99),
        percentile(&mut idle, 1.0),
        idle.len(),
        compactions,
        percentile(&mut busy, 0.5),
        percentile(&mut busy, 0.99),
        percentile(&mut busy, 1.0),
        busy.len()
    );
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
