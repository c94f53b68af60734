//! Escape: sending one call to its provider under the provider's policy.
//!
//! Pingora 0.9 retries only connect errors and replays at most 64 KiB of body, while the hub
//! must retry 5xx/429 responses with backoff inside a total budget and replay bodies up to a
//! configurable size. So the hub runs the attempt loop itself, on Pingora's upstream connector
//! (pooled connections, TLS) and client sessions: every attempt is admitted by the shared state
//! (rate limit + breaker), bounded by the per-attempt timeout and the call's deadline, and its
//! outcome recorded. Only the final attempt's response is streamed to the caller.

mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hub_core::dlq::{DeadLetterSink, FailedCall, REPLAY_HEADER};
use hub_core::provider::Auth;
use hub_core::state::retry::may_retry;
use hub_core::state::{
    Admission, AttemptEnd, Jitter, Outcome, Policy, RetryPlan, SharedState, Stop,
};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use tokio::time::Instant;

use crate::hygiene::{self, REQUEST_ID};
use crate::inject;
use crate::metrics::METRICS;
use crate::problem::Problem;
use crate::registry::Provider;

/// Default largest request body kept for replay (bigger bodies are sent once, streamed).
pub const DEFAULT_REPLAY_LIMIT: usize = 1024 * 1024;
/// Request header a caller may use to ask for a smaller total budget, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-hub-timeout-ms";
/// Length of the upstream response excerpt kept for a failed call.
const EXCERPT_LEN: usize = 512;

/// The request body as read for replay.
enum Body {
    /// Whole (possibly empty): replayable.
    Full(Bytes),
    /// Larger than the replay limit: this prefix, the rest still on the downstream connection.
    Streaming(Bytes),
}

/// Sends calls under each provider's policy.
pub struct Forwarder {
    connector: Connector,
    state: Arc<dyn SharedState>,
    jitter: Arc<dyn Jitter>,
    hub_default_rate: u32,
    replay_limit: usize,
    exhausted: Option<Arc<dyn DeadLetterSink>>,
}

/// Settings for a [`Forwarder`].
pub struct ForwarderOptions {
    /// Shared breaker + rate-limit state.
    pub state: Arc<dyn SharedState>,
    /// Backoff jitter source (injectable for tests).
    pub jitter: Arc<dyn Jitter>,
    /// `INTEGRATION_RATE_LIMIT_PER_SEC`.
    pub hub_default_rate: u32,
    /// Largest replayable body.
    pub replay_limit: usize,
    /// Where exhausted calls go (the DLQ writer); `None` = logged only.
    pub exhausted: Option<Arc<dyn DeadLetterSink>>,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn rate_limited(provider: &str, retry_after: Duration, quota: bool) -> Problem {
    let mut p = if quota {
        Problem::new(
            429,
            "quota_exhausted",
            "Daily quota exhausted",
            format!("the daily quota of provider {provider} is used up"),
        )
    } else {
        Problem::new(
            429,
            "rate_limited",
            "Rate limited",
            format!("the hub's rate limit for provider {provider} is reached"),
        )
    };
    p.retry_after = Some(ceil_secs(retry_after).max(1));
    p
}

fn circuit_open(provider: &str, retry_after: Duration) -> Problem {
    let mut p = Problem::new(
        503,
        "circuit_open",
        "Circuit open",
        format!("provider {provider} is failing; the hub is not calling it for now"),
    );
    p.retry_after = Some(ceil_secs(retry_after).max(1));
    p.circuit_open = true;
    p
}

/// Classifies a Pingora error from one attempt; `bool` = whether bytes may have reached the provider.
fn classify(e: &Error, header_written: bool) -> AttemptEnd {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            AttemptEnd::Timeout
        }
        _ if !header_written => AttemptEnd::ConnectFailed,
        _ => AttemptEnd::ConnectionLost,
    }
}

fn end_kind(end: AttemptEnd) -> &'static str {
    match end {
        AttemptEnd::Status(_) => "status",
        AttemptEnd::ConnectFailed => "connect_failed",
        AttemptEnd::Timeout => "timeout",
        AttemptEnd::ConnectionLost => "connection_lost",
    }
}

/// How a call ended when no attempt succeeded: what the DLQ entry and the problem report.
struct CallFailure {
    idempotency_key: Option<String>,
    attempts: u32,
    end: AttemptEnd,
    stop: &'static str,
    excerpt: String,
}

/// What one attempt produced.
struct Attempt {
    end: AttemptEnd,
    bytes_sent: bool,
    upstream: Option<UpstreamSession>,
}

impl Forwarder {
    /// A forwarder over Pingora's connector configured by `conf`.
    pub fn new(conf: &pingora::server::configuration::ServerConf, opts: ForwarderOptions) -> Self {
        use pingora::connectors::ConnectorOptions;
        Self {
            connector: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
            state: opts.state,
            jitter: opts.jitter,
            hub_default_rate: opts.hub_default_rate,
            replay_limit: opts.replay_limit,
            exhausted: opts.exhausted,
        }
    }

    /// The shared state (for health and metrics).
    pub fn state(&self) -> &Arc<dyn SharedState> {
        &self.state
    }

    /// Runs the call and writes the response to `session`. `Err` is a problem to answer instead.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        session: &mut Session,
        provider: &Arc<Provider>,
        addr: SocketAddr,
        path_and_query: &str,
        request_id: &str,
        idempotency_key: &mut Option<String>,
        attempts_out: &mut u32,
    ) -> Result<Option<u16>, Problem> {
        let policy = Policy::from_config(&provider.config, self.hub_default_rate);
        let mut plan = RetryPlan::new(&provider.config, Instant::now());
        if let Some(ms) = session
            .req_header()
            .headers
            .get(TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            plan = plan.limit_total(Duration::from_millis(ms.max(1)));
        }
        // The first admission comes before the body is read: a refused call costs nothing.
        let mut permit = Some(self.admit_first(provider, &policy).await?);
        let mut header = upstream_header(
            session.req_header(),
            provider,
            path_and_query,
            request_id,
            idempotency_key,
        )
        .map_err(|_| Problem::bad_request("the request cannot be forwarded"))?;
        let body = self.read_body(session).await?;
        if let Body::Full(b) = &body {
            header.remove_header("transfer-encoding");
            if !b.is_empty() || header.headers.contains_key("content-length") {
                let _ = header.insert_header("content-length", b.len().to_string());
            }
        }
        let method = header.method.as_str().to_owned();
        let peer = Upstream {
            provider,
            addr,
            key: pool_key(provider, addr),
        };
        let mut attempts = 0u32;
        let mut last: Option<(AttemptEnd, String)> = None;
        // Why the attempts ended, and the circuit's Retry-After when it closed the door mid-call.
        let (stop, circuit): (&'static str, Option<Duration>) = loop {
            let permit_now = match permit.take() {
                Some(p) => p,
                None => match self
                    .state
                    .admit(provider.id, &policy)
                    .await
                    .inspect_rejection(provider)
                {
                    Admission::Admitted(p) => p,
                    Admission::RateLimited { retry_after }
                    | Admission::QuotaExhausted { retry_after } => {
                        if retry_after + plan.attempt_timeout(Instant::now())
                            <= plan.remaining(Instant::now())
                        {
                            tokio::time::sleep(retry_after).await;
                            continue;
                        }
                        break (Stop::BudgetExhausted.kind(), None);
                    }
                    Admission::CircuitOpen { retry_after } => {
                        break ("circuit_open", Some(retry_after));
                    }
                },
            };
            attempts += 1;
            *attempts_out = attempts;
            if attempts > 1 {
                METRICS.retries.with_label_values(&[&provider.name]).inc();
            }
            let attempt_started = Instant::now();
            let timeout = plan.attempt_timeout(Instant::now());
            // Pingora's timer (10 ms ticks, shared, armed only once the attempt waits): tokio's
            // re-armed a reactor wake-up (an eventfd write) per request.
            let attempt =
                match pingora::time::timeout(timeout, self.attempt(session, &peer, &header, &body))
                    .await
                {
                    Ok(a) => a,
                    Err(_) => Attempt {
                        end: AttemptEnd::Timeout,
                        bytes_sent: true,
                        upstream: None,
                    },
                };
            let outcome = attempt.end.outcome();
            self.state.record(permit_now, outcome).await;
            METRICS
                .upstream_duration
                .with_label_values(&[&provider.name])
                .observe(attempt_started.elapsed().as_secs_f64());
            METRICS
                .attempts
                .with_label_values(&[&provider.name, outcome_label(attempt.end)])
                .inc();
            let replayable = matches!(body, Body::Full(_));
            let retry = replayable
                && may_retry(
                    attempt.end,
                    &method,
                    idempotency_key.is_some(),
                    attempt.bytes_sent,
                );
            if !retry
                && outcome != Outcome::Failure
                && let Some(up) = attempt.upstream
            {
                // A final answer from a working provider (incl. a 4xx): the caller gets it as is.
                return self.relay(session, up, &peer, request_id).await.map(Some);
            }
            let retry_after = attempt.upstream.as_ref().and_then(retry_after_of);
            let excerpt = match attempt.upstream {
                Some(mut up) => excerpt_of(&mut up).await,
                None => String::new(),
            };
            last = Some((attempt.end, excerpt));
            if !retry {
                break ("not_retryable", None);
            }
            match plan.next_wait(attempts, Instant::now(), retry_after, self.jitter.as_ref()) {
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(stop) => break (stop.kind(), None),
            }
        };
        let (end, excerpt) = last.unwrap_or((AttemptEnd::Timeout, String::new()));
        let failure = CallFailure {
            idempotency_key: idempotency_key.clone(),
            attempts,
            end,
            stop,
            excerpt,
        };
        let id = self
            .hand_off(
                session,
                provider,
                path_and_query,
                request_id,
                &body,
                &failure,
            )
            .await;
        let mut problem = match circuit {
            Some(retry_after) => circuit_open(&provider.name, retry_after),
            None => exhausted_problem(&provider.name, end, attempts, stop),
        };
        problem.dlq_id = Some(id);
        Err(problem)
    }

    async fn admit_first(
        &self,
        provider: &Provider,
        policy: &Policy,
    ) -> Result<hub_core::state::Permit, Problem> {
        match self
            .state
            .admit(provider.id, policy)
            .await
            .inspect_rejection(provider)
        {
            Admission::Admitted(p) => Ok(p),
            Admission::RateLimited { retry_after } => {
                Err(rate_limited(&provider.name, retry_after, false))
            }
            Admission::QuotaExhausted { retry_after } => {
                Err(rate_limited(&provider.name, retry_after, true))
            }
            Admission::CircuitOpen { retry_after } => {
                Err(circuit_open(&provider.name, retry_after))
            }
        }
    }

    async fn read_body(&self, session: &mut Session) -> Result<Body, Problem> {
        let mut buf = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    if buf.len() > self.replay_limit {
                        return Ok(Body::Streaming(buf.freeze()));
                    }
                }
                Ok(None) => return Ok(Body::Full(buf.freeze())),
                Err(_) => return Err(Problem::bad_request("could not read the request body")),
            }
        }
    }

    /// One attempt: on a pooled connection when there is one. A pooled connection that turns
    /// out closed before any response byte (the provider ended it while idle, a race the
    /// pool's check cannot close) is not the provider failing: the request goes again, once, on
    /// a new connection, without counting as an attempt (Pingora's "reused only" retry).
    async fn attempt(
        &self,
        session: &mut Session,
        peer: &Upstream<'_>,
        header: &RequestHeader,
        body: &Body,
    ) -> Attempt {
        if matches!(body, Body::Full(_))
            && let Some(stream) = pool::take(peer.key)
        {
            let up = UpstreamSession::H1(Http1Session::new(stream));
            match self.send(session, up, peer, header, body).await {
                Err(e) if stale(&e) => {
                    tracing::debug!(error = %e.error.etype().as_str(), "pooled upstream connection was closed; reconnecting");
                }
                done => return attempt_of(done),
            }
        }
        let up = match self
            .connector
            .get_http_session(&peer_for(peer.provider, peer.addr))
            .await
        {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e.etype().as_str(), "upstream connect failed");
                return Attempt {
                    end: classify(&e, false),
                    bytes_sent: false,
                    upstream: None,
                };
            }
        };
        attempt_of(self.send(session, up, peer, header, body).await)
    }

    /// Sends the request on `up` and reads the response head.
    async fn send(
        &self,
        session: &mut Session,
        mut up: UpstreamSession,
        peer: &Upstream<'_>,
        header: &RequestHeader,
        body: &Body,
    ) -> Result<UpstreamSession, SendError> {
        if let UpstreamSession::H1(h1) = &mut up {
            // Each read and write of the response body relay, too, is bounded.
            let io = io_timeout(peer.provider);
            h1.read_timeout = Some(io);
            h1.write_timeout = Some(io);
        }
        if let Err(e) = up.write_request_header(Box::new(header.clone())).await {
            return Err(SendError {
                error: e,
                header_written: false,
            });
        }
        let sent = async {
            match body {
                Body::Full(b) => {
                    if !b.is_empty() {
                        up.write_request_body(b.clone(), true).await?;
                    }
                }
                Body::Streaming(prefix) => {
                    up.write_request_body(prefix.clone(), false).await?;
                    while let Some(chunk) = session.read_request_body().await? {
                        up.write_request_body(chunk, false).await?;
                    }
                }
            }
            up.finish_request_body().await?;
            up.read_response_header().await
        };
        match sent.await {
            Ok(()) => Ok(up),
            Err(e) => Err(SendError {
                error: e,
                header_written: true,
            }),
        }
    }

    /// Streams the upstream response to the caller; returns its status.
    async fn relay(
        &self,
        session: &mut Session,
        mut up: UpstreamSession,
        peer: &Upstream<'_>,
        request_id: &str,
    ) -> Result<u16, Problem> {
        let mut resp: ResponseHeader = match up.response_header() {
            Some(h) => h.clone(),
            None => {
                return Err(Problem::new(
                    502,
                    "upstream_unreachable",
                    "Upstream unreachable",
                    "no response header",
                ));
            }
        };
        let status = resp.status.as_u16();
        for h in hygiene::HOP_BY_HOP {
            resp.remove_header(*h);
        }
        let _ = resp.insert_header(REQUEST_ID, request_id);
        let write = async {
            session.write_response_header(Box::new(resp), false).await?;
            while let Some(chunk) = up.read_response_body().await? {
                session.write_response_body(Some(chunk), false).await?;
            }
            session.write_response_body(None, true).await?;
            Ok::<_, Box<Error>>(())
        };
        match write.await {
            Ok(()) => {
                if up.response_done()
                    && let UpstreamSession::H1(mut h1) = up
                {
                    h1.respect_keepalive();
                    if let Some(stream) = h1.reuse().await {
                        pool::put(peer.key, stream);
                    }
                }
                Ok(status)
            }
            Err(e) => {
                // Headers are out: the caller sees a truncated response; nothing more to say.
                tracing::debug!(error = %e.etype().as_str(), "relay to caller interrupted");
                session.set_keepalive(None);
                Ok(status)
            }
        }
    }

    /// Records a failed call with the DLQ and waits until it is durable (bounded), so the
    /// caller's 502/504 is only sent for an entry that survives a crash.
    async fn hand_off(
        &self,
        session: &Session,
        provider: &Provider,
        path_and_query: &str,
        request_id: &str,
        body: &Body,
        failure: &CallFailure,
    ) -> ulid::Ulid {
        let CallFailure {
            ref idempotency_key,
            attempts,
            end,
            stop,
            ref excerpt,
        } = *failure;
        let req = session.req_header();
        // A DLQ replay that fails again is recorded on its own entry, not as a new one.
        let replayed = req
            .headers
            .get(REPLAY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<ulid::Ulid>().ok());
        let call = FailedCall {
            // (Not `unwrap_or_default`: the default ULID is the nil id, not a fresh one.)
            id: match replayed {
                Some(id) => id,
                None => ulid::Ulid::new(),
            },
            provider_id: provider.id,
            provider: provider.name.clone(),
            method: req.method.as_str().to_owned(),
            path: inject::loggable_path(provider.auth.as_ref(), path_and_query),
            headers: caller_headers(req, provider),
            body: match body {
                Body::Full(b) => Some(b.clone()),
                Body::Streaming(_) => None,
            },
            body_truncated: matches!(body, Body::Streaming(_)),
            idempotency_key: idempotency_key.clone(),
            request_id: request_id.to_owned(),
            attempts,
            last_status: match end {
                AttemptEnd::Status(s) => Some(s),
                _ => None,
            },
            last_error: end_kind(end),
            stop,
            excerpt: excerpt.to_owned(),
            failed_at: chrono::Utc::now(),
        };
        let id = call.id;
        METRICS
            .dlq_handoffs
            .with_label_values(&[&provider.name])
            .inc();
        tracing::warn!(target: "hub::exhausted", request_id, provider = %call.provider, attempts,
            last_error = call.last_error, last_status = ?call.last_status, stop, "call failed after retries");
        if let Some(sink) = &self.exhausted
            && let Err(e) = sink.hand_off(call).await
        {
            tracing::error!(request_id, error = %e, "failed call not durably recorded in the DLQ");
        }
        id
    }
}

fn exhausted_problem(provider: &str, end: AttemptEnd, attempts: u32, stop: &str) -> Problem {
    let what = match end {
        AttemptEnd::Status(s) => format!("last status {s}"),
        other => end_kind(other).replace('_', " "),
    };
    let detail = format!("provider {provider} failed after {attempts} attempt(s) ({what}; {stop})");
    if end == AttemptEnd::Timeout {
        Problem::new(504, "upstream_timeout", "Upstream timeout", detail)
    } else {
        Problem::new(502, "upstream_failed", "Upstream failed", detail)
    }
}

fn retry_after_of(up: &UpstreamSession) -> Option<Duration> {
    let v = up
        .response_header()?
        .headers
        .get("retry-after")?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

async fn excerpt_of(up: &mut UpstreamSession) -> String {
    let read = async {
        let mut out = Vec::new();
        while out.len() < EXCERPT_LEN {
            match up.read_response_body().await {
                Ok(Some(b)) => out.extend_from_slice(&b),
                _ => break,
            }
        }
        out.truncate(EXCERPT_LEN);
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(Duration::from_millis(200), read)
        .await
        .unwrap_or_default()
}

/// The caller's headers minus credentials (whatever the provider's scheme uses, plus the usual
/// ones) and hop-by-hop.
pub(crate) fn caller_headers(req: &RequestHeader, provider: &Provider) -> Vec<(String, String)> {
    let auth_header = match &provider.auth {
        Some(Auth::Header { name, .. }) => Some(name.to_ascii_lowercase()),
        _ => None,
    };
    req.headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !hygiene::HOP_BY_HOP.contains(&k)
                && !matches!(k, "authorization" | "cookie" | "x-api-key")
                && auth_header.as_deref() != Some(k)
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// Where an attempt goes: the provider at the pinned address and its pool key. The
/// Pingora peer is built only when a new connection is needed.
struct Upstream<'a> {
    provider: &'a Provider,
    addr: SocketAddr,
    key: u64,
}

/// The provider's per-operation timeout (connect, each read and write).
fn io_timeout(provider: &Provider) -> Duration {
    Duration::from_millis(provider.config.timeout_ms.into())
}

/// A failed send, and whether the request head had been written.
struct SendError {
    error: Box<Error>,
    header_written: bool,
}

/// Whether a pooled connection failed as a closed one does, before any response byte.
fn stale(e: &SendError) -> bool {
    matches!(
        e.error.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
    )
}

fn attempt_of(sent: Result<UpstreamSession, SendError>) -> Attempt {
    match sent {
        Ok(up) => Attempt {
            end: AttemptEnd::Status(up.response_header().map_or(502, |h| h.status.as_u16())),
            bytes_sent: true,
            upstream: Some(up),
        },
        Err(e) => Attempt {
            end: classify(&e.error, e.header_written),
            bytes_sent: e.header_written,
            upstream: None,
        },
    }
}

/// The pool key: the provider as of this version (base URL, TLS settings) and the address the
/// destination check pinned.
fn pool_key(provider: &Provider, addr: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (provider.id, provider.version, addr).hash(&mut h);
    h.finish()
}

fn peer_for(provider: &Provider, addr: SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, provider.base.tls, provider.base.host.clone());
    let timeout = io_timeout(provider);
    peer.options.connection_timeout = Some(timeout);
    peer.options.total_connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    peer.options.verify_cert = true;
    peer.options.verify_hostname = true;
    peer
}

/// The request as the provider gets it: origin-form under the base path, Host of the base URL,
/// hop-by-hop out, credentials in, request id and idempotency key set.
pub fn upstream_header(
    caller: &RequestHeader,
    p: &Provider,
    path_and_query: &str,
    request_id: &str,
    idempotency_key: &mut Option<String>,
) -> pingora::Result<RequestHeader> {
    let mut up = caller.clone();
    hygiene::strip_hop_by_hop(&mut up);
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, q)) => (path, Some(q)),
        None => (path_and_query, None),
    };
    let mut target = format!("{}{}", p.base.path_prefix, path);
    match (p.auth.as_ref(), query) {
        (Some(Auth::Query { name, value }), q) => {
            target.push('?');
            target.push_str(&inject::rewrite_query(q, name, value.expose()));
        }
        (_, Some(q)) => {
            target.push('?');
            target.push_str(q);
        }
        (_, None) => {}
    }
    up.set_raw_path(target.as_bytes())?;
    let default_port = if p.base.tls { 443 } else { 80 };
    let host = if p.base.port == default_port {
        p.base.host.clone()
    } else if p.base.host.contains(':') {
        format!("[{}]:{}", p.base.host, p.base.port)
    } else {
        format!("{}:{}", p.base.host, p.base.port)
    };
    up.insert_header("host", host)?;
    if let Some(auth) = p.auth.as_ref() {
        inject::inject_headers(&mut up, auth)?;
    }
    up.insert_header(REQUEST_ID, request_id)?;
    if let Some(h) = &p.config.idempotency_header {
        let key = match up.headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
            Some(k) => k.to_owned(),
            None => {
                let k = idempotency_key.clone().unwrap_or_else(hygiene::new_uuid);
                up.insert_header(h.to_ascii_lowercase(), k.as_str())?;
                k
            }
        };
        *idempotency_key = Some(key);
    }
    Ok(up)
}

fn outcome_label(end: AttemptEnd) -> &'static str {
    match end {
        AttemptEnd::Status(s) if s >= 500 => "server_error",
        AttemptEnd::Status(429) => "throttled",
        AttemptEnd::Status(s) if s >= 400 => "client_error",
        AttemptEnd::Status(_) => "success",
        other => end_kind(other),
    }
}

fn count_rejection(provider: &Provider, admission: &Admission) {
    match admission {
        Admission::Admitted(_) => {}
        Admission::RateLimited { .. } | Admission::QuotaExhausted { .. } => {
            METRICS
                .rate_limited
                .with_label_values(&[&provider.name])
                .inc();
        }
        Admission::CircuitOpen { .. } => {
            METRICS
                .circuit_rejected
                .with_label_values(&[&provider.name])
                .inc();
        }
    }
}

/// Counts a rejected admission on its way through.
trait InspectRejection {
    fn inspect_rejection(self, provider: &Provider) -> Self;
}

impl InspectRejection for Admission {
    fn inspect_rejection(self, provider: &Provider) -> Self {
        count_rejection(provider, &self);
        self
    }
}
