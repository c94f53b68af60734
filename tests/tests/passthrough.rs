//! `tls: passthrough` end to end: a module client that trusts only the provider's own CA (not the
//! hub's) reaches a TLS fake provider through the hub's CONNECT; the hub checks the route, the
//! destination, the rate limit (per connection) and the cap on long-lived connections, relays
//! the bytes untouched, cuts a silent tunnel, and logs one access line per tunnel.

use std::time::{Duration, Instant};

use hub_tests::client::{client, read_response};
use hub_tests::harness::TEST_ADMIN_TOKEN;
use hub_tests::{Backend, FakeProvider, TestHub, TestPki, logs};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The fake's certificate names `localhost`: the module addresses the provider by that name.
const HOST: &str = "localhost";

/// A passthrough registration of `fake` for [`HOST`] with `config` merged in.
fn passthrough_json(name: &str, fake: &FakeProvider, config: Value) -> Value {
    let mut c = json!({"tls": "passthrough", "allowPrivateNetwork": true});
    for (k, v) in config.as_object().unwrap() {
        c[k] = v.clone();
    }
    json!({
        "name": name,
        "hosts": [HOST],
        "baseUrl": fake.base_url(),
        "auth": {"type": "none"},
        "config": c,
    })
}

async fn setup(name: &str, config: Value) -> Option<(TestPki, TestHub, FakeProvider)> {
    logs::init();
    let pki = TestPki::new();
    let hub = TestHub::start(Backend::Sqlite, &pki).await?;
    let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(passthrough_json(name, &fake, config))
        .await;
    Some((pki, hub, fake))
}

/// A module client through the hub that trusts only the provider's CA.
fn pinned_client(hub: &TestHub, pki: &TestPki) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .proxy(reqwest::Proxy::all(hub.proxy_url()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends a CONNECT to `HOST:port`; returns the socket and the hub's answer (head and body).
async fn connect(hub: &TestHub, port: u16) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
    tcp.write_all(
        format!("CONNECT {HOST}:{port} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_response(&mut tcp).await;
    (tcp, answer)
}

/// A module's TLS config trusting only the provider's own CA (not the hub's).
fn provider_tls(pki: &TestPki) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            hub_tests::client::pem_der(&pki.ca_pem),
        ))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

/// The JSON body of a problem answered to a CONNECT.
fn problem_of(answer: &str) -> Value {
    assert!(
        answer.contains("content-type: application/problem+json"),
        "{answer}"
    );
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap()
}

/// The access lines of tunnels to `provider`, as JSON.
fn tunnel_lines(provider: &str) -> Vec<Value> {
    logs::contents()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "hub::access" && v["kind"] == "passthrough")
        .filter(|v| v["provider"] == provider)
        .collect()
}

/// Waits (bounded) until `provider` has `n` tunnel lines.
async fn wait_lines(provider: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = tunnel_lines(provider);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_module_that_trusts_only_the_provider_ca_reaches_it_untouched_and_the_tunnel_is_logged() {
    let Some((pki, hub, fake)) = setup("pinned", json!({})).await else {
        return;
    };
    let url = format!("https://{HOST}:{}/v1/pinned?x=1", fake.port);
    let body = vec![b'z'; 100_000];
    let resp = pinned_client(&hub, &pki)
        .post(&url)
        .header("authorization", "Bearer module_OWN_token_SECRET")
        .body(body.clone())
        .send()
        .await
        .expect("the provider's own certificate verifies through the hub");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("x-request-id").is_none(),
        "the hub answered nothing inside the tunnel"
    );
    let answer = resp.text().await.unwrap();
    assert!(!answer.is_empty());

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let got = &reqs[0];
    assert_eq!(
        (got.method.as_str(), got.target.as_str()),
        ("POST", "/v1/pinned?x=1")
    );
    assert_eq!(got.body_len, body.len());
    assert_eq!(got.body_sha256, hub_tests::raw::sha256(&body));
    assert_eq!(
        got.header("authorization"),
        Some("Bearer module_OWN_token_SECRET"),
        "the module's own header, nothing injected"
    );
    for hub_header in ["x-request-id", "traceparent", "idempotency-key"] {
        assert!(got.header(hub_header).is_none(), "{hub_header} added");
    }

    // Trusting only the hub's CA, the same call fails: the certificate is the provider's.
    let err = client(&hub).get(&url).send().await.unwrap_err();
    assert!(
        format!("{err:?}").contains("UnknownIssuer"),
        "the module refused a certificate the hub CA did not issue: {err:?}"
    );
    assert_eq!(fake.requests().len(), 1);

    // One access line per tunnel (the second one ended in the module's failed handshake).
    let lines = wait_lines("pinned", 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["method"], "CONNECT");
    assert_eq!(first["tunnel"], true);
    assert_eq!(first["status"], 200);
    assert_eq!(first["host"], HOST);
    assert!(first["bytes_in"].as_u64().unwrap() > 100_000, "{first}");
    assert!(first["bytes_out"].as_u64().unwrap() > 0, "{first}");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0, "{first}");
    assert!(
        first["cut"] == "" || first["cut"] == "error",
        "closed by a side: {first}"
    );
    assert!(!logs::contents().contains("module_OWN_token_SECRET"));

    // The upgraded metrics count the tunnels and their bytes (calls' metrics do not).
    let m = &hub_proxy::metrics::METRICS;
    let bytes = |direction: &str| {
        m.upgraded_bytes
            .with_label_values(&["pinned", "passthrough", direction])
            .get()
    };
    assert_eq!(
        bytes("to_provider"),
        first["bytes_in"].as_u64().unwrap() + lines[1]["bytes_in"].as_u64().unwrap()
    );
    assert_eq!(
        bytes("to_module"),
        first["bytes_out"].as_u64().unwrap() + lines[1]["bytes_out"].as_u64().unwrap()
    );
    let ended = |outcome: &str| {
        m.upgraded_total
            .with_label_values(&["pinned", "passthrough", outcome])
            .get()
    };
    assert_eq!(ended("closed") + ended("error"), 2);
    assert_eq!(
        m.upgraded_open
            .with_label_values(&["pinned", "passthrough"])
            .get(),
        0
    );
    assert_eq!(
        m.requests
            .with_label_values(&["pinned", "POST", "200"])
            .get(),
        0,
        "a tunnel is not a call"
    );
}

#[tokio::test]
async fn the_admin_api_refuses_credentials_on_a_passthrough_provider() {
    let Some((_pki, hub, fake)) = setup("refused-auth", json!({})).await else {
        return;
    };
    let http = reqwest::Client::new();
    let providers = format!("{}/api/v1/integrations/providers", hub.admin_url());
    let mut with_auth = passthrough_json("with-auth", &fake, json!({}));
    with_auth["hosts"] = json!(["with-auth.test"]);
    with_auth["auth"] = json!({"type": "bearer", "token": "tok_PASSTHROUGH_SECRET"});
    let r = http
        .post(&providers)
        .bearer_auth(TEST_ADMIN_TOKEN)
        .json(&with_auth)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!(matches!(status, 400 | 422), "{status} {text}");
    assert!(text.contains("config.tls"), "{text}");
    assert!(!text.contains("tok_PASSTHROUGH_SECRET"));

    // A bearer provider cannot be switched to passthrough either.
    let mut bearer = with_auth.clone();
    bearer["config"] = json!({"allowPrivateNetwork": true});
    let r = http
        .post(&providers)
        .bearer_auth(TEST_ADMIN_TOKEN)
        .json(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http
        .patch(format!("{providers}/{id}"))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .json(&json!({"config": {"tls": "passthrough"}}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!(matches!(status, 400 | 422), "{status} {text}");
    assert!(text.contains("config.tls"), "{text}");
}

#[tokio::test]
async fn the_rate_limit_counts_connections() {
    let Some((_pki, hub, fake)) = setup("rated", json!({"rateLimitPerSec": 1, "burst": 1})).await
    else {
        return;
    };
    let (_first, answer) = connect(&hub, fake.port).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_second, answer) = connect(&hub, fake.port).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert_eq!(problem_of(&answer)["code"], "rate_limited");
    assert_eq!(fake.connections(), 1, "the refused tunnel dialled nothing");
}

#[tokio::test]
async fn a_provider_has_at_most_its_cap_of_tunnels() {
    let Some((_pki, hub, fake)) =
        setup("capped-tunnels", json!({"maxUpgradedConnections": 1})).await
    else {
        return;
    };
    let (first, answer) = connect(&hub, fake.port).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_second, answer) = connect(&hub, fake.port).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert_eq!(problem_of(&answer)["code"], "too_many_upgraded_connections");
    // The first tunnel's end frees its slot.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_third, answer) = connect(&hub, fake.port).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was never freed: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_silent_tunnel_is_cut_after_the_idle_timeout() {
    let Some((pki, hub, fake)) = setup("idle", json!({"upgradedIdleTimeoutMs": 300})).await else {
        return;
    };
    let (tcp, answer) = connect(&hub, fake.port).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A real TLS session with the provider, one request, then silence.
    let mut tls = tokio_rustls::TlsConnector::from(provider_tls(&pki))
        .connect(rustls::pki_types::ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .expect("the provider's certificate verifies");
    tls.write_all(format!("GET /v1/idle HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_response(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let silent = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("the hub cut the silent tunnel")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = silent.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    let lines = wait_lines("idle", 1).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["cut"], "idle_timeout", "{}", lines[0]);
    assert!(lines[0]["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_passthrough_destination_is_checked_before_anything_is_dialled() {
    let Some((_pki, hub, fake)) = setup("private", json!({"allowPrivateNetwork": false})).await
    else {
        return;
    };
    let (_tcp, answer) = connect(&hub, fake.port).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(problem_of(&answer)["code"], "forbidden_destination");
    assert_eq!(fake.connections(), 0, "nothing dialled");
    let lines = wait_lines("private", 1).await;
    assert_eq!(lines[0]["status"], 403);
    assert_eq!(lines[0]["code"], "forbidden_destination");
}

#[tokio::test]
async fn a_provider_that_refuses_the_connection_is_a_502_then_its_breaker_opens() {
    logs::init();
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    // A port nothing listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    hub.add_provider(json!({
        "name": "gone",
        "hosts": [HOST],
        "baseUrl": format!("https://localhost:{port}"),
        "auth": {"type": "none"},
        "config": {"tls": "passthrough", "allowPrivateNetwork": true,
                   "breaker": {"failureThreshold": 1}},
    }))
    .await;
    let (_tcp, answer) = connect(&hub, port).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(problem_of(&answer)["code"], "upstream_failed");
    // The failed connect is the breaker's failure: the next tunnel is refused without a dial.
    let (_tcp, answer) = connect(&hub, port).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("x-circuit-breaker-open: true"), "{answer}");
    assert_eq!(problem_of(&answer)["code"], "circuit_open");
}

#[tokio::test]
async fn bytes_sent_right_behind_the_connect_head_are_relayed_first() {
    logs::init();
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    // A plain provider: what the relay carries is visible on both ends.
    let fake = FakeProvider::start(None).await;
    let mut registration = passthrough_json("eager", &fake, json!({"allowInsecureUpstream": true}));
    registration["hosts"] = json!(["eager.test"]);
    hub.add_provider(registration).await;
    let port = fake.port;
    let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
    // The CONNECT head and the first bytes of the tunnel in one write.
    tcp.write_all(
        format!(
            "CONNECT eager.test:{port} HTTP/1.1\r\nHost: eager.test:{port}\r\n\r\n\
             GET /v1/eager HTTP/1.1\r\nHost: eager.test\r\nx-module: early\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
    let mut head = vec![0u8; established.len()];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(head, established);
    let answer = read_response(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].target, "/v1/eager");
    assert_eq!(reqs[0].header("x-module"), Some("early"));
    assert_eq!(reqs[0].header("x-request-id"), None, "nothing added");
}

/// Under `callers: required` a passthrough tunnel needs an unrestricted grant (the hub cannot
/// see its requests), and revoking its caller ends the open tunnel (cut `revoked`).
#[tokio::test]
async fn a_passthrough_tunnel_needs_an_unrestricted_grant_and_ends_on_revocation() {
    logs::init();
    let pki = TestPki::new();
    let Some(hub) = TestHub::start_callers_required(Backend::Sqlite, &pki).await else {
        return;
    };
    let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
    let rec = hub
        .add_provider(passthrough_json("pt-revoke", &fake, json!({})))
        .await;
    let (caller, token) = hub.caller_granted_everything("tunneler", rec.id).await;
    let open = |credential: Option<String>| {
        let hub = &hub;
        async move {
            let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
            let auth =
                credential.map_or(String::new(), |c| format!("Proxy-Authorization: {c}\r\n"));
            tcp.write_all(
                format!(
                    "CONNECT {HOST}:{p} HTTP/1.1\r\nHost: {HOST}:{p}\r\n{auth}\r\n",
                    p = fake.port
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let mut buf = vec![0u8; 2048];
            let n = tcp.read(&mut buf).await.unwrap();
            (tcp, String::from_utf8_lossy(&buf[..n]).into_owned())
        }
    };
    let (_, answer) = open(None).await;
    assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    // A grant that names methods or paths is not enough for a tunnel the hub cannot see into.
    let (other, other_token) = hub.caller_granted_everything("peeker", rec.id).await;
    let mut restricted = hub
        .store
        .all_grants()
        .await
        .unwrap()
        .into_iter()
        .find(|g| g.subject == hub_core::caller::Subject::Caller(other.id))
        .unwrap();
    restricted.methods = hub_core::caller::Methods::Only(vec!["GET".into()]);
    hub.store
        .put_grant(
            restricted,
            false,
            hub_tests::harness::test_audit("grant.update"),
        )
        .await
        .unwrap();
    hub.sync().await;
    let (_, answer) = open(Some(format!("Bearer {other_token}"))).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("not_granted"), "{answer}");
    assert_eq!(fake.connections(), 0, "nothing dialled");
    let (tcp, answer) = open(Some(format!("Bearer {token}"))).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut tls = tokio_rustls::TlsConnector::from(provider_tls(&pki))
        .connect(rustls::pki_types::ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .expect("the provider's own certificate");
    tls.write_all(format!("GET /v1/pt HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));

    hub.revoke_caller(caller).await;
    let revoked = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("the hub ends the revoked caller's tunnel")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        revoked.elapsed() <= Duration::from_secs(2),
        "{:?}",
        revoked.elapsed()
    );
    let lines = wait_lines("pt-revoke", 1).await;
    assert_eq!(lines.last().unwrap()["cut"], "revoked", "{lines:?}");
}
