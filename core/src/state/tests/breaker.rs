//! The breaker state machine on tokio's paused clock: every transition.

use std::time::Duration;

use tokio::time::{Instant, advance};

use crate::provider::BreakerPolicy;
use crate::state::Outcome::{Failure, Neutral, Success};
use crate::state::breaker::{Breaker, State, Ticket};

const POLICY: BreakerPolicy = BreakerPolicy {
    failure_threshold: 5,
    failure_window_ms: 30_000,
    open_ms: 60_000,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Admits one normal attempt and records `outcome` for it.
fn attempt(b: &mut Breaker, outcome: crate::state::Outcome) {
    let now = Instant::now();
    let ticket = b.admit(now, &POLICY).expect("closed breaker admits");
    assert!(matches!(ticket, Ticket::Normal { .. }));
    b.record(ticket, outcome, now, &POLICY);
}

fn is_closed(b: &Breaker) -> bool {
    matches!(b.state(), State::Closed { .. })
}

/// Opens the breaker with five failures.
fn open(b: &mut Breaker) {
    for _ in 0..5 {
        attempt(b, Failure);
    }
    assert!(matches!(b.state(), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn five_consecutive_failures_open_for_open_ms() {
    let mut b = Breaker::new();
    for _ in 0..4 {
        attempt(&mut b, Failure);
    }
    assert!(is_closed(&b));
    assert_eq!(b.failures(), 4);
    attempt(&mut b, Failure);
    assert_eq!(b.check(Instant::now()), Err(secs(60)));
    advance(secs(45)).await;
    assert_eq!(b.admit(Instant::now(), &POLICY), Err(secs(15)));
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_streak() {
    let mut b = Breaker::new();
    for _ in 0..4 {
        attempt(&mut b, Failure);
    }
    attempt(&mut b, Success);
    assert_eq!(b.failures(), 0);
    for _ in 0..4 {
        attempt(&mut b, Failure);
    }
    assert!(is_closed(&b));
}

#[tokio::test(start_paused = true)]
async fn neutral_4xx_ends_the_streak_without_counting() {
    let mut b = Breaker::new();
    for _ in 0..4 {
        attempt(&mut b, Failure);
    }
    attempt(&mut b, Neutral);
    assert_eq!(b.failures(), 0);
    for _ in 0..4 {
        attempt(&mut b, Failure);
    }
    assert!(
        is_closed(&b),
        "4xx is the provider working: no failure, streak over"
    );
    for _ in 0..20 {
        attempt(&mut b, Neutral);
    }
    assert!(is_closed(&b), "4xx never opens");
}

#[tokio::test(start_paused = true)]
async fn failures_spread_over_more_than_the_window_do_not_open() {
    let mut b = Breaker::new();
    // t = 0, 10, 20, 30, 40: the streak begun at 0 has expired at 30, so it starts over.
    for _ in 0..5 {
        attempt(&mut b, Failure);
        advance(secs(10)).await;
    }
    assert!(is_closed(&b));
    assert_eq!(b.failures(), 2);
    // Three more within the new streak's window make five since t = 30.
    for _ in 0..3 {
        attempt(&mut b, Failure);
    }
    assert!(matches!(b.state(), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn failures_just_inside_the_window_open() {
    let mut b = Breaker::new();
    for _ in 0..4 {
        attempt(&mut b, Failure);
        advance(Duration::from_millis(7_499)).await;
    }
    attempt(&mut b, Failure); // 29.996 s after the first
    assert!(matches!(b.state(), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn after_open_ms_exactly_one_probe_then_the_open_answer() {
    let mut b = Breaker::new();
    open(&mut b);
    advance(secs(60)).await;
    let now = Instant::now();
    let probe = b.admit(now, &POLICY).unwrap();
    assert!(matches!(probe, Ticket::Probe { .. }));
    for _ in 0..49 {
        assert_eq!(
            b.admit(now, &POLICY),
            Err(secs(60)),
            "probe lease remaining"
        );
    }
    assert!(matches!(b.state(), State::HalfOpen { .. }));
}

#[tokio::test(start_paused = true)]
async fn probe_success_or_neutral_closes_and_resets() {
    for outcome in [Success, Neutral] {
        let mut b = Breaker::new();
        open(&mut b);
        advance(secs(60)).await;
        let probe = b.admit(Instant::now(), &POLICY).unwrap();
        b.record(probe, outcome, Instant::now(), &POLICY);
        assert!(is_closed(&b));
        assert_eq!(b.failures(), 0);
        for _ in 0..4 {
            attempt(&mut b, Failure);
        }
        assert!(is_closed(&b), "the count started over");
    }
}

#[tokio::test(start_paused = true)]
async fn probe_failure_reopens_for_another_open_ms() {
    let mut b = Breaker::new();
    open(&mut b);
    advance(secs(60)).await;
    let probe = b.admit(Instant::now(), &POLICY).unwrap();
    advance(secs(2)).await;
    b.record(probe, Failure, Instant::now(), &POLICY);
    assert_eq!(b.check(Instant::now()), Err(secs(60)));
    assert_eq!(b.failures(), 6);
    advance(secs(60)).await;
    assert!(matches!(
        b.admit(Instant::now(), &POLICY),
        Ok(Ticket::Probe { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_frees_the_slot_at_once() {
    let mut b = Breaker::new();
    open(&mut b);
    advance(secs(60)).await;
    let probe = b.admit(Instant::now(), &POLICY).unwrap();
    b.release(probe, Instant::now());
    let next = b.admit(Instant::now(), &POLICY).unwrap();
    assert!(matches!(next, Ticket::Probe { .. }));
    assert_ne!(next, probe);
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_is_superseded_after_its_lease() {
    let mut b = Breaker::new();
    open(&mut b);
    advance(secs(60)).await;
    let hung = b.admit(Instant::now(), &POLICY).unwrap();
    advance(secs(59)).await;
    assert_eq!(b.admit(Instant::now(), &POLICY), Err(secs(1)));
    advance(secs(1)).await;
    let probe = b.admit(Instant::now(), &POLICY).unwrap();
    assert!(matches!(probe, Ticket::Probe { .. }));
    // The hung probe's late verdict no longer decides anything.
    b.record(hung, Failure, Instant::now(), &POLICY);
    b.release(hung, Instant::now());
    assert!(matches!(b.state(), State::HalfOpen { .. }));
    b.record(probe, Success, Instant::now(), &POLICY);
    assert!(is_closed(&b));
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_older_periods_and_of_normal_calls_while_open_are_ignored() {
    let mut b = Breaker::new();
    let now = Instant::now();
    let stragglers: Vec<Ticket> = (0..3).map(|_| b.admit(now, &POLICY).unwrap()).collect();
    open(&mut b);
    // Normal calls that finish while open neither extend nor close it.
    b.record(stragglers[0], Success, Instant::now(), &POLICY);
    b.record(stragglers[1], Failure, Instant::now(), &POLICY);
    assert_eq!(b.check(Instant::now()), Err(secs(60)));
    advance(secs(60)).await;
    let probe = b.admit(Instant::now(), &POLICY).unwrap();
    b.record(probe, Success, Instant::now(), &POLICY);
    // A failure admitted before the circuit opened does not count against the new period.
    b.record(stragglers[2], Failure, Instant::now(), &POLICY);
    assert_eq!(b.failures(), 0);
}
