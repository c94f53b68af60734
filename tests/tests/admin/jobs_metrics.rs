//! Asynchronous calls and `/metrics` through the admin API, over the real DLQ writer, work
//! queue and worker: a module's `Prefer: respond-async` call is followed to its result at the
//! `Location` the proxy answered; the exposition parses, and the DLQ depth, jobs and queue lag
//! gauges follow what happens in the database, labelled by nothing unbounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hub_tests::Mode;
use serde_json::json;
use ulid::Ulid;

use super::dlq::poll;
use crate::support::{Api, DLQ, NOBODY, admin_for};
use crate::work::dlq::{entry_of, failing_call};
use crate::work::{Variant, WorkHub, test_config};

const JOBS: &str = "/api/v1/integrations/jobs";
const WAIT: Duration = Duration::from_secs(20);

/// A module's asynchronous call through the hub proxy; returns the 202's `Location`.
async fn respond_async(hub: &WorkHub, host: &str) -> String {
    let resp = hub
        .client()
        .post(format!("http://{host}/v1/reports?month=11"))
        .header("prefer", "respond-async")
        .header("content-type", "application/json")
        .body(r#"{"report":"monthly"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.headers()["x-hub-job-id"].to_str().unwrap().to_owned();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("{JOBS}/{id}"));
    location
}

async fn async_jobs_are_followed_to_their_result(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (api, _stop) = admin_for(&hub).await;
    let (fake, rec) = hub.provider("rep", "api.rep.test", json!({})).await;
    let (_, viewer) = api.token("viewer").await;
    let (_stop_worker, _worker) = hub.start_worker();
    let location = respond_async(&hub, "api.rep.test").await;
    let job = poll(&api, &location, &viewer, |j| j["status"] == "completed").await;
    assert_eq!(job["providerId"], rec.id.to_string());
    assert_eq!(
        (&job["method"], &job["path"]),
        (&json!("POST"), &json!("/v1/reports?month=11"))
    );
    assert_eq!(
        (&job["result"]["status"], &job["result"]["bodyEncoding"]),
        (&json!(200), &json!("utf8"))
    );
    assert!(
        job["finishedAt"].is_string() && job["dlqId"].is_null(),
        "{job}"
    );
    let sent = fake
        .requests()
        .pop()
        .expect("the worker called the provider");
    assert_eq!(sent.body, br#"{"report":"monthly"}"#);

    api.send("GET", &format!("{JOBS}/{NOBODY}"), Some(&viewer), None)
        .await
        .problem(404, "not_found");
    api.send("GET", &format!("{JOBS}/not-a-ulid"), Some(&viewer), None)
        .await
        .problem(400, "invalid_id");
    api.send("GET", &location, None, None)
        .await
        .problem(401, "unauthorized");
}

/// Parses the text exposition: `series → value`, every sample line checked, every metric
/// announced by `# TYPE` before its samples.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.contains(*f))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no # TYPE");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        out.insert(series.to_owned(), value);
    }
    out
}

async fn metrics(api: &Api) -> (String, BTreeMap<String, f64>) {
    let r = api.send("GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let parsed = parse(&r.text);
    (r.text, parsed)
}

/// Polls `/metrics` until `series` satisfies `ok`.
async fn gauge_until(api: &Api, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        let (text, m) = metrics(api).await;
        if let Some(v) = m.get(series).copied().filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "{series} never as expected:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics_parse_and_the_gauges_follow_the_database(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (api, _stop) = admin_for(&hub).await;
    let (fake, _) = hub
        .provider("gauge", "api.gauge.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    let depth = r#"integration_dlq_depth{provider="gauge"}"#;
    gauge_until(&api, r#"integration_jobs{state="pending"}"#, |v| v == 0.0).await;
    assert!(!metrics(&api).await.1.contains_key(depth), "no entry yet");

    // A failed call moves the depth; a retry nobody works on makes the queue lag grow.
    let id = failing_call(&hub, "api.gauge.test", "g1").await;
    entry_of(&hub, id).await;
    gauge_until(&api, depth, |v| v == 1.0).await;
    assert_eq!(
        api.admin("POST", &format!("{DLQ}/{id}/retry"), None)
            .await
            .status,
        202
    );
    gauge_until(&api, "integration_queue_lag_seconds", |v| v >= 0.3).await;
    assert_eq!(
        metrics(&api).await.1[depth],
        1.0,
        "a queued entry is still in the DLQ"
    );

    // An asynchronous call with no worker stays pending.
    fake.set_mode(Mode::Ok);
    respond_async(&hub, "api.gauge.test").await;
    gauge_until(&api, r#"integration_jobs{state="pending"}"#, |v| v == 1.0).await;

    // Deleting the entry brings the depth back to 0 (the series stays, at 0).
    assert_eq!(
        api.admin("DELETE", &format!("{DLQ}/{id}"), None)
            .await
            .status,
        204
    );
    gauge_until(&api, depth, |v| v == 0.0).await;

    // Requests are counted by route template and never by id.
    let (text, m) = metrics(&api).await;
    let retried = r#"integration_admin_requests_total{code="202",method="POST",route="/api/v1/integrations/dlq/{id}/retry"}"#;
    assert_eq!(m[retried], 1.0, "{text}");
    let deleted = r#"integration_admin_requests_total{code="204",method="DELETE",route="/api/v1/integrations/dlq/{id}"}"#;
    assert_eq!(m[deleted], 1.0, "{text}");
    assert!(
        m.keys()
            .any(|k| k.starts_with("integration_admin_request_duration_seconds_bucket"))
    );
    assert!(m["integration_admin_gauges_refreshed_timestamp_seconds"] > 0.0);
    assert_eq!(m["integration_admin_gauge_refresh_errors_total"], 0.0);
    api.send("GET", &format!("/nope/{}", Ulid::new()), None, None)
        .await;
    let (text, _) = metrics(&api).await;
    assert!(
        !text.contains(&id.to_string()),
        "an id became a label:\n{text}"
    );
    assert!(text.contains(r#"route="unmatched""#), "{text}");
}

mod async_jobs_are_followed_to_their_result {
    use super::Variant;
    #[tokio::test]
    async fn sqlite() {
        super::async_jobs_are_followed_to_their_result(Variant::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::async_jobs_are_followed_to_their_result(Variant::Postgres).await
    }
}

mod metrics_parse_and_the_gauges_follow_the_database {
    use super::Variant;
    #[tokio::test]
    async fn sqlite() {
        super::metrics_parse_and_the_gauges_follow_the_database(Variant::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::metrics_parse_and_the_gauges_follow_the_database(Variant::Postgres).await
    }
}
