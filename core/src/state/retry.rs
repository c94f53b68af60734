//! Retry decisions: which attempt endings are retryable, which requests may be replayed, and
//! the per-call budget (`totalTimeoutMs`) that bounds attempts plus waits.
//!
//! Budget rule: a retry starts only if its wait plus a full per-attempt timeout fits in what is
//! left of the budget. An attempt that starts therefore always gets its whole timeout, so a 504
//! means the provider was slow, never that the budget cut an attempt short. A provider's
//! `Retry-After` (429/503) replaces the backoff when it is longer; if it is longer than the whole
//! remaining budget, retrying stops at once instead of tying a connection up.

use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;
use super::backoff::{Backoff, Jitter};
use crate::provider::ProviderConfig;

/// How one attempt ended, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The provider answered with this status.
    Status(u16),
    /// TCP or TLS connect failed: nothing reached the provider.
    ConnectFailed,
    /// Connect, TLS or response took longer than the attempt timeout.
    Timeout,
    /// The connection broke after it was established.
    ConnectionLost,
}

impl AttemptEnd {
    /// The breaker's view: connect errors, timeouts and 5xx fail; 4xx is neutral.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Status(s) => Outcome::from_status(s),
            Self::ConnectFailed | Self::Timeout | Self::ConnectionLost => Outcome::Failure,
        }
    }

    /// Retryable in principle: connect errors, timeouts, 5xx and 429; never other 4xx.
    pub fn is_retryable(self) -> bool {
        match self {
            Self::Status(s) => s == 429 || s >= 500,
            Self::ConnectFailed | Self::Timeout | Self::ConnectionLost => true,
        }
    }
}

/// Safe to repeat per RFC 9110 (GET, HEAD, OPTIONS, TRACE, PUT, DELETE). Case-sensitive, as
/// methods are.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Whether this attempt may be retried: a retryable ending, and a request that is idempotent,
/// carries an idempotency key, or never reached the provider (`bytes_sent == false`).
pub fn may_retry(
    end: AttemptEnd,
    method: &str,
    has_idempotency_key: bool,
    bytes_sent: bool,
) -> bool {
    end.is_retryable() && (is_idempotent(method) || has_idempotency_key || !bytes_sent)
}

/// Why no further attempt starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `maxAttempts` reached.
    AttemptsExhausted,
    /// The wait plus a full attempt would end past the deadline.
    BudgetExhausted,
    /// The provider asked to wait longer than the remaining budget.
    RetryAfterBeyondBudget,
}

impl Stop {
    /// Stable label for logs and metrics.
    pub fn kind(self) -> &'static str {
        match self {
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::BudgetExhausted => "budget_exhausted",
            Self::RetryAfterBeyondBudget => "retry_after_beyond_budget",
        }
    }
}

/// One call's retry schedule and deadline.
#[derive(Debug, Clone, Copy)]
pub struct RetryPlan {
    backoff: Backoff,
    max_attempts: u32,
    attempt_timeout: Duration,
    started: Instant,
    total: Duration,
}

impl RetryPlan {
    /// The plan for a call that started at `started`, from the provider's config.
    pub fn new(config: &ProviderConfig, started: Instant) -> Self {
        Self {
            backoff: Backoff::from_config(config),
            max_attempts: config.max_attempts.max(1),
            attempt_timeout: config.first_byte_timeout(),
            started,
            total: Duration::from_millis(config.total_timeout_ms.into()),
        }
    }

    /// From explicit numbers.
    pub fn with_numbers(
        backoff: Backoff,
        max_attempts: u32,
        attempt_timeout: Duration,
        total: Duration,
        started: Instant,
    ) -> Self {
        Self {
            backoff,
            max_attempts: max_attempts.max(1),
            attempt_timeout,
            started,
            total,
        }
    }

    /// Lowers the total budget (a caller's header may ask for less, never more).
    pub fn limit_total(mut self, total: Duration) -> Self {
        self.total = self.total.min(total);
        self
    }

    /// When the whole call must be over.
    pub fn deadline(&self) -> Instant {
        self.started + self.total
    }

    /// Budget left at `now`.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline().saturating_duration_since(now)
    }

    /// The timeout for an attempt starting at `now`: the per-attempt timeout, capped by the budget.
    pub fn attempt_timeout(&self, now: Instant) -> Duration {
        self.attempt_timeout.min(self.remaining(now))
    }

    /// After `attempts_made` attempts (the last one failed retryably) at `now`: how long to wait
    /// before the next, or why to stop. `retry_after` is the provider's `Retry-After`, if any.
    pub fn next_wait(
        &self,
        attempts_made: u32,
        now: Instant,
        retry_after: Option<Duration>,
        jitter: &dyn Jitter,
    ) -> Result<Duration, Stop> {
        if attempts_made >= self.max_attempts {
            return Err(Stop::AttemptsExhausted);
        }
        let remaining = self.remaining(now);
        if retry_after.is_some_and(|r| r > remaining) {
            return Err(Stop::RetryAfterBeyondBudget);
        }
        let backoff = self.backoff.wait_before(attempts_made + 1, jitter);
        let wait = retry_after.map_or(backoff, |r| r.max(backoff));
        if wait.saturating_add(self.attempt_timeout) > remaining {
            return Err(Stop::BudgetExhausted);
        }
        Ok(wait)
    }
}
