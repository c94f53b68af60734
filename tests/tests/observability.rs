//! Observability end to end: the Prometheus exposition after real traffic, and one call's
//! trace followed from the caller through the hub's log lines to the provider.

use std::collections::HashMap;
use std::time::Duration;

use hub_tests::client::{client, problem, provider_json};
use hub_tests::{Backend, FakeProvider, Mode, TestHub, TestPki};
use serde_json::json;

/// Parses the text exposition into `series → value`; panics on a malformed line.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        if let Some(open) = series.find('{') {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
            assert!(
                series[..open]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            );
        }
        out.insert(series.to_owned(), value);
    }
    out
}

async fn scrape(hub: &TestHub) -> HashMap<String, f64> {
    let resp = reqwest::get(format!("http://{}/metrics", hub.metrics_addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    parse_exposition(&resp.text().await.unwrap())
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_traffic_and_the_exposition_parses() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = FakeProvider::start(Some(pki.server_config.clone())).await;
    let mut p = provider_json(
        "obs",
        "api.obs.test",
        &f,
        json!({"type": "bearer", "token": "obs_SECRET"}),
    );
    p["config"]["backoffBaseMs"] = json!(10);
    p["config"]["maxAttempts"] = json!(2);
    p["config"]["rateLimitPerSec"] = json!(1000);
    p["config"]["breaker"] = json!({"failureThreshold": 2, "openMs": 60000});
    hub.add_provider(p).await;
    let mut limited = provider_json("obs-rl", "api.obsrl.test", &f, json!({"type": "none"}));
    limited["config"]["rateLimitPerSec"] = json!(1);
    limited["config"]["burst"] = json!(1);
    hub.add_provider(limited).await;
    let c = client(&hub);
    let url = format!("https://api.obs.test:{}/x", f.port);

    assert_eq!(c.get(&url).send().await.unwrap().status(), 200); // success
    f.script([Mode::Status(500)]);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200); // one retry
    let rl = format!("https://api.obsrl.test:{}/x", f.port);
    c.get(&rl).send().await.unwrap();
    assert_eq!(c.get(&rl).send().await.unwrap().status(), 429); // rate limited
    f.set_mode(Mode::Status(500));
    let (s, _) = problem(c.get(&url).send().await.unwrap()).await; // 2 failures: breaker opens, DLQ hand-off
    assert_eq!(s, 502);
    let (s, _) = problem(c.get(&url).send().await.unwrap()).await; // rejected by the open circuit
    assert_eq!(s, 503);
    tokio::time::sleep(Duration::from_millis(300)).await; // gauges refresh every 100 ms

    let m = scrape(&hub).await;
    assert_eq!(
        get(
            &m,
            r#"integration_requests_total{code="200",method="GET",provider="obs"}"#
        ),
        2.0
    );
    assert_eq!(
        get(
            &m,
            r#"integration_requests_total{code="502",method="GET",provider="obs"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"integration_requests_total{code="503",method="GET",provider="obs"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"integration_requests_total{code="429",method="GET",provider="obs-rl"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"integration_upstream_attempts_total{outcome="success",provider="obs"}"#
        ),
        2.0
    );
    assert_eq!(
        get(
            &m,
            r#"integration_upstream_attempts_total{outcome="server_error",provider="obs"}"#
        ),
        3.0
    );
    assert_eq!(get(&m, r#"integration_retries_total{provider="obs"}"#), 2.0);
    assert_eq!(
        get(&m, r#"integration_rate_limited_total{provider="obs-rl"}"#),
        1.0
    );
    assert_eq!(
        get(&m, r#"integration_circuit_rejected_total{provider="obs"}"#),
        1.0
    );
    assert_eq!(
        get(&m, r#"integration_dlq_handoffs_total{provider="obs"}"#),
        1.0
    );
    assert_eq!(get(&m, r#"integration_circuit_state{provider="obs"}"#), 2.0);
    assert_eq!(get(&m, r#"integration_circuit_open{provider="obs"}"#), 1.0);
    assert_eq!(
        get(&m, r#"integration_circuit_state{provider="obs-rl"}"#),
        0.0
    );
    assert!(
        get(
            &m,
            r#"integration_request_duration_seconds_count{provider="obs"}"#
        ) >= 4.0
    );
    assert!(get(&m, "integration_certificates_minted_total") >= 2.0);
    // Labels stay bounded: no paths, hosts or ids anywhere in the series names.
    for series in m.keys() {
        assert!(
            !series.contains("/x") && !series.contains(".test") && !series.contains("obs_SECRET"),
            "{series}"
        );
    }
    // Probes on the ops listener.
    let ready = reqwest::get(format!("http://{}/readyz", hub.metrics_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["registryLoaded"], true);
}

#[tokio::test]
async fn one_calls_trace_runs_from_the_caller_through_the_hub_logs_to_the_provider() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let f = FakeProvider::start(Some(pki.server_config.clone())).await;
    let mut p = provider_json("traced", "api.traced.test", &f, json!({"type": "none"}));
    p["config"]["backoffBaseMs"] = json!(10);
    hub.add_provider(p).await;
    f.script([Mode::Status(503)]); // a retry, so the trace spans several hub log lines
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let resp = client(&hub)
        .get(format!("https://api.traced.test:{}/t", f.port))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();

    // The provider is in the same trace, with the hub's span as parent (continued, not restarted).
    let reqs = f.requests();
    assert_eq!(reqs.len(), 2);
    let tps: Vec<_> = reqs
        .iter()
        .map(|r| r.header("traceparent").unwrap().to_owned())
        .collect();
    let parts: Vec<&str> = tps[0].split('-').collect();
    assert_eq!(parts[1], trace_id);
    let hub_span = parts[2];
    assert_ne!(hub_span, caller_span);
    assert_eq!(tps[0], tps[1], "every attempt carries the same context");

    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = hub_tests::logs::contents();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.to_string().contains(&rid))
        .collect();
    assert!(lines.len() >= 2, "the call's lines: {lines:?}");
    for line in &lines {
        let text = line.to_string();
        assert!(text.contains(trace_id), "line without the trace id: {text}");
        assert!(
            text.contains(hub_span),
            "line without the hub's span id: {text}"
        );
    }
}

#[tokio::test]
async fn call_spans_are_exported_over_otlp_in_the_callers_trace() {
    let pki = TestPki::new();
    // A plain-HTTP fake stands in for the collector: it records what it receives.
    let collector = FakeProvider::start(None).await;
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let state = std::sync::Arc::new(hub_core::state::LocalState::new());
    let Some(hub) = TestHub::start_full(Backend::Sqlite, &pki, state, Some(endpoint)).await else {
        return;
    };
    let f = FakeProvider::start(Some(pki.server_config.clone())).await;
    let otel = hub
        .add_provider(provider_json(
            "otel",
            "api.otel.test",
            &f,
            json!({"type": "query", "name": "key", "value": "otel_SECRET"}),
        ))
        .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client(&hub)
        .get(format!("https://api.otel.test:{}/v1/x?key=dummy", f.port))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while collector.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no span exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let post = &collector.requests()[0];
    assert_eq!(
        (post.method.as_str(), post.target.as_str()),
        ("POST", "/v1/traces")
    );
    let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
    let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], trace_id);
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    let hub_span = f.requests()[0]
        .header("traceparent")
        .unwrap()
        .split('-')
        .nth(2)
        .unwrap()
        .to_owned();
    assert_eq!(
        span["spanId"],
        hub_span.as_str(),
        "the exported span is the provider's parent"
    );
    let text = body.to_string();
    assert!(
        text.contains("otel") && text.contains("key=[redacted]"),
        "{text}"
    );
    assert!(
        !text.contains("otel_SECRET"),
        "a credential in an exported span"
    );

    // A caller's call: the span names the caller and its tenant (never its token).
    let (_, token) = hub.caller_granted_everything("otel-caller", otel.id).await;
    let module = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(hub.ca_pem.as_bytes()).unwrap())
        .proxy(
            reqwest::Proxy::all(format!("http://otel-caller:{token}@{}", hub.proxy_addr)).unwrap(),
        )
        .build()
        .unwrap();
    let resp = module
        .get(format!("https://api.otel.test:{}/v1/y", f.port))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let exported = loop {
        let text: String = collector
            .requests()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        if text.contains("otel-caller") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exported.contains("\"hub.caller\""), "{exported}");
    assert!(exported.contains("otel-caller"), "{exported}");
    assert!(exported.contains("\"hub.tenant\""), "{exported}");
    assert!(!exported.contains(&token));
}
