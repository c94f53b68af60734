//! Token bucket, daily count and policy resolution, on tokio's paused clock.

use std::time::Duration;

use tokio::time::{Instant, advance};

use crate::provider::ProviderConfig;
use crate::state::Policy;
use crate::state::clock::{Clock, DAY_MS, until_next_utc_day};
use crate::state::ratelimit::{DailyCount, TokenBucket};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn burst_then_one_token_per_interval() {
    let mut b = TokenBucket::default();
    for _ in 0..3 {
        b.try_take(Instant::now(), 10, 3).unwrap();
    }
    assert_eq!(b.try_take(Instant::now(), 10, 3), Err(ms(100)));
    assert_eq!(b.available(Instant::now(), 10, 3), 0);
    advance(ms(40)).await;
    assert_eq!(b.try_take(Instant::now(), 10, 3), Err(ms(60)));
    advance(ms(60)).await;
    b.try_take(Instant::now(), 10, 3).unwrap();
    assert_eq!(b.try_take(Instant::now(), 10, 3), Err(ms(100)));
    advance(ms(1_000)).await;
    assert_eq!(
        b.available(Instant::now(), 10, 3),
        3,
        "refills to the burst, not beyond"
    );
}

#[tokio::test(start_paused = true)]
async fn a_charge_drains_the_bucket_but_never_below_empty() {
    let mut b = TokenBucket::default();
    b.charge(Instant::now(), 10, 3);
    assert_eq!(b.available(Instant::now(), 10, 3), 2);
    for _ in 0..50 {
        b.charge(Instant::now(), 10, 3);
    }
    assert_eq!(b.available(Instant::now(), 10, 3), 0);
    assert_eq!(
        b.try_take(Instant::now(), 10, 3),
        Err(ms(100)),
        "empty, not in debt: the next token is one interval away"
    );
    advance(ms(100)).await;
    b.try_take(Instant::now(), 10, 3).unwrap();
}

#[tokio::test(start_paused = true)]
async fn hundred_per_second_admits_a_hundred_then_one_per_ten_ms() {
    let mut b = TokenBucket::default();
    let admitted = (0..250)
        .filter(|_| b.try_take(Instant::now(), 100, 100).is_ok())
        .count();
    assert_eq!(admitted, 100);
    assert_eq!(b.try_take(Instant::now(), 100, 100), Err(ms(10)));
}

#[test]
fn daily_count_exhausts_and_resets_at_utc_midnight() {
    let day = 20_000 * DAY_MS;
    let late = day + DAY_MS - 1_500; // 23:59:58.5
    let mut c = DailyCount::default();
    for _ in 0..3 {
        c.check(late, Some(3)).unwrap();
        c.add(late);
    }
    assert_eq!(c.check(late, Some(3)), Err(ms(1_500)));
    assert_eq!(c.used(late), 3);
    c.check(late, None).unwrap();
    let next = day + DAY_MS;
    assert_eq!(c.used(next), 0);
    c.check(next, Some(3)).unwrap();
    assert_eq!(until_next_utc_day(next), ms(86_400_000));
}

#[tokio::test(start_paused = true)]
async fn anchored_clock_moves_with_tokio_time() {
    let clock = Clock::anchored(DAY_MS - 1_000);
    advance(ms(1_500)).await;
    assert_eq!(clock.unix_ms(), DAY_MS + 500);
}

#[test]
fn policy_defaults_to_the_hub_rate_and_a_second_of_burst() {
    let mut config = ProviderConfig::default();
    let p = Policy::from_config(&config, 100);
    assert_eq!((p.rate_per_sec, p.burst, p.daily_quota), (100, 100, None));
    config.rate_limit_per_sec = Some(20);
    config.burst = Some(5);
    config.daily_quota = Some(1_000);
    let p = Policy::from_config(&config, 100);
    assert_eq!(
        (p.rate_per_sec, p.burst, p.daily_quota),
        (20, 5, Some(1_000))
    );
}
