//! Exponential backoff between attempts with injectable jitter (seed: 1 s, 2 s, 4 s, 8 s, each
//! ±500 ms). Tests pass a fixed [`Jitter`]; production passes [`RandomJitter`].

use std::time::Duration;

use rand::Rng;

use crate::provider::ProviderConfig;

/// A source of jitter: an offset in milliseconds within `[-max_ms, max_ms]`.
pub trait Jitter: Send + Sync {
    /// The offset to add to a wait.
    fn offset_ms(&self, max_ms: u64) -> i64;
}

impl<F: Fn(u64) -> i64 + Send + Sync> Jitter for F {
    fn offset_ms(&self, max_ms: u64) -> i64 {
        self(max_ms)
    }
}

/// Uniform jitter from the thread-local RNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn offset_ms(&self, max_ms: u64) -> i64 {
        let max = i64::try_from(max_ms).unwrap_or(i64::MAX);
        rand::rng().random_range(-max..=max)
    }
}

/// Wait before attempt `n` (n ≥ 2) = `base × multiplier^(n-2)` ± jitter, never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    multiplier: u32,
    jitter: Duration,
}

impl Backoff {
    /// From explicit numbers.
    pub fn new(base: Duration, multiplier: u32, jitter: Duration) -> Self {
        Self {
            base,
            multiplier: multiplier.max(1),
            jitter,
        }
    }

    /// From a provider's config (`backoffBaseMs`, `backoffMultiplier`, `jitterMs`).
    pub fn from_config(config: &ProviderConfig) -> Self {
        Self::new(
            Duration::from_millis(config.backoff_base_ms.into()),
            config.backoff_multiplier,
            Duration::from_millis(config.jitter_ms.into()),
        )
    }

    /// The wait before attempt `attempt` without jitter (zero for the first attempt).
    pub fn nominal(&self, attempt: u32) -> Duration {
        if attempt < 2 {
            return Duration::ZERO;
        }
        let factor = self.multiplier.saturating_pow(attempt - 2);
        self.base.saturating_mul(factor)
    }

    /// The wait before attempt `attempt` with jitter (clamped to ±jitter, never below zero).
    pub fn wait_before(&self, attempt: u32, jitter: &dyn Jitter) -> Duration {
        let nominal = self.nominal(attempt);
        if attempt < 2 {
            return nominal;
        }
        let max = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
        let bound = i64::try_from(max).unwrap_or(i64::MAX);
        let offset = jitter.offset_ms(max).clamp(-bound, bound);
        let magnitude = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            nominal.saturating_add(magnitude)
        } else {
            nominal.saturating_sub(magnitude)
        }
    }
}
