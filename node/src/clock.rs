//! The wall clock, read in this one place: clippy's `disallowed-methods` (`clippy.toml`)
//! keeps `SystemTime::now` and `Utc::now` out of everything else. Deadlines, intervals and
//! ages use tokio's monotonic clock (which tests can pause); the wall clock is only for what
//! is written down for other nodes or people: lease expiry, heartbeat times, `created_at`.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

/// Now, by this machine's wall clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, as a UTC date and time.
pub fn utc() -> DateTime<Utc> {
    DateTime::<Utc>::from(now())
}
