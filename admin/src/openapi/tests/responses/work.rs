//! The DLQ, jobs and metrics operations, for [`super::every_operation_answers_what_the_document_says`]:
//! entries written by the real DLQ writer, a job submitted as the proxy submits one, and the
//! errors each operation documents.

use serde_json::json;

use super::Checker;
use crate::testkit::{BOOTSTRAP, TestApp};

const DLQ: &str = "/api/v1/integrations/dlq";
const NOBODY: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// Exercises every DLQ/jobs/metrics operation; asserts the errors each must have answered.
pub(super) async fn exercise(app: &TestApp, c: &mut Checker) {
    let b = Some(BOOTSTRAP);
    let provider = app.provider("queue").await;
    let pid = provider["id"].as_str().unwrap();
    let one = app.dlq_entry(&provider, Some(b"{\"amount\":1}")).await;
    let binary = app.dlq_entry(&provider, Some(&[0xff, 0x00, 0xfe])).await;
    let truncated = app.dlq_entry(&provider, None).await;
    let viewer = {
        let r = app
            .send(
                "POST",
                "/api/v1/integrations/tokens",
                b,
                Some(json!({"name": "dlq-viewer", "role": "viewer"})),
            )
            .await;
        r.json()["token"].as_str().unwrap().to_owned()
    };

    c.check("listDlq", &app.send("GET", DLQ, b, None).await);
    let filtered = format!("{DLQ}?limit=1&providerId={pid}&status=pending");
    c.check("listDlq", &app.send("GET", &filtered, b, None).await);
    let mine = format!("{DLQ}?tenant=default&caller=nobody");
    let r = app.send("GET", &mine, b, None).await;
    c.check("listDlq", &r);
    assert_eq!(r.json()["items"], json!([]));
    let r = app
        .send("GET", &format!("{DLQ}?tenant=default"), b, None)
        .await;
    c.check("listDlq", &r);
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 3);
    assert_eq!(r.json()["items"][0]["tenant"], "default");
    c.check(
        "listDlq",
        &app.send("GET", &format!("{DLQ}?status=lost"), b, None)
            .await,
    );
    c.check(
        "listDlq",
        &app.send("GET", &format!("{DLQ}?providerId=x"), b, None)
            .await,
    );
    c.check("listDlq", &app.send("GET", DLQ, None, None).await);
    c.check(
        "getDlqEntry",
        &app.send("GET", &format!("{DLQ}/{one}"), Some(&viewer), None)
            .await,
    );
    c.check(
        "getDlqEntry",
        &app.send("GET", &format!("{DLQ}/{NOBODY}"), b, None).await,
    );
    c.check(
        "getDlqEntry",
        &app.send("GET", &format!("{DLQ}/nope"), b, None).await,
    );
    for id in [one, binary, truncated] {
        c.check(
            "getDlqBody",
            &app.send("GET", &format!("{DLQ}/{id}/body"), b, None).await,
        );
    }
    c.check(
        "getDlqBody",
        &app.send("GET", &format!("{DLQ}/{one}/body"), Some(&viewer), None)
            .await,
    );
    c.check(
        "getDlqBody",
        &app.send("GET", &format!("{DLQ}/{NOBODY}/body"), b, None)
            .await,
    );
    c.check(
        "retryDlqEntry",
        &app.send("POST", &format!("{DLQ}/{one}/retry"), b, None)
            .await,
    );
    c.check(
        "retryDlqEntry",
        &app.send("POST", &format!("{DLQ}/{truncated}/retry"), b, None)
            .await,
    );
    c.check(
        "retryDlqEntry",
        &app.send("POST", &format!("{DLQ}/{NOBODY}/retry"), b, None)
            .await,
    );
    c.check(
        "retryDlqEntry",
        &app.send("POST", &format!("{DLQ}/{one}/retry"), Some(&viewer), None)
            .await,
    );
    let all = format!("{DLQ}/retry-all?providerId={pid}");
    c.check("retryAllDlq", &app.send("POST", &all, b, None).await);
    c.check(
        "retryAllDlq",
        &app.send("POST", &format!("{DLQ}/retry-all"), b, None).await,
    );
    c.check(
        "retryAllDlq",
        &app.send("POST", &format!("{DLQ}/retry-all?providerId=1"), b, None)
            .await,
    );
    c.check(
        "retryAllDlq",
        &app.send("POST", &all, Some(&viewer), None).await,
    );
    c.check(
        "deleteDlqEntry",
        &app.send("DELETE", &format!("{DLQ}/{binary}"), Some(&viewer), None)
            .await,
    );
    c.check(
        "deleteDlqEntry",
        &app.send("DELETE", &format!("{DLQ}/{binary}"), b, None)
            .await,
    );
    c.check(
        "deleteDlqEntry",
        &app.send("DELETE", &format!("{DLQ}/{binary}"), b, None)
            .await,
    );

    let job = app.job(&provider).await;
    let jobs = "/api/v1/integrations/jobs";
    c.check(
        "getJob",
        &app.send("GET", &format!("{jobs}/{job}"), Some(&viewer), None)
            .await,
    );
    c.check(
        "getJob",
        &app.send("GET", &format!("{jobs}/{NOBODY}"), b, None).await,
    );
    c.check("getMetrics", &app.send("GET", "/metrics", None, None).await);

    for (op, status) in [
        ("listDlq", 400),
        ("listDlq", 401),
        ("getDlqEntry", 400),
        ("getDlqEntry", 404),
        ("getDlqBody", 403),
        ("getDlqBody", 404),
        ("retryDlqEntry", 403),
        ("retryDlqEntry", 404),
        ("retryDlqEntry", 409),
        ("retryAllDlq", 400),
        ("retryAllDlq", 403),
        ("deleteDlqEntry", 403),
        ("deleteDlqEntry", 404),
        ("getJob", 404),
    ] {
        assert!(
            c.seen.contains(&(op, status)),
            "{op} never answered {status}"
        );
    }
}
