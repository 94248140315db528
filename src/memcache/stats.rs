//! Counters of the memcache front end, as memcached's `stats` reports them. One process
//! global (the listener is one per process); the metrics exporter reads them too.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

/// memcache front-end counters.
#[derive(Debug, Default)]
pub struct MemcacheCounters {
    /// Open connections.
    pub curr_connections: AtomicU64,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Keys asked for by `get` (each key counts).
    pub cmd_get: AtomicU64,
    /// `set` commands.
    pub cmd_set: AtomicU64,
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
}

/// The process-wide counters.
pub fn counters() -> &'static MemcacheCounters {
    static COUNTERS: OnceLock<MemcacheCounters> = OnceLock::new();
    COUNTERS.get_or_init(MemcacheCounters::default)
}
