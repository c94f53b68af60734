//! Write coalescing for the caller's connection.
//!
//! Pingora writes a response head and each body chunk with their own `write` and flushes at the
//! points where the caller must see the bytes (end of a sized body, every chunk of a chunked or
//! close-delimited one, a head without body). Its listeners put a write buffer under the stream
//! for that; a stream the hub accepts itself (`L4Stream::from(TcpStream)`) has none, so every
//! write was a syscall: the head and the body of one response went out as two TCP segments, each
//! costing a send and a wake-up of the caller. [`Coalesced`] is that buffer, under TLS as well
//! (the records of head and body leave together).
//!
//! It holds at most [`HOLD`] bytes, Pingora's own listener write buffer size, so a response
//! whose body trickles in is held no longer than Pingora itself would hold it. Unlike
//! `tokio::io::BufWriter` it allocates only while bytes are pending, so an idle tunnel holds no
//! write buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use pingora::protocols::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before they are written even without a flush (Pingora's
/// `DEFAULT_L4_WRITE_BUFFER_SIZE`): a head plus a small body, not a large response.
const HOLD: usize = 1460;

/// A stream whose writes are held until a flush (or [`HOLD`] bytes).
#[derive(Debug)]
pub struct Coalesced<S> {
    inner: S,
    buf: Vec<u8>,
    /// How much of `buf` the inner stream has taken (a flush may take several polls).
    sent: usize,
}

impl<S> Coalesced<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        // Freed, not kept: an idle connection (most tunnels, most of the time) holds nothing.
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > HOLD {
            ready!(this.poll_drain(cx))?;
            if total >= HOLD {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: AsyncWrite + Shutdown + Unpin + Send> Shutdown for Coalesced<S> {
    async fn shutdown(&mut self) {
        if let Err(e) = std::future::poll_fn(|cx| self.poll_drain(cx)).await {
            tracing::debug!(error = %e, "could not flush before shutdown");
        }
        self.inner.shutdown().await;
    }
}

delegate_stream_traits!(Coalesced);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the inner stream.
    #[derive(Default)]
    struct Counting {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Takes at most 1000 bytes per call, as a socket under pressure would.
            let n = data.len().min(1000);
            self.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn head_and_body_leave_in_one_write_at_the_flush() {
        let mut s = Coalesced::new(Counting::default());
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            .await
            .unwrap();
        s.write_all(b"{}").await.unwrap();
        assert!(s.inner.writes.is_empty(), "nothing leaves before the flush");
        s.flush().await.unwrap();
        assert_eq!(s.inner.writes.len(), 1);
        assert_eq!(
            s.inner.writes[0],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec()
        );
        assert_eq!(s.inner.flushes, 1);
        assert_eq!(s.buf.capacity(), 0, "nothing held, nothing allocated");
    }

    #[tokio::test]
    async fn large_writes_pass_through_in_order() {
        let mut s = Coalesced::new(Counting::default());
        let small = vec![b'a'; 1000];
        let large = vec![b'b'; 40 * 1024];
        s.write_all(&small).await.unwrap();
        assert!(s.inner.writes.is_empty(), "a small write is held");
        s.write_all(&large).await.unwrap();
        assert!(
            !s.inner.writes.is_empty(),
            "past HOLD bytes go out without a flush"
        );
        s.write_all(b"tail").await.unwrap();
        s.flush().await.unwrap();
        let all: Vec<u8> = s.inner.writes.concat();
        let mut expected = small.clone();
        expected.extend_from_slice(&large);
        expected.extend_from_slice(b"tail");
        assert_eq!(all, expected, "every byte, in order, across partial writes");
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held_and_reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut s = Coalesced::new(a);
        s.write_all(b"bye").await.unwrap();
        AsyncWriteExt::shutdown(&mut s).await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        b.write_all(b"in").await.unwrap();
        let mut two = [0u8; 2];
        s.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"in");
    }
}
