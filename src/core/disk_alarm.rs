//! The disk alarm: when the free space on the data directory's file system falls
//! below a limit, publishers are blocked (through [`super::flow::FlowControl`]) until
//! it rises above it again — RabbitMQ's `disk_free_limit`, with its defaults, units and
//! check cadence, so that the store never has to refuse a write it already promised.
//! The limit's grammar is the config's ([`crate::config::DiskFreeLimit`]).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Fastest rate at which the disk is assumed to fill, in bytes per second (RabbitMQ's
/// `FAST_RATE`, 250 MB/s): the next check comes before the free space could have
/// dropped from where it is to the limit at that rate.
const FAST_RATE: u64 = 250_000_000;
/// Shortest and longest time between two checks (RabbitMQ's defaults).
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(10);
/// While the alarm is on, how often to look whether space came back. RabbitMQ waits
/// its longest interval (10 s); publishers resume sooner this way, for one `statvfs`
/// a second.
const ALARMED_INTERVAL: Duration = Duration::from_secs(1);

/// Free space available to an unprivileged writer on the file system holding `path`
/// (`statvfs`'s `f_bavail`: the root reserve does not count, as for RabbitMQ's `df`).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` a zeroed out-parameter of
    // the right type; statvfs writes only into it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// State of the disk alarm.
#[derive(Debug, Default)]
pub struct DiskAlarm {
    limit: AtomicU64,
    available: AtomicU64,
    alarmed: AtomicBool,
}

impl DiskAlarm {
    /// The limit in bytes (0 = off).
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Sets the limit (0 = off); takes effect at the next check.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Free bytes seen by the last check.
    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }

    /// True while free space is below the limit.
    pub fn is_alarmed(&self) -> bool {
        self.alarmed.load(Ordering::Acquire)
    }

    /// Records a measurement; returns `Some(new state)` when the alarm changed.
    pub(crate) fn record(&self, free: u64) -> Option<bool> {
        self.available.store(free, Ordering::Relaxed);
        let limit = self.limit();
        let alarmed = limit != 0 && free < limit;
        (self.alarmed.swap(alarmed, Ordering::AcqRel) != alarmed).then_some(alarmed)
    }

    /// When to check next (RabbitMQ's cadence: sooner the nearer the limit).
    pub fn next_interval(&self) -> Duration {
        let limit = self.limit();
        if limit == 0 {
            return MAX_INTERVAL;
        }
        if self.is_alarmed() {
            return ALARMED_INTERVAL;
        }
        let headroom = self.available().saturating_sub(limit);
        let ideal = Duration::from_secs_f64(2.0 * headroom as f64 / FAST_RATE as f64);
        ideal.clamp(MIN_INTERVAL, MAX_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_and_cadence() {
        let a = DiskAlarm::default();
        a.set_limit(1_000_000_000);
        assert_eq!(a.record(5_000_000_000), None);
        // 4 GB of headroom at 250 MB/s: 32 s ideal, capped at 10 s.
        assert_eq!(a.next_interval(), MAX_INTERVAL);
        assert_eq!(a.record(1_010_000_000), None);
        assert_eq!(a.next_interval(), MIN_INTERVAL);
        assert_eq!(a.record(999_999_999), Some(true));
        assert!(a.is_alarmed());
        assert_eq!(a.next_interval(), ALARMED_INTERVAL);
        assert_eq!(a.record(999_999_999), None);
        assert_eq!(a.record(1_000_000_000), Some(false));
        a.set_limit(0);
        assert_eq!(a.record(0), None);
        assert!(!a.is_alarmed());
        assert!(free_bytes(Path::new("/")).unwrap() > 0);
        assert!(free_bytes(Path::new("/nonexistent/qgate")).is_err());
    }
}
