//! Provider CRUD: happy paths, write-only credentials, validation, conflicts, pagination,
//! `PATCH` semantics and `If-Match`.

use std::collections::HashSet;

use hub_tests::{TestHub, TestPki};
use serde_json::{Value, json};

use crate::support::{Api, BACKENDS, PROVIDERS};

/// A provider registration with a bearer secret.
pub fn stripe(secret: &str) -> Value {
    json!({
        "name": "stripe",
        "hosts": ["api.stripe.test", "*.stripe-cdn.test"],
        "baseUrl": "https://api.stripe.test/v1",
        "auth": {"type": "bearer", "token": secret},
        "config": {"timeoutMs": 5000, "maxAttempts": 3, "idempotencyHeader": "Idempotency-Key"}
    })
}

#[tokio::test]
async fn crud_round_trip_keeps_credentials_write_only() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let first_secret = "sk_live_FIRST_CRUD_SECRET";
        let created = api
            .admin("POST", PROVIDERS, Some(stripe(first_secret)))
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        let p = created.json();
        let id = p["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 26, "a ULID");
        assert_eq!(
            created.header("location"),
            Some(format!("{PROVIDERS}/{id}").as_str())
        );
        assert_eq!(created.header("etag"), Some("\"1\""));
        assert_eq!(p["name"], "stripe");
        assert_eq!(p["hosts"], json!(["api.stripe.test", "*.stripe-cdn.test"]));
        assert_eq!(p["baseUrl"], "https://api.stripe.test/v1");
        assert_eq!(p["status"], "active");
        assert_eq!(p["version"], 1);
        assert_eq!(p["config"]["timeoutMs"], 5000);
        assert_eq!(
            p["config"]["totalTimeoutMs"], 60000,
            "defaults are filled in"
        );
        assert_eq!(
            p["auth"],
            json!({"type": "bearer", "fieldsSet": ["token"], "keyId": "test1",
                   "updatedAt": p["auth"]["updatedAt"]})
        );
        assert!(p["auth"]["updatedAt"].is_string());

        let one = format!("{PROVIDERS}/{id}");
        let got = api.admin("GET", &one, None).await;
        assert_eq!(got.status, 200);
        assert_eq!(
            got.json(),
            p,
            "{backend:?}: a read equals the create answer"
        );
        // Lower-case ids name the same provider.
        assert_eq!(
            api.admin("GET", &one.to_lowercase(), None).await.status,
            200
        );

        // Rotate the credentials: a new secret, re-sealed, still never shown.
        let second_secret = "pw_ROTATED_CRUD_SECRET";
        let patched = api
            .admin(
                "PATCH",
                &one,
                Some(
                    json!({"auth": {"type": "basic", "username": "acct_USER_SECRET",
                                     "password": second_secret}}),
                ),
            )
            .await;
        assert_eq!(patched.status, 200, "{}", patched.text);
        let v = patched.json();
        assert_eq!(v["auth"]["type"], "basic");
        assert_eq!(v["auth"]["fieldsSet"], json!(["username", "password"]));
        assert_eq!(v["version"], 2);
        assert_eq!(patched.header("etag"), Some("\"2\""));
        let sealed = hub
            .store
            .get_provider(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        let opened = hub
            .vault
            .open_auth(sealed.id, sealed.credentials.as_ref().unwrap());
        assert!(
            matches!(opened, Ok(hub_core::provider::Auth::Basic { .. })),
            "re-sealed with the provider id as associated data"
        );

        let listed = api.admin("GET", PROVIDERS, None).await;
        assert_eq!(listed.json()["items"][0]["id"], id.as_str());

        let deleted = api.admin("DELETE", &one, None).await;
        assert_eq!(deleted.status, 204);
        assert!(deleted.text.is_empty());
        api.admin("GET", &one, None).await.problem(404, "not_found");
        api.admin("DELETE", &one, None)
            .await
            .problem(404, "not_found");
        api.admin("PATCH", &one, Some(json!({"status": "disabled"})))
            .await
            .problem(404, "not_found");
        assert_eq!(
            api.admin("GET", PROVIDERS, None).await.json()["items"],
            json!([])
        );
        // The name and hosts are free again.
        api.create(stripe("sk_live_THIRD_CRUD_SECRET")).await;

        api.assert_never_answered(&[
            first_secret,
            second_secret,
            "acct_USER_SECRET",
            "sk_live_THIRD_CRUD_SECRET",
        ]);
        let logs = hub_tests::logs::contents();
        for s in [first_secret, second_secret, "acct_USER_SECRET"] {
            assert!(!logs.contains(s), "secret {s} logged");
        }
    }
}

#[tokio::test]
async fn list_is_cursor_paginated_and_filtered() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let mut ids = Vec::new();
        for i in 0..7 {
            let status = if i % 3 == 0 { "disabled" } else { "active" };
            let p = api
                .create(
                    json!({"name": format!("svc_{i}"), "hosts": [format!("svc{i}.test")],
                               "baseUrl": format!("https://svc{i}.test"), "status": status}),
                )
                .await;
            ids.push(p["id"].as_str().unwrap().to_owned());
        }
        api.create(
            json!({"name": "other", "hosts": ["other.test"], "baseUrl": "https://other.test"}),
        )
        .await;
        ids.sort();

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let uri = match &cursor {
                Some(c) => format!("{PROVIDERS}?name=svc_&limit=3&cursor={c}"),
                None => format!("{PROVIDERS}?name=svc_&limit=3"),
            };
            let page = api.admin("GET", &uri, None).await.json();
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 3);
            seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(
            seen, ids,
            "{backend:?}: every provider once, in id order, last page ends it"
        );
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len());

        let disabled = api
            .admin("GET", &format!("{PROVIDERS}?status=disabled"), None)
            .await;
        let names: Vec<_> = disabled.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["svc_0", "svc_3", "svc_6"]);
        let exact = api
            .admin("GET", &format!("{PROVIDERS}?limit=8"), None)
            .await
            .json();
        assert_eq!(exact["items"].as_array().unwrap().len(), 8);
        assert!(
            exact["nextCursor"].is_null(),
            "a full last page has no next cursor"
        );

        for (q, field) in [
            ("limit=0", "limit"),
            ("limit=201", "limit"),
            ("limit=ten", "limit"),
            ("cursor=nope", "cursor"),
            ("status=paused", "status"),
            ("sort=name", "sort"),
        ] {
            let p = api
                .admin("GET", &format!("{PROVIDERS}?{q}"), None)
                .await
                .problem(400, "invalid_query");
            assert_eq!(p["field"], field, "{q}");
        }
    }
}

#[tokio::test]
async fn patch_merges_config_replaces_fields_and_honours_if_match() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let p = api.create(stripe("sk_live_PATCH_SECRET")).await;
        let one = format!("{PROVIDERS}/{}", p["id"].as_str().unwrap());

        let r = api
            .admin(
                "PATCH",
                &one,
                Some(
                    json!({"config": {"maxAttempts": 2, "idempotencyHeader": null,
                                                         "breaker": {"openMs": 1000}}}),
                ),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let c = &r.json()["config"];
        assert_eq!(c["maxAttempts"], 2, "given fields replace");
        assert_eq!(c["timeoutMs"], 5000, "absent fields stay");
        assert!(
            c["idempotencyHeader"].is_null(),
            "null resets to the default"
        );
        assert_eq!(
            c["breaker"],
            json!({"failureThreshold": 5, "failureWindowMs": 30000, "openMs": 1000})
        );
        assert_eq!(
            r.json()["auth"]["fieldsSet"],
            json!(["token"]),
            "credentials untouched"
        );

        let r = api
            .admin(
                "PATCH",
                &one,
                Some(json!({"hosts": ["new.stripe.test"], "name": "stripe2",
                                               "baseUrl": "https://new.stripe.test"})),
            )
            .await;
        assert_eq!(
            r.json()["hosts"],
            json!(["new.stripe.test"]),
            "hosts replaced as a set"
        );
        assert_eq!(r.json()["name"], "stripe2");
        let version = r.json()["version"].as_i64().unwrap();

        // Cross-field: turning allowInsecureUpstream off under an http base URL.
        api.admin(
            "PATCH",
            &one,
            Some(json!({"baseUrl": "http://new.stripe.test",
                                             "config": {"allowInsecureUpstream": true}})),
        )
        .await;
        let p = api
            .admin(
                "PATCH",
                &one,
                Some(json!({"config": {"allowInsecureUpstream": false}})),
            )
            .await
            .problem(422, "validation_failed");
        assert_eq!(p["field"], "baseUrl");
        let p = api
            .admin(
                "PATCH",
                &one,
                Some(json!({"config": {"totalTimeoutMs": 1000}})),
            )
            .await
            .problem(422, "validation_failed");
        assert_eq!(p["field"], "config.totalTimeoutMs");
        for (body, field) in [
            (json!({"id": "x"}), "id"),
            (json!({"version": 3}), "version"),
            (json!({"config": 5}), "config"),
            (json!({"config": {"timeoutMS": 5}}), "config.timeoutMS"),
        ] {
            let p = api
                .admin("PATCH", &one, Some(body.clone()))
                .await
                .problem(422, "validation_failed");
            assert_eq!(p["field"], field, "{body}");
        }

        // If-Match: the current version applies, an old one is 412, garbage is 400.
        let current = api.admin("GET", &one, None).await;
        let etag = current.header("etag").unwrap().to_owned();
        assert_ne!(etag, format!("\"{version}\""));
        let stale = format!("\"{version}\"");
        let body = serde_json::to_vec(&json!({"status": "disabled"})).unwrap();
        let patch = |if_match: String| {
            let body = body.clone();
            let api = &api;
            let one = one.clone();
            async move {
                api.send_raw(
                    "PATCH",
                    &one,
                    Some(crate::support::ADMIN),
                    Some("application/json"),
                    body,
                    &[("if-match", if_match.as_str())],
                )
                .await
            }
        };
        patch(stale).await.problem(412, "precondition_failed");
        patch("soon".into()).await.problem(400, "invalid_header");
        let ok = patch(etag).await;
        assert_eq!(ok.status, 200, "{}", ok.text);
        assert_eq!(ok.json()["status"], "disabled");
        // An empty patch changes nothing.
        let same = api.admin("PATCH", &one, Some(json!({}))).await;
        assert_eq!(same.json()["version"], ok.json()["version"]);
        api.assert_never_answered(&["sk_live_PATCH_SECRET"]);
    }
}
