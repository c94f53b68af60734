//! Upstream I/O: connections (pooled per thread, or dialled), one attempt's request and
//! response head, and the relay of the final response to the caller under the idle and total
//! timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use hub_core::provider::HttpVersion;
use hub_core::scrub::{ScrubStream, Scrubber};
use hub_core::state::AttemptEnd;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use tokio::time::Instant;

use super::body::Body;
use super::pool;
use super::scrub;
use super::verdict::classify;
use crate::hygiene::{self, REQUEST_ID};
use crate::problem::Problem;
use crate::registry::Provider;

/// Opens new connections to providers (Pingora's connector in production; in-memory streams in
/// the forwarder's own tests).
#[async_trait]
pub trait Dial: Send + Sync {
    /// A session to `provider` at the checked address `addr` speaking `version`: a new
    /// HTTP/1.1 connection, or a stream on a (possibly shared) h2 connection.
    async fn dial(
        &self,
        provider: &Provider,
        addr: SocketAddr,
        version: HttpVersion,
    ) -> pingora::Result<UpstreamSession>;

    /// Gives back an h2 session whose exchange completed, so its connection serves the next
    /// call (HTTP/1.1 connections go to the hub's own pool instead). Dropping it is also fine.
    async fn release(
        &self,
        _session: UpstreamSession,
        _provider: &Provider,
        _addr: SocketAddr,
        _version: HttpVersion,
    ) {
    }

    /// A new HTTP/1.1 connection (an upgrade is HTTP/1.1 only): ALPN offers `http/1.1` alone,
    /// whatever the provider's `httpVersion`.
    async fn dial_h1(
        &self,
        provider: &Provider,
        addr: SocketAddr,
    ) -> pingora::Result<Http1Session> {
        match self.dial(provider, addr, HttpVersion::Http1).await? {
            UpstreamSession::H1(h1) => Ok(h1),
            _ => Error::e_explain(
                ErrorType::ConnectProxyFailure,
                "the provider did not speak HTTP/1.1",
            ),
        }
    }
}

/// Concurrent streams the hub opens on one h2 connection to a provider (the provider's own
/// `SETTINGS_MAX_CONCURRENT_STREAMS` lowers it).
pub const UPSTREAM_H2_STREAMS: usize = 100;
/// Receive window per h2 stream from a provider: what the hub holds of an answer the module does
/// not read (a slow reader), and the most a stream can have in flight (1 MiB ≈ 80 Mbit/s at
/// 100 ms round trip).
pub const UPSTREAM_H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// Receive window per h2 connection to a provider (shared by its streams).
pub const UPSTREAM_H2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// Dials with Pingora's connector: TCP, then TLS verified against the system roots plus the
/// hub's extra upstream CA, within the provider's connect timeout. ALPN follows the provider's
/// `httpVersion`; h2 connections are shared by up to [`UPSTREAM_H2_STREAMS`] calls and pooled by
/// the connector.
pub struct PingoraDial(pub(crate) Connector);

impl PingoraDial {
    fn peer(provider: &Provider, addr: SocketAddr, version: HttpVersion) -> HttpPeer {
        use pingora::protocols::ALPN;
        let mut peer = HttpPeer::new(addr, provider.base.tls, provider.base.host.clone());
        let connect = provider.config.connect_timeout();
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.options.alpn = match version {
            HttpVersion::Http1 => ALPN::H1,
            HttpVersion::H2 => ALPN::H2,
            HttpVersion::Auto => ALPN::H2H1,
        };
        peer.options.max_h2_streams = UPSTREAM_H2_STREAMS;
        peer.options.h2_stream_window_size = Some(UPSTREAM_H2_STREAM_WINDOW);
        peer.options.h2_connection_window_size = Some(UPSTREAM_H2_CONNECTION_WINDOW);
        peer
    }
}

#[async_trait]
impl Dial for PingoraDial {
    async fn dial(
        &self,
        provider: &Provider,
        addr: SocketAddr,
        version: HttpVersion,
    ) -> pingora::Result<UpstreamSession> {
        let peer = Self::peer(provider, addr, version);
        self.0.get_http_session(&peer).await.map(|(s, _)| s)
    }

    async fn release(
        &self,
        session: UpstreamSession,
        provider: &Provider,
        addr: SocketAddr,
        version: HttpVersion,
    ) {
        if matches!(session, UpstreamSession::H2(_)) {
            let peer = Self::peer(provider, addr, version);
            self.0
                .release_http_session(session, &peer, Some(provider.config.idle_timeout()))
                .await;
        }
    }
}

/// Where an attempt goes: the provider at the pinned address, the HTTP version asked for, and
/// its pool key.
pub(crate) struct Upstream<'a> {
    pub(crate) provider: &'a Provider,
    pub(crate) addr: SocketAddr,
    pub(crate) version: HttpVersion,
    pub(crate) key: u64,
}

impl<'a> Upstream<'a> {
    pub(crate) fn new(provider: &'a Provider, addr: SocketAddr) -> Self {
        Self::with_version(provider, addr, provider.config.http_version)
    }

    pub(crate) fn with_version(
        provider: &'a Provider,
        addr: SocketAddr,
        version: HttpVersion,
    ) -> Self {
        use std::hash::{Hash, Hasher};
        // The provider as of this version (base URL, TLS settings) and the checked address.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (provider.id, provider.version, addr).hash(&mut h);
        Self {
            provider,
            addr,
            version,
            key: h.finish(),
        }
    }

    /// A new session (see [`Dial::dial`]).
    pub(crate) async fn dial(&self, dial: &dyn Dial) -> pingora::Result<UpstreamSession> {
        dial.dial(self.provider, self.addr, self.version).await
    }

    /// Gives a finished session back (see [`Dial::release`]).
    pub(crate) async fn release(&self, dial: &dyn Dial, session: UpstreamSession) {
        dial.release(session, self.provider, self.addr, self.version)
            .await;
    }
}

/// What one attempt produced.
pub(crate) struct Attempt {
    /// The caller failed mid-attempt (its streamed body stalled or broke): not the provider's
    /// fault, and the call ends with this problem.
    pub(crate) caller_failed: Option<Problem>,
    pub(crate) end: AttemptEnd,
    /// Whether bytes may have reached the provider.
    pub(crate) bytes_sent: bool,
    pub(crate) upstream: Option<UpstreamSession>,
}

/// A failed send, and whether the request head had been written.
struct SendError {
    error: Box<Error>,
    header_written: bool,
}

impl SendError {
    /// Whether a pooled connection failed as a closed one does, before any response byte.
    fn stale(&self) -> bool {
        matches!(
            self.error.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
    }
}

fn attempt_of(sent: Result<UpstreamSession, SendError>) -> Attempt {
    match sent {
        Err(e) if *e.error.esource() == ErrorSource::Downstream => Attempt {
            caller_failed: Some(super::body::caller_body_problem(&e.error)),
            end: AttemptEnd::ConnectionLost,
            bytes_sent: true,
            upstream: None,
        },
        Ok(up) => Attempt {
            caller_failed: None,
            end: AttemptEnd::Status(up.response_header().map_or(502, |h| h.status.as_u16())),
            bytes_sent: true,
            upstream: Some(up),
        },
        Err(e) => Attempt {
            caller_failed: None,
            end: classify(&e.error, e.header_written),
            bytes_sent: e.header_written,
            upstream: None,
        },
    }
}

/// One attempt: on a pooled connection when there is one. A pooled connection that turns out
/// closed before any response byte (the provider ended it while idle, a race the pool's check
/// cannot close) is not the provider failing: the request goes again, once, on a new
/// connection, without counting as an attempt. `first_byte` bounds the wait for the response
/// head once the request is sent.
pub(crate) async fn attempt(
    dial: &dyn Dial,
    session: &mut Session,
    peer: &Upstream<'_>,
    header: &RequestHeader,
    body: &Body,
    first_byte: Duration,
) -> Attempt {
    if body.replayable()
        && let Some(stream) = pool::take(peer.key)
    {
        let up = UpstreamSession::H1(Http1Session::new(stream));
        match send(session, up, peer, header, body, first_byte).await {
            Err(e) if e.stale() => {
                tracing::debug!(error = %e.error.etype().as_str(), "pooled upstream connection was closed; reconnecting");
            }
            done => return attempt_of(done),
        }
    }
    let up = match peer.dial(dial).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e.etype().as_str(), "upstream connect failed");
            return Attempt {
                caller_failed: None,
                end: classify(&e, false),
                bytes_sent: false,
                upstream: None,
            };
        }
    };
    attempt_of(send(session, up, peer, header, body, first_byte).await)
}

/// Sends the request on `up` and reads the final response head (interim 1xx answers are read
/// past: they are never the caller's answer).
async fn send(
    session: &mut Session,
    mut up: UpstreamSession,
    peer: &Upstream<'_>,
    header: &RequestHeader,
    body: &Body,
    first_byte: Duration,
) -> Result<UpstreamSession, SendError> {
    let mut header = Box::new(header.clone());
    match &mut up {
        UpstreamSession::H1(h1) => {
            // Writes stall at most the idle timeout; the head's wait is bounded below.
            h1.read_timeout = None;
            h1.write_timeout = Some(peer.provider.config.idle_timeout());
        }
        UpstreamSession::H2(h2) => {
            h2.read_timeout = None;
            h2.write_timeout = Some(peer.provider.config.idle_timeout());
            to_h2(&mut header, peer.provider);
        }
        UpstreamSession::Custom(_) => {}
    }
    if let Err(e) = up.write_request_header(header).await {
        return Err(SendError {
            error: e,
            header_written: false,
        });
    }
    let sent = async {
        body.send(session, &mut up).await?;
        // Pingora's timer (10 ms ticks, shared, armed only once the wait begins): tokio's
        // re-armed a reactor wake-up (an eventfd write) per request.
        match pingora::time::timeout(first_byte, read_final_head(&mut up)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(ErrorType::ReadTimedout, "no response head in time"),
        }
    };
    match sent.await {
        Ok(()) => {
            up.set_read_timeout(Some(peer.provider.config.idle_timeout()));
            Ok(up)
        }
        Err(e) => Err(SendError {
            error: e,
            header_written: true,
        }),
    }
}

async fn read_final_head(up: &mut UpstreamSession) -> pingora::Result<()> {
    loop {
        up.read_response_header().await?;
        match up.response_header().map(|h| h.status.as_u16()) {
            Some(s) if (100..200).contains(&s) && s != 101 => continue,
            _ => return Ok(()),
        }
    }
}

/// Why a relay ended before the response did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The provider was silent for longer than the idle timeout.
    IdleTimeout,
    /// The call's total budget ran out mid-stream.
    TotalTimeout,
    /// The provider's connection failed mid-stream.
    UpstreamError,
    /// The caller went away.
    CallerGone,
    /// The proxy stopped (an upgraded connection, closed after the drain's grace).
    Shutdown,
    /// The caller's credential stopped being valid (an upgraded connection).
    Revoked,
}

impl Cut {
    /// As the access line says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdleTimeout => "idle_timeout",
            Self::TotalTimeout => "total_timeout",
            Self::UpstreamError => "upstream_error",
            Self::CallerGone => "caller_gone",
            Self::Shutdown => "shutdown",
            Self::Revoked => "revoked",
        }
    }
}

/// Streams the upstream response to the caller; returns its status and why it was cut, if it
/// was. A cut response ends the caller's connection without a closing chunk, so the module sees
/// a truncated answer, never a complete-looking one. The total budget is checked between chunks:
/// a live stream is cut at most one idle period past it.
///
/// With a `scrubber`, the provider's credentials are masked in the head's values, the body (as
/// it streams: what could be the start of a secret waits for the next chunk, and goes with the
/// end of the body; a cut relay never sends it) and h2 trailers.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay(
    dial: &dyn Dial,
    session: &mut Session,
    mut up: UpstreamSession,
    peer: &Upstream<'_>,
    request_id: &str,
    deadline: Instant,
    scrubber: Option<&Scrubber>,
) -> (u16, Option<Cut>) {
    let Some(head) = up.response_header() else {
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
    let _ = resp.insert_header(REQUEST_ID, request_id);
    fit_response_to_caller(&mut resp, session, &up);
    session.set_write_timeout(Some(peer.provider.config.idle_timeout()));
    let cut = async {
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_err()
        {
            return Some(Cut::CallerGone);
        }
        loop {
            let chunk = match up.read_response_body().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) if e.etype() == &ErrorType::ReadTimedout => return Some(Cut::IdleTimeout),
                Err(_) => return Some(Cut::UpstreamError),
            };
            let chunk = scrub::chunk(body_scrub.as_mut(), chunk);
            if !chunk.is_empty()
                && session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
            {
                return Some(Cut::CallerGone);
            }
            if Instant::now() >= deadline && !up.response_done() {
                return Some(Cut::TotalTimeout);
            }
        }
        // The end of the body: what was held back as a possible secret's start was not one.
        if let Some(rest) = body_scrub.take().map(ScrubStream::finish)
            && !rest.is_empty()
            && session
                .write_response_body(Some(rest), false)
                .await
                .is_err()
        {
            return Some(Cut::CallerGone);
        }
        if let UpstreamSession::H2(h2) = &mut up {
            // gRPC's status (and any h2 provider's trailers) go to an h2 caller; HTTP/1.1
            // callers have no trailers here (Pingora writes none), the body already ended.
            match h2.read_trailers().await {
                Ok(Some(mut trailers)) if session.as_http2().is_some() => {
                    if let Some(s) = scrubber {
                        scrub::map(s, &mut trailers);
                    }
                    return session
                        .write_response_trailers(trailers)
                        .await
                        .err()
                        .map(|_| Cut::CallerGone);
                }
                Ok(_) => {}
                Err(e) if e.etype() == &ErrorType::ReadTimedout => return Some(Cut::IdleTimeout),
                Err(_) => return Some(Cut::UpstreamError),
            }
        }
        session
            .write_response_body(None, true)
            .await
            .err()
            .map(|_| Cut::CallerGone)
    }
    .await;
    match cut {
        None if !up.response_done() => {}
        None => match up {
            UpstreamSession::H1(mut h1) => {
                h1.respect_keepalive();
                if let Some(stream) = h1.reuse().await {
                    pool::put(peer.key, stream);
                }
            }
            UpstreamSession::H2(_) => peer.release(dial, up).await,
            _ => {}
        },
        Some(cut) => {
            tracing::debug!(cut = cut.as_str(), "relay to caller cut");
            // No closing chunk: Pingora's finish would write one on a chunked response.
            session.set_keepalive(None);
            session.shutdown().await;
        }
    }
    (status, cut)
}

/// Makes a request head one for h2: the provider's authority in `:authority` only (Pingora's
/// client would send it again as `host`, and nginx answers a request naming its host twice with
/// `400`), and no chunked framing (h2 frames the body itself).
pub(crate) fn to_h2(header: &mut RequestHeader, provider: &Provider) {
    header.remove_header("transfer-encoding");
    let Some(host) = header.remove_header("host") else {
        return;
    };
    let scheme = if provider.base.tls { "https" } else { "http" };
    let target = header
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    match http::Uri::try_from(format!(
        "{scheme}://{}{target}",
        String::from_utf8_lossy(host.as_bytes())
    )) {
        Ok(uri) => header.set_uri(uri),
        Err(_) => {
            // Left to Pingora, which derives `:authority` from `host`.
            let _ = header.insert_header("host", host);
        }
    }
}

/// Makes a provider's response head one the caller's protocol can carry: an h2 answer to an
/// HTTP/1.1 caller gets HTTP/1.1 and, without a length, chunked framing (else Pingora would end
/// it by closing the connection); an HTTP/1.1 answer to an h2 caller loses its framing header.
pub(crate) fn fit_response_to_caller(
    resp: &mut ResponseHeader,
    session: &Session,
    up: &UpstreamSession,
) {
    if session.as_http2().is_some() {
        resp.remove_header("transfer-encoding");
        return;
    }
    resp.set_version(http::Version::HTTP_11);
    let bodiless = resp.status.is_informational()
        || matches!(resp.status.as_u16(), 204 | 304)
        || session.req_header().method == http::Method::HEAD;
    if matches!(up, UpstreamSession::H2(_))
        && !bodiless
        && !resp.headers.contains_key("content-length")
    {
        let _ = resp.insert_header("transfer-encoding", "chunked");
    }
}

/// Up to [`EXCERPT_LEN`] bytes of a failed answer's body (bounded in time), with the
/// `scrubber`'s secrets masked: whole ones, and an end that could be the start of one when the
/// body goes on past what was read. A compressed body's excerpt is its start as received.
pub(crate) async fn excerpt_of(up: &mut UpstreamSession, scrubber: Option<&Scrubber>) -> String {
    /// Length of the upstream response excerpt kept for a failed call.
    const EXCERPT_LEN: usize = 512;
    let mut out = Vec::new();
    let mut ended = false;
    let read = async {
        while out.len() < EXCERPT_LEN {
            match up.read_response_body().await {
                Ok(Some(b)) => out.extend_from_slice(&b),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
    };
    if tokio::time::timeout(Duration::from_millis(200), read)
        .await
        .is_err()
    {
        return String::new();
    }
    if let Some(s) = scrubber {
        if ended {
            s.mask_in_place(&mut out);
        } else {
            s.mask_truncated(&mut out);
        }
    }
    hub_core::wire::excerpt(&out, EXCERPT_LEN)
}

/// The provider's `Retry-After`, in seconds form.
pub(crate) fn retry_after_of(up: &UpstreamSession) -> Option<Duration> {
    let v = up
        .response_header()?
        .headers
        .get("retry-after")?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}
