//! End-to-end resilience through real clients: exact upstream attempts, waits, and the
//! 429/502/503/504 answers with their headers; two hubs sharing one real Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_core::state::{RedisOptions, RedisState, SharedState};
use hub_tests::client::{client, problem, provider_json};
use hub_tests::{Backend, FakeProvider, Mode, TestHub, TestPki};
use serde_json::json;

async fn setup(config: serde_json::Value) -> Option<(TestPki, TestHub, FakeProvider, String)> {
    let pki = TestPki::new();
    let hub = TestHub::start(Backend::Sqlite, &pki).await?;
    let f = FakeProvider::start(Some(pki.server_config.clone())).await;
    let mut p = provider_json(
        "res",
        "api.res.test",
        &f,
        json!({"type": "bearer", "token": "res_SECRET_tok"}),
    );
    for (k, v) in config.as_object().unwrap() {
        p["config"][k] = v.clone();
    }
    hub.add_provider(p).await;
    let url = format!("https://api.res.test:{}/v1/thing", f.port);
    Some((pki, hub, f, url))
}

fn gaps(f: &FakeProvider) -> Vec<Duration> {
    f.arrivals().windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn transient_5xx_is_retried_with_backoff_until_success() {
    let Some((_pki, hub, f, url)) = setup(json!({"backoffBaseMs": 100})).await else {
        return;
    };
    f.script([Mode::Status(500), Mode::Status(503)]);
    let resp = client(&hub).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(f.requests().len(), 3, "two failures, then the success");
    let g = gaps(&f);
    // Zero jitter in tests: waits are exactly 100 ms then 200 ms (plus scheduling).
    assert!(
        g[0] >= Duration::from_millis(100) && g[0] < Duration::from_millis(600),
        "{g:?}"
    );
    assert!(
        g[1] >= Duration::from_millis(200) && g[1] < Duration::from_millis(700),
        "{g:?}"
    );
    // The same idempotency-free GET, the same request id on every attempt.
    let ids: Vec<_> = f
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").unwrap().to_owned())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test]
async fn exhausted_calls_get_502_and_are_handed_to_the_dlq_without_secrets() {
    let Some((_pki, hub, f, url)) = setup(json!({"backoffBaseMs": 10, "maxAttempts": 3})).await
    else {
        return;
    };
    f.set_mode(Mode::Status(500));
    let resp = client(&hub)
        .get(&url)
        .header("authorization", "Bearer caller-dummy")
        .send()
        .await
        .unwrap();
    let dlq_header = resp.headers()["x-hub-dlq-id"].to_str().unwrap().to_owned();
    let (status, body) = problem(resp).await;
    assert_eq!(body["dlqId"].as_str(), Some(dlq_header.as_str()));
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (502, "upstream_failed")
    );
    assert_eq!(f.requests().len(), 3);
    let call = hub.exhausted.lock().await.recv().await.unwrap();
    assert_eq!(
        (call.attempts, call.last_status, call.stop),
        (3, Some(500), "attempts_exhausted")
    );
    assert_eq!(
        call.id.to_string(),
        dlq_header,
        "the caller is told the DLQ entry's id"
    );
    assert_eq!(call.path, "/v1/thing");
    let dump = format!("{call:?}");
    assert!(
        !dump.contains("res_SECRET_tok") && !dump.contains("caller-dummy"),
        "{dump}"
    );
    assert!(call.excerpt.contains("\"status\":500"));
}

#[tokio::test]
async fn client_errors_are_relayed_not_retried() {
    let Some((_pki, hub, f, url)) = setup(json!({"backoffBaseMs": 10})).await else {
        return;
    };
    f.set_mode(Mode::Status(404));
    let resp = client(&hub).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(f.requests().len(), 1);
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key() {
    let Some((_pki, hub, f, url)) = setup(json!({"backoffBaseMs": 10, "maxAttempts": 3})).await
    else {
        return;
    };
    f.set_mode(Mode::Status(500));
    let c = client(&hub);
    let (s, _) = problem(c.post(&url).body("x").send().await.unwrap()).await;
    assert_eq!(s, 502);
    assert_eq!(
        f.requests().len(),
        1,
        "a POST without a key is not repeated"
    );
    let (s, _) = problem(
        c.post(&url)
            .header("idempotency-key", "k1")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 502);
    // Without idempotencyHeader configured the caller's key is just a header: still not retried.
    assert_eq!(f.requests().len(), 2);

    let Some((_pki, hub, f, url)) = setup(
        json!({"backoffBaseMs": 10, "maxAttempts": 3, "idempotencyHeader": "Idempotency-Key"}),
    )
    .await
    else {
        return;
    };
    f.set_mode(Mode::Status(500));
    let (s, _) = problem(client(&hub).post(&url).body("pay 5").send().await.unwrap()).await;
    assert_eq!(s, 502);
    let reqs = f.requests();
    assert_eq!(
        reqs.len(),
        3,
        "the hub's idempotency key makes the POST retryable"
    );
    let keys: Vec<_> = reqs
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "same key on every attempt: {keys:?}"
    );
    assert!(
        reqs.iter().all(|r| r.body == b"pay 5"),
        "the body is replayed"
    );
}

#[tokio::test]
async fn large_bodies_are_replayed_beyond_pingoras_64k() {
    let Some((_pki, hub, f, url)) = setup(json!({"backoffBaseMs": 10})).await else {
        return;
    };
    f.script([Mode::Status(502)]);
    let body = vec![b'z'; 300 * 1024];
    let resp = client(&hub)
        .put(&url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reqs = f.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.body == body));
}

#[tokio::test]
async fn throttling_provider_retry_after_is_honoured_or_ends_the_call() {
    let Some((_pki, hub, f, url)) = setup(json!({"backoffBaseMs": 10})).await else {
        return;
    };
    f.script([Mode::Throttle(1)]);
    let started = Instant::now();
    let resp = client(&hub).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(f.requests().len(), 2);
    assert!(
        gaps(&f)[0] >= Duration::from_secs(1),
        "waited what Retry-After asked"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Retry-After beyond the remaining budget: stop at once.
    let Some((_pki, hub, f, url)) =
        setup(json!({"backoffBaseMs": 10, "totalTimeoutMs": 2000, "timeoutMs": 1000})).await
    else {
        return;
    };
    f.set_mode(Mode::Throttle(30));
    let started = Instant::now();
    let (s, body) = problem(client(&hub).get(&url).send().await.unwrap()).await;
    assert_eq!(s, 502);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("retry_after_beyond_budget"),
        "{body}"
    );
    assert_eq!(f.requests().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_stalled_provider_times_out_per_attempt_and_the_caller_gets_504() {
    let Some((_pki, hub, f, url)) =
        setup(json!({"backoffBaseMs": 10, "timeoutMs": 200, "maxAttempts": 2})).await
    else {
        return;
    };
    f.set_mode(Mode::Stall);
    let started = Instant::now();
    let (s, body) = problem(client(&hub).get(&url).send().await.unwrap()).await;
    assert_eq!(
        (s, body["code"].as_str().unwrap()),
        (504, "upstream_timeout")
    );
    assert_eq!(f.requests().len(), 2);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // The caller may ask for a smaller total budget.
    let started = Instant::now();
    let (s, _) = problem(
        client(&hub)
            .get(&url)
            .header("x-hub-timeout-ms", "150")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 504);
    assert!(started.elapsed() < Duration::from_millis(2000));
}

#[tokio::test]
async fn the_breaker_opens_rejects_without_calling_then_one_probe_closes_it() {
    let Some((_pki, hub, f, url)) =
        setup(json!({"maxAttempts": 1, "breaker": {"failureThreshold": 5, "failureWindowMs": 30000, "openMs": 500}}))
            .await
    else {
        return;
    };
    f.set_mode(Mode::Status(500));
    let c = client(&hub);
    for _ in 0..5 {
        let (s, _) = problem(c.get(&url).send().await.unwrap()).await;
        assert_eq!(s, 502);
    }
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.headers()["x-circuit-breaker-open"], "true");
    assert!(resp.headers().get("retry-after").is_some());
    let (s, body) = problem(resp).await;
    assert_eq!((s, body["code"].as_str().unwrap()), (503, "circuit_open"));
    assert_eq!(f.requests().len(), 5, "no upstream call while open");

    tokio::time::sleep(Duration::from_millis(600)).await;
    f.set_mode(Mode::Ok);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200, "the probe");
    assert_eq!(
        c.get(&url).send().await.unwrap().status(),
        200,
        "closed again"
    );
    assert_eq!(f.requests().len(), 7);
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_no_upstream_call() {
    let Some((_pki, hub, f, url)) = setup(json!({"rateLimitPerSec": 2, "burst": 2})).await else {
        return;
    };
    let c = client(&hub);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(c.get(&url).send().await.unwrap());
    }
    assert_eq!(statuses[0].status(), 200);
    assert_eq!(statuses[1].status(), 200);
    let third = statuses.pop().unwrap();
    assert_eq!(third.headers()["retry-after"], "1");
    let (s, body) = problem(third).await;
    assert_eq!((s, body["code"].as_str().unwrap()), (429, "rate_limited"));
    assert_eq!(f.requests().len(), 2);
}

#[tokio::test]
async fn a_pooled_connection_the_provider_closed_is_replaced_not_failed() {
    // One attempt, and a POST without idempotency key: nothing may be retried as a failure.
    let Some((_pki, hub, f, url)) = setup(json!({"maxAttempts": 1})).await else {
        return;
    };
    let c = client(&hub);
    let first = c.post(&url).body("first").send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(f.connections(), 1);
    // The hub keeps that upstream connection for the next call through the same tunnel; the
    // provider ends it just as that call arrives.
    f.script([Mode::Hangup]);
    let second = c.post(&url).body("second").send().await.unwrap();
    assert_eq!(
        second.status(),
        200,
        "a stale pooled connection is not the provider failing"
    );
    let bodies: Vec<_> = f.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [&b"first"[..], b"second", b"second"],
        "sent on the pooled connection, then once more on a new one"
    );
    assert_eq!(f.connections(), 2);
    assert!(
        hub.exhausted.lock().await.try_recv().is_err(),
        "no DLQ entry"
    );
}

#[tokio::test]
async fn a_provider_stalling_mid_body_does_not_hold_the_caller() {
    let Some((_pki, hub, f, url)) = setup(json!({"timeoutMs": 300})).await else {
        return;
    };
    f.set_mode(Mode::StallBody);
    let started = Instant::now();
    // The caller cannot get a whole answer: the connection ends (with or without the head,
    // which the hub may still hold with the first bytes of the body when the provider stalls).
    let outcome = match client(&hub).get(&url).send().await {
        Ok(resp) => resp.bytes().await.map(|b| b.len()),
        Err(e) => Err(e),
    };
    assert!(outcome.is_err(), "{outcome:?}");
    // Bounded by the provider's timeout per read, far below the client's own 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

async fn redis_state(prefix: &str) -> Option<Arc<dyn SharedState>> {
    let url = hub_core::testing::redis_url().await?;
    // The production bounds: a hub that falls back admits only its share (issue 13).
    let opts = RedisOptions {
        prefix: prefix.to_owned(),
        ..Default::default()
    };
    Some(Arc::new(
        RedisState::connect(url.as_str(), opts).await.unwrap(),
    ))
}

#[tokio::test]
async fn two_hubs_on_one_redis_share_the_breaker_and_the_rate_limit() {
    let prefix = format!("hub:test:{}:", ulid::Ulid::new());
    let (Some(state_a), Some(state_b)) = (redis_state(&prefix).await, redis_state(&prefix).await)
    else {
        return;
    };
    let pki = TestPki::new();
    let a = TestHub::start_with(Backend::Sqlite, &pki, state_a)
        .await
        .unwrap();
    let b = TestHub::start_with(Backend::Sqlite, &pki, state_b)
        .await
        .unwrap();
    let f = FakeProvider::start(Some(pki.server_config.clone())).await;
    let mut p = provider_json("shared", "api.shared.test", &f, json!({"type": "none"}));
    p["config"]["maxAttempts"] = json!(1);
    p["config"]["rateLimitPerSec"] = json!(20);
    p["config"]["burst"] = json!(20);
    p["config"]["breaker"] = json!({"failureThreshold": 3, "openMs": 60000});
    let rec = a.add_provider(p).await;
    // Same provider (same id) in the second hub's own registry.
    b.store
        .create_provider(
            hub_core::store::ProviderInsert {
                id: rec.id,
                name: rec.name.clone(),
                tenant: rec.tenant.clone(),
                hosts: rec.hosts.clone(),
                base_url: rec.base_url.clone(),
                auth_type: rec.auth_type,
                credentials: rec.credentials.clone(),
                config: rec.config.clone(),
                status: rec.status,
            },
            None,
        )
        .await
        .unwrap();
    b.sync().await;
    let url = format!("https://api.shared.test:{}/x", f.port);

    // Global rate limit: 40 calls split over both hubs, 20 admitted (± one lease batch).
    let (ca, cb) = (client(&a), client(&b));
    let mut admitted = 0;
    let started = Instant::now();
    for i in 0..40 {
        let c = if i % 2 == 0 { &ca } else { &cb };
        if c.get(&url).send().await.unwrap().status() == 200 {
            admitted += 1;
        }
    }
    // One bucket for both: at most burst + rate × elapsed (separate buckets would admit all 40).
    let ceiling = 20.0 + 20.0 * started.elapsed().as_secs_f64();
    assert!(
        admitted >= 16 && f64::from(admitted) <= ceiling + 1.0 && admitted < 40,
        "admitted {admitted} of 40; shared ceiling {ceiling:.1}"
    );

    // Breaker opened by failures seen on A rejects calls on B.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.set_mode(Mode::Status(500));
    for _ in 0..3 {
        let (s, _) = problem(ca.get(&url).send().await.unwrap()).await;
        assert_eq!(s, 502);
    }
    let seen = f.requests().len();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = cb.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 503, "B rejects: the circuit opened on A");
    assert_eq!(resp.headers()["x-circuit-breaker-open"], "true");
    assert_eq!(f.requests().len(), seen);
}
