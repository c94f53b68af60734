//! Who may do what: 401 without a valid token (with a `Bearer` challenge), the 403 matrix of
//! every route against every role (driven by the route table itself), API tokens shown once and
//! stored hashed, and the audit trail of every change.

use hub_admin::auth::Access;
use hub_core::access::{Role, token_hash};
use hub_tests::{TestHub, TestPki};
use serde_json::json;

use crate::support::{ADMIN, Api, BACKENDS, NOBODY, PROVIDERS};

const TOKENS: &str = "/api/v1/integrations/tokens";
const AUDIT: &str = "/api/v1/integrations/audit";

fn concrete(path: &str) -> String {
    path.replace("{id}", NOBODY)
}

#[tokio::test]
async fn every_protected_route_is_401_without_a_valid_token() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let (revoked_id, revoked) = api.token("admin").await;
        assert_eq!(
            api.admin("DELETE", &format!("{TOKENS}/{revoked_id}"), None)
                .await
                .status,
            204
        );
        for r in hub_admin::ROUTES {
            let path = concrete(r.path);
            let method = r.verb.as_str().to_uppercase();
            if r.access == Access::Open {
                let resp = api.send(&method, &path, None, None).await;
                assert_eq!(resp.status, 200, "{path} is open");
                continue;
            }
            let wrong = format!("{ADMIN}x");
            for token in [
                None,
                Some(wrong.as_str()),
                Some(revoked.as_str()),
                Some("hubt_00"),
            ] {
                let resp = api.send(&method, &path, token, Some(json!({}))).await;
                resp.problem(401, "unauthorized");
                assert!(
                    resp.header("www-authenticate")
                        .is_some_and(|v| v.starts_with("Bearer")),
                    "{method} {path}: a 401 challenges for a bearer token"
                );
            }
            let basic = api
                .send_raw(
                    &method,
                    &path,
                    None,
                    None,
                    Vec::new(),
                    &[("authorization", "Basic YTpi")],
                )
                .await;
            basic.problem(401, "unauthorized");
        }
    }
}

#[tokio::test]
async fn roles_may_do_exactly_what_the_route_table_says() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let p = api
            .create(json!({"name": "p", "hosts": ["p.test"], "baseUrl": "https://p.test"}))
            .await;
        let tokens = [
            (Role::Viewer, api.token("viewer").await.1),
            (Role::Operator, api.token("operator").await.1),
            (Role::Admin, api.token("admin").await.1),
        ];
        let audit_before = api
            .admin("GET", &format!("{AUDIT}?limit=200"), None)
            .await
            .json();
        for r in hub_admin::ROUTES {
            let Access::Role(needed) = r.access else {
                continue;
            };
            let path = concrete(r.path);
            let method = r.verb.as_str().to_uppercase();
            for (role, token) in &tokens {
                let resp = api.send(&method, &path, Some(token), Some(json!({}))).await;
                if role.allows(needed) {
                    assert!(
                        resp.status != 401 && resp.status != 403 && resp.status < 500,
                        "{backend:?} {role:?} may {method} {path}: {} {}",
                        resp.status,
                        resp.text
                    );
                } else {
                    let body = resp.problem(403, "forbidden");
                    assert!(
                        body["detail"]
                            .as_str()
                            .unwrap()
                            .contains(&format!("{needed:?}"))
                    );
                }
            }
        }
        // Refused requests changed nothing.
        let audit_after = api
            .admin("GET", &format!("{AUDIT}?limit=200"), None)
            .await
            .json();
        assert_eq!(audit_before["items"], audit_after["items"]);
        let one = format!("{PROVIDERS}/{}", p["id"].as_str().unwrap());
        let viewer = &tokens[0].1;
        api.send("DELETE", &one, Some(viewer), None)
            .await
            .problem(403, "forbidden");
        assert_eq!(api.admin("GET", &one, None).await.status, 200);
    }
}

#[tokio::test]
async fn tokens_are_shown_once_stored_hashed_and_revocable() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let created = api
            .admin(
                "POST",
                TOKENS,
                Some(json!({"name": "ci deploys", "role": "operator"})),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        assert_eq!(created.header("cache-control"), Some("no-store"));
        let v = created.json();
        let (id, token) = (v["id"].as_str().unwrap(), v["token"].as_str().unwrap());
        assert_eq!(
            created.header("location"),
            Some(format!("{TOKENS}/{id}").as_str())
        );
        assert!(token.starts_with("hubt_") && token.len() == 69, "{token}");
        assert_eq!(
            (v["role"].as_str(), v["createdBy"].as_str()),
            (Some("operator"), Some("bootstrap"))
        );
        assert!(v["revokedAt"].is_null());

        // Stored as its hash: the store finds it by hash, the API never shows it again.
        let stored = hub
            .store
            .api_token_by_hash(&token_hash(token))
            .await
            .unwrap();
        assert_eq!(stored.map(|t| t.id.to_string()).as_deref(), Some(id));
        let listed = api.admin("GET", TOKENS, None).await;
        assert!(!listed.text.contains(token));
        assert!(!listed.text.contains(&token_hash(token)));
        assert_eq!(listed.json()["items"][0]["name"], "ci deploys");
        assert!(listed.json()["items"][0].get("token").is_none());

        // It works, until it is revoked.
        assert_eq!(
            api.send("GET", PROVIDERS, Some(token), None).await.status,
            200
        );
        let (admin_id, admin_token) = api.token("admin").await;
        let revoke = format!("{TOKENS}/{id}");
        assert_eq!(
            api.send("DELETE", &revoke, Some(&admin_token), None)
                .await
                .status,
            204
        );
        api.send("GET", PROVIDERS, Some(token), None)
            .await
            .problem(401, "unauthorized");
        assert_eq!(
            api.admin("DELETE", &revoke, None).await.status,
            204,
            "idempotent"
        );
        let listed = api.admin("GET", TOKENS, None).await.json();
        let entry = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()
            .clone();
        assert!(entry["revokedAt"].is_string());
        // A token created by a token names its creator.
        let child = api
            .send(
                "POST",
                TOKENS,
                Some(&admin_token),
                Some(json!({"name": "child", "role": "viewer"})),
            )
            .await
            .json();
        assert_eq!(child["createdBy"], admin_id.as_str());

        for (body, field) in [
            (json!({"name": "", "role": "viewer"}), "name"),
            (json!({"name": "x".repeat(65), "role": "viewer"}), "name"),
            (json!({"name": "x", "role": "root"}), "role"),
            (json!({"name": "x"}), "role"),
            (
                json!({"name": "x", "role": "viewer", "token": "mine"}),
                "token",
            ),
        ] {
            let p = api
                .admin("POST", TOKENS, Some(body.clone()))
                .await
                .problem(422, "validation_failed");
            assert_eq!(p["field"], field, "{body}");
        }
        api.assert_never_answered(&[&token_hash(token)]);
    }
}

#[tokio::test]
async fn the_audit_trail_records_every_change_without_secrets() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let api = Api::new(&hub);
        let (admin_id, admin) = api.token("admin").await;
        let (_, viewer) = api.token("viewer").await;
        let p = api
            .create(
                json!({"name": "audited", "hosts": ["a.test"], "baseUrl": "https://a.test",
                           "auth": {"type": "bearer", "token": "sk_AUDIT_FIRST"}}),
            )
            .await;
        let pid = p["id"].as_str().unwrap().to_owned();
        let one = format!("{PROVIDERS}/{pid}");
        let patch = json!({"auth": {"type": "query", "name": "key", "value": "sk_AUDIT_SECOND"},
                           "config": {"timeoutMs": 1000}});
        assert_eq!(
            api.send("PATCH", &one, Some(&admin), Some(patch))
                .await
                .status,
            200
        );
        let disable = json!({"status": "disabled"});
        assert_eq!(
            api.send("PATCH", &one, Some(&admin), Some(disable))
                .await
                .status,
            200
        );
        assert_eq!(
            api.send("DELETE", &one, Some(&admin), None).await.status,
            204
        );

        let page = api
            .send(
                "GET",
                &format!("{AUDIT}?targetId={pid}"),
                Some(&viewer),
                None,
            )
            .await;
        assert_eq!(page.status, 200, "viewers read the audit trail");
        let items = page.json()["items"].as_array().unwrap().clone();
        let summary: Vec<(String, String, serde_json::Value)> = items
            .iter()
            .map(|e| {
                assert_eq!(e["targetId"], pid.as_str());
                assert!(e["at"].is_string());
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["actor"].as_str().unwrap().to_owned(),
                    e["detail"].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("provider.delete".into(), admin_id.clone(), json!({})),
                (
                    "provider.update".into(),
                    admin_id.clone(),
                    json!({"fields": ["status"], "status": "disabled"})
                ),
                (
                    "provider.update".into(),
                    admin_id.clone(),
                    json!({"fields": ["auth", "config"]})
                ),
                (
                    "provider.create".into(),
                    "bootstrap".into(),
                    json!({"name": "audited", "status": "active"})
                ),
            ],
            "{backend:?}: newest first"
        );

        // The whole trail, paged: token creations come first in time.
        let mut actions = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let uri = match &cursor {
                Some(c) => format!("{AUDIT}?limit=2&cursor={c}"),
                None => format!("{AUDIT}?limit=2"),
            };
            let page = api.admin("GET", &uri, None).await.json();
            for e in page["items"].as_array().unwrap() {
                actions.push(e["action"].as_str().unwrap().to_owned());
            }
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(
            actions,
            [
                "provider.delete",
                "provider.update",
                "provider.update",
                "provider.create",
                "token.create",
                "token.create"
            ]
        );
        api.assert_never_answered(&["sk_AUDIT_FIRST", "sk_AUDIT_SECOND"]);
    }
}
