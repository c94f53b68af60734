//! Backoff, budget and retry classification, with injected jitter on tokio's paused clock.

use std::time::Duration;

use tokio::time::{Instant, advance};

use crate::provider::ProviderConfig;
use crate::state::backoff::{Backoff, Jitter, RandomJitter};
use crate::state::retry::{AttemptEnd, RetryPlan, Stop, is_idempotent, may_retry};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fixed(offset: i64) -> impl Jitter {
    move |_max: u64| offset
}

#[test]
fn seed_schedule_is_1_2_4_8_seconds() {
    let b = Backoff::from_config(&ProviderConfig::default());
    let none = fixed(0);
    let waits: Vec<_> = (2..=5).map(|n| b.wait_before(n, &none)).collect();
    assert_eq!(waits, [ms(1_000), ms(2_000), ms(4_000), ms(8_000)]);
    assert_eq!(
        b.wait_before(1, &none),
        Duration::ZERO,
        "no wait before the first attempt"
    );
}

#[test]
fn jitter_is_bounded_to_plus_minus_500_ms() {
    let b = Backoff::from_config(&ProviderConfig::default());
    assert_eq!(b.wait_before(2, &fixed(500)), ms(1_500));
    assert_eq!(b.wait_before(3, &fixed(-500)), ms(1_500));
    assert_eq!(b.wait_before(2, &fixed(9_999)), ms(1_500), "clamped");
    assert_eq!(b.wait_before(2, &fixed(-9_999)), ms(500), "clamped");
    let seen = |max: u64| {
        assert_eq!(max, 500, "the jitter source is told the bound");
        0
    };
    b.wait_before(2, &seen);
    for n in 2..=5 {
        let w = b.wait_before(n, &RandomJitter);
        let nominal = b.nominal(n);
        assert!(
            w >= nominal - ms(500) && w <= nominal + ms(500),
            "{w:?} around {nominal:?}"
        );
    }
}

#[test]
fn wait_is_never_negative() {
    let b = Backoff::new(ms(200), 2, ms(500));
    assert_eq!(b.wait_before(2, &fixed(-500)), Duration::ZERO);
}

fn plan(timeout_ms: u32, total_ms: u32, max_attempts: u32) -> RetryPlan {
    let config = ProviderConfig {
        timeout_ms,
        total_timeout_ms: total_ms,
        max_attempts,
        ..ProviderConfig::default()
    };
    RetryPlan::new(&config, Instant::now())
}

#[tokio::test(start_paused = true)]
async fn fast_failures_get_all_five_attempts_then_stop() {
    let p = plan(10_000, 60_000, 5);
    let none = fixed(0);
    let mut waits = Vec::new();
    for made in 1..=4 {
        let w = p.next_wait(made, Instant::now(), None, &none).unwrap();
        waits.push(w);
        advance(w).await;
    }
    assert_eq!(waits, [ms(1_000), ms(2_000), ms(4_000), ms(8_000)]);
    assert_eq!(
        p.next_wait(5, Instant::now(), None, &none),
        Err(Stop::AttemptsExhausted)
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_could_not_finish_inside_the_budget() {
    // Every attempt times out after 10 s: attempts at 0, 11, 23, 37; the fifth would start at
    // 55 s and could run to 65 s, past the 60 s budget.
    let p = plan(10_000, 60_000, 5);
    let none = fixed(0);
    for made in 1..=3 {
        assert_eq!(p.attempt_timeout(Instant::now()), ms(10_000));
        advance(ms(10_000)).await;
        let w = p.next_wait(made, Instant::now(), None, &none).unwrap();
        advance(w).await;
    }
    assert_eq!(Instant::now() - (p.deadline() - ms(60_000)), ms(37_000));
    advance(ms(10_000)).await;
    assert_eq!(
        p.next_wait(4, Instant::now(), None, &none),
        Err(Stop::BudgetExhausted)
    );
    // A +500 ms jitter can tip an otherwise fitting retry over the edge too.
    let p = plan(10_000, 21_000, 5);
    advance(ms(10_000)).await;
    assert_eq!(p.next_wait(1, Instant::now(), None, &none), Ok(ms(1_000)));
    assert_eq!(
        p.next_wait(1, Instant::now(), None, &fixed(500)),
        Err(Stop::BudgetExhausted)
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_overrides_when_longer_and_ends_retries_beyond_the_budget() {
    let p = plan(5_000, 60_000, 5);
    let none = fixed(0);
    let now = Instant::now();
    assert_eq!(p.next_wait(1, now, Some(ms(3_000)), &none), Ok(ms(3_000)));
    assert_eq!(p.next_wait(1, now, Some(ms(200)), &none), Ok(ms(1_000)));
    assert_eq!(
        p.next_wait(1, now, Some(ms(61_000)), &none),
        Err(Stop::RetryAfterBeyondBudget)
    );
    advance(ms(50_000)).await;
    assert_eq!(
        p.next_wait(1, Instant::now(), Some(ms(10_001)), &none),
        Err(Stop::RetryAfterBeyondBudget)
    );
    // Within the budget, but no room left for the attempt after the wait.
    assert_eq!(
        p.next_wait(1, Instant::now(), Some(ms(6_000)), &none),
        Err(Stop::BudgetExhausted)
    );
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_capped_by_the_budget_and_callers_may_only_lower_it() {
    let p = plan(10_000, 60_000, 5).limit_total(ms(4_000));
    assert_eq!(p.attempt_timeout(Instant::now()), ms(4_000));
    advance(ms(3_000)).await;
    assert_eq!(p.attempt_timeout(Instant::now()), ms(1_000));
    let p = plan(10_000, 60_000, 5).limit_total(ms(500_000));
    assert_eq!(p.remaining(Instant::now()), ms(60_000));
}

#[test]
fn classification() {
    use AttemptEnd::*;
    for end in [
        ConnectFailed,
        Timeout,
        ConnectionLost,
        Status(500),
        Status(503),
        Status(429),
    ] {
        assert!(end.is_retryable(), "{end:?}");
        assert!(may_retry(end, "GET", false, true), "{end:?}");
    }
    for end in [
        Status(400),
        Status(401),
        Status(404),
        Status(409),
        Status(200),
        Status(302),
    ] {
        assert!(!end.is_retryable(), "{end:?}");
        assert!(!may_retry(end, "GET", true, false), "{end:?}");
    }
    assert_eq!(Status(404).outcome(), crate::state::Outcome::Neutral);
    assert_eq!(Status(502).outcome(), crate::state::Outcome::Failure);
    assert_eq!(Timeout.outcome(), crate::state::Outcome::Failure);
    assert_eq!(Status(204).outcome(), crate::state::Outcome::Success);
}

#[test]
fn non_idempotent_methods_need_a_key_or_an_unsent_request() {
    for method in ["POST", "PATCH"] {
        assert!(!is_idempotent(method));
        assert!(!may_retry(AttemptEnd::Status(503), method, false, true));
        assert!(may_retry(AttemptEnd::Status(503), method, true, true));
        assert!(may_retry(AttemptEnd::ConnectFailed, method, false, false));
        assert!(!may_retry(AttemptEnd::Timeout, method, false, true));
    }
    for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
        assert!(is_idempotent(method));
    }
}
