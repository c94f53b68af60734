//! The request body: buffered for replay up to the limit, streamed once beyond it, and written
//! to the provider framed as exactly one request.
//!
//! Pingora's chunked writer turns an empty chunk into the last-chunk marker (`0\r\n\r\n`), and
//! its body reader can hand out an empty chunk when a read ends inside a chunk-size line: passed
//! through, the provider saw the body end early and the rest of it as a new request. Empty
//! chunks are never written here.

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::Session;

use crate::problem::Problem;

/// The request body as read before the first attempt.
pub(crate) enum Body {
    /// Whole (possibly empty): replayable on every attempt.
    Full(Bytes),
    /// Larger than the replay limit: this prefix, the rest still on the caller's connection. Sent
    /// once; the call is not retried once its first byte left.
    Streaming(Bytes),
}

impl Body {
    /// The whole body, when it was read whole (what a signature over the body needs).
    pub(crate) fn whole(&self) -> Option<&[u8]> {
        match self {
            Self::Full(b) => Some(b),
            Self::Streaming(_) => None,
        }
    }

    /// Whether every attempt can send the same bytes.
    pub(crate) fn replayable(&self) -> bool {
        matches!(self, Self::Full(_))
    }

    /// Reads up to `limit` bytes (one chunk more at most) of the caller's body.
    pub(crate) async fn read(session: &mut Session, limit: usize) -> Result<Self, Problem> {
        let mut buf = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    if buf.len() > limit {
                        return Ok(Self::Streaming(buf.freeze()));
                    }
                }
                Ok(None) => return Ok(Self::Full(buf.freeze())),
                Err(e) => return Err(caller_body_problem(&e)),
            }
        }
    }

    /// Frames `header` for this body: a buffered body goes with its exact `Content-Length`; a
    /// streamed one keeps the caller's framing (its `Content-Length`, or chunked).
    pub(crate) fn frame(&self, header: &mut RequestHeader) -> pingora::Result<()> {
        if let Self::Full(b) = self {
            header.remove_header("transfer-encoding");
            if !b.is_empty() || header.headers.contains_key("content-length") {
                header.insert_header("content-length", b.len().to_string())?;
            }
        }
        Ok(())
    }

    /// Writes the body to the provider and ends it. A streamed body's rest is read from the
    /// caller as it arrives, each read and write bounded by the session timeouts.
    pub(crate) async fn send(
        &self,
        session: &mut Session,
        up: &mut UpstreamSession,
    ) -> pingora::Result<()> {
        match self {
            Self::Full(b) => {
                if !b.is_empty() {
                    up.write_request_body(b.clone(), true).await?;
                }
            }
            Self::Streaming(prefix) => {
                up.write_request_body(prefix.clone(), false).await?;
                // A failure to read the caller is the caller's, not the provider's.
                while let Some(chunk) = session
                    .read_request_body()
                    .await
                    .map_err(pingora::Error::into_down)?
                {
                    if !chunk.is_empty() {
                        up.write_request_body(chunk, false).await?;
                    }
                }
            }
        }
        up.finish_request_body().await
    }
}

/// The problem for a caller whose body could not be read: `408` when it went silent for longer
/// than the provider's idle timeout, else `400` (malformed framing, the connection ended).
pub(crate) fn caller_body_problem(e: &pingora::Error) -> Problem {
    if *e.etype() == pingora::ErrorType::ReadTimedout {
        Problem::new(
            hub_core::wire::problem::REQUEST_TIMEOUT,
            "the request body stalled for longer than the provider's idle timeout",
        )
    } else {
        Problem::bad_request(format!(
            "could not read the request body ({})",
            e.etype().as_str()
        ))
    }
}

/// Answers `100 Continue`. Pingora closes a connection whose response starts before the request
/// body is read; an interim answer is not that, so the connection stays reusable.
pub(crate) async fn write_continue(session: &mut Session) -> Result<(), Problem> {
    session.set_close_on_response_before_downstream_finish(false);
    let written = session.write_continue_response().await;
    session.set_close_on_response_before_downstream_finish(true);
    written.map_err(|_| Problem::bad_request("could not answer Expect: 100-continue"))
}

/// What the caller's `Expect` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expectation {
    /// No `Expect`.
    None,
    /// `Expect: 100-continue`: the hub answers `100 Continue` once the call is admitted.
    Continue,
    /// Anything else: `417`.
    Unsupported,
}

impl Expectation {
    /// Reads the caller's `Expect`.
    pub(crate) fn of(req: &RequestHeader) -> Self {
        let mut values = req.headers.get_all("expect").iter().peekable();
        if values.peek().is_none() {
            return Self::None;
        }
        let all_continue = values.all(|v| {
            v.to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
        });
        if all_continue {
            Self::Continue
        } else {
            Self::Unsupported
        }
    }
}
