//! The attempt loop alone, on tokio's paused clock, against in-memory providers: a [`Dial`]
//! that hands out one end of a duplex stream per connection while a scripted provider plays the
//! other. Waits, timeouts and budgets are asserted to the millisecond without sleeping.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hub_core::provider::{ProviderConfig, ProviderStatus, parse_base_url};
use hub_core::state::LocalState;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::*;

/// What the in-memory provider does with one connection.
#[derive(Debug, Clone)]
enum Script {
    /// Reads the request, answers these bytes, keeps the connection.
    Answer(&'static str),
    /// Reads the request, then is silent.
    Silent,
    /// Refuses the connection (dial error).
    Refuse,
}

struct ScriptedDial {
    script: Mutex<VecDeque<Script>>,
    dials: Mutex<usize>,
}

impl ScriptedDial {
    fn new(script: impl IntoIterator<Item = Script>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into_iter().collect()),
            dials: Mutex::new(0),
        })
    }
}

async fn read_request(s: &mut DuplexStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[async_trait]
impl Dial for ScriptedDial {
    async fn dial(
        &self,
        _provider: &Provider,
        _addr: SocketAddr,
        _version: hub_core::provider::HttpVersion,
    ) -> pingora::Result<UpstreamSession> {
        *self.dials.lock().unwrap() += 1;
        let next = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted dial");
        if let Script::Refuse = next {
            return pingora::Error::e_explain(pingora::ErrorType::ConnectRefused, "scripted");
        }
        let (hub, mut provider) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            read_request(&mut provider).await;
            match next {
                Script::Answer(bytes) => {
                    let _ = provider.write_all(bytes.as_bytes()).await;
                    // Keep the connection until the hub drops it.
                    let mut sink = [0u8; 1024];
                    while provider.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                }
                Script::Silent => {
                    let mut sink = [0u8; 1024];
                    while provider.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                }
                Script::Refuse => unreachable!(),
            }
        });
        Ok(UpstreamSession::H1(Http1Session::new(Box::new(hub))))
    }
}

fn provider(config: serde_json::Value) -> Arc<Provider> {
    let config: ProviderConfig = serde_json::from_value(config).unwrap();
    config.validate().unwrap();
    Arc::new(Provider {
        id: ulid::Ulid::new(),
        name: "mem".into(),
        tenant: None,
        status: ProviderStatus::Active,
        base: parse_base_url("http://mem.test", true).unwrap(),
        config,
        auth: Some(hub_core::provider::Auth::None),
        scrubber: None,
        version: 1,
    })
}

fn forwarder(dial: Arc<ScriptedDial>) -> Forwarder {
    // Pingora's own timers run on a real-time thread; from one second up, tokio's (paused) clock.
    pingora::time::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(Duration::ZERO));
    Forwarder::with_dial(
        dial,
        ForwarderOptions {
            state: Arc::new(LocalState::new()),
            jitter: Arc::new(|_max: u64| 0i64),
            hub_default_rate: 1000,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            exhausted: None,
            drain: crate::upgraded::Drain::default(),
            tokens: None,
        },
    )
}

/// Runs one call of `request` through `fwd`; returns the result, the report, the paused-clock
/// time it took and what the caller received.
async fn run(
    fwd: &Forwarder,
    p: &Arc<Provider>,
    request: &str,
) -> (Result<u16, Problem>, CallReport, Duration, Vec<u8>) {
    let (hub_end, mut caller) = tokio::io::duplex(64 * 1024);
    caller.write_all(request.as_bytes()).await.unwrap();
    let mut session = Session::new_h1(Box::new(hub_end));
    assert!(session.read_request().await.unwrap());
    let call = Call {
        revoker: None,
        provider: p,
        addr: "127.0.0.1:80".parse().unwrap(),
        path_and_query: "/v1/x",
        request_id: "req-1",
    };
    let mut report = CallReport::default();
    let started = Instant::now();
    let result = fwd.call(&mut session, &call, &mut report).await;
    let took = started.elapsed();
    if let Err(p) = &result {
        p.send(&mut session, Some("req-1")).await.unwrap();
    }
    drop(session);
    let mut got = Vec::new();
    let _ = caller.read_to_end(&mut got).await;
    (result, report, took, got)
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
const GET: &str = "GET /v1/x HTTP/1.1\r\nHost: mem.test\r\n\r\n";

#[tokio::test(start_paused = true)]
async fn retries_wait_the_backoff_exactly_and_the_final_answer_is_relayed() {
    let dial = ScriptedDial::new([
        Script::Answer(UNAVAILABLE),
        Script::Answer(UNAVAILABLE),
        Script::Answer(OK),
    ]);
    let fwd = forwarder(dial.clone());
    let p = provider(serde_json::json!({"maxAttempts": 3, "backoffBaseMs": 1000, "jitterMs": 0}));
    let (result, report, took, got) = run(&fwd, &p, GET).await;
    assert_eq!(result.unwrap(), 200);
    assert_eq!(report.attempts, 3);
    // 1 s, then 2 s of backoff; the attempts themselves take no (paused) time.
    assert_eq!(took, Duration::from_secs(3));
    assert!(String::from_utf8_lossy(&got).ends_with("ok"));
    // The 503 answers were read to the end, so their connections went back to the pool: one
    // new connection per attempt here because each scripted provider answers once.
    assert_eq!(*dial.dials.lock().unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_silent_provider_times_out_at_the_first_byte_timeout_then_504() {
    let dial = ScriptedDial::new([Script::Silent, Script::Silent]);
    let fwd = forwarder(dial);
    let p = provider(serde_json::json!({
        "maxAttempts": 2, "backoffBaseMs": 1000, "jitterMs": 0,
        "timeoutMs": 10000, "firstByteTimeoutMs": 4000
    }));
    let (result, report, took, got) = run(&fwd, &p, GET).await;
    let problem = result.unwrap_err();
    assert_eq!((problem.status, problem.code), (504, "upstream_timeout"));
    assert_eq!(report.attempts, 2);
    // 4 s waiting for a head, 1 s backoff, 4 s again.
    assert_eq!(took, Duration::from_secs(9));
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 504"));
}

#[tokio::test(start_paused = true)]
async fn the_total_budget_stops_retries_that_would_not_fit() {
    let dial = ScriptedDial::new([Script::Refuse, Script::Refuse, Script::Refuse]);
    let fwd = forwarder(dial.clone());
    let p = provider(serde_json::json!({
        "maxAttempts": 5, "backoffBaseMs": 2000, "jitterMs": 0,
        "timeoutMs": 3000, "totalTimeoutMs": 10000
    }));
    let (result, report, took, _) = run(&fwd, &p, GET).await;
    let problem = result.unwrap_err();
    assert_eq!((problem.status, problem.code), (502, "upstream_failed"));
    // Attempt 1 at 0 s, wait 2 s, attempt 2 at 2 s, wait 4 s, attempt 3 at 6 s: another 8 s
    // wait plus a 3 s attempt would pass the 10 s budget, so the call stops there.
    assert_eq!(report.attempts, 3);
    assert_eq!(took, Duration::from_secs(6));
    assert!(
        problem.detail.contains("budget_exhausted"),
        "{}",
        problem.detail
    );
}

#[tokio::test(start_paused = true)]
async fn a_post_without_idempotency_key_is_tried_once() {
    let dial = ScriptedDial::new([Script::Answer(UNAVAILABLE), Script::Answer(OK)]);
    let fwd = forwarder(dial.clone());
    let p = provider(serde_json::json!({"maxAttempts": 3, "jitterMs": 0}));
    let post = "POST /v1/x HTTP/1.1\r\nHost: mem.test\r\nContent-Length: 2\r\n\r\nhi";
    let (result, report, _, _) = run(&fwd, &p, post).await;
    let problem = result.unwrap_err();
    assert_eq!(problem.status, 502);
    assert_eq!(report.attempts, 1);
    assert!(
        problem.detail.contains("not_retryable"),
        "{}",
        problem.detail
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_silent_past_the_idle_timeout_is_cut_and_reported() {
    const HEAD: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\nevent 1\r\n";
    let dial = ScriptedDial::new([Script::Answer(HEAD)]);
    let fwd = forwarder(dial);
    let p = provider(serde_json::json!({"idleTimeoutMs": 5000, "totalTimeoutMs": 600000}));
    let (result, report, took, got) = run(&fwd, &p, GET).await;
    assert_eq!(result.unwrap(), 200);
    assert_eq!(report.cut, Some(Cut::IdleTimeout));
    assert_eq!(took, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("event 1"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut stream gets no closing chunk: {text:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_sent_once_and_its_dlq_entry_says_why() {
    let dial = ScriptedDial::new([Script::Answer(UNAVAILABLE), Script::Answer(OK)]);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    pingora::time::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(Duration::ZERO));
    let fwd = Forwarder::with_dial(
        dial.clone(),
        ForwarderOptions {
            state: Arc::new(LocalState::new()),
            jitter: Arc::new(|_max: u64| 0i64),
            hub_default_rate: 1000,
            replay_limit: 1024,
            exhausted: Some(Arc::new(tx)),
            drain: crate::upgraded::Drain::default(),
            tokens: None,
        },
    );
    let p = provider(serde_json::json!({"maxAttempts": 3, "jitterMs": 0}));
    // A PUT (idempotent: retryable were its body replayable) larger than the replay limit.
    let body = "x".repeat(4096);
    let put = format!(
        "PUT /v1/x HTTP/1.1\r\nHost: mem.test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (result, report, _, _) = run(&fwd, &p, &put).await;
    assert_eq!(result.unwrap_err().status, 502);
    assert_eq!(report.attempts, 1, "a streamed body cannot be sent again");
    let entry = rx.recv().await.unwrap();
    assert_eq!(entry.stop, "body_streamed");
    assert!(entry.body_truncated && entry.body.is_none());
    assert_eq!(*dial.dials.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_caller_whose_streamed_body_stalls_gets_408_and_the_provider_is_not_blamed() {
    let dial = ScriptedDial::new([Script::Silent]);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    pingora::time::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(Duration::ZERO));
    let state = Arc::new(LocalState::new());
    let fwd = Forwarder::with_dial(
        dial,
        ForwarderOptions {
            state: state.clone(),
            jitter: Arc::new(|_max: u64| 0i64),
            hub_default_rate: 1000,
            replay_limit: 1024,
            exhausted: Some(Arc::new(tx)),
            drain: crate::upgraded::Drain::default(),
            tokens: None,
        },
    );
    let p = provider(serde_json::json!({"idleTimeoutMs": 5000, "maxAttempts": 3}));
    // 4096 bytes announced, 2048 sent, then silence: past the replay limit, so it streams.
    let put = format!(
        "PUT /v1/x HTTP/1.1\r\nHost: mem.test\r\nContent-Length: 4096\r\n\r\n{}",
        "y".repeat(2048)
    );
    let (result, report, took, got) = run(&fwd, &p, &put).await;
    let problem = result.unwrap_err();
    assert_eq!((problem.status, problem.code), (408, "request_timeout"));
    assert_eq!(report.attempts, 1);
    assert_eq!(took, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"));
    assert!(
        rx.try_recv().is_err(),
        "a caller's failure is not a DLQ entry"
    );
    let policy = hub_core::state::Policy::from_config(&p.config, 1000);
    let snap = hub_core::state::SharedState::snapshot(state.as_ref(), p.id, &policy).await;
    assert_eq!(
        snap.breaker.consecutive_failures, 0,
        "the caller's stall is not a provider failure"
    );
}
