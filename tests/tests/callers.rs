//! End-to-end: callers, tenants and grants (`proxy.callers: required`), on SQLite and
//! PostgreSQL. Callers, tenants and grants are made through the admin REST API as an operator
//! would; modules are real clients (reqwest with credentials in the proxy URL, raw CONNECT with
//! `Proxy-Authorization`, h2, a WebSocket upgrade) against fake providers on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hub_core::config::CallersMode;
use hub_tests::client::{hub_h2_tls_config, hub_tls_config, problem, read_response};
use hub_tests::harness::{HubBuilder, TEST_ADMIN_TOKEN};
use hub_tests::{Backend, FakeProvider, TestHub, TestPki};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

async fn hub(backend: Backend, pki: &TestPki) -> Option<TestHub> {
    TestHub::start_callers_required(backend, pki).await
}

/// The admin API as the bootstrap admin.
struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(hub: &TestHub) -> Self {
        Self {
            base: format!("{}/api/v1/integrations", hub.admin_url()),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TEST_ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.send(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "POST {path}: {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// A caller in the default tenant with one grant on `provider`, applied to the proxy now.
    async fn granted(
        &self,
        hub: &TestHub,
        name: &str,
        provider: &str,
        methods: Value,
        paths: Value,
    ) -> (String, String) {
        let (id, token) = self.caller(name, "default", &[]).await;
        self.post(
            "/grants",
            json!({"caller": id, "provider": provider, "methods": methods, "paths": paths}),
        )
        .await;
        hub.sync().await;
        (id, token)
    }

    /// A caller in `tenant` with its token.
    async fn caller(&self, name: &str, tenant: &str, groups: &[&str]) -> (String, String) {
        let v = self
            .post(
                "/callers",
                json!({"name": name, "tenant": tenant, "groups": groups}),
            )
            .await;
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }
}

fn provider_json(name: &str, host: &str, fake: &FakeProvider, token: &str, tenant: &str) -> Value {
    json!({
        "name": name,
        "tenant": tenant,
        "hosts": [host],
        "baseUrl": fake.base_url(),
        "auth": {"type": "bearer", "token": token},
        "config": {"allowPrivateNetwork": true, "allowInsecureUpstream": !fake.tls}
    })
}

/// A reqwest module with `caller:token` in its proxy URL (what `HTTPS_PROXY` carries).
fn module(hub: &TestHub, caller: &str, token: &str) -> reqwest::Client {
    let url = format!("http://{caller}:{token}@{}", hub.proxy_addr);
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(hub.ca_pem.as_bytes()).unwrap())
        .proxy(reqwest::Proxy::all(url).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// CONNECT with `credential` as `Proxy-Authorization`: the TLS stream, or the CONNECT's answer.
async fn tunnel(
    hub: &TestHub,
    host: &str,
    credential: Option<&str>,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
    let auth = credential.map_or(String::new(), |c| format!("Proxy-Authorization: {c}\r\n"));
    tcp.write_all(
        format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n{auth}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        let mut rest = head;
        let mut more = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut more)).await
        {
            if n == 0 {
                break;
            }
            rest.push_str(&String::from_utf8_lossy(&more[..n]));
        }
        return Err(rest);
    }
    let connector = tokio_rustls::TlsConnector::from(cfg);
    Ok(connector
        .connect(
            rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap(),
            tcp,
        )
        .await
        .unwrap())
}

fn basic(caller: &str, token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{caller}:{token}"))
    )
}

/// Status and parsed body of a raw HTTP/1.1 answer.
fn parse(raw: &str) -> (u16, Value) {
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Access lines with `code`, as JSON.
fn access_lines(code: &str) -> Vec<Value> {
    hub_tests::logs::contents()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "hub::access" && v["code"] == code)
        .collect()
}

#[tokio::test]
async fn basic_and_bearer_caller_credentials_and_407_for_the_rest() {
    let mut calls_per_backend_so_far = 0;
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = hub(backend, &pki).await else {
            continue;
        };
        calls_per_backend_so_far += 1;
        let admin = Admin::new(&hub);
        let f = FakeProvider::start(Some(pki.server_config.clone())).await;
        admin
            .post(
                "/providers",
                provider_json("pay", "pay.fake.test", &f, "sk_PROVIDER_SECRET", "default"),
            )
            .await;
        let (_, token) = admin
            .granted(
                &hub,
                "bearer-billing",
                "pay",
                json!(["GET"]),
                json!(["/v1/**"]),
            )
            .await;
        let url = format!("https://pay.fake.test:{}/v1/charges", f.port);

        // Basic, from the proxy URL (what HTTPS_PROXY=http://billing:<token>@hub gives).
        let resp = module(&hub, "bearer-billing", &token)
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{backend:?}");
        // Bearer, raw.
        let mut tls = tunnel(
            &hub,
            "pay.fake.test",
            Some(&format!("Bearer {token}")),
            hub_tls_config(&hub),
        )
        .await
        .unwrap();
        tls.write_all(b"GET /v1/charges HTTP/1.1\r\nHost: pay.fake.test\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));
        for got in f.requests() {
            assert!(
                got.header("proxy-authorization").is_none(),
                "never forwarded"
            );
            assert_eq!(
                got.header("authorization"),
                Some("Bearer sk_PROVIDER_SECRET")
            );
        }

        // No credential, a wrong token, a right token under another caller's name: 407.
        for credential in [
            None,
            Some(basic("bearer-billing", "hubc_wrong")),
            Some(basic("someone-else", &token)),
            Some("Bearer hubc_wrong".to_owned()),
            Some("Digest abc".to_owned()),
        ] {
            let refused = tunnel(
                &hub,
                "pay.fake.test",
                credential.as_deref(),
                hub_tls_config(&hub),
            )
            .await
            .expect_err("refused at the CONNECT");
            let (status, body) = parse(&refused);
            assert_eq!(status, 407, "{credential:?}: {refused}");
            assert_eq!(body["code"], "caller_unauthenticated");
            assert!(
                refused
                    .to_ascii_lowercase()
                    .contains("proxy-authenticate: basic realm=\"integration-hub\""),
                "{refused}"
            );
        }
        // reqwest without credentials through absolute-form gets the same 407.
        let plain = FakeProvider::start(None).await;
        admin
            .post(
                "/providers",
                provider_json(
                    "plain",
                    "plain.fake.test",
                    &plain,
                    "sk_PLAIN_SECRET",
                    "default",
                ),
            )
            .await;
        hub.sync().await;
        let anonymous_before = caller_count(&hub, "anonymous", "unrouted", "407").await;
        let anon = hub_tests::client::client(&hub);
        let (status, body) = problem(
            anon.get(format!("http://plain.fake.test:{}/x", plain.port))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (407, Some("caller_unauthenticated"))
        );
        assert_eq!(plain.requests().len(), 0);

        // The caller-labelled counter (process-wide: both backends' hubs add to it).
        assert_eq!(
            caller_count(&hub, "bearer-billing", "pay", "200").await,
            2 * calls_per_backend_so_far,
            "{backend:?}"
        );
        // At least ours: other tests in this binary, running beside this one, add their own
        // anonymous 407s to the same process-wide series (an exact `== 1` failed when they did).
        assert!(
            caller_count(&hub, "anonymous", "unrouted", "407").await - anonymous_before >= 1,
            "{backend:?}"
        );

        let metrics = reqwest::get(format!("http://{}/metrics", hub.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!metrics.contains(&token), "nor in metrics");
        let logs = hub_tests::logs::contents();
        assert!(!logs.contains(&token), "the caller token is never logged");
        assert!(!logs.contains("sk_PROVIDER_SECRET"));
        let (_, listed) = admin.send(reqwest::Method::GET, "/callers", None).await;
        assert!(!listed.to_string().contains(&token));
        assert!(
            !listed
                .to_string()
                .contains(&hub_core::access::token_hash(&token))
        );
    }
}

#[tokio::test]
async fn the_same_forbidden_request_is_refused_the_same_on_every_way_in() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = hub(backend, &pki).await else {
            continue;
        };
        let admin = Admin::new(&hub);
        // A plain-http provider: reachable through CONNECT (TLS to the hub, http onwards) and
        // in absolute-form alike.
        let f = FakeProvider::start(None).await;
        admin
            .post(
                "/providers",
                provider_json("pay", "pay.fake.test", &f, "sk_PAY", "default"),
            )
            .await;
        let (_, token) = admin
            .granted(
                &hub,
                "billing",
                "pay",
                json!(["GET"]),
                json!(["/v1/charges"]),
            )
            .await;
        let bearer = format!("Bearer {token}");
        let forbidden = "GET /v1/refunds HTTP/1.1\r\nHost: pay.fake.test\r\n\r\n";
        let mut answers: Vec<(&str, u16, Value)> = Vec::new();

        // 1. The first request inside a tunnel.
        let mut tls = tunnel(&hub, "pay.fake.test", Some(&bearer), hub_tls_config(&hub))
            .await
            .unwrap();
        tls.write_all(forbidden.as_bytes()).await.unwrap();
        let (s, b) = parse(&read_response(&mut tls).await);
        answers.push(("connect", s, b));

        // 2. The second request of a kept-alive tunnel whose first was allowed.
        let mut tls = tunnel(&hub, "pay.fake.test", Some(&bearer), hub_tls_config(&hub))
            .await
            .unwrap();
        tls.write_all(b"GET /v1/charges HTTP/1.1\r\nHost: pay.fake.test\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));
        tls.write_all(forbidden.as_bytes()).await.unwrap();
        let (s, b) = parse(&read_response(&mut tls).await);
        answers.push(("keep-alive", s, b));

        // 3. Absolute-form.
        let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
        tcp.write_all(
            format!(
                "GET http://pay.fake.test:{}/v1/refunds HTTP/1.1\r\nHost: pay.fake.test:{}\r\n\
                 Proxy-Authorization: {bearer}\r\n\r\n",
                f.port, f.port
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let (s, b) = parse(&read_response(&mut tcp).await);
        answers.push(("absolute-form", s, b));

        // 4. A WebSocket upgrade.
        let mut tls = tunnel(&hub, "pay.fake.test", Some(&bearer), hub_tls_config(&hub))
            .await
            .unwrap();
        tls.write_all(
            b"GET /v1/refunds HTTP/1.1\r\nHost: pay.fake.test\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let (s, b) = parse(&read_response(&mut tls).await);
        answers.push(("websocket", s, b));

        // 5. An HTTP/2 stream.
        let tls = tunnel(
            &hub,
            "pay.fake.test",
            Some(&bearer),
            hub_h2_tls_config(&hub),
        )
        .await
        .unwrap();
        let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get("https://pay.fake.test/v1/refunds")
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        answers.push(("h2", status, serde_json::from_slice(&bytes).unwrap()));

        for (way, status, body) in &answers {
            assert_eq!(*status, 403, "{backend:?} {way}: {body}");
            assert_eq!(body["code"], "not_granted", "{way}");
            assert_eq!(
                body["detail"], answers[0].2["detail"],
                "{way}: the same refusal"
            );
        }
        assert!(
            answers[0].2["detail"]
                .as_str()
                .unwrap()
                .contains("GET /v1/refunds"),
            "{}",
            answers[0].2
        );
        // Nothing reached the provider but the one allowed call.
        let seen: Vec<String> = f.requests().iter().map(|r| r.target.clone()).collect();
        assert_eq!(seen, ["/v1/charges"], "{backend:?}");
        // The same audit record each way: the access line names caller, tenant, code.
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let lines: Vec<Value> = access_lines("not_granted")
                .into_iter()
                .filter(|l| l["caller"] == "billing")
                .collect();
            if lines.len() >= 5 || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(lines.len() >= 5, "{lines:?}");
        for l in &lines[lines.len() - 5..] {
            assert_eq!(l["provider"], "pay");
            assert_eq!(l["tenant"], "default");
            assert_eq!(l["method"], "GET");
            assert_eq!(l["status"], 403);
        }
    }
}

#[tokio::test]
async fn two_tenants_with_the_same_host_each_reach_only_their_own_credentials() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = hub(backend, &pki).await else {
            continue;
        };
        let admin = Admin::new(&hub);
        let f = FakeProvider::start(Some(pki.server_config.clone())).await;
        for t in ["acme", "beta"] {
            admin.post("/tenants", json!({"name": t})).await;
        }
        admin
            .post(
                "/providers",
                provider_json("acme-pay", "pay.fake.test", &f, "sk_ACME", "acme"),
            )
            .await;
        admin
            .post(
                "/providers",
                provider_json("beta-pay", "pay.fake.test", &f, "sk_BETA", "beta"),
            )
            .await;
        admin
            .post(
                "/providers",
                provider_json("beta-only", "only.fake.test", &f, "sk_ONLY", "beta"),
            )
            .await;
        let (_, a_token) = admin.caller("acme-billing", "acme", &["payments"]).await;
        let (_, b_token) = admin.caller("beta-billing", "beta", &["payments"]).await;
        for (t, p) in [("acme", "acme-pay"), ("beta", "beta-pay")] {
            admin
                .post(
                    "/grants",
                    json!({"group": "payments", "tenant": t, "provider": p, "methods": ["*"], "paths": ["/**"]}),
                )
                .await;
        }
        // A grant across tenants is refused, naming the field.
        let (status, body) = admin
            .send(
                reqwest::Method::POST,
                "/grants",
                Some(json!({"group": "payments", "tenant": "acme", "provider": "beta-only", "methods": ["*"], "paths": ["/**"]})),
            )
            .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some("provider")),
            "{body}"
        );
        hub.sync().await;
        let url = format!("https://pay.fake.test:{}/v1/x", f.port);
        assert_eq!(
            module(&hub, "acme-billing", &a_token)
                .get(&url)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            module(&hub, "beta-billing", &b_token)
                .get(&url)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let auth: Vec<String> = f
            .requests()
            .iter()
            .map(|r| r.header("authorization").unwrap_or_default().to_owned())
            .collect();
        assert_eq!(auth, ["Bearer sk_ACME", "Bearer sk_BETA"], "{backend:?}");
        // beta's host does not exist for acme's callers.
        let resp = module(&hub, "acme-billing", &a_token)
            .get(format!("https://only.fake.test:{}/v1/x", f.port))
            .send()
            .await
            .unwrap();
        let (status, body) = problem(resp).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("unknown_provider"))
        );
        assert_eq!(f.requests().len(), 2);

        // Explain names the provider, the grant and the credential type, never the secret.
        let e = admin
            .get("/explain?caller=acme-billing&method=POST&url=https://pay.fake.test/v1/charges")
            .await;
        assert_eq!(e["allowed"], true, "{e}");
        assert_eq!(e["provider"]["name"], "acme-pay");
        assert_eq!(e["credentialType"], "bearer");
        assert!(!e.to_string().contains("sk_ACME"));
        let e = admin
            .get("/explain?caller=acme-billing&method=GET&url=https://only.fake.test/")
            .await;
        assert_eq!(
            (e["allowed"].as_bool(), e["code"].as_str()),
            (Some(false), Some("unknown_provider"))
        );
    }
}

#[tokio::test]
async fn revoking_a_caller_cuts_its_open_tunnel_within_two_seconds() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = hub(backend, &pki).await else {
            continue;
        };
        let admin = Admin::new(&hub);
        let f = FakeProvider::start(None).await;
        admin
            .post(
                "/providers",
                provider_json("pay", "pay.fake.test", &f, "sk_PAY", "default"),
            )
            .await;
        let (id, token) = admin
            .granted(&hub, "billing", "pay", json!(["GET"]), json!(["/**"]))
            .await;
        let mut tls = tunnel(
            &hub,
            "pay.fake.test",
            Some(&format!("Bearer {token}")),
            hub_tls_config(&hub),
        )
        .await
        .unwrap();
        let req = b"GET /v1/charges HTTP/1.1\r\nHost: pay.fake.test\r\n\r\n";
        tls.write_all(req).await.unwrap();
        assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));

        let (status, _) = admin
            .send(reqwest::Method::DELETE, &format!("/callers/{id}"), None)
            .await;
        assert_eq!(status, 204);
        let revoked = Instant::now();
        // No sync: the proxy learns of it the way it does in production (poll or NOTIFY).
        let answer = loop {
            tls.write_all(req).await.unwrap();
            let raw = read_response(&mut tls).await;
            if !raw.starts_with("HTTP/1.1 200") {
                break raw;
            }
            assert!(revoked.elapsed() < Duration::from_secs(3), "still allowed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let took = revoked.elapsed();
        let (status, body) = parse(&answer);
        assert_eq!(
            (status, body["code"].as_str()),
            (407, Some("caller_unauthenticated")),
            "{answer}"
        );
        assert!(took <= Duration::from_secs(2), "{backend:?}: {took:?}");
        // The audit trail says what the revocation took away.
        let audit = admin.get(&format!("/audit?targetId={id}")).await;
        let revoke = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "caller.revoke")
            .expect("audited");
        assert_eq!(
            revoke["detail"]["removes"][0]["provider"], "pay",
            "{revoke}"
        );
        assert_eq!(revoke["detail"]["removes"][0]["caller"], "billing");
    }
}

#[tokio::test]
async fn a_grants_own_limit_is_reached_while_the_providers_has_room() {
    let pki = TestPki::new();
    let redis = hub_core::testing::redis_url().await.map(|url| async move {
        let opts = hub_core::state::RedisOptions {
            prefix: format!("hub:test:{}:", ulid::Ulid::new()),
            ..Default::default()
        };
        Arc::new(
            hub_core::state::RedisState::connect(url.as_str(), opts)
                .await
                .unwrap(),
        ) as Arc<dyn hub_core::state::SharedState>
    });
    let mut states: Vec<(&str, Option<Arc<dyn hub_core::state::SharedState>>)> =
        vec![("in-process", None)];
    if let Some(r) = redis {
        states.push(("redis", Some(r.await)));
    }
    for (label, state) in states {
        for backend in BACKENDS {
            let mut b = HubBuilder::new(backend, &pki)
                .configure(|c| c.proxy.callers = CallersMode::Required);
            if let Some(s) = &state {
                b = b.state(s.clone());
            }
            let Some(hub) = b.start().await else {
                continue;
            };
            let admin = Admin::new(&hub);
            let f = FakeProvider::start(None).await;
            admin
                .post(
                    "/providers",
                    provider_json("pay", "pay.fake.test", &f, "sk_PAY", "default"),
                )
                .await;
            let (id, token) = admin.caller("billing", "default", &[]).await;
            let (other, other_token) = admin.caller("reports", "default", &[]).await;
            admin
                .post(
                    "/grants",
                    json!({"caller": id, "provider": "pay", "methods": ["GET"], "paths": ["/**"], "dailyQuota": 3}),
                )
                .await;
            admin
                .post(
                    "/grants",
                    json!({"caller": other, "provider": "pay", "methods": ["GET"], "paths": ["/**"]}),
                )
                .await;
            hub.sync().await;
            let url = format!("http://pay.fake.test:{}/v1/x", f.port);
            let billing = module(&hub, "billing", &token);
            for i in 0..3 {
                assert_eq!(
                    billing.get(&url).send().await.unwrap().status(),
                    200,
                    "{label} {backend:?} {i}"
                );
            }
            let (status, body) = problem(billing.get(&url).send().await.unwrap()).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (429, Some("quota_exhausted")),
                "{label} {backend:?}"
            );
            assert!(body["detail"].as_str().unwrap().contains("grant"), "{body}");
            // The provider's own limit (100/s) still has room for another caller.
            let reports = module(&hub, "reports", &other_token);
            assert_eq!(reports.get(&url).send().await.unwrap().status(), 200);
            assert_eq!(f.requests().len(), 4);
        }
    }
}

#[tokio::test]
async fn admin_validation_names_the_field_and_changes_are_audited_with_what_they_allow() {
    let pki = TestPki::new();
    for backend in BACKENDS {
        let Some(hub) = hub(backend, &pki).await else {
            continue;
        };
        let admin = Admin::new(&hub);
        let f = FakeProvider::start(None).await;
        admin
            .post(
                "/providers",
                provider_json("pay", "pay.fake.test", &f, "sk_PAY", "default"),
            )
            .await;
        let (id, _) = admin.caller("billing", "default", &["payments"]).await;
        for (body, field) in [
            (json!({"name": "Bad Name"}), "name"),
            (json!({"name": "x", "tenant": "nope"}), "tenant"),
            (
                json!({"name": "x", "groups": ["ok", "Not Ok"]}),
                "groups[1]",
            ),
            (json!({"name": "x", "token": false}), "token"),
        ] {
            let (status, v) = admin
                .send(reqwest::Method::POST, "/callers", Some(body.clone()))
                .await;
            assert_eq!(
                (status, v["field"].as_str()),
                (422, Some(field)),
                "{body}: {v}"
            );
        }
        for (body, field) in [
            (
                json!({"caller": id, "provider": "pay", "methods": ["get"], "paths": ["/**"]}),
                "methods",
            ),
            (
                json!({"caller": id, "provider": "pay", "methods": ["GET"], "paths": ["/v1/*"]}),
                "paths[0]",
            ),
            (
                json!({"caller": id, "provider": "pay", "methods": ["GET"], "paths": []}),
                "paths",
            ),
            (
                json!({"caller": id, "provider": "nope", "methods": ["GET"], "paths": ["/**"]}),
                "provider",
            ),
            (
                json!({"provider": "pay", "methods": ["GET"], "paths": ["/**"]}),
                "caller",
            ),
            (
                json!({"caller": id, "provider": "pay", "methods": ["GET"], "paths": ["/**"], "burst": 3}),
                "burst",
            ),
            (
                json!({"caller": id, "provider": "pay", "methods": ["GET"], "paths": ["/**"], "rateLimit": 3}),
                "rateLimit",
            ),
        ] {
            let (status, v) = admin
                .send(reqwest::Method::POST, "/grants", Some(body.clone()))
                .await;
            assert_eq!(
                (status, v["field"].as_str()),
                (422, Some(field)),
                "{body}: {v}"
            );
        }
        let (status, v) = admin
            .send(
                reqwest::Method::POST,
                "/callers",
                Some(json!({"name": "billing"})),
            )
            .await;
        assert_eq!(status, 409, "{v}");

        let g = admin
            .post(
                "/grants",
                json!({"group": "payments", "provider": "pay", "methods": ["GET", "POST"], "paths": ["/v1/charges/{id}", "/v1/refunds"]}),
            )
            .await;
        let gid = g["id"].as_str().unwrap();
        let audit = admin.get(&format!("/audit?targetId={gid}")).await;
        let created = &audit["items"][0];
        assert_eq!(created["action"], "grant.create");
        assert_eq!(
            created["detail"]["allows"],
            json!([{"caller": "billing", "provider": "pay", "methods": ["GET", "POST"], "paths": ["/v1/charges/{id}", "/v1/refunds"]}])
        );
        // A new member of the group is newly allowed the group's grant: the caller's creation says so.
        let v = admin
            .post(
                "/callers",
                json!({"name": "billing2", "groups": ["payments"]}),
            )
            .await;
        let audit = admin
            .get(&format!("/audit?targetId={}", v["id"].as_str().unwrap()))
            .await;
        assert_eq!(
            audit["items"][0]["detail"]["allows"][0]["caller"],
            "billing2"
        );
        assert!(!audit.to_string().contains(v["token"].as_str().unwrap()));
        let (status, _) = admin
            .send(reqwest::Method::DELETE, &format!("/grants/{gid}"), None)
            .await;
        assert_eq!(status, 204);
        let audit = admin.get(&format!("/audit?targetId={gid}")).await;
        assert_eq!(audit["items"][0]["action"], "grant.delete");
        assert_eq!(
            audit["items"][0]["detail"]["removes"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}

#[tokio::test]
async fn the_hubs_own_calls_pass_as_the_internal_caller_and_modules_cannot_pose_as_it() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = HubBuilder::new(backend, &pki)
            .configure(|c| {
                c.proxy.callers = CallersMode::Required;
                c.dlq.flush_interval_ms = 100;
            })
            .dlq(hub_tests::harness::DlqWiring::Writer)
            .start()
            .await
        else {
            continue;
        };
        let admin = Admin::new(&hub);
        let f = FakeProvider::start(None).await;
        for t in ["acme", "beta"] {
            admin.post("/tenants", json!({"name": t})).await;
        }
        let mut acme = provider_json("acme-pay", "pay.fake.test", &f, "sk_ACME", "acme");
        acme["config"]["maxAttempts"] = json!(1);
        admin.post("/providers", acme).await;
        let beta = admin
            .post(
                "/providers",
                provider_json("beta-pay", "pay.fake.test", &f, "sk_BETA", "beta"),
            )
            .await;
        let beta_id = beta["id"].as_str().unwrap().to_owned();
        let (id, token) = admin.caller("billing", "acme", &[]).await;
        admin
            .post(
                "/grants",
                json!({"caller": id, "provider": "acme-pay", "methods": ["*"], "paths": ["/**"]}),
            )
            .await;
        hub.sync().await;

        // The admin's POST /call reaches beta's provider (same host as acme's) by its id.
        let (status, answer) = admin
            .send(
                reqwest::Method::POST,
                "/call",
                Some(json!({"providerId": beta_id, "method": "GET", "path": "/v1/x"})),
            )
            .await;
        assert_eq!(
            (status, answer["status"].as_u64()),
            (200, Some(200)),
            "{backend:?} {answer}"
        );
        let last = f.requests().last().unwrap().clone();
        assert_eq!(last.header("authorization"), Some("Bearer sk_BETA"));
        assert!(last.header("proxy-authorization").is_none());
        assert!(
            last.header("x-hub-provider-id").is_none(),
            "never forwarded"
        );

        // A module cannot pose as the hub, nor pick another tenant's provider by id.
        let forged = format!("Bearer hubi_{}", "0".repeat(64));
        let refused = tunnel(&hub, "pay.fake.test", Some(&forged), hub_tls_config(&hub))
            .await
            .expect_err("refused");
        assert_eq!(parse(&refused).0, 407, "{refused}");
        let url = format!("http://pay.fake.test:{}/v1/mine", f.port);
        let resp = module(&hub, "billing", &token)
            .get(&url)
            .header("x-hub-provider-id", &beta_id)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let last = f.requests().last().unwrap().clone();
        assert_eq!(
            last.header("authorization"),
            Some("Bearer sk_ACME"),
            "its own tenant's"
        );

        // A failed call is recorded with its caller, and the replay (the worker, through the
        // proxy as the internal caller) succeeds under `required`.
        f.set_mode(hub_tests::Mode::Status(500));
        let resp = module(&hub, "billing", &token)
            .post(&url)
            .header("idempotency-key", "k-1")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        let dlq_id: ulid::Ulid = resp.headers()["x-hub-dlq-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let entry = loop {
            if let Ok(e) = hub.background.dlq.get(dlq_id).await {
                break e;
            }
            assert!(Instant::now() < deadline, "the entry is stored");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(entry.caller.as_deref(), Some("billing"));
        f.set_mode(hub_tests::Mode::Ok);
        let worker = hub
            .background
            .worker(
                hub.store.clone(),
                &hub.proxy_url(),
                hub.background.worker_options(),
            )
            .unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(worker.run(rx));
        hub.background.dlq.retry(dlq_id).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let e = hub.background.dlq.get(dlq_id).await.unwrap();
            if e.status == hub_core::dlq::EntryStatus::Resolved {
                break;
            }
            assert!(Instant::now() < deadline, "replayed: {e:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = f.requests().last().unwrap().clone();
        assert_eq!(last.header("authorization"), Some("Bearer sk_ACME"));
        stop.send_replace(true);
        let _ = running.await;
        let internal = hub.vault.internal_caller_token();
        let logs = hub_tests::logs::contents();
        assert!(
            !logs.contains(internal.expose()),
            "the internal credential is never logged"
        );
        assert!(!logs.contains(&token));
    }
}

/// A ServiceAccount token issuer: an ES256 key, its JWKS, and tokens signed with it.
struct Issuer {
    key: ring::signature::EcdsaKeyPair,
    jwks: Value,
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "integration-hub";

impl Issuer {
    fn new(kid: &str) -> Self {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "use": "sig", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
        Self { key, jwks }
    }

    fn token(&self, kid: &str, claims: Value) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn sa_claims(ns: &str, name: &str, iss: &str, aud: &str, exp_in: i64) -> Value {
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    json!({"iss": iss, "aud": [aud], "sub": format!("system:serviceaccount:{ns}:{name}"),
        "iat": now - 10, "exp": now + exp_in,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "u-1"}}})
}

#[tokio::test]
async fn a_service_account_token_is_a_caller_credential_and_bad_ones_get_407() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let issuer = Issuer::new("k1");
        let stranger = Issuer::new("k1");
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, issuer.jwks.to_string()).unwrap();
        let sa: hub_core::satoken::SaTokenConfig = serde_json::from_value(json!({
            "jwks_file": jwks, "issuer": ISSUER, "audiences": [AUDIENCE]
        }))
        .unwrap();
        let Some(hub) = HubBuilder::new(backend, &pki)
            .configure(|c| {
                c.proxy.callers = CallersMode::Required;
                c.proxy.service_account_tokens = Some(sa);
            })
            .start()
            .await
        else {
            continue;
        };
        let admin = Admin::new(&hub);
        let f = FakeProvider::start(Some(pki.server_config.clone())).await;
        admin
            .post(
                "/providers",
                provider_json("pay", "pay.fake.test", &f, "sk_PAY", "default"),
            )
            .await;
        let v = admin
            .post(
                "/callers",
                json!({"name": "billing", "token": false,
                       "serviceAccount": {"namespace": "payments", "name": "billing"}}),
            )
            .await;
        assert!(
            v.get("token").is_none(),
            "a ServiceAccount-only caller has no token: {v}"
        );
        admin
            .post(
                "/grants",
                json!({"caller": "billing", "provider": "pay", "methods": ["GET"], "paths": ["/**"]}),
            )
            .await;
        hub.sync().await;
        let good = issuer.token(
            "k1",
            sa_claims("payments", "billing", ISSUER, AUDIENCE, 600),
        );
        let get = b"GET /v1/x HTTP/1.1\r\nHost: pay.fake.test\r\n\r\n";
        for credential in [format!("Bearer {good}"), basic("billing", &good)] {
            let mut tls = tunnel(
                &hub,
                "pay.fake.test",
                Some(&credential),
                hub_tls_config(&hub),
            )
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
            tls.write_all(get).await.unwrap();
            assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));
        }
        let mut forged = good.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        let refused = [
            (
                "expired",
                issuer.token(
                    "k1",
                    sa_claims("payments", "billing", ISSUER, AUDIENCE, -120),
                ),
            ),
            (
                "wrong audience",
                issuer.token(
                    "k1",
                    sa_claims("payments", "billing", ISSUER, "kube-apiserver", 600),
                ),
            ),
            (
                "wrong issuer",
                issuer.token(
                    "k1",
                    sa_claims("payments", "billing", "https://evil.test", AUDIENCE, 600),
                ),
            ),
            (
                "signed by another key",
                stranger.token(
                    "k1",
                    sa_claims("payments", "billing", ISSUER, AUDIENCE, 600),
                ),
            ),
            ("bad signature", forged),
            (
                "unmapped ServiceAccount",
                issuer.token("k1", sa_claims("payments", "other", ISSUER, AUDIENCE, 600)),
            ),
        ];
        for (why, token) in refused {
            let answer = tunnel(
                &hub,
                "pay.fake.test",
                Some(&format!("Bearer {token}")),
                hub_tls_config(&hub),
            )
            .await
            .expect_err(why);
            let (status, body) = parse(&answer);
            assert_eq!(
                (status, body["code"].as_str()),
                (407, Some("caller_unauthenticated")),
                "{why}: {answer}"
            );
            assert!(
                !answer.contains(&token[..20]),
                "{why}: the token is not echoed"
            );
        }
        assert_eq!(f.requests().len(), 2);
        let logs = hub_tests::logs::contents();
        assert!(!logs.contains(&good), "the JWT is never logged");
    }
}

#[tokio::test]
async fn a_provider_may_refuse_a_callers_own_credential_instead_of_replacing_it() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = hub(backend, &pki).await else {
            continue;
        };
        let admin = Admin::new(&hub);
        let f = FakeProvider::start(None).await;
        let mut strict = provider_json("strict", "strict.fake.test", &f, "sk_STRICT", "default");
        strict["config"]["refuseForeignCredential"] = json!(true);
        admin.post("/providers", strict).await;
        let mut query = provider_json("strict-q", "q.fake.test", &f, "unused", "default");
        query["auth"] = json!({"type": "query", "name": "api_key", "value": "sk_Q"});
        query["config"]["refuseForeignCredential"] = json!(true);
        admin.post("/providers", query).await;
        let (id, token) = admin.caller("billing", "default", &[]).await;
        for p in ["strict", "strict-q"] {
            admin
                .post(
                    "/grants",
                    json!({"caller": id, "provider": p, "methods": ["*"], "paths": ["/**"]}),
                )
                .await;
        }
        hub.sync().await;
        let m = module(&hub, "billing", &token);
        let url = format!("http://strict.fake.test:{}/v1/x", f.port);
        let (status, body) = problem(
            m.get(&url)
                .header("authorization", "Bearer sk_live_MODULE_OWN")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("foreign_credential")),
            "{backend:?}"
        );
        assert!(!body.to_string().contains("sk_live_MODULE_OWN"));
        let qurl = format!("http://q.fake.test:{}/v1/x?api_key=mine", f.port);
        let (status, body) = problem(m.get(&qurl).send().await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("foreign_credential"))
        );
        assert_eq!(f.requests().len(), 0, "nothing sent");
        assert_eq!(m.get(&url).send().await.unwrap().status(), 200);
        assert_eq!(
            f.requests()[0].header("authorization"),
            Some("Bearer sk_STRICT")
        );
    }
}

/// `integration_caller_requests_total` for a caller, provider and code (summed over tenants).
async fn caller_count(hub: &TestHub, caller: &str, provider: &str, code: &str) -> u64 {
    let metrics = reqwest::get(format!("http://{}/metrics", hub.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("integration_caller_requests_total{"))
        .filter(|l| {
            l.contains(&format!("caller=\"{caller}\""))
                && l.contains(&format!("provider=\"{provider}\""))
                && l.contains(&format!("code=\"{code}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
