//! End-to-end: real clients (reqwest with a proxy, curl -x, raw sockets) through the hub to fake
//! providers on loopback, on SQLite and on PostgreSQL.

use std::time::Duration;

use hub_tests::client::{
    client, hub_tls_config, problem, provider_json, raw_tunnel, raw_tunnel_with, read_response,
};
use hub_tests::{Backend, FakeProvider, Mode, TestHub, TestPki};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

async fn fake(pki: &TestPki) -> FakeProvider {
    FakeProvider::start(Some(pki.server_config.clone())).await
}

#[tokio::test]
async fn https_through_connect_injects_each_auth_type_replacing_the_dummy() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let f = fake(&pki).await;
        let cases = [
            (
                "bearer",
                json!({"type": "bearer", "token": "tok_BEARER_SECRET"}),
            ),
            (
                "basic",
                json!({"type": "basic", "username": "user_SECRET", "password": "pw_BASIC_SECRET"}),
            ),
            (
                "header",
                json!({"type": "header", "name": "X-Api-Key", "value": "key_HEADER_SECRET"}),
            ),
            (
                "query",
                json!({"type": "query", "name": "api_key", "value": "q_QUERY_SECRET"}),
            ),
        ];
        for (i, (kind, auth)) in cases.iter().enumerate() {
            let host = format!("{kind}.fake.test");
            hub.add_provider(provider_json(&format!("p-{kind}"), &host, &f, auth.clone()))
                .await;
            let url = format!("https://{host}:{}/v1/charges?api_key=dummy&x=1", f.port);
            let resp = client(&hub)
                .get(&url)
                .header("authorization", "Bearer DUMMY")
                .header("x-api-key", "DUMMY")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{backend:?} {kind}");
            assert!(resp.headers().get("x-request-id").is_some());
            let reqs = f.requests();
            let got = &reqs[i];
            assert_eq!(got.method, "GET");
            match *kind {
                "bearer" => assert_eq!(
                    got.header("authorization"),
                    Some("Bearer tok_BEARER_SECRET")
                ),
                "basic" => assert_eq!(
                    got.header("authorization"),
                    Some("Basic dXNlcl9TRUNSRVQ6cHdfQkFTSUNfU0VDUkVU")
                ),
                "header" => assert_eq!(got.header("x-api-key"), Some("key_HEADER_SECRET")),
                "query" => assert_eq!(got.target, "/v1/charges?x=1&api_key=q_QUERY_SECRET"),
                _ => unreachable!(),
            }
            if *kind != "query" {
                assert!(
                    got.target.starts_with("/v1/charges?api_key=dummy"),
                    "{}",
                    got.target
                );
            }
            // The caller's dummy survives only in headers the scheme does not own.
            let owned = match *kind {
                "bearer" | "basic" => "authorization",
                "header" => "x-api-key",
                _ => "",
            };
            for (name, value) in &got.headers {
                assert!(
                    !(value.contains("DUMMY") && name == owned),
                    "{kind}: caller's dummy kept in {name}"
                );
            }
            if *kind == "query" {
                assert!(!got.target.contains("dummy"), "{}", got.target);
            }
            assert_eq!(
                got.header("host"),
                Some(format!("localhost:{}", f.port).as_str())
            );
            assert!(got.header("proxy-authorization").is_none());
        }
    }
}

#[tokio::test]
async fn absolute_form_http_reaches_an_insecure_provider() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        // Callers off: the module's own Proxy-Authorization (for some other proxy) is ignored
        // and, as a hop-by-hop header, never forwarded. (With callers on it must be valid.)
        let Some(hub) = hub_tests::harness::HubBuilder::new(backend, &pki)
            .configure(|c| c.proxy.callers = hub_core::config::CallersMode::Off)
            .start()
            .await
        else {
            continue;
        };
        let f = FakeProvider::start(None).await;
        hub.add_provider(provider_json(
            "plain",
            "plain.fake.test",
            &f,
            json!({"type": "bearer", "token": "t0k"}),
        ))
        .await;
        let resp = client(&hub)
            .post(format!("http://plain.fake.test:{}/v1/send", f.port))
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let got = &f.requests()[0];
        assert_eq!(got.target, "/v1/send");
        assert_eq!(got.body, b"hello");
        assert_eq!(got.header("authorization"), Some("Bearer t0k"));
        assert!(got.header("proxy-authorization").is_none());
    }
}

#[tokio::test]
async fn curl_through_the_proxy_with_the_hub_ca() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = fake(&pki).await;
    hub.add_provider(provider_json(
        "curl",
        "api.curl.test",
        &f,
        json!({"type": "bearer", "token": "curl_tok"}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("hub-ca.pem");
    std::fs::write(&ca, &hub.ca_pem).unwrap();
    let url = format!("https://api.curl.test:{}/v1/ping", f.port);
    let proxy = hub.proxy_url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-x", &proxy, "--cacert"])
            .arg(&ca)
            .args(["-H", "X-Request-ID: curl-req-1", "-D", "-", &url])
            .output()
    })
    .await
    .unwrap()
    .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("x-request-id: curl-req-1"), "{text}");
    assert!(text.contains("\"ok\":true"), "{text}");
    assert_eq!(f.requests()[0].header("x-request-id"), Some("curl-req-1"));
    assert_eq!(
        f.requests()[0].header("authorization"),
        Some("Bearer curl_tok")
    );
}

#[tokio::test]
async fn a_tunnel_serves_many_requests_and_refuses_a_foreign_host() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = fake(&pki).await;
    hub.add_provider(provider_json(
        "ka",
        "ka.fake.test",
        &f,
        json!({"type": "none"}),
    ))
    .await;
    hub.add_provider(provider_json(
        "other",
        "other.fake.test",
        &f,
        json!({"type": "none"}),
    ))
    .await;
    let mut tls = raw_tunnel(&hub, "ka.fake.test", 443).await;
    for i in 0..3 {
        tls.write_all(format!("GET /r{i} HTTP/1.1\r\nHost: ka.fake.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut tls).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    // Same tunnel, another provider's Host: 421, nothing forwarded.
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: other.fake.test\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut tls).await;
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    assert!(resp.contains("misdirected_request"));
    let targets: Vec<_> = f.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, vec!["/r0", "/r1", "/r2"]);
}

#[tokio::test]
async fn deny_by_default_and_other_refusals_never_reach_the_provider() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let f = fake(&pki).await;
        let rec = hub
            .add_provider(provider_json(
                "off",
                "off.fake.test",
                &f,
                json!({"type": "none"}),
            ))
            .await;
        hub.add_provider(json!({
            "name": "strict", "hosts": ["strict.fake.test"], "baseUrl": f.base_url(), "auth": {"type": "none"}
        }))
        .await;
        hub.store
            .update_provider(
                rec.id,
                hub_core::store::ProviderChange {
                    status: Some(hub_core::provider::ProviderStatus::Disabled),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        hub.sync().await;
        let c = client(&hub);

        // Unknown host through CONNECT: answered inside the tunnel, so the client reads it
        // like any answer (no upstream dial, no DNS lookup).
        let (s, body) = problem(c.get("https://nobody.test/x").send().await.unwrap()).await;
        assert_eq!(
            (s, body["code"].as_str().unwrap()),
            (403, "unknown_provider")
        );
        // Unknown host, absolute-form: problem+json.
        let (s, body) = problem(c.get("http://nobody.test/x").send().await.unwrap()).await;
        assert_eq!(
            (s, body["code"].as_str().unwrap()),
            (403, "unknown_provider")
        );
        // Disabled provider.
        let (s, body) = problem(
            c.get(format!("http://off.fake.test:{}/x", f.port))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s, body["code"].as_str().unwrap()),
            (403, "provider_disabled")
        );
        // Loopback destination without allowPrivateNetwork.
        let (s, body) = problem(
            c.get(format!("http://strict.fake.test:{}/x", f.port))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s, body["code"].as_str().unwrap()),
            (403, "forbidden_destination")
        );

        // Raw CONNECT: accepted, then the first request inside gets the problem and the
        // tunnel ends. Unknown → unknown_provider; wrong port → forbidden_port.
        for (host, port, code) in [
            ("nobody.test", 443, "unknown_provider"),
            ("strict.fake.test", 22, "forbidden_port"),
            ("off.fake.test", 443, "provider_disabled"),
        ] {
            let mut tls = raw_tunnel(&hub, host, port).await;
            tls.write_all(format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let resp = read_response(&mut tls).await;
            assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
            assert!(resp.contains(&format!("\"code\":\"{code}\"")), "{resp}");
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
            assert!(rest.is_empty(), "the refused tunnel ends after its answer");
        }
        assert_eq!(
            f.connections(),
            0,
            "{backend:?}: the provider was contacted"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_4xx_or_a_closed_connection_and_the_hub_keeps_serving() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = fake(&pki).await;
    hub.add_provider(provider_json(
        "ok",
        "ok.fake.test",
        &f,
        json!({"type": "none"}),
    ))
    .await;
    let big = "a".repeat(200 * 1024);
    let port = f.port;
    let cases: Vec<(String, &str)> = vec![
        ("GARBAGE\r\n\r\n".into(), "4"),
        ("GET http://ok.fake.test/ HTTP/9.9\r\n\r\n".into(), "4"),
        ("CONNECT ok.fake.test HTTP/1.1\r\n\r\n".into(), "400"),
        ("CONNECT :443 HTTP/1.1\r\n\r\n".into(), "400"),
        (
            format!("GET http://ok.fake.test:{port}/ HTTP/1.1\r\nHost: ok\r\nX-Big: {big}\r\n\r\n"),
            "4",
        ),
        (
            format!(
                "POST http://ok.fake.test:{port}/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            "4",
        ),
        ("GET / HTTP/1.1\r\nHost: ok.fake.test\r\n\r\n".into(), "400"),
    ];
    for (raw, expect) in cases {
        let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
        let _ = tcp.write_all(raw.as_bytes()).await;
        let resp = read_response(&mut tcp).await;
        assert!(
            resp.is_empty() || resp.starts_with(&format!("HTTP/1.1 {expect}")),
            "{}: {resp}",
            &raw[..raw.len().min(60)]
        );
    }
    // Garbage instead of a TLS ClientHello after CONNECT: the connection just closes.
    let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
    tcp.write_all(b"CONNECT ok.fake.test:443 HTTP/1.1\r\n\r\nthis is not TLS at all\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut tcp).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(f.connections(), 0, "bad input reached the provider");
    // Still serving.
    let resp = client(&hub)
        .get(format!("https://ok.fake.test:{port}/fine"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn request_id_traceparent_and_idempotency_key() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = fake(&pki).await;
    let mut p = provider_json("idem", "idem.fake.test", &f, json!({"type": "none"}));
    p["config"]["idempotencyHeader"] = json!("Idempotency-Key");
    hub.add_provider(p).await;
    let c = client(&hub);
    let url = format!("https://idem.fake.test:{}/v1/pay", f.port);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = c
        .post(&url)
        .header("traceparent", tp)
        .header("x-request-id", "rid-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "rid-42");
    let resp2 = c
        .post(&url)
        .header("idempotency-key", "caller-key")
        .send()
        .await
        .unwrap();
    let generated = resp2.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID request id is generated");
    let reqs = f.requests();
    // The trace is continued: same trace id, the hub's span as the provider's parent.
    let forwarded = reqs[0].header("traceparent").unwrap();
    assert!(
        forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{forwarded}"
    );
    assert_ne!(forwarded, tp);
    assert_eq!(reqs[0].header("x-request-id"), Some("rid-42"));
    let key = reqs[0].header("idempotency-key").unwrap();
    assert_eq!(key.len(), 36, "hub adds a UUID key: {key}");
    assert_eq!(reqs[1].header("idempotency-key"), Some("caller-key"));
    assert_eq!(reqs[1].header("x-request-id"), Some(generated.as_str()));
}

#[tokio::test]
async fn registry_changes_reach_the_running_proxy_within_two_seconds() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let f = fake(&pki).await;
        let c = client(&hub);
        let url = format!("http://late.fake.test:{}/x", f.port);
        assert_eq!(c.get(&url).send().await.unwrap().status(), 403);
        // Written to the store only: the proxy's own refresher must pick it up.
        let new: hub_core::provider::NewProvider = serde_json::from_value(provider_json(
            "late",
            "late.fake.test",
            &f,
            json!({"type": "none"}),
        ))
        .unwrap();
        hub_core::catalog::register(hub.store.as_ref(), &hub.vault, new)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            if c.get(&url).send().await.unwrap().status() == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend:?}: not applied within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn upstream_failures_are_problems_and_secrets_never_leak() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = fake(&pki).await;
    let secrets = [
        "tok_LEAKCHECK_1",
        "pw_LEAKCHECK_2",
        "hdr_LEAKCHECK_3",
        "q_LEAKCHECK_4",
    ];
    let auths = [
        json!({"type": "bearer", "token": secrets[0]}),
        json!({"type": "basic", "username": "u", "password": secrets[1]}),
        json!({"type": "header", "name": "X-Key", "value": secrets[2]}),
        json!({"type": "query", "name": "key", "value": secrets[3]}),
    ];
    let mut outputs = String::new();
    let c = client(&hub);
    for (i, auth) in auths.iter().enumerate() {
        let host = format!("leak{i}.fake.test");
        let mut p = provider_json(&format!("leak{i}"), &host, &f, auth.clone());
        p["config"]["timeoutMs"] = json!(300);
        p["config"]["maxAttempts"] = json!(1);
        hub.add_provider(p).await;
        for mode in [Mode::Ok, Mode::Status(500), Mode::Stall] {
            f.set_mode(mode.clone());
            let resp = c
                .get(format!("https://{host}:{}/v1/x?key=dummy", f.port))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            outputs.push_str(&format!("{:?}", resp.headers()));
            outputs.push_str(&resp.text().await.unwrap());
            match mode {
                Mode::Stall => assert_eq!(status, 504, "stalled provider → 504"),
                Mode::Status(500) => assert_eq!(status, 502, "a failing provider → 502 problem"),
                _ => assert_eq!(status, 200),
            }
        }
    }
    // An unreachable provider: 502 problem.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    hub.add_provider(json!({
        "name": "dead", "hosts": ["dead.fake.test"], "baseUrl": format!("https://localhost:{dead_port}"),
        "auth": {"type": "bearer", "token": secrets[0]}, "config": {"allowPrivateNetwork": true, "maxAttempts": 1}
    }))
    .await;
    let (s, body) = problem(
        c.get(format!("https://dead.fake.test:{dead_port}/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str().unwrap()),
        (502, "upstream_failed")
    );
    outputs.push_str(&body.to_string());
    // Let access lines flush, then search everything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = hub_tests::logs::contents();
    assert!(
        logs.contains("\"target\":\"hub::access\""),
        "access log captured"
    );
    assert!(
        logs.contains("key=[redacted]"),
        "query credential redacted in the access log"
    );
    for s in secrets {
        assert!(!logs.contains(s), "secret {s} in logs");
        assert!(!outputs.contains(s), "secret {s} in a response");
    }
}

#[tokio::test]
async fn shutdown_drains_calls_in_flight_and_refuses_new_connections() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = fake(&pki).await;
    hub.add_provider(provider_json(
        "slow",
        "slow.fake.test",
        &f,
        json!({"type": "none"}),
    ))
    .await;
    f.set_mode(Mode::Delay(400));
    let c = client(&hub);
    let url = format!("https://slow.fake.test:{}/long", f.port);
    let in_flight =
        tokio::spawn(async move { c.get(&url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(150)).await;
    hub.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(hub.proxy_addr).await.is_err(),
        "still accepting after shutdown"
    );
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the call in flight completed"
    );
}

#[tokio::test]
async fn a_returning_client_resumes_its_tls_session() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = fake(&pki).await;
    hub.add_provider(provider_json(
        "res",
        "res.fake.test",
        &f,
        json!({"type": "none"}),
    ))
    .await;
    let cfg = hub_tls_config(&hub);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let mut tls = raw_tunnel_with(&hub, "res.fake.test", 443, cfg.clone()).await;
        // A request round trip makes sure the TLS 1.3 ticket has arrived.
        tls.write_all(b"GET /r HTTP/1.1\r\nHost: res.fake.test\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full));
    assert_eq!(kinds[1], Some(rustls::HandshakeKind::Resumed), "{kinds:?}");
}
