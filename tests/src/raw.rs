//! Raw HTTP/1.1 on a socket, for the conformance suite: requests written byte by byte as a test
//! chooses (random write splits, chunk sizes, extensions, trailers), responses read exactly
//! (interim heads, sized and chunked bodies, a connection that ends early).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Any client stream (plain TCP or TLS inside a tunnel).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed client stream.
pub type Conn = Box<dyn Io>;

/// `len` pseudo-random bytes from `seed` (the same seed gives the same bytes).
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Hex SHA-256.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `body` as a chunked body with random chunk sizes, some chunk extensions and, when
/// `trailers`, a trailer field.
pub fn chunked(body: &[u8], rng: &mut StdRng, trailers: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 100 + 64);
    let mut i = 0;
    while i < body.len() {
        let n = if rng.random_bool(0.3) {
            rng.random_range(1..=16)
        } else {
            rng.random_range(1..=70_000)
        }
        .min(body.len() - i);
        if rng.random_bool(0.2) {
            out.extend_from_slice(format!("{n:x};ext=\"v\"\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("{n:X}\r\n").as_bytes());
        }
        out.extend_from_slice(&body[i..i + n]);
        out.extend_from_slice(b"\r\n");
        i += n;
    }
    out.extend_from_slice(b"0\r\n");
    if trailers {
        out.extend_from_slice(b"X-Checksum: done\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes `bytes` in random pieces (many tiny ones among them), flushing now and then.
pub async fn write_split<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    bytes: &[u8],
    rng: &mut StdRng,
) -> std::io::Result<()> {
    let mut i = 0;
    while i < bytes.len() {
        let n = if rng.random_bool(0.3) {
            rng.random_range(1..=8)
        } else {
            rng.random_range(1..=64 * 1024)
        }
        .min(bytes.len() - i);
        s.write_all(&bytes[i..i + n]).await?;
        if rng.random_bool(0.3) {
            s.flush().await?;
        }
        i += n;
    }
    s.flush().await
}

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The head as text (status line and fields).
    pub head: String,
    /// The body, decoded from chunked when it was.
    pub body: Vec<u8>,
    /// Whether the body ended as its framing says (`false`: the connection ended first).
    pub complete: bool,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value (first, case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Reads one response head (up to and including the blank line), byte by byte so nothing after
/// it is consumed. `None` when the connection ends first.
pub async fn read_head<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        assert!(head.len() < 64 * 1024, "response head too large");
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
}

async fn read_exact_or_end<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    n: usize,
    out: &mut Vec<u8>,
) -> bool {
    let mut left = n;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        match s.read(&mut buf[..left.min(64 * 1024)]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => {
                out.extend_from_slice(&buf[..k]);
                left -= k;
            }
        }
    }
    true
}

async fn read_line<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    line.truncate(line.len() - 2);
    Some(String::from_utf8_lossy(&line).into_owned())
}

/// Reads one response (an interim 1xx head comes back as a response of its own, without
/// body). `None` when the connection ends before a head.
pub async fn read_response<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> Option<Response> {
    let (status, head) = read_head(s).await?;
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(Response {
            status,
            head,
            body,
            complete: true,
        });
    }
    let complete = if lower.contains("transfer-encoding: chunked") {
        loop {
            let Some(line) = read_line(s).await else {
                break false;
            };
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            if size == 0 {
                // Trailers until the blank line.
                loop {
                    match read_line(s).await {
                        Some(l) if l.is_empty() => break,
                        Some(_) => {}
                        None => break,
                    }
                }
                break true;
            }
            if !read_exact_or_end(s, size, &mut body).await {
                break false;
            }
            let mut crlf = Vec::new();
            if !read_exact_or_end(s, 2, &mut crlf).await {
                break false;
            }
        }
    } else if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        read_exact_or_end(s, cl, &mut body).await
    } else {
        let _ = s.read_to_end(&mut body).await;
        true
    };
    Some(Response {
        status,
        head,
        body,
        complete,
    })
}

/// [`read_response`] bounded in time (a test never hangs on a hub that does not answer).
pub async fn read_response_within<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    within: Duration,
) -> Option<Response> {
    tokio::time::timeout(within, read_response(s))
        .await
        .expect("no response in time")
}

/// Whether the peer ends the connection within `within` (EOF or error), reading what comes.
pub async fn ends_within<S: AsyncRead + Unpin + ?Sized>(s: &mut S, within: Duration) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut sink))
        .await
        .is_ok()
}
