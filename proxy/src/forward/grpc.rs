//! gRPC calls (`content-type: application/grpc*` from an h2 caller): full duplex, trailers
//! relayed, retried only where gRPC says it is safe.
//!
//! A gRPC stream cannot be buffered first and sent after, as [`super::body`] does for HTTP: in a
//! bidirectional stream the module waits for answers before it sends more. So the request body
//! is pumped to the provider while the response is awaited and relayed, both directions in one
//! loop. What was read of the body is kept (up to the replay limit) so an attempt can be replayed.
//!
//! - Admission, credentials, the request id and the DLQ are those of every call.
//! - Always h2 to the provider (ALPN `h2` only), `te: trailers`, and `grpc-timeout` set to what
//!   is left of the call's budget: the smallest of the provider's `totalTimeoutMs`, the module's
//!   `grpc-timeout` and `X-Hub-Timeout-Ms`.
//! - Retried only when no response headers came (a "trailers-only" answer with `grpc-status`
//!   UNAVAILABLE, a 502/503/504 without `grpc-status`, or a connection that failed before any
//!   answer) and everything read of the body so far is kept. Everything else is the module's
//!   answer, relayed as is, trailers included.
//! - The hub's own refusals and a call that still fails are answered in gRPC form
//!   ([`crate::problem::Problem::to_grpc`]).

use std::future::poll_fn;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hub_core::provider::HttpVersion;
use hub_core::scrub::{ScrubStream, Scrubber};
use hub_core::state::{AttemptEnd, Outcome, Policy, RetryPlan};
use hub_core::wire::{self, grpc_status, problem};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v2::client::Http2Session;
use pingora::proxy::Session;
use tokio::time::Instant;

use super::body::{Body, caller_body_problem};
use super::scrub;
use super::upstream::{Cut, Upstream};
use super::verdict::classify;
use super::{Call, CallReport, Forwarder, count_attempt, upstream_header};
use crate::hygiene::{self, REQUEST_ID};
use crate::problem::Problem;

/// The request body as read so far: kept for replay while it fits the limit.
struct Replay {
    kept: Vec<Bytes>,
    len: usize,
    limit: usize,
    /// Some of it was read but not kept: an attempt can no longer be replayed.
    overflow: bool,
    /// The module ended its stream.
    done: bool,
}

impl Replay {
    fn new(limit: usize) -> Self {
        Self {
            kept: Vec::new(),
            len: 0,
            limit,
            overflow: false,
            done: false,
        }
    }

    fn keep(&mut self, chunk: &Bytes) {
        if self.overflow {
            return;
        }
        if self.len + chunk.len() > self.limit {
            self.overflow = true;
            self.kept.clear();
            return;
        }
        self.len += chunk.len();
        self.kept.push(chunk.clone());
    }

    /// Whether a new attempt can send what the provider must see again.
    fn replayable(&self) -> bool {
        !self.overflow
    }

    /// The whole body, for a DLQ entry: only when the module ended it and all of it is kept.
    fn whole(&self) -> Body {
        if self.done && !self.overflow {
            let mut b = BytesMut::with_capacity(self.len);
            for c in &self.kept {
                b.extend_from_slice(c);
            }
            Body::Full(b.freeze())
        } else {
            Body::Streaming(Bytes::new())
        }
    }
}

/// What one attempt came to before the response was the module's.
enum Exchange {
    /// The provider's response head; the request body may still be streaming.
    Head(Box<Http2Session>),
    /// No response head: the attempt failed this way.
    Failed { end: AttemptEnd },
    /// The module failed (its body broke or stalled): the call ends with this problem.
    Caller(Problem),
}

/// Parses `grpc-timeout` (`<1-8 digits><H|M|S|m|u|n>`).
pub(crate) fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-timeout` for what is left, in milliseconds (at least 1).
fn grpc_timeout_value(left: Duration) -> String {
    let ms = left.as_millis().clamp(1, 99_999_999);
    format!("{ms}m")
}

/// The gRPC status of a response head that ended the stream ("trailers-only"), if any.
fn trailers_only_status(h2: &Http2Session) -> Option<u32> {
    if !h2.response_finished() {
        return None;
    }
    h2.response_header()?
        .headers
        .get(wire::GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a response head is one gRPC retries: no response headers in gRPC's sense.
fn unavailable(h2: &Http2Session) -> Option<AttemptEnd> {
    let head = h2.response_header()?;
    let status = head.status.as_u16();
    if status == 200 {
        return (trailers_only_status(h2) == Some(grpc_status::UNAVAILABLE))
            .then_some(AttemptEnd::Status(503));
    }
    let no_grpc = !head.headers.contains_key(wire::GRPC_STATUS);
    (no_grpc && matches!(status, 502..=504)).then_some(AttemptEnd::Status(status))
}

/// The gRPC status and message as trailers (for an answer whose headers already left).
fn status_trailers(status: u32, message: &str) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert(wire::GRPC_STATUS, http::HeaderValue::from(status));
    if let Ok(v) = http::HeaderValue::from_str(message) {
        t.insert(wire::GRPC_MESSAGE, v);
    }
    t
}

impl Forwarder {
    /// Runs a gRPC call (see the module docs) and answers the module; `Err` is a problem to
    /// answer in gRPC form instead.
    pub(crate) async fn call_grpc(
        &self,
        session: &mut Session,
        call: &Call<'_>,
        report: &mut CallReport,
    ) -> Result<u16, Problem> {
        let provider = call.provider;
        let policy = Policy::from_config(&provider.config, self.hub_default_rate);
        let plan = super::plan_for(provider, session.req_header());
        let mut permit = Some(self.admit(provider, &policy).await?);
        let mut header = upstream_header(
            session.req_header(),
            provider,
            call.path_and_query,
            call.request_id,
            &mut report.idempotency_key,
        )
        .map_err(|_| Problem::bad_request("the request cannot be forwarded"))?;
        let token = self
            .authorize(provider, plan.deadline(), &mut header)
            .await?;
        // A streamed call: SigV4 signs UNSIGNED-PAYLOAD; a scheme signing the body refuses.
        super::sign::sign(provider, &mut header, None)?;
        let _ = header.insert_header("te", "trailers");
        header.remove_header("content-length");
        let scrubber = super::scrubber_of(provider, token.as_deref());
        if scrubber.is_some() {
            // Compressed messages cannot be scrubbed (as `Accept-Encoding` for HTTP).
            let _ = header.insert_header("grpc-accept-encoding", "identity");
        }
        let peer = Upstream::with_version(provider, call.addr, HttpVersion::H2);
        let mut body = Replay::new(self.replay_limit);
        let mut last = (AttemptEnd::Timeout, String::new());
        let (stop, circuit) = loop {
            let permit_now = match self
                .next_attempt(&mut permit, provider, &policy, &plan, report)
                .await
            {
                Ok(p) => p,
                Err(stopped) => break stopped,
            };
            let started = Instant::now();
            let left = plan.remaining(started);
            if left.is_zero() {
                self.state.record(permit_now, Outcome::Neutral).await;
                break (hub_core::state::Stop::BudgetExhausted.kind(), None);
            }
            let _ = header.insert_header(wire::GRPC_TIMEOUT, grpc_timeout_value(left));
            let exchange = self
                .grpc_exchange(session, &peer, &header, &mut body, &plan, started)
                .await;
            let end = match exchange {
                Exchange::Caller(problem) => {
                    self.state.record(permit_now, Outcome::Neutral).await;
                    return Err(problem);
                }
                Exchange::Head(h2) => match unavailable(&h2) {
                    None => {
                        self.state.record(permit_now, Outcome::Success).await;
                        count_attempt(provider, started, AttemptEnd::Status(200));
                        let (status, cut) = self
                            .relay_grpc(session, h2, &peer, &mut body, call, &plan, scrubber)
                            .await;
                        report.cut = cut;
                        return Ok(status);
                    }
                    Some(end) => {
                        let msg = h2
                            .response_header()
                            .and_then(|h| h.headers.get(wire::GRPC_MESSAGE))
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        let msg = scrubber.map_or_else(|| msg.to_owned(), |s| s.mask_str(msg));
                        last = (end, wire::excerpt(msg.as_bytes(), 512));
                        if !body.replayable() {
                            // Nothing to send again: the provider's own answer is the module's.
                            self.state.record(permit_now, Outcome::Failure).await;
                            count_attempt(provider, started, end);
                            let (status, cut) = self
                                .relay_grpc(session, h2, &peer, &mut body, call, &plan, scrubber)
                                .await;
                            report.cut = cut;
                            return Ok(status);
                        }
                        end
                    }
                },
                Exchange::Failed { end } => {
                    last = (end, String::new());
                    end
                }
            };
            self.state.record(permit_now, Outcome::Failure).await;
            count_attempt(provider, started, end);
            if !body.replayable() {
                break ("body_streamed", None);
            }
            match plan.next_wait(report.attempts, Instant::now(), None, self.jitter.as_ref()) {
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(stop) => break (stop.kind(), None),
            }
        };
        let whole = body.whole();
        Err(self
            .give_up(session, call, report, &whole, last, (stop, circuit))
            .await)
    }

    /// One attempt up to the provider's response head: the request head, what was kept of the
    /// body, then the rest of the body as the module sends it while the head is awaited.
    async fn grpc_exchange(
        &self,
        session: &mut Session,
        peer: &Upstream<'_>,
        header: &RequestHeader,
        body: &mut Replay,
        plan: &RetryPlan,
        started: Instant,
    ) -> Exchange {
        let idle = peer.provider.config.idle_timeout();
        let connect = async {
            match peer.dial(self.dial.as_ref()).await {
                Ok(UpstreamSession::H2(h2)) => Ok(h2),
                Ok(_) => {
                    tracing::info!(provider = %peer.provider.name,
                        "provider did not negotiate h2: a gRPC call cannot be sent");
                    Err(AttemptEnd::ConnectFailed)
                }
                Err(e) => Err(classify(&e, false)),
            }
        };
        let mut h2 = match tokio::time::timeout(plan.attempt_timeout(started), connect).await {
            Ok(Ok(h2)) => h2,
            Ok(Err(end)) => return Exchange::Failed { end },
            Err(_) => {
                return Exchange::Failed {
                    end: AttemptEnd::Timeout,
                };
            }
        };
        h2.write_timeout = Some(idle);
        let mut header = Box::new(header.clone());
        super::upstream::to_h2(&mut header, peer.provider);
        if h2.write_request_header(header, false).is_err() {
            return Exchange::Failed {
                end: AttemptEnd::ConnectionLost,
            };
        }
        for chunk in &body.kept {
            if h2.write_request_body(chunk.clone(), false).await.is_err() {
                return Exchange::Failed {
                    end: AttemptEnd::ConnectionLost,
                };
            }
        }
        // The head is due `firstByteTimeoutMs` after the module ended its body (a client stream
        // may take long; its silence is bounded by the idle timeout instead).
        let mut head_due = None;
        if body.done {
            if h2.finish_request_body().is_err() {
                return Exchange::Failed {
                    end: AttemptEnd::ConnectionLost,
                };
            }
            head_due = Some(Instant::now() + plan.attempt_timeout(started));
        }
        loop {
            let wait = head_due.unwrap_or_else(|| Instant::now() + idle);
            tokio::select! {
                r = poll_fn(|cx| h2.poll_read_response_header(cx)) => {
                    return match r {
                        Ok(()) => Exchange::Head(Box::new(h2)),
                        Err(e) => {
                            tracing::debug!(error = %e, "gRPC attempt failed before its head");
                            Exchange::Failed { end: AttemptEnd::ConnectionLost }
                        }
                    };
                }
                chunk = session.read_request_body(), if !body.done => match chunk {
                    Ok(Some(c)) => {
                        body.keep(&c);
                        if !c.is_empty() && h2.write_request_body(c, false).await.is_err() {
                            return Exchange::Failed { end: AttemptEnd::ConnectionLost };
                        }
                    }
                    Ok(None) => {
                        body.done = true;
                        if h2.finish_request_body().is_err() {
                            return Exchange::Failed { end: AttemptEnd::ConnectionLost };
                        }
                        head_due = Some(Instant::now() + plan.attempt_timeout(started));
                    }
                    Err(e) => return Exchange::Caller(caller_body_problem(&e)),
                },
                () = tokio::time::sleep_until(wait) => {
                    return if head_due.is_some() {
                        Exchange::Failed { end: AttemptEnd::Timeout }
                    } else {
                        Exchange::Caller(Problem::new(
                            problem::REQUEST_TIMEOUT,
                            "the request stream stalled for longer than the provider's idle timeout",
                        ))
                    };
                }
            }
        }
    }

    /// Relays the provider's answer to the module (head, messages both ways, trailers) until the
    /// provider ends it, within the idle timeout and the call's deadline. Returns the HTTP status
    /// and why the relay was cut, if it was. With a `scrubber`, the provider's credentials are
    /// masked in the head, the messages (same length: their length prefixes hold) and trailers.
    #[allow(clippy::too_many_arguments)]
    async fn relay_grpc(
        &self,
        session: &mut Session,
        mut h2: Box<Http2Session>,
        peer: &Upstream<'_>,
        body: &mut Replay,
        call: &Call<'_>,
        plan: &RetryPlan,
        scrubber: Option<&Scrubber>,
    ) -> (u16, Option<Cut>) {
        let Some(head) = h2.response_header() else {
            return (502, Some(Cut::UpstreamError));
        };
        let mut resp: ResponseHeader = head.clone();
        let status = resp.status.as_u16();
        for h in hygiene::HOP_BY_HOP {
            resp.remove_header(*h);
        }
        if let Some(s) = scrubber {
            scrub::head(s, &mut resp);
        }
        let mut body_scrub = scrub::body_stream(scrubber, &resp, &peer.provider.name);
        let _ = resp.insert_header(REQUEST_ID, call.request_id);
        if h2.response_finished() {
            // Trailers-only: one HEADERS frame that ends the stream, as the provider sent it.
            let written = match &mut **session {
                ServerSession::H2(down) => down.write_response_header(Box::new(resp), true),
                _ => session.write_response_header(Box::new(resp), true).await,
            };
            let cut = written.err().map(|_| Cut::CallerGone);
            if cut.is_none() {
                peer.release(self.dial.as_ref(), UpstreamSession::H2(*h2))
                    .await;
            }
            return (status, cut);
        }
        let idle = peer.provider.config.idle_timeout();
        let deadline = plan.deadline();
        let cut = async {
            if session
                .write_response_header(Box::new(resp), false)
                .await
                .is_err()
            {
                return Some(Cut::CallerGone);
            }
            loop {
                let quiet = Instant::now() + idle;
                tokio::select! {
                    data = poll_fn(|cx| h2.poll_read_response_body(cx)) => match data {
                        Some(Ok(b)) => {
                            let b = scrub::chunk(body_scrub.as_mut(), b);
                            if !b.is_empty()
                                && session.write_response_body(Some(b), false).await.is_err()
                            {
                                return Some(Cut::CallerGone);
                            }
                        }
                        None => {
                            if let Some(rest) = body_scrub.take().map(ScrubStream::finish)
                                && !rest.is_empty()
                                && session.write_response_body(Some(rest), false).await.is_err()
                            {
                                return Some(Cut::CallerGone);
                            }
                            return match h2.read_trailers().await {
                                Ok(Some(mut t)) => {
                                    if let Some(s) = scrubber {
                                        scrub::map(s, &mut t);
                                    }
                                    session
                                    .write_response_trailers(t)
                                    .await
                                    .err()
                                    .map(|_| Cut::CallerGone)
                                }
                                Ok(None) => session
                                    .write_response_body(None, true)
                                    .await
                                    .err()
                                    .map(|_| Cut::CallerGone),
                                Err(_) => Some(Cut::UpstreamError),
                            };
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "gRPC stream from provider failed");
                            return Some(Cut::UpstreamError);
                        }
                    },
                    chunk = session.read_request_body(), if !body.done => match chunk {
                        Ok(Some(c)) => {
                            body.keep(&c);
                            // The provider may have ended its side; its answer still comes.
                            if !c.is_empty() && h2.write_request_body(c, false).await.is_err() {
                                body.done = true;
                            }
                        }
                        Ok(None) => {
                            body.done = true;
                            let _ = h2.finish_request_body();
                        }
                        Err(_) => return Some(Cut::CallerGone),
                    },
                    () = tokio::time::sleep_until(quiet) => return Some(Cut::IdleTimeout),
                    () = tokio::time::sleep_until(deadline) => return Some(Cut::TotalTimeout),
                }
            }
        }
        .await;
        match cut {
            None => {
                peer.release(self.dial.as_ref(), UpstreamSession::H2(*h2))
                    .await
            }
            Some(cut) => {
                h2.shutdown();
                // The module gets a status for the stream, not a bare reset.
                let (code, msg) = match cut {
                    Cut::TotalTimeout => (
                        grpc_status::DEADLINE_EXCEEDED,
                        "upstream_timeout: the call's deadline expired mid-stream",
                    ),
                    Cut::IdleTimeout => (
                        grpc_status::UNAVAILABLE,
                        "upstream_timeout: the stream was idle for longer than the provider's idle timeout",
                    ),
                    Cut::UpstreamError => (
                        grpc_status::UNAVAILABLE,
                        "upstream_failed: the provider's stream failed",
                    ),
                    Cut::CallerGone => (grpc_status::OK, ""),
                    Cut::Shutdown => (
                        grpc_status::UNAVAILABLE,
                        "upstream_failed: the hub is stopping",
                    ),
                    Cut::Revoked => (
                        grpc_status::UNAUTHENTICATED,
                        "caller_unauthenticated: the caller credential is no longer valid",
                    ),
                };
                if cut != Cut::CallerGone {
                    let _ = session
                        .write_response_trailers(status_trailers(code, msg))
                        .await;
                } else {
                    session.shutdown().await;
                }
            }
        }
        (status, cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_unit_and_refuse_garbage() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5000u"), Some(Duration::from_millis(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "10", "123456789m", "1x", "-1m", "1.5S", " m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout_value(Duration::from_micros(10)), "1m");
        assert_eq!(grpc_timeout_value(Duration::from_millis(1500)), "1500m");
    }

    #[test]
    fn replay_keeps_up_to_the_limit_then_gives_up() {
        let mut r = Replay::new(10);
        r.keep(&Bytes::from_static(b"12345"));
        r.keep(&Bytes::from_static(b"6789"));
        assert!(r.replayable());
        r.done = true;
        assert!(matches!(r.whole(), Body::Full(b) if &b[..] == b"123456789"));
        r.keep(&Bytes::from_static(b"ab"));
        assert!(!r.replayable());
        assert!(!r.whole().replayable());
    }
}
