//! Snapshots of the error bodies clients code against: every field of the problem document,
//! for one occurrence of each kind. A change here is a change of the API.

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};

use crate::testkit::{BOOTSTRAP, TestApp};

const P: &str = "/api/v1/integrations/providers";
const NOBODY: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

fn problem(code: &str, title: &str, status: u16, detail: &str, field: Option<&str>) -> Value {
    let mut v = json!({
        "type": format!("urn:integration-hub:problem:{code}"),
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    });
    if let Some(f) = field {
        v["field"] = f.into();
    }
    v
}

fn post(uri: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut r = Request::post(uri).header("authorization", format!("Bearer {BOOTSTRAP}"));
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    r.body(body.into()).unwrap()
}

#[tokio::test]
async fn error_bodies_are_stable() {
    let app = TestApp::new().await;
    let owner = app.provider("owner").await;
    let owner_id = owner["id"].as_str().unwrap();
    let (viewer_status, viewer) = {
        let r = app
            .send(
                "POST",
                "/api/v1/integrations/tokens",
                Some(BOOTSTRAP),
                Some(json!({"name": "v", "role": "viewer"})),
            )
            .await;
        (
            r.status,
            r.json()["token"].as_str().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(viewer_status, 201);
    let b = Some(BOOTSTRAP);

    let cases: Vec<(crate::testkit::Resp, Value)> = vec![
        (
            app.send("GET", P, None, None).await,
            problem(
                "unauthorized",
                "Unauthorized",
                401,
                "a valid bearer token is required",
                None,
            ),
        ),
        (
            app.send("DELETE", &format!("{P}/{owner_id}"), Some(&viewer), None)
                .await,
            problem(
                "forbidden",
                "Forbidden",
                403,
                "this needs the Admin role; the token has Viewer",
                None,
            ),
        ),
        (
            app.send("GET", &format!("{P}/nope"), b, None).await,
            problem(
                "invalid_id",
                "Invalid id",
                400,
                "not a valid ULID",
                Some("id"),
            ),
        ),
        (
            app.send("GET", &format!("{P}/{NOBODY}"), b, None).await,
            problem(
                "not_found",
                "Not found",
                404,
                &format!("no provider with id {NOBODY}"),
                None,
            ),
        ),
        (
            app.send("GET", "/api/v1/integrations/nope", b, None).await,
            problem("not_found", "Not found", 404, "no such route", None),
        ),
        (
            app.send("PUT", P, b, None).await,
            problem(
                "method_not_allowed",
                "Method not allowed",
                405,
                "method not allowed on this route",
                None,
            ),
        ),
        (
            app.send("GET", &format!("{P}?limit=0"), b, None).await,
            problem(
                "invalid_query",
                "Invalid query parameter",
                400,
                "must be between 1 and 200",
                Some("limit"),
            ),
        ),
        (
            app.raw(post(P, Some("application/json"), "{\"name\":"))
                .await,
            problem(
                "malformed_json",
                "Malformed JSON",
                400,
                "malformed JSON: EOF while parsing a value",
                None,
            ),
        ),
        (
            app.raw(post(P, Some("text/plain"), "{}")).await,
            problem(
                "unsupported_media_type",
                "Unsupported media type",
                415,
                "expected Content-Type: application/json",
                None,
            ),
        ),
        (
            app.raw(post(
                P,
                Some("application/json"),
                vec![b' '; crate::BODY_LIMIT + 1],
            ))
            .await,
            problem(
                "payload_too_large",
                "Payload too large",
                413,
                "the request body exceeds 262144 bytes",
                None,
            ),
        ),
        (
            app.send(
                "POST",
                P,
                b,
                Some(
                    json!({"name": "x", "hosts": ["x.test"], "baseUrl": "https://x.test",
                                                "config": {"timeoutMs": 30001}}),
                ),
            )
            .await,
            problem(
                "validation_failed",
                "Validation failed",
                422,
                "must be between 1 and 30000",
                Some("config.timeoutMs"),
            ),
        ),
        (
            app.send(
                "POST",
                P,
                b,
                Some(
                    json!({"name": "x", "hosts": ["x.test"], "baseUrl": "https://x.test",
                                                "auth": {"type": "bearer", "token": 12345}}),
                ),
            )
            .await,
            problem(
                "validation_failed",
                "Validation failed",
                422,
                "invalid type: integer, expected a string",
                Some("auth"),
            ),
        ),
        (
            app.send(
                "POST",
                P,
                b,
                Some(
                    json!({"name": "x", "hosts": ["api.owner.test"], "baseUrl": "https://x.test"}),
                ),
            )
            .await,
            problem(
                "conflict",
                "Conflict",
                409,
                &format!("host api.owner.test is already claimed by provider owner ({owner_id})"),
                Some("hosts[0]"),
            ),
        ),
    ];
    for (resp, expected) in cases {
        assert_eq!(resp.media_type(), "application/problem+json");
        assert_eq!(resp.json(), expected);
        assert_eq!(resp.status, expected["status"]);
    }

    let stale = Request::patch(format!("{P}/{owner_id}"))
        .header("authorization", format!("Bearer {BOOTSTRAP}"))
        .header("content-type", "application/json")
        .header("if-match", "\"7\"")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(
        app.raw(stale).await.json(),
        problem(
            "precondition_failed",
            "Precondition failed",
            412,
            "the resource changed since the given version",
            None
        )
    );
    assert!(
        app.store
            .get_provider(owner_id.parse().unwrap())
            .await
            .unwrap()
            .is_some(),
        "refused requests changed nothing"
    );
}
