//! Time for the resilience state: a monotonic [`Instant`] from tokio (so tests can pause and
//! advance it) and a wall clock for the UTC day of the daily quota and the health timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// Monotonic time plus wall time. [`Clock::system`] reads the system wall clock;
/// [`Clock::anchored`] derives wall time from tokio's clock, so a paused test controls both.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Option<(Instant, i64)>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// Tokio's monotonic clock and the system wall clock.
    pub fn system() -> Self {
        Self { anchor: None }
    }

    /// Wall time that reads `unix_ms` now and then moves with tokio's (possibly paused) clock.
    pub fn anchored(unix_ms: i64) -> Self {
        Self {
            anchor: Some((Instant::now(), unix_ms)),
        }
    }

    /// Monotonic now.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Wall time, milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> i64 {
        match self.anchor {
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Some((at, unix_ms)) => unix_ms.saturating_add(millis(Instant::now() - at)),
        }
    }

    /// The wall time of a monotonic instant (for health timestamps).
    pub fn to_utc(&self, at: Instant) -> DateTime<Utc> {
        let now = Instant::now();
        let ms = if at <= now {
            self.unix_ms() - millis(now - at)
        } else {
            self.unix_ms() + millis(at - now)
        };
        utc(ms)
    }
}

/// Until the next UTC midnight after `unix_ms`.
pub fn until_next_utc_day(unix_ms: i64) -> Duration {
    let next = (unix_ms.div_euclid(DAY_MS) + 1) * DAY_MS;
    Duration::from_millis(u64::try_from(next - unix_ms).unwrap_or(0))
}

/// Milliseconds since the epoch as a UTC timestamp.
pub fn utc(unix_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(unix_ms).unwrap_or_default()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
