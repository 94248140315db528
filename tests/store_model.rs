//! Store: randomized operations against a simple model, with tiny segments so that
//! rolling, reclamation and compaction run constantly, and reopens (clean and not)
//! in between. Whatever recovery returns must match the model exactly.

use std::collections::BTreeMap;
use std::path::PathBuf;

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

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Model = BTreeMap<u64, BTreeMap<u64, (Bytes, bool)>>;

fn check(model: &Model, rec: &qgate::store::Recovered, round: u32) {
    let got: Model = rec
        .queues
        .iter()
        .map(|(q, ms)| {
            let mut prev = 0;
            let m = ms
                .iter()
                .map(|m| {
                    assert!(m.msg_id > prev, "order");
                    prev = m.msg_id;
                    (m.msg_id, (m.payload.clone(), m.delivered))
                })
                .collect();
            (*q, m)
        })
        .collect();
    let want: Model = model
        .iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(q, m)| (*q, m.clone()))
        .collect();
    if got != want {
        for (q, m) in &want {
            let g = got.get(q);
            for (id, v) in m {
                if g.and_then(|g| g.get(id)) != Some(v) {
                    panic!("round {round}: queue {q} msg {id} missing or different: want len {} delivered {}, got {:?}", v.0.len(), v.1, g.and_then(|g| g.get(id)).map(|x| (x.0.len(), x.1)));
                }
            }
        }
        for (q, m) in &got {
            for id in m.keys() {
                if want.get(q).and_then(|w| w.get(id)).is_none() {
                    panic!("round {round}: queue {q} msg {id} resurrected");
                }
            }
        }
    }
}

fn run(seed: u64, policy: FsyncPolicy) {
    let dir = temp_dir("model");
    let mut cfg = StoreConfig::new(&dir);
    cfg.segment_size = 4096;
    cfg.fsync = policy;
    let mut rng = Rng(seed);
    let mut model: Model = BTreeMap::new();
    let mut next_id = 0u64;
    let (mut s, _) = Store::open(cfg.clone()).unwrap();
    let mut compactions = 0u64;
    for round in 0..12u32 {
        for _ in 0..3000 {
            let op = rng.below(100);
            let q = rng.below(4);
            if op < 45 {
                next_id += 1;
                let len = rng.below(300) as usize;
                let p = Bytes::from(vec![(next_id % 256) as u8; len]);
                if rng.below(4) == 0 {
                    // A fanout: one body for a random subset of the queues (always q).
                    let mut qs = vec![q];
                    qs.extend((0..4).filter(|&o| o != q && rng.below(2) == 0));
                    s.publish_shared(&qs, next_id, p.clone());
                    for q in qs {
                        model
                            .entry(q)
                            .or_default()
                            .insert(next_id, (p.clone(), false));
                    }
                } else {
                    s.publish(q, next_id, p.clone());
                    model.entry(q).or_default().insert(next_id, (p, false));
                }
            } else if op < 85 {
                // Ack: mostly the head (a FIFO consumer), sometimes a random one.
                // Queue 0 is a slow consumer: its old messages pin segments.
                if q == 0 && rng.below(8) != 0 {
                    continue;
                }
                let m = model.entry(q).or_default();
                if m.is_empty() {
                    continue;
                }
                let idx = if rng.below(4) == 0 {
                    rng.below(m.len() as u64) as usize
                } else {
                    0
                };
                let id = *m.keys().nth(idx).unwrap();
                m.remove(&id);
                s.ack(q, id);
            } else if op < 97 {
                let m = model.entry(q).or_default();
                if m.is_empty() {
                    continue;
                }
                let idx = rng.below(m.len() as u64) as usize;
                let id = *m.keys().nth(idx).unwrap();
                m.get_mut(&id).unwrap().1 = true;
                s.delivered(q, id);
            } else if op < 98 {
                model.remove(&q);
                s.delete_queue(q);
            } else {
                // Ack of something unknown or long gone: must be harmless.
                // (A random id can be live in q: then it is a real ack, and the model
                // follows.)
                let id = rng.below(next_id + 1);
                if let Some(m) = model.get_mut(&q) {
                    m.remove(&id);
                }
                s.ack(q, id);
            }
        }
        // Anything acked at random above may have been acked already; the model is
        // the truth. Reopen, cleanly or not.
        s.sync().wait_blocking().unwrap();
        // Reclamation runs right after the batch; give it a moment, then the directory
        // must be proportional to what is live.
        let mut tries = 0;
        let st = loop {
            let st = s.stats();
            if st.bytes_on_disk < 64 * 1024 + 3 * st.live_bytes || tries == 200 {
                break st;
            }
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        compactions += st.compactions;
        assert!(
            st.bytes_on_disk < 64 * 1024 + 3 * st.live_bytes,
            "disk {} for {} live bytes",
            st.bytes_on_disk,
            st.live_bytes
        );
        if round % 2 == 0 {
            s.close().unwrap();
        }
        drop(s);
        let (s2, rec) = Store::open(cfg.clone()).unwrap();
        assert_eq!(rec.stats.clean_shutdown, round % 2 == 0);
        assert!(!rec.stats.repaired);
        check(&model, &rec, round);
        assert!(s2.max_msg_id() <= next_id);
        s = s2;
    }
    let st = s.stats();
    println!(
        "seed {seed} {policy}: live {} msgs, disk {} KiB in {} segments, compactions {}",
        st.live_messages,
        st.bytes_on_disk / 1024,
        st.segments,
        compactions
    );
    s.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_never() {
    for seed in [1, 2, 3] {
        run(0x9e37_79b9_7f4a_7c15 ^ seed, FsyncPolicy::Never);
    }
}

#[test]
fn model_always() {
    run(0x1234_5678_9abc_def1, FsyncPolicy::Always);
}
