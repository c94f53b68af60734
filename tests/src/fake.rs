//! A fake provider: an HTTP/1.1 server (plain or TLS) on 127.0.0.1:0 that records every request
//! and answers according to its [`Mode`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the fake answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a small JSON body.
    Ok,
    /// This status with a small JSON body.
    Status(u16),
    /// Read the request, then never answer.
    Stall,
    /// 429 with `Retry-After`.
    Throttle(u64),
    /// 200 after this many milliseconds.
    Delay(u64),
    /// Read the request, then close the connection without answering (a keep-alive connection
    /// the provider ended just as the request arrived).
    Hangup,
    /// 200 with a head announcing 1000 bytes of body, 10 of them sent, then never the rest.
    StallBody,
    /// `100 Continue` and `102 Processing` first (interim answers), then 200.
    Interim,
    /// A chunked `text/event-stream` of `count` events, `gap_ms` apart, then its end
    /// (`count == usize::MAX`: the events stop and the stream stays open, silent).
    Events {
        /// Events sent.
        count: usize,
        /// Silence between two events.
        gap_ms: u64,
    },
    /// This status, echoing the request as httpbin does: every request header back as an
    /// `x-echo-<name>` response header, and the target and headers in a JSON body.
    Echo(u16),
    /// This status with a chunked body of exactly these chunks, each written and flushed on its
    /// own, `gap_ms` apart (so the hub reads them one by one).
    Chunks {
        /// Status code.
        status: u16,
        /// The chunks, in order.
        parts: Vec<Vec<u8>>,
        /// Silence between two chunks.
        gap_ms: u64,
    },
}

/// One request as the provider received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target as sent (origin-form).
    pub target: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes (decoded from chunked), when at most [`KEEP_BODY`].
    pub body: Vec<u8>,
    /// Body length, whatever its size.
    pub body_len: usize,
    /// Hex SHA-256 of the body.
    pub body_sha256: String,
    /// Which accepted connection it came on (0-based).
    pub connection: usize,
}

impl Recorded {
    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of a header (panics if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} sent {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

#[derive(Default)]
struct Shared {
    requests: Vec<Recorded>,
    /// When each request arrived.
    arrivals: Vec<std::time::Instant>,
    connections: usize,
    mode: Option<Mode>,
    /// Answers used first, one per request, before `mode` applies again.
    script: std::collections::VecDeque<Mode>,
    /// Raw bytes received, per connection (the first [`KEEP_RAW`] of each).
    raw: Vec<Vec<u8>>,
    /// Framing violations seen (each ended its connection).
    malformed: Vec<String>,
}

/// A running fake provider.
#[derive(Clone)]
pub struct FakeProvider {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Whether it speaks TLS.
    pub tls: bool,
    shared: Arc<Mutex<Shared>>,
}

impl FakeProvider {
    /// Starts a fake; `tls` = a server config presenting a certificate for `localhost`.
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake provider");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Mutex::new(Shared {
            mode: Some(Mode::Ok),
            ..Default::default()
        }));
        let fake = Self {
            port,
            tls: tls.is_some(),
            shared: shared.clone(),
        };
        let acceptor = tls.map(TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                shared.lock().unwrap().connections += 1;
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                serve_conn(s, shared).await;
                            }
                        }
                        None => serve_conn(tcp, shared).await,
                    }
                });
            }
        });
        fake
    }

    /// The base URL modules' calls are routed to (`https://localhost:PORT`).
    pub fn base_url(&self) -> String {
        format!(
            "{}://localhost:{}",
            if self.tls { "https" } else { "http" },
            self.port
        )
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().unwrap().mode = Some(mode);
    }

    /// Answers the next requests with `modes`, one each, then falls back to the mode.
    pub fn script(&self, modes: impl IntoIterator<Item = Mode>) {
        self.shared.lock().unwrap().script.extend(modes);
    }

    /// When each request arrived.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.shared.lock().unwrap().arrivals.clone()
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// Framing violations the provider saw (each ended its connection): a correct hub sends
    /// none.
    pub fn malformed(&self) -> Vec<String> {
        self.shared.lock().unwrap().malformed.clone()
    }

    /// The raw bytes received on each connection (the first MiB of each).
    pub fn raw(&self) -> Vec<Vec<u8>> {
        self.shared.lock().unwrap().raw.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().unwrap().connections
    }
}

/// Bodies up to this size are kept whole in [`Recorded::body`]; larger ones only hashed.
pub const KEEP_BODY: usize = 1024 * 1024;
/// Raw bytes kept per connection (for framing assertions).
const KEEP_RAW: usize = 1024 * 1024;

/// Reads more bytes into `buf`; `false` at end of stream.
async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, raw: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            let room = KEEP_RAW.saturating_sub(raw.len());
            raw.extend_from_slice(&chunk[..n.min(room)]);
            true
        }
    }
}

/// A body as it is received: hashed as it goes, kept when small.
struct BodySink {
    hasher: sha2::Sha256,
    len: usize,
    kept: Vec<u8>,
}

impl BodySink {
    fn new() -> Self {
        use sha2::Digest;
        Self {
            hasher: sha2::Sha256::new(),
            len: 0,
            kept: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        use sha2::Digest;
        self.hasher.update(bytes);
        self.len += bytes.len();
        if self.len <= KEEP_BODY {
            self.kept.extend_from_slice(bytes);
        } else {
            self.kept = Vec::new();
        }
    }
}

/// Finds `\r\n` in `buf` from `from`.
fn crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

/// Reads a chunked body strictly (RFC 9112 §7.1: hex size, optional extensions, CRLF after the
/// data, trailer fields, a final empty line). `Err` describes the first violation.
async fn read_chunked<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    raw: &mut Vec<u8>,
    sink: &mut BodySink,
) -> Result<(), String> {
    loop {
        let line_end = loop {
            if let Some(e) = crlf(buf, 0) {
                break e;
            }
            if buf.len() > 4096 {
                return Err("chunk-size line too long".into());
            }
            if !fill(s, buf, raw).await {
                return Err("eof in chunk-size line".into());
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("");
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("bad chunk size {line:?}"));
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|e| e.to_string())?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let end = loop {
                    if let Some(e) = crlf(buf, 0) {
                        break e;
                    }
                    if !fill(s, buf, raw).await {
                        return Err("eof in trailers".into());
                    }
                };
                let empty = end == 0;
                buf.drain(..end + 2);
                if empty {
                    return Ok(());
                }
            }
        }
        let mut left = size;
        while left > 0 {
            if buf.is_empty() && !fill(s, buf, raw).await {
                return Err("eof in chunk data".into());
            }
            let n = left.min(buf.len());
            sink.put(&buf[..n]);
            buf.drain(..n);
            left -= n;
        }
        while buf.len() < 2 {
            if !fill(s, buf, raw).await {
                return Err("eof after chunk data".into());
            }
        }
        if &buf[..2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        buf.drain(..2);
    }
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, shared: Arc<Mutex<Shared>>) {
    let conn = {
        let mut sh = shared.lock().unwrap();
        sh.raw.push(Vec::new());
        sh.raw.len() - 1
    };
    let mut raw = Vec::new();
    // How much of `raw` the shared record already has (copied as it grows, never again).
    let mut synced = 0;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request head.
        let (mut rec, head_len, framing) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let hs: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let te: Vec<&str> = hs
                        .iter()
                        .filter(|(k, _)| k == "transfer-encoding")
                        .map(|(_, v)| v.as_str())
                        .collect();
                    let cl: Vec<&str> = hs
                        .iter()
                        .filter(|(k, _)| k == "content-length")
                        .map(|(_, v)| v.as_str())
                        .collect();
                    let framing = match (te.as_slice(), cl.as_slice()) {
                        ([], []) => Ok(Framing::Length(0)),
                        ([], [v]) => v
                            .parse::<usize>()
                            .map(Framing::Length)
                            .map_err(|_| format!("bad content-length {v:?}")),
                        (["chunked"], []) => Ok(Framing::Chunked),
                        _ => Err(format!("ambiguous framing: te={te:?} cl={cl:?}")),
                    };
                    let rec = Recorded {
                        method: req.method.unwrap_or_default().to_owned(),
                        target: req.path.unwrap_or_default().to_owned(),
                        headers: hs,
                        body: Vec::new(),
                        body_len: 0,
                        body_sha256: String::new(),
                        connection: conn,
                    };
                    break (rec, len, framing);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    shared
                        .lock()
                        .unwrap()
                        .malformed
                        .push(format!("unparsable head: {e}"));
                    return;
                }
            }
            if !fill(&mut s, &mut buf, &mut raw).await {
                shared.lock().unwrap().raw[conn].extend_from_slice(&raw[synced..]);
                return;
            }
        };
        buf.drain(..head_len);
        let mut sink = BodySink::new();
        let read = match framing {
            Err(e) => Err(e),
            Ok(Framing::Length(n)) => {
                let mut left = n;
                let mut ok = Ok(());
                while left > 0 {
                    if buf.is_empty() && !fill(&mut s, &mut buf, &mut raw).await {
                        ok = Err("eof in body".to_owned());
                        break;
                    }
                    let k = left.min(buf.len());
                    sink.put(&buf[..k]);
                    buf.drain(..k);
                    left -= k;
                }
                ok
            }
            Ok(Framing::Chunked) => read_chunked(&mut s, &mut buf, &mut raw, &mut sink).await,
        };
        shared.lock().unwrap().raw[conn].extend_from_slice(&raw[synced..]);
        synced = raw.len();
        if let Err(e) = read {
            shared.lock().unwrap().malformed.push(e);
            return;
        }
        {
            use sha2::Digest;
            rec.body_len = sink.len;
            rec.body_sha256 = hex::encode(sink.hasher.finalize());
            rec.body = sink.kept;
        }
        let summary = format!(
            "\"len\":{},\"sha256\":\"{}\"",
            rec.body_len, rec.body_sha256
        );
        let echo = echo_of(&rec);
        let mode = {
            let mut sh = shared.lock().unwrap();
            sh.requests.push(rec);
            sh.arrivals.push(std::time::Instant::now());
            match sh.script.pop_front() {
                Some(m) => m,
                None => sh.mode.clone().unwrap_or(Mode::Ok),
            }
        };
        let (status, extra) = match mode {
            Mode::Ok => (200, String::new()),
            Mode::Status(c) => (c, String::new()),
            Mode::Throttle(secs) => (429, format!("retry-after: {secs}\r\n")),
            Mode::Delay(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (200, String::new())
            }
            Mode::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::Hangup => return,
            Mode::StallBody => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"partial\"";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::Interim => {
                let info = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n";
                if s.write_all(info.as_bytes()).await.is_err() {
                    return;
                }
                let _ = s.flush().await;
                (200, String::new())
            }
            Mode::Events { count, gap_ms } => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for i in 0..count {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                    }
                    let event = format!("data: event {i}\n\n");
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = s.flush().await;
                }
                if count == usize::MAX {
                    return;
                }
                if s.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Echo(status) => {
                let (headers, body) = echo;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
                    body.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Chunks {
                status,
                parts,
                gap_ms,
            } => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = s.flush().await;
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                    }
                    let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                    chunk.extend_from_slice(part);
                    chunk.extend_from_slice(b"\r\n");
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    let _ = s.flush().await;
                }
                if s.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
                continue;
            }
        };
        let body = format!("{{\"ok\":{},\"status\":{status},{summary}}}", status < 400);
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The echo of a request (see [`Mode::Echo`]): response header lines and a JSON body.
fn echo_of(rec: &Recorded) -> (String, String) {
    let mut lines = String::new();
    let mut headers = serde_json::Map::new();
    for (k, v) in &rec.headers {
        lines.push_str(&format!("x-echo-{k}: {v}\r\n"));
        headers.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let body = serde_json::json!({"target": rec.target, "headers": headers});
    (lines, body.to_string())
}

/// How a request's body is framed.
enum Framing {
    Length(usize),
    Chunked,
}
