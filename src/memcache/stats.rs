//! Counters of the memcache front end, as memcacheq's `stats` reports them (memcached's
//! extra fields follow). One process global (the listener is one per process); the
//! metrics exporter reads them too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// memcache front-end counters.
#[derive(Debug, Default)]
pub struct MemcacheCounters {
    /// Open connections.
    pub curr_connections: AtomicU64,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// The most connections open at once since start, which is how many connection
    /// structures memcacheq has allocated (it reuses freed ones, never frees them).
    pub peak_connections: AtomicU64,
    /// Keys looked up by `get` (each key that fetches or peeks counts once):
    /// memcacheq's `get_cmds`, memcached's `cmd_get`.
    pub cmd_get: AtomicU64,
    /// Completed `set` commands (data block read, also one answered `CLIENT_ERROR bad
    /// data chunk`): memcacheq's `set_cmds`, memcached's `cmd_set`.
    pub cmd_set: AtomicU64,
    /// `set` commands answered `STORED`: memcacheq's `set_hits`.
    pub set_hits: AtomicU64,
    /// `delete` commands.
    pub cmd_delete: AtomicU64,
    /// `get` keys that returned a message.
    pub get_hits: AtomicU64,
    /// `get` keys that found nothing.
    pub get_misses: AtomicU64,
    /// Bytes read from clients.
    pub bytes_read: AtomicU64,
    /// Bytes written to clients.
    pub bytes_written: AtomicU64,
    /// The counts at the last `stats reset`.
    baseline: parking_lot::Mutex<Totals>,
}

impl MemcacheCounters {
    /// A connection opened: counts it and raises the high-water mark.
    pub fn connection_opened(&self) {
        self.total_connections.fetch_add(1, Ordering::Relaxed);
        let now = self.curr_connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connections.fetch_max(now, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.curr_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// `stats reset`: from now on `stats` counts from zero what memcacheq's
    /// `stats_reset` zeroes (the totals and the command, hit and byte counts). Gauges
    /// (current connections) and the connection structures are state and stay. The
    /// counters themselves keep running, so the Prometheus series stay monotonic.
    pub fn reset(&self) {
        *self.baseline.lock() = self.totals();
    }

    /// The resettable counts as `stats` shows them: since start or the last reset.
    pub fn since_reset(&self) -> Totals {
        let now = self.totals();
        let base = *self.baseline.lock();
        Totals {
            total_connections: now.total_connections.saturating_sub(base.total_connections),
            cmd_get: now.cmd_get.saturating_sub(base.cmd_get),
            cmd_set: now.cmd_set.saturating_sub(base.cmd_set),
            set_hits: now.set_hits.saturating_sub(base.set_hits),
            cmd_delete: now.cmd_delete.saturating_sub(base.cmd_delete),
            get_hits: now.get_hits.saturating_sub(base.get_hits),
            get_misses: now.get_misses.saturating_sub(base.get_misses),
            bytes_read: now.bytes_read.saturating_sub(base.bytes_read),
            bytes_written: now.bytes_written.saturating_sub(base.bytes_written),
        }
    }

    fn totals(&self) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            total_connections: get(&self.total_connections),
            cmd_get: get(&self.cmd_get),
            cmd_set: get(&self.cmd_set),
            set_hits: get(&self.set_hits),
            cmd_delete: get(&self.cmd_delete),
            get_hits: get(&self.get_hits),
            get_misses: get(&self.get_misses),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
        }
    }
}

/// The counts `stats reset` restarts from zero (see the fields of [`MemcacheCounters`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// [`MemcacheCounters::total_connections`]
    pub total_connections: u64,
    /// [`MemcacheCounters::cmd_get`]
    pub cmd_get: u64,
    /// [`MemcacheCounters::cmd_set`]
    pub cmd_set: u64,
    /// [`MemcacheCounters::set_hits`]
    pub set_hits: u64,
    /// [`MemcacheCounters::cmd_delete`]
    pub cmd_delete: u64,
    /// [`MemcacheCounters::get_hits`]
    pub get_hits: u64,
    /// [`MemcacheCounters::get_misses`]
    pub get_misses: u64,
    /// [`MemcacheCounters::bytes_read`]
    pub bytes_read: u64,
    /// [`MemcacheCounters::bytes_written`]
    pub bytes_written: u64,
}

/// The process-wide counters.
pub fn counters() -> &'static MemcacheCounters {
    static COUNTERS: OnceLock<MemcacheCounters> = OnceLock::new();
    COUNTERS.get_or_init(MemcacheCounters::default)
}

/// CPU time this process has used, user and system, as memcached prints it
/// (`seconds.microseconds`).
pub fn rusage() -> (String, String) {
    // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid pointer to a rusage.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0;
    let fmt = |t: libc::timeval| format!("{}.{:06}", t.tv_sec, t.tv_usec);
    if ok {
        (fmt(ru.ru_utime), fmt(ru.ru_stime))
    } else {
        ("0.000000".into(), "0.000000".into())
    }
}
