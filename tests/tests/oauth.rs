//! End-to-end: credentials the hub owns and makes per call — OAuth2 tokens from a fake identity
//! provider on loopback (HTTPS, recording every token request) and signed requests — through
//! the real proxy, on SQLite and PostgreSQL, in-process and across two instances sharing Redis.

use std::time::{Duration, Instant};

use hub_tests::client::{client, problem};
use hub_tests::idp::IDP_ERROR_MARKER;
use hub_tests::{Backend, FakeIdp, FakeProvider, HubBuilder, Mode, TestHub, TestPki};
use serde_json::json;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
const CLIENT_SECRET: &str = "cs_OAUTH_CLIENT_SECRET_9f8e7d";

fn provider(
    name: &str,
    host: &str,
    fake: &FakeProvider,
    auth: serde_json::Value,
) -> serde_json::Value {
    json!({
        "name": name,
        "hosts": [host],
        "baseUrl": fake.base_url(),
        "auth": auth,
        "config": {"allowPrivateNetwork": true, "maxAttempts": 1, "rateLimitPerSec": 1000, "burst": 1000}
    })
}

fn client_credentials(idp: &FakeIdp) -> serde_json::Value {
    json!({
        "type": "oauth2_client_credentials", "tokenUrl": idp.token_url(),
        "clientId": "hub-client", "clientSecret": CLIENT_SECRET, "scopes": ["charges:write"]
    })
}

async fn admin_get(hub: &TestHub, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/integrations{path}", hub.admin_url()))
        .bearer_auth(hub_tests::harness::TEST_ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn metrics(hub: &TestHub) -> String {
    reqwest::get(format!("http://{}/metrics", hub.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `integration_token_requests_total{provider, outcome}` in a `/metrics` page (0 when absent).
fn token_requests(metrics: &str, provider: &str, outcome: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("integration_token_requests_total{")
                && l.contains(&format!("provider=\"{provider}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Nothing the hub wrote anywhere a module or operator reads holds one of `secrets`.
fn assert_nowhere(outputs: &[&str], secrets: &[&str]) {
    let logs = hub_tests::logs::contents();
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret is in the logs");
        for (i, out) in outputs.iter().enumerate() {
            assert!(!out.contains(secret), "a secret is in output {i}");
        }
    }
}

#[tokio::test]
async fn client_credentials_two_hundred_concurrent_calls_one_token_request() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let idp = FakeIdp::start(pki.server_config.clone()).await;
        idp.expect_client("hub-client", CLIENT_SECRET);
        idp.set_delay(Duration::from_millis(200));
        let api = FakeProvider::start(Some(pki.server_config.clone())).await;
        let rec = hub
            .add_provider(provider(
                "cc",
                "api.cc.test",
                &api,
                client_credentials(&idp),
            ))
            .await;
        let c = client(&hub);
        let url = format!("https://api.cc.test:{}/v1/charges", api.port);
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move {
                    c.get(url)
                        .header("authorization", "Bearer DUMMY")
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), 200, "{backend:?}");
        }
        let tokens = idp.calls();
        assert_eq!(
            tokens.len(),
            1,
            "{backend:?}: one token request for 200 calls"
        );
        assert_eq!(tokens[0].param("grant_type"), Some("client_credentials"));
        assert_eq!(tokens[0].param("scope"), Some("charges:write"));
        let token = format!("at-1-{}", idp.marker);
        let seen = api.requests();
        assert_eq!(seen.len(), 200);
        for r in &seen {
            assert_eq!(
                r.header_all("authorization"),
                vec![format!("Bearer {token}")]
            );
        }
        // The admin shows the token's state, never the token.
        let view = admin_get(&hub, &format!("/providers/{}", rec.id)).await;
        assert_eq!(view["auth"]["type"], "oauth2_client_credentials");
        assert_eq!(view["auth"]["token"]["lastOutcome"], "ok", "{view}");
        assert!(view["auth"]["token"]["expiresAt"].is_string());
        assert_eq!(view["auth"]["token"]["tokenRequests"], 1);
        // A new client secret: the next call gets a new token, asked for with the new secret
        // (the cached one belonged to the old credentials).
        let mut auth = client_credentials(&idp);
        auth["clientSecret"] = "cs_ROTATED_CLIENT_SECRET_1a2b".into();
        let patched = reqwest::Client::new()
            .patch(format!(
                "{}/api/v1/integrations/providers/{}",
                hub.admin_url(),
                rec.id
            ))
            .bearer_auth(hub_tests::harness::TEST_ADMIN_TOKEN)
            .json(&json!({ "auth": auth }))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 200);
        hub.sync().await;
        idp.expect_client("hub-client", "cs_ROTATED_CLIENT_SECRET_1a2b");
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        assert_eq!(idp.calls().len(), 2, "{backend:?}");
        let token2 = format!("at-2-{}", idp.marker);
        assert_eq!(
            api.requests().last().unwrap().header("authorization"),
            Some(format!("Bearer {token2}").as_str())
        );
        let m = metrics(&hub).await;
        let audit = admin_get(&hub, "/audit").await;
        assert_nowhere(
            &[&view.to_string(), &m, &audit.to_string()],
            &[
                &token,
                &token2,
                CLIENT_SECRET,
                "cs_ROTATED_CLIENT_SECRET_1a2b",
            ],
        );
    }
}

#[tokio::test]
async fn two_instances_sharing_redis_make_one_token_request() {
    let Some(redis_url) = hub_core::testing::redis_url().await else {
        return;
    };
    let pki = TestPki::new();
    let prefix = format!("oauth-test-{}:", ulid::Ulid::new());
    let shared = |c: &mut hub_core::config::HubConfig| {
        c.redis.url = Some(redis_url.clone());
        c.redis.key_prefix = prefix.clone();
    };
    let Some(a) = HubBuilder::new(Backend::Sqlite, &pki)
        .configure(shared)
        .start()
        .await
    else {
        return;
    };
    let b = HubBuilder::new(Backend::Sqlite, &pki)
        .configure(shared)
        .same_database_as(&a)
        .start()
        .await
        .unwrap();
    let idp = FakeIdp::start(pki.server_config.clone()).await;
    idp.set_delay(Duration::from_millis(300));
    let api = FakeProvider::start(Some(pki.server_config.clone())).await;
    let rec = a
        .add_provider(provider(
            "shared",
            "api.shared.test",
            &api,
            client_credentials(&idp),
        ))
        .await;
    b.sync().await;
    let url = format!("https://api.shared.test:{}/v1/x", api.port);
    let mut calls = Vec::new();
    for hub in [&a, &b] {
        let c = client(hub);
        for _ in 0..100 {
            let (c, url) = (c.clone(), url.clone());
            calls.push(tokio::spawn(async move {
                c.get(url).send().await.unwrap().status()
            }));
        }
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(
        idp.calls().len(),
        1,
        "one token request across both instances"
    );
    let token = format!("Bearer at-1-{}", idp.marker);
    assert!(
        api.requests()
            .iter()
            .all(|r| r.header("authorization") == Some(token.as_str()))
    );
    // The token sits sealed in Redis: its plaintext is nowhere in the key's value.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}oauth:{}:{}:token", rec.id, rec.version);
    let blob: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!blob.contains(&idp.marker));
    // Both admins report the shared status.
    let view = admin_get(&b, &format!("/providers/{}", rec.id)).await;
    assert_eq!(view["auth"]["token"]["lastOutcome"], "ok");
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_sealed_and_used_from_then_on() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let idp = FakeIdp::start(pki.server_config.clone()).await;
        idp.rotate_refresh_tokens("rt-initial-SECRET");
        let api = FakeProvider::start(Some(pki.server_config.clone())).await;
        let rec = hub
            .add_provider(provider(
                "rt",
                "api.rt.test",
                &api,
                json!({
                    "type": "oauth2_refresh_token", "tokenUrl": idp.token_url(),
                    "clientId": "hub", "clientSecret": CLIENT_SECRET, "clientAuth": "body",
                    "refreshToken": "rt-initial-SECRET"
                }),
            ))
            .await;
        let c = client(&hub);
        let url = format!("https://api.rt.test:{}/v1/me", api.port);
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        // The provider revokes the access token: 401 → a refresh with the rotated refresh
        // token (the initial one is refused by now) → the call is sent again → 200.
        api.script([Mode::Status(401)]);
        assert_eq!(
            c.get(&url).send().await.unwrap().status(),
            200,
            "{backend:?}"
        );
        let calls = idp.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].param("refresh_token"), Some("rt-initial-SECRET"));
        assert_eq!(calls[0].param("client_secret"), Some(CLIENT_SECRET));
        let first_rotated = format!("rt-1-{}", idp.marker);
        assert_eq!(
            calls[1].param("refresh_token"),
            Some(first_rotated.as_str())
        );
        assert!(
            idp.refused().is_empty(),
            "no stale refresh token was presented"
        );
        // The newest refresh token is in the store, sealed under the provider's version.
        let current = idp.current_refresh_token().unwrap();
        let sealed = hub
            .store
            .oauth_refresh_token(rec.id, rec.version)
            .await
            .unwrap()
            .expect("stored");
        assert!(!String::from_utf8_lossy(&sealed.ciphertext).contains(&current));
        let plain = hub
            .vault
            .open(
                &hub_core::vault::oauth_aad("refresh", rec.id, rec.version),
                &sealed,
            )
            .unwrap();
        assert_eq!(String::from_utf8(plain.to_vec()).unwrap(), current);
        // A second instance (a restart) on the same database refreshes with the stored one.
        let second = HubBuilder::new(backend, &pki)
            .same_database_as(&hub)
            .start()
            .await
            .unwrap();
        assert_eq!(
            client(&second).get(&url).send().await.unwrap().status(),
            200
        );
        assert_eq!(
            idp.calls()[2].param("refresh_token"),
            Some(current.as_str())
        );
        assert!(idp.refused().is_empty(), "{:?}", idp.refused());
        let view = admin_get(&hub, &format!("/providers/{}", rec.id)).await;
        assert_nowhere(
            &[&view.to_string(), &metrics(&hub).await],
            &["rt-initial-SECRET", &first_rotated, &current, CLIENT_SECRET],
        );
    }
}

#[tokio::test]
async fn jwt_bearer_assertions_verify_with_the_public_key() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let idp = FakeIdp::start(pki.server_config.clone()).await;
    idp.verify_assertions(key.public_key_raw().to_vec(), "svc@project.test");
    let api = FakeProvider::start(Some(pki.server_config.clone())).await;
    let pem = key.serialize_pem();
    hub.add_provider(provider(
        "jwt",
        "api.jwt.test",
        &api,
        json!({
            "type": "oauth2_jwt_bearer", "tokenUrl": idp.token_url(), "issuer": "svc@project.test",
            "privateKey": pem, "algorithm": "ES256", "scopes": ["read"]
        }),
    ))
    .await;
    let resp = client(&hub)
        .get(format!("https://api.jwt.test:{}/v1/x", api.port))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(idp.calls().len(), 1);
    assert_eq!(
        api.requests()[0].header("authorization"),
        Some(format!("Bearer at-1-{}", idp.marker).as_str())
    );
    let body = pem.lines().nth(1).unwrap();
    assert_nowhere(&[&metrics(&hub).await], &[body]);
    // A key the identity provider does not know: refused, and the module gets a 503 that says
    // so without the endpoint's own words.
    let other = rcgen::KeyPair::generate().unwrap();
    idp.verify_assertions(other.public_key_raw().to_vec(), "svc@project.test");
    let api2 = FakeProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider(
        "jwt-wrong",
        "api.jwt2.test",
        &api2,
        json!({
            "type": "oauth2_jwt_bearer", "tokenUrl": idp.token_url(), "issuer": "svc@project.test",
            "privateKey": pem, "algorithm": "ES256"
        }),
    ))
    .await;
    let resp = client(&hub)
        .get(format!("https://api.jwt2.test:{}/v1/x", api2.port))
        .send()
        .await
        .unwrap();
    let (status, p) = problem(resp).await;
    assert_eq!(status, 503);
    assert_eq!(p["code"], "credentials_unavailable");
    assert!(p["detail"].as_str().unwrap().contains("invalid_grant"));
    assert!(!p.to_string().contains(IDP_ERROR_MARKER));
    assert!(api2.requests().is_empty());
}

#[tokio::test]
async fn a_401_gets_one_new_token_and_one_more_attempt_and_a_second_401_is_relayed() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let idp = FakeIdp::start(pki.server_config.clone()).await;
        let api = FakeProvider::start(Some(pki.server_config.clone())).await;
        // Metrics are process-wide: a name per backend.
        let name = format!("re-{backend:?}").to_lowercase();
        hub.add_provider(provider(
            &name,
            "api.re.test",
            &api,
            client_credentials(&idp),
        ))
        .await;
        let c = client(&hub);
        let url = format!("https://api.re.test:{}/v1/charges", api.port);
        api.script([Mode::Status(401)]);
        let resp = c.post(&url).body("amount=100").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{backend:?}");
        let seen = api.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0].header("authorization"),
            Some(format!("Bearer at-1-{}", idp.marker).as_str())
        );
        assert_eq!(
            seen[1].header("authorization"),
            Some(format!("Bearer at-2-{}", idp.marker).as_str())
        );
        assert_eq!(seen[1].body, b"amount=100", "the same body, sent again");
        assert_eq!(idp.calls().len(), 2);
        // Two 401s: the second is the module's answer; one refresh only.
        api.script([Mode::Status(401), Mode::Status(401)]);
        let resp = c.post(&url).body("amount=100").send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(api.requests().len(), 4);
        assert_eq!(idp.calls().len(), 3);
        assert!(metrics(&hub).await.contains(&format!(
            "integration_token_rejections_total{{provider=\"{name}\"}} 2"
        )));
        // A call that still fails goes to the DLQ without the token it carried (a replay goes
        // through the proxy and gets the current one).
        api.set_mode(Mode::Status(503));
        let resp = c.post(&url).body("amount=7").send().await.unwrap();
        assert_eq!(resp.status(), 502);
        let failed = hub.exhausted.lock().await.recv().await.unwrap();
        assert_eq!(failed.body.as_deref(), Some(&b"amount=7"[..]));
        assert!(
            failed
                .headers
                .iter()
                .all(|(k, v)| k != "authorization" && !v.contains(&idp.marker))
        );
        assert!(!format!("{failed:?}").contains(&idp.marker));
    }
}

#[tokio::test]
async fn an_identity_provider_outage_fails_fast_with_a_bounded_number_of_token_requests() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let idp = FakeIdp::start(pki.server_config.clone()).await;
    idp.set_down(true);
    let api = FakeProvider::start(Some(pki.server_config.clone())).await;
    let rec = hub
        .add_provider(provider(
            "down",
            "api.down.test",
            &api,
            client_credentials(&idp),
        ))
        .await;
    let c = client(&hub);
    let url = format!("https://api.down.test:{}/v1/x", api.port);
    for i in 0..20 {
        let started = Instant::now();
        let (status, p) = problem(c.get(&url).send().await.unwrap()).await;
        assert_eq!(status, 503, "call {i}");
        assert_eq!(p["code"], "credentials_unavailable");
        assert!(!p.to_string().contains(IDP_ERROR_MARKER));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "call {i} was not fast"
        );
    }
    // The token endpoint's breaker opened after 5 failures: the rest never asked it.
    assert_eq!(idp.calls().len(), 5);
    assert!(
        api.requests().is_empty(),
        "nothing reached the provider without a token"
    );
    let view = admin_get(&hub, &format!("/providers/{}", rec.id)).await;
    assert_eq!(
        view["auth"]["token"]["lastOutcome"], "circuit_open",
        "{view}"
    );
    let m = metrics(&hub).await;
    let count = |outcome: &str| token_requests(&m, "down", outcome);
    assert_eq!(count("refused"), 5.0, "{m}");
    assert_eq!(count("circuit_open"), 15.0);
    assert!(!hub_tests::logs::contents().contains(IDP_ERROR_MARKER));
}

#[tokio::test]
async fn sigv4_signs_the_request_the_provider_receives_replacing_the_callers() {
    use sha2::Digest;
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let api = FakeProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider(
        "aws",
        "execute-api.test",
        &api,
        json!({
            "type": "aws_sigv4", "accessKeyId": "AKIDHUBTEST", "secretAccessKey": "SIGV4_SECRET_KEY_1234",
            "sessionToken": "SESSION_TOKEN_SECRET_5678", "region": "eu-west-1", "service": "execute-api"
        }),
    ))
    .await;
    let resp = client(&hub)
        .post(format!(
            "https://execute-api.test:{}/prod/orders?b=2&a=1",
            api.port
        ))
        .header("authorization", "AWS4-HMAC-SHA256 Credential=CALLER/forged")
        .header("x-amz-date", "20000101T000000Z")
        .header("content-type", "application/json")
        .body(r#"{"order":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = &api.requests()[0];
    let auth = r.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDHUBTEST/"),
        "{auth}"
    );
    assert!(auth.contains("/eu-west-1/execute-api/aws4_request"));
    assert!(
        auth.contains(
            "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
        ),
        "{auth}"
    );
    assert_ne!(r.header("x-amz-date"), Some("20000101T000000Z"));
    assert_eq!(
        r.header("x-amz-content-sha256"),
        Some(hex::encode(sha2::Sha256::digest(br#"{"order":1}"#)).as_str())
    );
    assert_eq!(
        r.header("x-amz-security-token"),
        Some("SESSION_TOKEN_SECRET_5678")
    );
    assert_nowhere(
        &[&metrics(&hub).await],
        &["SIGV4_SECRET_KEY_1234", "SESSION_TOKEN_SECRET_5678"],
    );
}

#[tokio::test]
async fn hmac_signatures_are_fresh_on_every_attempt_and_verify() {
    use sha2::Digest;
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let api = FakeProvider::start(Some(pki.server_config.clone())).await;
    let mut json = provider(
        "partner",
        "partner.test",
        &api,
        json!({
            "type": "hmac", "secret": "HMAC_PARTNER_SECRET_abc", "signatureHeader": "X-Signature",
            "timestampHeader": "X-Timestamp", "timestampFormat": "unixMillis",
            "parts": ["method", "path", "timestamp", "bodySha256"], "separator": "\n",
            "apiKeyHeader": "X-Api-Key", "apiKey": "PARTNER_API_KEY_xyz"
        }),
    );
    json["config"]["maxAttempts"] = 2.into();
    json["config"]["backoffBaseMs"] = 20.into();
    json["config"]["idempotencyHeader"] = "Idempotency-Key".into();
    hub.add_provider(json).await;
    api.script([Mode::Status(503)]);
    let resp = client(&hub)
        .post(format!("https://partner.test:{}/v2/transfer", api.port))
        .header("x-signature", "forged")
        .body("amount=5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"HMAC_PARTNER_SECRET_abc");
    let mut stamps = Vec::new();
    for r in &seen {
        let ts = r.header("x-timestamp").unwrap().to_owned();
        let body_hash = hex::encode(sha2::Sha256::digest(&r.body));
        let signed = format!("POST\n/v2/transfer\n{ts}\n{body_hash}");
        let expected = hex::encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref());
        assert_eq!(r.header_all("x-signature"), vec![expected.as_str()]);
        assert_eq!(r.header("x-api-key"), Some("PARTNER_API_KEY_xyz"));
        stamps.push(ts);
    }
    assert_ne!(stamps[0], stamps[1], "the retried attempt was signed again");
    assert_nowhere(
        &[&metrics(&hub).await],
        &["HMAC_PARTNER_SECRET_abc", "PARTNER_API_KEY_xyz"],
    );
}

#[tokio::test]
async fn a_token_endpoint_nobody_listens_on_fails_fast_and_is_not_hammered() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    // A real dead endpoint: the port was bound and released, so connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = FakeProvider::start(Some(pki.server_config.clone())).await;
    let rec = hub
        .add_provider(provider(
            "dead-idp",
            "api.deadidp.test",
            &api,
            json!({
                "type": "oauth2_client_credentials",
                "tokenUrl": format!("https://localhost:{port}/oauth/token"),
                "clientId": "hub-client", "clientSecret": CLIENT_SECRET
            }),
        ))
        .await;
    let c = client(&hub);
    let url = format!("https://api.deadidp.test:{}/v1/x", api.port);
    for i in 0..10 {
        let started = Instant::now();
        let (status, p) = problem(c.get(&url).send().await.unwrap()).await;
        assert_eq!(
            (status, p["code"].as_str()),
            (503, Some("credentials_unavailable")),
            "call {i}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "call {i} was not fast"
        );
        assert!(!p.to_string().contains(CLIENT_SECRET));
    }
    assert!(api.requests().is_empty());
    let m = metrics(&hub).await;
    let count = |outcome: &str| token_requests(&m, "dead-idp", outcome);
    // Refused connections are failures for the endpoint's breaker: 5, then it stays shut.
    assert_eq!(count("unreachable"), 5.0, "{m}");
    assert_eq!(count("circuit_open"), 5.0);
    let view = admin_get(&hub, &format!("/providers/{}", rec.id)).await;
    assert_eq!(view["auth"]["token"]["lastOutcome"], "circuit_open");
}
