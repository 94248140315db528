//! Store: a publish acked before the flusher reaches it is never written, and a
//! delivered mark for one still waiting is folded into its record; what recovery sees
//! is the same as if every record had been written.

mod common;

use bytes::Bytes;
use common::{segments_size, TempDir};
use qgate::store::{FsyncPolicy, Store, StoreConfig};

fn body(id: u64) -> Bytes {
    Bytes::from(format!("{id:08}").repeat(64))
}

#[test]
fn publishes_acked_before_the_flusher_are_not_written() {
    let tmp = TempDir::new();
    let dir = tmp.path();
    let n = 20_000u64;
    {
        let (s, _) = Store::open(StoreConfig::new(dir)).unwrap();
        let empty = segments_size(dir);
        let mut last = None;
        for id in 1..=n {
            last = Some(s.publish(1, id, body(id)));
            if id % 2 == 0 {
                s.ack(1, id);
            }
        }
        // The confirm of an elided publish still means "handled": it completes.
        last.unwrap().wait_blocking().unwrap();
        s.sync().wait_blocking().unwrap();
        let st = s.stats();
        assert!(
            st.publishes_elided >= n / 4,
            "{} of {} acked publishes elided",
            st.publishes_elided,
            n / 2
        );
        assert!(st.publishes_elided <= n / 2);
        assert_eq!(st.live_messages, n / 2);
        // Every elided publish saves its record and its ack: the segments hold at most
        // the odd ids, plus the even ids that were written before their ack came.
        let record = 12 + 18 + 512;
        let written = (n - st.publishes_elided) * record + (n / 2 - st.publishes_elided) * 29;
        let grown = segments_size(dir) - empty;
        assert!(
            grown <= written + 4096,
            "{grown} bytes for {written} expected"
        );
        drop(s); // no clean close: recovery checks every record
    }
    let (s, rec) = Store::open(StoreConfig::new(dir)).unwrap();
    let ids: Vec<u64> = rec.queues[0].1.iter().map(|m| m.msg_id).collect();
    assert_eq!(ids, (1..=n).step_by(2).collect::<Vec<_>>());
    for m in &rec.queues[0].1 {
        assert_eq!(m.payload, body(m.msg_id));
        assert!(!m.delivered);
    }
    s.close().unwrap();
}

#[test]
fn delivered_marks_survive_whether_folded_or_written() {
    let tmp = TempDir::new();
    let dir = tmp.path();
    let n = 5_000u64;
    {
        let mut cfg = StoreConfig::new(dir);
        cfg.fsync = FsyncPolicy::Never;
        let (s, _) = Store::open(cfg).unwrap();
        for id in 1..=n {
            let t = s.publish(7, id, body(id));
            if id % 3 == 0 {
                // Written first: the mark is a record of its own.
                t.wait_blocking().unwrap();
            }
            if id % 3 != 1 {
                s.delivered(7, id);
            }
            if id % 5 == 0 {
                s.ack(7, id);
            }
        }
        s.sync().wait_blocking().unwrap();
        drop(s);
    }
    let (s, rec) = Store::open(StoreConfig::new(dir)).unwrap();
    let got: Vec<(u64, bool)> = rec.queues[0]
        .1
        .iter()
        .map(|m| {
            assert_eq!(m.payload, body(m.msg_id));
            (m.msg_id, m.delivered)
        })
        .collect();
    let want: Vec<(u64, bool)> = (1..=n)
        .filter(|id| id % 5 != 0)
        .map(|id| (id, id % 3 != 1))
        .collect();
    assert_eq!(got, want);
    s.close().unwrap();
}
