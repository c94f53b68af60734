//! Real answers of every operation — successes and the errors each documents — validated
//! against the document: the status must be documented for the operation, the media type too,
//! the body must match the schema (response schemas forbid unknown properties, so a field added
//! to the code and not to the document fails as surely as one removed), and documented headers
//! must be present.

mod work;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};

use super::{deref, doc, validator};
use crate::routes::ROUTES;
use crate::testkit::{BOOTSTRAP, Resp, TestApp};

struct Checker {
    doc: Value,
    seen: BTreeSet<(&'static str, u16)>,
}

impl Checker {
    fn check(&mut self, operation_id: &'static str, r: &Resp) {
        let route = ROUTES
            .iter()
            .find(|r| r.operation_id == operation_id)
            .unwrap_or_else(|| panic!("no route {operation_id}"));
        let op = &self.doc["paths"][route.path][route.verb.as_str()];
        let documented = op["responses"]
            .get(r.status.to_string())
            .unwrap_or_else(|| panic!("{operation_id}: status {} is not documented", r.status));
        let documented = deref(&self.doc, documented);
        let content = &documented["content"];
        if content.is_null() {
            assert!(
                r.body.is_empty(),
                "{operation_id} {}: undocumented body",
                r.status
            );
        } else {
            let media = r.media_type();
            let schema = &content[&media]["schema"];
            assert!(
                !schema.is_null(),
                "{operation_id} {}: media type {media:?} not documented",
                r.status
            );
            let value = if media.ends_with("json") {
                r.json()
            } else {
                Value::String(String::from_utf8(r.body.to_vec()).expect("text body"))
            };
            let v = validator(&self.doc, schema);
            let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{operation_id} {}: body breaks the document: {errors:?}\n{value:#}",
                r.status
            );
        }
        if let Some(headers) = documented["headers"].as_object() {
            for name in headers.keys() {
                assert!(
                    r.header(name).is_some(),
                    "{operation_id} {}: documented header {name} missing",
                    r.status
                );
            }
        }
        self.seen.insert((operation_id, r.status));
    }
}

const P: &str = "/api/v1/integrations/providers";

#[tokio::test]
async fn every_operation_answers_what_the_document_says() {
    let app = TestApp::new().await;
    let mut c = Checker {
        doc: doc(),
        seen: BTreeSet::new(),
    };
    let b = Some(BOOTSTRAP);

    c.check("healthz", &app.send("GET", "/healthz", None, None).await);
    c.check("readyz", &app.send("GET", "/readyz", None, None).await);
    c.check(
        "getOpenApi",
        &app.send("GET", "/api/v1/openapi.yaml", None, None).await,
    );
    c.check(
        "getCaPem",
        &app.send("GET", "/api/v1/integrations/ca.pem", None, None)
            .await,
    );

    // Providers: create and its errors.
    let stripe = app.provider("stripe").await;
    let id = stripe["id"].as_str().unwrap().to_owned();
    let new = json!({"name": "other", "hosts": ["api.other.test"], "baseUrl": "https://api.other.test",
                     "auth": {"type": "basic", "username": "u", "password": "p"},
                     "config": {"idempotencyHeader": "X-Idem", "dailyQuota": 1000}});
    c.check("createProvider", &app.send("POST", P, b, Some(new)).await);
    let dup = json!({"name": "dup", "hosts": ["api.stripe.test"], "baseUrl": "https://x.test"});
    c.check("createProvider", &app.send("POST", P, b, Some(dup)).await);
    let bad = json!({"name": "bad", "hosts": ["x.test"], "baseUrl": "https://x.test",
                     "config": {"timeoutMs": 30001}});
    c.check("createProvider", &app.send("POST", P, b, Some(bad)).await);
    c.check(
        "createProvider",
        &app.send("POST", P, None, Some(json!({}))).await,
    );
    let malformed = Request::post(P)
        .header("authorization", format!("Bearer {BOOTSTRAP}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"name\":"))
        .unwrap();
    c.check("createProvider", &app.raw(malformed).await);
    let text = Request::post(P)
        .header("authorization", format!("Bearer {BOOTSTRAP}"))
        .body(Body::from("{}"))
        .unwrap();
    c.check("createProvider", &app.raw(text).await);
    let huge = Request::post(P)
        .header("authorization", format!("Bearer {BOOTSTRAP}"))
        .header("content-type", "application/json")
        .body(Body::from(vec![b' '; crate::BODY_LIMIT + 1]))
        .unwrap();
    c.check("createProvider", &app.raw(huge).await);

    // Reads.
    c.check(
        "listProviders",
        &app.send("GET", &format!("{P}?limit=1"), b, None).await,
    );
    c.check(
        "listProviders",
        &app.send("GET", &format!("{P}?limit=0"), b, None).await,
    );
    let one = format!("{P}/{id}");
    c.check("getProvider", &app.send("GET", &one, b, None).await);
    c.check(
        "getProvider",
        &app.send("GET", &format!("{P}/01ARZ3NDEKTSV4RRFFQ69G5FAV"), b, None)
            .await,
    );
    c.check(
        "getProvider",
        &app.send("GET", &format!("{P}/not-a-ulid"), b, None).await,
    );
    c.check(
        "getProviderHealth",
        &app.send("GET", &format!("{one}/health"), b, None).await,
    );

    // Changes.
    let patch = json!({"config": {"timeoutMs": 2000}, "auth": {"type": "header", "name": "X-Key", "value": "v"}});
    c.check(
        "updateProvider",
        &app.send("PATCH", &one, b, Some(patch)).await,
    );
    let stale = Request::patch(&one)
        .header("authorization", format!("Bearer {BOOTSTRAP}"))
        .header("content-type", "application/json")
        .header("if-match", "\"99\"")
        .body(Body::from("{}"))
        .unwrap();
    c.check("updateProvider", &app.raw(stale).await);
    let taken = json!({"name": "other"});
    c.check(
        "updateProvider",
        &app.send("PATCH", &one, b, Some(taken)).await,
    );
    let unknown = json!({"config": {"timeoutMS": 5}});
    c.check(
        "updateProvider",
        &app.send("PATCH", &one, b, Some(unknown)).await,
    );

    // Calls.
    let call = json!({"providerId": id, "method": "POST", "path": "/v1/charges", "body": {"amount": 1},
                      "idempotencyKey": "k-1"});
    c.check(
        "callProvider",
        &app.send("POST", "/api/v1/integrations/call", b, Some(call))
            .await,
    );
    let nobody = json!({"providerId": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "method": "GET", "path": "/"});
    c.check(
        "callProvider",
        &app.send("POST", "/api/v1/integrations/call", b, Some(nobody))
            .await,
    );
    let trace = json!({"providerId": id, "method": "TRACE", "path": "/"});
    c.check(
        "callProvider",
        &app.send("POST", "/api/v1/integrations/call", b, Some(trace))
            .await,
    );

    // Tokens and roles.
    let tokens = "/api/v1/integrations/tokens";
    let created = app
        .send(
            "POST",
            tokens,
            b,
            Some(json!({"name": "grafana", "role": "viewer"})),
        )
        .await;
    c.check("createToken", &created);
    let viewer = created.json()["token"].as_str().unwrap().to_owned();
    let token_id = created.json()["id"].as_str().unwrap().to_owned();
    c.check(
        "createToken",
        &app.send(
            "POST",
            tokens,
            b,
            Some(json!({"name": "", "role": "viewer"})),
        )
        .await,
    );
    c.check(
        "createToken",
        &app.send(
            "POST",
            tokens,
            Some(&viewer),
            Some(json!({"name": "x", "role": "admin"})),
        )
        .await,
    );
    c.check("listTokens", &app.send("GET", tokens, b, None).await);
    c.check(
        "listProviders",
        &app.send("GET", P, Some(&viewer), None).await,
    );
    c.check(
        "deleteProvider",
        &app.send("DELETE", &one, Some(&viewer), None).await,
    );
    let call_again = json!({"providerId": id, "method": "GET", "path": "/"});
    c.check(
        "callProvider",
        &app.send(
            "POST",
            "/api/v1/integrations/call",
            Some(&viewer),
            Some(call_again.clone()),
        )
        .await,
    );
    c.check(
        "revokeToken",
        &app.send("DELETE", &format!("{tokens}/{token_id}"), b, None)
            .await,
    );
    c.check(
        "revokeToken",
        &app.send(
            "DELETE",
            &format!("{tokens}/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            b,
            None,
        )
        .await,
    );
    c.check(
        "listProviders",
        &app.send("GET", P, Some(&viewer), None).await,
    );

    // Disabled providers are not called; deletion.
    let disable = json!({"status": "disabled"});
    c.check(
        "updateProvider",
        &app.send("PATCH", &one, b, Some(disable)).await,
    );
    c.check(
        "callProvider",
        &app.send("POST", "/api/v1/integrations/call", b, Some(call_again))
            .await,
    );
    c.check("deleteProvider", &app.send("DELETE", &one, b, None).await);
    c.check("deleteProvider", &app.send("DELETE", &one, b, None).await);

    c.check(
        "listAudit",
        &app.send("GET", "/api/v1/integrations/audit?limit=2", b, None)
            .await,
    );
    c.check(
        "listAudit",
        &app.send("GET", "/api/v1/integrations/audit?cursor=abc", b, None)
            .await,
    );

    work::exercise(&app, &mut c).await;

    // Tenants, callers, grants, explain.
    let api = "/api/v1/integrations";
    let tenants = format!("{api}/tenants");
    c.check(
        "createTenant",
        &app.send("POST", &tenants, b, Some(json!({"name": "acme"})))
            .await,
    );
    c.check(
        "createTenant",
        &app.send("POST", &tenants, b, Some(json!({"name": "acme"})))
            .await,
    );
    c.check(
        "createTenant",
        &app.send("POST", &tenants, b, Some(json!({"name": "Bad"})))
            .await,
    );
    c.check("listTenants", &app.send("GET", &tenants, b, None).await);
    let callers = format!("{api}/callers");
    let created = app
        .send(
            "POST",
            &callers,
            b,
            Some(json!({"name": "billing", "groups": ["payments"]})),
        )
        .await;
    c.check("createCaller", &created);
    let caller_id = created.json()["id"].as_str().unwrap().to_owned();
    c.check(
        "createCaller",
        &app.send("POST", &callers, b, Some(json!({"name": "billing"})))
            .await,
    );
    c.check(
        "createCaller",
        &app.send(
            "POST",
            &callers,
            b,
            Some(json!({"name": "x", "tenant": "nope"})),
        )
        .await,
    );
    c.check(
        "listCallers",
        &app.send("GET", &format!("{callers}?tenant=default&limit=1"), b, None)
            .await,
    );
    let one_caller = format!("{callers}/{caller_id}");
    c.check("getCaller", &app.send("GET", &one_caller, b, None).await);
    c.check(
        "updateCaller",
        &app.send(
            "PATCH",
            &one_caller,
            b,
            Some(json!({"groups": ["payments", "ops"], "expiresAt": null})),
        )
        .await,
    );
    c.check(
        "rotateCallerToken",
        &app.send("POST", &format!("{one_caller}/token"), b, None)
            .await,
    );
    let gw = app.provider("gw").await;
    let grants = format!("{api}/grants");
    let grant = app
        .send(
            "POST",
            &grants,
            b,
            Some(json!({"caller": caller_id, "provider": gw["id"], "methods": ["GET"], "paths": ["/v1/{id}", "/v2/**"], "rateLimitPerSec": 5})),
        )
        .await;
    c.check("createGrant", &grant);
    let grant_id = grant.json()["id"].as_str().unwrap().to_owned();
    c.check(
        "createGrant",
        &app.send(
            "POST",
            &grants,
            b,
            Some(json!({"group": "ops", "provider": "gw", "methods": ["*"], "paths": ["/**"]})),
        )
        .await,
    );
    c.check(
        "createGrant",
        &app.send(
            "POST",
            &grants,
            b,
            Some(json!({"group": "ops", "provider": "gw", "methods": ["get"], "paths": ["/**"]})),
        )
        .await,
    );
    c.check(
        "listGrants",
        &app.send("GET", &format!("{grants}?caller={caller_id}"), b, None)
            .await,
    );
    c.check(
        "getGrant",
        &app.send("GET", &format!("{grants}/{grant_id}"), b, None)
            .await,
    );
    let host = gw["hosts"][0].as_str().unwrap();
    c.check(
        "explain",
        &app.send(
            "GET",
            &format!("{api}/explain?caller=billing&method=GET&url=https://{host}/v1/abc"),
            b,
            None,
        )
        .await,
    );
    c.check(
        "explain",
        &app.send(
            "GET",
            &format!("{api}/explain?caller=billing&method=DELETE&url=https://{host}/v1/abc"),
            b,
            None,
        )
        .await,
    );
    c.check(
        "explain",
        &app.send(
            "GET",
            &format!("{api}/explain?caller=billing&method=GET&url=ftp://x"),
            b,
            None,
        )
        .await,
    );
    scoped_token(&app, &mut c, gw["id"].as_str().unwrap(), &caller_id).await;
    c.check(
        "deleteGrant",
        &app.send("DELETE", &format!("{grants}/{grant_id}"), b, None)
            .await,
    );
    c.check(
        "deleteGrant",
        &app.send("DELETE", &format!("{grants}/{grant_id}"), b, None)
            .await,
    );
    c.check(
        "revokeCaller",
        &app.send("DELETE", &one_caller, b, None).await,
    );
    c.check(
        "deleteTenant",
        &app.send("DELETE", &format!("{tenants}/acme"), b, None)
            .await,
    );
    c.check(
        "deleteTenant",
        &app.send("DELETE", &format!("{tenants}/default"), b, None)
            .await,
    );

    for r in ROUTES {
        assert!(
            c.seen
                .iter()
                .any(|(op, s)| *op == r.operation_id && (200..300).contains(s)),
            "{} was never exercised successfully",
            r.operation_id
        );
    }
    let expected_errors = [
        ("createProvider", 400),
        ("createProvider", 401),
        ("createProvider", 409),
        ("createProvider", 413),
        ("createProvider", 415),
        ("createProvider", 422),
        ("listProviders", 400),
        ("getProvider", 400),
        ("getProvider", 404),
        ("updateProvider", 409),
        ("updateProvider", 412),
        ("updateProvider", 422),
        ("callProvider", 403),
        ("callProvider", 404),
        ("callProvider", 409),
        ("callProvider", 422),
        ("createToken", 403),
        ("createToken", 422),
        ("deleteProvider", 403),
        ("deleteProvider", 404),
        ("revokeToken", 404),
        ("listProviders", 401),
        ("listAudit", 400),
        ("listAudit", 403),
        ("createProvider", 403),
        ("updateProvider", 403),
        ("createTenant", 403),
        ("getCaller", 404),
        ("getGrant", 404),
    ];
    for (op, status) in expected_errors {
        assert!(
            c.seen.contains(&(op, status)),
            "{op} never answered {status}"
        );
    }
}

/// A token scoped to tenant `acme` (which exists): what it sees, what it may not do. It is
/// revoked at the end and what it created deleted, so the tenant can go.
async fn scoped_token(
    app: &TestApp,
    c: &mut Checker,
    default_provider: &str,
    default_caller: &str,
) {
    let b = Some(BOOTSTRAP);
    let api = "/api/v1/integrations";
    let tokens = format!("{api}/tokens");
    let created = app
        .send(
            "POST",
            &tokens,
            b,
            Some(json!({"name": "acme-admin", "role": "admin", "tenant": "acme"})),
        )
        .await;
    c.check("createToken", &created);
    assert_eq!(created.json()["tenant"], "acme");
    let token_id = created.json()["id"].as_str().unwrap().to_owned();
    let token = created.json()["token"].as_str().unwrap().to_owned();
    let nowhere = json!({"name": "x", "role": "viewer", "tenant": "nope"});
    let r = app.send("POST", &tokens, b, Some(nowhere)).await;
    c.check("createToken", &r);
    assert_eq!(
        (r.status, r.json()["field"].as_str()),
        (422, Some("tenant"))
    );
    c.check("listTokens", &app.send("GET", &tokens, b, None).await);

    let s = Some(token.as_str());
    let shared = json!({"name": "shared", "global": true, "hosts": ["api.shared.test"],
                        "baseUrl": "https://api.shared.test"});
    let shared = app.send("POST", P, b, Some(shared)).await;
    c.check("createProvider", &shared);
    let shared = format!("{P}/{}", shared.json()["id"].as_str().unwrap());
    c.check("getProvider", &app.send("GET", &shared, s, None).await);
    let r = app
        .send("PATCH", &shared, s, Some(json!({"status": "disabled"})))
        .await;
    c.check("updateProvider", &r);
    assert_eq!(r.status, 403);
    let r = app
        .send("GET", &format!("{P}/{default_provider}"), s, None)
        .await;
    c.check("getProvider", &r);
    assert_eq!(r.status, 404);
    let global = json!({"name": "g2", "global": true, "hosts": ["api.g2.test"],
                        "baseUrl": "https://api.g2.test"});
    c.check(
        "createProvider",
        &app.send("POST", P, s, Some(global)).await,
    );
    let own =
        json!({"name": "acme-api", "hosts": ["api.acme.test"], "baseUrl": "https://api.acme.test"});
    let own = app.send("POST", P, s, Some(own)).await;
    c.check("createProvider", &own);
    assert_eq!(own.json()["tenant"], "acme");
    let listed = app.send("GET", P, s, None).await;
    c.check("listProviders", &listed);
    let names: Vec<String> = listed.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["shared", "acme-api"]);

    c.check(
        "createTenant",
        &app.send(
            "POST",
            &format!("{api}/tenants"),
            s,
            Some(json!({"name": "x"})),
        )
        .await,
    );
    c.check(
        "listTenants",
        &app.send("GET", &format!("{api}/tenants"), s, None).await,
    );
    c.check(
        "listAudit",
        &app.send("GET", &format!("{api}/audit"), s, None).await,
    );
    c.check(
        "listCallers",
        &app.send("GET", &format!("{api}/callers"), s, None).await,
    );
    c.check(
        "getCaller",
        &app.send("GET", &format!("{api}/callers/{default_caller}"), s, None)
            .await,
    );
    let grants = app
        .send("GET", &format!("{api}/grants?tenant=default"), s, None)
        .await;
    c.check("listGrants", &grants);
    assert_eq!(grants.json()["items"], json!([]));
    let any_grant = app
        .send("GET", &format!("{api}/grants"), b, None)
        .await
        .json();
    let other = any_grant["items"][0]["id"].as_str().unwrap();
    c.check(
        "getGrant",
        &app.send("GET", &format!("{api}/grants/{other}"), s, None)
            .await,
    );
    c.check(
        "listDlq",
        &app.send("GET", &format!("{api}/dlq?tenant=default"), s, None)
            .await,
    );

    let own = format!("{P}/{}", own.json()["id"].as_str().unwrap());
    c.check("deleteProvider", &app.send("DELETE", &own, s, None).await);
    c.check(
        "deleteProvider",
        &app.send("DELETE", &shared, b, None).await,
    );
    c.check(
        "revokeToken",
        &app.send("DELETE", &format!("{tokens}/{token_id}"), b, None)
            .await,
    );
}
