//! How long the flusher lets a batch gather before its fsync (group commit under
//! `--fsync always`), learned from the batches before it.
//!
//! Every fsync costs the broker about the same CPU (the syscall, the wake-ups around it,
//! one confirm per publishing channel), however many records it covers, so under load a
//! bigger batch is a cheaper message. Waiting only pays while writers keep records
//! coming: a writer with one record in flight (memcache `set` at pipeline 1, a publisher
//! confirming each message) sends the next only after this fsync, and any wait is pure
//! latency to it.
//!
//! So the flusher waits for as many records as the last batch had (PostgreSQL's
//! commit_delay/commit_siblings, adaptive: a lone writer or an idle broker never waits),
//! for at most one fsync time. Now and then it also tries for half as many again, for at
//! most four fsync times: when they come (many writers, many records in flight each, as
//! on a broker whose cores are saturated) the batches grow and fsyncs get rarer; when
//! they do not (the writers' records are all in this batch already) the try costs that
//! wait once, and the next one comes only after twice as many batches (up to
//! [`MAX_BACKOFF`]), so writers with little in flight lose almost nothing to it.

use std::time::Duration;

/// Longest wait for the records the last batch had.
const WAIT: Duration = Duration::from_millis(1);
/// Longest wait when trying for more.
const GROW_WAIT: Duration = Duration::from_millis(4);
/// Most batches between two tries that failed in a row.
pub(crate) const MAX_BACKOFF: u32 = 256;

#[derive(Debug)]
pub(crate) struct GroupCommit {
    /// Records in the last batch.
    last: u64,
    /// Batches to take before the next try.
    skip: u32,
    /// Batches to skip after the next failed try.
    backoff: u32,
    /// This batch is a try.
    trying: bool,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            last: 0,
            skip: 0,
            backoff: 1,
            trying: false,
        }
    }
}

impl GroupCommit {
    /// How many records to let this batch gather and for how long at most, given the
    /// last fsync's duration. `None`: take the batch as it is.
    pub(crate) fn plan(&mut self, fsync: Duration) -> Option<(u64, Duration)> {
        self.trying = false;
        if self.last <= 1 {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Some((self.last, fsync.min(WAIT)));
        }
        self.trying = true;
        Some((self.last + self.last / 2, (fsync * 4).min(GROW_WAIT)))
    }

    /// The batch was taken with `records` records; `reached` says whether it got the
    /// planned count.
    pub(crate) fn taken(&mut self, records: u64, reached: bool) {
        self.last = records;
        if !self.trying {
            return;
        }
        if reached {
            self.backoff = 1;
        } else {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSYNC: Duration = Duration::from_micros(700);

    /// Runs `cycles` batches where `arrive(target)` records come in before the wait
    /// ends; returns the batch sizes and the waits that ended without their target.
    fn run(cycles: usize, first: u64, arrive: impl Fn(Option<u64>) -> u64) -> (Vec<u64>, usize) {
        let mut gc = GroupCommit::default();
        gc.taken(first, true);
        let (mut sizes, mut missed) = (Vec::new(), 0);
        for _ in 0..cycles {
            let plan = gc.plan(FSYNC);
            let got = arrive(plan.map(|(n, _)| n));
            let reached = plan.is_none_or(|(n, _)| got >= n);
            if !reached {
                missed += 1;
            }
            gc.taken(got, reached);
            sizes.push(got);
        }
        (sizes, missed)
    }

    #[test]
    fn a_lone_writer_never_waits() {
        let mut gc = GroupCommit::default();
        for _ in 0..10 {
            assert_eq!(gc.plan(FSYNC), None);
            gc.taken(1, true);
        }
    }

    #[test]
    fn writers_with_one_record_in_flight_rarely_pay_for_a_try() {
        // Four writers, one record each: a batch never has more than 4.
        let (sizes, missed) = run(10_000, 4, |_| 4);
        assert!(sizes.iter().all(|&n| n == 4));
        // Tries back off to one in MAX_BACKOFF batches.
        assert!(
            missed < 10_000 / MAX_BACKOFF as usize + 12,
            "{missed} waits in vain"
        );
    }

    #[test]
    fn batches_grow_while_records_keep_coming() {
        // Many records in flight: whatever is asked for arrives, up to 400 a batch.
        let (sizes, _) = run(50, 100, |want| want.unwrap_or(100).min(400));
        assert_eq!(*sizes.last().unwrap(), 400);
    }

    #[test]
    fn plain_waits_are_bounded_by_one_fsync_and_tries_by_four() {
        let mut gc = GroupCommit::default();
        gc.taken(10, true);
        assert_eq!(gc.plan(FSYNC), Some((15, FSYNC * 4)));
        gc.taken(10, false);
        assert_eq!(gc.plan(FSYNC), Some((10, FSYNC)));
        gc.taken(10, true);
        assert_eq!(gc.plan(Duration::from_secs(1)), Some((15, GROW_WAIT)));
        gc.taken(12, false);
        // Failed twice in a row: two plain batches before the next try.
        assert_eq!(gc.plan(Duration::from_secs(1)), Some((12, WAIT)));
        gc.taken(12, true);
        assert_eq!(gc.plan(FSYNC), Some((12, FSYNC)));
        gc.taken(12, true);
        assert_eq!(gc.plan(FSYNC), Some((18, FSYNC * 4)));
    }
}
