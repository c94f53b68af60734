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
    /// Body bytes.
    pub body: Vec<u8>,
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

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().unwrap().connections
    }
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, shared: Arc<Mutex<Shared>>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request head.
        let (rec, head_len, content_length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
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
                let cl = hs
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let rec = Recorded {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    headers: hs,
                    body: Vec::new(),
                };
                break (rec, len, cl);
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + content_length {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut rec = rec;
        rec.body = buf[head_len..head_len + content_length].to_vec();
        buf.drain(..head_len + content_length);
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
        };
        let body = format!("{{\"ok\":{},\"status\":{status}}}", status < 400);
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
