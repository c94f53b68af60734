//! One behavioural suite, run against [`LocalState`](crate::state::LocalState) on tokio's paused
//! clock and against [`RedisState`](crate::state::RedisState) on real time (small numbers keep
//! it short: the circuit opens for 200 ms).

use std::sync::Arc;
use std::time::Duration;

use super::{Harness, PROVIDER, breaker_policy};
use crate::state::Outcome::{Failure, Neutral, Success};
use crate::state::{Admission, CircuitState, Outcome, Policy};

const OPEN_MS: u64 = 200;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy() -> Policy {
    breaker_policy(3, 10_000, 200)
}

/// Admits and records `outcome`, `n` times.
async fn attempts(h: &Harness, p: &Policy, outcome: Outcome, n: usize) {
    for _ in 0..n {
        let permit = h.permit(p).await;
        h.state.record(permit, outcome).await;
    }
}

fn open_for(a: &Admission) -> Duration {
    match a {
        Admission::CircuitOpen { retry_after } => *retry_after,
        other => panic!("expected the open answer, got {other:?}"),
    }
}

async fn open(h: &Harness, p: &Policy) {
    attempts(h, p, Failure, 3).await;
    open_for(&h.admit(p).await);
}

async fn opens_after_threshold_and_rejects_with_remaining_time(h: &Harness) {
    let p = policy();
    attempts(h, &p, Failure, 2).await;
    assert_eq!(
        h.state
            .snapshot(PROVIDER, &p)
            .await
            .breaker
            .consecutive_failures,
        2
    );
    attempts(h, &p, Failure, 1).await;
    h.assert_near(open_for(&h.admit(&p).await), ms(OPEN_MS));
    h.pass(ms(120)).await;
    h.assert_near(open_for(&h.admit(&p).await), ms(80));
    let snap = h.state.snapshot(PROVIDER, &p).await.breaker;
    assert_eq!(snap.state, CircuitState::Open);
    assert_eq!(snap.consecutive_failures, 3);
    assert!(snap.opened_at.is_some() && snap.open_until > snap.opened_at);
}

async fn success_and_neutral_reset_the_streak(h: &Harness) {
    let p = policy();
    for reset in [Success, Neutral] {
        attempts(h, &p, Failure, 2).await;
        attempts(h, &p, reset, 1).await;
        attempts(h, &p, Failure, 2).await;
        assert!(
            matches!(h.admit(&p).await, Admission::Admitted(_)),
            "{reset:?}"
        );
        attempts(h, &p, Success, 1).await;
    }
    attempts(h, &p, Neutral, 10).await;
    let snap = h.state.snapshot(PROVIDER, &p).await.breaker;
    assert_eq!(
        (snap.state, snap.consecutive_failures),
        (CircuitState::Closed, 0)
    );
}

async fn failures_spread_beyond_the_window_do_not_open(h: &Harness) {
    let p = breaker_policy(3, 300, 200);
    attempts(h, &p, Failure, 1).await;
    h.pass(ms(150)).await;
    attempts(h, &p, Failure, 1).await;
    h.pass(ms(200)).await; // 350 ms after the streak's first failure: it starts over
    attempts(h, &p, Failure, 1).await;
    assert!(matches!(h.admit(&p).await, Admission::Admitted(_)));
    attempts(h, &p, Failure, 1).await;
    attempts(h, &p, Failure, 1).await;
    open_for(&h.admit(&p).await);
}

async fn exactly_one_probe_under_fifty_concurrent_admissions(h: &Harness) {
    let p = policy();
    open(h, &p).await;
    h.pass(ms(OPEN_MS)).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let state = Arc::clone(&h.state);
            tokio::spawn(async move { state.admit(PROVIDER, &p).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let probes: Vec<_> = results
        .iter()
        .filter_map(|a| match a {
            Admission::Admitted(permit) => Some(permit.is_probe()),
            _ => None,
        })
        .collect();
    assert_eq!(probes, [true], "exactly one admission, and it is the probe");
    for a in &results {
        if !matches!(a, Admission::Admitted(_)) {
            assert!(open_for(a) <= ms(OPEN_MS));
        }
    }
    let snap = h.state.snapshot(PROVIDER, &p).await.breaker;
    assert_eq!(snap.state, CircuitState::HalfOpen);
}

async fn probe_success_or_neutral_closes(h: &Harness) {
    let p = policy();
    for outcome in [Success, Neutral] {
        open(h, &p).await;
        h.pass(ms(OPEN_MS)).await;
        let probe = h.permit(&p).await;
        assert!(probe.is_probe());
        h.state.record(probe, outcome).await;
        h.settle().await;
        let snap = h.state.snapshot(PROVIDER, &p).await.breaker;
        assert_eq!(
            (snap.state, snap.consecutive_failures),
            (CircuitState::Closed, 0)
        );
        attempts(h, &p, Failure, 2).await;
        assert!(
            matches!(h.admit(&p).await, Admission::Admitted(_)),
            "count reset"
        );
        attempts(h, &p, Success, 1).await;
    }
}

async fn probe_failure_reopens_for_another_open_ms(h: &Harness) {
    let p = policy();
    open(h, &p).await;
    h.pass(ms(OPEN_MS)).await;
    let probe = h.permit(&p).await;
    h.state.record(probe, Failure).await;
    h.assert_near(open_for(&h.admit(&p).await), ms(OPEN_MS));
    h.pass(ms(OPEN_MS)).await;
    assert!(h.permit(&p).await.is_probe());
}

async fn dropped_probe_frees_the_slot(h: &Harness) {
    let p = policy();
    open(h, &p).await;
    h.pass(ms(OPEN_MS)).await;
    let probe = h.permit(&p).await;
    assert!(probe.is_probe());
    drop(probe);
    h.settle().await;
    let next = h.permit(&p).await;
    assert!(
        next.is_probe(),
        "the next admission probes at once, not after the lease"
    );
    h.state.record(next, Success).await;
}

async fn hung_probe_is_superseded_after_its_lease(h: &Harness) {
    let p = policy();
    open(h, &p).await;
    h.pass(ms(OPEN_MS)).await;
    let hung = h.permit(&p).await;
    h.assert_near(open_for(&h.admit(&p).await), ms(OPEN_MS));
    h.pass(ms(OPEN_MS)).await;
    let probe = h.permit(&p).await;
    assert!(probe.is_probe());
    h.state.record(hung, Failure).await; // too late: ignored
    h.state.record(probe, Success).await;
    h.settle().await;
    assert!(matches!(h.admit(&p).await, Admission::Admitted(_)));
}

async fn late_outcomes_from_before_the_opening_are_ignored(h: &Harness) {
    let p = policy();
    let straggler = h.permit(&p).await;
    open(h, &p).await;
    h.pass(ms(OPEN_MS)).await;
    let probe = h.permit(&p).await;
    h.state.record(probe, Success).await;
    h.state.record(straggler, Failure).await;
    attempts(h, &p, Failure, 2).await;
    h.settle().await;
    assert!(matches!(h.admit(&p).await, Admission::Admitted(_)));
}

async fn burst_then_reject_with_retry_after_then_refill(h: &Harness) {
    let p = Policy {
        rate_per_sec: 10,
        burst: 3,
        ..policy()
    };
    for _ in 0..3 {
        let permit = h.permit(&p).await;
        h.state.record(permit, Success).await;
    }
    let retry_after = match h.admit(&p).await {
        Admission::RateLimited { retry_after } => retry_after,
        other => panic!("expected rate limited, got {other:?}"),
    };
    h.assert_near(retry_after, ms(100));
    assert_eq!(h.state.snapshot(PROVIDER, &p).await.rate.available, 0);
    h.pass(retry_after).await;
    let _ = h.permit(&p).await;
    assert!(matches!(h.admit(&p).await, Admission::RateLimited { .. }));
    h.pass(ms(1_000)).await;
    let rate = h.state.snapshot(PROVIDER, &p).await.rate;
    assert_eq!((rate.available, rate.used_today), (3, 4));
}

async fn daily_quota_exhausts_until_utc_midnight(h: &Harness) {
    let p = Policy {
        daily_quota: Some(3),
        ..policy()
    };
    for _ in 0..3 {
        let _ = h.permit(&p).await;
    }
    let retry_after = match h.admit(&p).await {
        Admission::QuotaExhausted { retry_after } => retry_after,
        other => panic!("expected quota exhausted, got {other:?}"),
    };
    let expected = crate::state::clock::until_next_utc_day(crate::state::Clock::system().unix_ms());
    assert!(
        retry_after.abs_diff(expected) < ms(2_000),
        "{retry_after:?} vs {expected:?}"
    );
    let rate = h.state.snapshot(PROVIDER, &p).await.rate;
    assert_eq!((rate.used_today, rate.daily_quota), (3, Some(3)));
}

async fn rate_limit_is_checked_before_the_probe_is_claimed(h: &Harness) {
    // Three tokens, then one every 500 ms.
    let p = Policy {
        rate_per_sec: 2,
        burst: 3,
        ..policy()
    };
    open(h, &p).await; // spends the three tokens
    h.pass(ms(OPEN_MS)).await;
    assert!(matches!(h.admit(&p).await, Admission::RateLimited { .. }));
    h.pass(ms(400)).await;
    assert!(
        h.permit(&p).await.is_probe(),
        "the rejected call did not take the probe"
    );
}

async fn providers_are_independent(h: &Harness) {
    let p = policy();
    open(h, &p).await;
    let other = ulid::Ulid::from_parts(2, 2);
    assert!(matches!(
        h.state.admit(other, &p).await,
        Admission::Admitted(_)
    ));
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(&super::Harness::local()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(h) = super::Harness::redis().await {
                        super::$name(&h).await;
                        h.cleanup().await;
                    }
                }
            )*
        }
    };
}

suite!(
    opens_after_threshold_and_rejects_with_remaining_time,
    success_and_neutral_reset_the_streak,
    failures_spread_beyond_the_window_do_not_open,
    exactly_one_probe_under_fifty_concurrent_admissions,
    probe_success_or_neutral_closes,
    probe_failure_reopens_for_another_open_ms,
    dropped_probe_frees_the_slot,
    hung_probe_is_superseded_after_its_lease,
    late_outcomes_from_before_the_opening_are_ignored,
    burst_then_reject_with_retry_after_then_refill,
    daily_quota_exhausts_until_utc_midnight,
    rate_limit_is_checked_before_the_probe_is_claimed,
    providers_are_independent,
);
