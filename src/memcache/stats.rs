//! The memcache front end's counters, as memcacheq's `stats` reports them (memcached's
//! extra fields follow), and its one metrics family, `memcache_commands_total`.
//!
//! Connections and bytes are not counted here: the core counts them for every front end
//! ([`crate::core::stats::ProtocolCounters`], under [`PROTOCOL`]), and `stats` reads them
//! from there. The command counts are one process global (the listener is one per
//! process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::core::stats::ProtocolTotals;
use crate::core::Broker;
use crate::exposition::{Collector, Family, Writer};

/// The name this front end registers its connections and counters under.
pub const PROTOCOL: &str = "memcache";

/// memcache front-end counters.
#[derive(Debug, Default)]
pub struct MemcacheCounters {
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
    /// The counts at the last `stats reset`.
    baseline: parking_lot::Mutex<Totals>,
}

/// This front end's connection and byte totals in `broker`.
pub fn protocol_totals(broker: &Broker) -> ProtocolTotals {
    crate::core::stats::protocol_totals(broker)
        .into_iter()
        .find(|t| t.protocol == PROTOCOL)
        .unwrap_or(ProtocolTotals {
            protocol: PROTOCOL,
            ..ProtocolTotals::default()
        })
}

impl MemcacheCounters {
    /// A connection opened (registered with `broker`): raises the high-water mark.
    pub fn connection_opened(&self, broker: &Broker) {
        let open = broker.counters().lifecycle.protocol(PROTOCOL).open();
        self.peak_connections.fetch_max(open, Ordering::Relaxed);
    }

    /// `stats reset`: from now on `stats` counts from zero what memcacheq's
    /// `stats_reset` zeroes (the totals and the command, hit and byte counts). Gauges
    /// (current connections) and the connection structures are state and stay. The
    /// counters themselves keep running, so the Prometheus series stay monotonic.
    pub fn reset(&self, broker: &Broker) {
        *self.baseline.lock() = self.totals(&protocol_totals(broker));
    }

    /// The resettable counts as `stats` shows them: since start or the last reset;
    /// `connections` are this front end's totals now.
    pub fn since_reset(&self, connections: &ProtocolTotals) -> Totals {
        let now = self.totals(connections);
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

    fn totals(&self, connections: &ProtocolTotals) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            total_connections: connections.connections_opened,
            cmd_get: get(&self.cmd_get),
            cmd_set: get(&self.cmd_set),
            set_hits: get(&self.set_hits),
            cmd_delete: get(&self.cmd_delete),
            get_hits: get(&self.get_hits),
            get_misses: get(&self.get_misses),
            bytes_read: connections.bytes_received,
            bytes_written: connections.bytes_sent,
        }
    }
}

const COMMANDS: Family = Family::counter(
    "memcache_commands_total",
    "Total number of memcache commands, by command and result (get counts each key).",
);

impl Collector for &'static MemcacheCounters {
    fn collect(&self, w: &mut Writer<'_>) {
        w.family(&COMMANDS);
        let series = [
            ("get", "hit", &self.get_hits),
            ("get", "miss", &self.get_misses),
            ("set", "total", &self.cmd_set),
            ("delete", "total", &self.cmd_delete),
        ];
        for (command, result, v) in series {
            w.sample(
                &COMMANDS,
                &[("command", command), ("result", result)],
                v.load(Ordering::Relaxed),
            );
        }
    }
}

/// The counts `stats reset` restarts from zero (see the fields of [`MemcacheCounters`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Connections accepted ([`ProtocolTotals::connections_opened`]).
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
    /// Bytes read from clients ([`ProtocolTotals::bytes_received`]).
    pub bytes_read: u64,
    /// Bytes written to clients ([`ProtocolTotals::bytes_sent`]).
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
