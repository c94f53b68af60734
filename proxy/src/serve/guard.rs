//! Bounds on a request head, below Pingora's parser: a head must be complete within
//! [`HEAD_TIMEOUT`] of its first byte and fit [`MAX_HEAD_BYTES`].
//!
//! Pingora reads heads itself, with a per-read keep-alive timeout (a head trickled one byte at a
//! time never trips it) and a 1 MiB cap. [`Guarded`] sits between Pingora and the connection
//! (above TLS inside a tunnel): the connection loop arms it before each request
//! ([`HeadControl::arm`]), the pipeline disarms it once the head is parsed. While armed, reads
//! are limited to what is left of the head allowance, so a head over the cap can never be
//! buffered, and a head that spans reads gets a deadline. A head that breaks either bound is
//! answered by the guard itself (`431` or `408`, problem+json) and the connection ends. A head
//! Pingora refuses to parse (it writes a bare `400` while the head is still armed) gets the
//! hub's problem+json `400` instead.
//!
//! Most heads arrive in one read: the guard sees the blank line that ends it and stops watching
//! at once, so the common path arms no timer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use hub_core::wire::problem;
use pingora::protocols::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hygiene::MAX_HEAD_BYTES;
use crate::problem::Problem;

/// Time from a head's first byte to its end.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The loop's and the pipeline's handle on a connection's guard.
#[derive(Debug, Default)]
pub struct HeadControl {
    armed: AtomicBool,
    generation: AtomicU32,
}

impl HeadControl {
    /// A new request head is due: watch it.
    pub fn arm(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.armed.store(true, Ordering::Release);
    }

    /// The head is parsed: what follows is body.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
    }
}

/// What the guard watches while a head is being read.
#[derive(Debug)]
struct Watch {
    generation: u32,
    read: usize,
    /// The last three bytes read, to find a `\r\n\r\n` split across reads.
    tail: [u8; 3],
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A stream whose request heads are bounded in size and time.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    control: Arc<HeadControl>,
    watch: Option<Watch>,
    /// The generation whose head already ended (its remaining reads are body).
    finished: u32,
    /// An answer being written before the connection ends (and how much of it is out).
    refusal: Option<(Vec<u8>, usize)>,
    timeout: Duration,
}

impl<S> Guarded<S> {
    /// Wraps `inner`; `control` arms and disarms it.
    pub fn new(inner: S, control: Arc<HeadControl>) -> Self {
        Self::with_timeout(inner, control, HEAD_TIMEOUT)
    }

    /// With another head deadline (tests).
    pub fn with_timeout(inner: S, control: Arc<HeadControl>, timeout: Duration) -> Self {
        Self {
            inner,
            control,
            watch: None,
            finished: 0,
            refusal: None,
            timeout,
        }
    }

    fn refuse(&mut self, problem: &Problem) {
        tracing::info!(target: "hub::access", code = problem.code, status = problem.status,
            "request head refused");
        self.refusal = Some((problem.to_http1(None), 0));
        self.watch = None;
    }
}

/// Whether `bytes`, read after `tail`, complete a `\r\n\r\n`.
fn ends_head(tail: &[u8; 3], bytes: &[u8]) -> bool {
    if bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        return true;
    }
    let mut joined = [0u8; 6];
    let n = bytes.len().min(3);
    joined[..3].copy_from_slice(tail);
    joined[3..3 + n].copy_from_slice(&bytes[..n]);
    joined[..3 + n].windows(4).any(|w| w == b"\r\n\r\n")
}

fn new_tail(tail: [u8; 3], bytes: &[u8]) -> [u8; 3] {
    let mut all = tail.to_vec();
    all.extend_from_slice(&bytes[bytes.len().saturating_sub(3)..]);
    let mut out = [0u8; 3];
    out.copy_from_slice(&all[all.len() - 3..]);
    out
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes the refusal, then reports end of stream.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, sent)) = &mut self.refusal {
            while *sent < bytes.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*sent..]))?;
                if n == 0 {
                    break;
                }
                *sent += n;
            }
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.refusal.is_some() {
            return this.poll_refusal(cx);
        }
        let armed = this.control.armed.load(Ordering::Acquire);
        let generation = this.control.generation.load(Ordering::Relaxed);
        if !armed || generation == this.finished {
            this.watch = None;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let watch = match &mut this.watch {
            Some(w) if w.generation == generation => w,
            _ => this.watch.insert(Watch {
                generation,
                read: 0,
                tail: [0; 3],
                deadline: None,
            }),
        };
        let allowance = MAX_HEAD_BYTES - watch.read;
        if allowance == 0 {
            this.refuse(&Problem::new(
                problem::HEADERS_TOO_LARGE,
                format!("the request head exceeds {} KiB", MAX_HEAD_BYTES / 1024),
            ));
            return this.poll_refusal(cx);
        }
        let polled = if buf.remaining() <= allowance {
            let before = buf.filled().len();
            Pin::new(&mut this.inner)
                .poll_read(cx, buf)
                .map_ok(|()| before)
        } else {
            // Only near the cap: a stack buffer, so no byte past it is ever taken.
            let mut small = [0u8; 4096];
            let take = allowance.min(small.len());
            let mut limited = ReadBuf::new(&mut small[..take]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut limited) {
                Poll::Ready(Ok(())) => {
                    let before = buf.filled().len();
                    buf.put_slice(limited.filled());
                    Poll::Ready(Ok(before))
                }
                other => other.map_ok(|()| 0),
            }
        };
        match polled {
            Poll::Ready(Ok(before)) => {
                let bytes = &buf.filled()[before..];
                if bytes.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if ends_head(&watch.tail, bytes) {
                    // The head is in: Pingora parses it; nothing more to watch.
                    this.finished = watch.generation;
                    this.watch = None;
                } else {
                    watch.read += bytes.len();
                    watch.tail = new_tail(watch.tail, bytes);
                    if watch.deadline.is_none() {
                        let timeout = this.timeout;
                        watch.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = watch
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    this.refuse(&Problem::new(
                        problem::REQUEST_TIMEOUT,
                        format!(
                            "the request head was not complete within {} s",
                            this.timeout.as_secs()
                        ),
                    ));
                    return this.poll_refusal(cx);
                }
                Poll::Pending
            }
        }
    }
}

impl<S> Guarded<S> {
    /// A write while a head is armed can only be Pingora refusing a head it could not parse
    /// (its bare `400`): the guard answers in the hub's own form instead. `true` = swallowed.
    fn replaces_write(&mut self) -> bool {
        if self.refusal.is_some() {
            return true;
        }
        if !self.control.armed.load(Ordering::Acquire) {
            return false;
        }
        self.refuse(&Problem::bad_request(
            "malformed request: the head or its framing is not valid HTTP/1.1",
        ));
        true
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replaces_write() {
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.replaces_write() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_refusal(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_refusal(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: AsyncRead + AsyncWrite + Shutdown + Unpin + Send> Shutdown for Guarded<S> {
    async fn shutdown(&mut self) {
        if let Err(e) = std::future::poll_fn(|cx| self.poll_refusal(cx)).await {
            tracing::debug!(error = %e, "could not write the refusal");
        }
        self.inner.shutdown().await;
    }
}

delegate_stream_traits!(Guarded);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guarded() -> (Guarded<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let control = Arc::new(HeadControl::default());
        control.arm();
        (Guarded::new(a, control), b)
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_past_its_deadline_gets_408_and_the_end() {
        let (mut g, mut client) = guarded();
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(g.read(&mut buf).await.unwrap(), 8);
        let start = tokio::time::Instant::now();
        // Nothing more comes: the read ends at the deadline with EOF, after the 408.
        assert_eq!(g.read(&mut buf).await.unwrap(), 0);
        assert_eq!(start.elapsed(), HEAD_TIMEOUT);
        let mut answer = vec![0u8; 4096];
        let n = client.read(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_head_arms_no_deadline_and_the_body_is_not_counted() {
        let (mut g, mut client) = guarded();
        let head = b"POST / HTTP/1.1\r\nHost: a\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut chunk = vec![0u8; 16 * 1024];
        let mut total = g.read(&mut chunk).await.unwrap();
        assert_eq!(total, head.len());
        assert!(g.watch.is_none(), "the head ended: nothing is watched");
        // A body far above the head cap streams through while no new head is due.
        let big = vec![b'x'; MAX_HEAD_BYTES * 2];
        let expected = head.len() + big.len();
        let writer = tokio::spawn(async move {
            client.write_all(&big).await.unwrap();
            client
        });
        while total < expected {
            let n = g.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the body was cut after {total} bytes");
            total += n;
        }
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_head_over_the_cap_is_never_buffered_and_gets_431() {
        let (mut g, mut client) = guarded();
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(MAX_HEAD_BYTES));
        let writer = tokio::spawn(async move {
            let _ = client.write_all(big.as_bytes()).await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        });
        let mut total = 0;
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = g.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, MAX_HEAD_BYTES, "no byte past the cap was handed on");
        AsyncWriteExt::shutdown(&mut g).await.unwrap();
        let answer = writer.await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        assert!(text.contains("headers_too_large"), "{text}");
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        assert!(ends_head(&[0; 3], b"a\r\n\r\nb"));
        assert!(ends_head(b"x\r\n", b"\r\n"));
        assert!(ends_head(b"\r\n\r", b"\n"));
        assert!(!ends_head(b"abc", b"\r\n\r"));
        assert_eq!(new_tail(*b"abc", b"d"), *b"bcd");
        assert_eq!(new_tail(*b"abc", b"defgh"), *b"fgh");
    }
}
