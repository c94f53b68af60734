//! The DLQ through the admin API, over the real thing: module calls fail through the hub proxy,
//! the DLQ writer stores them, and operators list, read, retry (one and all, replayed by the
//! worker through the proxy once the provider recovers) and delete them — with the roles
//! enforced (a viewer reads but cannot act), every action audited, no credential in any answer,
//! and the provider's health showing its DLQ depth. SQLite and PostgreSQL.

use std::time::Duration;

use hub_tests::Mode;
use serde_json::{Value, json};
use ulid::Ulid;

use crate::support::{Api, DLQ, NOBODY, PROVIDERS, admin_for};
use crate::work::dlq::{BODY, entry_of, failing_call};
use crate::work::{SECRET, Variant, WorkHub, test_config};

const WAIT: Duration = Duration::from_secs(20);
const AUDIT: &str = "/api/v1/integrations/audit";

/// Polls `GET path` (as `token`) until `done` holds for its JSON; returns that JSON.
pub async fn poll(api: &Api, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let r = api.send("GET", path, Some(token), None).await;
        if r.status == 200 && done(&r.json()) {
            return r.json();
        }
        assert!(
            start.elapsed() < WAIT,
            "{path}: not as expected: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn dlq_is_listed_retried_and_deleted_by_operators(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (api, _stop) = admin_for(&hub).await;
    let cfg = json!({"maxAttempts": 1, "breaker": {"failureThreshold": 1000}});
    let (fake, rec) = hub.provider("pay", "api.pay.test", cfg).await;
    let (_, viewer) = api.token("viewer").await;
    let (operator_id, operator) = api.token("operator").await;
    fake.set_mode(Mode::Status(503));
    let mut failed: Vec<Ulid> = Vec::new();
    for key in ["k1", "k2", "k3"] {
        failed.push(failing_call(&hub, "api.pay.test", key).await);
    }
    for id in &failed {
        entry_of(&hub, *id).await;
    }
    let [a, b, c] = [failed[0], failed[1], failed[2]];
    let pid = rec.id.to_string();

    // Viewers read: newest first, paginated, filtered.
    let page = api
        .send(
            "GET",
            &format!("{DLQ}?limit=2&providerId={pid}&status=pending"),
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(ids(&page), [c.to_string(), b.to_string()]);
    let next = page["nextCursor"].as_str().unwrap();
    let page = api
        .send(
            "GET",
            &format!("{DLQ}?limit=2&cursor={next}"),
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(
        (ids(&page), &page["nextCursor"]),
        (vec![a.to_string()], &Value::Null)
    );
    let other = Ulid::new();
    let none = api
        .send(
            "GET",
            &format!("{DLQ}?providerId={other}"),
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(none, json!({"items": [], "nextCursor": null}));
    let e = api
        .send("GET", &format!("{DLQ}/{a}"), Some(&viewer), None)
        .await
        .json();
    assert_eq!(
        (e["id"].as_str(), e["providerId"].as_str()),
        (Some(a.to_string().as_str()), Some(pid.as_str()))
    );
    assert_eq!(
        (&e["status"], &e["method"], &e["path"]),
        (
            &json!("pending"),
            &json!("POST"),
            &json!("/v1/charges?limit=3")
        )
    );
    assert_eq!(
        (&e["requestId"], &e["idempotencyKey"], &e["lastStatus"]),
        (&json!("req-k1"), &json!("k1"), &json!(503))
    );
    assert!(e.get("body").is_none(), "entries never carry the body: {e}");

    // A viewer may not act, nor read a body.
    for (method, path) in [
        ("POST", format!("{DLQ}/{a}/retry")),
        ("POST", format!("{DLQ}/retry-all")),
        ("DELETE", format!("{DLQ}/{a}")),
        ("GET", format!("{DLQ}/{a}/body")),
    ] {
        api.send(method, &path, Some(&viewer), None)
            .await
            .problem(403, "forbidden");
    }
    let health = format!("{PROVIDERS}/{pid}/health");
    let h = api.send("GET", &health, Some(&viewer), None).await.json();
    assert_eq!(h["dlqDepth"], 3, "{h}");

    // Operators read the body (audited), then retry once the provider recovered.
    let body = api
        .send("GET", &format!("{DLQ}/{a}/body"), Some(&operator), None)
        .await;
    assert_eq!(body.header("cache-control"), Some("no-store"));
    assert_eq!(
        body.json(),
        json!({"body": BODY, "bodyEncoding": "utf8", "bodySize": BODY.len(), "bodyTruncated": false})
    );
    fake.set_mode(Mode::Ok);
    let (_stop_worker, _worker) = hub.start_worker();
    let r = api
        .send("POST", &format!("{DLQ}/{a}/retry"), Some(&operator), None)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json()["status"], "queued");
    let e = poll(&api, &format!("{DLQ}/{a}"), &viewer, |e| {
        e["status"] == "resolved"
    })
    .await;
    assert_eq!(
        (
            &e["replays"],
            &e["lastReplay"]["succeeded"],
            &e["lastReplay"]["status"]
        ),
        (&json!(1), &json!(true), &json!(200))
    );
    let sent = fake.requests().last().unwrap().clone();
    assert_eq!(
        sent.header("idempotency-key"),
        Some("k1"),
        "the same key: the provider acts once"
    );
    assert_eq!(sent.body, BODY.as_bytes());
    api.send("POST", &format!("{DLQ}/{a}/retry"), Some(&operator), None)
        .await
        .problem(409, "already_resolved");
    api.send(
        "POST",
        &format!("{DLQ}/{NOBODY}/retry"),
        Some(&operator),
        None,
    )
    .await
    .problem(404, "not_found");

    // Retry-all answers at once with the count; the worker resolves them.
    let r = api
        .send(
            "POST",
            &format!("{DLQ}/retry-all?providerId={pid}"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (202, json!({"queued": 2})),
        "{}",
        r.text
    );
    for id in [b, c] {
        poll(&api, &format!("{DLQ}/{id}"), &viewer, |e| {
            e["status"] == "resolved"
        })
        .await;
    }
    let h = api.send("GET", &health, Some(&viewer), None).await.json();
    assert_eq!(h["dlqDepth"], 0, "resolved entries are not waiting: {h}");

    // Delete: 204, then gone.
    assert_eq!(
        api.send("DELETE", &format!("{DLQ}/{b}"), Some(&operator), None)
            .await
            .status,
        204
    );
    for method in ["GET", "DELETE"] {
        api.send(method, &format!("{DLQ}/{b}"), Some(&operator), None)
            .await
            .problem(404, "not_found");
    }

    // Every action is in the audit trail, by the operator.
    let trail = api
        .send("GET", &format!("{AUDIT}?limit=200"), Some(&viewer), None)
        .await
        .json();
    let actions: Vec<(String, String)> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["actor"] == operator_id.as_str())
        .map(|i| {
            (
                i["action"].as_str().unwrap().to_owned(),
                i["targetId"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("dlq.read_body", a.to_string()),
        ("dlq.retry", a.to_string()),
        ("dlq.retry_all", pid.clone()),
        ("dlq.delete", b.to_string()),
    ] {
        assert!(
            actions.contains(&(expected.0.to_owned(), expected.1.clone())),
            "{expected:?} not in {actions:?}"
        );
    }
    assert_eq!(
        actions.len(),
        4,
        "refused and no-op requests are not audited: {actions:?}"
    );
    api.assert_never_answered(&[SECRET, "dummy-caller-key"]);
}

async fn truncated_entries_are_not_replayable(v: Variant) {
    let mut config = test_config();
    config.dlq.max_body_bytes = 16;
    let Some(hub) = WorkHub::start(v, config).await else {
        return;
    };
    let (api, _stop) = admin_for(&hub).await;
    let (fake, _) = hub
        .provider("big", "api.big.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    let id = failing_call(&hub, "api.big.test", "idem-big").await;
    entry_of(&hub, id).await;
    let e = api.admin("GET", &format!("{DLQ}/{id}"), None).await.json();
    assert_eq!(
        (&e["replayable"], &e["bodyTruncated"]),
        (&json!(false), &json!(true))
    );
    api.admin("POST", &format!("{DLQ}/{id}/retry"), None)
        .await
        .problem(409, "not_replayable");
    let r = api.admin("POST", &format!("{DLQ}/retry-all"), None).await;
    assert_eq!((r.status, r.json()), (202, json!({"queued": 0})));
    let body = api
        .admin("GET", &format!("{DLQ}/{id}/body"), None)
        .await
        .json();
    assert_eq!(
        body,
        json!({"body": &BODY[..16], "bodyEncoding": "utf8", "bodySize": 16, "bodyTruncated": true})
    );
}

mod dlq_is_listed_retried_and_deleted_by_operators {
    use super::Variant;
    #[tokio::test]
    async fn sqlite() {
        super::dlq_is_listed_retried_and_deleted_by_operators(Variant::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::dlq_is_listed_retried_and_deleted_by_operators(Variant::Postgres).await
    }
}

mod truncated_entries_are_not_replayable {
    use super::Variant;
    #[tokio::test]
    async fn sqlite() {
        super::truncated_entries_are_not_replayable(Variant::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::truncated_entries_are_not_replayable(Variant::Postgres).await
    }
}
