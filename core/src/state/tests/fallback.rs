//! The fallback's share of shared limits: the arithmetic, the instance registry, and two
//! instances driven through a Redis slowed beyond the command bound by a chaos proxy (real
//! Redis, real time, bounded).

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, sleep};

use super::chaos::{Mode, proxied};
use super::{PROVIDER, breaker_policy, delete_keys, redis_url};
use crate::provider::BreakerPolicy;
use crate::state::Outcome::{Failure, Success};
use crate::state::redis::DEFAULT_COMMAND_TIMEOUT;
use crate::state::{Admission, Policy, RedisOptions, RedisState, SharedState};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn share_divides_rate_burst_and_quota_rounding_up() {
    let p = Policy {
        rate_per_sec: 50,
        burst: 50,
        daily_quota: Some(1_001),
        breaker: BreakerPolicy {
            failure_threshold: 5,
            failure_window_ms: 30_000,
            open_ms: 60_000,
        },
    };
    assert_eq!(p.share(1), p);
    assert_eq!(p.share(0), p, "an unknown count divides by one");
    let two = p.share(2);
    assert_eq!(
        (two.rate_per_sec, two.burst, two.daily_quota),
        (25, 25, Some(501))
    );
    assert_eq!(
        two.breaker, p.breaker,
        "the breaker threshold is not divided"
    );
    let three = p.share(3);
    assert_eq!(
        (three.rate_per_sec, three.burst, three.daily_quota),
        (17, 17, Some(334))
    );
    // Never below one token per second, a burst of one, a quota of one.
    let tiny = Policy {
        rate_per_sec: 1,
        burst: 1,
        daily_quota: Some(1),
        ..p
    }
    .share(64);
    assert_eq!(
        (tiny.rate_per_sec, tiny.burst, tiny.daily_quota),
        (1, 1, Some(1))
    );
    // Together within the limit plus one per instance (rounding up).
    for n in 1..=16u32 {
        let s = p.share(n);
        assert!(s.rate_per_sec * n >= 50 && s.rate_per_sec * n < 50 + n);
        assert!(s.burst * n >= 50 && s.burst * n < 50 + n);
    }
    assert_eq!(p.daily_quota.map(|_| ()), Some(()));
    assert_eq!(
        Policy {
            daily_quota: None,
            ..p
        }
        .share(4)
        .daily_quota,
        None
    );
}

/// Production bounds, a fast heartbeat (100 ms, so an entry ages out after 500 ms).
fn options(prefix: &str) -> RedisOptions {
    RedisOptions {
        prefix: prefix.to_owned(),
        heartbeat_interval: ms(100),
        ..RedisOptions::default()
    }
}

fn new_prefix() -> String {
    format!("hub:test:{}:", ulid::Ulid::new())
}

/// Polls until every state counts `n` live instances (at most `within`).
async fn until_counted(states: &[&RedisState], n: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let counts: Vec<u32> = states.iter().map(|s| s.stats().instances).collect();
        if counts.iter().all(|&c| c == n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instances counted {counts:?}, expected {n} within {within:?}"
        );
        sleep(ms(20)).await;
    }
}

async fn admit_one(s: &RedisState, p: &Policy) {
    match s.admit(PROVIDER, p).await {
        Admission::Admitted(permit) => s.record(permit, Success).await,
        other => panic!("expected admission, got {other:?}"),
    }
}

/// Admissions of a burst of `n` attempts at once.
async fn burst(s: &RedisState, p: &Policy, n: u32) -> u32 {
    let mut admitted = 0;
    for _ in 0..n {
        if let Admission::Admitted(permit) = s.admit(PROVIDER, p).await {
            admitted += 1;
            s.record(permit, Success).await;
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_instances_are_counted_and_a_gone_one_stops_counting() {
    let Some(url) = redis_url().await else { return };
    let prefix = new_prefix();
    let p = breaker_policy(5, 30_000, 60_000);
    let a = RedisState::connect(url.as_str(), options(&prefix))
        .await
        .unwrap();
    let b = RedisState::connect(url.as_str(), options(&prefix))
        .await
        .unwrap();
    // An instance counts once it admits (an admin reading snapshots does not).
    admit_one(&a, &p).await;
    until_counted(&[&a, &b], 1, ms(2_000)).await;
    admit_one(&b, &p).await;
    until_counted(&[&a, &b], 2, ms(2_000)).await;
    // Dropped: it removes itself, the other counts one again at its next heartbeat.
    drop(b);
    let t = Instant::now();
    until_counted(&[&a], 1, ms(2_000)).await;
    eprintln!("dropped instance no longer counted after {:?}", t.elapsed());

    // Gone without a word (its Redis cut, as a crashed host): aged out after 5 heartbeats.
    let Some((proxy, via)) = proxied(&url).await else {
        return;
    };
    let c = RedisState::connect(via, options(&prefix)).await.unwrap();
    admit_one(&c, &p).await;
    until_counted(&[&a, &c], 2, ms(2_000)).await;
    proxy.set(Mode::Cut);
    let t = Instant::now();
    until_counted(&[&a], 1, ms(3_000)).await;
    let aged = t.elapsed();
    eprintln!("silent instance no longer counted after {aged:?}");
    assert!(aged >= ms(300), "aged out too early: {aged:?}");
    // c keeps the last count it read.
    assert_eq!(c.stats().instances, 2);
    drop(c);
    delete_keys(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_keeps_the_last_count_and_admits_the_share() {
    let Some(url) = redis_url().await else { return };
    let Some((proxy, via)) = proxied(&url).await else {
        return;
    };
    let prefix = new_prefix();
    let a = RedisState::connect(via, options(&prefix)).await.unwrap();
    let b = RedisState::connect(url.as_str(), options(&prefix))
        .await
        .unwrap();
    let p = Policy {
        rate_per_sec: 1,
        burst: 20,
        ..breaker_policy(5, 30_000, 60_000)
    };
    // A different provider warms both up, so this one's buckets start full.
    let warm = Policy {
        rate_per_sec: 1_000,
        burst: 1_000,
        ..p
    };
    for s in [&a, &b] {
        match s.admit(ulid::Ulid::from_parts(2, 2), &warm).await {
            Admission::Admitted(permit) => s.record(permit, Success).await,
            other => panic!("{other:?}"),
        }
    }
    until_counted(&[&a, &b], 2, ms(2_000)).await;
    proxy.set(Mode::Cut);
    let admitted = burst(&a, &p, 40).await;
    let stats = a.stats();
    eprintln!("cut: {admitted} of 40 admitted at the share of burst 20; {stats:?}");
    assert_eq!(admitted, 10, "half the burst with two instances counted");
    assert_eq!(stats.instances, 2, "the last count stands");
    assert!(stats.in_fallback && stats.fallbacks >= 40, "{stats:?}");
    sleep(ms(300)).await;
    let later = a.stats();
    assert!(
        later.fallback_ms >= 300 && later.fallback_ms <= 10_000,
        "{later:?}"
    );
    assert_eq!(
        later.instances, 2,
        "still the last count after heartbeats failed"
    );
    delete_keys(&url, &prefix).await;
}

/// The fallback's breaker opens at the policy's threshold, counting the failures this instance
/// saw before Redis went away (a streak of 3: one before the cut, one admitted from the lease
/// during it, one decided locally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_locally_at_the_same_threshold_in_fallback() {
    let Some(url) = redis_url().await else { return };
    let Some((proxy, via)) = proxied(&url).await else {
        return;
    };
    let prefix = new_prefix();
    let s = RedisState::connect(via, options(&prefix)).await.unwrap();
    let p = breaker_policy(3, 30_000, 60_000);
    let fail = async || match s.admit(PROVIDER, &p).await {
        Admission::Admitted(permit) => s.record(permit, Failure).await,
        other => panic!("below the threshold, got {other:?}"),
    };
    admit_one(&s, &p).await;
    fail().await;
    assert_eq!(s.stats().fallbacks, 0);
    proxy.set(Mode::Cut);
    fail().await; // from the lease (fresh for 50 ms): its outcome cannot reach Redis
    sleep(ms(60)).await;
    fail().await; // the lease is stale: decided by the fallback
    let stats = s.stats();
    assert!(stats.in_fallback && stats.fallbacks >= 1, "{stats:?}");
    match s.admit(PROVIDER, &p).await {
        Admission::CircuitOpen { retry_after } => assert!(retry_after > ms(59_000)),
        other => panic!("three failures open the local breaker, got {other:?}"),
    }
    delete_keys(&url, &prefix).await;
}

/// One run of the issue 13 scenario: two instances (separate connections, one prefix) behind a
/// proxy that delays every chunk by `delay`, each offered 150 attempts/s for `window` against
/// 50/s + burst 50. Returns (admitted in the window, its ceiling burst + rate × elapsed).
async fn slow_redis_run(url: &str, delay: Duration, window: Duration) -> (u32, f64) {
    let (proxy, via) = proxied(url).await.expect("TCP redis");
    let prefix = new_prefix();
    let a = RedisState::connect(via.clone(), options(&prefix))
        .await
        .unwrap();
    let b = RedisState::connect(via, options(&prefix)).await.unwrap();
    assert!(a.is_connected() && b.is_connected());
    let p = Policy {
        rate_per_sec: 50,
        burst: 50,
        ..breaker_policy(5, 30_000, 60_000)
    };
    // Both admit once (so they register) and see each other before Redis slows down.
    admit_one(&a, &p).await;
    admit_one(&b, &p).await;
    until_counted(&[&a, &b], 2, ms(3_000)).await;
    proxy.set(Mode::Delay(delay));
    let start = Instant::now();
    let drive = |s: RedisState| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / 150));
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let (mut admitted, mut last) = (0u32, start);
            // Bounded: at most 150/s for `window`.
            while start.elapsed() < window {
                tick.tick().await;
                last = Instant::now();
                if let Admission::Admitted(permit) = s.admit(PROVIDER, &p).await {
                    admitted += 1;
                    s.record(permit, Success).await;
                }
            }
            (admitted, last, s.stats())
        })
    };
    let (ta, tb) = (drive(a), drive(b));
    let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
    let elapsed = (ra.1.max(rb.1) - start).as_secs_f64();
    let total = ra.0 + rb.0;
    eprintln!(
        "delay {delay:?}: admitted {} + {} = {total} in {elapsed:.3} s; a {:?}; b {:?}",
        ra.0, rb.0, ra.2, rb.2
    );
    proxy.set(Mode::Pass);
    delete_keys(url, &prefix).await;
    (total, 50.0 + 50.0 * elapsed)
}

/// Issue 13: two instances each offered 150 req/s against a shared 50/s + burst 50, Redis
/// slower than the default bound, admitted 623 and 390 in 5 s (ceiling 300) because each fell
/// back to the whole limit. Ten runs of 5 s, all at once (20 instances, bounded at 150
/// attempts/s each, about 6 s in all): a chunk delay of 60 ms (round trip ≥ 120 ms, every call
/// over the 50 ms bound) in half of them, 20 ms (round trip about the bound: some calls in
/// time, some not) in the other half. Runs past the bound stay within burst + rate × elapsed;
/// runs about it within that plus the mixed state's tolerance (one share of one retry
/// interval; measured up to 303 against 300).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_a_slow_redis_stay_within_the_shared_limit() {
    let Some(url) = redis_url().await else { return };
    assert_eq!(DEFAULT_COMMAND_TIMEOUT, ms(50), "the runs below assume it");
    let window = Duration::from_secs(5);
    let runs: Vec<_> = (0..10)
        .map(|i| {
            let url = url.clone();
            let delay = if i % 2 == 0 { ms(60) } else { ms(20) };
            tokio::spawn(async move { (delay, slow_redis_run(&url, delay, window).await) })
        })
        .collect();
    let mut results = Vec::new();
    for r in runs {
        results.push(r.await.unwrap());
    }
    for (delay, (total, ceiling)) in &results {
        // Every call over the bound: every instance on its share, the ceiling holds. Calls about
        // the bound (some in time, some not): an instance on Redis may spend what one in
        // fallback also spent until that is charged back, at most one share (25/s) of one
        // retry interval (1 s) over: the documented tolerance of the mixed state.
        let tolerance = if *delay >= ms(60) { 1.0 } else { 25.0 };
        assert!(
            f64::from(*total) <= ceiling + tolerance,
            "delay {delay:?}: {total} admitted > ceiling {ceiling:.0} + {tolerance}; all runs {results:?}"
        );
        // Degraded, not starved: the shares together still admit most of the limit.
        assert!(
            f64::from(*total) >= 0.6 * ceiling,
            "delay {delay:?}: only {total} admitted of {ceiling:.0}; all runs {results:?}"
        );
    }
}
