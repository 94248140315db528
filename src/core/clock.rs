//! A monotonic millisecond clock shared by the core, for message TTLs and `x-expires`.
//! It is tokio's clock, which is the system's monotonic clock except in tests that
//! pause time.

use std::sync::OnceLock;

use tokio::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
