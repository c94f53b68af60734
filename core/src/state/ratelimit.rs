//! Per-provider rate limit: a token bucket kept as GCRA (one timestamp, the theoretical arrival
//! time), and a daily counter per UTC day. Pure: the caller passes `now` and the numbers.

use std::time::Duration;

use tokio::time::Instant;

use super::clock::{DAY_MS, until_next_utc_day};

/// A token bucket of `burst` tokens refilled at `rate` per second.
#[derive(Debug, Clone, Default)]
pub struct TokenBucket {
    /// When the bucket would be full again; `None` = full.
    tat: Option<Instant>,
}

impl TokenBucket {
    /// Takes one token, or says how long until one is due.
    pub fn try_take(&mut self, now: Instant, rate: u32, burst: u32) -> Result<(), Duration> {
        let (interval, tau) = gcra(rate, burst);
        let tat = self.tat.map_or(now, |t| t.max(now));
        let ahead = tat - now;
        if ahead > tau {
            return Err(ahead - tau);
        }
        self.tat = Some(tat + interval);
        Ok(())
    }

    /// Takes one token whether or not one is available, leaving the bucket at most empty (never
    /// in debt): spending elsewhere (leased tokens) drains this bucket too.
    pub fn charge(&mut self, now: Instant, rate: u32, burst: u32) {
        let (interval, tau) = gcra(rate, burst);
        let tat = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some((tat + interval).min(now + tau + interval));
    }

    /// Tokens available now.
    pub fn available(&self, now: Instant, rate: u32, burst: u32) -> u32 {
        let (interval, tau) = gcra(rate, burst);
        let ahead = self
            .tat
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let room = (tau + interval).saturating_sub(ahead);
        let n = room.as_nanos() / interval.as_nanos().max(1);
        u32::try_from(n).unwrap_or(u32::MAX).min(burst)
    }
}

/// GCRA's emission interval and tolerance.
fn gcra(rate: u32, burst: u32) -> (Duration, Duration) {
    let interval = Duration::from_nanos(1_000_000_000 / u64::from(rate.max(1)));
    (interval, interval * (burst.max(1) - 1))
}

/// Requests admitted on one UTC day.
#[derive(Debug, Clone, Default)]
pub struct DailyCount {
    day: i64,
    used: u64,
}

impl DailyCount {
    /// Admitted so far today.
    pub fn used(&self, unix_ms: i64) -> u64 {
        if self.day == unix_ms.div_euclid(DAY_MS) {
            self.used
        } else {
            0
        }
    }

    /// Whether one more fits under `quota` today; `Err` carries the time until midnight UTC.
    pub fn check(&self, unix_ms: i64, quota: Option<u64>) -> Result<(), Duration> {
        match quota {
            Some(q) if self.used(unix_ms) >= q => Err(until_next_utc_day(unix_ms)),
            _ => Ok(()),
        }
    }

    /// Counts one admission.
    pub fn add(&mut self, unix_ms: i64) {
        let day = unix_ms.div_euclid(DAY_MS);
        if self.day != day {
            self.day = day;
            self.used = 0;
        }
        self.used += 1;
    }
}
