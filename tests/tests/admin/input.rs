//! Bad input: validation errors name the field, conflicts name the owner, and nothing ever
//! yields a 5xx: malformed JSON, wrong types and media types, huge and deep
//! bodies, unknown and invalid ids, path tricks sent byte for byte, query garbage. Every error
//! is problem+json with a stable code.

use hub_tests::{TestHub, TestPki};
use serde_json::{Value, json};

use crate::support::{ADMIN, Api, BACKENDS, DLQ, NOBODY, PROVIDERS, raw_http};

/// Method, path, content type, body, expected status and code.
type BadBody<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);

#[tokio::test]
async fn bad_bodies_are_4xx_problems() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let p = api
            .create(json!({"name": "p", "hosts": ["p.test"], "baseUrl": "https://p.test"}))
            .await;
        let one = format!("{PROVIDERS}/{}", p["id"].as_str().unwrap());
        let json_ct = Some("application/json");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        // Nested past serde_json's recursion limit where the schema takes any JSON.
        let deep_body = format!(
            r#"{{"providerId": "{NOBODY}", "method": "GET", "path": "/", "body": {deep}}}"#
        );
        let deep_config = format!(r#"{{"config": {{"a": {deep}}}}}"#);
        let huge = json!({"name": "x".repeat(300 * 1024)})
            .to_string()
            .into_bytes();
        let call = "/api/v1/integrations/call";
        let tokens = "/api/v1/integrations/tokens";
        #[rustfmt::skip]
        let cases: Vec<BadBody> = vec![
            ("POST", PROVIDERS, json_ct, b"{".to_vec(), 400, "malformed_json"),
            ("POST", PROVIDERS, json_ct, b"{\"name\": \"a\",}".to_vec(), 400, "malformed_json"),
            ("POST", PROVIDERS, json_ct, b"".to_vec(), 400, "malformed_json"),
            ("POST", PROVIDERS, json_ct, b"null".to_vec(), 422, "validation_failed"),
            ("POST", PROVIDERS, json_ct, b"[1,2]".to_vec(), 422, "validation_failed"),
            ("POST", PROVIDERS, json_ct, b"\"x\"".to_vec(), 422, "validation_failed"),
            ("POST", PROVIDERS, json_ct, deep.clone().into_bytes(), 422, "validation_failed"),
            ("POST", PROVIDERS, json_ct, b"{\"name\": 1e999}".to_vec(), 400, "malformed_json"),
            ("POST", PROVIDERS, json_ct, vec![0xff, 0xfe, b'{'], 400, "malformed_json"),
            ("POST", PROVIDERS, json_ct, huge.clone(), 413, "payload_too_large"),
            ("POST", PROVIDERS, Some("text/plain"), b"{}".to_vec(), 415, "unsupported_media_type"),
            ("POST", PROVIDERS, None, b"{}".to_vec(), 415, "unsupported_media_type"),
            ("PATCH", &one, json_ct, b"{\"config\": ".to_vec(), 400, "malformed_json"),
            ("PATCH", &one, json_ct, huge.clone(), 413, "payload_too_large"),
            ("PATCH", &one, json_ct, b"{\"hosts\": \"a.test\"}".to_vec(), 422, "validation_failed"),
            ("PATCH", &one, json_ct, deep_config.into_bytes(), 400, "malformed_json"),
            ("POST", call, json_ct, b"{}".to_vec(), 422, "validation_failed"),
            ("POST", call, json_ct, deep_body.into_bytes(), 400, "malformed_json"),
            ("POST", tokens, json_ct, b"{\"name\":\"t\",\"role\":\"root\"}".to_vec(), 422, "validation_failed"),
            ("POST", tokens, json_ct, huge, 413, "payload_too_large"),
        ];
        for (method, path, ct, body, status, code) in cases {
            let r = api.send_raw(method, path, Some(ADMIN), ct, body, &[]).await;
            assert!(r.status < 500, "{backend:?} {method} {path}: {}", r.status);
            r.problem(status, code);
        }
        // A chunked body over the limit (no Content-Length to refuse it up front).
        assert_eq!(chunked_post(&hub, 40).await, 413, "{backend:?}");
    }
}

/// POSTs `chunks` × 8 KiB of JSON whitespace with chunked encoding; returns the status.
async fn chunked_post(hub: &TestHub, chunks: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(hub.admin_addr)
        .await
        .unwrap();
    let head = format!(
        "POST {PROVIDERS} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("2000\r\n{}\r\n", " ".repeat(8192));
    for _ in 0..chunks {
        // The server may answer (and stop reading) before the body ends.
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut out = vec![0u8; 4096];
    let n = conn.read(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn ids_and_path_tricks_are_4xx() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        for (path, status, code) in [
            (format!("{PROVIDERS}/{NOBODY}"), 404, "not_found"),
            (format!("{PROVIDERS}/{NOBODY}/health"), 404, "not_found"),
            (format!("{PROVIDERS}/not-a-ulid"), 400, "invalid_id"),
            (
                format!("{PROVIDERS}/01ARZ3NDEKTSV4RRFFQ69G5FA"),
                400,
                "invalid_id",
            ),
            (
                format!("{PROVIDERS}/81ARZ3NDEKTSV4RRFFQ69G5FAV"),
                400,
                "invalid_id",
            ),
            (
                format!("{PROVIDERS}/{}", "0".repeat(5000)),
                400,
                "invalid_id",
            ),
            ("/api/v1/integrations/nope".to_owned(), 404, "not_found"),
            (format!("{DLQ}/{NOBODY}"), 404, "not_found"),
            (format!("{DLQ}/{NOBODY}/body"), 404, "not_found"),
            (
                format!("/api/v1/integrations/jobs/{NOBODY}"),
                404,
                "not_found",
            ),
            (format!("{DLQ}/not-a-ulid"), 400, "invalid_id"),
            (
                format!("/api/v1/integrations/jobs/{NOBODY}x"),
                400,
                "invalid_id",
            ),
            (format!("{DLQ}?providerId=nope"), 400, "invalid_query"),
            (format!("{DLQ}?status=lost"), 400, "invalid_query"),
            (format!("{DLQ}?cursor=1"), 400, "invalid_query"),
            (format!("{DLQ}?limit=201"), 400, "invalid_query"),
        ] {
            api.admin("GET", &path, None).await.problem(status, code);
        }
        api.admin("PUT", PROVIDERS, Some(json!({})))
            .await
            .problem(405, "method_not_allowed");
        api.admin(
            "DELETE",
            &format!("/api/v1/integrations/tokens/{NOBODY}"),
            None,
        )
        .await
        .problem(404, "not_found");

        // Byte for byte, as a URL library would never send them.
        let auth = format!("Authorization: Bearer {ADMIN}");
        for target in [
            "/api/v1/integrations/providers/..%2f",
            "/api/v1/integrations/providers/..%2fca.pem",
            "/api/v1/integrations/providers/%2e%2e",
            "/api/v1/integrations/providers/../tokens",
            "/api/v1/integrations/providers/./",
            "/api/v1/integrations/providers//",
            "/api/v1/integrations/providers/%00",
            "/api/v1/integrations/providers/%ff%fe",
            "/api/v1/integrations/providers/01ARZ3NDEKTSV4RRFFQ69G5FAV/../../tokens",
            "/api/v1/integrations/providers?limit=%ff",
            "/api/v1/integrations/providers?status[]=active",
            "/api/v1/integrations/providers?cursor=%00",
            "/api/v1/integrations/audit?cursor=-1",
            "/api/v1/integrations/audit?cursor=99999999999999999999999",
            "//api/v1/integrations/providers",
            "/api/v1/integrations/providers%2f01ARZ3NDEKTSV4RRFFQ69G5FAV",
        ] {
            for method in ["GET", "DELETE", "PATCH"] {
                let (status, body) =
                    raw_http(&hub, &format!("{method} {target} HTTP/1.1\r\n{auth}")).await;
                assert!(
                    (400..500).contains(&status),
                    "{backend:?} {method} {target}: {status} {body}"
                );
            }
        }
        // Without a token, the same tricks are 401/404, never a 5xx or a 2xx.
        for target in [
            "/api/v1/integrations/providers/..%2f",
            "/api/v1/integrations/tokens",
        ] {
            let (status, _) = raw_http(&hub, &format!("GET {target} HTTP/1.1")).await;
            assert!(status == 401 || status == 404, "{target}: {status}");
        }
    }
}

#[tokio::test]
async fn validation_errors_name_the_field_and_conflicts_name_the_owner() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let owner = api.create(crate::providers::stripe("sk_live_OWNER")).await;
        let owner_id = owner["id"].as_str().unwrap();
        let base =
            || json!({"name": "p2", "hosts": ["api.p2.test"], "baseUrl": "https://api.p2.test"});
        let with = |path: &str, value: Value| {
            let mut b = base();
            let mut target = &mut b;
            let parts: Vec<&str> = path.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                target = target
                    .as_object_mut()
                    .unwrap()
                    .entry(*part)
                    .or_insert(json!({}));
            }
            target[parts[parts.len() - 1]] = value;
            b
        };
        let cases = [
            (with("name", json!("Not A Name")), 422, "name"),
            (with("name", json!(7)), 422, "name"),
            (with("hosts", json!([])), 422, "hosts"),
            (
                with("hosts", json!(["ok.test", "bad host"])),
                422,
                "hosts[1]",
            ),
            (with("hosts", json!(["*.com"])), 422, "hosts[0]"),
            (with("hosts", json!(["a.test", "A.test"])), 422, "hosts[1]"),
            (with("baseUrl", json!("http://api.p2.test")), 422, "baseUrl"),
            (
                with("baseUrl", json!("https://user@api.p2.test")),
                422,
                "baseUrl",
            ),
            (
                with("config.timeoutMs", json!(30001)),
                422,
                "config.timeoutMs",
            ),
            (with("config.timeoutMs", json!(-1)), 422, "config.timeoutMs"),
            (
                with("config.maxAttempts", json!("three")),
                422,
                "config.maxAttempts",
            ),
            (
                with("config.breaker.openMs", json!(0)),
                422,
                "config.breaker.openMs",
            ),
            (with("config.bogus", json!(1)), 422, "config.bogus"),
            (with("extra", json!(1)), 422, "extra"),
            (with("status", json!("paused")), 422, "status"),
            (with("auth", json!({"type": "bearer"})), 422, "auth.token"),
            (
                with("auth", json!({"type": "bearer", "token": ""})),
                422,
                "auth.token",
            ),
            (
                with(
                    "auth",
                    json!({"type": "header", "name": "Host", "value": "x"}),
                ),
                422,
                "auth.name",
            ),
            (with("hosts", json!(["api.stripe.test"])), 409, "hosts[0]"),
            (with("name", json!("stripe")), 409, "name"),
        ];
        for (body, status, field) in cases {
            let r = api.admin("POST", PROVIDERS, Some(body.clone())).await;
            let code = if status == 409 {
                "conflict"
            } else {
                "validation_failed"
            };
            let p = r.problem(status, code);
            assert_eq!(p["field"], field, "{backend:?} {body}: {p}");
            if status == 409 {
                let detail = p["detail"].as_str().unwrap();
                assert!(
                    detail.contains(owner_id) && (detail.contains("stripe") || field == "name"),
                    "the conflict names the owner: {detail}"
                );
            }
        }
        // The insecure base URL is fine once allowed.
        let ok = with("baseUrl", json!("http://api.p2.test"));
        let mut ok = ok;
        ok["config"] = json!({"allowInsecureUpstream": true});
        assert_eq!(api.admin("POST", PROVIDERS, Some(ok)).await.status, 201);
    }
}
