//! The dead-letter queue end to end: a module's call fails through the real hub proxy, the
//! caller's 502 names the entry, and the entry is what the DLQ keeps (no credential, the body
//! sealed at rest), survives a database outage and a killed writer, is replayed through the
//! same pipeline (one, or all at the provider's rate limit), listed, deleted and expired.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use hub_core::dlq::{DlqError, DlqQuery, EntryStatus, Retention};
use hub_core::state::Clock;
use hub_tests::Mode;
use serde_json::json;
use support::dlq::{BODY, WAIT, entry_of, failing_call, outage, spool_len};
use support::{SECRET, Variant, WorkHub, assert_no_secret, eventually, test_config};

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;

async fn entries_keep_the_call_but_no_credential(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, rec) = hub
        .provider(
            "pay",
            "api.pay.test",
            json!({"maxAttempts": 2, "backoffBaseMs": 0}),
        )
        .await;
    fake.set_mode(Mode::Status(503));
    let id = failing_call(&hub, "api.pay.test", "idem-1").await;
    let e = entry_of(&hub, id).await;
    assert_eq!((e.provider.as_str(), e.provider_id), ("pay", rec.id));
    assert_eq!(
        (e.method.as_str(), e.path.as_str()),
        ("POST", "/v1/charges?limit=3")
    );
    assert_eq!((e.attempts, e.last_status), (2, Some(503)));
    assert_eq!(
        (e.last_error.as_str(), e.stop.as_str()),
        ("status", "attempts_exhausted")
    );
    assert!(e.excerpt.contains("503"), "{}", e.excerpt);
    assert_eq!(e.idempotency_key.as_deref(), Some("idem-1"));
    assert_eq!(e.request_id, "req-idem-1");
    assert_eq!(e.caller.as_deref(), Some("orders"));
    assert_eq!(e.status, EntryStatus::Pending);
    assert!(e.replayable && !e.body_truncated && e.body_size == BODY.len() as u64);
    let kept_ms = e.expires_at.timestamp_millis() - e.created_at.timestamp_millis();
    assert_eq!(kept_ms, 30 * DAY_MS, "expiresAt = creation + 30 days");
    let names: Vec<&str> = e.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"content-type"), "{names:?}");
    for gone in ["authorization", "x-api-key", "cookie"] {
        assert!(!names.contains(&gone), "{gone} kept: {names:?}");
    }
    assert_no_secret("the entry", &serde_json::to_string(&e).unwrap());
    // The body opens with the vault, and is not in the raw row.
    assert_eq!(hub.bg.dlq.body(id).await.unwrap(), BODY.as_bytes());
    let raw = hub
        .raw_bytes("SELECT body FROM dlq_entries WHERE id = ?", &id.to_string())
        .await
        .expect("a sealed body is stored");
    assert!(
        !raw.windows(9).any(|w| w == b"PLAINTEXT"),
        "body in clear at rest"
    );
    assert!(
        !raw.windows(6).any(|w| w == b"amount"),
        "body in clear at rest"
    );
    // The provider got the real credential; nothing leaked into the logs.
    assert_eq!(
        fake.requests()[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_no_secret("the logs", &hub_tests::logs::contents());
}

async fn large_bodies_are_kept_truncated_and_not_replayable(v: Variant) {
    let mut config = test_config();
    config.dlq.max_body_bytes = 16;
    let Some(hub) = WorkHub::start(v, config).await else {
        return;
    };
    let (fake, _) = hub
        .provider("big", "api.big.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    let id = failing_call(&hub, "api.big.test", "idem-big").await;
    let e = entry_of(&hub, id).await;
    assert!(
        e.body_truncated && !e.replayable && e.body_size == 16,
        "{e:?}"
    );
    assert_eq!(hub.bg.dlq.body(id).await.unwrap(), &BODY.as_bytes()[..16]);
    assert!(matches!(
        hub.bg.dlq.retry(id).await,
        Err(DlqError::NotReplayable)
    ));
}

async fn entries_are_listed_by_page_and_filter_and_deleted(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (a, ra) = hub
        .provider("a", "api.a.test", json!({"maxAttempts": 1}))
        .await;
    let (b, _) = hub
        .provider("b", "api.b.test", json!({"maxAttempts": 1}))
        .await;
    a.set_mode(Mode::Status(500));
    b.set_mode(Mode::Status(500));
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(failing_call(&hub, "api.a.test", &format!("a{i}")).await);
    }
    let last = failing_call(&hub, "api.b.test", "b0").await;
    entry_of(&hub, last).await;
    for id in &ids {
        entry_of(&hub, *id).await;
    }
    let q = |before, provider_id| DlqQuery {
        provider_id,
        status: None,
        before,
        limit: 2,
        ..DlqQuery::default()
    };
    let p1 = hub.bg.dlq.list(&q(None, None)).await.unwrap();
    assert_eq!(
        p1.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![last, ids[2]]
    );
    let p2 = hub.bg.dlq.list(&q(p1.next_cursor, None)).await.unwrap();
    assert_eq!(
        p2.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[1], ids[0]]
    );
    let p3 = hub.bg.dlq.list(&q(p2.next_cursor, None)).await.unwrap();
    assert!(p3.entries.is_empty() && p3.next_cursor.is_none());
    assert_eq!(hub.bg.dlq.count(Some(ra.id), None).await.unwrap(), 3);
    assert_eq!(
        hub.bg
            .dlq
            .count(None, Some(EntryStatus::Resolved))
            .await
            .unwrap(),
        0
    );
    hub.bg.dlq.delete(ids[0]).await.unwrap();
    assert!(matches!(
        hub.bg.dlq.get(ids[0]).await,
        Err(DlqError::NotFound)
    ));
    assert!(matches!(
        hub.bg.dlq.delete(ids[0]).await,
        Err(DlqError::NotFound)
    ));
}

async fn entries_spool_while_the_database_is_down_and_flush_once(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, _) = hub
        .provider("sp", "api.sp.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    let down = outage(&hub, true).await;
    let id = failing_call(&hub, "api.sp.test", "idem-sp").await;
    eventually("the spooled entry", WAIT, || async {
        (spool_len(&hub) > 0).then_some(())
    })
    .await;
    let spool: Vec<u8> = std::fs::read_dir(hub.config.dlq_spool_dir())
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        !spool.windows(9).any(|w| w == b"PLAINTEXT"),
        "body in clear in the spool"
    );
    assert_no_secret("the spool", &String::from_utf8_lossy(&spool));
    let _proxy = down.end().await;
    let e = entry_of(&hub, id).await;
    assert_eq!(e.request_id, "req-idem-sp");
    eventually("the spool emptied", WAIT, || async {
        (spool_len(&hub) == 0).then_some(())
    })
    .await;
    assert_eq!(
        hub.bg.dlq.count(None, None).await.unwrap(),
        1,
        "flushed exactly once"
    );
}

async fn a_killed_writer_loses_nothing_and_duplicates_nothing(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, _) = hub
        .provider("kw", "api.kw.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    let down = outage(&hub, false).await;
    let id = failing_call(&hub, "api.kw.test", "idem-kill").await;
    eventually("the spooled entry", WAIT, || async {
        (spool_len(&hub) > 0).then_some(())
    })
    .await;
    // SIGKILL: the process dies with the entry only in the spool.
    hub.kill_writer().await;
    let _proxy = down.end().await;
    assert!(matches!(hub.bg.dlq.get(id).await, Err(DlqError::NotFound)));
    // The restarted hub replays the spool first.
    hub.start_writer(hub.db.clone()).await;
    entry_of(&hub, id).await;
    eventually("the spool emptied", WAIT, || async {
        (spool_len(&hub) == 0).then_some(())
    })
    .await;
    // A crash between the insert and the truncation replays records that are then no-ops.
    hub.start_writer(hub.db.clone()).await;
    assert_eq!(hub.bg.dlq.count(None, None).await.unwrap(), 1);
}

async fn retention_deletes_expired_entries_only(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, _) = hub
        .provider("rt", "api.rt.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    let id = failing_call(&hub, "api.rt.test", "idem-rt").await;
    let e = entry_of(&hub, id).await;
    let at = |offset_ms: i64| {
        let clock = Clock::anchored(e.created_at.timestamp_millis() + offset_ms);
        Retention::new(
            hub.db.clone(),
            clock,
            Duration::from_millis(50),
            Duration::from_secs(86_400),
        )
    };
    let kept = at(30 * DAY_MS - MINUTE_MS).sweep().await.unwrap();
    assert_eq!(kept.entries, 0);
    assert!(hub.bg.dlq.get(id).await.is_ok(), "not expired yet");
    // The periodic job, 30 days and a minute later.
    let (stop, rx) = tokio::sync::watch::channel(false);
    let job = tokio::spawn(at(30 * DAY_MS + MINUTE_MS).run(rx));
    eventually("the expired entry deleted", WAIT, || async {
        matches!(hub.bg.dlq.get(id).await, Err(DlqError::NotFound)).then_some(())
    })
    .await;
    stop.send_replace(true);
    job.await.unwrap();
}

async fn retry_one_succeeds_or_records_the_failure(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, _) = hub
        .provider("r1", "api.r1.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    let (ok_id, bad_id) = (
        failing_call(&hub, "api.r1.test", "idem-ok").await,
        failing_call(&hub, "api.r1.test", "idem-bad").await,
    );
    entry_of(&hub, bad_id).await;
    let (_stop, _worker) = hub.start_worker();

    fake.set_mode(Mode::Ok);
    let queued = hub.bg.dlq.retry(ok_id).await.unwrap();
    assert_eq!(queued.status, EntryStatus::Queued);
    let e = eventually("the replay", WAIT, || async {
        let e = hub.bg.dlq.get(ok_id).await.unwrap();
        (e.status == EntryStatus::Resolved).then_some(e)
    })
    .await;
    let outcome = e.last_replay.expect("outcome kept");
    assert!(
        outcome.succeeded && outcome.status == Some(200),
        "{outcome:?}"
    );
    assert_eq!(e.replays, 1);
    let sent = fake.requests().last().unwrap().clone();
    assert_eq!(
        sent.header("idempotency-key"),
        Some("idem-ok"),
        "same key: the provider acts once"
    );
    assert_eq!(sent.header("x-request-id"), Some("req-idem-ok"));
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(sent.body, BODY.as_bytes());
    assert!(matches!(
        hub.bg.dlq.retry(ok_id).await,
        Err(DlqError::Resolved)
    ));

    fake.set_mode(Mode::Status(500));
    hub.bg.dlq.retry(bad_id).await.unwrap();
    let e = eventually("the failed replay", WAIT, || async {
        let e = hub.bg.dlq.get(bad_id).await.unwrap();
        (e.replays == 1).then_some(e)
    })
    .await;
    assert_eq!(
        e.status,
        EntryStatus::Pending,
        "a failed replay leaves it pending"
    );
    let outcome = e.last_replay.unwrap();
    assert!(
        !outcome.succeeded && outcome.status == Some(502),
        "{outcome:?}"
    );
    assert_eq!(outcome.error.as_deref(), Some("upstream_failed"));
    // The proxy handed the failed replay to the writer too; it must not become a new entry. A
    // later call is a fence: once its entry exists, the replay's hand-off was processed.
    let fence = failing_call(&hub, "api.r1.test", "idem-fence").await;
    entry_of(&hub, fence).await;
    assert_eq!(hub.bg.dlq.count(None, None).await.unwrap(), 3);
}

async fn retry_all_returns_at_once_and_drains_at_the_rate_limit(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let cfg = json!({"maxAttempts": 1, "breaker": {"failureThreshold": 1000}});
    let (fake, rec) = hub.provider("ra", "api.ra.test", cfg).await;
    let (other, _) = hub
        .provider("rb", "api.rb.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    other.set_mode(Mode::Status(500));
    let n = 8;
    let mut last = None;
    for i in 0..n {
        last = Some(failing_call(&hub, "api.ra.test", &format!("all-{i}")).await);
    }
    let untouched = failing_call(&hub, "api.rb.test", "other").await;
    entry_of(&hub, untouched).await;
    entry_of(&hub, last.unwrap()).await;
    // Now limit the provider to 5 calls/s (burst 1).
    let mut config = rec.config.clone();
    config.rate_limit_per_sec = Some(5);
    config.burst = Some(1);
    let change = hub_core::store::ProviderChange {
        config: Some(config),
        ..Default::default()
    };
    hub.store
        .update_provider(rec.id, change, None)
        .await
        .unwrap();
    hub.registry.refresh().await.unwrap();
    fake.set_mode(Mode::Ok);
    let before = fake.requests().len();
    let (_stop, _worker) = hub.start_worker();

    let t0 = Instant::now();
    let queued = hub
        .bg
        .dlq
        .retry_all(&hub_core::dlq::DlqFilter {
            provider_id: Some(rec.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "retry-all answers at once"
    );
    assert_eq!(queued, n);
    eventually("every entry resolved", Duration::from_secs(30), || async {
        let done = hub
            .bg
            .dlq
            .count(Some(rec.id), Some(EntryStatus::Resolved))
            .await
            .unwrap();
        (done == n as usize).then_some(())
    })
    .await;
    let arrivals = &fake.arrivals()[before..];
    assert_eq!(
        arrivals.len(),
        n as usize,
        "one call per entry: the hub's 429s are not attempts"
    );
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(
        span >= Duration::from_millis(1_100),
        "drained at 5/s, not at once: {span:?}"
    );
    let other_entry = hub.bg.dlq.get(untouched).await.unwrap();
    assert_eq!(
        other_entry.status,
        EntryStatus::Pending,
        "other providers are not retried"
    );
}

on_databases!(
    entries_keep_the_call_but_no_credential,
    large_bodies_are_kept_truncated_and_not_replayable,
    entries_are_listed_by_page_and_filter_and_deleted,
    entries_spool_while_the_database_is_down_and_flush_once,
    a_killed_writer_loses_nothing_and_duplicates_nothing,
    retention_deletes_expired_entries_only,
);
on_all!(
    retry_one_succeeds_or_records_the_failure,
    retry_all_returns_at_once_and_drains_at_the_rate_limit,
);
