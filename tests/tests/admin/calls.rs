//! `POST /call` through the running proxy to a fake provider, propagation of API changes to
//! that proxy, the health report from the shared state, and the open endpoints.

use std::time::Duration;

use hub_tests::client::client;
use hub_tests::{FakeProvider, Mode, TestHub, TestPki};
use serde_json::{Value, json};

use crate::support::{Api, BACKENDS, NOBODY, PROVIDERS, eventually};

const CALL: &str = "/api/v1/integrations/call";

fn pay(fake: &FakeProvider) -> Value {
    json!({
        "name": "pay",
        "hosts": ["api.pay.test"],
        "baseUrl": fake.base_url(),
        "auth": {"type": "bearer", "token": "sk_CALL_SECRET"},
        "config": {"allowPrivateNetwork": true, "idempotencyHeader": "X-Idem", "backoffBaseMs": 10}
    })
}

#[tokio::test]
async fn call_goes_through_the_proxy_like_module_traffic() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
        let p = api.create(pay(&fake)).await;
        let id = p["id"].as_str().unwrap().to_owned();
        let (operator_id, operator) = api.token("operator").await;
        let (_, viewer) = api.token("viewer").await;
        hub.sync().await; // the proxy sees the new provider within its poll period anyway

        let call = json!({"providerId": id, "method": "POST", "path": "/v1/charges?expand=1",
                          "headers": {"X-Trace": "t1", "Authorization": "Bearer DUMMY"},
                          "body": {"amount": 5}, "idempotencyKey": "idem-1"});
        let r = api
            .send("POST", CALL, Some(&operator), Some(call.clone()))
            .await;
        assert_eq!(r.status, 200, "{backend:?}: {}", r.text);
        let env = r.json();
        assert_eq!(env["status"], 200);
        let body: serde_json::Value = serde_json::from_str(env["body"].as_str().unwrap()).unwrap();
        assert_eq!((&body["ok"], &body["status"]), (&json!(true), &json!(200)));
        assert_eq!(body["len"], 12, "the provider got the JSON body whole");
        assert_eq!(env["bodyEncoding"], "utf8");
        assert_eq!(env["headers"]["content-type"], "application/json");
        assert!(env["headers"]["x-request-id"].is_string(), "{env}");
        assert!(env["headers"].get("connection").is_none());

        let got = fake.requests().pop().expect("the provider was called");
        assert_eq!(
            (got.method.as_str(), got.target.as_str()),
            ("POST", "/v1/charges?expand=1")
        );
        assert_eq!(
            got.header("authorization"),
            Some("Bearer sk_CALL_SECRET"),
            "injected"
        );
        assert_eq!(got.header("x-idem"), Some("idem-1"));
        assert_eq!(got.header("x-trace"), Some("t1"));
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(got.body, br#"{"amount":5}"#);
        assert_eq!(
            got.header("host"),
            Some(format!("localhost:{}", fake.port).as_str())
        );

        // A string body goes as is; the provider's 4xx comes back as it is.
        fake.set_mode(Mode::Status(404));
        let form = json!({"providerId": id, "method": "PUT", "path": "/v1/form", "body": "a=1&b=2",
                          "headers": {"content-type": "application/x-www-form-urlencoded"}});
        let env = api
            .send("POST", CALL, Some(&operator), Some(form))
            .await
            .json();
        assert_eq!(env["status"], 404);
        let got = fake.requests().pop().unwrap();
        assert_eq!(got.body, b"a=1&b=2");
        assert_eq!(
            got.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );

        // Failures take the pipeline's retries and come back as the hub's own answer.
        api.admin(
            "PATCH",
            &format!("{PROVIDERS}/{id}"),
            Some(json!({"config": {"maxAttempts": 2}})),
        )
        .await;
        hub.sync().await;
        fake.set_mode(Mode::Status(500));
        let before = fake.requests().len();
        let env = api
            .send("POST", CALL, Some(&operator), Some(call.clone()))
            .await
            .json();
        assert!(env["status"].as_u64().unwrap() >= 500, "{env}");
        assert_eq!(
            fake.requests().len() - before,
            2,
            "maxAttempts attempts, through the pipeline"
        );
        fake.set_mode(Mode::Ok);

        // A provider with only wildcard hosts is called at call.<suffix>.
        let wild = api
            .create(
                json!({"name": "wild", "hosts": ["*.wild.test"], "baseUrl": fake.base_url(),
                           "config": {"allowPrivateNetwork": true}}),
            )
            .await;
        hub.sync().await;
        let env = api
            .send(
                "POST",
                CALL,
                Some(&operator),
                Some(json!({"providerId": wild["id"], "method": "GET", "path": "/w"})),
            )
            .await
            .json();
        assert_eq!(env["status"], 200, "{env}");
        assert_eq!(fake.requests().pop().unwrap().target, "/w");

        // What the admin refuses itself.
        for (body, status, code, field) in [
            (
                json!({"providerId": NOBODY, "method": "GET", "path": "/"}),
                404,
                "not_found",
                None,
            ),
            (
                json!({"providerId": "nope", "method": "GET", "path": "/"}),
                422,
                "validation_failed",
                Some("providerId"),
            ),
            (
                json!({"providerId": id, "method": "CONNECT", "path": "/"}),
                422,
                "validation_failed",
                Some("method"),
            ),
            (
                json!({"providerId": id, "method": "GET", "path": "v1"}),
                422,
                "validation_failed",
                Some("path"),
            ),
            (
                json!({"providerId": id, "method": "GET", "path": "/a b"}),
                422,
                "validation_failed",
                Some("path"),
            ),
            (
                json!({"providerId": id, "method": "GET", "path": "/", "headers": {"Host": "evil.test"}}),
                422,
                "validation_failed",
                Some("headers.Host"),
            ),
            (
                json!({"providerId": id, "method": "GET", "path": "/", "headers": {"x": "a\nb"}}),
                422,
                "validation_failed",
                Some("headers.x"),
            ),
            (
                json!({"providerId": id, "method": "GET", "path": "/", "idempotencyKey": ""}),
                422,
                "validation_failed",
                Some("idempotencyKey"),
            ),
            (
                json!({"providerId": id, "method": "GET", "path": "/", "extra": 1}),
                422,
                "validation_failed",
                Some("extra"),
            ),
        ] {
            let p = api
                .send("POST", CALL, Some(&operator), Some(body.clone()))
                .await
                .problem(status, code);
            if let Some(f) = field {
                assert_eq!(p["field"], f, "{body}");
            }
        }
        api.send("POST", CALL, Some(&viewer), Some(call.clone()))
            .await
            .problem(403, "forbidden");
        api.admin(
            "PATCH",
            &format!("{PROVIDERS}/{id}"),
            Some(json!({"status": "disabled"})),
        )
        .await;
        api.send("POST", CALL, Some(&operator), Some(call))
            .await
            .problem(409, "provider_disabled");

        let audit = api
            .admin(
                "GET",
                &format!("/api/v1/integrations/audit?targetId={id}"),
                None,
            )
            .await
            .json();
        let calls: Vec<&Value> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "provider.call")
            .collect();
        assert_eq!(calls.len(), 3, "{audit}");
        assert_eq!(calls[2]["actor"], operator_id.as_str());
        assert_eq!(
            calls[2]["detail"],
            json!({"method": "POST", "path": "/v1/charges", "status": 200})
        );
        api.assert_never_answered(&["sk_CALL_SECRET"]);
    }
}

#[tokio::test]
async fn changes_reach_the_running_proxy_within_two_seconds() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
        let module = client(&hub);
        let url = format!("https://api.pay.test:{}/v1/ping", fake.port);
        let status = || {
            let module = module.clone();
            let url = url.clone();
            async move {
                module
                    .get(&url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        };
        assert_ne!(status().await, 200, "unknown before registration");

        let p = api.create(pay(&fake)).await;
        let one = format!("{PROVIDERS}/{}", p["id"].as_str().unwrap());
        let limit = Duration::from_secs(2);
        eventually(limit, "registration reaches the proxy", || async {
            status().await == 200
        })
        .await;
        api.admin("PATCH", &one, Some(json!({"status": "disabled"})))
            .await;
        eventually(limit, "disabling reaches the proxy", || async {
            status().await == 403
        })
        .await;
        api.admin("PATCH", &one, Some(json!({"status": "active"})))
            .await;
        eventually(limit, "enabling reaches the proxy", || async {
            status().await == 200
        })
        .await;
        let secret = json!({"auth": {"type": "bearer", "token": "sk_ROTATED_LIVE"}});
        api.admin("PATCH", &one, Some(secret)).await;
        eventually(limit, "new credentials reach the proxy", || async {
            status().await == 200
                && fake
                    .requests()
                    .last()
                    .and_then(|r| r.header("authorization").map(str::to_owned))
                    == Some("Bearer sk_ROTATED_LIVE".to_owned())
        })
        .await;
        assert_eq!(api.admin("DELETE", &one, None).await.status, 204);
        eventually(limit, "deletion reaches the proxy", || async {
            status().await == 403
        })
        .await;
    }
}

#[tokio::test]
async fn health_reports_the_shared_breaker_and_rate_limit() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
        let mut body = pay(&fake);
        body["config"] = json!({"allowPrivateNetwork": true, "maxAttempts": 1,
                                "rateLimitPerSec": 50, "burst": 10, "dailyQuota": 1000,
                                "breaker": {"failureThreshold": 2}});
        let p = api.create(body).await;
        let id = p["id"].as_str().unwrap().to_owned();
        let health = format!("{PROVIDERS}/{id}/health");
        let h = api.admin("GET", &health, None).await.json();
        assert_eq!(
            h,
            json!({"providerId": id, "name": "pay", "status": "active",
                   "breaker": {"state": "CLOSED", "consecutiveFailures": 0, "openedAt": null, "openUntil": null},
                   "rateLimit": {"ratePerSec": 50, "burst": 10, "dailyQuota": 1000, "available": 10, "usedToday": 0},
                   "recentOutcomes": null, "dlqDepth": 0}),
            "{backend:?}"
        );

        hub.sync().await;
        fake.set_mode(Mode::Status(500));
        let call = json!({"providerId": id, "method": "GET", "path": "/v1/fail"});
        for _ in 0..2 {
            let env = api.admin("POST", CALL, Some(call.clone())).await.json();
            assert!(env["status"].as_u64().unwrap() >= 500, "{env}");
        }
        let h = api.admin("GET", &health, None).await.json();
        assert_eq!(h["breaker"]["state"], "OPEN", "{h}");
        assert_eq!(h["breaker"]["consecutiveFailures"], 2);
        assert!(h["breaker"]["openUntil"].is_string());
        assert_eq!(h["rateLimit"]["usedToday"], 2);
        let env = api.admin("POST", CALL, Some(call)).await.json();
        assert_eq!(
            env["status"], 503,
            "the open breaker answers for the provider: {env}"
        );
        assert_eq!(env["headers"]["x-circuit-breaker-open"], "true");
        assert_eq!(fake.requests().len(), 2, "no upstream call while open");
    }
}

#[tokio::test]
async fn open_endpoints_need_no_token() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let r = api.send("GET", "/healthz", None, None).await;
        assert_eq!((r.status, r.text.as_str()), (200, "ok"));
        let r = api.send("GET", "/readyz", None, None).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json(),
            json!({"ready": true, "database": "ok", "redis": "not_configured"})
        );
        let r = api
            .send("GET", "/api/v1/integrations/ca.pem", None, None)
            .await;
        assert_eq!(r.header("content-type"), Some("application/x-pem-file"));
        assert_eq!(r.text, hub.ca_pem);
        let r = api.send("GET", "/api/v1/openapi.yaml", None, None).await;
        assert_eq!(r.header("content-type"), Some("application/yaml"));
        assert_eq!(r.text, hub_admin::openapi::OPENAPI_YAML);
    }
}
