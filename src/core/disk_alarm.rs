//! The disk alarm: when the free space on the data directory's file system falls
//! below a limit, publishers are blocked (through [`super::flow::FlowControl`]) until
//! it rises above it again — RabbitMQ's `disk_free_limit`, with its defaults, units and
//! check cadence, so that the store never has to refuse a write it already promised.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// RabbitMQ's default `disk_free_limit.absolute` (3.10): 50 MB.
pub const DEFAULT_LIMIT: &str = "50MB";

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

/// Parses a free-space limit the way RabbitMQ does: a byte count, a number with one of
/// RabbitMQ's information units (`k`/`KiB`/`m`/`MiB`/`g`/`GiB` are powers of 1024,
/// `kB`/`KB`/`MB`/`GB` powers of 1000), or `mem_relative:<f>` (that fraction, or
/// multiple, of physical memory). `0` turns the alarm off.
pub fn parse_limit(value: &str, physical: u64) -> Result<u64, String> {
    let v = value.trim();
    if let Some(f) = v
        .strip_prefix("mem_relative:")
        .or_else(|| v.strip_prefix("mem_relative,"))
    {
        return match f.trim().parse::<f64>() {
            Ok(f) if f.is_finite() && f >= 0.0 => Ok((physical as f64 * f) as u64),
            _ => Err(format!(
                "'{v}': mem_relative needs a non-negative number (e.g. mem_relative:1.0)"
            )),
        };
    }
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = v.split_at(digits);
    let bad = || {
        format!(
            "'{v}' is neither a size (50MB, 1GB, 2GiB, bytes) nor mem_relative:<fraction of RAM>"
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" | "kiB" | "KiB" | "KIB" | "kib" => 1 << 10,
        "m" | "M" | "MiB" | "MIB" | "mib" => 1 << 20,
        "g" | "G" | "GiB" | "GIB" | "gib" => 1 << 30,
        "KB" | "kB" | "kb" | "Kb" => 1_000,
        "MB" | "mB" | "mb" | "Mb" => 1_000_000,
        "GB" | "gB" | "gb" | "Gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

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
    fn limits_parse_like_rabbitmq() {
        let gib = 1u64 << 30;
        assert_eq!(parse_limit("50MB", gib).unwrap(), 50_000_000);
        assert_eq!(parse_limit("1GB", gib).unwrap(), 1_000_000_000);
        assert_eq!(parse_limit("2GiB", gib).unwrap(), 2 * gib);
        assert_eq!(parse_limit("512M", gib).unwrap(), 512 << 20);
        assert_eq!(parse_limit("10kB", gib).unwrap(), 10_000);
        assert_eq!(parse_limit("10k", gib).unwrap(), 10_240);
        assert_eq!(parse_limit("123456", gib).unwrap(), 123_456);
        assert_eq!(parse_limit("0", gib).unwrap(), 0);
        assert_eq!(parse_limit("mem_relative:1.5", gib).unwrap(), gib * 3 / 2);
        assert_eq!(parse_limit("mem_relative,0.5", gib).unwrap(), gib / 2);
        for bad in [
            "",
            "MB",
            "50 XB",
            "-1",
            "1.5GB",
            "mem_relative:",
            "mem_relative:-1",
        ] {
            assert!(parse_limit(bad, gib).is_err(), "{bad}");
        }
        assert!(parse_limit("99999999999999999999GB", gib).is_err());
    }

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
