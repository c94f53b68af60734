//! Tests for the resilience state: the pure pieces on tokio's paused clock, one behavioural
//! suite run against both backends, and Redis-only tests (two instances, round trips, outages).

mod backoff;
mod breaker;
mod chaos;
mod fallback;
mod ratelimit;
mod redis;
mod suite;

use std::sync::Arc;
use std::time::Duration;

use super::{Admission, Permit, Policy, RedisOptions, RedisState, SharedState};
use crate::provider::BreakerPolicy;

/// A state backend plus how time passes for it: advanced (paused clock) or slept (real Redis).
struct Harness {
    state: Arc<dyn SharedState>,
    paused: bool,
    /// How far a real-time retry-after may fall short of the exact value.
    slack: Duration,
    /// Redis view staleness bound; `settle` waits it out.
    lease_ttl: Duration,
    /// Redis URL and key prefix, to delete the test's keys afterwards.
    redis: Option<(String, String)>,
}

impl Harness {
    fn local() -> Self {
        Self {
            state: Arc::new(super::LocalState::new()),
            paused: true,
            slack: Duration::ZERO,
            lease_ttl: Duration::ZERO,
            redis: None,
        }
    }

    async fn redis() -> Option<Self> {
        let url = redis_url().await?;
        let opts = test_options();
        let lease_ttl = opts.lease_ttl;
        let prefix = opts.prefix.clone();
        let state = RedisState::connect(url.as_str(), opts).await.unwrap();
        assert!(
            state.is_connected(),
            "redis answered PING but RedisState did not connect"
        );
        Some(Self {
            state: Arc::new(state),
            paused: false,
            slack: Duration::from_millis(150),
            lease_ttl,
            redis: Some((url, prefix)),
        })
    }

    /// Deletes the test's Redis keys (they would expire anyway).
    async fn cleanup(&self) {
        if let Some((url, prefix)) = &self.redis {
            delete_keys(url, prefix).await;
        }
    }

    /// Lets `d` pass.
    async fn pass(&self, d: Duration) {
        if self.paused {
            tokio::time::advance(d).await;
        } else {
            tokio::time::sleep(d).await;
        }
    }

    /// Lets background work land and cached views expire (no-op in-process).
    async fn settle(&self) {
        if !self.paused {
            tokio::time::sleep(self.lease_ttl * 2).await;
        }
    }

    async fn admit(&self, policy: &Policy) -> Admission {
        self.state.admit(PROVIDER, policy).await
    }

    async fn permit(&self, policy: &Policy) -> Permit {
        match self.admit(policy).await {
            Admission::Admitted(p) => p,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    /// Asserts `expected - slack <= actual <= expected + 1 ms` (Redis rounds to milliseconds).
    fn assert_near(&self, actual: Duration, expected: Duration) {
        let lo = expected.saturating_sub(self.slack);
        let hi = expected + Duration::from_millis(1);
        assert!(
            (lo..=hi).contains(&actual),
            "{actual:?} not within [{lo:?}, {hi:?}]"
        );
    }
}

const PROVIDER: ulid::Ulid = ulid::Ulid::from_parts(1, 1);

/// A generous policy with the given breaker numbers.
fn breaker_policy(threshold: u32, window_ms: u32, open_ms: u32) -> Policy {
    Policy {
        rate_per_sec: 1000,
        burst: 1000,
        daily_quota: None,
        breaker: BreakerPolicy {
            failure_threshold: threshold,
            failure_window_ms: window_ms,
            open_ms,
        },
    }
}

/// Options for tests against the shared Redis: own key prefix, generous command timeout (the
/// machine is busy compiling; the outage tests set their own).
fn test_options() -> RedisOptions {
    RedisOptions {
        prefix: format!("hub:test:{}:", ulid::Ulid::new()),
        command_timeout: Duration::from_millis(500),
        lease_ttl: Duration::from_millis(50),
        retry_interval: Duration::from_millis(200),
        ..RedisOptions::default()
    }
}

/// Deletes every key under `prefix`.
async fn delete_keys(url: &str, prefix: &str) {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            ::redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Permit>();
    check::<Admission>();
    check::<super::LocalState>();
    check::<RedisState>();
    check::<Arc<dyn SharedState>>();
}

/// Prints the in-process cost of admit + record through `Arc<dyn SharedState>`, as the proxy
/// calls it. The bound is loose because tests run unoptimised; see the module docs for release.
#[tokio::test]
async fn local_admit_and_record_cost() {
    let state: Arc<dyn SharedState> = Arc::new(super::LocalState::new());
    let p = Policy {
        rate_per_sec: 1_000_000,
        burst: 1_000_000,
        ..breaker_policy(5, 30_000, 60_000)
    };
    let n = 100_000u32;
    let started = std::time::Instant::now();
    for _ in 0..n {
        let Admission::Admitted(permit) = state.admit(PROVIDER, &p).await else {
            panic!("within the rate")
        };
        state.record(permit, super::Outcome::Success).await;
    }
    let per = started.elapsed() / n;
    eprintln!("LocalState admit+record via Arc<dyn SharedState>: {per:?} per request");
    assert!(per < Duration::from_micros(50), "{per:?}");
}

/// The test Redis (`HUB_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), or `None` after
/// printing SKIPPED. With `CI=true` an unreachable Redis fails the test instead.
async fn redis_url() -> Option<String> {
    let url =
        std::env::var("HUB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let ping = async {
        let client = ::redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        ::redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Some(url),
        outcome => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("Redis unavailable at {url} with CI=true: {outcome:?}");
            }
            eprintln!("SKIPPED: Redis unavailable at {url}");
            None
        }
    }
}
