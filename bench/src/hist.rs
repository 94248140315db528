//! A small log-linear bucket histogram (HDR-like): exact below 128, then 64 linear
//! sub-buckets per power of two (relative error under 1.6%), any u64 value.

/// Linear sub-buckets per power of two.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets: 2*SUB exact values, then SUB per exponent from SUB_BITS+1 to 63.
const BUCKETS: usize = (2 * SUB + (63 - SUB_BITS as u64) * SUB) as usize;

/// Counts of values (nanoseconds here) in log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let mag = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = mag - SUB_BITS;
    ((shift as u64) * SUB + (v >> shift)) as usize
}

/// Highest value that falls in bucket `i` (so percentiles never understate).
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let top = i - shift * SUB; // in [SUB, 2*SUB)
    let end = ((top as u128 + 1) << shift) - 1;
    end.min(u64::MAX as u128) as u64
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    /// Adds one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), as the top of its bucket; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bounded() {
        let mut prev = 0;
        for v in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(i >= prev || v > 100_000);
            prev = i;
            assert!(upper(i) >= v, "upper({i})={} < {v}", upper(i));
            let err = (upper(i) - v) as f64 / v.max(1) as f64;
            assert!(err <= 1.0 / SUB as f64 + 1e-9, "{v} err {err}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5);
        assert!((500_000..=510_000).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((990_000..=1_000_000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
