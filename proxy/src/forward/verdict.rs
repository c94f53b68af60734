//! What an admission or an attempt means for the caller: the hub's problems for rate limits,
//! open breakers and exhausted calls, and how attempt outcomes are named in metrics and logs.

use std::time::Duration;

use hub_core::state::{Admission, AttemptEnd, Permit};
use hub_core::wire::problem;
use pingora::{Error, ErrorType};

use crate::metrics::METRICS;
use crate::problem::Problem;
use crate::registry::Provider;

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// 429 for the provider's rate limit or daily quota.
pub(super) fn rate_limited(provider: &str, retry_after: Duration, quota: bool) -> Problem {
    let mut p = if quota {
        Problem::new(
            problem::QUOTA_EXHAUSTED,
            format!("the daily quota of provider {provider} is used up"),
        )
    } else {
        Problem::new(
            problem::RATE_LIMITED,
            format!("the hub's rate limit for provider {provider} is reached"),
        )
    };
    p.retry_after = Some(ceil_secs(retry_after).max(1));
    p
}

/// 429 for a grant's own rate limit or daily quota.
pub(super) fn grant_limited(
    caller: &str,
    provider: &str,
    retry_after: Duration,
    quota: bool,
) -> Problem {
    let (kind, what) = if quota {
        (problem::QUOTA_EXHAUSTED, "daily quota")
    } else {
        (problem::RATE_LIMITED, "rate limit")
    };
    let mut p = Problem::new(
        kind,
        format!("the {what} of caller {caller}'s grant on provider {provider} is reached"),
    );
    p.retry_after = Some(ceil_secs(retry_after).max(1));
    p
}

/// 503 for an open breaker.
pub(super) fn circuit_open(provider: &str, retry_after: Duration) -> Problem {
    let mut p = Problem::new(
        problem::CIRCUIT_OPEN,
        format!("provider {provider} is failing; the hub is not calling it for now"),
    );
    p.retry_after = Some(ceil_secs(retry_after).max(1));
    p.circuit_open = true;
    p
}

/// The permit, or the problem that answers a refused admission.
pub(crate) fn permit_or_problem(provider: &str, admission: Admission) -> Result<Permit, Problem> {
    match admission {
        Admission::Admitted(p) => Ok(p),
        Admission::RateLimited { retry_after } => Err(rate_limited(provider, retry_after, false)),
        Admission::QuotaExhausted { retry_after } => Err(rate_limited(provider, retry_after, true)),
        Admission::CircuitOpen { retry_after } => Err(circuit_open(provider, retry_after)),
    }
}

/// 502/504 for a call whose attempts all failed.
pub(super) fn exhausted(provider: &str, end: AttemptEnd, attempts: u32, stop: &str) -> Problem {
    let what = match end {
        AttemptEnd::Status(s) => format!("last status {s}"),
        other => end_kind(other).replace('_', " "),
    };
    let detail = format!("provider {provider} failed after {attempts} attempt(s) ({what}; {stop})");
    if end == AttemptEnd::Timeout {
        Problem::new(problem::UPSTREAM_TIMEOUT, detail)
    } else {
        Problem::new(problem::UPSTREAM_FAILED, detail)
    }
}

/// The answer to a failed call the DLQ could not record: a distinct code, no id, the reason
/// the call failed kept in the detail.
pub(super) fn unrecorded(failed: Problem) -> Problem {
    Problem::new(
        problem::UPSTREAM_FAILED_UNRECORDED,
        format!(
            "{} — and it was NOT recorded in the dead-letter queue (the hub's spool refused it): \
             retry it yourself",
            failed.detail
        ),
    )
}

/// Classifies a Pingora error from one attempt, given whether the request head was written.
pub(super) fn classify(e: &Error, header_written: bool) -> AttemptEnd {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            AttemptEnd::Timeout
        }
        _ if !header_written => AttemptEnd::ConnectFailed,
        _ => AttemptEnd::ConnectionLost,
    }
}

/// The attempt end as logged and stored.
pub(super) fn end_kind(end: AttemptEnd) -> &'static str {
    match end {
        AttemptEnd::Status(_) => "status",
        AttemptEnd::ConnectFailed => "connect_failed",
        AttemptEnd::Timeout => "timeout",
        AttemptEnd::ConnectionLost => "connection_lost",
    }
}

/// The attempt end as a metric label.
pub(super) fn outcome_label(end: AttemptEnd) -> &'static str {
    match end {
        AttemptEnd::Status(s) if s >= 500 => "server_error",
        AttemptEnd::Status(429) => "throttled",
        AttemptEnd::Status(s) if s >= 400 => "client_error",
        AttemptEnd::Status(_) => "success",
        other => end_kind(other),
    }
}

/// Counts a rejected admission.
pub(crate) fn count_rejection(provider: &Provider, admission: &Admission) {
    match admission {
        Admission::Admitted(_) => {}
        Admission::RateLimited { .. } | Admission::QuotaExhausted { .. } => {
            METRICS
                .rate_limited
                .with_label_values(&[&provider.name])
                .inc();
        }
        Admission::CircuitOpen { .. } => {
            METRICS
                .circuit_rejected
                .with_label_values(&[&provider.name])
                .inc();
        }
    }
}
