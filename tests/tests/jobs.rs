//! Asynchronous calls end to end: a job submitted as the proxy submits a `Prefer:
//! respond-async` call is persisted (body sealed) before the 202, executed by the worker
//! through the real hub proxy, completed with its result or failed to the DLQ, its callback
//! delivered; the same idempotency key twice is the same job; a worker killed mid-job loses
//! nothing; and what a job costs the database is measured.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use hub_core::jobs::{Db, JobError, JobStatus, JobSubmitter, JobView, NewJob, SqlQueue, WorkQueue};
use hub_core::provider::ProviderRecord;
use hub_core::state::Clock;
use hub_tests::{FakeProvider, Mode};
use serde_json::json;
use support::{SECRET, TEST_LEASE, Variant, WorkHub, eventually, test_config};
use ulid::Ulid;

const WAIT: Duration = Duration::from_secs(20);
const BODY: &str = r#"{"report":"monthly","secretField":"PLAINTEXT-REPORT"}"#;

fn new_job(rec: &ProviderRecord, key: Option<&str>, callback: Option<String>) -> NewJob {
    NewJob {
        provider_id: rec.id,
        provider: rec.name.clone(),
        tenant: rec.tenant.clone(),
        method: "POST".into(),
        path: "/v1/reports?month=11".into(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-hub-caller".into(), "reports".into()),
        ],
        body: BODY.as_bytes().to_vec().into(),
        idempotency_key: key.map(str::to_owned),
        request_id: format!("req-{}", Ulid::new()),
        callback_url: callback,
    }
}

async fn job_where(hub: &WorkHub, id: Ulid, what: &str, f: impl Fn(&JobView) -> bool) -> JobView {
    eventually(what, WAIT, || async {
        hub.bg.jobs.get(id).await.unwrap().filter(|j| f(j))
    })
    .await
}

/// A module call that fails through the proxy (no job header): once its DLQ entry exists,
/// every hand-off the proxy made before it has been processed by the writer.
async fn fence(hub: &WorkHub, host: &str) {
    let resp = hub
        .client()
        .get(format!("http://{host}/fence"))
        .send()
        .await
        .unwrap();
    let id: Ulid = resp.headers()["x-hub-dlq-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    eventually("the fence entry", WAIT, || async {
        hub.bg.dlq.get(id).await.ok()
    })
    .await;
}

async fn a_job_is_persisted_sealed_then_completed_through_the_proxy(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, rec) = hub.provider("rep", "api.rep.test", json!({})).await;
    let receipt = hub
        .bg
        .jobs
        .submit(new_job(&rec, Some("job-key-1"), None))
        .await
        .unwrap();
    assert!(receipt.created && receipt.status == JobStatus::Pending);
    assert_eq!(
        receipt.location,
        format!("/api/v1/integrations/jobs/{}", receipt.id)
    );
    let id = receipt.id;
    let raw = hub
        .raw_bytes("SELECT body FROM jobs WHERE id = ?", &id.to_string())
        .await;
    let raw = raw.expect("the request is persisted before the 202");
    assert!(
        !raw.windows(9).any(|w| w == b"PLAINTEXT"),
        "request body in clear at rest"
    );

    let (_stop, _worker) = hub.start_worker();
    let job = job_where(&hub, id, "completion", |j| j.status == JobStatus::Completed).await;
    assert_eq!(job.attempts, 1);
    let result = job.result.clone().expect("the result is kept");
    assert_eq!((result.status, result.body_encoding), (200, "utf8"));
    assert!(result.body.contains(r#""ok":true"#), "{}", result.body);
    assert!(job.dlq_id.is_none() && job.finished_at.is_some());
    let raw = hub
        .raw_bytes("SELECT result_body FROM jobs WHERE id = ?", &id.to_string())
        .await;
    assert!(
        !raw.unwrap().windows(4).any(|w| w == b"\"ok\""),
        "result body in clear at rest"
    );

    let sent = fake.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].target, "/v1/reports?month=11");
    assert_eq!(sent[0].header("idempotency-key"), Some("job-key-1"));
    assert_eq!(
        sent[0].header("x-request-id"),
        Some(job.request_id.as_str())
    );
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(sent[0].body, BODY.as_bytes());
    assert_eq!(hub.bg.dlq.count(None, None).await.unwrap(), 0);
    support::assert_no_secret("the job", &serde_json::to_string(&job).unwrap());
}

async fn a_job_that_keeps_failing_fails_to_the_dlq(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, rec) = hub
        .provider("bad", "api.bad.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Status(500));
    let receipt = hub
        .bg
        .jobs
        .submit(new_job(&rec, Some("job-bad"), None))
        .await
        .unwrap();
    let (_stop, _worker) = hub.start_worker();
    let job = job_where(&hub, receipt.id, "failure", |j| {
        j.status == JobStatus::Failed
    })
    .await;
    assert_eq!(
        job.attempts, 2,
        "jobs.max_attempts, each a full proxied call"
    );
    assert_eq!(job.last_error.as_deref(), Some("upstream_failed"));
    assert_eq!(fake.requests().len(), 2);
    let entry = hub
        .bg
        .dlq
        .get(job.dlq_id.expect("a DLQ entry"))
        .await
        .unwrap();
    assert_eq!(entry.job_id, Some(receipt.id));
    assert_eq!(entry.idempotency_key.as_deref(), Some("job-bad"));
    assert!(entry.replayable);
    assert_eq!(hub.bg.dlq.body(entry.id).await.unwrap(), BODY.as_bytes());
    // The proxy handed each failed attempt to the writer too: none became an entry.
    fence(&hub, "api.bad.test").await;
    assert_eq!(
        hub.bg.dlq.count(None, None).await.unwrap(),
        2,
        "the job's entry and the fence"
    );
}

async fn the_callback_is_delivered_with_retries(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (_fake, rec) = hub.provider("cb", "api.cb.test", json!({})).await;
    let receiver = FakeProvider::start(None).await;
    receiver.script([Mode::Status(503)]);
    let url = format!("http://127.0.0.1:{}/hooks/jobs", receiver.port);
    let receipt = hub
        .bg
        .jobs
        .submit(new_job(&rec, None, Some(url)))
        .await
        .unwrap();
    let (_stop, _worker) = hub.start_worker();
    let job = job_where(&hub, receipt.id, "callback delivery", |j| {
        j.callback.as_ref().and_then(|c| c.status.as_deref()) == Some("delivered")
    })
    .await;
    assert_eq!(job.callback.unwrap().attempts, 2, "the 503 was retried");
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    let last = &got[1];
    assert_eq!(
        (last.method.as_str(), last.target.as_str()),
        ("POST", "/hooks/jobs")
    );
    assert_eq!(
        last.header("x-hub-job-id"),
        Some(receipt.id.to_string().as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["id"], receipt.id.to_string());
    assert_eq!(body["status"], "completed");
    assert_eq!(body["result"]["status"], 200);
}

async fn the_same_idempotency_key_is_the_same_job(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, rec) = hub.provider("dup", "api.dup.test", json!({})).await;
    let first = hub
        .bg
        .jobs
        .submit(new_job(&rec, Some("dup-1"), None))
        .await
        .unwrap();
    let again = hub
        .bg
        .jobs
        .submit(new_job(&rec, Some("dup-1"), None))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert!(first.created && !again.created);
    let mut other = new_job(&rec, Some("dup-1"), None);
    other.path = "/v1/other".into();
    assert!(
        matches!(hub.bg.jobs.submit(other).await, Err(JobError::Conflict { existing }) if existing == first.id)
    );
    let ssrf = new_job(
        &rec,
        None,
        Some("http://169.254.169.254/latest/meta-data".into()),
    );
    assert!(matches!(
        hub.bg.jobs.submit(ssrf).await,
        Err(JobError::InvalidCallback(_))
    ));
    let (_stop, _worker) = hub.start_worker();
    job_where(&hub, first.id, "completion", |j| {
        j.status == JobStatus::Completed
    })
    .await;
    let after = hub
        .bg
        .jobs
        .submit(new_job(&rec, Some("dup-1"), None))
        .await
        .unwrap();
    assert_eq!((after.id, after.status), (first.id, JobStatus::Completed));
    assert_eq!(fake.requests().len(), 1, "the provider was called once");
}

async fn a_worker_killed_mid_job_loses_nothing(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, rec) = hub.provider("crash", "api.crash.test", json!({})).await;
    fake.script([Mode::Stall]);
    // Worker A: its own connection (a process of its own), killed while the provider stalls.
    let amqp = hub.own_amqp_queue().await;
    let queue_a: Arc<dyn WorkQueue> = match &amqp {
        Some(q) => q.clone(),
        None => Arc::new(SqlQueue::new(hub.db.clone(), TEST_LEASE, Clock::system())),
    };
    let (_stop_a, rx_a) = tokio::sync::watch::channel(false);
    let worker_a = tokio::spawn(hub.worker_on(queue_a).run(rx_a));
    let receipt = hub
        .bg
        .jobs
        .submit(new_job(&rec, Some("crash-1"), None))
        .await
        .unwrap();
    eventually("worker A mid-call", WAIT, || async {
        (fake.requests().len() == 1).then_some(())
    })
    .await;
    let job = hub.bg.jobs.get(receipt.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Processing);
    worker_a.abort(); // kill -9: no ack, no status change
    let _ = worker_a.await;
    if let Some(q) = amqp {
        q.close().await; // the broker sees the dead worker's connection drop
    }
    // Worker B picks the job up once A's lease has expired.
    let (_stop_b, _worker_b) = hub.start_worker();
    let job = job_where(&hub, receipt.id, "recovery", |j| {
        j.status == JobStatus::Completed
    })
    .await;
    assert_eq!(job.attempts, 2, "A's attempt counted, B's completed it");
    let sent = fake.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1].header("idempotency-key"),
        Some("crash-1"),
        "the retry is safe"
    );
}

async fn queries_per_job(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (_fake, rec) = hub.provider("cost", "api.cost.test", json!({})).await;
    // The test watches through a handle of its own, so its reads are not counted.
    let observer_db = Db::connect(&hub.url).await.unwrap();
    let observer = SqlQueue::new(observer_db.clone(), TEST_LEASE, Clock::system());
    let drained = || async {
        eventually("every job done and acked", WAIT, || async {
            (observer.depth().await.unwrap() == 0).then_some(())
        })
        .await
    };
    let n = 20u64;
    // A backlog: submitted first, then run by a worker claiming in batches.
    let t0 = hub.db.statements();
    for _ in 0..n {
        hub.bg.jobs.submit(new_job(&rec, None, None)).await.unwrap();
    }
    let submit = hub.db.statements() - t0;
    assert_eq!(submit, 2 * n, "submit = insert + push");
    let (_stop, _worker) = hub.start_worker();
    drained().await;
    let backlog = hub.db.statements() - t0;
    // A trickle: one job at a time to an idle worker woken by each push.
    let t1 = hub.db.statements();
    for _ in 0..n {
        hub.bg.jobs.submit(new_job(&rec, None, None)).await.unwrap();
        drained().await;
    }
    let trickle = hub.db.statements() - t1;
    assert_eq!(
        completed(&hub.url).await,
        2 * n as i64,
        "every job completed"
    );
    let (b, t) = (backlog as f64 / n as f64, trickle as f64 / n as f64);
    eprintln!("{v:?}: statements per job: {b:.2} (backlog), {t:.2} (trickle, idle worker)");
    assert!(b <= 6.0, "{b} statements per job in a backlog");
    assert!(t <= 7.5, "{t} statements per job one at a time");
}

/// A module's `Prefer: respond-async` call through the real proxy: 202 with the job's id and
/// location before anything reaches the provider; the same idempotency key again is the same
/// job; the worker then completes it through the proxy, without the async-only headers.
async fn prefer_respond_async_through_the_proxy(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, _rec) = hub.provider("asy", "api.asy.test", json!({})).await;
    let submit = || async {
        hub.client()
            .post("http://api.asy.test/v1/long?x=1")
            .header("prefer", "return=minimal, respond-async")
            .header("idempotency-key", "k-async-1")
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await
            .unwrap()
    };
    let resp = submit().await;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["preference-applied"], "respond-async");
    assert!(resp.headers().get("x-request-id").is_some());
    let id: Ulid = resp.headers()["x-hub-job-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        resp.headers()["location"],
        format!("/api/v1/integrations/jobs/{id}").as_str()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["jobId"], id.to_string());
    assert!(
        fake.requests().is_empty(),
        "nothing is sent before the worker runs"
    );
    let again = submit().await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.headers()["x-hub-job-id"],
        id.to_string().as_str(),
        "same key, same job"
    );

    let (_stop, _worker) = hub.start_worker();
    let job = job_where(&hub, id, "completion", |j| j.status == JobStatus::Completed).await;
    assert_eq!(job.result.as_ref().map(|r| r.status), Some(200));
    let sent = fake.requests();
    assert_eq!(sent.len(), 1, "the job ran once");
    assert_eq!(sent[0].target, "/v1/long?x=1");
    assert_eq!(sent[0].header("idempotency-key"), Some("k-async-1"));
    assert!(
        sent[0].header("prefer").is_none(),
        "the async preference is the hub's, not the provider's"
    );
    assert_eq!(sent[0].body, BODY.as_bytes());
}

/// Completed jobs, counted with a raw query.
async fn completed(url: &str) -> i64 {
    let sql = "SELECT COUNT(*) FROM jobs WHERE status = 'completed'";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
    }
}

on_all!(
    a_job_is_persisted_sealed_then_completed_through_the_proxy,
    a_job_that_keeps_failing_fails_to_the_dlq,
    the_callback_is_delivered_with_retries,
    a_worker_killed_mid_job_loses_nothing,
);
on_databases!(
    the_same_idempotency_key_is_the_same_job,
    queries_per_job,
    prefer_respond_async_through_the_proxy
);
