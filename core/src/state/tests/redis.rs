//! Redis only: two instances on one Redis, round trips per request, Redis down or stalled.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, sleep};

use super::chaos::{Mode, proxied};
use super::{PROVIDER, breaker_policy, delete_keys, redis_url, test_options};
use crate::state::Outcome::{Failure, Success};
use crate::state::{Admission, CircuitState, Policy, RedisOptions, RedisState, SharedState};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Two instances sharing one Redis and one key prefix.
async fn pair() -> Option<(RedisState, RedisState, RedisOptions, String)> {
    let url = redis_url().await?;
    let opts = test_options();
    let a = RedisState::connect(url.as_str(), opts.clone())
        .await
        .unwrap();
    let b = RedisState::connect(url.as_str(), opts.clone())
        .await
        .unwrap();
    Some((a, b, opts, url))
}

async fn fail(s: &RedisState, p: &Policy, n: usize) {
    for _ in 0..n {
        match s.admit(PROVIDER, p).await {
            Admission::Admitted(permit) => s.record(permit, Failure).await,
            other => panic!("expected admission, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opened_on_one_instance_rejects_on_the_other() {
    let Some((a, b, opts, url)) = pair().await else {
        return;
    };
    let p = breaker_policy(3, 10_000, 500);
    // b is warm: it holds a fresh view and leased tokens.
    let Admission::Admitted(permit) = b.admit(PROVIDER, &p).await else {
        panic!()
    };
    b.record(permit, Success).await;
    fail(&a, &p, 3).await;
    assert!(matches!(
        a.admit(PROVIDER, &p).await,
        Admission::CircuitOpen { .. }
    ));
    // Within lease_ttl b may still spend its lease (the stated tolerance); after it, never.
    sleep(opts.lease_ttl + ms(10)).await;
    match b.admit(PROVIDER, &p).await {
        Admission::CircuitOpen { retry_after } => assert!(retry_after <= ms(500)),
        other => panic!("b must see the open circuit, got {other:?}"),
    }
    let snap = b.snapshot(PROVIDER, &p).await.breaker;
    assert_eq!(
        (snap.state, snap.consecutive_failures),
        (CircuitState::Open, 3)
    );
    delete_keys(&url, &opts.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admits_one_probe_across_instances_and_its_success_closes_both() {
    let Some((a, b, opts, url)) = pair().await else {
        return;
    };
    let p = breaker_policy(3, 10_000, 300);
    fail(&a, &p, 3).await;
    sleep(ms(300)).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { (i, s.admit(PROVIDER, &p).await) })
        })
        .collect();
    let mut admitted = Vec::new();
    for t in tasks {
        if let (i, Admission::Admitted(permit)) = t.await.unwrap() {
            admitted.push((i, permit));
        }
    }
    assert_eq!(admitted.len(), 1, "one probe across both instances");
    let (i, probe) = admitted.pop().unwrap();
    assert!(probe.is_probe());
    let owner = if i % 2 == 0 { &a } else { &b };
    owner.record(probe, Success).await;
    sleep(opts.lease_ttl * 2).await;
    for s in [&a, &b] {
        assert!(matches!(
            s.admit(PROVIDER, &p).await,
            Admission::Admitted(_)
        ));
    }
    delete_keys(&url, &opts.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_global_within_tolerance() {
    let Some((a, b, opts, url)) = pair().await else {
        return;
    };
    let p = Policy {
        rate_per_sec: 100,
        burst: 10,
        ..breaker_policy(5, 30_000, 60_000)
    };
    let start = Instant::now();
    let window = Duration::from_secs(1);
    let tasks: Vec<_> = [a, b]
        .into_iter()
        .map(|s| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(ms(1));
                tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                let mut admitted = 0u32;
                while start.elapsed() < window {
                    tick.tick().await;
                    if let Admission::Admitted(permit) = s.admit(PROVIDER, &p).await {
                        admitted += 1;
                        s.record(permit, Success).await;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut per_instance = Vec::new();
    for t in tasks {
        per_instance.push(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total: u32 = per_instance.iter().sum();
    let ceiling = 10.0 + 100.0 * elapsed;
    eprintln!(
        "two instances admitted {per_instance:?} = {total} in {elapsed:.3} s (ceiling {ceiling:.0})"
    );
    assert!(f64::from(total) <= ceiling + 1.0, "{total} > {ceiling}");
    assert!(f64::from(total) >= 0.8 * 110.0, "{total} < 80% of 110");
    delete_keys(&url, &opts.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_request() {
    let Some(url) = redis_url().await else { return };
    for (rate, requests, every, bound) in [(1_000, 300, ms(1), 0.1), (100, 100, ms(10), 0.35)] {
        let opts = test_options();
        let prefix = opts.prefix.clone();
        let s = RedisState::connect(url.as_str(), opts).await.unwrap();
        let p = Policy {
            rate_per_sec: rate,
            burst: rate,
            ..breaker_policy(5, 30_000, 60_000)
        };
        let mut tick = tokio::time::interval(every);
        for _ in 0..requests {
            tick.tick().await;
            let Admission::Admitted(permit) = s.admit(PROVIDER, &p).await else {
                panic!("paced below the rate, every request is admitted")
            };
            s.record(permit, Success).await;
        }
        let stats = s.stats();
        let per_request = stats.round_trips as f64 / f64::from(requests);
        eprintln!(
            "{rate}/s: {} round trips for {requests} requests = {per_request:.3} per request",
            stats.round_trips
        );
        assert!(per_request <= bound, "{per_request} > {bound}");
        assert_eq!((stats.errors, stats.fallbacks), (0, 0));
        delete_keys(&url, &prefix).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_admits_locally_within_milliseconds() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let opts = RedisOptions {
        connect_timeout: ms(200),
        ..test_options()
    };
    let started = Instant::now();
    let s = RedisState::connect(format!("redis://127.0.0.1:{port}"), opts)
        .await
        .unwrap();
    assert!(started.elapsed() < ms(1_000));
    assert!(!s.is_connected());
    let p = breaker_policy(5, 30_000, 60_000);
    for _ in 0..20 {
        let t = Instant::now();
        let admission = s.admit(PROVIDER, &p).await;
        assert!(t.elapsed() < ms(5), "admission took {:?}", t.elapsed());
        let Admission::Admitted(permit) = admission else {
            panic!("{admission:?}")
        };
        s.record(permit, Success).await;
    }
    let stats = s.stats();
    assert!(stats.errors >= 1, "{stats:?}");
    assert_eq!((stats.fallbacks, stats.round_trips), (20, 0));
    // The local fallback still protects the provider.
    for _ in 0..5 {
        let Admission::Admitted(permit) = s.admit(PROVIDER, &p).await else {
            panic!()
        };
        s.record(permit, Failure).await;
    }
    assert!(matches!(
        s.admit(PROVIDER, &p).await,
        Admission::CircuitOpen { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_redis_falls_back_within_the_timeout_and_comes_back() {
    outage(Mode::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_redis_falls_back_at_once_and_reconnects() {
    outage(Mode::Cut).await;
}

/// Healthy, then `mode` for 30 requests (each answered within the command timeout by the local
/// fallback, none lost), then healthy again: requests go back to Redis.
async fn outage(mode: Mode) {
    let Some(url) = redis_url().await else { return };
    let Some((proxy, via)) = proxied(&url).await else {
        return;
    };
    let opts = RedisOptions {
        command_timeout: ms(25),
        ..test_options()
    };
    let s = RedisState::connect(via, opts.clone()).await.unwrap();
    assert!(s.is_connected());
    let p = breaker_policy(5, 30_000, 60_000);
    let admit = async |s: &RedisState| {
        let t = Instant::now();
        let Admission::Admitted(permit) = s.admit(PROVIDER, &p).await else {
            panic!()
        };
        let took = t.elapsed();
        s.record(permit, Success).await;
        took
    };
    for _ in 0..10 {
        admit(&s).await;
    }
    assert!(
        s.stats().round_trips >= 1 && s.stats().fallbacks == 0,
        "{:?}",
        s.stats()
    );

    proxy.set(mode);
    sleep(opts.lease_ttl + ms(10)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..30 {
        worst = worst.max(admit(&s).await);
    }
    let stats = s.stats();
    eprintln!("{mode:?}: worst admission {worst:?}, {stats:?}");
    assert!(
        worst < opts.command_timeout + ms(50),
        "worst admission {worst:?}"
    );
    assert!(stats.errors >= 1 && stats.fallbacks == 30, "{stats:?}");

    proxy.set(Mode::Pass);
    let deadline = Instant::now() + ms(5_000);
    loop {
        assert!(
            Instant::now() < deadline,
            "never went back to Redis: {:?}",
            s.stats()
        );
        sleep(ms(50)).await;
        let before = s.stats();
        admit(&s).await;
        let after = s.stats();
        if after.fallbacks == before.fallbacks
            && after.errors == before.errors
            && after.round_trips > before.round_trips
        {
            break;
        }
    }
    delete_keys(&url, &opts.prefix).await;
}
