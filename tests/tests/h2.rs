//! HTTP/2 and gRPC through the hub: modules speaking h2 inside their tunnels (reqwest with prior
//! knowledge, the `h2` crate as a gRPC client), providers speaking h2 (a real h2 server on
//! loopback that records what it receives), and the abuse a module could try on one connection.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use hub_proxy::metrics::METRICS;
use hub_tests::client::h2_module;
use hub_tests::h2fake::{grpc_frame, grpc_messages};
use hub_tests::{Backend, FakeProvider, H2Mode, H2Provider, TestHub, TestPki};
use serde_json::json;

const TOKEN: &str = "h2_secret_token_4711";

struct Setup {
    hub: TestHub,
    provider: H2Provider,
    _pki: TestPki,
}

const HOST: &str = "api.h2.test";

async fn setup(config: serde_json::Value) -> Option<Setup> {
    hub_tests::logs::init();
    let pki = TestPki::new();
    let hub = TestHub::start(Backend::Sqlite, &pki).await?;
    let provider = H2Provider::start(&pki.server_config).await;
    let mut cfg = json!({"allowPrivateNetwork": true, "backoffBaseMs": 10, "jitterMs": 0});
    for (k, v) in config.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    hub.add_provider(json!({
        "name": "h2prov",
        "hosts": [HOST],
        "baseUrl": provider.base_url(),
        "auth": {"type": "bearer", "token": TOKEN},
        "config": cfg,
    }))
    .await;
    Some(Setup {
        hub,
        provider,
        _pki: pki,
    })
}

/// A gRPC answer as the module saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    messages: Vec<Vec<u8>>,
    /// The gRPC status, from the trailers or a trailers-only head.
    grpc_status: Option<u32>,
    grpc_message: String,
}

fn grpc_request(path: &str, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("https://{HOST}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn grpc_status_of(h: &http::HeaderMap) -> (Option<u32>, String) {
    (
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn read_answer(resp: h2::client::ResponseFuture) -> Answer {
    let resp = resp.await.expect("a response head");
    let status = resp.status().as_u16();
    let (parts, mut body) = resp.into_parts();
    let (mut grpc_status, mut grpc_message) = grpc_status_of(&parts.headers);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        messages.extend(grpc_messages(&mut buf));
    }
    if let Ok(Some(t)) = body.trailers().await {
        (grpc_status, grpc_message) = grpc_status_of(&t);
    }
    Answer {
        status,
        headers: parts.headers,
        messages,
        grpc_status,
        grpc_message,
    }
}

/// A unary gRPC call: one message, the end.
async fn unary(
    send: &mut SendRequest<Bytes>,
    path: &str,
    msg: &[u8],
    extra: &[(&str, &str)],
) -> Answer {
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut body) = send.send_request(grpc_request(path, extra), false).unwrap();
    body.send_data(grpc_frame(msg), true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), read_answer(resp))
        .await
        .expect("answered in time")
}

#[tokio::test]
async fn grpc_unary_and_streams_pass_full_duplex_with_the_credential_injected() {
    let Some(s) = setup(json!({})).await else {
        return;
    };
    let mut module = h2_module(&s.hub, HOST, 443).await;
    s.provider.set_mode(H2Mode::Echo);
    let a = unary(&mut module, "/pkg.Svc/Unary", b"hello", &[]).await;
    assert_eq!((a.status, a.grpc_status), (200, Some(0)), "{a:?}");
    assert_eq!(a.messages, vec![b"echo:hello".to_vec()]);
    assert!(a.headers.contains_key("x-request-id"));
    let seen = s.provider.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(seen[0].header("te"), Some("trailers"));
    assert_eq!(seen[0].path, "/pkg.Svc/Unary");
    // The provider's authority, once (nginx refuses a request naming its host twice).
    assert_eq!(seen[0].authority, format!("localhost:{}", s.provider.port));
    assert_eq!(seen[0].header("host"), None);
    let timeout = seen[0]
        .header("grpc-timeout")
        .expect("the budget is passed on");
    assert!(timeout.ends_with('m'), "{timeout}");

    // Bidi: each message is answered before the next is sent (a buffering hub would deadlock).
    let mut ready = module.clone().ready().await.unwrap();
    let (resp, mut body) = ready
        .send_request(grpc_request("/pkg.Svc/Bidi", &[]), false)
        .unwrap();
    body.send_data(grpc_frame(b"one"), false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("the head comes before the module ends its stream")
        .unwrap();
    let mut rx = resp.into_body();
    let mut buf = BytesMut::new();
    for (sent, want) in [
        ("two", "echo:one"),
        ("three", "echo:two"),
        ("", "echo:three"),
    ] {
        let got = loop {
            let mut m = grpc_messages(&mut buf);
            if !m.is_empty() {
                break m.remove(0);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), rx.data())
                .await
                .expect("an answer per message")
                .unwrap()
                .unwrap();
            let _ = rx.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
        };
        assert_eq!(got, want.as_bytes());
        if sent.is_empty() {
            body.send_data(Bytes::new(), true).unwrap();
        } else {
            body.send_data(grpc_frame(sent.as_bytes()), false).unwrap();
        }
    }
    while let Some(c) = rx.data().await {
        assert!(c.unwrap().is_empty() || buf.is_empty());
    }
    let t = rx.trailers().await.unwrap().expect("trailers");
    assert_eq!(grpc_status_of(&t).0, Some(0));

    // Server streaming: every message, in order, then the status.
    s.provider.set_mode(H2Mode::ServerStream {
        count: 5,
        gap_ms: 30,
    });
    let a = unary(&mut module, "/pkg.Svc/List", b"q", &[]).await;
    assert_eq!(a.grpc_status, Some(0));
    let want: Vec<Vec<u8>> = (0..5).map(|i| format!("n:{i}").into_bytes()).collect();
    assert_eq!(a.messages, want);
    // The module never sent the credential; no log line carries it.
    assert!(
        s.provider
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_some())
    );
    let logs = hub_tests::logs::contents();
    assert!(logs.contains("/pkg.Svc/Unary"), "access lines are captured");
    assert!(!logs.contains(TOKEN), "a log line carries the credential");
}

#[tokio::test]
async fn grpc_retries_only_before_response_headers_and_ends_in_the_dlq() {
    let Some(s) = setup(json!({"maxAttempts": 3})).await else {
        return;
    };
    let mut module = h2_module(&s.hub, HOST, 443).await;
    // Trailers-only UNAVAILABLE twice: retried with the same body, the third answer is the module's.
    s.provider
        .script([H2Mode::Status(14), H2Mode::Status(14), H2Mode::Echo]);
    let a = unary(&mut module, "/pkg.Svc/Retry", b"same", &[]).await;
    assert_eq!(
        (a.grpc_status, a.messages.clone()),
        (Some(0), vec![b"echo:same".to_vec()]),
        "{a:?}"
    );
    let seen = s.provider.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.body == grpc_frame(b"same").to_vec()));

    // Other statuses are answers, not failures to retry.
    s.provider.script([H2Mode::Status(5)]);
    let a = unary(&mut module, "/pkg.Svc/NotFound", b"x", &[]).await;
    assert_eq!(
        (a.grpc_status, a.grpc_message.as_str()),
        (Some(5), "from-provider")
    );
    assert_eq!(s.provider.requests().len(), 4);

    // UNAVAILABLE after response headers: gRPC says not safe to retry; relayed as is.
    s.provider.script([H2Mode::StatusAfterHeaders(14)]);
    let a = unary(&mut module, "/pkg.Svc/Late", b"x", &[]).await;
    assert_eq!(
        (a.grpc_status, a.messages.clone()),
        (Some(14), vec![b"partial".to_vec()])
    );
    assert_eq!(s.provider.requests().len(), 5);

    // Still failing after every attempt: UNAVAILABLE in gRPC form, with the DLQ entry's id.
    s.provider.set_mode(H2Mode::Status(14));
    let a = unary(&mut module, "/pkg.Svc/Down", b"keep-me", &[]).await;
    assert_eq!((a.status, a.grpc_status), (200, Some(14)), "{a:?}");
    assert!(
        a.grpc_message.starts_with("upstream_failed"),
        "{}",
        a.grpc_message
    );
    let id = a
        .headers
        .get("x-hub-dlq-id")
        .expect("the DLQ id")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.provider.requests().len(), 8);
    let entry = s
        .hub
        .exhausted
        .lock()
        .await
        .recv()
        .await
        .expect("a DLQ entry");
    assert_eq!(entry.id.to_string(), id);
    assert_eq!(entry.body.as_deref(), Some(&grpc_frame(b"keep-me")[..]));
    assert!(
        entry
            .headers
            .iter()
            .all(|(k, v)| k != "authorization" && !v.contains(TOKEN))
    );
}

#[tokio::test]
async fn the_hubs_own_refusals_reach_grpc_modules_as_grpc_statuses() {
    let Some(s) = setup(json!({"rateLimitPerSec": 1, "burst": 1, "maxAttempts": 1,
        "breaker": {"failureThreshold": 1, "failureWindowMs": 60000, "openMs": 60000}}))
    .await
    else {
        return;
    };
    // Unknown provider: answered inside the refused tunnel, over h2.
    let nobody = h2_module(&s.hub, "nobody.h2.test", 443).await;
    let mut ready = nobody.clone().ready().await.unwrap();
    let mut req = grpc_request("/pkg.Svc/M", &[]);
    *req.uri_mut() = "https://nobody.h2.test/pkg.Svc/M".parse().unwrap();
    let (resp, mut body) = ready.send_request(req, false).unwrap();
    body.send_data(grpc_frame(b"x"), true).unwrap();
    let a = read_answer(resp).await;
    assert_eq!((a.status, a.grpc_status), (200, Some(7)), "{a:?}");
    assert!(
        a.grpc_message.starts_with("unknown_provider"),
        "{}",
        a.grpc_message
    );
    drop(nobody.ready());

    let mut module = h2_module(&s.hub, HOST, 443).await;
    s.provider.set_mode(H2Mode::Echo);
    assert_eq!(
        unary(&mut module, "/a/b", b"1", &[]).await.grpc_status,
        Some(0)
    );
    // Rate limit (1/s, burst 1): RESOURCE_EXHAUSTED, with Retry-After.
    let a = unary(&mut module, "/a/b", b"2", &[]).await;
    assert_eq!(a.grpc_status, Some(8), "{a:?}");
    assert!(a.grpc_message.starts_with("rate_limited"));
    assert!(a.headers.contains_key("retry-after"));
    // Breaker: one failure opens it; the next call is UNAVAILABLE without reaching the provider.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.provider.set_mode(H2Mode::Status(14));
    let a = unary(&mut module, "/a/b", b"3", &[]).await;
    assert_eq!(a.grpc_status, Some(14));
    let before = s.provider.requests().len();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = unary(&mut module, "/a/b", b"4", &[]).await;
    assert_eq!(a.grpc_status, Some(14), "{a:?}");
    assert!(
        a.grpc_message.starts_with("circuit_open"),
        "{}",
        a.grpc_message
    );
    assert_eq!(a.headers.get("x-circuit-breaker-open").unwrap(), "true");
    assert_eq!(s.provider.requests().len(), before);
}

#[tokio::test]
async fn grpc_deadlines_are_honoured_and_passed_on() {
    let Some(s) = setup(json!({"timeoutMs": 10000, "maxAttempts": 1})).await else {
        return;
    };
    let mut module = h2_module(&s.hub, HOST, 443).await;
    s.provider.set_mode(H2Mode::Stall);
    let started = Instant::now();
    let a = unary(
        &mut module,
        "/pkg.Svc/Slow",
        b"x",
        &[("grpc-timeout", "400m")],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(a.grpc_status, Some(4), "DEADLINE_EXCEEDED: {a:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let passed: u64 = s.provider.requests()[0]
        .header("grpc-timeout")
        .unwrap()
        .trim_end_matches('m')
        .parse()
        .unwrap();
    assert!((1..=400).contains(&passed), "{passed}");
}

#[tokio::test]
async fn h2_modules_multiplex_streams_and_h2_providers_share_one_connection() {
    let Some(s) = setup(json!({})).await else {
        return;
    };
    let fake_h1 = FakeProvider::start(Some(s._pki.server_config.clone())).await;
    s.hub
        .add_provider(hub_tests::client::provider_json(
            "h1prov",
            "api.h1.test",
            &fake_h1,
            json!({"type": "bearer", "token": TOKEN}),
        ))
        .await;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(s.hub.ca_pem.as_bytes()).unwrap())
        .proxy(reqwest::Proxy::all(s.hub.proxy_url()).unwrap())
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Warm-up: one call opens the hub's h2 connection to the provider.
    let r = client
        .get(format!("https://{HOST}/warm"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    // Answers take 50 ms: streams the hub multiplexes overlap at the provider even when the
    // machine is busy (answered at once, a loaded CI host saw them one after another).
    s.provider.set_mode(H2Mode::OkAfter(50));
    let calls = (0..64).map(|i| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("https://{HOST}/c/{i}"))
                .body(vec![b'z'; 1000 + i])
                .send()
                .await
                .unwrap();
            (r.version(), r.status().as_u16(), r.text().await.unwrap())
        }
    });
    for (v, status, body) in futures::future::join_all(calls).await {
        assert_eq!((v, status), (reqwest::Version::HTTP_2, 200), "{body}");
    }
    let seen = s.provider.requests();
    assert_eq!(seen.len(), 65);
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == Some(&*format!("Bearer {TOKEN}")))
    );
    assert!(seen.iter().any(|r| r.body.len() == 1063));
    assert_eq!(
        s.provider.connections(),
        1,
        "the provider's h2 connection is shared"
    );
    assert!(
        seen.iter().all(|r| r.header("host").is_none()
            && r.authority == format!("localhost:{}", s.provider.port))
    );
    assert!(s.provider.most_in_flight() > 1, "streams were multiplexed");
    // An h2 module to an HTTP/1.1 provider: translated both ways.
    let r = client
        .post("https://api.h1.test/from-h2")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    let got = fake_h1.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"abc");
    assert_eq!(
        got[0].header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
}

/// The hub process's resident memory, in bytes (the hub runs inside this test process).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn h2_abuse_is_bounded_and_others_are_still_served() {
    let Some(s) =
        setup(json!({"rateLimitPerSec": 100000, "burst": 100000, "timeoutMs": 15000})).await
    else {
        return;
    };
    s.provider.set_mode(H2Mode::Stall);
    let rss_before = rss();
    let refused_before = METRICS
        .h2_streams_refused
        .with_label_values(&["concurrency"])
        .get();
    // Calls whose streams the module reset still run until they notice: the hub holds at most
    // MAX_CONCURRENT_STREAMS of them per connection and refuses streams beyond.
    let cap = hub_proxy::serve::h2::MAX_CONCURRENT_STREAMS as usize;
    let module = h2_module(&s.hub, HOST, 443).await;
    let mut held = Vec::new();
    for i in 0..cap {
        let mut ready = module.clone().ready().await.unwrap();
        let (_resp, body) = ready
            .send_request(
                http::Request::get(format!("https://{HOST}/held/{i}"))
                    .body(())
                    .unwrap(),
                true,
            )
            .unwrap();
        held.push(body);
    }
    let waited = Instant::now();
    while s.provider.in_flight() < cap && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.provider.in_flight(), cap);
    for mut body in held {
        body.send_reset(h2::Reason::CANCEL);
    }
    for i in 0..20 {
        let mut ready = module.clone().ready().await.unwrap();
        let (resp, _) = ready
            .send_request(
                http::Request::get(format!("https://{HOST}/over/{i}"))
                    .body(())
                    .unwrap(),
                true,
            )
            .unwrap();
        let e = resp.await.expect_err("refused");
        assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}");
    }
    let refused = METRICS
        .h2_streams_refused
        .with_label_values(&["concurrency"])
        .get()
        - refused_before;
    assert_eq!(refused, 20);
    assert_eq!(
        s.provider.requests().len(),
        cap,
        "refused streams never reached the provider"
    );

    // Rapid reset: batches of HEADERS (the request complete), each batch reset once it left, the
    // pattern of CVE-2023-44487, on a fresh connection. The hub ends the connection (GOAWAY)
    // instead of starting a call per stream.
    let attacker = h2_module(&s.hub, HOST, 443).await;
    let before = s.provider.requests().len();
    let started = Instant::now();
    let mut opened = 0;
    let mut cut_off = false;
    'attack: for _ in 0..60 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let Ok(mut ready) = attacker.clone().ready().await else {
                cut_off = true;
                break 'attack;
            };
            let Ok((_resp, body)) = ready.send_request(
                http::Request::get(format!("https://{HOST}/rr"))
                    .body(())
                    .unwrap(),
                true,
            ) else {
                cut_off = true;
                break 'attack;
            };
            batch.push(body);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        for mut body in batch {
            body.send_reset(h2::Reason::CANCEL);
            opened += 1;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reached = s.provider.requests().len() - before;
    println!(
        "rapid reset: {opened} streams opened and reset, {reached} calls reached the provider"
    );
    assert!(cut_off, "the hub ended the attacking connection");
    assert!(reached <= cap, "{reached} calls started for reset streams");

    // Meanwhile another module is served.
    s.provider.set_mode(H2Mode::Echo);
    let mut other = h2_module(&s.hub, HOST, 443).await;
    let a = unary(&mut other, "/pkg.Svc/Fine", b"ok", &[]).await;
    assert_eq!(a.grpc_status, Some(0));

    // Many streams at once: the module is held to the advertised concurrency, all complete.
    s.provider.set_mode(H2Mode::Ok);
    let calls = (0..300).map(|i| {
        let module = other.clone();
        async move {
            let mut ready = module.ready().await.unwrap();
            let (resp, _) = ready
                .send_request(
                    http::Request::get(format!("https://{HOST}/many/{i}"))
                        .body(())
                        .unwrap(),
                    true,
                )
                .unwrap();
            resp.await.unwrap().status().as_u16()
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200));

    // A slow reader: a 64 MiB answer the module does not read. Flow control holds the provider;
    // the hub buffers a bounded amount.
    s.provider.set_mode(H2Mode::Big(64 * 1024 * 1024));
    let mut ready = other.clone().ready().await.unwrap();
    let (resp, _) = ready
        .send_request(
            http::Request::get(format!("https://{HOST}/big"))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let resp = resp.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = s.provider.big_bytes_sent();
    assert!(
        sent < 4 * 1024 * 1024,
        "the provider got {sent} bytes out to an unread stream"
    );
    // Reading it now gets everything.
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(c) = tokio::time::timeout(Duration::from_secs(30), body.data())
        .await
        .expect("the stream flows once read")
    {
        let c = c.unwrap();
        got += c.len();
        let _ = body.flow_control().release_capacity(c.len());
    }
    assert_eq!(got, 64 * 1024 * 1024);
    let grown = rss().saturating_sub(rss_before);
    assert!(
        grown < 256 * 1024 * 1024,
        "resident memory grew by {grown} bytes"
    );
}

/// One raw HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Writes `frames` after the connection preface until the hub stops reading or ends the
/// connection, within `within`; returns whether the hub ended it (a write failed or it closed).
async fn flood(hub: &TestHub, frames: impl Iterator<Item = Vec<u8>>, within: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = hub_tests::client::raw_tunnel_with(
        hub,
        HOST,
        443,
        hub_tests::client::hub_h2_tls_config(hub),
    )
    .await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    // Read (and drop) what the hub says so its writes never block; EOF means it closed.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let write = async {
        wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        wr.write_all(&frame(4, 0, 0, &[])).await?;
        for f in frames {
            wr.write_all(&f).await?;
        }
        wr.flush().await
    };
    let wrote = tokio::time::timeout(within, write).await;
    let closed = tokio::time::timeout(within, reader).await.is_ok();
    matches!(wrote, Ok(Err(_))) || closed
}

#[tokio::test]
async fn continuation_and_settings_floods_are_cut_off() {
    let Some(s) = setup(json!({})).await else {
        return;
    };
    s.provider.set_mode(H2Mode::Echo);
    let rss_before = rss();
    // CONTINUATION flood: a header block that never ends (16 MiB of it offered).
    let block = vec![0x82u8; 16 * 1024]; // `:method: GET`, again and again
    let frames = std::iter::once(frame(1, 0, 1, &[0x82, 0x87, 0x84]))
        .chain((0..1024).map(|_| frame(9, 0, 1, &block)));
    assert!(
        flood(&s.hub, frames, Duration::from_secs(10)).await,
        "the hub ends a connection whose header block never ends"
    );
    // SETTINGS flood: 200 000 SETTINGS frames, each demanding an acknowledgement.
    let frames = (0..200_000).map(|_| frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    let ended = flood(&s.hub, frames, Duration::from_secs(10)).await;
    println!("settings flood: connection ended by the hub: {ended}");
    // Either way the hub is fine and serves the next module.
    let mut module = h2_module(&s.hub, HOST, 443).await;
    let a = unary(&mut module, "/pkg.Svc/After", b"ok", &[]).await;
    assert_eq!(a.grpc_status, Some(0));
    let grown = rss().saturating_sub(rss_before);
    assert!(
        grown < 128 * 1024 * 1024,
        "resident memory grew by {grown} bytes"
    );
}

#[tokio::test]
async fn a_providers_pinned_http_version_is_what_the_hub_offers() {
    let Some(s) = setup(json!({})).await else {
        return;
    };
    // The same h2-only provider, pinned to HTTP/1.1: the hub offers only http/1.1 in ALPN, the
    // provider refuses the handshake, the call fails without reaching it.
    s.hub
        .add_provider(json!({
            "name": "pinned-h1",
            "hosts": ["pinned.h2.test"],
            "baseUrl": s.provider.base_url(),
            "auth": {"type": "bearer", "token": TOKEN},
            "config": {"allowPrivateNetwork": true, "httpVersion": "http1", "maxAttempts": 1},
        }))
        .await;
    let client = hub_tests::client::client(&s.hub);
    let r = client.get("https://pinned.h2.test/x").send().await.unwrap();
    assert_eq!(r.status(), 502, "{}", r.text().await.unwrap());
    assert!(s.provider.requests().is_empty());
    // Unpinned (auto): h2 by ALPN, from an HTTP/1.1 module.
    let r = client
        .get(format!("https://{HOST}/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_11, 200)
    );
    assert_eq!(s.provider.requests().len(), 1);
    assert_eq!(s.provider.requests()[0].path, "/y");
}

#[tokio::test]
async fn grpc_metadata_credentials_of_a_header_auth_type_are_injected() {
    let Some(s) = setup(json!({})).await else {
        return;
    };
    s.hub
        .add_provider(json!({
            "name": "h2-header",
            "hosts": ["keyed.h2.test"],
            "baseUrl": s.provider.base_url(),
            "auth": {"type": "header", "name": "x-goog-api-key", "value": "keyed_secret_value"},
            "config": {"allowPrivateNetwork": true},
        }))
        .await;
    s.provider.set_mode(H2Mode::Echo);
    let module = h2_module(&s.hub, "keyed.h2.test", 443).await;
    let mut ready = module.ready().await.unwrap();
    let mut req = grpc_request("/pkg.Svc/Keyed", &[("x-goog-api-key", "module-dummy")]);
    *req.uri_mut() = "https://keyed.h2.test/pkg.Svc/Keyed".parse().unwrap();
    let (resp, mut body) = ready.send_request(req, false).unwrap();
    body.send_data(grpc_frame(b"k"), true).unwrap();
    let a = read_answer(resp).await;
    assert_eq!(a.grpc_status, Some(0), "{a:?}");
    let seen = s.provider.requests();
    assert_eq!(seen[0].header("x-goog-api-key"), Some("keyed_secret_value"));
    assert_eq!(seen[0].headers.get_all("x-goog-api-key").iter().count(), 1);
    assert!(!hub_tests::logs::contents().contains("keyed_secret_value"));
}
